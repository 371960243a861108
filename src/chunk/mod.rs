//! Chunks and blocks: the compressed unit of a stream's entries.
//!
//! Owns the block and chunk byte formats, their encoding (zstd) and their validating
//! decoding. It does not own when blocks are cut or chunks closed (the ingester), nor where
//! chunks live (storage segments).
//!
//! A *block* holds one stream's entries sorted by timestamp (ties keep push order),
//! zstd-compressed behind a fixed header that carries what metric queries need without
//! decompressing: time range, line count and raw line bytes. All integers little-endian.
//!
//! ```text
//! block (v1)
//! +0   magic "LBLK"            4
//! +4   version = 1             u8
//! +5   codec = 1 (zstd)        u8
//! +6   reserved = 0            u16
//! +8   count                   u32   entries in the block
//! +12  min_ts                  i64   unix ns
//! +20  max_ts                  i64   unix ns
//! +28  raw_bytes               u64   sum of line lengths (what bytes_over_time counts)
//! +36  uncompressed_len        u32   payload size before zstd
//! +40  compressed_len          u32   payload size on disk
//! +44  crc32c                  u32   over bytes +0..+44 and the payload
//! +48  payload                 compressed_len bytes, zstd of:
//!        repeated count times:
//!          ts i64 | line_len u32 | line | md_count u32 | (name_len u32 name val_len u32 val)*
//! ```
//!
//! A *chunk* is a list of blocks of one stream, framed and checksummed as a whole:
//!
//! ```text
//! chunk (v1)
//! +0   magic "LCHK"            4
//! +4   version = 1             u8
//! +5   reserved = 0            3 bytes
//! +8   block_count             u32
//! +12  block 0 | block 1 | ... each self-framed as above (48-byte header + payload)
//! end  crc32c                  u32   over every byte before it
//! ```
//!
//! Segments store chunks verbatim and record each block's byte range in their footer, so a
//! reader can fetch and verify one block without the rest of its chunk. Sealing also
//! computes a [`BlockSummary`] (lines and line bytes per distinct structured-metadata
//! set), which segments keep in their footer so counts can skip decoding.

pub mod wire;

use std::sync::Arc;

use bytes::{BufMut, Bytes};
use lode_push::Entry;

use wire::{put_str, Reader, WireError};

pub const BLOCK_MAGIC: &[u8; 4] = b"LBLK";
pub const CHUNK_MAGIC: &[u8; 4] = b"LCHK";
pub const BLOCK_VERSION: u8 = 1;
pub const CHUNK_VERSION: u8 = 1;
const CODEC_ZSTD: u8 = 1;
pub const BLOCK_HEADER_LEN: usize = 48;
const CHUNK_HEADER_LEN: usize = 12;

/// zstd level for blocks; level 1 against level 3 is measured in benches/storage.rs.
pub const ZSTD_LEVEL: i32 = 1;

/// Largest decompressed block accepted on read. Blocks are cut at `chunk_block_size`
/// (validated to at most 16 MiB) plus one line, so anything larger is corrupt input.
pub const MAX_BLOCK_UNCOMPRESSED: usize = 64 << 20;

/// Why a block or chunk could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a block: magic {found:?}, want \"LBLK\"")]
    BlockMagic { found: Vec<u8> },
    #[error("not a chunk: magic {found:?}, want \"LCHK\"")]
    ChunkMagic { found: Vec<u8> },
    #[error("unsupported {what} version {version} (this build reads up to {supported})")]
    Version {
        what: &'static str,
        version: u8,
        supported: u8,
    },
    #[error("unsupported block codec {0} (this build knows 1 = zstd)")]
    Codec(u8),
    #[error("{what} checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        what: &'static str,
        stored: u32,
        computed: u32,
    },
    #[error("block of {size} bytes uncompressed exceeds the {limit} byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("block payload does not match its header: {0}")]
    Mismatch(String),
    #[error("zstd: {0}")]
    Zstd(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// What a block's header says about it: enough to answer counts and byte sums unread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockMeta {
    pub min_ts: i64,
    pub max_ts: i64,
    pub count: u32,
    pub raw_bytes: u64,
}

