//! Go's `fmt` for template values: `%v` printing (`print`, `println`, action output) and
//! `printf`'s verbs, flags, width and precision, including Go's `%!verb(type=value)`
//! output for mismatched arguments.
//!
//! Owns number formatting the way Go prints it (`1e+06`, not `1000000`, for a float64
//! of a million). It does not own the values themselves (`super::Val`).

use std::fmt::Write as _;

use super::Val;

/// Digits and decimal point of a positive finite float, as strconv's `decimal`: the
/// value is `0.d1d2d3... × 10^dp`, with no trailing zeros in `digits`.
struct Decimal {
    digits: Vec<u8>,
    dp: i32,
}

/// Rounds `v` (finite, ≥ 0) to `sig` significant digits, or the shortest digits that
/// read back as `v` when `sig` is `None`.
fn decimal(v: f64, sig: Option<usize>) -> Decimal {
    let s = match sig {
        Some(p) => format!("{:.*e}", p.max(1) - 1, v),
        None => format!("{v:e}"),
    };
    let (mantissa, exp) = s.split_once('e').unwrap_or((s.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    while digits.len() > 1 && digits.last() == Some(&b'0') {
        digits.pop();
    }
    if digits == [b'0'] {
        return Decimal { digits, dp: 1 };
    }
    Decimal {
        digits,
        dp: exp + 1,
    }
}

fn digit_at(d: &Decimal, i: i32) -> char {
    usize::try_from(i)
        .ok()
        .and_then(|i| d.digits.get(i))
        .map_or('0', |&b| char::from(b))
}

/// strconv's `%e` body with `prec` digits after the point.
fn fmt_e(d: &Decimal, prec: usize, upper: bool) -> String {
    let mut out = String::new();
    out.push(digit_at(d, 0));
    if prec > 0 {
        out.push('.');
        for i in 1..=prec {
            out.push(digit_at(d, i as i32));
        }
    }
    let exp = if d.digits == [b'0'] { 0 } else { d.dp - 1 };
    out.push(if upper { 'E' } else { 'e' });
    out.push(if exp < 0 { '-' } else { '+' });
    let _ = write!(out, "{:02}", exp.unsigned_abs());
    out
}

/// strconv's `%f` body with `frac` digits after the point.
fn fmt_f(d: &Decimal, frac: usize) -> String {
    let mut out = String::new();
    if d.dp > 0 {
        for i in 0..d.dp {
            out.push(digit_at(d, i));
        }
    } else {
        out.push('0');
    }
    if frac > 0 {
        out.push('.');
        for i in 0..frac as i32 {
            out.push(digit_at(d, d.dp + i));
        }
    }
    out
}

/// strconv's `%g` of a non-negative finite value; `None` is the shortest form (`%v`).
fn fmt_g(v: f64, prec: Option<usize>) -> String {
    let d = decimal(v, prec.map(|p| p.max(1)));
    let nd = d.digits.len() as i32;
    let mut p = prec.map_or(nd, |p| p.max(1) as i32);
    let mut eprec = p;
    if eprec > nd && nd >= d.dp {
        eprec = nd;
    }
    if prec.is_none() {
        eprec = 6;
    }
    let exp = d.dp - 1;
    if exp < -4 || exp >= eprec {
        if p > nd {
            p = nd;
        }
        return fmt_e(&d, usize::try_from(p - 1).unwrap_or(0), false);
    }
    if p > d.dp {
        p = nd;
    }
    fmt_f(&d, usize::try_from(p - d.dp).unwrap_or(0))
}

fn non_finite(f: f64) -> Option<String> {
    if f.is_nan() {
        return Some("NaN".to_owned());
    }
    if f.is_infinite() {
        return Some(if f < 0.0 { "-Inf" } else { "+Inf" }.to_owned());
    }
    None
}

/// A float64 as Go's `%v` prints it: shortest digits, exponent form from 1e+06 up and
/// below 1e-04.
pub(super) fn format_float(f: f64) -> String {
    if let Some(s) = non_finite(f) {
        return s;
    }
    let body = fmt_g(f.abs(), None);
    if f.is_sign_negative() {
        format!("-{body}")
    } else {
        body
    }
}

/// `fmt.Sprint` / `fmt.Sprintln` of template values.
pub(super) fn go_print(args: &[Val], ln: bool) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        // Sprint adds spaces between operands when neither is a string; Sprintln always.
        if i > 0 && (ln || !(matches!(a, Val::Str(_)) || matches!(args[i - 1], Val::Str(_)))) {
            out.push(' ');
        }
        out.push_str(&a.display());
    }
    if ln {
        out.push('\n');
    }
    out
}

