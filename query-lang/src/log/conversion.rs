//! Converting label values to numbers the way Loki does: Go's `strconv.ParseFloat`, Go's
//! `time.ParseDuration` and go-humanize's `ParseBytes`.
//!
//! Owns the value conversions shared by typed label filters, `unwrap` and the template
//! functions `bytes`/`duration`. Error texts follow Go's so `__error_details__` reads
//! like Loki's.

/// `digits` as a number when it is 1 to 15 ASCII digits, which an f64 holds exactly:
/// summing them gives what a float parser would, in a fraction of its time.
#[inline]
fn short_integer(digits: &str) -> Option<f64> {
    if (1..=15).contains(&digits.len()) && digits.bytes().all(|c| c.is_ascii_digit()) {
        Some(
            digits
                .bytes()
                .fold(0u64, |n, c| n * 10 + u64::from(c - b'0')) as f64,
        )
    } else {
        None
    }
}

/// `strconv.ParseFloat(s, 64)`.
pub fn parse_float(s: &str) -> Result<f64, String> {
    // Most label values compared as numbers are short integers (`status`, `latency_ms`).
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    if let Some(n) = short_integer(digits) {
        return Ok(if negative { -n } else { n });
    }
    let invalid = || format!("strconv.ParseFloat: parsing {s:?}: invalid syntax");
    if s.is_empty() || s.contains('_') || s.starts_with("0x") || s.starts_with("0X") {
        return Err(invalid());
    }
    s.parse::<f64>().map_err(|_| invalid())
}

/// `time.ParseDuration`, in seconds: `300ms`, `-1.5h`, `1h15m30.918s`, `0`.
pub fn parse_duration_seconds(s: &str) -> Result<f64, String> {
    let invalid = || format!("time: invalid duration {s:?}");
    let mut rest = s;
    let mut negative = false;
    if let Some(r) = rest.strip_prefix('-') {
        negative = true;
        rest = r;
    } else if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    }
    if rest == "0" {
        return Ok(0.0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." {
            return Err(invalid());
        }
        let value: f64 = match short_integer(num) {
            Some(v) => v,
            None => num.parse().map_err(|_| invalid())?,
        };
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            unit => return Err(format!("time: unknown unit {unit:?} in duration {s:?}")),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Ok(if negative { -total } else { total })
}

/// go-humanize `ParseBytes`: `5 MB`, `2.5KiB`, `1,000`, `10gb` (units are case-insensitive;
/// `k`/`kb` are 1000, `ki`/`kib` 1024).
pub fn parse_bytes(s: &str) -> Result<f64, String> {
    let lower = s.to_ascii_lowercase();
    let trimmed = lower.trim();
    let num_end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
        .unwrap_or(trimmed.len());
    let num: String = trimmed[..num_end].chars().filter(|c| *c != ',').collect();
    let value: f64 = num
        .parse()
        .map_err(|_| format!("strconv.ParseFloat: parsing {num:?}: invalid syntax"))?;
    let unit = trimmed[num_end..].trim();
    let scale: f64 = match unit {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "ki" | "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mi" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gi" | "gib" => 1024f64.powi(3),
        "t" | "tb" => 1e12,
        "ti" | "tib" => 1024f64.powi(4),
        "p" | "pb" => 1e15,
        "pi" | "pib" => 1024f64.powi(5),
        "e" | "eb" => 1e18,
        "ei" | "eib" => 1024f64.powi(6),
        other => return Err(format!("unhandled size name: {other}")),
    };
    Ok((value * scale).trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_accept_fractions_signs_and_compound_units() {
        assert_eq!(parse_duration_seconds("300ms").unwrap(), 0.3);
        assert_eq!(parse_duration_seconds("-1.5h").unwrap(), -5400.0);
        assert_eq!(parse_duration_seconds("1h1m1s").unwrap(), 3661.0);
        assert_eq!(parse_duration_seconds("0").unwrap(), 0.0);
        assert!(parse_duration_seconds("5d").is_err());
        assert!(parse_duration_seconds("fast").is_err());
        assert!(parse_duration_seconds("10").is_err());
    }

    #[test]
    fn humanized_bytes_use_si_and_iec_units_case_insensitively() {
        assert_eq!(parse_bytes("800KB").unwrap(), 800_000.0);
        assert_eq!(parse_bytes("2.5KiB").unwrap(), 2560.0);
        assert_eq!(parse_bytes("5 mb").unwrap(), 5_000_000.0);
        assert_eq!(parse_bytes("1,000").unwrap(), 1000.0);
        assert!(parse_bytes("lots").is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn integer_shortcut_reads_what_the_float_parser_reads(
                s in "-?[0-9]{1,17}"
            ) {
                let want: f64 = s.parse().unwrap();
                let got = parse_float(&s).unwrap();
                prop_assert_eq!(got.to_bits(), want.to_bits());
            }
        }
    }

    #[test]
    fn floats_reject_go_invalid_forms_with_go_wording() {
        assert_eq!(parse_float("1.50").unwrap(), 1.5);
        assert_eq!(
            parse_float("abc").unwrap_err(),
            "strconv.ParseFloat: parsing \"abc\": invalid syntax"
        );
        assert!(parse_float("").is_err());
    }
}