impl BlockMeta {
    /// Widens `self` to cover `other`.
    pub fn merge(&mut self, other: &BlockMeta) {
        if self.count == 0 {
            *self = *other;
            return;
        }
        if other.count == 0 {
            return;
        }
        self.min_ts = self.min_ts.min(other.min_ts);
        self.max_ts = self.max_ts.max(other.max_ts);
        self.count = self.count.saturating_add(other.count);
        self.raw_bytes = self.raw_bytes.saturating_add(other.raw_bytes);
    }

    /// Whether the block holds any entry in `[start, end)`.
    pub fn overlaps(&self, start_ns: i64, end_ns: i64) -> bool {
        self.count > 0 && self.min_ts < end_ns && self.max_ts >= start_ns
    }
}

/// An encoded block and its header fields.
#[derive(Clone, Debug)]
pub struct SealedBlock {
    pub meta: BlockMeta,
    pub bytes: Bytes,
    /// Counts per distinct structured metadata, for answering counts without decoding;
    /// `None` when the block has too many distinct metadata sets to be worth it.
    pub summary: Option<Arc<BlockSummary>>,
}

/// Lines and line bytes of one block per distinct structured-metadata set (in push
/// order of first appearance). Metric queries without a pipeline split series by
/// structured metadata (e.g. `detected_level`), so a block's header totals alone cannot
/// answer them; these can, where the block lies wholly inside a window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockSummary {
    pub groups: Vec<SummaryGroup>,
}

/// One structured-metadata set of a block and how many lines (and line bytes) carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryGroup {
    pub metadata: Vec<(String, String)>,
    pub count: u32,
    pub bytes: u64,
}

/// Blocks with more distinct metadata sets than this carry no summary (per-line ids in
/// metadata would make the summary as large as the data).
pub const MAX_SUMMARY_GROUPS: usize = 64;

impl BlockSummary {
    /// The summary of `entries`, or `None` past [`MAX_SUMMARY_GROUPS`] distinct sets.
    pub fn of(entries: &[Entry]) -> Option<BlockSummary> {
        let mut groups: Vec<SummaryGroup> = Vec::new();
        // Runs of lines share metadata: try the previous line's group first.
        let mut last = 0;
        for e in entries {
            let same = |g: &SummaryGroup| g.metadata == e.structured_metadata;
            let at = match groups.get(last).filter(|g| same(g)) {
                Some(_) => last,
                None => match groups.iter().position(same) {
                    Some(i) => i,
                    None if groups.len() == MAX_SUMMARY_GROUPS => return None,
                    None => {
                        groups.push(SummaryGroup {
                            metadata: e.structured_metadata.clone(),
                            count: 0,
                            bytes: 0,
                        });
                        groups.len() - 1
                    }
                },
            };
            last = at;
            let group = groups.get_mut(at)?;
            group.count += 1;
            group.bytes += e.line.len() as u64;
        }
        Some(BlockSummary { groups })
    }
}

