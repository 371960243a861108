//! Ingest-time discovery of `service_name` and `detected_level`, as Loki does them.
//!
//! Owns adding the `service_name` label to a stream that lacks it (from the first of
//! `limits_config.discover_service_name` it has, else `unknown_service`) and the
//! `detected_level` structured metadata to an entry that lacks it (from a level label or
//! metadata, a JSON or logfmt `level` field, or a level word near the start of the line).
//! Grafana's logs volume and Logs Drilldown group by these. It does not own whether they
//! run: the distributor asks per tenant (`discover_service_name` empty or
//! `discover_log_levels: false` turn them off).

use lode_push::{Entry, LabelSet};

/// The label every stream gets when discovery is on.
pub const SERVICE_NAME: &str = "service_name";
/// The structured metadata entries get when level discovery is on.
pub use lode_push::DETECTED_LEVEL;
/// Label and field names read as a level, in order of preference.
const LEVEL_KEYS: [&str; 4] = ["level", "lvl", "severity", "loglevel"];
/// How far into a line level words are looked for.
const SNIFF_BYTES: usize = 1024;

/// `labels` with `service_name` added when it is missing and `sources` is not empty.
pub fn with_service_name(labels: LabelSet, sources: &[String]) -> LabelSet {
    if sources.is_empty() || labels.get(SERVICE_NAME).is_some() {
        return labels;
    }
    let value = sources
        .iter()
        .find_map(|name| labels.get(name).filter(|v| !v.is_empty()))
        .unwrap_or("unknown_service")
        .to_string();
    let mut pairs = labels.pairs().to_vec();
    pairs.push((SERVICE_NAME.to_string(), value));
    LabelSet::from_pairs(pairs).unwrap_or(labels)
}

/// The level a stream's own labels give its entries (`level`, `lvl`, `severity` or
/// `loglevel`), looked up once per stream of a push rather than once per line.
pub fn stream_level(labels: &LabelSet) -> Option<&'static str> {
    LEVEL_KEYS.iter().find_map(|k| labels.get(k)).map(normalize)
}

/// Adds `detected_level` to `entry` unless it already has one: `stream_level` (from
/// [`stream_level`]) when the stream has a level label, else a level metadata pair, else
/// what the line says.
pub fn add_detected_level(stream_level: Option<&'static str>, entry: &mut Entry) {
    if entry
        .structured_metadata
        .iter()
        .any(|(k, _)| k == DETECTED_LEVEL)
    {
        return;
    }
    let from_metadata = || {
        entry.structured_metadata.iter().find_map(|(k, v)| {
            LEVEL_KEYS
                .iter()
                .any(|l| k.eq_ignore_ascii_case(l))
                .then(|| normalize(v))
        })
    };
    let level = stream_level
        .or_else(from_metadata)
        .unwrap_or_else(|| detect_from_line(&entry.line));
    // Most entries carry no other metadata and then share one static set per level.
    entry.structured_metadata = entry.structured_metadata.with(DETECTED_LEVEL, level);
}

/// Level spellings Loki recognises, compared case-insensitively, and the level each means.
const SPELLINGS: [(&str, &str); 22] = [
    ("trace", "trace"),
    ("trc", "trace"),
    ("debug", "debug"),
    ("dbg", "debug"),
    ("info", "info"),
    ("inf", "info"),
    ("information", "info"),
    ("informational", "info"),
    ("notice", "info"),
    ("warn", "warn"),
    ("warning", "warn"),
    ("wrn", "warn"),
    ("error", "error"),
    ("err", "error"),
    ("eror", "error"),
    ("critical", "critical"),
    ("crit", "critical"),
    ("fatal", "fatal"),
    ("panic", "fatal"),
    ("emerg", "fatal"),
    ("emergency", "fatal"),
    ("alert", "fatal"),
];

/// Whether some spelling starts with a byte (either case): level words of a line's head
/// are looked up only when this allows, since most words of a line are not levels.
const FIRST_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < SPELLINGS.len() {
        let b = SPELLINGS[i].0.as_bytes()[0];
        table[b.to_ascii_lowercase() as usize] = true;
        table[b.to_ascii_uppercase() as usize] = true;
        i += 1;
    }
    table
};

/// Maps a level as written to one of Loki's: trace, debug, info, warn, error, critical,
/// fatal, unknown.
pub fn normalize(value: &str) -> &'static str {
    // Compared case-insensitively in place: this runs for every short word near the start
    // of every line without a level field, so it must not allocate.
    let v = value.trim();
    SPELLINGS
        .iter()
        .find(|(spelling, _)| spelling.eq_ignore_ascii_case(v))
        .map_or("unknown", |(_, level)| level)
}

