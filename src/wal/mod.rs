//! Write-ahead log: the durable record of accepted entries, written and fsynced before a
//! push is acknowledged, replayed into the ingester's heads on start.
//!
//! Owns segment files, record framing, group commit and replay. It does not own what the
//! entries mean (the ingester applies them) nor when segments may go (the ingester calls
//! [`Wal::checkpoint`] with the oldest segment its unflushed chunks still need).
//!
//! ```text
//! <wal dir>/00000001.wal, 00000002.wal, ...      numbered in write order; one is active
//!
//! segment file (v1)
//! +0  magic "LWAL"      4
//! +4  version = 1       u16
//! +6  reserved = 0      u16
//! +8  record | record | ...
//!
//! record
//! +0  payload_len       u32
//! +4  crc32c            u32   of the payload
//! +8  payload           payload_len bytes:
//!       payload_version = 1 u8
//!       tenant          u32 len + utf-8
//!       labels          u32 len + utf-8 (canonical label set, e.g. {app="api"})
//!       entry_count     u32
//!       entry_count x ( ts i64 | line u32 len + bytes | md_count u32 | (name, value)* )
//! ```
//!
//! Group commit: one writer thread owns the active file. Pushes hand it framed records and
//! wait; the thread drains every request queued meanwhile, writes them, fsyncs once and
//! answers them all, so concurrent pushes share one fsync. With `fsync: interval` the
//! thread syncs at most every `fsync_interval`; with `never` it leaves that to the OS.
//! Every mode writes before acknowledging, so a `kill -9` loses nothing acknowledged;
//! only `always` also survives power loss.
//!
//! Replay reads segments in order and stops a segment at its first short, oversized or
//! checksum-failing record, truncating the file there: that is the torn tail of a write
//! the process died in, which was never acknowledged.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::BufMut;
use lode_push::{Entry, LabelSet, MetadataInterner};
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::chunk::wire::{put_str, Reader, WireError};
use crate::tenant::TenantId;

const MAGIC: &[u8; 4] = b"LWAL";
const VERSION: u16 = 1;
const HEADER_LEN: u64 = 8;
const PAYLOAD_VERSION: u8 = 1;
const FRAME_LEN: usize = 8;

/// A segment is closed and a new one started once it grows past this.
pub const SEGMENT_TARGET_BYTES: u64 = 64 << 20;

/// Largest record accepted on write and believed on replay; a longer length field is a
/// torn or corrupt tail.
pub const MAX_RECORD_BYTES: usize = 512 << 20;

/// How the writer makes appends durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// fsync every group commit before acknowledging (survives power loss).
    #[default]
    Always,
    /// fsync at most every `fsync_interval`; acknowledged writes survive process crashes.
    Interval,
    /// Never fsync; acknowledged writes survive process crashes, not power loss.
    Never,
}

/// `ingester.wal` settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// Directory of the segment files.
    pub dir: PathBuf,
    /// Without the WAL, entries in heads are lost on a crash.
    pub enabled: bool,
    pub fsync: FsyncMode,
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            dir: PathBuf::from("data/wal"),
            enabled: true,
            fsync: FsyncMode::Always,
            fsync_interval: Duration::from_secs(1),
        }
    }
}

impl WalConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if self.enabled && self.dir.as_os_str().is_empty() {
            return Err(Error::Config(
                "ingester.wal.dir is empty: set it to a directory for WAL segments".into(),
            ));
        }
        if self.fsync == FsyncMode::Interval && self.fsync_interval.is_zero() {
            return Err(Error::Config(
                "ingester.wal.fsync_interval is 0s with fsync: interval: use a positive duration such as 1s, or fsync: always".into(),
            ));
        }
        Ok(())
    }
}

/// Number of a WAL segment file; higher is newer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentNo(pub u64);

