//! The segment object format: flushed chunks of many streams of one tenant and one UTC
//! day, followed by a footer that indexes them down to block byte ranges.
//!
//! Owns encoding and validating decoding of segments and their footers. It does not own
//! where segments are stored (the parent module) or how their streams are indexed.
//!
//! ```text
//! segment object (v1), key <tenant>/<YYYY-MM-DD>/<segment id>.seg
//! +0     magic "LSEG"        4
//! +4     version = 1         u16
//! +6     reserved = 0        u16
//! +8     chunk | chunk | ... chunk format of crate::chunk (blocks inside, each CRC'd)
//! F      footer              footer_len bytes:
//!          tenant            u32 len + utf-8
//!          day               i64   days since 1970-01-01 (UTC)
//!          replaces_count    u32, then that many segment ids (u128 each): segments this
//!                            one rewrote (retention) or merged (compaction); readers
//!                            ignore those if both exist, and startup deletes them
//!          stream_count      u32
//!          per stream:       labels (u32 len + utf-8), chunk_count u32
//!            per chunk:      offset u64 | len u64 | min_ts i64 | max_ts i64 | count u32 |
//!                            raw_bytes u64 | block_count u32
//!              per block:    offset u64 | len u32 | min_ts i64 | max_ts i64 | count u32 |
//!                            raw_bytes u64            (offsets absolute in the object)
//!          "LSUM"            4, then per block in the order above: group_count u32
//!                            (0xFFFFFFFF = no summary), per group: pair_count u32,
//!                            (name, value) u32-len strings, count u32, bytes u64.
//!                            Footers written before summaries end before "LSUM".
//! end-12 footer_len          u32
//! end-8  footer crc32c       u32
//! end-4  magic "LSEG"        4
//! ```
//!
//! A reader fetches the 12-byte trailer (or a larger tail), then the footer, then only the
//! block ranges a query needs.

use std::fmt;
use std::sync::Arc;

use bytes::BufMut;
use lode_push::LabelSet;

use crate::chunk::wire::{put_str, Reader};
use crate::chunk::{self, BlockMeta, BlockSummary, SealedBlock, SummaryGroup};
use crate::clock::Day;
use crate::tenant::TenantId;

use super::Error;

pub const MAGIC: &[u8; 4] = b"LSEG";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 8;
pub const TRAILER_LEN: usize = 12;

/// Identity of a segment: creation time in the high 64 bits (so ids sort by age) and
/// random low bits (so writers sharing a bucket never collide).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u128);

impl SegmentId {
    pub fn new(now_ns: i64) -> SegmentId {
        let high = u128::from(now_ns.max(0) as u64) << 64;
        SegmentId(high | u128::from(rand::random::<u64>()))
    }

    pub fn parse(s: &str) -> Option<SegmentId> {
        (s.len() == 32)
            .then(|| u128::from_str_radix(s, 16).ok())
            .flatten()
            .map(SegmentId)
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A block's place in a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    pub meta: BlockMeta,
    pub offset: u64,
    pub len: u32,
}

/// A chunk's place in a segment and its blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    pub meta: BlockMeta,
    pub offset: u64,
    pub len: u64,
    pub blocks: Vec<BlockInfo>,
    /// Per block (same order and length as `blocks`): its lines per structured-metadata
    /// set, when the footer recorded one.
    pub summaries: Vec<Option<Arc<BlockSummary>>>,
}

/// One stream's chunks in a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    pub labels: LabelSet,
    pub chunks: Vec<ChunkInfo>,
}

/// Everything a segment says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footer {
    pub tenant: TenantId,
    pub day: Day,
    pub replaces: Vec<SegmentId>,
    pub streams: Vec<StreamInfo>,
}

impl Footer {
    /// Time range and totals over every chunk.
    pub fn meta(&self) -> BlockMeta {
        let mut m = BlockMeta {
            min_ts: 0,
            max_ts: 0,
            count: 0,
            raw_bytes: 0,
        };
        for c in self.streams.iter().flat_map(|s| &s.chunks) {
            m.merge(&c.meta);
        }
        m
    }
}

/// A closed chunk on its way into a segment: one stream's sealed blocks.
#[derive(Clone, Debug)]
pub struct FlushChunk {
    pub labels: LabelSet,
    pub blocks: Vec<SealedBlock>,
}

/// Already-encoded chunk bytes carried over verbatim (retention rewrites).
#[derive(Clone, Debug)]
pub struct CopiedChunk {
    pub labels: LabelSet,
    pub info: ChunkInfo,
    pub bytes: bytes::Bytes,
}