/// A `level` field (JSON or logfmt) or else the most severe level word near the start.
pub fn detect_from_line(line: &str) -> &'static str {
    // One pass over the words (runs of ASCII letters) of the line's head: a word that is a
    // level key may start a field, any other may be a level word. Fields win, in the
    // order of LEVEL_KEYS, whatever their place in the line.
    let head = head(line);
    let bytes = head.as_bytes();
    let mut fields: [Option<&str>; LEVEL_KEYS.len()] = [None; LEVEL_KEYS.len()];
    let mut best: Option<(u8, &'static str)> = None;
    let mut at = 0;
    while at < bytes.len() {
        if !bytes[at].is_ascii_alphabetic() {
            at += 1;
            continue;
        }
        let start = at;
        while bytes.get(at).is_some_and(u8::is_ascii_alphabetic) {
            at += 1;
        }
        // Runs of ASCII letters end on character boundaries.
        let word = head.get(start..at).unwrap_or("");
        if let Some(k) = LEVEL_KEYS.iter().position(|key| *key == word) {
            if fields[k].is_none() {
                fields[k] = field_value(head, start, at);
                if k == 0 && fields[k].is_some() {
                    break;
                }
            }
            continue;
        }
        if let Some(rank_level) = level_word(word) {
            if best.is_none_or(|(r, _)| rank_level.0 > r) {
                best = Some(rank_level);
            }
        }
    }
    if let Some(v) = fields.iter().flatten().next() {
        return normalize(v);
    }
    best.map_or("unknown", |(_, l)| l)
}

/// The severity rank and level of a word that names a level on its own.
fn level_word(word: &str) -> Option<(u8, &'static str)> {
    if word.len() < 3 || word.len() > 8 {
        return None;
    }
    if !word
        .as_bytes()
        .first()
        .is_some_and(|&b| FIRST_BYTES[usize::from(b)])
    {
        return None;
    }
    let level = normalize(word);
    let rank = match level {
        "fatal" => 6,
        "critical" => 5,
        "error" => 4,
        "warn" => 3,
        "info" => 2,
        "debug" => 1,
        "trace" => 0,
        _ => return None,
    };
    // `inf`/`err` and friends are too common inside words to trust alone.
    if word.len() == 3 && !word.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    Some((rank, level))
}

fn head(line: &str) -> &str {
    if line.len() <= SNIFF_BYTES {
        return line;
    }
    let mut end = SNIFF_BYTES;
    while end > 0 && !line.is_char_boundary(end) {
        end -= 1;
    }
    line.get(..end).unwrap_or("")
}

/// The value of a field whose key is `text[start..end]`, written as `key=value`,
/// `key="value"` or `"key": "value"`; `None` when the key is not at a field's start or has
/// no value there.
fn field_value(text: &str, start: usize, end: usize) -> Option<&str> {
    let bytes = text.as_bytes();
    let before = start.checked_sub(1).and_then(|i| bytes.get(i));
    let quoted_key = before == Some(&b'"');
    let boundary =
        before.is_none_or(|b| *b == b'"' || b.is_ascii_whitespace() || *b == b',' || *b == b'{');
    if !boundary {
        return None;
    }
    let mut rest = text.get(end..)?;
    if quoted_key {
        rest = rest.strip_prefix('"')?.trim_start().strip_prefix(':')?;
    } else {
        rest = rest.strip_prefix('=')?;
    }
    value_text(rest)
}

