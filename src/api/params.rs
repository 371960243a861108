//! Query parameters: Loki's rules for times, durations, ranges, limits and direction.
//!
//! Owns turning the string parameters of `query`, `query_range`, `labels`, `series`, `tail`
//! and the index endpoints into typed values, with Loki's defaults and Loki's error texts
//! (reference: `http-api.md` §1.3–§1.5, §4.1–§4.2). It does not own LogQL parsing or
//! execution; every failure here is a 400 with a message naming the parameter.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds in one second.
const NS_PER_SEC: i64 = 1_000_000_000;
/// Loki's cap on points per series for a range query (`step` validation).
pub const MAX_POINTS: i64 = 11_000;
/// Default lookback when neither `start` nor `since` is given.
const DEFAULT_SINCE_NS: i64 = 3_600 * NS_PER_SEC;
/// Default `limit` for log queries.
pub const DEFAULT_LIMIT: u32 = 100;

/// A bad query parameter; the message is what the client sees (status 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

fn bad(msg: impl Into<String>) -> ParamError {
    ParamError(msg.into())
}

pub use query_lang::eval::Direction;

/// The request's parameters as a multimap, in the order received (query string, then form).
#[derive(Clone, Debug, Default)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    /// The first value of `name`, if any and non-empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name` (e.g. repeated `match[]`).
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Current time in Unix nanoseconds.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Parses a timestamp the way Loki does: float with `.` → seconds (ms precision); an
/// integer of at most 10 characters → seconds, longer → nanoseconds; else RFC3339(Nano).
pub fn parse_timestamp(s: &str) -> Result<i64, ParamError> {
    let invalid = || bad(format!("cannot parse {s:?} to a valid timestamp"));
    if s.contains('.') {
        if let Ok(f) = s.parse::<f64>() {
            if !f.is_finite() {
                return Err(invalid());
            }
            let ms = (f * 1000.0).round();
            if ms.abs() > (i64::MAX / 1_000_000) as f64 {
                return Err(invalid());
            }
            return Ok(ms as i64 * 1_000_000);
        }
    }
    if let Ok(n) = s.parse::<i64>() {
        if s.len() <= 10 {
            return n.checked_mul(NS_PER_SEC).ok_or_else(invalid);
        }
        return Ok(n);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .ok_or_else(invalid)
}

/// Parses a Prometheus duration (`1h30m`, `15000ms`, `5m`): ordered units y w d h m s ms,
/// each at most once, integer amounts. Returns nanoseconds.
pub fn parse_prom_duration(s: &str) -> Result<i64, ParamError> {
    let invalid = || bad(format!("cannot parse {s:?} to a valid duration"));
    const UNITS: [(&str, i64); 7] = [
        ("y", 365 * 24 * 3600 * NS_PER_SEC),
        ("w", 7 * 24 * 3600 * NS_PER_SEC),
        ("d", 24 * 3600 * NS_PER_SEC),
        ("h", 3600 * NS_PER_SEC),
        ("m", 60 * NS_PER_SEC),
        ("s", NS_PER_SEC),
        ("ms", 1_000_000),
    ];
    if s.is_empty() {
        return Err(invalid());
    }
    let mut rest = s;
    let mut total: i64 = 0;
    let mut next_unit = 0usize;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid());
        }
        let n: i64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let idx = UNITS
            .iter()
            .position(|(u, _)| *u == unit)
            .ok_or_else(invalid)?;
        if idx < next_unit {
            return Err(invalid());
        }
        next_unit = idx + 1;
        total = n
            .checked_mul(UNITS[idx].1)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(invalid)?;
    }
    Ok(total)
}

/// Parses `step` / `interval`: a float number of seconds, or a Prometheus duration.
pub fn parse_seconds_or_duration(s: &str) -> Result<i64, ParamError> {
    if let Ok(f) = s.parse::<f64>() {
        if !f.is_finite() {
            return Err(bad(format!("cannot parse {s:?} to a valid duration")));
        }
        let ns = (f * NS_PER_SEC as f64).round();
        if ns.abs() > i64::MAX as f64 {
            return Err(bad(format!("cannot parse {s:?} to a valid duration")));
        }
        return Ok(ns as i64);
    }
    parse_prom_duration(s)
}

/// A `[start, end]` time range in Unix nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeRange {
    pub start: i64,
    pub end: i64,
}

