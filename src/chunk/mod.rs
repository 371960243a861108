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
//! block (v2; v1 is still read)
//! +0   magic "LBLK"            4
//! +4   version = 2             u8
//! +5   codec = 1 (zstd)        u8
//! +6   reserved = 0            u16
//! +8   count                   u32   entries in the block
//! +12  min_ts                  i64   unix ns
//! +20  max_ts                  i64   unix ns
//! +28  raw_bytes               u64   sum of line lengths (what bytes_over_time counts)
//! +36  uncompressed_len        u32   columns_len + raw_bytes (v1: payload size before zstd)
//! +40  compressed_len          u32   payload size on disk
//! +44  crc32c                  u32   over bytes +0..+44 and the payload
//! +48  payload                 compressed_len bytes:
//!        v2: columns_zlen u32 | columns_len u32 | zstd(columns) | zstd(lines)
//!            columns = count × varint(ts - previous ts, the first from min_ts)
//!                    | count × varint(line_len)
//!                    | count × (varint(md_count) (varint(len) name varint(len) val)*)
//!            lines   = every line, concatenated in order (raw_bytes bytes)
//!        v1: zstd of, count times:
//!          ts i64 | line_len u32 | line | md_count u32 | (name_len u32 name val_len u32 val)*
//! ```
//!
//! v2 keeps the lines apart from everything else: timestamps and lengths compress far
//! better on their own (delta varints), a substring search runs over nothing but line
//! text, and a count needs only the small columns frame, never the lines.
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

pub mod count;
pub mod wire;

use std::sync::Arc;

use bytes::{BufMut, Bytes};
use lode_push::{Entry, MetadataInterner};

use prost::encoding::{decode_varint, encode_varint};
use wire::{Reader, WireError};

pub const BLOCK_MAGIC: &[u8; 4] = b"LBLK";
pub const CHUNK_MAGIC: &[u8; 4] = b"LCHK";
pub const BLOCK_VERSION: u8 = 2;
/// The row-wise block version before columns; still read.
pub const BLOCK_VERSION_ROWS: u8 = 1;
pub const CHUNK_VERSION: u8 = 1;
const CODEC_ZSTD: u8 = 1;
pub const BLOCK_HEADER_LEN: usize = 48;
const CHUNK_HEADER_LEN: usize = 12;

/// zstd level for blocks; level 1 against level 3 is measured in benches/storage.rs.
pub const ZSTD_LEVEL: i32 = 1;

