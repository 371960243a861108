//! Fuzzes the LogQL parser: no input may panic it, and whatever parses must print to
//! text that parses back to the same tree (except folded non-finite literals, which
//! LogQL cannot spell).

#![no_main]

use libfuzzer_sys::fuzz_target;
use query_lang::syntax::parse_expr;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(expr) = parse_expr(text) else {
        return;
    };
    let printed = expr.to_string();
    if printed.contains("NaN") || printed.contains("Inf") {
        return;
    }
    match parse_expr(&printed) {
        Ok(again) => assert_eq!(again, expr, "{text:?} printed as {printed:?}"),
        Err(e) => panic!("{text:?} printed as {printed:?}, which does not parse: {e}"),
    }
});
