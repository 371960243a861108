//! Reads `logproto.PushRequest` protobuf straight into [`PushRequest`].
//!
//! Owns the push path's protobuf decoding: the message layout is in [`crate::proto`],
//! whose `prost` messages stay the encoder and, in the tests, the reference this reader
//! must agree with. Reading into `prost`'s messages first and converting cost a second
//! pass over every entry, an intermediate entry vector grown by doubling, and a UTF-8
//! check of each line long after it was copied; here each line is checked and copied
//! once, into a vector sized from a first count of the stream's entries.
//!
//! It accepts exactly what `prost` accepts: unknown fields of every wire type (groups
//! included) are skipped, a repeated scalar field's last value wins, a repeated message
//! field (the timestamp) is merged, and a known field with the wrong wire type, a
//! truncated field, a bad varint or key, or a stray end-group is an error. Text fields are
//! bytes on the wire and read as lossy UTF-8, as [`crate::proto`] documents.

use crate::{DecodeError, Entry, Metadata, PushRequest, PushStream};

const NS_PER_SEC: i64 = 1_000_000_000;
/// How deeply nested groups of unknown fields may be, as in `prost`.
const MAX_DEPTH: u32 = 100;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

fn malformed(what: &str, message: &'static str) -> DecodeError {
    DecodeError::Protobuf(format!("{what}: {message}"))
}

/// A push body as one [`PushRequest`].
pub fn decode(body: &[u8]) -> Result<PushRequest, DecodeError> {
    let mut streams = Vec::with_capacity(count_field(body, 1));
    let mut r = Reader(body);
    while let Some((field, wire)) = r.key("PushRequest")? {
        match field {
            1 => streams.push(stream(r.bytes(wire, "PushRequest.streams")?)?),
            _ => r.skip(field, wire, 0, "PushRequest")?,
        }
    }
    Ok(PushRequest { streams })
}

fn stream(msg: &[u8]) -> Result<PushStream, DecodeError> {
    let mut labels: &[u8] = &[];
    let mut entries = Vec::with_capacity(count_field(msg, 2));
    let mut r = Reader(msg);
    while let Some((field, wire)) = r.key("StreamAdapter")? {
        match field {
            1 => labels = r.bytes(wire, "StreamAdapter.labels")?,
            2 => entries.push(entry(r.bytes(wire, "StreamAdapter.entries")?)?),
            3 => {
                r.varint_field(wire, "StreamAdapter.hash")?;
            }
            _ => r.skip(field, wire, 0, "StreamAdapter")?,
        }
    }
    Ok(PushStream {
        labels: text(labels),
        entries,
    })
}

fn entry(msg: &[u8]) -> Result<Entry, DecodeError> {
    let (mut seconds, mut nanos) = (0i64, 0i32);
    let mut line: &[u8] = &[];
    let mut metadata: Vec<(String, String)> = Vec::new();
    let mut r = Reader(msg);
    while let Some((field, wire)) = r.key("EntryAdapter")? {
        match field {
            1 => timestamp(
                r.bytes(wire, "EntryAdapter.timestamp")?,
                &mut seconds,
                &mut nanos,
            )?,
            2 => line = r.bytes(wire, "EntryAdapter.line")?,
            3 => metadata.push(pair(r.bytes(wire, "EntryAdapter.structuredMetadata")?)?),
            // Parsed labels are a query-side field; read (so a broken one fails as in
            // prost) and dropped.
            4 => {
                pair(r.bytes(wire, "EntryAdapter.parsed")?)?;
            }
            _ => r.skip(field, wire, 0, "EntryAdapter")?,
        }
    }
    Ok(Entry {
        timestamp_ns: seconds
            .saturating_mul(NS_PER_SEC)
            .saturating_add(i64::from(nanos)),
        line: text(line),
        structured_metadata: Metadata::from(metadata),
    })
}

/// Merges a `google.protobuf.Timestamp` into `seconds` and `nanos`.
fn timestamp(msg: &[u8], seconds: &mut i64, nanos: &mut i32) -> Result<(), DecodeError> {
    let mut r = Reader(msg);
    while let Some((field, wire)) = r.key("Timestamp")? {
        match field {
            // int64 and int32 are varints cut to their width, as prost reads them.
            1 => *seconds = r.varint_field(wire, "Timestamp.seconds")? as i64,
            2 => *nanos = r.varint_field(wire, "Timestamp.nanos")? as i32,
            _ => r.skip(field, wire, 0, "Timestamp")?,
        }
    }
    Ok(())
}