/// zstd level of a block's columns frame (small, and read by every count).
const COLUMNS_LEVEL: i32 = 1;

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
            let same = |g: &SummaryGroup| e.structured_metadata == g.metadata;
            let at = match groups.get(last).filter(|g| same(g)) {
                Some(_) => last,
                None => match groups.iter().position(same) {
                    Some(i) => i,
                    None if groups.len() == MAX_SUMMARY_GROUPS => return None,
                    None => {
                        groups.push(SummaryGroup {
                            metadata: e.structured_metadata.to_vec(),
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

/// zstd levels of a block's two frames. The ingester seals at [`ZSTD_LEVEL`] for speed;
/// segment compaction seals again at a higher level, once, for bytes at rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compression {
    /// Level of the lines frame.
    pub lines_level: i32,
    /// Level of the columns frame (timestamps, lengths, metadata).
    pub columns_level: i32,
}

impl Compression {
    /// Both frames at `level`.
    pub fn at(level: i32) -> Compression {
        Compression {
            lines_level: level,
            columns_level: level,
        }
    }
}

impl SealedBlock {
    /// Sorts `entries` by timestamp (stable, so equal timestamps keep push order) and
    /// compresses them into one block, the lines at `level`.
    pub fn seal(entries: Vec<Entry>, level: i32) -> Result<SealedBlock, Error> {
        SealedBlock::seal_with(
            entries,
            Compression {
                lines_level: level,
                columns_level: COLUMNS_LEVEL,
            },
        )
    }

    /// [`SealedBlock::seal`] with both frames' zstd levels chosen by the caller.
    pub fn seal_with(entries: Vec<Entry>, compression: Compression) -> Result<SealedBlock, Error> {
        SealedBlock::try_seal_with(entries, compression).map_err(|(e, _)| e)
    }

    /// [`SealedBlock::seal`], handing the entries back (sorted) when they cannot be
    /// sealed, so a caller holding acknowledged entries loses none.
    pub fn try_seal(entries: Vec<Entry>, level: i32) -> Result<SealedBlock, (Error, Vec<Entry>)> {
        SealedBlock::try_seal_with(
            entries,
            Compression {
                lines_level: level,
                columns_level: COLUMNS_LEVEL,
            },
        )
    }

    fn try_seal_with(
        mut entries: Vec<Entry>,
        compression: Compression,
    ) -> Result<SealedBlock, (Error, Vec<Entry>)> {
        entries.sort_by_key(|e| e.timestamp_ns);
        match SealedBlock::seal_sorted_with(&entries, compression) {
            Ok(block) => Ok(block),
            Err(e) => Err((e, entries)),
        }
    }

    /// Compresses entries already sorted by timestamp into one block, the lines at
    /// `level`, leaving the entries with the caller (the ingester keeps them readable
    /// while it seals outside its lock).
    pub fn seal_sorted(entries: &[Entry], level: i32) -> Result<SealedBlock, Error> {
        SealedBlock::seal_sorted_with(
            entries,
            Compression {
                lines_level: level,
                columns_level: COLUMNS_LEVEL,
            },
        )
    }

    fn seal_sorted_with(entries: &[Entry], compression: Compression) -> Result<SealedBlock, Error> {
        let (meta, out) = encode_block(entries, compression)?;
        Ok(SealedBlock {
            meta,
            bytes: Bytes::from(out),
            summary: BlockSummary::of(entries).map(Arc::new),
        })
    }
}

/// A compression context and buffers reused from block to block by one thread: sealing
/// allocated a fresh zstd context and three block-sized buffers per block (and faulted in
/// their pages), a few percent of ingest CPU.
struct EncodeScratch {
    cctx: Option<zstd::bulk::Compressor<'static>>,
    columns: Vec<u8>,
    lines: Vec<u8>,
    compressed: Vec<u8>,
}

thread_local! {
    static ENCODE_SCRATCH: std::cell::RefCell<EncodeScratch> =
        const { std::cell::RefCell::new(EncodeScratch {
            cctx: None,
            columns: Vec::new(),
            lines: Vec::new(),
            compressed: Vec::new(),
        }) };
}

/// Compresses `src` at `level` with the reused context, appending to `dst`.
fn compress_into_tail(
    cctx: &mut zstd::bulk::Compressor<'static>,
    level: i32,
    src: &[u8],
    dst: &mut Vec<u8>,
) -> Result<(), Error> {
    cctx.set_compression_level(level)?;
    let start = dst.len();
    dst.resize(start + zstd::zstd_safe::compress_bound(src.len()), 0);
    let n = cctx.compress_to_buffer(src, dst.get_mut(start..).unwrap_or_default())?;
    dst.truncate(start + n);
    Ok(())
}

/// Encodes entries sorted by timestamp as one v2 block: its header fields and bytes.
fn encode_block(
    entries: &[Entry],
    compression: Compression,
) -> Result<(BlockMeta, Vec<u8>), Error> {
    ENCODE_SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            let scratch = &mut *scratch;
            let encoded = encode_block_with(entries, compression, scratch);
            // A rare huge block must not pin its buffers in every thread for good.
            for buf in [
                &mut scratch.columns,
                &mut scratch.lines,
                &mut scratch.compressed,
            ] {
                if buf.capacity() > 4 * MAX_TYPICAL_BLOCK {
                    *buf = Vec::new();
                }
            }
            encoded
        }
        // Re-entered (not done today): encode with buffers of its own.
        Err(_) => encode_block_with(
            entries,
            compression,
            &mut EncodeScratch {
                cctx: None,
                columns: Vec::new(),
                lines: Vec::new(),
                compressed: Vec::new(),
            },
        ),
    })
}

fn encode_block_with(
    entries: &[Entry],
    compression: Compression,
    scratch: &mut EncodeScratch,
) -> Result<(BlockMeta, Vec<u8>), Error> {
    let meta = BlockMeta {
        min_ts: entries.first().map_or(0, |e| e.timestamp_ns),
        max_ts: entries.last().map_or(0, |e| e.timestamp_ns),
        count: u32::try_from(entries.len()).unwrap_or(u32::MAX),
        raw_bytes: entries.iter().map(|e| e.line.len() as u64).sum(),
    };
    let EncodeScratch {
        cctx,
        columns,
        lines,
        compressed,
    } = scratch;
    columns.clear();
    let mut prev = meta.min_ts;
    for e in entries {
        // Sorted, so every delta is >= 0 (wrapping only across the whole i64 range).
        encode_varint(e.timestamp_ns.wrapping_sub(prev) as u64, columns);
        prev = e.timestamp_ns;
    }
    for e in entries {
        encode_varint(e.line.len() as u64, columns);
    }
    for e in entries {
        encode_varint(e.structured_metadata.len() as u64, columns);
        for (name, value) in &e.structured_metadata {
            encode_varint(name.len() as u64, columns);
            columns.put_slice(name.as_bytes());
            encode_varint(value.len() as u64, columns);
            columns.put_slice(value.as_bytes());
        }
    }
    let uncompressed = columns.len() as u64 + meta.raw_bytes;
    if uncompressed > MAX_BLOCK_UNCOMPRESSED as u64 {
        return Err(Error::TooLarge {
            size: usize::try_from(uncompressed).unwrap_or(usize::MAX),
            limit: MAX_BLOCK_UNCOMPRESSED,
        });
    }
    lines.clear();
    lines.reserve(meta.raw_bytes as usize);
    for e in entries {
        lines.put_slice(e.line.as_bytes());
    }
    let cctx = match cctx {
        Some(c) => c,
        None => cctx.insert(zstd::bulk::Compressor::new(compression.lines_level)?),
    };
    // Both frames are compressed into scratch buffers first so the block, held until its
    // chunk is flushed, is allocated at its exact size.
    compressed.clear();
    compress_into_tail(cctx, compression.columns_level, columns, compressed)?;
    let columns_zlen = compressed.len();
    compress_into_tail(cctx, compression.lines_level, lines, compressed)?;
    let (columns_z, lines_z) = compressed.split_at(columns_zlen);
    let mut out = Vec::with_capacity(BLOCK_HEADER_LEN + 8 + columns_z.len() + lines_z.len());
    out.put_slice(BLOCK_MAGIC);
    out.put_u8(BLOCK_VERSION);
    out.put_u8(CODEC_ZSTD);
    out.put_u16_le(0);
    out.put_u32_le(meta.count);
    out.put_i64_le(meta.min_ts);
    out.put_i64_le(meta.max_ts);
    out.put_u64_le(meta.raw_bytes);
    // Both fit: at most MAX_BLOCK_UNCOMPRESSED, and zstd output stays near its input.
    out.put_u32_le(uncompressed as u32);
    let payload_len_at = out.len();
    out.put_u32_le(0);
    let crc_at = out.len();
    out.put_u32_le(0);
    out.put_u32_le(columns_zlen as u32);
    out.put_u32_le(columns.len() as u32);
    out.put_slice(columns_z);
    out.put_slice(lines_z);
    let payload_len = out.len() - BLOCK_HEADER_LEN;
    out[payload_len_at..payload_len_at + 4]
        .copy_from_slice(&u32::try_from(payload_len).unwrap_or(u32::MAX).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[..crc_at]), &out[BLOCK_HEADER_LEN..]);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    Ok((meta, out))
}