impl SealedBlock {
    /// Sorts `entries` by timestamp (stable, so equal timestamps keep push order) and
    /// compresses them into one block.
    pub fn seal(mut entries: Vec<Entry>, level: i32) -> Result<SealedBlock, Error> {
        entries.sort_by_key(|e| e.timestamp_ns);
        let mut payload = Vec::with_capacity(entries.iter().map(entry_size).sum());
        let mut raw_bytes = 0u64;
        for e in &entries {
            payload.put_i64_le(e.timestamp_ns);
            put_str(&mut payload, &e.line);
            payload.put_u32_le(u32::try_from(e.structured_metadata.len()).unwrap_or(u32::MAX));
            for (name, value) in &e.structured_metadata {
                put_str(&mut payload, name);
                put_str(&mut payload, value);
            }
            raw_bytes += e.line.len() as u64;
        }
        if payload.len() > MAX_BLOCK_UNCOMPRESSED {
            return Err(Error::TooLarge {
                size: payload.len(),
                limit: MAX_BLOCK_UNCOMPRESSED,
            });
        }
        let compressed = zstd::bulk::compress(&payload, level)?;
        let meta = BlockMeta {
            min_ts: entries.first().map_or(0, |e| e.timestamp_ns),
            max_ts: entries.last().map_or(0, |e| e.timestamp_ns),
            count: u32::try_from(entries.len()).unwrap_or(u32::MAX),
            raw_bytes,
        };
        let mut out = Vec::with_capacity(BLOCK_HEADER_LEN + compressed.len());
        out.put_slice(BLOCK_MAGIC);
        out.put_u8(BLOCK_VERSION);
        out.put_u8(CODEC_ZSTD);
        out.put_u16_le(0);
        out.put_u32_le(meta.count);
        out.put_i64_le(meta.min_ts);
        out.put_i64_le(meta.max_ts);
        out.put_u64_le(meta.raw_bytes);
        out.put_u32_le(payload.len() as u32);
        out.put_u32_le(u32::try_from(compressed.len()).unwrap_or(u32::MAX));
        let mut crc = crc32c::crc32c(&out);
        crc = crc32c::crc32c_append(crc, &compressed);
        out.put_u32_le(crc);
        out.put_slice(&compressed);
        Ok(SealedBlock {
            meta,
            bytes: Bytes::from(out),
            summary: BlockSummary::of(&entries).map(Arc::new),
        })
    }

    /// Decompresses the block's entries, in timestamp order.
    pub fn entries(&self) -> Result<Vec<Entry>, Error> {
        decode_block(&self.bytes).map(|(_, entries)| entries)
    }
}

fn entry_size(e: &Entry) -> usize {
    16 + e.line.len()
        + e.structured_metadata
            .iter()
            .map(|(n, v)| 8 + n.len() + v.len())
            .sum::<usize>()
}

/// Reads and verifies a block header; returns the metadata, the payload and the total
/// encoded length of the block (header + payload).
fn read_block_header(bytes: &[u8]) -> Result<(BlockMeta, usize, &[u8], usize), Error> {
    let mut r = Reader::new(bytes);
    let magic = r.take("block magic", 4)?;
    if magic != BLOCK_MAGIC {
        return Err(Error::BlockMagic {
            found: magic.to_vec(),
        });
    }
    let version = r.u8("block version")?;
    if version != BLOCK_VERSION {
        return Err(Error::Version {
            what: "block",
            version,
            supported: BLOCK_VERSION,
        });
    }
    let codec = r.u8("block codec")?;
    if codec != CODEC_ZSTD {
        return Err(Error::Codec(codec));
    }
    r.u16("block reserved")?;
    let meta = BlockMeta {
        count: r.u32("block count")?,
        min_ts: r.i64("block min_ts")?,
        max_ts: r.i64("block max_ts")?,
        raw_bytes: r.u64("block raw_bytes")?,
    };
    let uncompressed = r.u32("block uncompressed_len")? as usize;
    let compressed = r.u32("block compressed_len")? as usize;
    let stored = r.u32("block crc32c")?;
    let payload = r.take("block payload", compressed)?;
    let header = bytes.get(..BLOCK_HEADER_LEN - 4).unwrap_or_default();
    let computed = crc32c::crc32c_append(crc32c::crc32c(header), payload);
    if stored != computed {
        return Err(Error::Checksum {
            what: "block",
            stored,
            computed,
        });
    }
    if uncompressed > MAX_BLOCK_UNCOMPRESSED {
        return Err(Error::TooLarge {
            size: uncompressed,
            limit: MAX_BLOCK_UNCOMPRESSED,
        });
    }
    Ok((meta, uncompressed, payload, BLOCK_HEADER_LEN + compressed))
}

