//! Time as the storage engine sees it: a `Clock` trait with the system clock and a manual
//! clock for tests, plus the UTC day arithmetic segments and the index are keyed by.
//!
//! Owns "what time is it" for chunk ages, idle periods, retention and segment ids, so tests
//! can move time instead of sleeping. It does not own query time parsing (the API's).

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds in one UTC day.
pub const DAY_NS: i64 = 86_400 * 1_000_000_000;

/// A source of the current time in Unix nanoseconds.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now_ns(&self) -> i64;
}

/// The machine's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to; for tests of ages, idleness and retention.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ns: i64) -> Self {
        ManualClock(AtomicI64::new(now_ns))
    }

    pub fn set(&self, now_ns: i64) {
        self.0.store(now_ns, Ordering::SeqCst);
    }

    pub fn advance(&self, by: std::time::Duration) {
        let by = i64::try_from(by.as_nanos()).unwrap_or(i64::MAX);
        self.0.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A UTC calendar day, counted from 1970-01-01. Segments never span two of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub i64);

impl Day {
    /// The UTC day holding a nanosecond timestamp (negative timestamps round down).
    pub fn of_ns(ts_ns: i64) -> Day {
        Day(ts_ns.div_euclid(DAY_NS))
    }

    /// First nanosecond of the day.
    pub fn start_ns(self) -> i64 {
        self.0.saturating_mul(DAY_NS)
    }

    /// First nanosecond of the next day (exclusive end).
    pub fn end_ns(self) -> i64 {
        self.0.saturating_add(1).saturating_mul(DAY_NS)
    }

    /// Parses the `YYYY-MM-DD` form used in object keys.
    pub fn parse(s: &str) -> Option<Day> {
        let date = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
        Some(Day((date - epoch).num_days()))
    }
}

impl fmt::Display for Day {
    /// `YYYY-MM-DD`, the form object keys use so a bucket listing reads as a calendar.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let date = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
            .and_then(|epoch| epoch.checked_add_signed(chrono::TimeDelta::days(self.0)));
        match date {
            Some(d) => write!(f, "{}", d.format("%Y-%m-%d")),
            None => write!(f, "day{}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_split_at_utc_midnight_and_print_as_dates() {
        let midnight = 1_767_225_600 * 1_000_000_000; // 2026-01-01T00:00:00Z
        assert_eq!(Day::of_ns(midnight).to_string(), "2026-01-01");
        assert_eq!(Day::of_ns(midnight - 1).to_string(), "2025-12-31");
        assert_eq!(Day::of_ns(midnight).start_ns(), midnight);
        assert_eq!(Day::parse("2026-01-01"), Some(Day::of_ns(midnight)));
        assert_eq!(Day::parse("2026-13-01"), None);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(10);
        assert_eq!(c.now_ns(), 10);
        c.advance(std::time::Duration::from_nanos(5));
        assert_eq!(c.now_ns(), 15);
    }
}