impl SealedBlock {
    /// Decompresses the block's entries, in timestamp order.
    pub fn entries(&self) -> Result<Vec<Entry>, Error> {
        decode_block(&self.bytes).map(|(_, entries)| entries)
    }
}

/// A verified block header and where its payload is.
struct Header<'a> {
    meta: BlockMeta,
    version: u8,
    uncompressed: usize,
    payload: &'a [u8],
    /// Header + payload: the block's whole encoded length.
    len: usize,
}

/// Reads and verifies a block header.
fn read_block_header(bytes: &[u8]) -> Result<Header<'_>, Error> {
    let mut r = Reader::new(bytes);
    let magic = r.take("block magic", 4)?;
    if magic != BLOCK_MAGIC {
        return Err(Error::BlockMagic {
            found: magic.to_vec(),
        });
    }
    let version = r.u8("block version")?;
    if version != BLOCK_VERSION && version != BLOCK_VERSION_ROWS {
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
    Ok(Header {
        meta,
        version,
        uncompressed,
        payload,
        len: BLOCK_HEADER_LEN + compressed,
    })
}

/// Reads only a block's header (verifying its checksum).
pub fn decode_block_meta(bytes: &[u8]) -> Result<BlockMeta, Error> {
    read_block_header(bytes).map(|h| h.meta)
}