/// Encodes chunks of one tenant and day into a segment object and its footer. Chunks of
/// the same stream are grouped under one footer entry.
pub fn encode(
    tenant: &TenantId,
    day: Day,
    chunks: &[FlushChunk],
    copied: &[CopiedChunk],
    replaces: &[SegmentId],
) -> (Vec<u8>, Footer) {
    let mut w = SegmentWriter::new(tenant, day, replaces);
    for c in chunks {
        w.add_chunk(&c.labels, &c.blocks);
    }
    for c in copied {
        w.add_copied(c);
    }
    w.finish()
}

/// Builds one segment object chunk by chunk, so a writer that produces chunks one at a
/// time (compaction) holds only the encoded bytes, never every chunk's blocks as well.
pub struct SegmentWriter {
    out: Vec<u8>,
    footer: Footer,
    /// Footer stream index by labels: chunks of a stream share one footer entry.
    by_labels: std::collections::HashMap<LabelSet, usize>,
}

impl SegmentWriter {
    /// A segment of `tenant` and `day` superseding `replaces`, its header written.
    pub fn new(tenant: &TenantId, day: Day, replaces: &[SegmentId]) -> SegmentWriter {
        SegmentWriter::with_capacity(tenant, day, replaces, 0)
    }

    /// Like [`SegmentWriter::new`], reserving `capacity` bytes up front (an estimate of
    /// the object's size saves copying it as it grows).
    pub fn with_capacity(
        tenant: &TenantId,
        day: Day,
        replaces: &[SegmentId],
        capacity: usize,
    ) -> SegmentWriter {
        let mut out = Vec::with_capacity(capacity.max(HEADER_LEN));
        out.put_slice(MAGIC);
        out.put_u16_le(VERSION);
        out.put_u16_le(0);
        SegmentWriter {
            out,
            footer: Footer {
                tenant: tenant.clone(),
                day,
                replaces: replaces.to_vec(),
                streams: Vec::new(),
            },
            by_labels: std::collections::HashMap::new(),
        }
    }

    /// Bytes written so far (header and chunks).
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// True before any chunk.
    pub fn is_empty(&self) -> bool {
        self.out.len() == HEADER_LEN
    }

    fn push(&mut self, labels: &LabelSet, info: ChunkInfo) {
        match self.by_labels.get(labels) {
            Some(&i) => {
                if let Some(s) = self.footer.streams.get_mut(i) {
                    s.chunks.push(info);
                }
            }
            None => {
                self.by_labels
                    .insert(labels.clone(), self.footer.streams.len());
                self.footer.streams.push(StreamInfo {
                    labels: labels.clone(),
                    chunks: vec![info],
                });
            }
        }
    }

    /// Appends one chunk of `labels` made of `blocks` (nothing when there are none). The
    /// blocks' summaries, computed when they were sealed, go into the footer.
    pub fn add_chunk(&mut self, labels: &LabelSet, blocks: &[SealedBlock]) {
        if blocks.is_empty() {
            return;
        }
        let offset = self.out.len() as u64;
        let refs = chunk::chunk_block_refs(blocks);
        let bytes = chunk::encode_chunk(blocks);
        let mut meta = BlockMeta {
            min_ts: 0,
            max_ts: 0,
            count: 0,
            raw_bytes: 0,
        };
        let summaries = blocks.iter().map(|b| b.summary.clone()).collect();
        let blocks = refs
            .iter()
            .map(|r| {
                meta.merge(&r.meta);
                BlockInfo {
                    meta: r.meta,
                    offset: offset + r.offset as u64,
                    len: r.len as u32,
                }
            })
            .collect();
        self.out.extend_from_slice(&bytes);
        self.push(
            labels,
            ChunkInfo {
                meta,
                offset,
                len: bytes.len() as u64,
                blocks,
                summaries,
            },
        );
    }

    /// Appends an already-encoded chunk verbatim (retention rewrites).
    pub fn add_copied(&mut self, c: &CopiedChunk) {
        let offset = self.out.len() as u64;
        let shift = |b: &BlockInfo| BlockInfo {
            offset: b.offset - c.info.offset + offset,
            ..*b
        };
        let info = ChunkInfo {
            meta: c.info.meta,
            offset,
            len: c.bytes.len() as u64,
            blocks: c.info.blocks.iter().map(shift).collect(),
            summaries: c.info.summaries.clone(),
        };
        self.out.extend_from_slice(&c.bytes);
        self.push(&c.labels, info);
    }

