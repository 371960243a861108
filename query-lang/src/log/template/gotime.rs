//! Go `time.Time` values for templates: Go's default printing, reference-time layouts
//! (`2006-01-02 15:04:05 -0700 MST`) for formatting and parsing, and zones by IANA name.
//!
//! Owns what `date`, `toDate`, `toDateInZone`, `now`, `unixToTime` and `__timestamp__`
//! need. The template engine's "Local" zone is UTC (a server has no meaningful local
//! zone; Loki's images run in UTC). It does not own calendar arithmetic (chrono) or the
//! zone database (chrono-tz, compiled in so results never depend on the host's tzdata).

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike};
use chrono_tz::{OffsetName, Tz};

/// Seconds from 0001-01-01 00:00:00 UTC (Go's zero `time.Time`) to the Unix epoch.
const ZERO_TIME_UNIX: i64 = -62_135_596_800;

/// The location a time is shown in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Zone {
    Utc,
    Named(Tz),
    /// A fixed offset in seconds east of UTC with no name (from a parsed `-0700`).
    Fixed(i32),
}

impl Zone {
    /// Go's `time.LoadLocation`: `""` and `"UTC"` are UTC, `"Local"` is this server's
    /// local zone (UTC), anything else an IANA name.
    pub(crate) fn load(name: &str) -> Option<Zone> {
        match name {
            "" | "UTC" | "Local" => Some(Zone::Utc),
            _ => name.parse::<Tz>().ok().map(Zone::Named),
        }
    }
}

/// A Go `time.Time`: an instant plus the zone it prints in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct GoTime {
    secs: i64,
    nanos: u32,
    zone: Zone,
}

/// A calendar reading of a time in its zone.
struct Parts {
    dt: NaiveDateTime,
    offset: i32,
    abbrev: Option<String>,
}

impl GoTime {
    /// `time.Unix(0, ns).UTC()`.
    pub(crate) fn from_unix_nanos(ns: i64) -> Self {
        GoTime {
            secs: ns.div_euclid(1_000_000_000),
            nanos: u32::try_from(ns.rem_euclid(1_000_000_000)).unwrap_or(0),
            zone: Zone::Utc,
        }
    }

    /// `time.Unix(secs, 0)` in UTC.
    pub(crate) fn from_unix(secs: i64) -> Self {
        GoTime {
            secs,
            nanos: 0,
            zone: Zone::Utc,
        }
    }

    /// Go's zero time, `0001-01-01 00:00:00 +0000 UTC` (what `toDate` returns on error).
    pub(crate) fn zero() -> Self {
        GoTime::from_unix(ZERO_TIME_UNIX)
    }

    /// The current time.
    pub(crate) fn now() -> Self {
        let now = chrono::Utc::now();
        GoTime {
            secs: now.timestamp(),
            nanos: now.timestamp_subsec_nanos(),
            zone: Zone::Utc,
        }
    }

    pub(crate) fn in_zone(self, zone: Zone) -> Self {
        GoTime { zone, ..self }
    }

    /// `t.Unix()`.
    pub(crate) fn unix(&self) -> i64 {
        self.secs
    }

    /// `t.UnixMilli()`.
    pub(crate) fn unix_millis(&self) -> i64 {
        self.secs
            .saturating_mul(1000)
            .saturating_add(i64::from(self.nanos / 1_000_000))
    }