struct Spec {
    minus: bool,
    plus: bool,
    zero: bool,
    space: bool,
    sharp: bool,
    width: Option<usize>,
    prec: Option<usize>,
}

fn pad(spec: &Spec, body: String, numeric: bool) -> String {
    let Some(w) = spec.width else {
        return body;
    };
    let len = body.chars().count();
    if len >= w {
        return body;
    }
    let fill = w - len;
    if spec.minus {
        format!("{body}{}", " ".repeat(fill))
    } else if spec.zero {
        if numeric && (body.starts_with('-') || body.starts_with('+') || body.starts_with(' ')) {
            let (sign, digits) = body.split_at(1);
            format!("{sign}{}{digits}", "0".repeat(fill))
        } else {
            format!("{}{body}", "0".repeat(fill))
        }
    } else {
        format!("{}{body}", " ".repeat(fill))
    }
}

fn sign(spec: &Spec, negative: bool, body: String) -> String {
    if negative {
        format!("-{body}")
    } else if spec.plus {
        format!("+{body}")
    } else if spec.space {
        format!(" {body}")
    } else {
        body
    }
}

fn quote(s: &str) -> String {
    let mut out = String::new();
    let _ = lode_push::labels::write_quoted(&mut out, s);
    out
}

fn format_one(verb: char, spec: &Spec, arg: &Val) -> Option<String> {
    let out = match (verb, arg) {
        ('v', Val::Float(f)) => pad(spec, sign_float(spec, *f, format_float(f.abs())), true),
        ('v', Val::Int(i)) => pad(spec, sign(spec, *i < 0, i.unsigned_abs().to_string()), true),
        ('v', _) => pad(spec, arg.display(), false),
        ('s', Val::Str(x)) => {
            let x = match spec.prec {
                Some(p) => x.chars().take(p).collect(),
                None => x.clone(),
            };
            pad(spec, x, false)
        }
        ('s', Val::Time(_) | Val::Map(_) | Val::List(_) | Val::StrMap(_)) => {
            pad(spec, arg.display(), false)
        }
        ('q', Val::Str(x)) => pad(spec, quote(x), false),
        ('d', Val::Int(i)) => pad(spec, sign(spec, *i < 0, i.unsigned_abs().to_string()), true),
        ('b', Val::Int(i)) => pad(
            spec,
            sign(spec, *i < 0, format!("{:b}", i.unsigned_abs())),
            true,
        ),
        ('o', Val::Int(i)) => pad(
            spec,
            sign(spec, *i < 0, format!("{:o}", i.unsigned_abs())),
            true,
        ),
        ('x' | 'X', Val::Int(i)) => {
            let h = if verb == 'x' {
                format!("{:x}", i.unsigned_abs())
            } else {
                format!("{:X}", i.unsigned_abs())
            };
            let h = if spec.sharp {
                format!("0{}{h}", if verb == 'x' { 'x' } else { 'X' })
            } else {
                h
            };
            pad(spec, sign(spec, *i < 0, h), true)
        }
        ('x' | 'X', Val::Str(x)) => {
            let mut h = String::new();
            for b in x.bytes() {
                let _ = if verb == 'x' {
                    write!(h, "{b:02x}")
                } else {
                    write!(h, "{b:02X}")
                };
            }
            pad(spec, h, false)
        }
        ('f' | 'F' | 'e' | 'E' | 'g' | 'G', Val::Float(v)) => {
            let v = *v;
            if let Some(s) = non_finite(v) {
                return Some(pad(
                    spec,
                    sign_float(spec, v, s.trim_start_matches(['+', '-']).to_owned()),
                    false,
                ));
            }
            let a = v.abs();
            let body = match verb {
                'e' | 'E' => {
                    let p = spec.prec.unwrap_or(6);
                    fmt_e(&decimal(a, Some(p + 1)), p, verb == 'E')
                }
                'g' | 'G' => {
                    let s = fmt_g(a, spec.prec);
                    if verb == 'G' {
                        s.to_uppercase()
                    } else {
                        s
                    }
                }
                _ => format!("{:.*}", spec.prec.unwrap_or(6), a),
            };
            pad(spec, sign_float(spec, v, body), true)
        }
        ('t', Val::Bool(b)) => pad(spec, b.to_string(), false),
        ('c', Val::Int(i)) => pad(
            spec,
            u32::try_from(*i)
                .ok()
                .and_then(char::from_u32)
                .unwrap_or('\u{FFFD}')
                .to_string(),
            false,
        ),
        ('T', _) => pad(spec, arg.type_name().to_owned(), false),
        _ => return None,
    };
    Some(out)
}

