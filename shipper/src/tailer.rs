//! Discovery and tailing: which files are read, from where, and until when.
//!
//! Owns the reader thread: periodic glob scans (the mechanism) woken early by inotify
//! events from `notify` (a hint only — NFS, overflows and watch limits just fall back to
//! the rescan), opening files at their checkpoint, reading them in fair chunks, splitting
//! lines, and releasing files once drained. It hands labelled entries to the client over
//! a bounded channel; when the client is full the thread blocks, so reading stops instead
//! of buffering without bound. It does not own parsing (`format`), labels (`pipeline`) or
//! acknowledgements (`client`).
//!
//! Rotation: each glob also matches its rotated siblings (`<match>.<suffix>`, except
//! `.gz`, `.tmp` and other compressed files), and files are tracked by device and inode,
//! so `0.log` renamed to `0.log.20240501-100000` keeps its fd and offset and is read to
//! its end. A file that was renamed or deleted is released after it has stayed at its end
//! for `discovery.rotate_wait`, because the runtime may write a little more after the
//! rename. A file shorter than its read offset, or whose first bytes changed, was
//! truncated (copytruncate): it is read again from the start.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use lode_push::{Entry, LabelSet};
use notify::Watcher;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::{DiscoveryConfig, PipelineConfig, StartAt};
use crate::format::{FileParser, Record, Stream};
use crate::kubernetes::PodKey;
use crate::metrics::{FormatLabel, Metrics, PathLabel};
use crate::pipeline::{LineVerdict, Pipeline};
use crate::positions::{self, FileId, Identity, Positions, FINGERPRINT_BYTES};

/// Positions of files not seen on disk for this long are forgotten.
const POSITIONS_GC_AGE: Duration = Duration::from_secs(60);
/// Envelope bytes allowed on top of `max_line_size` before a raw line is cut.
const ENVELOPE_SLACK: usize = 64 << 10;

/// Where an entry goes: the tenant and the label-set string.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub tenant: Arc<str>,
    pub labels: Arc<str>,
}

/// One entry read from a file, or a consumed-but-dropped line (`target` is `None`), which
/// still advances the file's checkpoint.
#[derive(Debug)]
pub struct ReadEntry {
    pub file: FileId,
    pub commit_offset: u64,
    pub target: Option<StreamKey>,
    pub entry: Entry,
}

/// What the reader thread needs.
pub struct TailerParts {
    pub discovery: DiscoveryConfig,
    pub stages: PipelineConfig,
    pub tenant_id: String,
    pub tenant_label: Option<String>,
    pub pipeline: Arc<Pipeline>,
    pub positions: Arc<Mutex<Positions>>,
    pub metrics: Arc<Metrics>,
    pub tx: mpsc::Sender<Vec<ReadEntry>>,
    pub shutdown: Arc<AtomicBool>,
    pub ready: Arc<AtomicBool>,
}

enum Hint {
    Scan,
    Data,
}

struct OpenFile {
    id: FileId,
    file: File,
    path: PathBuf,
    path_label: String,
    key: (u64, u64),
    identity: Identity,
    read_offset: u64,
    /// Bytes after the last newline, starting at `read_offset - carry.len()`.
    carry: Vec<u8>,
    /// A line longer than the cap: its head, kept until its newline arrives.
    oversized: Option<(Vec<u8>, u64)>,
    parser: FileParser,
    file_labels: Vec<(String, String)>,
    /// The file's pod, for pod-label enrichment.
    pod: Option<PodKey>,
    streams: [Option<(StreamKey, Arc<LabelSet>)>; 3],
    rotated: bool,
    /// Since when the file is renamed to a rotated name or gone from disk.
    retiring_since: Option<Instant>,
    at_eof: bool,
}

/// The reader thread's state.
pub struct Tailer {
    parts: TailerParts,
    open: Vec<OpenFile>,
    /// Released files still on disk: key → (id, offset read).
    released: HashMap<(u64, u64), (FileId, u64)>,
    first_scan: bool,
    buf_entries: Vec<ReadEntry>,
    records: Vec<Record>,
    /// Generation of the pod-label map the open files' stream labels were built from.
    pod_labels_generation: Option<u64>,
}