/// Reads only a block's header (verifying its checksum).
pub fn decode_block_meta(bytes: &[u8]) -> Result<BlockMeta, Error> {
    read_block_header(bytes).map(|(meta, ..)| meta)
}

/// Decodes one block: verifies magic, version and checksum, decompresses with a bounded
/// buffer, and checks the entries agree with the header.
pub fn decode_block(bytes: &[u8]) -> Result<(BlockMeta, Vec<Entry>), Error> {
    with_decompressed(bytes, |meta, raw| {
        parse_payload(meta, raw).map(|e| (*meta, e))
    })?
}

/// Verifies a block, decompresses its payload into this thread's reusable buffer and
/// hands it to `f`: no allocation (nor fresh pages to fault in) per block, which matters
/// when most blocks are only scanned for a substring and dropped.
pub fn with_decompressed<R>(
    bytes: &[u8],
    f: impl FnOnce(&BlockMeta, &[u8]) -> R,
) -> Result<R, Error> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<(Option<zstd::bulk::Decompressor<'static>>, Vec<u8>)> =
            const { std::cell::RefCell::new((None, Vec::new())) };
    }
    let (meta, uncompressed, payload, _) = read_block_header(bytes)?;
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let (dctx, buf) = &mut *scratch;
        let dctx = match dctx {
            Some(d) => d,
            None => dctx.insert(zstd::bulk::Decompressor::new()?),
        };
        buf.clear();
        buf.reserve(uncompressed);
        let n = dctx.decompress_to_buffer(payload, buf)?;
        if n != uncompressed {
            return Err(Error::Mismatch(format!(
                "payload is {n} bytes uncompressed, header says {uncompressed}"
            )));
        }
        let out = f(&meta, buf);
        // A rare huge block must not pin its buffer in every thread for good.
        if buf.capacity() > 4 * MAX_TYPICAL_BLOCK {
            *buf = Vec::new();
        }
        Ok(out)
    })
}

/// Blocks are cut at ~256 KiB of lines; buffers up to four times that are kept for reuse.
const MAX_TYPICAL_BLOCK: usize = 1 << 20;

/// Parses a payload from [`with_decompressed`] into its entries, checking them against
/// the header.
pub fn parse_payload(meta: &BlockMeta, raw: &[u8]) -> Result<Vec<Entry>, Error> {
    let mut r = Reader::new(raw);
    // 16 bytes is the smallest entry: ts, empty line, no metadata.
    let mut entries = Vec::with_capacity((meta.count as usize).min(raw.len() / 16));
    let mut raw_bytes = 0u64;
    for _ in 0..meta.count {
        let timestamp_ns = r.i64("entry timestamp")?;
        let line = r.str("entry line")?.to_owned();
        let n = r.count("structured metadata count", 8)?;
        let mut structured_metadata = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.str("structured metadata name")?.to_owned();
            let value = r.str("structured metadata value")?.to_owned();
            structured_metadata.push((name, value));
        }
        raw_bytes += line.len() as u64;
        entries.push(Entry {
            timestamp_ns,
            line,
            structured_metadata,
        });
    }
    if r.remaining() != 0 || raw_bytes != meta.raw_bytes {
        return Err(Error::Mismatch(format!(
            "{} trailing bytes, {raw_bytes} line bytes against {} in the header",
            r.remaining(),
            meta.raw_bytes
        )));
    }
    Ok(entries)
}

/// One block inside an encoded chunk: its metadata and byte range within the chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRef {
    pub meta: BlockMeta,
    pub offset: usize,
    pub len: usize,
}

