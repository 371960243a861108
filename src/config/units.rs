//! Durations and byte sizes as `lode serve`'s YAML spells them.
//!
//! Owns parsing and printing `744h`, `1w`, `10m`, `1h30m`, `1.5h` (Prometheus and Go
//! duration syntax, which Loki's config mixes) and `256KB`, `1MiB`, `262144` (byte sizes,
//! with Loki's rule that `KB` is 1000 bytes and `KiB` 1024). It does not own query-time
//! durations (`step`, `since`), which follow the HTTP API's own rules in `api::params`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A bad duration or byte-size value; the message shows what was written and what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("invalid duration {0:?}: write a number and a unit (y, w, d, h, m, s, ms, us, ns), e.g. 744h, 1w or 1h30m")]
    Duration(String),
    #[error("invalid byte size {0:?}: write a number and an optional unit (B, KB, MB, GB, KiB, MiB, GiB), e.g. 256KB")]
    ByteSize(String),
}

/// A configuration duration such as `744h` or `10m`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigDuration(pub Duration);

const NS: u128 = 1;
const US: u128 = 1_000;
const MS: u128 = 1_000_000;
const SEC: u128 = 1_000_000_000;
const MIN: u128 = 60 * SEC;
const HOUR: u128 = 60 * MIN;
const DAY: u128 = 24 * HOUR;

/// Longer spellings first so `ms` is not read as `m` followed by garbage.
const DURATION_UNITS: [(&str, u128); 10] = [
    ("ms", MS),
    ("us", US),
    ("µs", US),
    ("ns", NS),
    ("y", 365 * DAY),
    ("w", 7 * DAY),
    ("d", DAY),
    ("h", HOUR),
    ("m", MIN),
    ("s", SEC),
];

impl ConfigDuration {
    pub const ZERO: ConfigDuration = ConfigDuration(Duration::ZERO);

    pub const fn from_secs(secs: u64) -> Self {
        ConfigDuration(Duration::from_secs(secs))
    }

    pub const fn from_hours(hours: u64) -> Self {
        ConfigDuration(Duration::from_secs(hours * 3600))
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    /// The duration in nanoseconds, saturating at `i64::MAX` (about 292 years).
    pub fn as_nanos_i64(&self) -> i64 {
        i64::try_from(self.0.as_nanos()).unwrap_or(i64::MAX)
    }

    /// Parses `0`, or a sequence of `<number><unit>` where the number may have a fraction.
    pub fn parse(text: &str) -> Result<Self, UnitError> {
        let err = || UnitError::Duration(text.to_string());
        let s = text.trim();
        if s == "0" {
            return Ok(ConfigDuration::ZERO);
        }
        if s.is_empty() {
            return Err(err());
        }
        let mut rest = s;
        let mut total: f64 = 0.0;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(err)?;
            let number: f64 = rest
                .get(..num_len)
                .unwrap_or("")
                .parse()
                .map_err(|_| err())?;
            rest = rest.get(num_len..).unwrap_or("");
            let (unit, scale) = DURATION_UNITS
                .iter()
                .find(|(u, _)| rest.starts_with(u))
                .ok_or_else(err)?;
            rest = rest.get(unit.len()..).unwrap_or("");
            total += number * (*scale as f64);
        }
        if !total.is_finite() || total > u64::MAX as f64 {
            return Err(err());
        }
        Ok(ConfigDuration(Duration::from_nanos(total.round() as u64)))
    }
}

impl fmt::Display for ConfigDuration {
    /// Prints hours, minutes, seconds and sub-second units like Go (`744h`, `1m30s`,
    /// `500ms`), without Go's trailing zero units (`1h0m0s` prints as `1h`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ns = self.0.as_nanos();
        if ns == 0 {
            return f.write_str("0s");
        }
        for (unit, scale) in [
            ("h", HOUR),
            ("m", MIN),
            ("s", SEC),
            ("ms", MS),
            ("us", US),
            ("ns", NS),
        ] {
            if ns >= scale {
                write!(f, "{}{unit}", ns / scale)?;
                ns %= scale;
            }
        }
        Ok(())
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(0) => Ok(ConfigDuration::ZERO),
            NumberOrText::Number(n) => {
                Err(serde::de::Error::custom(UnitError::Duration(n.to_string())))
            }
            NumberOrText::Text(t) => ConfigDuration::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

/// A size in bytes, written `256KB`, `1MiB` or a bare number of bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

const SIZE_UNITS: [(&str, u64); 13] = [
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("k", 1_000),
    ("m", 1_000_000),
    ("g", 1_000_000_000),
    ("b", 1),
    ("", 1),
];

impl ByteSize {
    pub fn bytes(&self) -> u64 {
        self.0
    }