    /// Writes the footer and trailer: the object's bytes and what its footer says.
    pub fn finish(self) -> (Vec<u8>, Footer) {
        let SegmentWriter {
            mut out, footer, ..
        } = self;
        let start = out.len();
        encode_footer(&mut out, &footer);
        let footer_len = (out.len() - start) as u32;
        let crc = crc32c::crc32c(out.get(start..).unwrap_or_default());
        out.put_u32_le(footer_len);
        out.put_u32_le(crc);
        out.put_slice(MAGIC);
        (out, footer)
    }
}

fn encode_footer(out: &mut Vec<u8>, f: &Footer) {
    put_str(out, f.tenant.as_str());
    out.put_i64_le(f.day.0);
    out.put_u32_le(f.replaces.len() as u32);
    for r in &f.replaces {
        out.put_u128_le(r.0);
    }
    out.put_u32_le(f.streams.len() as u32);
    for s in &f.streams {
        put_str(out, &s.labels.to_string());
        out.put_u32_le(s.chunks.len() as u32);
        for c in &s.chunks {
            out.put_u64_le(c.offset);
            out.put_u64_le(c.len);
            put_meta(out, &c.meta);
            out.put_u32_le(c.blocks.len() as u32);
            for b in &c.blocks {
                out.put_u64_le(b.offset);
                out.put_u32_le(b.len);
                put_meta(out, &b.meta);
            }
        }
    }
    out.put_slice(SUMMARY_TAG);
    for c in f.streams.iter().flat_map(|s| &s.chunks) {
        for (i, _) in c.blocks.iter().enumerate() {
            put_summary(out, c.summaries.get(i).and_then(|s| s.as_deref()));
        }
    }
}

/// Opens the footer's block-summary section.
const SUMMARY_TAG: &[u8; 4] = b"LSUM";
/// A block without a summary.
const NO_SUMMARY: u32 = u32::MAX;

fn put_summary(out: &mut Vec<u8>, s: Option<&BlockSummary>) {
    let Some(s) = s else {
        out.put_u32_le(NO_SUMMARY);
        return;
    };
    out.put_u32_le(s.groups.len() as u32);
    for g in &s.groups {
        out.put_u32_le(g.metadata.len() as u32);
        for (name, value) in &g.metadata {
            put_str(out, name);
            put_str(out, value);
        }
        out.put_u32_le(g.count);
        out.put_u64_le(g.bytes);
    }
}

fn read_summary(r: &mut Reader<'_>, key: &str) -> Result<Option<BlockSummary>, Error> {
    let n = r.u32("summary group count")?;
    if n == NO_SUMMARY {
        return Ok(None);
    }
    if n as usize > chunk::MAX_SUMMARY_GROUPS {
        return Err(Error::CorruptSegment {
            key: key.to_string(),
            what: format!(
                "block summary of {n} groups (at most {})",
                chunk::MAX_SUMMARY_GROUPS
            ),
        });
    }
    let mut groups = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let pairs = r.count("summary metadata count", 8)?;
        let mut metadata = Vec::with_capacity(pairs);
        for _ in 0..pairs {
            let name = r.str("summary metadata name")?.to_owned();
            let value = r.str("summary metadata value")?.to_owned();
            metadata.push((name, value));
        }
        groups.push(SummaryGroup {
            metadata,
            count: r.u32("summary count")?,
            bytes: r.u64("summary bytes")?,
        });
    }
    Ok(Some(BlockSummary { groups }))
}

fn put_meta(out: &mut Vec<u8>, m: &BlockMeta) {
    out.put_i64_le(m.min_ts);
    out.put_i64_le(m.max_ts);
    out.put_u32_le(m.count);
    out.put_u64_le(m.raw_bytes);
}

fn read_meta(r: &mut Reader<'_>) -> Result<BlockMeta, Error> {
    Ok(BlockMeta {
        min_ts: r.i64("min_ts")?,
        max_ts: r.i64("max_ts")?,
        count: r.u32("count")?,
        raw_bytes: r.u64("raw_bytes")?,
    })
}

