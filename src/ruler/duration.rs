//! Prometheus-style durations (`30s`, `5m`, `1h30m`, `1d`, `1w`) as rule files and the
//! `ruler:` config spell them.
//!
//! Owns parsing and the shortest printed form (`300s` is written back as `5m`, as
//! Prometheus and Loki do). It does not own Go-style durations with fractions (`1.5h`):
//! rule files never accept those.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A whole number of milliseconds, printed in Prometheus' shortest unit form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PromDuration(Duration);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("invalid duration {0:?}: use units y, w, d, h, m, s, ms in that order, e.g. 1h30m")]
    Syntax(String),
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

const UNITS: [(&str, u64); 7] = [
    ("y", 365 * 24 * 3600 * 1000),
    ("w", 7 * 24 * 3600 * 1000),
    ("d", 24 * 3600 * 1000),
    ("h", 3600 * 1000),
    ("m", 60 * 1000),
    ("s", 1000),
    ("ms", 1),
];

impl PromDuration {
    pub const ZERO: PromDuration = PromDuration(Duration::ZERO);

    pub fn from_secs(secs: u64) -> Self {
        PromDuration(Duration::from_secs(secs))
    }

    pub fn from_millis(ms: u64) -> Self {
        PromDuration(Duration::from_millis(ms))
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }

    pub fn as_millis(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0.as_secs_f64()
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    /// Parses `1h30m`-style text. Units must appear largest first, each at most once;
    /// a bare `0` is accepted because Prometheus accepts it.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let syntax = || DurationError::Syntax(text.to_string());
        if text == "0" {
            return Ok(Self::ZERO);
        }
        if text.is_empty() {
            return Err(syntax());
        }
        let mut rest = text;
        let mut total: u64 = 0;
        let mut next_unit = 0;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(syntax());
            }
            let (number, after) = rest.split_at(digits);
            let n: u64 = number
                .parse()
                .map_err(|_| DurationError::Overflow(text.to_string()))?;
            // "ms" must be tried before "m" so that `5ms` is not read as 5m + "s".
            let unit = UNITS
                .iter()
                .enumerate()
                .skip(next_unit)
                .filter(|(_, (u, _))| after.starts_with(u))
                .max_by_key(|(_, (u, _))| u.len())
                .ok_or_else(syntax)?;
            let (index, (unit_text, unit_ms)) = unit;
            next_unit = index + 1;
            rest = &after[unit_text.len()..];
            total = n
                .checked_mul(*unit_ms)
                .and_then(|ms| total.checked_add(ms))
                .ok_or_else(|| DurationError::Overflow(text.to_string()))?;
        }
        Ok(PromDuration(Duration::from_millis(total)))
    }
}

impl From<Duration> for PromDuration {
    fn from(d: Duration) -> Self {
        PromDuration(d)
    }
}

impl fmt::Display for PromDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in UNITS {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for PromDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PromDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        PromDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_compound_durations_and_prints_the_shortest_form() {
        let d = PromDuration::parse("300s").unwrap();
        assert_eq!(d.as_duration(), Duration::from_secs(300));
        assert_eq!(d.to_string(), "5m");
        assert_eq!(PromDuration::parse("1h30m").unwrap().to_string(), "1h30m");
        assert_eq!(PromDuration::parse("90m").unwrap().to_string(), "1h30m");
        assert_eq!(PromDuration::parse("1d").unwrap().to_string(), "1d");
        assert_eq!(
            PromDuration::parse("1500ms").unwrap().to_string(),
            "1s500ms"
        );
        assert_eq!(PromDuration::parse("0").unwrap().to_string(), "0s");
    }

    #[test]
    fn rejects_fractions_misordered_units_and_garbage() {
        for bad in ["", "1.5h", "5", "m", "1m1h", "1s1s", "5 m", "-1m", "1x"] {
            assert!(
                PromDuration::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    proptest! {
        #[test]
        fn printed_durations_parse_back(ms in 0u64..10_000_000_000_000) {
            let d = PromDuration::from_millis(ms);
            prop_assert_eq!(PromDuration::parse(&d.to_string()).unwrap(), d);
        }

        #[test]
        fn parse_never_panics(s in "[0-9a-z]{0,12}") {
            let _ = PromDuration::parse(&s);
        }
    }
}