/// A block's decompressed payload, as [`with_decompressed`] hands it over.
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    /// v1: entries row by row.
    Rows(&'a [u8]),
    /// v2: the columns frame and the concatenated lines.
    Columns { columns: &'a [u8], lines: &'a [u8] },
}

impl<'a> Payload<'a> {
    /// What a substring search must scan to find every line's text: the lines (v1: the
    /// whole payload, so a hit there may be in a timestamp or length, never a miss).
    pub fn text(&self) -> &'a [u8] {
        match *self {
            Payload::Rows(raw) => raw,
            Payload::Columns { lines, .. } => lines,
        }
    }
}

/// The bytes an entry counts toward a block's size budget: its line and its structured
/// metadata (what the ingester's `chunk_block_size` and compaction's block size measure).
pub fn entry_block_bytes(e: &Entry) -> usize {
    e.line.len()
        + e.structured_metadata
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>()
}

/// Decodes one block: verifies magic, version and checksum, decompresses with a bounded
/// buffer, and checks the entries agree with the header.
pub fn decode_block(bytes: &[u8]) -> Result<(BlockMeta, Vec<Entry>), Error> {
    with_decompressed(bytes, |meta, raw| {
        parse_payload(meta, raw).map(|e| (*meta, e))
    })?
}

/// Verifies a block, decompresses its payload into this thread's reusable buffers and
/// hands it to `f`: no allocation (nor fresh pages to fault in) per block, which matters
/// when most blocks are only scanned for a substring and dropped.
pub fn with_decompressed<R>(
    bytes: &[u8],
    f: impl FnOnce(&BlockMeta, Payload<'_>) -> R,
) -> Result<R, Error> {
    with_decompressed_early(bytes, |_, _| None, f)
}

/// [`with_decompressed`] with a look at the line text first: `early` gets the header and
/// what [`Payload::text`] would give, and when it returns a result the block ends there,
/// its columns frame never decompressed (a substring search skipping a block pays for
/// the lines frame only).
pub fn with_decompressed_early<R>(
    bytes: &[u8],
    early: impl FnOnce(&BlockMeta, &[u8]) -> Option<R>,
    f: impl FnOnce(&BlockMeta, Payload<'_>) -> R,
) -> Result<R, Error> {
    let h = read_block_header(bytes)?;
    with_scratch(|dctx, first, second| {
        let out = if h.version == BLOCK_VERSION_ROWS {
            decompress_exact(dctx, h.payload, first, h.uncompressed, "payload")?;
            match early(&h.meta, first) {
                Some(r) => r,
                None => f(&h.meta, Payload::Rows(first)),
            }
        } else {
            let (columns_z, columns_len, lines_z) = split_columns(&h)?;
            let lines_len = h.uncompressed - columns_len;
            decompress_exact(dctx, lines_z, second, lines_len, "lines")?;
            match early(&h.meta, second) {
                Some(r) => r,
                None => {
                    decompress_exact(dctx, columns_z, first, columns_len, "columns")?;
                    f(
                        &h.meta,
                        Payload::Columns {
                            columns: first,
                            lines: second,
                        },
                    )
                }
            }
        };
        // A rare huge block must not pin its buffers in every thread for good.
        for buf in [first, second] {
            if buf.capacity() > 4 * MAX_TYPICAL_BLOCK {
                *buf = Vec::new();
            }
        }
        Ok(out)
    })
}

/// A decompression context and two reusable buffers (columns or v1 rows; lines).
type Scratch = (Option<zstd::bulk::Decompressor<'static>>, Vec<u8>, Vec<u8>);

thread_local! {
    /// This thread's [`Scratch`]: decoding allocates nothing per block.
    static SCRATCH: std::cell::RefCell<Scratch> =
        const { std::cell::RefCell::new((None, Vec::new(), Vec::new())) };
}

/// Runs `f` with this thread's decompression context and two reusable buffers.
fn with_scratch<R>(
    f: impl FnOnce(
        &mut zstd::bulk::Decompressor<'static>,
        &mut Vec<u8>,
        &mut Vec<u8>,
    ) -> Result<R, Error>,
) -> Result<R, Error> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let (dctx, first, second) = &mut *scratch;
        let dctx = match dctx {
            Some(d) => d,
            None => dctx.insert(zstd::bulk::Decompressor::new()?),
        };
        f(dctx, first, second)
    })
}