/// Frames sealed blocks of one stream into a chunk.
pub fn encode_chunk(blocks: &[SealedBlock]) -> Vec<u8> {
    let body: usize = blocks.iter().map(|b| b.bytes.len()).sum();
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + body + 4);
    out.put_slice(CHUNK_MAGIC);
    out.put_u8(CHUNK_VERSION);
    out.put_slice(&[0, 0, 0]);
    out.put_u32_le(u32::try_from(blocks.len()).unwrap_or(u32::MAX));
    for b in blocks {
        out.put_slice(&b.bytes);
    }
    let crc = crc32c::crc32c(&out);
    out.put_u32_le(crc);
    out
}

/// Block offsets a chunk produced by [`encode_chunk`] will have, without encoding it.
pub fn chunk_block_refs(blocks: &[SealedBlock]) -> Vec<BlockRef> {
    let mut offset = CHUNK_HEADER_LEN;
    blocks
        .iter()
        .map(|b| {
            let r = BlockRef {
                meta: b.meta,
                offset,
                len: b.bytes.len(),
            };
            offset += b.bytes.len();
            r
        })
        .collect()
}

/// Verifies a chunk and lists its blocks (each block's own checksum is verified too).
pub fn decode_chunk(bytes: &[u8]) -> Result<Vec<BlockRef>, Error> {
    let Some(body_len) = bytes.len().checked_sub(4) else {
        return Err(WireError::Truncated {
            field: "chunk",
            need: CHUNK_HEADER_LEN + 4,
            have: bytes.len(),
        }
        .into());
    };
    let (body, crc_bytes) = bytes.split_at(body_len);
    let stored = Reader::new(crc_bytes).u32("chunk crc32c")?;
    let computed = crc32c::crc32c(body);
    let mut r = Reader::new(body);
    let magic = r.take("chunk magic", 4)?;
    if magic != CHUNK_MAGIC {
        return Err(Error::ChunkMagic {
            found: magic.to_vec(),
        });
    }
    if stored != computed {
        return Err(Error::Checksum {
            what: "chunk",
            stored,
            computed,
        });
    }
    let version = r.u8("chunk version")?;
    if version != CHUNK_VERSION {
        return Err(Error::Version {
            what: "chunk",
            version,
            supported: CHUNK_VERSION,
        });
    }
    r.take("chunk reserved", 3)?;
    let n = r.count("chunk block count", BLOCK_HEADER_LEN)?;
    let mut refs = Vec::with_capacity(n);
    let mut offset = CHUNK_HEADER_LEN;
    for _ in 0..n {
        let rest = body.get(offset..).unwrap_or_default();
        let (meta, _, _, len) = read_block_header(rest)?;
        refs.push(BlockRef { meta, offset, len });
        offset += len;
    }
    if offset != body.len() {
        return Err(Error::Mismatch(format!(
            "chunk has {} bytes after its {n} blocks",
            body.len() - offset
        )));
    }
    Ok(refs)
}

