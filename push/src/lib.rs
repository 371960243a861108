//! The push wire format shared by Lode's server and its shipper.
//!
//! Owns label-set syntax, Loki's push protobuf messages with snappy block framing, and
//! the JSON push form. It does not own validation against limits or storage.
//!
//! Decoding never panics and never allocates more than the caller's cap for a snappy body;
//! [`fuzz_decode`] is the entry point for fuzzers.

pub mod entry;
pub mod json;
pub mod labels;
pub mod proto;
mod wire;

pub use entry::{
    Entry, Metadata, MetadataInterner, PushRequest, PushStream, DETECTED_LEVEL, LEVELS,
};
pub use json::{decode_json, encode_json};
pub use labels::{LabelError, LabelSet};
pub use proto::{
    decode_protobuf, decode_protobuf_snappy, decompress_snappy, encode_protobuf,
    encode_protobuf_snappy,
};

/// Why a push body could not be decoded. Every variant is the client's fault (HTTP 4xx).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed protobuf push body: {0}")]
    Protobuf(String),
    #[error("corrupt snappy block in push body (want snappy block format, not framed): {0}")]
    Snappy(String),
    #[error("malformed JSON push body: {0}")]
    Json(String),
    #[error("decompressed push body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
}

/// Decodes arbitrary bytes every way the server does (snappy protobuf, raw protobuf, JSON)
/// with a 16 MiB decompression cap. For `cargo fuzz` and property tests: it must never
/// panic nor allocate without bound, whatever `data` holds.
pub fn fuzz_decode(data: &[u8]) {
    const CAP: usize = 16 << 20;
    let _ = decode_protobuf_snappy(data, CAP);
    let _ = decode_protobuf(data);
    let _ = decode_json(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_request() -> impl Strategy<Value = PushRequest> {
        let entry = (
            any::<i64>(),
            ".{0,40}",
            proptest::collection::vec(("[a-z_]{1,8}", ".{0,10}"), 0..3),
        )
            .prop_map(|(timestamp_ns, line, md)| Entry {
                timestamp_ns,
                line,
                structured_metadata: md.into(),
            });
        let stream = (
            proptest::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,8}", ".{0,12}", 1..4),
            proptest::collection::vec(entry, 0..5),
        )
            .prop_map(|(labels, entries)| PushStream {
                labels: LabelSet::from_pairs(labels)
                    .map(|l| l.to_string())
                    .unwrap_or_default(),
                entries,
            });
        proptest::collection::vec(stream, 0..4).prop_map(|streams| PushRequest { streams })
    }

    /// JSON metadata is a map, so a round trip keeps one value per name, sorted.
    fn json_normalized(mut req: PushRequest) -> PushRequest {
        for s in &mut req.streams {
            for e in &mut s.entries {
                let m: std::collections::BTreeMap<_, _> =
                    e.structured_metadata.iter().cloned().collect();
                e.structured_metadata = m.into_iter().collect();
            }
        }
        req
    }

    proptest! {
        #[test]
        fn protobuf_snappy_round_trips(req in arb_request()) {
            let body = encode_protobuf_snappy(&req);
            prop_assert_eq!(decode_protobuf_snappy(&body, 1 << 24).unwrap(), req);
        }

        #[test]
        fn json_round_trips(req in arb_request()) {
            let body = encode_json(&req).unwrap();
            prop_assert_eq!(decode_json(&body).unwrap(), json_normalized(req));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            fuzz_decode(&data);
        }

        #[test]
        fn decoding_mutated_valid_bodies_never_panics(
            req in arb_request(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut body = encode_protobuf_snappy(&req);
            if !body.is_empty() {
                for (i, b) in flips {
                    let at = i.index(body.len());
                    body[at] ^= b;
                }
            }
            fuzz_decode(&body);
        }
    }
}