fn columns_error(what: &str) -> Error {
    Error::Mismatch(format!("block columns: {what}"))
}

/// Reads one entry's structured metadata off the front of `rest` into `out` (cleared).
fn read_metadata<'a>(rest: &mut &'a [u8], out: &mut Vec<(&'a str, &'a str)>) -> Result<(), Error> {
    let n = decode_varint(rest).map_err(|_| columns_error("bad metadata count"))? as usize;
    if n > rest.len() / 2 {
        return Err(columns_error("metadata count larger than the columns"));
    }
    out.clear();
    for _ in 0..n {
        let name = take_str(rest).ok_or_else(|| columns_error("bad metadata name"))?;
        let value = take_str(rest).ok_or_else(|| columns_error("bad metadata value"))?;
        out.push((name, value));
    }
    Ok(())
}

/// A v2 payload's compressed columns, their uncompressed length and compressed lines,
/// checked against the header.
fn split_columns<'a>(h: &Header<'a>) -> Result<(&'a [u8], usize, &'a [u8]), Error> {
    let mut r = Reader::new(h.payload);
    let columns_zlen = r.u32("block columns_zlen")? as usize;
    let columns_len = r.u32("block columns_len")? as usize;
    let columns_z = r.take("block columns", columns_zlen)?;
    let lines_z = r.take("block lines", r.remaining())?;
    if h.uncompressed.checked_sub(columns_len) != Some(h.meta.raw_bytes as usize) {
        return Err(Error::Mismatch(format!(
            "{columns_len} bytes of columns and {} of lines do not make the {} in the header",
            h.meta.raw_bytes, h.uncompressed
        )));
    }
    Ok((columns_z, columns_len, lines_z))
}

/// Decompresses `src` into `buf`, which must come out exactly `len` bytes long.
fn decompress_exact(
    dctx: &mut zstd::bulk::Decompressor<'static>,
    src: &[u8],
    buf: &mut Vec<u8>,
    len: usize,
    what: &str,
) -> Result<(), Error> {
    buf.clear();
    buf.reserve(len);
    let n = dctx.decompress_to_buffer(src, buf)?;
    if n != len {
        return Err(Error::Mismatch(format!(
            "{what} are {n} bytes uncompressed, header says {len}"
        )));
    }
    Ok(())
}

