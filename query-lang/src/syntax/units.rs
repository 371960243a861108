//! Duration and byte-size literals as LogQL spells them: parsing and canonical printing.
//!
//! Three dialects meet in LogQL and each is reproduced exactly:
//! * Prometheus durations (`1h30m`, `5d`, `1w`, `1y`: integer components, units strictly
//!   decreasing, millisecond resolution) — the only form allowed in `[range]`;
//! * Go durations (`1.5h`, `300us`, `-5m`) — accepted wherever a DURATION token is, and
//!   the form label values are converted with (`unwrap duration(x)`, `| latency > 1s`);
//! * go-humanize byte sizes (`5MB` = 5 000 000, `2.5KiB` = 2560, `1,000 kb`).
//!
//! All durations are nanoseconds in an `i64`, like Go's `time.Duration`.

const NS_PER_MS: i64 = 1_000_000;
const NS_PER_SECOND: i64 = 1_000_000_000;

/// Prometheus units, largest first, in nanoseconds (`y` is 365 days, as in Prometheus).
const PROM_UNITS: [(&str, i64); 7] = [
    ("y", 365 * 24 * 3600 * NS_PER_SECOND),
    ("w", 7 * 24 * 3600 * NS_PER_SECOND),
    ("d", 24 * 3600 * NS_PER_SECOND),
    ("h", 3600 * NS_PER_SECOND),
    ("m", 60 * NS_PER_SECOND),
    ("s", NS_PER_SECOND),
    ("ms", NS_PER_MS),
];

/// Parses a Prometheus duration (`model.ParseDuration`): `0`, or components like `1h30m`
/// with units `y w d h m s ms` in strictly decreasing order and no fractions or signs.
pub fn parse_prometheus_duration(s: &str) -> Option<i64> {
    if s == "0" {
        return Some(0);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total: i64 = 0;
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let (number, after) = rest.split_at(digits);
        let value: i64 = number.parse().ok()?;
        let letters = after
            .bytes()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        let (unit, after) = after.split_at(letters);
        let index = PROM_UNITS
            .iter()
            .position(|(name, _)| *name == unit)
            .filter(|&i| i >= next_unit)?;
        total = total.checked_add(value.checked_mul(PROM_UNITS.get(index)?.1)?)?;
        next_unit = index + 1;
        rest = after;
    }
    Some(total)
}

/// Parses a Go duration (`time.ParseDuration`): optional sign, then decimal numbers with
/// optional fractions, each followed by a unit of `ns us µs μs ms s m h`; or a bare `0`.
pub fn parse_go_duration(s: &str) -> Option<i64> {
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(after_dot) => {
                let n = after_dot.bytes().take_while(u8::is_ascii_digit).count();
                after_dot.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            _ => return None,
        };
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        let mut value = whole.checked_mul(unit_ns)?;
        if !frac_part.is_empty() {
            // Go keeps only as many fraction digits as fit; 30 is far beyond nanoseconds.
            let kept = &frac_part[..frac_part.len().min(30)];
            let numerator: u128 = kept.parse().ok()?;
            let scale = 10u128.checked_pow(u32::try_from(kept.len()).ok()?)?;
            value = value.checked_add(numerator.checked_mul(unit_ns)? / scale)?;
        }
        total = total.checked_add(value)?;
        if total > 1u128 << 63 {
            return None;
        }
        rest = after;
    }
    if negative {
        i64::try_from(-i128::try_from(total).ok()?).ok()
    } else {
        i64::try_from(total).ok()
    }
}

/// Parses a byte size the way go-humanize's `ParseBytes` does: a number (commas allowed),
/// optional spaces, then a case-insensitive unit: `b`, `kb mb gb tb pb eb` (powers of
/// 1000), `kib mib gib tib pib eib` (powers of 1024), the same without the trailing `b`,
/// or nothing.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let number_len = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.' || *c == ','))
        .map_or(s.len(), |(i, _)| i);
    let (number, unit) = s.split_at(number_len);
    let number: f64 = number.replace(',', "").parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let multiplier: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "p" | "pb" => 1e15,
        "e" | "eb" => 1e18,
        "ki" | "kib" => 1024f64,
        "mi" | "mib" => 1024f64.powi(2),
        "gi" | "gib" => 1024f64.powi(3),
        "ti" | "tib" => 1024f64.powi(4),
        "pi" | "pib" => 1024f64.powi(5),
        "ei" | "eib" => 1024f64.powi(6),
        _ => return None,
    };
    let value = number * multiplier;
    if !(0.0..u64::MAX as f64).contains(&value) {
        return None;
    }
    // Truncation toward zero is what Go's uint64(f) does.
    Some(value as u64)
}