    /// The size as a `usize`, saturating on 32-bit targets.
    pub fn as_usize(&self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }

    /// Parses a byte size; units are case-insensitive, `KB` = 1000 and `KiB` = 1024 as in
    /// Loki (`humanize.ParseBytes`).
    pub fn parse(text: &str) -> Result<Self, UnitError> {
        let err = || UnitError::ByteSize(text.to_string());
        let s = text.trim().to_ascii_lowercase();
        let num_len = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let number: f64 = s.get(..num_len).unwrap_or("").parse().map_err(|_| err())?;
        let unit = s.get(num_len..).unwrap_or("").trim();
        let (_, scale) = SIZE_UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .ok_or_else(err)?;
        let bytes = number * (*scale as f64);
        if !bytes.is_finite() || bytes > u64::MAX as f64 {
            return Err(err());
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    /// An exact spelling in the largest unit that divides the size, SI units first (Loki's
    /// defaults are SI): `256KB`, `256KiB`, `1MB`, or plain bytes (`1234`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        let best = [
            ("GB", 1_000_000_000u64),
            ("MB", 1_000_000),
            ("KB", 1_000),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ]
        .into_iter()
        .find(|(_, scale)| n != 0 && n % scale == 0);
        match best {
            Some((unit, scale)) => write!(f, "{}{unit}", n / scale),
            None => write!(f, "{n}"),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(n) => Ok(ByteSize(n)),
            NumberOrText::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_prometheus_and_go_spellings() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!(ConfigDuration::parse("744h").unwrap().0, h(744));
        assert_eq!(ConfigDuration::parse("1w").unwrap().0, h(168));
        assert_eq!(ConfigDuration::parse("31d").unwrap().0, h(744));
        assert_eq!(
            ConfigDuration::parse("1h30m").unwrap().0,
            Duration::from_secs(5400)
        );
        assert_eq!(
            ConfigDuration::parse("1.5h").unwrap().0,
            Duration::from_secs(5400)
        );
        assert_eq!(
            ConfigDuration::parse("250ms").unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(ConfigDuration::parse("0").unwrap(), ConfigDuration::ZERO);
        for bad in ["", "10", "h", "10x", "1h-2m", "ms"] {
            assert!(
                ConfigDuration::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn durations_print_in_a_form_that_parses_back() {
        for text in ["744h", "10m", "1m30s", "500ms", "0s", "1h1s"] {
            let d = ConfigDuration::parse(text).unwrap();
            assert_eq!(d.to_string(), text);
        }
        assert_eq!(ConfigDuration::parse("1w").unwrap().to_string(), "168h");
    }

    #[test]
    fn byte_sizes_follow_lokis_si_and_binary_units() {
        assert_eq!(ByteSize::parse("256KB").unwrap().0, 256_000);
        assert_eq!(ByteSize::parse("256kb").unwrap().0, 256_000);
        assert_eq!(ByteSize::parse("256KiB").unwrap().0, 262_144);
        assert_eq!(ByteSize::parse("1.5MB").unwrap().0, 1_500_000);
        assert_eq!(ByteSize::parse("4096").unwrap().0, 4096);
        assert_eq!(ByteSize::parse("10 MiB").unwrap().0, 10 << 20);
        assert!(ByteSize::parse("lots").is_err());
        assert!(ByteSize::parse("5 parsecs").is_err());
        assert_eq!(ByteSize(256_000).to_string(), "256KB");
        assert_eq!(ByteSize(262_144).to_string(), "256KiB");
        assert_eq!(ByteSize(1234).to_string(), "1234");
    }

    #[test]
    fn yaml_numbers_are_bytes_but_only_zero_is_a_duration() {
        assert_eq!(serde_yaml::from_str::<ByteSize>("1024").unwrap().0, 1024);
        assert_eq!(
            serde_yaml::from_str::<ConfigDuration>("0").unwrap(),
            ConfigDuration::ZERO
        );
        let err = serde_yaml::from_str::<ConfigDuration>("30")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid duration \"30\""), "{err}");
    }
}