/// Blocks are cut at ~256 KiB of lines; buffers up to four times that are kept for reuse.
const MAX_TYPICAL_BLOCK: usize = 1 << 20;

/// Parses a payload from [`with_decompressed`] into its entries, checking them against
/// the header.
pub fn parse_payload(meta: &BlockMeta, payload: Payload<'_>) -> Result<Vec<Entry>, Error> {
    parse_payload_if(meta, payload, |_| true)
}

/// Like [`parse_payload`], but only entries whose line passes `keep` are built: the whole
/// block is still checked against its header, yet a search that keeps few lines
/// allocates for those few only.
pub fn parse_payload_if(
    meta: &BlockMeta,
    payload: Payload<'_>,
    keep: impl FnMut(&str) -> bool,
) -> Result<Vec<Entry>, Error> {
    match payload {
        Payload::Rows(raw) => {
            let mut entries = parse_rows(meta, raw)?;
            let mut keep = keep;
            entries.retain(|e| keep(&e.line));
            Ok(entries)
        }
        Payload::Columns { columns, lines } => parse_columns(meta, columns, lines, keep),
    }
}

/// Takes a varint off the front of `buf`, as prost's `decode_varint` does (same values,
/// same refusals), without a branch per byte for those of at most 8 bytes (every line
/// length, and timestamp deltas under 2^56 ns): the stop byte is found in one 8-byte
/// load and the 7-bit groups are packed with three shifts.
#[inline(always)]
pub(crate) fn take_varint(buf: &mut &[u8]) -> Option<u64> {
    if let Some(word) = buf.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
        let word = u64::from_le_bytes(word);
        let stops = !word & 0x8080_8080_8080_8080;
        if stops != 0 {
            // Bits up to and including the first stop byte.
            let bits = stops.trailing_zeros() + 1;
            let kept = if bits >= 64 {
                word
            } else {
                word & ((1u64 << bits) - 1)
            };
            let x = kept & 0x7f7f_7f7f_7f7f_7f7f;
            let x = ((x & 0x7f00_7f00_7f00_7f00) >> 1) | (x & 0x007f_007f_007f_007f);
            let x = ((x & 0x3fff_0000_3fff_0000) >> 2) | (x & 0x0000_3fff_0000_3fff);
            let x = ((x & 0x0fff_ffff_0000_0000) >> 4) | (x & 0x0000_0000_0fff_ffff);
            *buf = buf.get((bits / 8) as usize..)?;
            return Some(x);
        }
    }
    decode_varint(buf).ok()
}

/// A v2 block's timestamps and line lengths, and the columns left after them
/// (structured metadata).
type TsAndLengths<'a> = (Vec<i64>, Vec<u32>, &'a [u8]);

/// Reads the timestamps and line lengths off the front of a v2 block's columns.
fn read_ts_and_lengths<'a>(
    meta: &BlockMeta,
    mut columns: &'a [u8],
) -> Result<TsAndLengths<'a>, Error> {
    let bad = columns_error;
    let count = meta.count as usize;
    // Every entry takes at least three bytes of columns (ts, length, metadata count).
    if count > columns.len() / 3 {
        return Err(bad("fewer bytes than the header's entry count needs"));
    }
    let mut timestamps = Vec::with_capacity(count);
    let mut ts = meta.min_ts;
    for _ in 0..count {
        let delta = take_varint(&mut columns).ok_or_else(|| bad("bad timestamp"))?;
        ts = ts.wrapping_add(delta as i64);
        timestamps.push(ts);
    }
    if count > 0 && (timestamps.first() != Some(&meta.min_ts) || ts != meta.max_ts) {
        return Err(bad("timestamps disagree with the header's time range"));
    }
    let mut lengths = Vec::with_capacity(count);
    let mut total = 0u64;
    for _ in 0..count {
        let len = take_varint(&mut columns).ok_or_else(|| bad("bad line length"))?;
        total = total.saturating_add(len);
        lengths.push(u32::try_from(len).map_err(|_| bad("line length"))?);
    }
    if total != meta.raw_bytes {
        return Err(bad("line lengths disagree with the header's raw bytes"));
    }
    Ok((timestamps, lengths, columns))
}