fn pair(msg: &[u8]) -> Result<(String, String), DecodeError> {
    let (mut name, mut value): (&[u8], &[u8]) = (&[], &[]);
    let mut r = Reader(msg);
    while let Some((field, wire)) = r.key("LabelPairAdapter")? {
        match field {
            1 => name = r.bytes(wire, "LabelPairAdapter.name")?,
            2 => value = r.bytes(wire, "LabelPairAdapter.value")?,
            _ => r.skip(field, wire, 0, "LabelPairAdapter")?,
        }
    }
    Ok((text(name), text(value)))
}

/// Bytes as text, invalid UTF-8 replaced (one bad byte must not fail a batch).
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// How many times `field` occurs (length-delimited) at the top of `msg`, counting up to
/// the first malformed field: only a capacity hint, the decode itself reports errors.
fn count_field(msg: &[u8], field: u32) -> usize {
    let mut r = Reader(msg);
    let mut n = 0;
    while let Ok(Some((f, wire))) = r.key("") {
        if f == field && wire == LEN {
            n += 1;
        }
        if r.skip(f, wire, 0, "").is_err() {
            break;
        }
    }
    n
}

/// The unread rest of a message.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self, what: &str) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for (i, &b) in self.0.iter().take(10).enumerate() {
            if i == 9 && b > 1 {
                return Err(malformed(what, "invalid varint"));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.0 = self.0.get(i + 1..).unwrap_or_default();
                return Ok(value);
            }
        }
        Err(malformed(what, "invalid varint"))
    }

    /// The next field's number and wire type; `None` at the end of the message.
    fn key(&mut self, what: &str) -> Result<Option<(u32, u8)>, DecodeError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let key = self.varint(what)?;
        let Ok(key) = u32::try_from(key) else {
            return Err(malformed(what, "invalid key value"));
        };
        let wire = (key & 7) as u8;
        if wire > FIXED32 {
            return Err(malformed(what, "invalid wire type value"));
        }
        let field = key >> 3;
        if field == 0 {
            return Err(malformed(what, "invalid tag value: 0"));
        }
        Ok(Some((field, wire)))
    }

    fn take(&mut self, len: u64, what: &str) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.0.len() {
            return Err(malformed(what, "buffer underflow"));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    /// A length-delimited field's bytes.
    fn bytes(&mut self, wire: u8, what: &str) -> Result<&'a [u8], DecodeError> {
        if wire != LEN {
            return Err(malformed(
                what,
                "invalid wire type (expected length-delimited)",
            ));
        }
        let len = self.varint(what)?;
        self.take(len, what)
    }

    fn varint_field(&mut self, wire: u8, what: &str) -> Result<u64, DecodeError> {
        if wire != VARINT {
            return Err(malformed(what, "invalid wire type (expected varint)"));
        }
        self.varint(what)
    }

    /// Skips an unknown field (a whole group for a start-group).
    fn skip(&mut self, field: u32, wire: u8, depth: u32, what: &str) -> Result<(), DecodeError> {
        match wire {
            VARINT => self.varint(what).map(drop),
            FIXED64 => self.take(8, what).map(drop),
            LEN => {
                let len = self.varint(what)?;
                self.take(len, what).map(drop)
            }
            START_GROUP => {
                if depth >= MAX_DEPTH {
                    return Err(malformed(what, "recursion limit reached"));
                }
                loop {
                    let Some((inner, inner_wire)) = self.key(what)? else {
                        return Err(malformed(what, "buffer underflow"));
                    };
                    if inner_wire == END_GROUP {
                        if inner != field {
                            return Err(malformed(what, "unexpected end group tag"));
                        }
                        return Ok(());
                    }
                    self.skip(inner, inner_wire, depth + 1, what)?;
                }
            }
            END_GROUP => Err(malformed(what, "unexpected end group tag")),
            _ => self.take(4, what).map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{
        EntryAdapter, LabelPairAdapter, PushRequestProto, StreamAdapter, Timestamp,
    };
    use proptest::prelude::*;
    use prost::Message;

    /// What prost reads, converted as the server did before this reader existed.
    fn by_prost(body: &[u8]) -> Result<PushRequest, ()> {
        PushRequestProto::decode(body)
            .map(PushRequest::from)
            .map_err(drop)
    }

    fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..max),
            "[a-z =\"{}]{0,12}".prop_map(String::into_bytes),
        ]
    }

    fn arb_pair() -> impl Strategy<Value = LabelPairAdapter> {
        (arb_bytes(8), arb_bytes(8)).prop_map(|(name, value)| LabelPairAdapter { name, value })
    }

    fn arb_proto() -> impl Strategy<Value = PushRequestProto> {
        let entry = (
            proptest::option::of((any::<i64>(), any::<i32>())),
            arb_bytes(40),
            proptest::collection::vec(arb_pair(), 0..3),
            proptest::collection::vec(arb_pair(), 0..2),
        )
            .prop_map(|(ts, line, structured_metadata, parsed)| EntryAdapter {
                timestamp: ts.map(|(seconds, nanos)| Timestamp { seconds, nanos }),
                line,
                structured_metadata,
                parsed,
            });
        let stream = (
            arb_bytes(20),
            proptest::collection::vec(entry, 0..5),
            any::<u64>(),
        )
            .prop_map(|(labels, entries, hash)| StreamAdapter {
                labels,
                entries,
                hash,
            });
        (proptest::collection::vec(stream, 0..4), arb_bytes(6))
            .prop_map(|(streams, format)| PushRequestProto { streams, format })
    }

    /// A change to an encoded body: a byte overwritten, inserted or removed, or the body
    /// cut short.
    #[derive(Clone, Debug)]
    enum Damage {
        Set(usize, u8),
        Insert(usize, u8),
        Remove(usize),
        Truncate(usize),
    }

    fn arb_damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Set(i, b)),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Insert(i, b)),
            any::<usize>().prop_map(Damage::Remove),
            any::<usize>().prop_map(Damage::Truncate),
        ]
    }

    fn damage(body: &mut Vec<u8>, d: &Damage) {
        if body.is_empty() {
            return;
        }
        match *d {
            Damage::Set(i, b) => {
                let i = i % body.len();
                body[i] = b;
            }
            Damage::Insert(i, b) => body.insert(i % (body.len() + 1), b),
            Damage::Remove(i) => {
                body.remove(i % body.len());
            }
            Damage::Truncate(i) => body.truncate(i % body.len()),
        }
    }

    proptest! {
        #[test]
        fn reads_what_prost_reads(proto in arb_proto()) {
            let body = proto.encode_to_vec();
            let want = by_prost(&body).unwrap();
            prop_assert_eq!(decode(&body).unwrap(), want);
        }

        /// Damaged bodies: accepted and read the same, or refused, exactly when prost
        /// accepts or refuses them (unknown fields, stray groups, bad varints and
        /// truncations included).
        #[test]
        fn agrees_with_prost_on_damaged_bodies(
            proto in arb_proto(),
            damages in proptest::collection::vec(arb_damage(), 1..4),
        ) {
            let mut body = proto.encode_to_vec();
            for d in &damages {
                damage(&mut body, d);
            }
            prop_assert_eq!(decode(&body).map_err(drop), by_prost(&body));
        }
    }

    #[test]
    fn unknown_fields_and_groups_are_skipped_and_a_repeated_timestamp_is_merged() {
        let mut body = Vec::new();
        // An unknown group (field 9) holding a varint, then an unknown fixed32.
        body.extend([9 << 3 | 3, 1 << 3, 7, 9 << 3 | 4, 10 << 3 | 5, 1, 2, 3, 4]);
        let entry = {
            let mut e = Vec::new();
            // timestamp { seconds: 5 }, line "x", timestamp { nanos: 7 }
            e.extend([1 << 3 | 2, 2, 1 << 3, 5]);
            e.extend([2 << 3 | 2, 1, b'x']);
            e.extend([1 << 3 | 2, 2, 2 << 3, 7]);
            e
        };
        let stream = [&[2 << 3 | 2, entry.len() as u8][..], &entry].concat();
        body.extend([1 << 3 | 2, stream.len() as u8]);
        body.extend(&stream);
        let req = decode(&body).unwrap();
        assert_eq!(by_prost(&body).unwrap(), req);
        assert_eq!(req.streams[0].entries[0].timestamp_ns, 5 * NS_PER_SEC + 7);
        assert_eq!(req.streams[0].entries[0].line, "x");
    }

    #[test]
    fn a_stray_end_group_or_wrong_wire_type_is_an_error_naming_the_field() {
        let stray = decode(&[9 << 3 | 4]).unwrap_err();
        assert!(
            stray.to_string().contains("unexpected end group tag"),
            "{stray}"
        );
        // `streams` sent as a varint.
        let wrong = decode(&[1 << 3, 1]).unwrap_err();
        assert!(wrong.to_string().contains("PushRequest.streams"), "{wrong}");
    }
}
