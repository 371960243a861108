//! The JSON push form: `{"streams":[{"stream":{..},"values":[["<ns>","<line>"(,{..})]]}]}`.
//!
//! Owns decoding and encoding that shape with Loki's rules: timestamps are strings of integer
//! nanoseconds, an optional third element is a flat string map of structured metadata,
//! `null` streams and values are skipped, unknown keys are ignored. Invalid UTF-8 is replaced
//! rather than failing the batch. Label names are not checked here: the stream map becomes
//! label-set text that the distributor parses and validates like a protobuf push.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::labels::write_quoted;
use crate::{DecodeError, Entry, LabelError, LabelSet, PushRequest, PushStream};

#[derive(Deserialize)]
struct JsonPush {
    #[serde(default)]
    streams: Vec<Option<JsonStream>>,
}

#[derive(Deserialize)]
struct JsonStream {
    #[serde(default)]
    stream: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<Option<JsonEntry>>,
}

struct JsonEntry(Entry);

impl<'de> Deserialize<'de> for JsonEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(EntryVisitor)
    }
}

struct EntryVisitor;

impl<'de> Visitor<'de> for EntryVisitor {
    type Value = JsonEntry;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            r#"an entry ["<unix ns>", "<line>"] or ["<unix ns>", "<line>", {"name": "value"}]"#,
        )
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonEntry, A::Error> {
        let ts: String = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let timestamp_ns = ts.parse::<i64>().map_err(|_| {
            de::Error::custom(format!(
                "invalid timestamp {ts:?}: want a string of integer unix nanoseconds"
            ))
        })?;
        let line: String = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
        let metadata: Option<BTreeMap<String, String>> = seq.next_element()?.flatten();
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(4, &self));
        }
        Ok(JsonEntry(Entry {
            timestamp_ns,
            line,
            structured_metadata: metadata
                .map(|m| m.into_iter().collect())
                .unwrap_or_default(),
        }))
    }
}

/// Prints a label map as label-set text without judging the names, so that an invalid name
/// is reported by the distributor for this stream only, like any other stream error.
fn label_text(map: &BTreeMap<String, String>) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(k);
        out.push('=');
        // Writing into a String cannot fail.
        let _ = write_quoted(&mut out, v);
    }
    out.push('}');
    out
}

/// Decodes a JSON push body.
pub fn decode_json(body: &[u8]) -> Result<PushRequest, DecodeError> {
    let parsed: JsonPush = match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_str(&String::from_utf8_lossy(body)),
    }
    .map_err(|e| DecodeError::Json(e.to_string()))?;
    Ok(PushRequest {
        streams: parsed
            .streams
            .into_iter()
            .flatten()
            .map(|s| PushStream {
                labels: label_text(&s.stream),
                entries: s.values.into_iter().flatten().map(|e| e.0).collect(),
            })
            .collect(),
    })
}

#[derive(Serialize)]
struct OutPush<'a> {
    streams: Vec<OutStream<'a>>,
}

#[derive(Serialize)]
struct OutStream<'a> {
    stream: BTreeMap<&'a str, &'a str>,
    values: Vec<OutEntry<'a>>,
}

struct OutEntry<'a>(&'a Entry);

impl Serialize for OutEntry<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let e = self.0;
        let with_metadata = !e.structured_metadata.is_empty();
        let mut seq = s.serialize_seq(Some(if with_metadata { 3 } else { 2 }))?;
        seq.serialize_element(&e.timestamp_ns.to_string())?;
        seq.serialize_element(&e.line)?;
        if with_metadata {
            let m: BTreeMap<&str, &str> = e
                .structured_metadata
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            seq.serialize_element(&m)?;
        }
        seq.end()
    }
}

/// Encodes a push request in the JSON form. Each stream's label text must parse, since the
/// JSON form carries labels as a map.
pub fn encode_json(req: &PushRequest) -> Result<Vec<u8>, LabelError> {
    let sets = req
        .streams
        .iter()
        .map(|s| LabelSet::parse(&s.labels))
        .collect::<Result<Vec<_>, _>>()?;
    let out = OutPush {
        streams: req
            .streams
            .iter()
            .zip(&sets)
            .map(|(s, set)| OutStream {
                stream: set.iter().collect(),
                values: s.entries.iter().map(OutEntry).collect(),
            })
            .collect(),
    };
    // Serializing string maps and strings into a Vec cannot fail.
    Ok(serde_json::to_vec(&out).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_lokis_documented_example_with_metadata() {
        let body = br#"{"streams":[{"stream":{"env":"prod","app":"api"},"values":[
            ["1715000000123456789","GET /users 200"],
            ["1715000000223456789","GET /users 500",{"trace_id":"0242ac120002","user_id":"u1"}],
            null
        ]}, null], "extra": 1}"#;
        let req = decode_json(body).unwrap();
        assert_eq!(req.streams.len(), 1);
        let s = &req.streams[0];
        assert_eq!(s.labels, r#"{app="api", env="prod"}"#);
        assert_eq!(s.entries.len(), 2);
        assert_eq!(s.entries[0].timestamp_ns, 1_715_000_000_123_456_789);
        assert_eq!(
            s.entries[1].structured_metadata,
            vec![
                ("trace_id".to_string(), "0242ac120002".to_string()),
                ("user_id".to_string(), "u1".to_string())
            ]
        );
    }

    #[test]
    fn numeric_timestamps_and_nested_metadata_are_refused_like_loki() {
        let numeric = br#"{"streams":[{"stream":{"a":"b"},"values":[[1715000000,"x"]]}]}"#;
        assert!(matches!(decode_json(numeric), Err(DecodeError::Json(_))));
        let nested = br#"{"streams":[{"stream":{"a":"b"},"values":[["1","x",{"k":{"n":1}}]]}]}"#;
        assert!(decode_json(nested).is_err());
        let bad_ts = br#"{"streams":[{"stream":{"a":"b"},"values":[["soon","x"]]}]}"#;
        let err = decode_json(bad_ts).unwrap_err().to_string();
        assert!(err.contains(r#"invalid timestamp "soon""#), "{err}");
        let four = br#"{"streams":[{"stream":{"a":"b"},"values":[["1","x",{},"y"]]}]}"#;
        assert!(decode_json(four).is_err());
    }

    #[test]
    fn invalid_label_names_survive_decoding_for_the_distributor_to_report() {
        let body = br#"{"streams":[{"stream":{"bad-name":"v"},"values":[["1","x"]]}]}"#;
        let req = decode_json(body).unwrap();
        assert_eq!(req.streams[0].labels, r#"{bad-name="v"}"#);
        assert!(LabelSet::parse(&req.streams[0].labels).is_err());
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let mut body = br#"{"streams":[{"stream":{"a":"b"},"values":[["1","x"#.to_vec();
        body.push(0xff);
        body.extend_from_slice(br#""]]}]}"#);
        let req = decode_json(&body).unwrap();
        assert_eq!(req.streams[0].entries[0].line, "x\u{fffd}");
    }
}