/// Reads the trailer at the end of `tail` (the last bytes of an object of `size` bytes)
/// and returns the footer's byte range within the object.
pub fn footer_range(tail: &[u8], size: u64, key: &str) -> Result<std::ops::Range<u64>, Error> {
    let corrupt = |what: String| Error::CorruptSegment {
        key: key.to_string(),
        what,
    };
    let t = tail
        .len()
        .checked_sub(TRAILER_LEN)
        .and_then(|at| tail.get(at..))
        .ok_or_else(|| corrupt(format!("object of {size} bytes is shorter than a segment")))?;
    let mut r = Reader::new(t);
    let footer_len = u64::from(r.u32("footer_len")?);
    r.u32("footer crc32c")?;
    let magic = r.take("segment magic", 4)?;
    if magic != MAGIC {
        return Err(corrupt(format!("trailer magic {magic:?}, want \"LSEG\"")));
    }
    let end = size - TRAILER_LEN as u64;
    let start = end
        .checked_sub(footer_len)
        .filter(|s| *s >= HEADER_LEN as u64)
        .ok_or_else(|| corrupt(format!("footer length {footer_len} exceeds the object")))?;
    Ok(start..end)
}

/// Decodes a footer given its bytes and the trailer (the 12 bytes after it).
pub fn decode_footer(footer: &[u8], trailer: &[u8], size: u64, key: &str) -> Result<Footer, Error> {
    let corrupt = |what: String| Error::CorruptSegment {
        key: key.to_string(),
        what,
    };
    let mut t = Reader::new(trailer);
    t.u32("footer_len")?;
    let stored = t.u32("footer crc32c")?;
    let computed = crc32c::crc32c(footer);
    if stored != computed {
        return Err(corrupt(format!(
            "footer checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        )));
    }
    let mut r = Reader::new(footer);
    let tenant = TenantId::new(r.str("footer tenant")?).map_err(|e| corrupt(e.to_string()))?;
    let day = Day(r.i64("footer day")?);
    let n = r.count("replaced segment count", 16)?;
    let mut replaces = Vec::with_capacity(n);
    for _ in 0..n {
        let lo = r.u64("replaced segment id")?;
        let hi = r.u64("replaced segment id")?;
        replaces.push(SegmentId(u128::from(hi) << 64 | u128::from(lo)));
    }
    let n = r.count("stream count", 8)?;
    let mut streams = Vec::with_capacity(n);
    let data_end = size.saturating_sub(TRAILER_LEN as u64 + footer.len() as u64);
    for _ in 0..n {
        let labels =
            LabelSet::parse(r.str("stream labels")?).map_err(|e| corrupt(e.to_string()))?;
        let c = r.count("chunk count", 48)?;
        let mut chunks = Vec::with_capacity(c);
        for _ in 0..c {
            let offset = r.u64("chunk offset")?;
            let len = r.u64("chunk len")?;
            let meta = read_meta(&mut r)?;
            let b = r.count("block count", 40)?;
            let mut blocks = Vec::with_capacity(b);
            for _ in 0..b {
                let block = BlockInfo {
                    offset: r.u64("block offset")?,
                    len: r.u32("block len")?,
                    meta: read_meta(&mut r)?,
                };
                let end = block.offset.checked_add(u64::from(block.len));
                if block.offset < HEADER_LEN as u64 || end.is_none_or(|e| e > data_end) {
                    return Err(corrupt(format!(
                        "block at {} (+{}) lies outside the data section",
                        block.offset, block.len
                    )));
                }
                blocks.push(block);
            }
            chunks.push(ChunkInfo {
                meta,
                offset,
                len,
                summaries: vec![None; blocks.len()],
                blocks,
            });
        }
        streams.push(StreamInfo { labels, chunks });
    }
    // Footers written before block summaries end here; later ones carry a section with
    // one summary slot per block, in footer order.
    if r.remaining() != 0 {
        let tag = r.take("summary section tag", 4)?;
        if tag != SUMMARY_TAG {
            return Err(corrupt(format!(
                "{} bytes after the footer",
                r.remaining() + 4
            )));
        }
        for chunk in streams.iter_mut().flat_map(|s| s.chunks.iter_mut()) {
            for slot in chunk.summaries.iter_mut() {
                *slot = read_summary(&mut r, key)?.map(Arc::new);
            }
        }
        if r.remaining() != 0 {
            return Err(corrupt(format!("{} bytes after the footer", r.remaining())));
        }
    }
    Ok(Footer {
        tenant,
        day,
        replaces,
        streams,
    })
}

/// Decodes a whole segment held in memory: footer plus a check of every chunk.
pub fn decode(bytes: &[u8], key: &str) -> Result<Footer, Error> {
    let size = bytes.len() as u64;
    let range = footer_range(bytes, size, key)?;
    let footer = bytes
        .get(range.start as usize..range.end as usize)
        .unwrap_or_default();
    let trailer = bytes.get(range.end as usize..).unwrap_or_default();
    let f = decode_footer(footer, trailer, size, key)?;
    if bytes.get(..4) != Some(MAGIC.as_slice()) {
        return Err(Error::CorruptSegment {
            key: key.to_string(),
            what: "header magic is not \"LSEG\"".into(),
        });
    }
    for c in f.streams.iter().flat_map(|s| &s.chunks) {
        let chunk = usize::try_from(c.offset)
            .ok()
            .zip(usize::try_from(c.offset + c.len).ok())
            .and_then(|(s, e)| bytes.get(s..e))
            .ok_or_else(|| Error::CorruptSegment {
                key: key.to_string(),
                what: format!("chunk at {} (+{}) lies outside the object", c.offset, c.len),
            })?;
        chunk::decode_chunk(chunk)?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lode_push::Entry;
    use proptest::prelude::*;

    fn block(ts: &[i64]) -> SealedBlock {
        let entries = ts
            .iter()
            .map(|&t| Entry {
                timestamp_ns: t,
                line: format!("line at {t}"),
                structured_metadata: Default::default(),
            })
            .collect();
        SealedBlock::seal(entries, 1).unwrap()
    }

    #[test]
    fn footer_points_at_blocks_that_decode_from_their_range() {
        let tenant = TenantId::new("t1").unwrap();
        let a = LabelSet::parse(r#"{app="a"}"#).unwrap();
        let b = LabelSet::parse(r#"{app="b"}"#).unwrap();
        let chunks = vec![
            FlushChunk {
                labels: a.clone(),
                blocks: vec![block(&[1, 2]), block(&[3])],
            },
            FlushChunk {
                labels: b.clone(),
                blocks: vec![block(&[10])],
            },
            FlushChunk {
                labels: a.clone(),
                blocks: vec![block(&[20])],
            },
        ];
        let (bytes, footer) = encode(&tenant, Day(20454), &chunks, &[], &[]);
        assert_eq!(decode(&bytes, "k").unwrap(), footer);
        assert_eq!(footer.streams.len(), 2);
        assert_eq!(footer.streams[0].chunks.len(), 2);
        let second = footer.streams[0].chunks[0].blocks[1];
        let raw = &bytes[second.offset as usize..(second.offset + u64::from(second.len)) as usize];
        let (meta, entries) = chunk::decode_block(raw).unwrap();
        assert_eq!(meta, second.meta);
        assert_eq!(entries[0].line, "line at 3");
        assert_eq!(footer.meta().count, 5);
    }

    #[test]
    fn copied_chunks_keep_their_blocks_reachable() {
        let tenant = TenantId::new("t1").unwrap();
        let a = LabelSet::parse(r#"{app="a"}"#).unwrap();
        let (first, f1) = encode(
            &tenant,
            Day(1),
            &[FlushChunk {
                labels: a.clone(),
                blocks: vec![block(&[5, 6])],
            }],
            &[],
            &[],
        );
        let info = f1.streams[0].chunks[0].clone();
        let copied = CopiedChunk {
            labels: a,
            bytes: bytes::Bytes::copy_from_slice(
                &first[info.offset as usize..(info.offset + info.len) as usize],
            ),
            info,
        };
        let old = SegmentId(7);
        let (second, f2) = encode(&tenant, Day(1), &[], &[copied], &[old]);
        assert_eq!(decode(&second, "k").unwrap(), f2);
        assert_eq!(f2.replaces, vec![old]);
    }

    #[test]
    fn segment_ids_print_as_fixed_width_hex_and_parse_back() {
        let id = SegmentId::new(1_767_225_600_000_000_000);
        assert_eq!(SegmentId::parse(&id.to_string()), Some(id));
        assert_eq!(SegmentId::parse("xyz"), None);
    }

    proptest! {
        #[test]
        fn decoding_corrupted_segments_never_panics(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let tenant = TenantId::new("t1").unwrap();
            let a = LabelSet::parse(r#"{app="a"}"#).unwrap();
            let (mut bytes, _) = encode(&tenant, Day(1), &[FlushChunk { labels: a, blocks: vec![block(&[1, 2, 3])] }], &[], &[]);
            for (i, x) in flips {
                let at = i.index(bytes.len());
                bytes[at] ^= x;
            }
            let keep = cut.index(bytes.len() + 1);
            let _ = decode(&bytes[..keep], "k");
        }
    }
}