/// Why the WAL could not be opened, written or replayed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("wal {action} {path}: {reason}")]
    Io {
        action: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("wal segment {path} is not a lode wal segment (magic {found:?}, want \"LWAL\")")]
    Magic { path: PathBuf, found: Vec<u8> },
    #[error("wal segment {path} has version {version}; this build reads version {VERSION}")]
    Version { path: PathBuf, version: u16 },
    #[error(
        "wal record of {size} bytes exceeds the {limit} byte limit: push fewer entries per request"
    )]
    RecordTooLarge { size: usize, limit: usize },
    #[error("wal record is corrupt: {0}")]
    Corrupt(String),
    #[error("wal is unusable after an earlier write or fsync failure ({0}); restart the server once the disk is healthy")]
    Poisoned(String),
    #[error("wal is closed")]
    Closed,
    #[error("{0}")]
    Config(String),
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        Error::Corrupt(e.to_string())
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::Io {
        action,
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// One replayed record: the entries one push accepted for one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub tenant: TenantId,
    pub labels: LabelSet,
    pub entries: Vec<Entry>,
}

/// About the bytes [`encode_record`] appends for `entries` of a stream (exact but for the
/// label set's escaping), so a push's records are framed into one buffer sized once
/// rather than grown by doubling, which copied each push's megabyte several times.
pub fn record_len_hint(tenant: &TenantId, labels: &LabelSet, entries: &[Entry]) -> usize {
    let labels_len: usize = labels.iter().map(|(n, v)| n.len() + v.len() + 5).sum();
    let entries_len: usize = entries
        .iter()
        .map(|e| {
            16 + e.line.len()
                + e.structured_metadata
                    .iter()
                    .map(|(n, v)| 8 + n.len() + v.len())
                    .sum::<usize>()
        })
        .sum();
    FRAME_LEN + 1 + 4 + tenant.as_str().len() + 4 + 2 + labels_len + 4 + entries_len
}

/// Appends one framed record (length, checksum, payload) for `entries` of a stream.
pub fn encode_record(
    out: &mut Vec<u8>,
    tenant: &TenantId,
    labels: &LabelSet,
    entries: &[Entry],
) -> Result<(), Error> {
    let start = out.len();
    out.put_u32_le(0);
    out.put_u32_le(0);
    out.put_u8(PAYLOAD_VERSION);
    put_str(out, tenant.as_str());
    put_str(out, &labels.to_string());
    out.put_u32_le(u32::try_from(entries.len()).unwrap_or(u32::MAX));
    for e in entries {
        out.put_i64_le(e.timestamp_ns);
        put_str(out, &e.line);
        out.put_u32_le(u32::try_from(e.structured_metadata.len()).unwrap_or(u32::MAX));
        for (name, value) in &e.structured_metadata {
            put_str(out, name);
            put_str(out, value);
        }
    }
    let payload_len = out.len() - start - FRAME_LEN;
    if payload_len > MAX_RECORD_BYTES {
        out.truncate(start);
        return Err(Error::RecordTooLarge {
            size: payload_len,
            limit: MAX_RECORD_BYTES,
        });
    }
    let crc = crc32c::crc32c(out.get(start + FRAME_LEN..).unwrap_or_default());
    if let Some(frame) = out.get_mut(start..start + FRAME_LEN) {
        frame[..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        frame[4..].copy_from_slice(&crc.to_le_bytes());
    }
    Ok(())
}

/// Decodes a record payload (the bytes after the length and checksum).
pub fn decode_payload(payload: &[u8]) -> Result<Record, Error> {
    let mut r = Reader::new(payload);
    let version = r.u8("record version")?;
    if version != PAYLOAD_VERSION {
        return Err(Error::Corrupt(format!(
            "record version {version}, this build reads {PAYLOAD_VERSION}"
        )));
    }
    let tenant =
        TenantId::new(r.str("record tenant")?).map_err(|e| Error::Corrupt(e.to_string()))?;
    let labels =
        LabelSet::parse(r.str("record labels")?).map_err(|e| Error::Corrupt(e.to_string()))?;
    let n = r.count("record entry count", 16)?;
    let mut entries = Vec::with_capacity(n);
    let mut sets = MetadataInterner::default();
    let mut pairs = Vec::new();
    for _ in 0..n {
        let timestamp_ns = r.i64("entry timestamp")?;
        let line = r.str("entry line")?.to_owned();
        let m = r.count("structured metadata count", 8)?;
        pairs.clear();
        for _ in 0..m {
            let name = r.str("structured metadata name")?;
            let value = r.str("structured metadata value")?;
            pairs.push((name, value));
        }
        entries.push(Entry {
            timestamp_ns,
            line,
            structured_metadata: sets.get(&pairs),
        });
    }
    if r.remaining() != 0 {
        return Err(Error::Corrupt(format!(
            "{} bytes after the last entry",
            r.remaining()
        )));
    }
    Ok(Record {
        tenant,
        labels,
        entries,
    })
}

/// What replay found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub segments: usize,
    pub records: usize,
    /// Bytes cut from torn or corrupt tails.
    pub truncated_bytes: u64,
    /// Segments whose torn or corrupt tail was cut (or that were removed as torn).
    pub truncated_segments: u64,
    pub last_segment: Option<SegmentNo>,
}