fn parse_columns(
    meta: &BlockMeta,
    columns: &[u8],
    lines: &[u8],
    mut keep: impl FnMut(&str) -> bool,
) -> Result<Vec<Entry>, Error> {
    let bad = columns_error;
    let (timestamps, lengths, mut columns) = read_ts_and_lengths(meta, columns)?;
    let text = std::str::from_utf8(lines).map_err(|_| {
        Error::Wire(WireError::Utf8 {
            field: "entry line",
        })
    })?;
    let mut entries = Vec::with_capacity(timestamps.len());
    let mut metadata: Vec<(&str, &str)> = Vec::new();
    let mut sets = MetadataInterner::default();
    let mut at = 0usize;
    for (timestamp_ns, len) in timestamps.into_iter().zip(lengths) {
        let len = len as usize;
        let line = text
            .get(at..at + len)
            .ok_or_else(|| bad("a line length splits a character or overruns the lines"))?;
        at += len;
        read_metadata(&mut columns, &mut metadata)?;
        if !keep(line) {
            continue;
        }
        entries.push(Entry {
            timestamp_ns,
            line: line.to_owned(),
            structured_metadata: sets.get(&metadata),
        });
    }
    if !columns.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(entries)
}

/// Takes a varint-length-prefixed UTF-8 string off the front of `buf`.
fn take_str<'a>(buf: &mut &'a [u8]) -> Option<&'a str> {
    let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
    let bytes = buf.get(..len)?;
    *buf = buf.get(len..)?;
    std::str::from_utf8(bytes).ok()
}