    /// `t.UnixNano()` (saturating outside 1678..2262, where Go's is undefined).
    pub(crate) fn unix_nanos(&self) -> i64 {
        self.secs
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(self.nanos))
    }

    fn parts(&self) -> Parts {
        let utc = DateTime::from_timestamp(self.secs, self.nanos).unwrap_or_default();
        match self.zone {
            Zone::Utc => Parts {
                dt: utc.naive_utc(),
                offset: 0,
                abbrev: Some("UTC".to_owned()),
            },
            Zone::Fixed(off) => Parts {
                dt: utc.naive_utc() + chrono::Duration::seconds(i64::from(off)),
                offset: off,
                abbrev: None,
            },
            Zone::Named(tz) => {
                let local = utc.with_timezone(&tz);
                Parts {
                    dt: local.naive_local(),
                    offset: local.offset().fix().local_minus_utc(),
                    abbrev: local.offset().abbreviation().map(str::to_owned),
                }
            }
        }
    }

    /// Go's `t.String()`: `2006-01-02 15:04:05.999999999 -0700 MST`.
    pub(crate) fn go_string(&self) -> String {
        self.format("2006-01-02 15:04:05.999999999 -0700 MST")
    }

    /// Go's `t.Format(layout)`.
    pub(crate) fn format(&self, layout: &str) -> String {
        let p = self.parts();
        let mut out = String::new();
        let mut rest = layout;
        while !rest.is_empty() {
            let (prefix, std, after) = next_chunk(rest);
            out.push_str(prefix);
            if let Some(std) = std {
                format_std(&mut out, std, &p);
            }
            rest = after;
        }
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Std {
    LongMonth,
    Month,
    NumMonth,
    ZeroMonth,
    LongWeekDay,
    WeekDay,
    Day,
    UnderDay,
    ZeroDay,
    UnderYearDay,
    ZeroYearDay,
    Hour,
    Hour12,
    ZeroHour12,
    Minute,
    ZeroMinute,
    Second,
    ZeroSecond,
    LongYear,
    Year,
    PM,
    Pm,
    Tz,
    /// Numeric zone: `z` = prints `Z` for UTC, `colon`, `secs`, `hours_only`.
    NumTz {
        z: bool,
        colon: bool,
        secs: bool,
        hours_only: bool,
    },
    /// Fractional seconds: digits, and whether trailing zeros are dropped (`.999`).
    Frac(usize, bool),
}

const LONG_MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const LONG_DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// Splits `layout` at its first layout element: (literal prefix, element, rest).
fn next_chunk(layout: &str) -> (&str, Option<Std>, &str) {
    let b = layout.as_bytes();
    let at = |i: usize, s: &str| layout.get(i..).is_some_and(|r| r.starts_with(s));
    for i in 0..b.len() {
        let (std, len) = match b[i] {
            b'J' if at(i, "January") => (Std::LongMonth, 7),
            b'J' if at(i, "Jan") => (Std::Month, 3),
            b'M' if at(i, "Monday") => (Std::LongWeekDay, 6),
            b'M' if at(i, "Mon") => (Std::WeekDay, 3),
            b'M' if at(i, "MST") => (Std::Tz, 3),
            b'0' if at(i, "002") => (Std::ZeroYearDay, 3),
            b'0' if b.get(i + 1).is_some_and(|c| (b'1'..=b'6').contains(c)) => (
                match b[i + 1] {
                    b'1' => Std::ZeroMonth,
                    b'2' => Std::ZeroDay,
                    b'3' => Std::ZeroHour12,
                    b'4' => Std::ZeroMinute,
                    b'5' => Std::ZeroSecond,
                    _ => Std::Year,
                },
                2,
            ),
            b'1' if at(i, "15") => (Std::Hour, 2),
            b'1' => (Std::NumMonth, 1),
            b'2' if at(i, "2006") => (Std::LongYear, 4),
            b'2' => (Std::Day, 1),
            b'_' if at(i, "_2006") => {
                return (&layout[..=i], Some(Std::LongYear), &layout[i + 5..])
            }
            b'_' if at(i, "__2") => (Std::UnderYearDay, 3),
            b'_' if at(i, "_2") => (Std::UnderDay, 2),
            b'3' => (Std::Hour12, 1),
            b'4' => (Std::Minute, 1),
            b'5' => (Std::Second, 1),
            b'P' if at(i, "PM") => (Std::PM, 2),
            b'p' if at(i, "pm") => (Std::Pm, 2),
            c @ (b'-' | b'Z') => {
                let z = c == b'Z';
                let forms: [(&str, bool, bool, bool); 5] = [
                    ("070000", false, true, false),
                    ("07:00:00", true, true, false),
                    ("0700", false, false, false),
                    ("07:00", true, false, false),
                    ("07", false, false, true),
                ];
                match forms.iter().find(|(f, ..)| at(i + 1, f)) {
                    Some((f, colon, secs, hours_only)) => (
                        Std::NumTz {
                            z,
                            colon: *colon,
                            secs: *secs,
                            hours_only: *hours_only,
                        },
                        f.len() + 1,
                    ),
                    None => continue,
                }
            }
            b'.' | b',' => {
                let Some(&digit @ (b'0' | b'9')) = b.get(i + 1) else {
                    continue;
                };
                let mut j = i + 1;
                while b.get(j) == Some(&digit) {
                    j += 1;
                }
                // Only a run not followed by another digit is a fraction element.
                if b.get(j).is_some_and(u8::is_ascii_digit) {
                    continue;
                }
                (Std::Frac(j - i - 1, digit == b'9'), j - i)
            }
            _ => continue,
        };
        return (&layout[..i], Some(std), &layout[i + len..]);
    }
    (layout, None, "")
}

fn format_std(out: &mut String, std: Std, p: &Parts) {
    use std::fmt::Write as _;
    let dt = &p.dt;
    let hour12 = match dt.hour() % 12 {
        0 => 12,
        h => h,
    };
    let _ = match std {
        Std::LongMonth => write!(out, "{}", LONG_MONTHS[dt.month0() as usize]),
        Std::Month => write!(out, "{}", &LONG_MONTHS[dt.month0() as usize][..3]),
        Std::NumMonth => write!(out, "{}", dt.month()),
        Std::ZeroMonth => write!(out, "{:02}", dt.month()),
        Std::LongWeekDay => write!(
            out,
            "{}",
            LONG_DAYS[dt.weekday().num_days_from_sunday() as usize]
        ),
        Std::WeekDay => write!(
            out,
            "{}",
            &LONG_DAYS[dt.weekday().num_days_from_sunday() as usize][..3]
        ),
        Std::Day => write!(out, "{}", dt.day()),
        Std::UnderDay => write!(out, "{:>2}", dt.day()),
        Std::ZeroDay => write!(out, "{:02}", dt.day()),
        Std::UnderYearDay => write!(out, "{:>3}", dt.ordinal()),
        Std::ZeroYearDay => write!(out, "{:03}", dt.ordinal()),
        Std::Hour => write!(out, "{:02}", dt.hour()),
        Std::Hour12 => write!(out, "{hour12}"),
        Std::ZeroHour12 => write!(out, "{hour12:02}"),
        Std::Minute => write!(out, "{}", dt.minute()),
        Std::ZeroMinute => write!(out, "{:02}", dt.minute()),
        Std::Second => write!(out, "{}", dt.second()),
        Std::ZeroSecond => write!(out, "{:02}", dt.second()),
        Std::LongYear => write!(out, "{:04}", dt.year()),
        Std::Year => write!(out, "{:02}", dt.year().rem_euclid(100)),
        Std::PM => write!(out, "{}", if dt.hour() >= 12 { "PM" } else { "AM" }),
        Std::Pm => write!(out, "{}", if dt.hour() >= 12 { "pm" } else { "am" }),
        Std::Tz => match &p.abbrev {
            Some(name) => write!(out, "{name}"),
            None => write_offset(out, p.offset, false, false, false),
        },
        Std::NumTz {
            z,
            colon,
            secs,
            hours_only,
        } => {
            if z && p.offset == 0 {
                out.push('Z');
                Ok(())
            } else {
                write_offset(out, p.offset, colon, secs, hours_only)
            }
        }
        Std::Frac(n, trim) => {
            let digits = format!("{:09}", dt.nanosecond() % 1_000_000_000);
            let mut frac = &digits[..n.min(9)];
            if trim {
                frac = frac.trim_end_matches('0');
            }
            if !frac.is_empty() {
                out.push('.');
                out.push_str(frac);
            }
            Ok(())
        }
    };
}

fn write_offset(
    out: &mut String,
    offset: i32,
    colon: bool,
    secs: bool,
    hours_only: bool,
) -> std::fmt::Result {
    use std::fmt::Write as _;
    let sign = if offset < 0 { '-' } else { '+' };
    let abs = offset.unsigned_abs();
    write!(out, "{sign}{:02}", abs / 3600)?;
    if hours_only {
        return Ok(());
    }
    let sep = if colon { ":" } else { "" };
    write!(out, "{sep}{:02}", (abs / 60) % 60)?;
    if secs {
        write!(out, "{sep}{:02}", abs % 60)?;
    }
    Ok(())
}

/// Go's `time.ParseInLocation(layout, value, zone)`.
pub(crate) fn parse_in(layout: &str, value: &str, zone: Zone) -> Result<GoTime, String> {
    let bad = |elem: &str, rest: &str| {
        format!("parsing time {value:?} as {layout:?}: cannot parse {rest:?} as {elem:?}")
    };
    let (mut year, mut month, mut day, mut yday) = (0i32, 1u32, 1u32, 0u32);
    let (mut hour, mut min, mut sec, mut nanos) = (0u32, 0u32, 0u32, 0u32);
    let mut pm: Option<bool> = None;
    let mut offset: Option<i32> = None;
    let mut abbrev: Option<String> = None;
    let mut v = value;
    let mut rest = layout;
    while !rest.is_empty() {
        let (prefix, std, after) = next_chunk(rest);
        v = skip(v, prefix).ok_or_else(|| bad(prefix, v))?;
        let Some(std) = std else {
            break;
        };
        let elem = &rest[prefix.len()..rest.len() - after.len()];
        let err = || bad(elem, v);
        rest = after;
        match std {
            Std::Year => {
                let (n, r) = digits(v, 2, 2).ok_or_else(err)?;
                year = if n >= 69 {
                    1900 + n as i32
                } else {
                    2000 + n as i32
                };
                v = r;
            }
            Std::LongYear => {
                let (n, r) = digits(v, 4, 4).ok_or_else(err)?;
                year = n as i32;
                v = r;
            }
            Std::Month | Std::LongMonth => {
                let (i, r) = lookup_name(v, std == Std::LongMonth, &LONG_MONTHS).ok_or_else(err)?;
                month = i as u32 + 1;
                v = r;
            }
            Std::WeekDay | Std::LongWeekDay => {
                let (_, r) = lookup_name(v, std == Std::LongWeekDay, &LONG_DAYS).ok_or_else(err)?;
                v = r;
            }
            Std::NumMonth | Std::ZeroMonth => {
                let (n, r) = num(v, std == Std::ZeroMonth).ok_or_else(err)?;
                if !(1..=12).contains(&n) {
                    return Err(format!("parsing time {value:?}: month out of range"));
                }
                month = n;
                v = r;
            }
            Std::Day | Std::UnderDay | Std::ZeroDay => {
                if std == Std::UnderDay && v.starts_with(' ') {
                    v = &v[1..];
                }
                let (n, r) = num(v, std == Std::ZeroDay).ok_or_else(err)?;
                day = n;
                v = r;
            }
            Std::UnderYearDay | Std::ZeroYearDay => {
                let mut s = v;
                if std == Std::UnderYearDay {
                    s = s.trim_start_matches(' ');
                }
                let (n, r) = digits(s, 1, 3).ok_or_else(err)?;
                yday = n;
                v = r;
            }
            Std::Hour => {
                let (n, r) = num(v, false).ok_or_else(err)?;
                if n > 23 {
                    return Err(format!("parsing time {value:?}: hour out of range"));
                }
                hour = n;
                v = r;
            }
            Std::Hour12 | Std::ZeroHour12 => {
                let (n, r) = num(v, std == Std::ZeroHour12).ok_or_else(err)?;
                if n > 12 {
                    return Err(format!("parsing time {value:?}: hour out of range"));
                }
                hour = n;
                v = r;
            }
            Std::Minute | Std::ZeroMinute => {
                let (n, r) = num(v, std == Std::ZeroMinute).ok_or_else(err)?;
                if n > 59 {
                    return Err(format!("parsing time {value:?}: minute out of range"));
                }
                min = n;
                v = r;
            }
            Std::Second | Std::ZeroSecond => {
                let (n, r) = num(v, std == Std::ZeroSecond).ok_or_else(err)?;
                if n > 59 {
                    return Err(format!("parsing time {value:?}: second out of range"));
                }
                sec = n;
                v = r;
                // Go accepts a fraction after the seconds even when the layout has none.
                let next_is_frac = matches!(next_chunk(rest), ("", Some(Std::Frac(..)), _));
                if !next_is_frac && (v.starts_with('.') || v.starts_with(',')) {
                    let n = v[1..].bytes().take_while(u8::is_ascii_digit).count();
                    if n > 0 {
                        nanos = frac_nanos(&v[1..=n]);
                        v = &v[n + 1..];
                    }
                }
            }
            Std::Frac(n, trim) => {
                if trim {
                    if v.starts_with('.') || v.starts_with(',') {
                        let k = v[1..].bytes().take_while(u8::is_ascii_digit).count();
                        nanos = frac_nanos(&v[1..=k]);
                        v = &v[k + 1..];
                    }
                } else {
                    let ok = v.len() > n
                        && (v.starts_with('.') || v.starts_with(','))
                        && v[1..=n].bytes().all(|c| c.is_ascii_digit());
                    if !ok {
                        return Err(err());
                    }
                    nanos = frac_nanos(&v[1..=n]);
                    v = &v[n + 1..];
                }
            }
            Std::PM | Std::Pm => {
                let word = v.get(..2).ok_or_else(err)?;
                let (am_s, pm_s) = if std == Std::PM {
                    ("AM", "PM")
                } else {
                    ("am", "pm")
                };
                pm = Some(if word == pm_s {
                    true
                } else if word == am_s {
                    false
                } else {
                    return Err(err());
                });
                v = &v[2..];
            }
            Std::NumTz {
                z,
                colon,
                secs,
                hours_only,
            } => {
                if z && v.starts_with('Z') {
                    offset = Some(0);
                    v = &v[1..];
                    continue;
                }
                let (off, r) = parse_offset(v, colon, secs, hours_only).ok_or_else(err)?;
                offset = Some(off);
                v = r;
            }
            Std::Tz => {
                let n = v.bytes().take_while(u8::is_ascii_uppercase).count();
                if n < 3 {
                    return Err(err());
                }
                abbrev = Some(v[..n].to_owned());
                v = &v[n..];
            }
        }
    }
    if !v.is_empty() {
        return Err(format!("parsing time {value:?}: extra text: {:?}", v));
    }
    if let Some(pm) = pm {
        if pm && hour < 12 {
            hour += 12;
        } else if !pm && hour == 12 {
            hour = 0;
        }
    }
    let date = if yday > 0 {
        NaiveDate::from_yo_opt(year, yday)
    } else {
        NaiveDate::from_ymd_opt(year, month, day)
    }
    .ok_or_else(|| format!("parsing time {value:?}: day out of range"))?;
    let naive = date
        .and_hms_nano_opt(hour, min, sec, nanos)
        .ok_or_else(|| format!("parsing time {value:?}: out of range"))?;
    let utc_secs = |off: i32| naive.and_utc().timestamp() - i64::from(off);
    let subsec = naive.and_utc().timestamp_subsec_nanos();
    let make = |secs: i64, zone: Zone| GoTime {
        secs,
        nanos: subsec,
        zone,
    };
    if let Some(off) = offset {
        let t = make(utc_secs(off), Zone::Utc);
        // The given zone keeps its name when its offset at that instant agrees.
        let keep = match zone {
            Zone::Utc => off == 0,
            _ => t.in_zone(zone).parts().offset == off,
        };
        return Ok(if keep {
            t.in_zone(zone)
        } else {
            t.in_zone(Zone::Fixed(off))
        });
    }
    if let Some(name) = abbrev {
        if name == "UTC" || name == "GMT" {
            return Ok(make(utc_secs(0), Zone::Utc));
        }
        if let Zone::Named(tz) = zone {
            if let Some(local) = tz.from_local_datetime(&naive).earliest() {
                if local.offset().abbreviation() == Some(name.as_str()) {
                    return Ok(make(local.timestamp(), zone));
                }
            }
        }
        // An abbreviation the zone does not know: Go fabricates a zero offset.
        return Ok(make(utc_secs(0), Zone::Fixed(0)));
    }
    Ok(match zone {
        Zone::Utc => make(utc_secs(0), Zone::Utc),
        Zone::Fixed(off) => make(utc_secs(off), zone),
        Zone::Named(tz) => {
            let secs = match tz.from_local_datetime(&naive).earliest() {
                Some(local) => local.timestamp(),
                // A wall time skipped by a DST jump: read it with the offset before it.
                None => {
                    let before = tz.offset_from_utc_datetime(&naive).fix().local_minus_utc();
                    utc_secs(before)
                }
            };
            make(secs, zone)
        }
    })
}

/// Go's `skip`: the literal `prefix` at the start of `value`, where a space in the
/// layout matches any run of spaces.
fn skip<'v>(mut value: &'v str, mut prefix: &str) -> Option<&'v str> {
    while let Some(c) = prefix.chars().next() {
        if c == ' ' {
            if !value.is_empty() && !value.starts_with(' ') {
                return None;
            }
            prefix = prefix.trim_start_matches(' ');
            value = value.trim_start_matches(' ');
            continue;
        }
        value = value.strip_prefix(c)?;
        prefix = &prefix[c.len_utf8()..];
    }
    Some(value)
}

