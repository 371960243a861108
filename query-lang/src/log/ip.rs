//! IP address patterns for `ip("...")` line and label filters.
//!
//! Owns parsing a pattern (a single address, a CIDR `192.168.4.5/16`, or a range
//! `192.168.4.5-192.168.4.20`, IPv4 or IPv6) and testing addresses or whole lines against
//! it. It does not own the filter wiring (line_filter, label_filter).

use std::net::IpAddr;

/// A pattern that `ip("...")` could not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ip pattern {pattern:?}: {reason}")]
pub struct IpPatternError {
    pub pattern: String,
    pub reason: String,
}

/// A parsed `ip("...")` pattern: an inclusive address range in one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpPattern {
    text: String,
    v6: bool,
    low: u128,
    high: u128,
}

fn to_bits(addr: IpAddr) -> (bool, u128) {
    match addr {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => (false, u128::from(u32::from(v4))),
            None => (true, u128::from(a)),
        },
    }
}

impl IpPattern {
    /// Parses a single address, a CIDR or a `low-high` range.
    pub fn parse(pattern: &str) -> Result<Self, IpPatternError> {
        let err = |reason: &str| IpPatternError {
            pattern: pattern.to_owned(),
            reason: reason.to_owned(),
        };
        let parse_addr = |s: &str| -> Result<(bool, u128), IpPatternError> {
            s.trim()
                .parse::<IpAddr>()
                .map(to_bits)
                .map_err(|_| err(&format!("{:?} is not an ip address", s.trim())))
        };
        let (v6, low, high) = if let Some((addr, bits)) = pattern.split_once('/') {
            let (v6, base) = parse_addr(addr)?;
            let width: u32 = if v6 { 128 } else { 32 };
            let prefix: u32 = bits
                .trim()
                .parse()
                .map_err(|_| err(&format!("prefix {bits:?} is not a number")))?;
            if prefix > width {
                return Err(err(&format!("prefix {prefix} exceeds {width} bits")));
            }
            let host_bits = width - prefix;
            let mask: u128 = if host_bits >= 128 {
                u128::MAX
            } else {
                (1u128 << host_bits) - 1
            };
            (v6, base & !mask, (base & !mask) | mask)
        } else if let Some((a, b)) = pattern.split_once('-') {
            let (v6a, low) = parse_addr(a)?;
            let (v6b, high) = parse_addr(b)?;
            if v6a != v6b {
                return Err(err("range ends are of different ip families"));
            }
            if low > high {
                return Err(err("range start is after its end"));
            }
            (v6a, low, high)
        } else {
            let (v6, a) = parse_addr(pattern)?;
            (v6, a, a)
        };
        Ok(IpPattern {
            text: pattern.to_owned(),
            v6,
            low,
            high,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `addr` falls inside the pattern.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let (v6, bits) = to_bits(addr);
        v6 == self.v6 && self.low <= bits && bits <= self.high
    }

    /// Whether a label value is an address inside the pattern.
    pub fn matches_value(&self, value: &str) -> bool {
        value
            .trim()
            .parse::<IpAddr>()
            .is_ok_and(|a| self.contains(a))
    }

    /// Whether any IP-looking token of `line` is inside the pattern.
    pub fn matches_line(&self, line: &str) -> bool {
        let bytes = line.as_bytes();
        let is_ip_byte = |b: u8| b.is_ascii_hexdigit() || b == b'.' || b == b':';
        let mut i = 0;
        while i < bytes.len() {
            if !is_ip_byte(bytes[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && is_ip_byte(bytes[i]) {
                i += 1;
            }
            // Tokens are ASCII so slicing on their bounds stays on char boundaries.
            let token = line
                .get(start..i)
                .unwrap_or_default()
                .trim_matches(|c| c == '.' || c == ':');
            if token.len() >= 2 && self.matches_value(token) {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_pattern_matches_addresses_inside_the_prefix_only() {
        let p = IpPattern::parse("192.168.1.0/24").unwrap();
        assert!(p.matches_value("192.168.1.77"));
        assert!(!p.matches_value("192.168.2.1"));
        assert!(!p.matches_value("not-an-ip"));
    }

    #[test]
    fn range_and_single_patterns_are_inclusive() {
        let p = IpPattern::parse("10.0.0.5-10.0.0.9").unwrap();
        assert!(p.matches_value("10.0.0.5"));
        assert!(p.matches_value("10.0.0.9"));
        assert!(!p.matches_value("10.0.0.10"));
        let p = IpPattern::parse("::1").unwrap();
        assert!(p.matches_value("::1"));
        assert!(!p.matches_value("127.0.0.1"));
    }

    #[test]
    fn line_match_finds_an_address_among_other_tokens() {
        let p = IpPattern::parse("192.168.1.0/24").unwrap();
        assert!(p.matches_line("level=info client_ip=192.168.1.1 msg=\"ok\""));
        assert!(!p.matches_line("level=info client_ip=10.0.1.1 bytes=192"));
    }

    #[test]
    fn malformed_patterns_name_the_pattern() {
        let e = IpPattern::parse("1.2.3.4/40").unwrap_err();
        assert_eq!(e.pattern, "1.2.3.4/40");
        assert!(IpPattern::parse("banana").is_err());
    }
}