fn sign_float(spec: &Spec, v: f64, body: String) -> String {
    sign(spec, v.is_sign_negative(), body)
}

/// Go's `fmt.Sprintf` for the verbs templates use.
pub(super) fn go_sprintf(fmt: &str, args: &[Val]) -> String {
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    let mut next_arg = 0;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = Spec {
            minus: false,
            plus: false,
            zero: false,
            space: false,
            sharp: false,
            width: None,
            prec: None,
        };
        while let Some(&f) = chars.peek() {
            match f {
                '-' => spec.minus = true,
                '+' => spec.plus = true,
                '0' => spec.zero = true,
                ' ' => spec.space = true,
                '#' => spec.sharp = true,
                _ => break,
            }
            chars.next();
        }
        let mut digits = String::new();
        while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(d);
            chars.next();
        }
        spec.width = digits.parse().ok();
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut digits = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(d);
                chars.next();
            }
            spec.prec = Some(digits.parse().unwrap_or(0));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(next_arg) else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        next_arg += 1;
        match format_one(verb, &spec, arg) {
            Some(s) => out.push_str(&s),
            None => {
                // Go prints the value with %v under the same flags: `%!d(string=01022)`.
                let shown = format_one('v', &spec, arg).unwrap_or_default();
                let _ = write!(out, "%!{verb}({}={shown})", arg.type_name());
            }
        }
    }
    if next_arg < args.len() {
        out.push_str("%!(EXTRA ");
        for (i, a) in args[next_arg..].iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{}={}", a.type_name(), a.display());
        }
        out.push(')');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_go_v() {
        for (v, want) in [
            (0.0, "0"),
            (1.0, "1"),
            (0.5, "0.5"),
            (123456.0, "123456"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5, "-2.5"),
            (1.0 / 3.0, "0.3333333333333333"),
            (f64::INFINITY, "+Inf"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(format_float(v), want, "{v}");
        }
    }

    #[test]
    fn printf_float_verbs_follow_strconv() {
        let f = |fmt: &str, v: f64| go_sprintf(fmt, &[Val::Float(v)]);
        assert_eq!(f("%e", 1234.5678), "1.234568e+03");
        assert_eq!(f("%.2E", 0.000123), "1.23E-04");
        assert_eq!(f("%g", 1e6), "1e+06");
        assert_eq!(f("%.3g", 1234.5), "1.23e+03");
        assert_eq!(f("%.3g", 1.0), "1");
        assert_eq!(f("%.3g", 0.5), "0.5");
        assert_eq!(f("%8.3f", -1.23456), "  -1.235");
        assert_eq!(f("%+.1f", 2.0), "+2.0");
        assert_eq!(f("%v", 1e21), "1e+21");
        assert_eq!(f("%d", 1.5), "%!d(float64=1.5)");
    }

    #[test]
    fn printf_handles_ints_strings_and_argument_count_mistakes() {
        let s = |v: &str| Val::Str(v.to_owned());
        assert_eq!(
            go_sprintf(
                "%05d|%-4s|%x|%#x|%q",
                &[
                    Val::Int(42),
                    s("ab"),
                    Val::Int(255),
                    Val::Int(255),
                    s("a\"b")
                ]
            ),
            "00042|ab  |ff|0xff|\"a\\\"b\""
        );
        assert_eq!(go_sprintf("%d", &[]), "%!d(MISSING)");
        assert_eq!(
            go_sprintf("%d", &[Val::Int(1), s("x")]),
            "1%!(EXTRA string=x)"
        );
        assert_eq!(go_sprintf("%s", &[Val::Int(3)]), "%!s(int=3)");
        assert_eq!(go_sprintf("100%%", &[]), "100%");
    }
}