/// Between `min` and `max` leading ASCII digits.
fn digits(v: &str, min: usize, max: usize) -> Option<(u32, &str)> {
    let n = v.bytes().take(max).take_while(u8::is_ascii_digit).count();
    if n < min {
        return None;
    }
    Some((v[..n].parse().ok()?, &v[n..]))
}

/// Go's `getnum`: one or two digits, exactly two when `fixed`.
fn num(v: &str, fixed: bool) -> Option<(u32, &str)> {
    if fixed {
        digits(v, 2, 2)
    } else {
        digits(v, 1, 2)
    }
}

fn lookup_name<'v>(v: &'v str, long: bool, names: &[&str]) -> Option<(usize, &'v str)> {
    names.iter().enumerate().find_map(|(i, name)| {
        let name = if long { name } else { &name[..3] };
        let head = v.get(..name.len())?;
        head.eq_ignore_ascii_case(name)
            .then(|| (i, &v[name.len()..]))
    })
}

fn frac_nanos(digits: &str) -> u32 {
    let mut padded: String = digits.chars().take(9).collect();
    while padded.len() < 9 {
        padded.push('0');
    }
    padded.parse().unwrap_or(0)
}

fn parse_offset(v: &str, colon: bool, secs: bool, hours_only: bool) -> Option<(i32, &str)> {
    let sign = match v.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let mut r = &v[1..];
    let (h, rest) = digits(r, 2, 2)?;
    r = rest;
    let mut total = h * 3600;
    if !hours_only {
        if colon {
            r = r.strip_prefix(':')?;
        }
        let (m, rest) = digits(r, 2, 2)?;
        r = rest;
        total += m * 60;
        if secs {
            if colon {
                r = r.strip_prefix(':')?;
            }
            let (s, rest) = digits(r, 2, 2)?;
            r = rest;
            total += s;
        }
    }
    Some((sign * i32::try_from(total).ok()?, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_700_000_000; // 2023-11-14 22:13:20 UTC, a Tuesday

    #[test]
    fn default_printing_matches_go_time_string() {
        assert_eq!(
            GoTime::from_unix(T).go_string(),
            "2023-11-14 22:13:20 +0000 UTC"
        );
        assert_eq!(
            GoTime::from_unix_nanos(T * 1_000_000_000 + 120_000_000).go_string(),
            "2023-11-14 22:13:20.12 +0000 UTC"
        );
        assert_eq!(GoTime::zero().go_string(), "0001-01-01 00:00:00 +0000 UTC");
        let paris = Zone::load("Europe/Paris").unwrap();
        assert_eq!(
            GoTime::from_unix(T).in_zone(paris).go_string(),
            "2023-11-14 23:13:20 +0100 CET"
        );
    }

    #[test]
    fn layouts_format_every_reference_element() {
        let t = GoTime::from_unix_nanos(T * 1_000_000_000 + 5_000_000);
        assert_eq!(
            t.format("Monday, 02-Jan-06 03:04:05.000 PM MST Z07:00"),
            "Tuesday, 14-Nov-23 10:13:20.005 PM UTC Z"
        );
        assert_eq!(
            t.format("2006/1/_2 15h4m5s .999 002"),
            "2023/11/14 22h13m20s .005 318"
        );
        let ny = GoTime::from_unix(T).in_zone(Zone::load("America/New_York").unwrap());
        assert_eq!(ny.format(time_rfc3339()), "2023-11-14T17:13:20-05:00");
        assert_eq!(ny.format("-0700 -07 Mon Jan pm"), "-0500 -05 Tue Nov pm");
    }

    fn time_rfc3339() -> &'static str {
        "2006-01-02T15:04:05Z07:00"
    }

    #[test]
    fn parsing_reads_layouts_in_the_given_zone() {
        let t = parse_in("2006-01-02 15:04", "2023-11-14 22:13", Zone::Utc).unwrap();
        assert_eq!(t.unix(), T - 20);
        let paris = Zone::load("Europe/Paris").unwrap();
        let t = parse_in("2006-01-02 15:04", "2023-11-14 23:13", paris).unwrap();
        assert_eq!(t.unix(), T - 20);
        assert_eq!(t.go_string(), "2023-11-14 23:13:00 +0100 CET");
        // An explicit offset wins over the zone and is kept as a fixed zone.
        let t = parse_in(time_rfc3339(), "2023-11-14T17:13:20-05:00", paris).unwrap();
        assert_eq!(t.unix(), T);
        assert_eq!(t.go_string(), "2023-11-14 17:13:20 -0500 -0500");
        // Fractions after seconds are accepted even when the layout has none.
        let t = parse_in("15:04:05", "10:00:01.25", Zone::Utc).unwrap();
        assert_eq!(t.go_string(), "0000-01-01 10:00:01.25 +0000 UTC");
        assert!(parse_in("2006-01-02", "2023-02-30", Zone::Utc).is_err());
        assert!(parse_in("2006-01-02", "2023-11-14x", Zone::Utc).is_err());
        assert!(parse_in("Jan 2", "Foo 2", Zone::Utc).is_err());
    }

    #[test]
    fn unknown_zones_do_not_load() {
        assert_eq!(Zone::load("Local"), Some(Zone::Utc));
        assert_eq!(Zone::load("Mars/Olympus"), None);
    }
}