/// `start`/`end`/`since` with Loki's defaults: end = now, start = min(end, now) - since
/// (since defaults to 1h); an explicit start wins over since; end < start is an error.
pub fn time_range(params: &Params, now: i64) -> Result<TimeRange, ParamError> {
    let end = match params.get("end") {
        Some(s) => parse_timestamp(s)?,
        None => now,
    };
    let start = match params.get("start") {
        Some(s) => parse_timestamp(s)?,
        None => {
            let since = match params.get("since") {
                Some(s) => parse_prom_duration(s)?,
                None => DEFAULT_SINCE_NS,
            };
            end.min(now).saturating_sub(since)
        }
    };
    if end < start {
        return Err(bad(
            "end timestamp must not be before or equal to start time",
        ));
    }
    Ok(TimeRange { start, end })
}

fn limit(params: &Params, max_limit: u32) -> Result<u32, ParamError> {
    let Some(s) = params.get("limit") else {
        return Ok(DEFAULT_LIMIT);
    };
    let n: i64 = s.parse().map_err(|_| {
        bad(format!(
            "cannot parse {s:?} as limit: expected a positive integer"
        ))
    })?;
    if n <= 0 {
        return Err(bad("limit must be a positive value"));
    }
    if max_limit > 0 && n > i64::from(max_limit) {
        return Err(bad(format!(
            "max entries limit per query exceeded, limit > max_entries_limit_per_query ({n} > {max_limit})"
        )));
    }
    u32::try_from(n).map_err(|_| bad(format!("limit {n} is too large")))
}

fn direction(params: &Params) -> Result<Direction, ParamError> {
    match params.get("direction") {
        None => Ok(Direction::Backward),
        Some(s) if s.eq_ignore_ascii_case("backward") => Ok(Direction::Backward),
        Some(s) if s.eq_ignore_ascii_case("forward") => Ok(Direction::Forward),
        Some(s) => Err(bad(format!(
            "invalid direction {s:?}: use \"forward\" or \"backward\""
        ))),
    }
}

fn query_text(params: &Params) -> Result<String, ParamError> {
    params
        .get("query")
        .map(str::to_string)
        .ok_or_else(|| bad("query parameter is required: send query=<LogQL>"))
}

/// Parameters of `/loki/api/v1/query_range`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeQuery {
    pub query: String,
    pub start: i64,
    pub end: i64,
    /// Step in nanoseconds, > 0.
    pub step: i64,
    /// Log queries only: minimum gap between kept entries, in nanoseconds (0 = off).
    pub interval: i64,
    pub limit: u32,
    pub direction: Direction,
}

impl RangeQuery {
    /// Reads and validates the parameters; `max_limit` is `max_entries_limit_per_query`.
    pub fn from_params(params: &Params, now: i64, max_limit: u32) -> Result<Self, ParamError> {
        let query = query_text(params)?;
        let TimeRange { start, end } = time_range(params, now)?;
        let step = match params.get("step") {
            Some(s) => parse_seconds_or_duration(s)?,
            None => default_step(start, end),
        };
        if step <= 0 {
            return Err(bad(
                "zero or negative query resolution step widths are not accepted. Try a positive integer",
            ));
        }
        if (end - start) / step > MAX_POINTS {
            return Err(bad(
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
            ));
        }
        let interval = match params.get("interval") {
            Some(s) => parse_seconds_or_duration(s)?,
            None => 0,
        };
        if interval < 0 {
            return Err(bad(
                "zero or negative query resolution step widths are not accepted. Try a positive integer",
            ));
        }
        Ok(RangeQuery {
            query,
            start,
            end,
            step,
            interval,
            limit: limit(params, max_limit)?,
            direction: direction(params)?,
        })
    }
}

/// Loki's default step: `max(floor(range_seconds / 250), 1)` seconds.
pub fn default_step(start: i64, end: i64) -> i64 {
    let secs = (end - start) / NS_PER_SEC / 250;
    secs.max(1) * NS_PER_SEC
}

/// Parameters of `/loki/api/v1/query` (instant).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstantQuery {
    pub query: String,
    pub time: i64,
    pub limit: u32,
    pub direction: Direction,
}

