//! Loki's push protobuf (`logproto.PushRequest`) with snappy block framing.
//!
//! Owns the wire messages, hand-written with `prost` derives so no `protoc` is needed, and
//! the conversion to and from [`PushRequest`]. Text fields (`labels`, `line`, metadata) are
//! read as bytes and converted with lossy UTF-8: one client's bad byte must not fail the
//! whole batch, and Loki replaces invalid runes the same way. It does not validate labels or
//! limits; that is the server's distributor.
//!
//! ```text
//! body = snappy block( PushRequest )            -- raw block: varint length, then elements
//! PushRequest    { 1: repeated StreamAdapter streams, 2: string format }
//! StreamAdapter  { 1: string labels, 2: repeated EntryAdapter entries, 3: uint64 hash }
//! EntryAdapter   { 1: Timestamp timestamp, 2: string line,
//!                  3: repeated LabelPairAdapter structuredMetadata, 4: repeated parsed }
//! LabelPairAdapter { 1: string name, 2: string value }
//! Timestamp      { 1: int64 seconds, 2: int32 nanos }   -- google.protobuf.Timestamp
//! ```

use prost::Message;

use crate::{DecodeError, Entry, PushRequest, PushStream};

const NS_PER_SEC: i64 = 1_000_000_000;

/// `logproto.PushRequest` on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequestProto {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
    #[prost(bytes = "vec", tag = "2")]
    pub format: Vec<u8>,
}

/// `logproto.StreamAdapter`: one stream's label-set text and entries.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAdapter {
    #[prost(bytes = "vec", tag = "1")]
    pub labels: Vec<u8>,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
    #[prost(uint64, tag = "3")]
    pub hash: u64,
}

/// `logproto.EntryAdapter`: one entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
    #[prost(bytes = "vec", tag = "2")]
    pub line: Vec<u8>,
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPairAdapter>,
    #[prost(message, repeated, tag = "4")]
    pub parsed: Vec<LabelPairAdapter>,
}

/// `logproto.LabelPairAdapter`: one structured-metadata pair.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPairAdapter {
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    /// Splits Unix nanoseconds into seconds and non-negative nanos, as Go's `timestamppb` does.
    pub fn from_unix_nanos(ns: i64) -> Self {
        Timestamp {
            seconds: ns.div_euclid(NS_PER_SEC),
            // rem_euclid of a positive divisor is in 0..1e9, which fits an i32.
            nanos: i32::try_from(ns.rem_euclid(NS_PER_SEC)).unwrap_or(0),
        }
    }

    /// Unix nanoseconds, saturating at the ends of `i64` (year 1677 / 2262) rather than
    /// wrapping, so an absurd timestamp is rejected later as too old or too new.
    pub fn to_unix_nanos(self) -> i64 {
        self.seconds
            .saturating_mul(NS_PER_SEC)
            .saturating_add(i64::from(self.nanos))
    }
}