/// Decodes arbitrary bytes as a chunk and as a block. For `cargo fuzz` and property
/// tests: it must never panic nor allocate without bound, whatever `data` holds.
pub fn fuzz_decode(data: &[u8]) {
    if let Ok(refs) = decode_chunk(data) {
        for r in refs {
            if let Some(b) = data.get(r.offset..r.offset + r.len) {
                let _ = decode_block(b);
            }
        }
    }
    let _ = decode_block(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(ts: i64, line: &str) -> Entry {
        Entry {
            timestamp_ns: ts,
            line: line.to_string(),
            structured_metadata: vec![],
        }
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (
            any::<i64>(),
            ".{0,60}",
            proptest::collection::vec(("[a-z_]{1,6}", ".{0,8}"), 0..3),
        )
            .prop_map(|(timestamp_ns, line, structured_metadata)| Entry {
                timestamp_ns,
                line,
                structured_metadata,
            })
    }

    #[test]
    fn block_sorts_by_time_keeping_push_order_for_equal_timestamps() {
        let b = SealedBlock::seal(
            vec![entry(3, "c"), entry(1, "a2"), entry(2, "b"), entry(1, "a1")],
            ZSTD_LEVEL,
        )
        .unwrap();
        let lines: Vec<_> = b.entries().unwrap().into_iter().map(|e| e.line).collect();
        assert_eq!(lines, ["a2", "a1", "b", "c"]);
        assert_eq!(
            b.meta,
            BlockMeta {
                min_ts: 1,
                max_ts: 3,
                count: 4,
                raw_bytes: 6
            }
        );
    }

    #[test]
    fn the_reused_buffer_decodes_blocks_of_any_size_in_turn() {
        let big: Vec<Entry> = (0..5000).map(|i| entry(i, &"x".repeat(300))).collect();
        let small = vec![entry(1, "a"), entry(2, "b")];
        for entries in [big.clone(), small.clone(), big] {
            let block = SealedBlock::seal(entries.clone(), ZSTD_LEVEL).unwrap();
            let parsed = with_decompressed(&block.bytes, parse_payload)
                .unwrap()
                .unwrap();
            assert_eq!(parsed, entries);
        }
        let block = SealedBlock::seal(small, ZSTD_LEVEL).unwrap();
        let mut bad = block.bytes.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            with_decompressed(&bad, |_, _| ()),
            Err(Error::Checksum { .. })
        ));
    }

    #[test]
    fn a_flipped_bit_in_a_block_is_reported_as_a_checksum_mismatch() {
        let b = SealedBlock::seal(vec![entry(1, "hello world")], 3).unwrap();
        let mut bytes = b.bytes.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(
            decode_block(&bytes),
            Err(Error::Checksum { what: "block", .. })
        ));
    }

    #[test]
    fn chunk_lists_block_ranges_that_decode_on_their_own() {
        let blocks = vec![
            SealedBlock::seal(vec![entry(1, "a"), entry(2, "b")], 1).unwrap(),
            SealedBlock::seal(vec![entry(5, "c")], 1).unwrap(),
        ];
        let bytes = encode_chunk(&blocks);
        let refs = decode_chunk(&bytes).unwrap();
        assert_eq!(refs, chunk_block_refs(&blocks));
        let second = &bytes[refs[1].offset..refs[1].offset + refs[1].len];
        assert_eq!(decode_block(second).unwrap().1, vec![entry(5, "c")]);
    }

    proptest! {
        #[test]
        fn blocks_round_trip(mut entries in proptest::collection::vec(arb_entry(), 0..40)) {
            let b = SealedBlock::seal(entries.clone(), ZSTD_LEVEL).unwrap();
            entries.sort_by_key(|e| e.timestamp_ns);
            prop_assert_eq!(b.entries().unwrap(), entries);
        }

        #[test]
        fn chunks_round_trip(groups in proptest::collection::vec(proptest::collection::vec(arb_entry(), 1..10), 0..5)) {
            let blocks: Vec<_> = groups.iter().map(|g| SealedBlock::seal(g.clone(), 1).unwrap()).collect();
            let bytes = encode_chunk(&blocks);
            let refs = decode_chunk(&bytes).unwrap();
            prop_assert_eq!(refs.len(), blocks.len());
            for (r, b) in refs.iter().zip(&blocks) {
                prop_assert_eq!(&bytes[r.offset..r.offset + r.len], &b.bytes[..]);
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            fuzz_decode(&data);
        }

        #[test]
        fn decoding_corrupted_chunks_never_panics(
            entries in proptest::collection::vec(arb_entry(), 1..20),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = encode_chunk(&[SealedBlock::seal(entries, 1).unwrap()]);
            for (i, b) in flips {
                let at = i.index(bytes.len());
                bytes[at] ^= b;
            }
            let keep = cut.index(bytes.len() + 1);
            fuzz_decode(&bytes[..keep]);
        }
    }
}