fn segment_path(dir: &Path, n: SegmentNo) -> PathBuf {
    dir.join(format!("{:08}.wal", n.0))
}

fn list_segments(dir: &Path) -> Result<Vec<SegmentNo>, Error> {
    let mut out = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let item = item.map_err(io_err("list", dir))?;
        let name = item.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        if let Ok(n) = stem.parse::<u64>() {
            out.push(SegmentNo(n));
        }
    }
    out.sort();
    Ok(out)
}

/// Replays every segment in `dir` in order, calling `apply` for each intact record and
/// truncating each segment at its first torn or corrupt record.
pub fn replay_dir(
    dir: &Path,
    mut apply: impl FnMut(SegmentNo, Record),
) -> Result<ReplayStats, Error> {
    let mut stats = ReplayStats::default();
    for n in list_segments(dir)? {
        let path = segment_path(dir, n);
        let data = fs::read(&path).map_err(io_err("read", &path))?;
        stats.segments += 1;
        stats.last_segment = Some(n);
        if data.len() < HEADER_LEN as usize {
            // Died while creating the file: nothing in it was ever acknowledged.
            stats.truncated_bytes += data.len() as u64;
            stats.truncated_segments += 1;
            fs::remove_file(&path).map_err(io_err("remove torn", &path))?;
            continue;
        }
        let mut r = Reader::new(&data);
        let magic = r.take("wal magic", 4)?;
        if magic != MAGIC {
            return Err(Error::Magic {
                path,
                found: magic.to_vec(),
            });
        }
        let version = r.u16("wal version")?;
        if version != VERSION {
            return Err(Error::Version { path, version });
        }
        let mut good = HEADER_LEN as usize;
        let mut rest = data.get(good..).unwrap_or_default();
        while let Some(len) = frame_len(rest) {
            let Some(payload) = rest.get(FRAME_LEN..FRAME_LEN + len) else {
                break;
            };
            let stored = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
            if crc32c::crc32c(payload) != stored {
                break;
            }
            let Ok(record) = decode_payload(payload) else {
                break;
            };
            apply(n, record);
            stats.records += 1;
            good += FRAME_LEN + len;
            rest = data.get(good..).unwrap_or_default();
        }
        if good < data.len() {
            let cut = (data.len() - good) as u64;
            tracing::warn!(path = %path.display(), bytes = cut, "truncating torn wal tail");
            stats.truncated_bytes += cut;
            stats.truncated_segments += 1;
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err("open", &path))?;
            f.set_len(good as u64).map_err(io_err("truncate", &path))?;
            f.sync_all().map_err(io_err("fsync", &path))?;
        }
    }
    Ok(stats)
}

/// The payload length of the record framed at the start of `rest`, if the frame is
/// complete and plausible.
fn frame_len(rest: &[u8]) -> Option<usize> {
    let head = rest.get(..FRAME_LEN)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    (len <= MAX_RECORD_BYTES).then_some(len)
}

enum Command {
    Append {
        bytes: Vec<u8>,
        reply: tokio::sync::oneshot::Sender<Result<SegmentNo, Error>>,
    },
    Checkpoint {
        keep_from: Option<SegmentNo>,
        reply: tokio::sync::oneshot::Sender<Result<usize, Error>>,
    },
}

/// The write-ahead log. Cheap to share behind an `Arc`; dropping it stops the writer.
#[derive(Debug)]
pub struct Wal {
    tx: Option<mpsc::Sender<Command>>,
    /// Where the writer thread reports each fsync's duration, once metrics are wired.
    fsync_observer: FsyncObserver,
    buffers: Arc<BufferPool>,
}

/// Buffers the writer has written, for later pushes to frame their records into.
///
/// A push frames about a megabyte; a fresh buffer that size comes from the OS each time
/// (the allocator returns freed pages within milliseconds), and its page faults were 3 %
/// of ingest CPU. A few buffers, one per push in flight, are kept instead.
#[derive(Debug, Default)]
struct BufferPool(parking_lot::Mutex<Vec<Vec<u8>>>);