fn is_rotated_candidate(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    ![".gz", ".tmp", ".zip", ".bz2", ".xz", ".zst", ".lz4"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// The directory a glob is rooted at: its leading components without metacharacters.
fn glob_root(pattern: &str) -> PathBuf {
    let mut root = PathBuf::new();
    for c in Path::new(pattern).components() {
        let s = c.as_os_str().to_string_lossy();
        if s.contains(['*', '?', '[', '{']) {
            break;
        }
        root.push(c);
    }
    root
}

impl Tailer {
    pub fn new(parts: TailerParts) -> Self {
        Tailer {
            parts,
            open: Vec::new(),
            released: HashMap::new(),
            first_scan: true,
            buf_entries: Vec::new(),
            records: Vec::new(),
            pod_labels_generation: None,
        }
    }

    /// Runs until shutdown is requested or the client goes away.
    pub fn run(mut self) {
        let (hint_tx, hint_rx) = std_mpsc::sync_channel::<Hint>(1024);
        let metrics = self.parts.metrics.clone();
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let hint = match ev {
                Ok(e) => match e.kind {
                    notify::EventKind::Modify(notify::event::ModifyKind::Data(_)) => Hint::Data,
                    notify::EventKind::Access(_) => return,
                    _ => Hint::Scan,
                },
                Err(_) => {
                    metrics.watch_errors.inc();
                    Hint::Scan
                }
            };
            // A full channel already holds a wake-up; dropping this one loses nothing.
            let _ = hint_tx.try_send(hint);
        });
        let mut watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, "inotify unavailable; relying on rescans and polling");
                self.parts.metrics.watch_errors.inc();
                None
            }
        };
        let mut watched: HashSet<PathBuf> = HashSet::new();
        let mut next_scan = Instant::now();
        let mut scan_requested = true;
        while !self.parts.shutdown.load(Ordering::Relaxed) {
            if scan_requested || Instant::now() >= next_scan {
                if let Some(w) = watcher.as_mut() {
                    for g in &self.parts.discovery.globs {
                        let root = glob_root(g);
                        if !watched.contains(&root) && root.is_dir() {
                            match w.watch(&root, notify::RecursiveMode::Recursive) {
                                Ok(()) => {
                                    watched.insert(root);
                                }
                                Err(e) => {
                                    self.parts.metrics.watch_errors.inc();
                                    debug!(dir = %root.display(), error = %e, "cannot watch directory");
                                }
                            }
                        }
                    }
                }
                self.scan();
                next_scan = Instant::now() + self.parts.discovery.rescan_interval;
                scan_requested = false;
            }
            self.refresh_pod_labels();
            let mut progressed = false;
            for i in 0..self.open.len() {
                match self.read_turn(i) {
                    Ok(p) => progressed |= p,
                    Err(Closed) => return,
                }
            }
            if self.release_drained().is_err() {
                return;
            }
            if !progressed {
                let wait = self
                    .parts
                    .discovery
                    .poll_interval
                    .min(next_scan.saturating_duration_since(Instant::now()));
                match hint_rx.recv_timeout(wait) {
                    Ok(Hint::Scan) => scan_requested = true,
                    Ok(Hint::Data) | Err(_) => {}
                }
                while let Ok(h) = hint_rx.try_recv() {
                    if matches!(h, Hint::Scan) {
                        scan_requested = true;
                    }
                }
            }
        }
        debug!("reader stopped");
    }

    fn start_offset(&self, size: u64) -> u64 {
        if self.first_scan && self.parts.discovery.start_at == StartAt::End {
            size
        } else {
            0
        }
    }

    fn scan(&mut self) {
        self.parts.metrics.rescans.inc();
        let mut candidates: Vec<(PathBuf, bool)> = Vec::new();
        for g in &self.parts.discovery.globs {
            for (pattern, rotated) in [(g.clone(), false), (format!("{g}.*"), true)] {
                let Ok(paths) = glob::glob(&pattern) else {
                    continue;
                };
                for p in paths.flatten() {
                    if !rotated || is_rotated_candidate(&p) {
                        candidates.push((p, rotated));
                    }
                }
            }
        }
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut to_open: Vec<(PathBuf, bool, std::fs::Metadata)> = Vec::new();
        for (path, rotated) in candidates {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let key = (meta.dev(), meta.ino());
            if !seen.insert(key) {
                continue;
            }
            if let Some(f) = self.open.iter_mut().find(|f| f.key == key) {
                if f.path != path {
                    debug!(from = %f.path.display(), to = %path.display(), "file renamed");
                    if let Ok(mut pos) = self.parts.positions.lock() {
                        pos.set_path(f.id, &path);
                    }
                    f.path = path;
                }
                if rotated && !f.rotated {
                    f.retiring_since = Some(Instant::now());
                }
                f.rotated = rotated;
                if !rotated {
                    f.retiring_since = None;
                }
                continue;
            }
            if let Some(&(id, read)) = self.released.get(&key) {
                if meta.len() == read {
                    if let Ok(mut pos) = self.parts.positions.lock() {
                        pos.touch(id);
                    }
                    continue;
                }
            }
            to_open.push((path, rotated, meta));
        }
        // Oldest data first: rotated files before current ones, older before newer.
        to_open.sort_by_key(|(_, rotated, meta)| (!*rotated, meta.modified().ok()));
        let mut waiting = 0;
        for (path, rotated, meta) in to_open {
            if self.open.len() >= self.parts.discovery.max_open_files {
                waiting += 1;
                continue;
            }
            self.open_file(path, rotated, &meta);
        }
        if waiting > 0 {
            warn!(
                waiting,
                limit = self.parts.discovery.max_open_files,
                "files wait to be opened (discovery.max_open_files)"
            );
        }
        self.parts.metrics.files_waiting.set(waiting);
        let now = Instant::now();
        for f in &mut self.open {
            if !seen.contains(&f.key) && f.retiring_since.is_none() {
                debug!(path = %f.path.display(), "file gone from disk; draining");
                f.retiring_since = Some(now);
            }
        }
        self.released.retain(|k, _| seen.contains(k));
        if let Ok(mut pos) = self.parts.positions.lock() {
            for f in &self.open {
                pos.touch(f.id);
            }
            for &(id, _) in self.released.values() {
                pos.touch(id);
            }
            for key in &seen {
                if let Some((id, _, _)) = pos.by_inode(key.0, key.1) {
                    pos.touch(id);
                }
            }
            pos.gc(POSITIONS_GC_AGE);
        }
        // Copytruncate rewrites a file in place: a changed head means new content.
        for i in 0..self.open.len() {
            self.check_rewritten(i);
        }
        self.first_scan = false;
        self.parts.ready.store(true, Ordering::Relaxed);
    }

    fn check_rewritten(&mut self, i: usize) {
        let Some(f) = self.open.get(i) else { return };
        if f.identity.fingerprint_len == 0 {
            return;
        }
        let rewritten = match positions::fingerprint(&f.file, f.identity.fingerprint_len as usize) {
            Ok((len, crc)) => len < f.identity.fingerprint_len || crc != f.identity.fingerprint,
            Err(_) => false,
        };
        if rewritten {
            self.restart_truncated(i);
        }
    }

    fn open_file(&mut self, path: PathBuf, rotated: bool, meta: &std::fs::Metadata) {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                debug!(path = %path.display(), error = %e, "cannot open file");
                return;
            }
        };
        let key = (meta.dev(), meta.ino());
        let size = meta.len();
        let Ok((fp_len, fp)) = positions::fingerprint(&file, FINGERPRINT_BYTES) else {
            return;
        };
        let identity = Identity {
            dev: key.0,
            inode: key.1,
            fingerprint_len: fp_len,
            fingerprint: fp,
        };
        let released = self.released.remove(&key);
        let Ok(mut pos) = self.parts.positions.lock() else {
            return;
        };
        let (id, offset) = match pos.by_inode(key.0, key.1) {
            Some((id, known, committed)) => {
                let same = known.fingerprint_len <= fp_len
                    && positions::fingerprint(&file, known.fingerprint_len as usize)
                        .is_ok_and(|(_, crc)| crc == known.fingerprint);
                if same && size >= committed {
                    let resume = released
                        .filter(|(rid, _)| *rid == id)
                        .map_or(committed, |(_, r)| r);
                    pos.set_path(id, &path);
                    pos.set_fingerprint(id, fp_len, fp);
                    (id, resume)
                } else {
                    info!(path = %path.display(), "file was truncated or replaced; reading from the start");
                    self.parts.metrics.truncations.inc();
                    (pos.insert(path.clone(), identity, 0), 0)
                }
            }
            None => {
                // A rotated name still being written may be a copy (copytruncate) whose
                // first bytes have not landed yet: wait until it has a full fingerprint
                // or has been quiet for rotate_wait.
                let young = meta
                    .modified()
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .is_none_or(|age| age < self.parts.discovery.rotate_wait);
                if rotated && (fp_len as usize) < FINGERPRINT_BYTES && young {
                    debug!(path = %path.display(), "rotated file too short to identify yet");
                    return;
                }
                let copy = (rotated && fp_len as usize == FINGERPRINT_BYTES)
                    .then(|| pos.by_fingerprint(fp, key, &path))
                    .flatten();
                // While the original is still open and unchanged, its reader owns the
                // data; the copy is read only once the original was truncated (or
                // released), from where the original stopped, so nothing is read twice.
                if copy.is_some_and(|(cid, _)| self.open.iter().any(|f| f.id == cid)) {
                    debug!(path = %path.display(), "copy of a file still being read; waiting for its truncation");
                    return;
                }
                match copy.map(|(_, off)| off) {
                    Some(off) => {
                        let off = off.min(size);
                        info!(path = %path.display(), offset = off, "file is a copy of a known file; resuming where the original was");
                        (pos.insert(path.clone(), identity, off), off)
                    }
                    None => {
                        let off = self.start_offset(size);
                        (pos.insert(path.clone(), identity, off), off)
                    }
                }
            }
        };
        drop(pos);
        if rotated && offset >= size {
            self.released.insert(key, (id, offset));
            return;
        }
        let mut file = file;
        if file.seek(SeekFrom::Start(offset)).is_err() {
            return;
        }
        debug!(path = %path.display(), offset, "tailing file");
        let pipeline = &self.parts.pipeline;
        let file_labels = pipeline.file_labels(&path);
        let pod = crate::pipeline::pod_of_path(&path);
        let mut f = OpenFile {
            id,
            file,
            path_label: path.display().to_string(),
            path,
            key,
            identity,
            read_offset: offset,
            carry: Vec::new(),
            oversized: None,
            parser: FileParser::new(
                self.parts.stages.max_line_size,
                self.parts.stages.max_line_size_truncate,
            ),
            file_labels,
            pod,
            streams: [None, None, None],
            rotated,
            retiring_since: rotated.then(Instant::now),
            at_eof: false,
        };
        self.fill_stream_keys(&mut f);
        self.parts.metrics.files_opened.inc();
        self.open.push(f);
        self.parts.metrics.open_files.set(self.open.len() as i64);
    }

    fn stream_key(
        &self,
        file_labels: &[(String, String)],
        pod: Option<&PodKey>,
        stream: Option<Stream>,
    ) -> Option<(StreamKey, Arc<LabelSet>)> {
        let labels = self
            .parts
            .pipeline
            .pod_stream_labels(pod, file_labels, stream)?;
        Some((self.key_for(&labels), labels))
    }

    fn key_for(&self, labels: &LabelSet) -> StreamKey {
        let tenant = self
            .parts
            .tenant_label
            .as_deref()
            .and_then(|l| labels.get(l))
            .unwrap_or(&self.parts.tenant_id);
        StreamKey {
            tenant: Arc::from(tenant),
            labels: Arc::from(labels.to_string()),
        }
    }

    /// Rebuilds the stream labels of open files after the pod-label map changed, so a
    /// pod listed after its files were opened gets its labels from then on.
    fn refresh_pod_labels(&mut self) {
        let current = self.parts.pipeline.pod_labels_generation();
        if current == self.pod_labels_generation {
            return;
        }
        self.pod_labels_generation = current;
        let mut open = std::mem::take(&mut self.open);
        for f in open.iter_mut().filter(|f| f.pod.is_some()) {
            self.fill_stream_keys(f);
        }
        self.open = open;
    }

    /// Computes a file's stream keys: stdout, stderr, and lines that carry no stream.
    fn fill_stream_keys(&self, f: &mut OpenFile) {
        for (slot, stream) in [Some(Stream::Stdout), Some(Stream::Stderr), None]
            .into_iter()
            .enumerate()
        {
            if let Some(s) = f.streams.get_mut(slot) {
                *s = self.stream_key(&f.file_labels, f.pod.as_ref(), stream);
            }
        }
    }

    fn restart_truncated(&mut self, i: usize) {
        let Some(f) = self.open.get_mut(i) else {
            return;
        };
        info!(path = %f.path.display(), read = f.read_offset, "file truncated; reading from the start");
        self.parts.metrics.truncations.inc();
        let (len, crc) = positions::fingerprint(&f.file, FINGERPRINT_BYTES).unwrap_or((0, 0));
        f.identity.fingerprint_len = len;
        f.identity.fingerprint = crc;
        if let Ok(mut pos) = self.parts.positions.lock() {
            pos.retire(f.id, f.read_offset);
            f.id = pos.insert(f.path.clone(), f.identity, 0);
        }
        f.read_offset = 0;
        f.carry.clear();
        f.oversized = None;
        f.parser.reset();
        let _ = f.file.seek(SeekFrom::Start(0));
    }

    /// Reads one chunk of file `i`; true when bytes were read.
    fn read_turn(&mut self, i: usize) -> Result<bool, Closed> {
        let chunk = self.parts.discovery.read_chunk_bytes;
        let Some(f) = self.open.get_mut(i) else {
            return Ok(false);
        };
        let size = match f.file.metadata() {
            Ok(m) => m.len(),
            Err(_) => return Ok(false),
        };
        if size < f.read_offset {
            self.restart_truncated(i);
            return self.read_turn_inner(i, chunk);
        }
        if size == f.read_offset {
            f.at_eof = true;
            self.parts
                .metrics
                .file_lag_bytes
                .get_or_create(&PathLabel {
                    path: f.path_label.clone(),
                })
                .set(0);
            return Ok(false);
        }
        self.read_turn_inner(i, chunk)
    }

    fn read_turn_inner(&mut self, i: usize, chunk: usize) -> Result<bool, Closed> {
        let max_raw = self.parts.stages.max_line_size + ENVELOPE_SLACK;
        let Some(f) = self.open.get_mut(i) else {
            return Ok(false);
        };
        let start_len = f.carry.len();
        f.carry.resize(start_len + chunk, 0);
        let n = match f.file.read(f.carry.get_mut(start_len..).unwrap_or(&mut [])) {
            Ok(n) => n,
            Err(e) => {
                warn!(path = %f.path.display(), error = %e, "read failed");
                0
            }
        };
        f.carry.truncate(start_len + n);
        if n == 0 {
            f.at_eof = true;
            return Ok(false);
        }
        f.at_eof = false;
        let label = PathLabel {
            path: f.path_label.clone(),
        };
        self.parts
            .metrics
            .read_bytes
            .get_or_create(&label)
            .inc_by(n as u64);
        f.read_offset += n as u64;
        if let Ok(m) = f.file.metadata() {
            self.parts
                .metrics
                .file_lag_bytes
                .get_or_create(&label)
                .set(m.len().saturating_sub(f.read_offset) as i64);
        }
        if (f.identity.fingerprint_len as usize) < FINGERPRINT_BYTES
            && f.read_offset > f.identity.fingerprint_len as u64
        {
            if let Ok((len, crc)) = positions::fingerprint(&f.file, FINGERPRINT_BYTES) {
                f.identity.fingerprint_len = len;
                f.identity.fingerprint = crc;
                if let Ok(mut pos) = self.parts.positions.lock() {
                    pos.set_fingerprint(f.id, len, crc);
                }
            }
        }
        let base = f.read_offset - f.carry.len() as u64;
        let mut consumed = 0usize;
        let mut lines = 0u64;
        self.records.clear();
        while let Some(nl) = f
            .carry
            .get(consumed..)
            .and_then(|rest| memchr::memchr(b'\n', rest))
        {
            let line_start = base + consumed as u64;
            let line_end = line_start + nl as u64 + 1;
            let raw = f.carry.get(consumed..consumed + nl).unwrap_or(&[]);
            lines += 1;
            match f.oversized.take() {
                Some((mut head, start)) => {
                    let room = max_raw.saturating_sub(head.len());
                    head.extend_from_slice(raw.get(..room.min(raw.len())).unwrap_or(&[]));
                    f.parser
                        .push_line(&head, start, line_end, &mut self.records);
                }
                None if raw.len() > max_raw => {
                    f.parser.push_line(
                        raw.get(..max_raw).unwrap_or(raw),
                        line_start,
                        line_end,
                        &mut self.records,
                    );
                }
                None => f
                    .parser
                    .push_line(raw, line_start, line_end, &mut self.records),
            }
            consumed += nl + 1;
        }
        f.carry.drain(..consumed);
        // The read buffer grows to read_chunk_bytes; holding that per file would cost
        // 256 KiB x open files, so only the unterminated tail keeps its memory.
        if f.carry.capacity() > 64 << 10 {
            f.carry.shrink_to(f.carry.len().max(4 << 10));
        }
        if f.carry.len() > max_raw {
            // No newline within the cap: keep the head, drop the rest until the newline.
            let start = f.read_offset - f.carry.len() as u64;
            match &mut f.oversized {
                Some((head, _)) => {
                    let room = max_raw.saturating_sub(head.len());
                    head.extend_from_slice(f.carry.get(..room.min(f.carry.len())).unwrap_or(&[]));
                }
                None => f.oversized = Some((f.carry.get(..max_raw).unwrap_or(&[]).to_vec(), start)),
            }
            f.carry.clear();
        }
        self.parts
            .metrics
            .read_lines
            .get_or_create(&label)
            .inc_by(lines);
        self.emit(i)?;
        Ok(true)
    }

    /// Labels `self.records` of file `i` and sends them.
    fn emit(&mut self, i: usize) -> Result<(), Closed> {
        let Some(f) = self.open.get_mut(i) else {
            return Ok(());
        };
        let stats = std::mem::take(&mut f.parser.stats);
        let m = &self.parts.metrics;
        if stats.malformed > 0 {
            let format = f.parser.format().map_or("plain", |f| f.as_str());
            warn!(path = %f.path.display(), lines = stats.malformed, format, "malformed lines shipped verbatim");
            m.malformed_lines
                .get_or_create(&FormatLabel { format })
                .inc_by(stats.malformed);
        }
        if stats.truncated > 0 {
            warn!(path = %f.path.display(), lines = stats.truncated, "lines truncated to pipeline.max_line_size");
            m.truncated_lines.inc_by(stats.truncated);
        }
        if stats.dropped_too_long > 0 {
            warn!(path = %f.path.display(), lines = stats.dropped_too_long, "lines over pipeline.max_line_size dropped");
            m.dropped("line_too_long", stats.dropped_too_long, 0);
        }
        if stats.invalid_utf8 > 0 {
            debug!(path = %f.path.display(), lines = stats.invalid_utf8, "invalid utf-8 replaced");
            m.invalid_utf8_lines.inc_by(stats.invalid_utf8);
        }
        let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        for r in self.records.drain(..) {
            let slot = match r.stream {
                Some(Stream::Stdout) => 0,
                Some(Stream::Stderr) => 1,
                None => 2,
            };
            let mut target = f.streams.get(slot).and_then(|s| s.clone());
            let Some(line) = r.line else {
                self.buf_entries.push(ReadEntry {
                    file: f.id,
                    commit_offset: r.commit_offset,
                    target: None,
                    entry: Entry::default(),
                });
                continue;
            };
            match target
                .as_ref()
                .map(|(_, labels)| self.parts.pipeline.line_verdict(labels, &line))
            {
                None => m.dropped("relabel", 1, line.len() as u64),
                Some(LineVerdict::Keep) => {}
                Some(LineVerdict::Dropped) => {
                    m.dropped("drop_stage", 1, line.len() as u64);
                    target = None;
                }
                Some(LineVerdict::Relabelled(l)) => {
                    let tenant = self
                        .parts
                        .tenant_label
                        .as_deref()
                        .and_then(|t| l.get(t))
                        .unwrap_or(&self.parts.tenant_id);
                    target = Some((
                        StreamKey {
                            tenant: Arc::from(tenant),
                            labels: Arc::from(l.to_string()),
                        },
                        Arc::new(l),
                    ));
                }
            }
            self.buf_entries.push(ReadEntry {
                file: f.id,
                commit_offset: r.commit_offset,
                target: target.map(|(k, _)| k),
                entry: Entry {
                    timestamp_ns: r.timestamp_ns.unwrap_or(now_ns),
                    line,
                    structured_metadata: Default::default(),
                },
            });
        }
        if self.buf_entries.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.buf_entries);
        self.parts.tx.blocking_send(batch).map_err(|_| Closed)
    }

    /// Closes renamed or deleted files that stayed at their end for `rotate_wait`.
    fn release_drained(&mut self) -> Result<(), Closed> {
        let wait = self.parts.discovery.rotate_wait;
        let mut i = 0;
        while i < self.open.len() {
            let done = self
                .open
                .get(i)
                .is_some_and(|f| f.at_eof && f.retiring_since.is_some_and(|t| t.elapsed() >= wait));
            if !done {
                i += 1;
                continue;
            }
            // Whatever is left unterminated is the file's last line: it will never end.
            if let Some(f) = self.open.get_mut(i) {
                let end = f.read_offset;
                let start = end - f.carry.len() as u64;
                let carry = std::mem::take(&mut f.carry);
                if let Some((head, s)) = f.oversized.take() {
                    f.parser.push_line(&head, s, end, &mut self.records);
                } else if !carry.is_empty() {
                    f.parser.push_line(&carry, start, end, &mut self.records);
                }
                f.parser.flush(end, &mut self.records);
            }
            self.emit(i)?;
            let f = self.open.swap_remove(i);
            debug!(path = %f.path.display(), offset = f.read_offset, "released drained file");
            self.parts.metrics.files_released.inc();
            self.parts.metrics.forget_file(&f.path_label);
            if f.rotated {
                self.released.insert(f.key, (f.id, f.read_offset));
            }
        }
        self.parts.metrics.open_files.set(self.open.len() as i64);
        Ok(())
    }
}

/// The client went away; the reader stops.
#[derive(Debug)]
struct Closed;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_roots_stop_at_the_first_wildcard() {
        assert_eq!(
            glob_root("/var/log/pods/*/*/*.log"),
            PathBuf::from("/var/log/pods")
        );
        assert_eq!(
            glob_root("/var/lib/docker/containers/*/*-json.log"),
            PathBuf::from("/var/lib/docker/containers")
        );
    }

    #[test]
    fn compressed_and_temporary_rotations_are_not_tailed() {
        assert!(is_rotated_candidate(Path::new("/p/0.log.20240501-100000")));
        assert!(is_rotated_candidate(Path::new("/d/x-json.log.1")));
        assert!(!is_rotated_candidate(Path::new(
            "/p/0.log.20240501-100000.gz"
        )));
        assert!(!is_rotated_candidate(Path::new(
            "/p/0.log.20240501-100000.tmp"
        )));
    }
}