fn parse_rows(meta: &BlockMeta, raw: &[u8]) -> Result<Vec<Entry>, Error> {
    let mut r = Reader::new(raw);
    // 16 bytes is the smallest entry: ts, empty line, no metadata.
    let mut entries = Vec::with_capacity((meta.count as usize).min(raw.len() / 16));
    let mut raw_bytes = 0u64;
    let mut sets = MetadataInterner::default();
    let mut pairs = Vec::new();
    for _ in 0..meta.count {
        let timestamp_ns = r.i64("entry timestamp")?;
        let line = r.str("entry line")?.to_owned();
        let n = r.count("structured metadata count", 8)?;
        pairs.clear();
        for _ in 0..n {
            let name = r.str("structured metadata name")?;
            let value = r.str("structured metadata value")?;
            pairs.push((name, value));
        }
        raw_bytes += line.len() as u64;
        entries.push(Entry {
            timestamp_ns,
            line,
            structured_metadata: sets.get(&pairs),
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
        let h = read_block_header(rest)?;
        refs.push(BlockRef {
            meta: h.meta,
            offset,
            len: h.len,
        });
        offset += h.len;
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
    let _ = count::read_count_columns(data);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(ts: i64, line: &str) -> Entry {
        Entry {
            timestamp_ns: ts,
            line: line.to_string(),
            structured_metadata: Default::default(),
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
                structured_metadata: structured_metadata.into(),
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

    /// A block as version 1 wrote it (row-wise payload), for the compatibility test.
    pub(crate) fn seal_v1(entries: &[Entry]) -> Vec<u8> {
        let mut payload = Vec::new();
        for e in entries {
            payload.put_i64_le(e.timestamp_ns);
            wire::put_str(&mut payload, &e.line);
            payload.put_u32_le(e.structured_metadata.len() as u32);
            for (name, value) in &e.structured_metadata {
                wire::put_str(&mut payload, name);
                wire::put_str(&mut payload, value);
            }
        }
        let compressed = zstd::bulk::compress(&payload, 1).unwrap();
        let mut out = Vec::new();
        out.put_slice(BLOCK_MAGIC);
        out.put_u8(BLOCK_VERSION_ROWS);
        out.put_u8(CODEC_ZSTD);
        out.put_u16_le(0);
        out.put_u32_le(entries.len() as u32);
        out.put_i64_le(entries.first().unwrap().timestamp_ns);
        out.put_i64_le(entries.last().unwrap().timestamp_ns);
        out.put_u64_le(entries.iter().map(|e| e.line.len() as u64).sum());
        out.put_u32_le(payload.len() as u32);
        out.put_u32_le(compressed.len() as u32);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&out), &compressed);
        out.put_u32_le(crc);
        out.put_slice(&compressed);
        out
    }

    #[test]
    fn blocks_written_row_wise_by_version_1_still_decode() {
        let entries = vec![
            entry(1, "first line"),
            Entry {
                timestamp_ns: 2,
                line: "with metadata".into(),
                structured_metadata: vec![("trace_id".into(), "abc".into())].into(),
            },
        ];
        let v1 = seal_v1(&entries);
        assert_eq!(decode_block(&v1).unwrap().1, entries);
        let text = with_decompressed(&v1, |_, p| p.text().to_vec()).unwrap();
        assert!(text.windows(10).any(|w| w == b"first line"));
    }

    #[test]
    fn a_substring_search_of_a_columnar_block_sees_only_line_text() {
        let b = SealedBlock::seal(vec![entry(1, "alpha"), entry(2, "beta")], 1).unwrap();
        let text = with_decompressed(&b.bytes, |_, p| p.text().to_vec()).unwrap();
        assert_eq!(text, b"alphabeta");
    }

    #[test]
    fn an_early_answer_ends_the_block_and_none_reads_on() {
        let b = SealedBlock::seal(vec![entry(1, "alpha"), entry(2, "beta")], 1).unwrap();
        let mut seen = Vec::new();
        let r = with_decompressed_early(
            &b.bytes,
            |meta, text| {
                seen = text.to_vec();
                (meta.count == 2).then_some(0usize)
            },
            |_, _| panic!("the early answer was not taken"),
        );
        assert_eq!(r.unwrap(), 0);
        assert_eq!(seen, b"alphabeta");
        let n = with_decompressed_early(
            &b.bytes,
            |_, _| None,
            |meta, raw| parse_payload(meta, raw).unwrap().len(),
        );
        assert_eq!(n.unwrap(), 2);
        let v1 = seal_v1(&[entry(1, "first line")]);
        let n = with_decompressed_early(
            &v1,
            |_, _| None,
            |meta, raw| parse_payload(meta, raw).unwrap().len(),
        );
        assert_eq!(n.unwrap(), 1);
    }

    #[test]
    fn entries_that_cannot_be_sealed_are_handed_back() {
        let huge = entry(1, &"x".repeat(MAX_BLOCK_UNCOMPRESSED + 1));
        let Err((e, back)) = SealedBlock::try_seal(vec![entry(2, "b"), huge.clone()], 1) else {
            panic!("a block over the size limit was sealed");
        };
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
        assert_eq!(back, vec![huge, entry(2, "b")]);
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
        fn the_fast_varint_reads_what_prost_reads(
            data in proptest::collection::vec(any::<u8>(), 0..24),
            value in any::<u64>(),
            tail in proptest::collection::vec(any::<u8>(), 0..10),
        ) {
            let mut fast: &[u8] = &data;
            let mut slow: &[u8] = &data;
            let want = decode_varint(&mut slow).ok();
            prop_assert_eq!(take_varint(&mut fast), want);
            if want.is_some() {
                prop_assert_eq!(fast.len(), slow.len());
            }
            let mut encoded = Vec::new();
            encode_varint(value, &mut encoded);
            encoded.extend_from_slice(&tail);
            let mut buf: &[u8] = &encoded;
            prop_assert_eq!(take_varint(&mut buf), Some(value));
            prop_assert_eq!(buf, &tail[..]);
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