impl BufferPool {
    /// How many written buffers are kept.
    const KEEP: usize = 8;
    /// Buffers larger than this (a push far above the usual size) are freed, not kept.
    const MAX_KEPT_BYTES: usize = 8 << 20;

    /// An empty buffer with room for at least `capacity` bytes.
    fn take(&self, capacity: usize) -> Vec<u8> {
        let mut buf = self.0.lock().pop().unwrap_or_default();
        buf.reserve(capacity);
        buf
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() > Self::MAX_KEPT_BYTES {
            return;
        }
        buf.clear();
        let mut kept = self.0.lock();
        if kept.len() < Self::KEEP {
            kept.push(buf);
        }
    }
}

/// Shared between the handle and the writer thread: set after the WAL opens (the metrics
/// registry is built later), read on every fsync.
type FsyncObserver = Arc<arc_swap::ArcSwapOption<Histogram>>;

impl Wal {
    /// A WAL that records nothing (`ingester.wal.enabled: false`).
    pub fn disabled() -> Wal {
        Wal {
            tx: None,
            fsync_observer: FsyncObserver::default(),
            buffers: Arc::default(),
        }
    }

    /// Replays `config.dir` through `apply`, then starts a fresh segment and the writer
    /// thread.
    pub fn open(
        config: &WalConfig,
        apply: impl FnMut(SegmentNo, Record),
    ) -> Result<(Wal, ReplayStats), Error> {
        config.validate()?;
        if !config.enabled {
            return Ok((Wal::disabled(), ReplayStats::default()));
        }
        let dir = config.dir.clone();
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let stats = replay_dir(&dir, apply)?;
        let next = SegmentNo(stats.last_segment.map_or(1, |n| n.0 + 1));
        let fsync_observer = FsyncObserver::default();
        let buffers = Arc::<BufferPool>::default();
        let mut writer = Writer::create(dir, next, config.fsync, config.fsync_interval)?;
        writer.fsync_observer = fsync_observer.clone();
        writer.buffers = buffers.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("lode-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err("spawn writer for", &config.dir))?;
        Ok((
            Wal {
                tx: Some(tx),
                fsync_observer,
                buffers,
            },
            stats,
        ))
    }

    /// Observes every later fsync's duration in `histogram`
    /// (`lode_wal_fsync_duration_seconds`).
    pub fn observe_fsync(&self, histogram: Histogram) {
        self.fsync_observer.store(Some(Arc::new(histogram)));
    }

    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// An empty buffer for [`encode_record`] with room for `capacity` bytes, reusing one
    /// an earlier [`Wal::append`] wrote when there is one.
    pub fn buffer(&self, capacity: usize) -> Vec<u8> {
        self.buffers.take(capacity)
    }

    /// Writes framed records (from [`encode_record`]) and waits until they are durable as
    /// configured. Returns the segment that holds them.
    pub async fn append(&self, framed: Vec<u8>) -> Result<SegmentNo, Error> {
        let Some(tx) = &self.tx else {
            return Ok(SegmentNo(0));
        };
        let (reply, rx) = tokio::sync::oneshot::channel();
        tx.send(Command::Append {
            bytes: framed,
            reply,
        })
        .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Deletes segments every unflushed entry is newer than: those below `keep_from`, or
    /// all of them (after starting a new one) when `keep_from` is `None`. The caller must
    /// keep appends out while it computes `keep_from` and this runs. Returns how many
    /// segment files were deleted.
    pub async fn checkpoint(&self, keep_from: Option<SegmentNo>) -> Result<usize, Error> {
        let Some(tx) = &self.tx else {
            return Ok(0);
        };
        let (reply, rx) = tokio::sync::oneshot::channel();
        tx.send(Command::Checkpoint { keep_from, reply })
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}

struct Writer {
    dir: PathBuf,
    file: File,
    active: SegmentNo,
    size: u64,
    fsync: FsyncMode,
    interval: Duration,
    last_sync: Instant,
    dirty: bool,
    poisoned: Option<String>,
    fsync_observer: FsyncObserver,
    buffers: Arc<BufferPool>,
}

/// Group commits stop collecting requests past this many bytes so one fsync does not
/// wait behind an unbounded write.
const GROUP_COMMIT_MAX_BYTES: usize = 16 << 20;

impl Writer {
    fn create(
        dir: PathBuf,
        n: SegmentNo,
        fsync: FsyncMode,
        interval: Duration,
    ) -> Result<Writer, Error> {
        let file = new_segment(&dir, n)?;
        Ok(Writer {
            dir,
            file,
            active: n,
            size: HEADER_LEN,
            fsync,
            interval,
            last_sync: Instant::now(),
            dirty: false,
            poisoned: None,
            fsync_observer: FsyncObserver::default(),
            buffers: Arc::default(),
        })
    }

    fn run(mut self, rx: mpsc::Receiver<Command>) {
        loop {
            let first = if self.fsync == FsyncMode::Interval && self.dirty {
                let wait = self.interval.saturating_sub(self.last_sync.elapsed());
                match rx.recv_timeout(wait) {
                    Ok(c) => c,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        // A failed fsync poisons the writer; later appends report it.
                        let _ = self.sync();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(c) => c,
                    Err(_) => break,
                }
            };
            let mut batch = vec![first];
            let mut bytes = 0;
            while bytes < GROUP_COMMIT_MAX_BYTES {
                match rx.try_recv() {
                    Ok(c) => {
                        if let Command::Append { bytes: b, .. } = &c {
                            bytes += b.len();
                        }
                        batch.push(c);
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
        // Shutting down: a failure is already recorded as poison and logged by `sync`.
        let _ = self.sync();
    }

    fn commit(&mut self, batch: Vec<Command>) {
        let mut written = Vec::new();
        let mut checkpoints = Vec::new();
        for c in batch {
            match c {
                Command::Append { bytes, reply } => {
                    match self.write(&bytes) {
                        Ok(n) => written.push((n, reply)),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                    self.buffers.give_back(bytes);
                }
                Command::Checkpoint { keep_from, reply } => checkpoints.push((keep_from, reply)),
            }
        }
        if !written.is_empty() {
            let synced = match self.fsync {
                FsyncMode::Always => self.sync(),
                FsyncMode::Interval if self.last_sync.elapsed() >= self.interval => self.sync(),
                FsyncMode::Interval | FsyncMode::Never => Ok(()),
            };
            for (n, reply) in written {
                let _ = reply.send(synced.clone().map(|()| n));
            }
        }
        for (keep_from, reply) in checkpoints {
            let _ = reply.send(self.checkpoint(keep_from));
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<SegmentNo, Error> {
        if let Some(why) = &self.poisoned {
            return Err(Error::Poisoned(why.clone()));
        }
        if self.size >= SEGMENT_TARGET_BYTES {
            self.rotate()?;
        }
        let path = segment_path(&self.dir, self.active);
        if let Err(e) = self.file.write_all(bytes) {
            // A partial record would hide every later one from replay: cut it off, or stop
            // accepting writes if even that fails.
            let undo = self
                .file
                .set_len(self.size)
                .and_then(|()| self.file.seek(SeekFrom::Start(self.size)).map(|_| ()));
            if let Err(undo) = undo {
                self.poisoned = Some(format!("write {}: {e}; undo: {undo}", path.display()));
            }
            return Err(io_err("write", &path)(e));
        }
        self.size += bytes.len() as u64;
        self.dirty = true;
        Ok(self.active)
    }

    fn sync(&mut self) -> Result<(), Error> {
        if let Some(why) = &self.poisoned {
            return Err(Error::Poisoned(why.clone()));
        }
        if !self.dirty {
            return Ok(());
        }
        let path = segment_path(&self.dir, self.active);
        let began = Instant::now();
        if let Err(e) = self.file.sync_data() {
            // After a failed fsync the kernel may have dropped the dirty pages; nothing
            // written since the last good fsync can be trusted durable again.
            self.poisoned = Some(format!("fsync {}: {e}", path.display()));
            return Err(io_err("fsync", &path)(e));
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        if let Some(h) = self.fsync_observer.load().as_ref() {
            h.observe(began.elapsed().as_secs_f64());
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), Error> {
        if self.fsync != FsyncMode::Never {
            self.sync()?;
        }
        let next = SegmentNo(self.active.0 + 1);
        self.file = new_segment(&self.dir, next)?;
        self.active = next;
        self.size = HEADER_LEN;
        Ok(())
    }

    fn checkpoint(&mut self, keep_from: Option<SegmentNo>) -> Result<usize, Error> {
        let keep_from = match keep_from {
            Some(n) => n.min(self.active),
            None => {
                if self.size > HEADER_LEN {
                    self.rotate()?;
                }
                self.active
            }
        };
        let mut deleted = 0;
        for n in list_segments(&self.dir)? {
            if n < keep_from {
                let path = segment_path(&self.dir, n);
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

fn new_segment(dir: &Path, n: SegmentNo) -> Result<File, Error> {
    let path = segment_path(dir, n);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(io_err("create", &path))?;
    let mut header = Vec::with_capacity(HEADER_LEN as usize);
    header.put_slice(MAGIC);
    header.put_u16_le(VERSION);
    header.put_u16_le(0);
    file.write_all(&header)
        .map_err(io_err("write header of", &path))?;
    file.sync_all().map_err(io_err("fsync", &path))?;
    // The new name must be durable too, or a power loss could forget the whole file.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(i: usize) -> Record {
        Record {
            tenant: TenantId::new("team-a").unwrap(),
            labels: LabelSet::parse(&format!(r#"{{app="api", n="{}"}}"#, i % 3)).unwrap(),
            entries: vec![Entry {
                timestamp_ns: i as i64,
                line: format!("line {i}"),
                structured_metadata: vec![("trace_id".into(), format!("t{i}"))].into(),
            }],
        }
    }

    fn config(dir: &Path, fsync: FsyncMode) -> WalConfig {
        WalConfig {
            dir: dir.to_path_buf(),
            enabled: true,
            fsync,
            fsync_interval: Duration::from_millis(5),
        }
    }

    fn framed(r: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(&mut out, &r.tenant, &r.labels, &r.entries).unwrap();
        out
    }

    fn replay_all(dir: &Path) -> (Vec<Record>, ReplayStats) {
        let mut got = Vec::new();
        let stats = replay_dir(dir, |_, r| got.push(r)).unwrap();
        (got, stats)
    }

    #[tokio::test]
    async fn written_buffers_are_handed_to_later_pushes_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(&config(dir.path(), FsyncMode::Always), |_, _| {}).unwrap();
        let r = record(1);
        let mut buf = wal.buffer(4096);
        encode_record(&mut buf, &r.tenant, &r.labels, &r.entries).unwrap();
        let written = buf.as_ptr();
        wal.append(buf).await.unwrap();
        let again = wal.buffer(16);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), written, "the written buffer is reused");
        assert!(again.capacity() >= 4096);
        // Past what it keeps, the pool frees buffers rather than holding them.
        let huge = Vec::with_capacity(BufferPool::MAX_KEPT_BYTES + 1);
        wal.append(huge).await.unwrap();
        assert!(wal.buffer(0).capacity() <= BufferPool::MAX_KEPT_BYTES);
    }

    #[tokio::test]
    async fn concurrent_appends_are_all_replayed_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [FsyncMode::Always, FsyncMode::Interval, FsyncMode::Never] {
            let sub = dir.path().join(format!("{mode:?}"));
            let (wal, _) = Wal::open(&config(&sub, mode), |_, _| {}).unwrap();
            let wal = std::sync::Arc::new(wal);
            let tasks: Vec<_> = (0..50)
                .map(|i| {
                    let wal = wal.clone();
                    tokio::spawn(async move { wal.append(framed(&record(i))).await })
                })
                .collect();
            for t in tasks {
                assert_eq!(t.await.unwrap().unwrap(), SegmentNo(1));
            }
            drop(wal);
            let (mut got, stats) = replay_all(&sub);
            got.sort_by_key(|r| r.entries[0].timestamp_ns);
            assert_eq!(got, (0..50).map(record).collect::<Vec<_>>(), "{mode:?}");
            assert_eq!(stats.truncated_bytes, 0);
        }
    }

    #[tokio::test]
    async fn checkpoint_deletes_segments_older_than_the_oldest_unflushed_one() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(&config(dir.path(), FsyncMode::Always), |_, _| {}).unwrap();
        assert_eq!(wal.append(framed(&record(1))).await.unwrap(), SegmentNo(1));
        // Nothing unflushed: the active segment is rotated away and deleted.
        assert_eq!(wal.checkpoint(None).await.unwrap(), 1);
        assert_eq!(wal.append(framed(&record(2))).await.unwrap(), SegmentNo(2));
        assert_eq!(wal.checkpoint(Some(SegmentNo(2))).await.unwrap(), 0);
        drop(wal);
        let (got, _) = replay_all(dir.path());
        assert_eq!(got, vec![record(2)]);
    }

    #[tokio::test]
    async fn reopening_starts_a_new_segment_after_the_replayed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), FsyncMode::Always);
        let (wal, _) = Wal::open(&cfg, |_, _| {}).unwrap();
        wal.append(framed(&record(1))).await.unwrap();
        drop(wal);
        let mut replayed = Vec::new();
        let (wal, stats) = Wal::open(&cfg, |n, r| replayed.push((n, r))).unwrap();
        assert_eq!(replayed, vec![(SegmentNo(1), record(1))]);
        assert_eq!(stats.last_segment, Some(SegmentNo(1)));
        assert_eq!(wal.append(framed(&record(2))).await.unwrap(), SegmentNo(2));
    }

    #[test]
    fn a_foreign_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("00000001.wal"), b"NOPE\x01\x00\x00\x00").unwrap();
        let err = replay_dir(dir.path(), |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("00000001.wal"), "{err}");
    }

    fn write_segment(dir: &Path, records: &[Record]) -> PathBuf {
        let path = segment_path(dir, SegmentNo(1));
        let mut data = Vec::new();
        data.put_slice(MAGIC);
        data.put_u16_le(VERSION);
        data.put_u16_le(0);
        for r in records {
            data.extend(framed(r));
        }
        fs::write(&path, data).unwrap();
        path
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn records_round_trip(
            tenant in "[a-z0-9]{1,10}",
            labels in proptest::collection::btree_map("[a-z_]{1,6}", ".{0,8}", 0..4),
            entries in proptest::collection::vec((any::<i64>(), ".{0,30}", proptest::collection::vec(("[a-z]{1,4}", ".{0,4}"), 0..2)), 0..8),
        ) {
            let r = Record {
                tenant: TenantId::new(&tenant).unwrap(),
                labels: LabelSet::from_pairs(labels).unwrap(),
                entries: entries.into_iter().map(|(timestamp_ns, line, structured_metadata)| Entry { timestamp_ns, line, structured_metadata: structured_metadata.into() }).collect(),
            };
            let bytes = framed(&r);
            prop_assert_eq!(decode_payload(&bytes[FRAME_LEN..]).unwrap(), r);
        }

        #[test]
        fn replay_of_a_truncated_segment_returns_a_prefix(n in 1usize..20, cut in any::<prop::sample::Index>()) {
            let dir = tempfile::tempdir().unwrap();
            let written: Vec<_> = (0..n).map(record).collect();
            let path = write_segment(dir.path(), &written);
            let len = fs::metadata(&path).unwrap().len() as usize;
            let keep = cut.index(len + 1);
            OpenOptions::new().write(true).open(&path).unwrap().set_len(keep as u64).unwrap();
            let (got, _) = replay_all(dir.path());
            prop_assert!(got.len() <= written.len());
            prop_assert_eq!(&got[..], &written[..got.len()]);
            // A second replay sees a clean file: the torn tail was cut off.
            let (again, stats) = replay_all(dir.path());
            prop_assert_eq!(again, got);
            prop_assert_eq!(stats.truncated_bytes, 0);
        }

        #[test]
        fn replay_of_a_corrupted_segment_never_panics_and_returns_a_prefix(
            n in 1usize..20,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let written: Vec<_> = (0..n).map(record).collect();
            let path = write_segment(dir.path(), &written);
            let mut data = fs::read(&path).unwrap();
            for (i, x) in flips {
                let at = i.index(data.len());
                data[at] ^= x;
            }
            fs::write(&path, &data).unwrap();
            let mut got = Vec::new();
            match replay_dir(dir.path(), |_, r| got.push(r)) {
                Ok(_) => {
                    prop_assert!(got.len() <= written.len());
                    prop_assert_eq!(&got[..], &written[..got.len()]);
                }
                // Only a damaged file header may refuse the whole segment.
                Err(e) => prop_assert!(matches!(e, Error::Magic { .. } | Error::Version { .. }), "{}", e),
            }
        }
    }
}