fn lossy(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

impl From<PushRequestProto> for PushRequest {
    fn from(p: PushRequestProto) -> Self {
        PushRequest {
            streams: p
                .streams
                .into_iter()
                .map(|s| PushStream {
                    labels: lossy(s.labels),
                    entries: s
                        .entries
                        .into_iter()
                        .map(|e| Entry {
                            timestamp_ns: e.timestamp.unwrap_or_default().to_unix_nanos(),
                            line: lossy(e.line),
                            structured_metadata: e
                                .structured_metadata
                                .into_iter()
                                .map(|m| (lossy(m.name), lossy(m.value)))
                                .collect(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl From<&PushRequest> for PushRequestProto {
    fn from(r: &PushRequest) -> Self {
        PushRequestProto {
            streams: r
                .streams
                .iter()
                .map(|s| StreamAdapter {
                    labels: s.labels.as_bytes().to_vec(),
                    entries: s
                        .entries
                        .iter()
                        .map(|e| EntryAdapter {
                            timestamp: Some(Timestamp::from_unix_nanos(e.timestamp_ns)),
                            line: e.line.as_bytes().to_vec(),
                            structured_metadata: e
                                .structured_metadata
                                .iter()
                                .map(|(n, v)| LabelPairAdapter {
                                    name: n.as_bytes().to_vec(),
                                    value: v.as_bytes().to_vec(),
                                })
                                .collect(),
                            parsed: Vec::new(),
                        })
                        .collect(),
                    hash: 0,
                })
                .collect(),
            format: Vec::new(),
        }
    }
}

/// Decodes an uncompressed protobuf `PushRequest`.
pub fn decode_protobuf(body: &[u8]) -> Result<PushRequest, DecodeError> {
    crate::wire::decode(body)
}

/// Encodes a `PushRequest` as uncompressed protobuf.
pub fn encode_protobuf(req: &PushRequest) -> Vec<u8> {
    PushRequestProto::from(req).encode_to_vec()
}

/// Decompresses one snappy block, refusing before allocation when the length written in its
/// preamble exceeds `max_decompressed` bytes.
pub fn decompress_snappy(body: &[u8], max_decompressed: usize) -> Result<Vec<u8>, DecodeError> {
    let len = snap::raw::decompress_len(body).map_err(|e| DecodeError::Snappy(e.to_string()))?;
    if len > max_decompressed {
        return Err(DecodeError::TooLarge {
            size: len,
            limit: max_decompressed,
        });
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| DecodeError::Snappy(e.to_string()))
}

/// Decompressed bodies up to this size keep their buffer for the thread's next body;
/// a larger one is freed after use, so one huge push does not pin its memory.
const KEEP_SNAPPY_BUFFER: usize = 8 << 20;

thread_local! {
    /// The decompressed body of the thread's previous push, reused: a fresh zero-filled
    /// megabyte per push (and the page faults of touching it) was ~5 % of ingest CPU.
    static SNAPPY_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Decodes a snappy-block-compressed protobuf push body: what Promtail and Alloy send.
pub fn decode_protobuf_snappy(
    body: &[u8],
    max_decompressed: usize,
) -> Result<PushRequest, DecodeError> {
    let len = snap::raw::decompress_len(body).map_err(|e| DecodeError::Snappy(e.to_string()))?;
    if len > max_decompressed {
        return Err(DecodeError::TooLarge {
            size: len,
            limit: max_decompressed,
        });
    }
    SNAPPY_BUFFER.with(|cell| {
        // A re-entrant call (none today) gets a buffer of its own rather than a panic.
        let mut own = Vec::new();
        let mut borrowed = cell.try_borrow_mut();
        let buf = match borrowed.as_deref_mut() {
            Ok(buf) => buf,
            Err(_) => &mut own,
        };
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let out = buf.get_mut(..len).unwrap_or_default();
        let decoded = snap::raw::Decoder::new()
            .decompress(body, out)
            .map_err(|e| DecodeError::Snappy(e.to_string()))
            .and_then(|n| decode_protobuf(out.get(..n).unwrap_or_default()));
        if buf.len() > KEEP_SNAPPY_BUFFER {
            *buf = Vec::new();
        }
        decoded
    })
}

/// Encodes a push body as Promtail does: protobuf, then one snappy block.
pub fn encode_protobuf_snappy(req: &PushRequest) -> Vec<u8> {
    let raw = encode_protobuf(req);
    // Compressing an in-memory buffer can only fail when the input exceeds snappy's
    // 4 GiB block limit; an empty body then makes the server answer 400 instead of crashing.
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_in_a_line_is_replaced_not_fatal() {
        let proto = PushRequestProto {
            streams: vec![StreamAdapter {
                labels: br#"{app="x"}"#.to_vec(),
                entries: vec![EntryAdapter {
                    timestamp: Some(Timestamp {
                        seconds: 1,
                        nanos: 5,
                    }),
                    line: b"ok \xff\xfe end".to_vec(),
                    structured_metadata: Default::default(),
                    parsed: vec![],
                }],
                hash: 0,
            }],
            format: vec![],
        };
        let req = decode_protobuf(&proto.encode_to_vec()).unwrap();
        let entry = &req.streams[0].entries[0];
        assert_eq!(entry.line, "ok \u{fffd}\u{fffd} end");
        assert_eq!(entry.timestamp_ns, 1_000_000_005);
    }

    #[test]
    fn snappy_length_over_the_cap_is_refused_before_decoding() {
        let req = PushRequest {
            streams: vec![PushStream {
                labels: r#"{app="x"}"#.into(),
                entries: vec![Entry {
                    timestamp_ns: 1,
                    line: "a".repeat(10_000),
                    structured_metadata: Default::default(),
                }],
            }],
        };
        let body = encode_protobuf_snappy(&req);
        assert!(body.len() < 1_000);
        match decode_protobuf_snappy(&body, 1_000) {
            Err(DecodeError::TooLarge { size, limit }) => {
                assert!(size > 10_000);
                assert_eq!(limit, 1_000);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(decode_protobuf_snappy(&body, 100_000).unwrap(), req);
    }

    #[test]
    fn framed_snappy_stream_is_not_accepted_as_a_block() {
        use std::io::Write;
        let mut framed = snap::write::FrameEncoder::new(Vec::new());
        framed.write_all(b"some bytes to frame").unwrap();
        let framed = framed.into_inner().unwrap();
        assert!(decode_protobuf_snappy(&framed, 1 << 20).is_err());
    }

    #[test]
    fn timestamps_before_1970_split_into_negative_seconds_and_positive_nanos() {
        let t = Timestamp::from_unix_nanos(-1);
        assert_eq!(
            t,
            Timestamp {
                seconds: -1,
                nanos: 999_999_999
            }
        );
        assert_eq!(t.to_unix_nanos(), -1);
        let huge = Timestamp {
            seconds: i64::MAX,
            nanos: 5,
        };
        assert_eq!(huge.to_unix_nanos(), i64::MAX);
    }
}