impl InstantQuery {
    /// Reads and validates the parameters; `time` defaults to now.
    pub fn from_params(params: &Params, now: i64, max_limit: u32) -> Result<Self, ParamError> {
        Ok(InstantQuery {
            query: query_text(params)?,
            time: match params.get("time") {
                Some(s) => parse_timestamp(s)?,
                None => now,
            },
            limit: limit(params, max_limit)?,
            direction: direction(params)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn timestamps_follow_lokis_length_rule() {
        assert_eq!(
            parse_timestamp("1767225600").unwrap(),
            1_767_225_600 * NS_PER_SEC
        );
        // Grafana's health check: 10 digits, read as seconds (year 2096).
        assert_eq!(
            parse_timestamp("4000000000").unwrap(),
            4_000_000_000 * NS_PER_SEC
        );
        assert_eq!(
            parse_timestamp("1767225600000000000").unwrap(),
            1_767_225_600_000_000_000
        );
        // 13-digit milliseconds are read as nanoseconds, as Loki does.
        assert_eq!(parse_timestamp("1767225600000").unwrap(), 1_767_225_600_000);
        assert_eq!(
            parse_timestamp("1767225600.5").unwrap(),
            1_767_225_600_500_000_000
        );
        assert_eq!(
            parse_timestamp("2026-01-01T00:00:00Z").unwrap(),
            1_767_225_600 * NS_PER_SEC
        );
        assert_eq!(
            parse_timestamp("2026-01-01T00:00:00.123456789Z").unwrap(),
            1_767_225_600_123_456_789
        );
        assert!(parse_timestamp("1e9").is_err());
        assert!(parse_timestamp("yesterday").is_err());
    }

    #[test]
    fn durations_accept_float_seconds_and_prometheus_units() {
        assert_eq!(parse_seconds_or_duration("60").unwrap(), 60 * NS_PER_SEC);
        assert_eq!(parse_seconds_or_duration("0.5").unwrap(), NS_PER_SEC / 2);
        assert_eq!(
            parse_seconds_or_duration("15000ms").unwrap(),
            15 * NS_PER_SEC
        );
        assert_eq!(
            parse_seconds_or_duration("1h30m").unwrap(),
            5_400 * NS_PER_SEC
        );
        assert_eq!(parse_seconds_or_duration("1m0s").unwrap(), 60 * NS_PER_SEC);
        assert!(parse_seconds_or_duration("1.5s").is_err());
        assert!(parse_seconds_or_duration("500us").is_err());
        assert!(parse_seconds_or_duration("30m1h").is_err());
        assert!(parse_seconds_or_duration("").is_err());
    }

    #[test]
    fn range_defaults_to_last_hour_and_backward_with_limit_100() {
        let now = 10_000 * NS_PER_SEC;
        let q = RangeQuery::from_params(&params(&[("query", "{a=\"b\"}")]), now, 5000).unwrap();
        assert_eq!(q.end, now);
        assert_eq!(q.start, now - 3_600 * NS_PER_SEC);
        assert_eq!(q.limit, 100);
        assert_eq!(q.direction, Direction::Backward);
        assert_eq!(q.step, 14 * NS_PER_SEC);
    }

    #[test]
    fn since_applies_only_without_start() {
        let now = 10_000 * NS_PER_SEC;
        let r = time_range(&params(&[("since", "5m")]), now).unwrap();
        assert_eq!(r.start, now - 300 * NS_PER_SEC);
        let r = time_range(&params(&[("since", "5m"), ("start", "100")]), now).unwrap();
        assert_eq!(r.start, 100 * NS_PER_SEC);
    }

    #[test]
    fn bad_ranges_steps_and_limits_are_refused_with_lokis_messages() {
        let now = 10_000 * NS_PER_SEC;
        let e = |p: &[(&str, &str)]| {
            RangeQuery::from_params(&params(p), now, 5000)
                .unwrap_err()
                .0
        };
        assert!(e(&[("query", "x"), ("start", "200"), ("end", "100")]).contains("end timestamp"));
        assert!(e(&[("query", "x"), ("step", "0")]).contains("zero or negative"));
        assert!(e(&[
            ("query", "x"),
            ("start", "0"),
            ("end", "100000"),
            ("step", "1")
        ])
        .contains("11,000 points"));
        assert_eq!(
            e(&[("query", "x"), ("limit", "6000")]),
            "max entries limit per query exceeded, limit > max_entries_limit_per_query (6000 > 5000)"
        );
        assert!(e(&[("query", "x"), ("limit", "0")]).contains("positive"));
        assert!(e(&[("query", "x"), ("direction", "sideways")]).contains("direction"));
        assert!(e(&[]).contains("query parameter is required"));
    }

    #[test]
    fn direction_is_case_insensitive() {
        let q = RangeQuery::from_params(
            &params(&[("query", "x"), ("direction", "FORWARD")]),
            NS_PER_SEC * 5000,
            5000,
        )
        .unwrap();
        assert_eq!(q.direction, Direction::Forward);
    }
}