/// Writes a duration so that it lexes back to the same value: Prometheus form
/// (`1h30m`, `5d`, `500ms`) when it is a whole number of milliseconds, else a Go form
/// with a fractional unit (`1.5us`). Negative values get a leading `-`.
pub fn format_duration(ns: i64) -> String {
    let mut out = String::new();
    if ns < 0 {
        out.push('-');
    }
    let abs = ns.unsigned_abs();
    if abs == 0 {
        out.push_str("0s");
        return out;
    }
    if abs % NS_PER_MS as u64 == 0 {
        let mut rest = abs;
        for (name, unit) in PROM_UNITS {
            let unit = unit as u64;
            if rest >= unit {
                out.push_str(&(rest / unit).to_string());
                out.push_str(name);
                rest %= unit;
            }
        }
        return out;
    }
    // Sub-millisecond: only Go's grammar can say it. Seconds with a fraction is exact.
    let seconds = abs / NS_PER_SECOND as u64;
    let fraction = abs % NS_PER_SECOND as u64;
    let fraction = format!("{fraction:09}");
    out.push_str(&format!("{seconds}.{}s", fraction.trim_end_matches('0')));
    out
}

/// Writes a byte size that `parse_bytes` reads back exactly, preferring the largest
/// decimal unit (`800kB`, `5MB`), then binary (`2KiB`), else plain bytes (`1234B`).
pub fn format_bytes(bytes: u64) -> String {
    const DECIMAL: [(&str, u64); 6] = [
        ("EB", 1_000_000_000_000_000_000),
        ("PB", 1_000_000_000_000_000),
        ("TB", 1_000_000_000_000),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("kB", 1_000),
    ];
    const BINARY: [(&str, u64); 5] = [
        ("PiB", 1 << 50),
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    if bytes == 0 {
        return "0B".to_string();
    }
    for (name, unit) in DECIMAL.into_iter().chain(BINARY) {
        if bytes % unit == 0 {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_durations_need_decreasing_integer_units() {
        assert_eq!(parse_prometheus_duration("5m"), Some(300 * NS_PER_SECOND));
        assert_eq!(
            parse_prometheus_duration("1h30m"),
            Some(5400 * NS_PER_SECOND)
        );
        assert_eq!(parse_prometheus_duration("500ms"), Some(500 * NS_PER_MS));
        assert_eq!(
            parse_prometheus_duration("1y"),
            Some(365 * 24 * 3600 * NS_PER_SECOND)
        );
        assert_eq!(parse_prometheus_duration("0"), Some(0));
        assert_eq!(parse_prometheus_duration("1.5m"), None);
        assert_eq!(parse_prometheus_duration("30s5m"), None);
        assert_eq!(parse_prometheus_duration("5minutes"), None);
        assert_eq!(parse_prometheus_duration(" 5m"), None);
        assert_eq!(parse_prometheus_duration("-5m"), None);
        assert_eq!(parse_prometheus_duration(""), None);
    }

    #[test]
    fn go_durations_allow_fractions_signs_and_micro_units() {
        assert_eq!(parse_go_duration("1.5h"), Some(5400 * NS_PER_SECOND));
        assert_eq!(parse_go_duration("300us"), Some(300_000));
        assert_eq!(parse_go_duration("300µs"), Some(300_000));
        assert_eq!(parse_go_duration("-5m"), Some(-300 * NS_PER_SECOND));
        assert_eq!(
            parse_go_duration("1h15m30.918273645s"),
            Some(4530 * NS_PER_SECOND + 918_273_645)
        );
        assert_eq!(parse_go_duration("0"), Some(0));
        assert_eq!(parse_go_duration("5d"), None);
        assert_eq!(parse_go_duration("5"), None);
        assert_eq!(parse_go_duration("."), None);
        assert_eq!(parse_go_duration("3000000h"), None);
    }

    #[test]
    fn byte_sizes_follow_humanize_units() {
        assert_eq!(parse_bytes("5M"), Some(5_000_000));
        assert_eq!(parse_bytes("2.5KiB"), Some(2560));
        assert_eq!(parse_bytes("800KB"), Some(800_000));
        assert_eq!(parse_bytes("800kB"), Some(800_000));
        assert_eq!(parse_bytes("1,000 kb"), Some(1_000_000));
        assert_eq!(parse_bytes("12"), Some(12));
        assert_eq!(parse_bytes("12 parsecs"), None);
        assert_eq!(parse_bytes("KB"), None);
    }

    #[test]
    fn formatted_durations_parse_back_to_the_same_value() {
        for ns in [
            0,
            1,
            999,
            NS_PER_MS,
            5400 * NS_PER_SECOND,
            -300 * NS_PER_SECOND,
            8 * 24 * 3600 * NS_PER_SECOND + 1,
            i64::MAX,
            i64::MIN + 1,
        ] {
            let text = format_duration(ns);
            let back = parse_prometheus_duration(&text).or_else(|| parse_go_duration(&text));
            assert_eq!(back, Some(ns), "{text}");
        }
        assert_eq!(format_duration(5400 * NS_PER_SECOND), "1h30m");
    }

    #[test]
    fn formatted_byte_sizes_parse_back_to_the_same_value() {
        for b in [
            0,
            1,
            1000,
            1024,
            2560,
            800_000,
            1234,
            1 << 62,
            (1 << 53) - 1,
        ] {
            assert_eq!(
                parse_bytes(&format_bytes(b)),
                Some(b),
                "{}",
                format_bytes(b)
            );
        }
        assert_eq!(format_bytes(800_000), "800kB");
    }
}