/// A field's value at the start of `rest` (after its `=` or `:`): quoted, or up to the
/// next space, comma or brace; `None` when empty.
fn value_text(rest: &str) -> Option<&str> {
    let rest = rest.trim_start();
    let value = match rest.strip_prefix('"') {
        Some(r) => r.split('"').next()?,
        None => rest
            .split(|c: char| c.is_whitespace() || c == ',' || c == '}')
            .next()?,
    };
    (!value.is_empty()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;

    fn labels(s: &str) -> LabelSet {
        LabelSet::parse(s).unwrap()
    }

    fn level_of(line: &str) -> String {
        let mut e = Entry {
            timestamp_ns: 0,
            line: line.into(),
            structured_metadata: Default::default(),
        };
        add_detected_level(stream_level(&labels(r#"{app="a"}"#)), &mut e);
        e.structured_metadata[0].1.clone()
    }

    #[test]
    fn service_name_comes_from_the_first_known_label() {
        let sources: Vec<String> = ["service", "app", "container"].map(String::from).into();
        let l = with_service_name(labels(r#"{container="c",app="web"}"#), &sources);
        assert_eq!(l.get("service_name"), Some("web"));
        let l = with_service_name(labels(r#"{pod="p"}"#), &sources);
        assert_eq!(l.get("service_name"), Some("unknown_service"));
        let l = with_service_name(labels(r#"{service_name="x",app="y"}"#), &sources);
        assert_eq!(l.get("service_name"), Some("x"));
        let l = with_service_name(labels(r#"{app="y"}"#), &[]);
        assert_eq!(l.get("service_name"), None);
    }

    #[test]
    fn normalize_maps_every_spelling_ignoring_case_and_spaces() {
        for (written, level) in [
            (" Informational ", "info"),
            ("WRN", "warn"),
            ("eRoR", "error"),
            ("CRIT", "critical"),
            ("Emergency", "fatal"),
            ("trc", "trace"),
            ("dbg", "debug"),
            ("verbose", "unknown"),
            ("", "unknown"),
        ] {
            assert_eq!(normalize(written), level, "{written:?}");
        }
    }

    #[test]
    fn levels_are_found_in_json_logfmt_and_words() {
        assert_eq!(level_of(r#"{"ts":1,"level":"WARNING","msg":"x"}"#), "warn");
        assert_eq!(level_of(r#"{"severity": "err"}"#), "error");
        assert_eq!(level_of("ts=1 level=debug msg=\"a level=error\""), "debug");
        assert_eq!(level_of("2024-01-01 ERROR failed to connect"), "error");
        assert_eq!(level_of("[INFO] started; no problems"), "info");
        assert_eq!(level_of("GET /index.html 200"), "unknown");
        assert_eq!(level_of("information about interface"), "unknown");
    }

    #[test]
    fn level_words_of_every_spelling_are_found_in_either_case() {
        // Words are screened by their first byte before they are looked up; a spelling
        // whose first byte the screen refuses would never be found.
        for (spelling, level) in SPELLINGS {
            if !(3..=8).contains(&spelling.len()) || spelling.len() == 3 {
                continue;
            }
            for word in [spelling.to_string(), spelling.to_ascii_uppercase()] {
                let line = format!("2024-01-01 12:00:00 [{word}] something happened");
                assert_eq!(level_of(&line), level, "{line}");
            }
        }
        assert_eq!(level_of("2024-01-01 WRN disk nearly full"), "warn");
    }

    #[test]
    fn an_existing_level_label_or_detected_level_wins() {
        let mut e = Entry {
            timestamp_ns: 0,
            line: "ERROR boom".into(),
            structured_metadata: Default::default(),
        };
        add_detected_level(stream_level(&labels(r#"{level="info"}"#)), &mut e);
        assert_eq!(e.structured_metadata[0].1, "info");
        let mut e = Entry {
            timestamp_ns: 0,
            line: "ERROR boom".into(),
            structured_metadata: lode_push::Metadata::from(vec![(
                "detected_level".into(),
                "debug".into(),
            )]),
        };
        add_detected_level(stream_level(&labels(r#"{a="b"}"#)), &mut e);
        assert_eq!(e.structured_metadata.len(), 1);
    }

    /// The detection this module had before its one-pass scan: one substring search per
    /// key, then a split into words. Kept to check the scan's field finding against.
    fn memmem_detect(line: &str) -> &'static str {
        static KEYS: std::sync::LazyLock<Vec<memchr::memmem::Finder<'static>>> =
            std::sync::LazyLock::new(|| {
                LEVEL_KEYS
                    .iter()
                    .map(|k| memchr::memmem::Finder::new(k.as_bytes()).into_owned())
                    .collect()
            });
        let head = head(line);
        for key in KEYS.iter() {
            if let Some(v) = memmem_field(head, key) {
                return normalize(v);
            }
        }
        // Words are judged as the scan judges them; what this checks is where fields are
        // found.
        let mut best: Option<(u8, &'static str)> = None;
        for word in head.split(|c: char| !c.is_ascii_alphabetic()) {
            if let Some((rank, level)) = level_word(word) {
                if best.is_none_or(|(r, _)| rank > r) {
                    best = Some((rank, level));
                }
            }
        }
        best.map_or("unknown", |(_, l)| l)
    }
    fn memmem_field<'a>(text: &'a str, key: &memchr::memmem::Finder<'static>) -> Option<&'a str> {
        let bytes = text.as_bytes();
        let key_len = key.needle().len();
        let mut from = 0;
        while let Some(pos) = key.find(bytes.get(from..)?) {
            let start = from + pos;
            let end = start + key_len;
            from = end;
            let quoted_key = start > 0 && bytes.get(start - 1) == Some(&b'"');
            let boundary = start == 0
                || quoted_key
                || bytes
                    .get(start - 1)
                    .is_some_and(|b| b.is_ascii_whitespace() || *b == b',' || *b == b'{');
            if !boundary {
                continue;
            }
            let mut rest = text.get(end..)?;
            if quoted_key {
                rest = rest.strip_prefix('"')?.trim_start().strip_prefix(':')?;
            } else if let Some(r) = rest.strip_prefix('=') {
                rest = r;
            } else {
                continue;
            }
            if let Some(value) = value_text(rest) {
                return Some(value);
            }
        }
        None
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        #[test]
        fn the_one_pass_scan_finds_what_one_search_per_key_found(
            parts in proptest::collection::vec(proptest::prop_oneof![
                8 => proptest::sample::select(vec![
                    "level", "lvl", "severity", "loglevel", "xlevel", "levels", "=", "\"",
                    ":", " ", ",", "{", "}", "_", "1", "é", "ERROR", "info", "WARN", "Err",
                    "INF", "crit", "verbose",
                ]).prop_map(str::to_owned),
                1 => "[a-zA-Z]{1,9}",
            ], 0..12),
        ) {
            let line = parts.concat();
            proptest::prop_assert_eq!(detect_from_line(&line), memmem_detect(&line), "{:?}", line);
        }
    }

    #[test]
    fn fields_past_the_first_kilobyte_are_not_read() {
        let line = format!("{} level=error", "x ".repeat(600));
        assert_eq!(detect_from_line(&line), memmem_detect(&line));
        assert_eq!(detect_from_line(&line), "unknown");
    }
}
