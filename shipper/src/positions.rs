//! Positions: per file, the offset up to which every entry was acknowledged by the server.
//!
//! Owns file identity (device, inode, and a CRC32C fingerprint of the first bytes), the
//! in-memory table of tracked files, and the positions file on disk. It does not decide
//! when files are opened (`tailer`) nor when offsets advance (`client` commits them after
//! the server answers 2xx).
//!
//! A file is the same file when its device and inode match *and* its first
//! `fingerprint_len` bytes still hash to the stored fingerprint; an inode reused by a new
//! file, or a file truncated and rewritten, fails that check and is read from the start.
//! Copies (logrotate `copytruncate`) have a new inode but the same fingerprint and resume
//! where the original was.
//!
//! On-disk format (JSON so operators can read it; the `format` and `version` fields are
//! the magic and version):
//!
//! ```text
//! {"format":"lode-shipper-positions","version":1,
//!  "files":[{"path":"/var/log/pods/ns_pod_uid/c/0.log","dev":2049,"inode":1234,
//!            "fingerprint_len":256,"fingerprint_crc32c":3735928559,"offset":40960}]}
//! ```
//!
//! Writes go to `<file>.tmp`, then the current file becomes `<file>.prev` and the temp
//! file is renamed over it, so a crash at any point leaves one complete generation. A
//! file that does not parse is reported and the previous generation is tried; if neither
//! parses the shipper starts fresh instead of crash-looping.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Bytes hashed for a file's fingerprint (fewer while the file is shorter).
pub const FINGERPRINT_BYTES: usize = 256;
const FORMAT: &str = "lode-shipper-positions";
const VERSION: u32 = 1;

/// Why the positions file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write positions file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read positions file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt positions file {path}: {why}")]
    Corrupt { path: PathBuf, why: String },
}

/// An internal id for one incarnation of a file; never reused within a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(u64);

/// What identifies a file across renames and restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub dev: u64,
    pub inode: u64,
    pub fingerprint_len: u32,
    #[serde(rename = "fingerprint_crc32c")]
    pub fingerprint: u32,
}

/// CRC32C of the first `len` bytes of `file` (fewer if it is shorter): `(len, crc)`.
pub fn fingerprint(file: &File, len: usize) -> std::io::Result<(u32, u32)> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let Some(dst) = buf.get_mut(got..) else { break };
        let n = file.read_at(dst, got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let head = buf.get(..got).unwrap_or(&[]);
    Ok((got as u32, crc32c::crc32c(head)))
}

#[derive(Debug, Clone)]
struct Tracked {
    path: PathBuf,
    identity: Identity,
    offset: u64,
    /// For a retired incarnation: how far it had been read, so a copy resumes there.
    read_offset: u64,
    last_seen: Instant,
    retired: bool,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    format: String,
    version: u32,
    files: Vec<OnDiskFile>,
}

#[derive(Serialize, Deserialize)]
struct OnDiskFile {
    path: PathBuf,
    #[serde(flatten)]
    identity: Identity,
    offset: u64,
}

/// How loading went, for the startup log line and the `positions_corrupt` metric.
#[derive(Debug)]
pub enum LoadOutcome {
    Missing,
    Loaded {
        files: usize,
    },
    /// The current generation was unreadable; the previous one was used.
    RecoveredPrevious {
        error: Error,
        files: usize,
    },
    /// Nothing usable: starting without checkpoints.
    Corrupt {
        error: Error,
    },
}

/// The table of tracked files and their committed offsets.
#[derive(Debug)]
pub struct Positions {
    path: PathBuf,
    files: HashMap<FileId, Tracked>,
    by_inode: HashMap<(u64, u64), FileId>,
    next_id: u64,
    dirty: bool,
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn parse(path: &Path) -> Result<Option<Vec<OnDiskFile>>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let disk: OnDisk = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    if disk.format != FORMAT || disk.version != VERSION {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            why: format!(
                "format {:?} version {} (want {FORMAT:?} version {VERSION})",
                disk.format, disk.version
            ),
        });
    }
    Ok(Some(disk.files))
}

impl Positions {
    /// An empty table that will be saved at `path`.
    pub fn empty(path: &Path) -> Self {
        Positions {
            path: path.to_path_buf(),
            files: HashMap::new(),
            by_inode: HashMap::new(),
            next_id: 1,
            dirty: false,
        }
    }

    /// Loads `path`, falling back to `<path>.prev`, else starting empty. Never fails:
    /// a shipper that cannot read its checkpoints must still ship.
    pub fn load(path: &Path) -> (Self, LoadOutcome) {
        let mut p = Positions::empty(path);
        let (files, outcome) = match parse(path) {
            Ok(Some(f)) => {
                let n = f.len();
                (f, LoadOutcome::Loaded { files: n })
            }
            Ok(None) => match parse(&sibling(path, ".prev")) {
                Ok(Some(f)) => {
                    let n = f.len();
                    (f, LoadOutcome::Loaded { files: n })
                }
                _ => (Vec::new(), LoadOutcome::Missing),
            },
            Err(error) => match parse(&sibling(path, ".prev")) {
                Ok(Some(f)) => {
                    let n = f.len();
                    (f, LoadOutcome::RecoveredPrevious { error, files: n })
                }
                _ => (Vec::new(), LoadOutcome::Corrupt { error }),
            },
        };
        for f in files {
            p.insert(f.path, f.identity, f.offset);
        }
        p.dirty = false;
        (p, outcome)
    }

    /// The live entry for a device and inode: `(id, identity, committed offset)`.
    pub fn by_inode(&self, dev: u64, inode: u64) -> Option<(FileId, Identity, u64)> {
        let id = *self.by_inode.get(&(dev, inode))?;
        let t = self.files.get(&id)?;
        Some((id, t.identity, t.offset))
    }

    /// A tracked file (live or retired) that `path` (device and inode `except`) is a
    /// copy of: same full-length fingerprint `crc`, same directory, and `path` is the
    /// tracked name plus a suffix (`0.log` → `0.log.1`), as logrotate's copytruncate
    /// makes it. Files elsewhere with the same first bytes are different files.
    /// Returns `(id, furthest offset read or committed)`.
    pub fn by_fingerprint(
        &self,
        crc: u32,
        except: (u64, u64),
        path: &Path,
    ) -> Option<(FileId, u64)> {
        let name = path.file_name()?.to_str()?;
        self.files
            .iter()
            .filter(|(_, t)| {
                t.identity.fingerprint_len as usize == FINGERPRINT_BYTES
                    && t.identity.fingerprint == crc
                    && (t.identity.dev, t.identity.inode) != except
                    && t.path.parent() == path.parent()
                    && t.path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|orig| name.strip_prefix(orig))
                        .is_some_and(|rest| rest.starts_with('.'))
            })
            .map(|(id, t)| (*id, t.offset.max(t.read_offset)))
            .max_by_key(|(_, off)| *off)
    }

    /// Tracks a new file incarnation at `offset`; an older entry with the same inode is
    /// retired (kept a while for copy detection, no longer saved).
    pub fn insert(&mut self, path: PathBuf, identity: Identity, offset: u64) -> FileId {
        let id = FileId(self.next_id);
        self.next_id += 1;
        if let Some(old) = self.by_inode.insert((identity.dev, identity.inode), id) {
            if let Some(t) = self.files.get_mut(&old) {
                t.retired = true;
            }
        }
        self.files.insert(
            id,
            Tracked {
                path,
                identity,
                offset,
                read_offset: offset,
                last_seen: Instant::now(),
                retired: false,
            },
        );
        self.dirty = true;
        id
    }

    /// Retires `id` (its file was truncated), remembering how far it had been read.
    pub fn retire(&mut self, id: FileId, read_offset: u64) {
        if let Some(t) = self.files.get_mut(&id) {
            t.retired = true;
            t.read_offset = read_offset;
            if self.by_inode.get(&(t.identity.dev, t.identity.inode)) == Some(&id) {
                self.by_inode.remove(&(t.identity.dev, t.identity.inode));
            }
            self.dirty = true;
        }
    }

    pub fn set_path(&mut self, id: FileId, path: &Path) {
        if let Some(t) = self.files.get_mut(&id) {
            if t.path != path {
                t.path = path.to_path_buf();
                self.dirty = true;
            }
        }
    }

    pub fn set_fingerprint(&mut self, id: FileId, len: u32, crc: u32) {
        if let Some(t) = self.files.get_mut(&id) {
            t.identity.fingerprint_len = len;
            t.identity.fingerprint = crc;
            self.dirty = true;
        }
    }

    /// Records that everything before `offset` of `id` was acknowledged. Offsets of a
    /// retired or forgotten incarnation are ignored.
    pub fn commit(&mut self, id: FileId, offset: u64) {
        if let Some(t) = self.files.get_mut(&id) {
            if offset > t.offset {
                t.offset = offset;
                self.dirty = true;
            }
        }
    }

    /// The committed offset of `id`.
    pub fn offset(&self, id: FileId) -> Option<u64> {
        self.files.get(&id).map(|t| t.offset)
    }

    /// Marks `id` as still present (seen by a scan, or open).
    pub fn touch(&mut self, id: FileId) {
        if let Some(t) = self.files.get_mut(&id) {
            t.last_seen = Instant::now();
        }
    }

    /// Forgets files not seen for `max_age` (deleted, or rotated away and compressed).
    pub fn gc(&mut self, max_age: Duration) -> usize {
        let now = Instant::now();
        let gone: Vec<FileId> = self
            .files
            .iter()
            .filter(|(_, t)| now.duration_since(t.last_seen) > max_age)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            if let Some(t) = self.files.remove(id) {
                let key = (t.identity.dev, t.identity.inode);
                if self.by_inode.get(&key) == Some(id) {
                    self.by_inode.remove(&key);
                }
            }
        }
        if !gone.is_empty() {
            self.dirty = true;
        }
        gone.len()
    }

    /// Live entries: `(path, committed offset)`, for tests and debugging.
    pub fn entries(&self) -> Vec<(PathBuf, u64)> {
        let mut v: Vec<_> = self
            .files
            .values()
            .filter(|t| !t.retired)
            .map(|t| (t.path.clone(), t.offset))
            .collect();
        v.sort();
        v
    }

    /// Serializes the live entries if anything changed since the last call.
    pub fn snapshot_if_dirty(&mut self) -> Option<Vec<u8>> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        let mut files: Vec<OnDiskFile> = self
            .files
            .values()
            .filter(|t| !t.retired)
            .map(|t| OnDiskFile {
                path: t.path.clone(),
                identity: t.identity,
                offset: t.offset,
            })
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        serde_json::to_vec(&OnDisk {
            format: FORMAT.into(),
            version: VERSION,
            files,
        })
        .ok()
    }

    /// Forces the next snapshot (after a failed write).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Atomically replaces the positions file at `path` with `bytes`, keeping the previous
/// generation as `<path>.prev`. `fsync` makes it survive power loss, not just a crash.
pub fn write_file(path: &Path, bytes: &[u8], fsync: bool) -> Result<(), Error> {
    let err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = sibling(path, ".tmp");
    {
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(bytes).map_err(err)?;
        if fsync {
            f.sync_all().map_err(err)?;
        }
    }
    match std::fs::rename(path, sibling(path, ".prev")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    if fsync {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(inode: u64, fp: u32) -> Identity {
        Identity {
            dev: 1,
            inode,
            fingerprint_len: FINGERPRINT_BYTES as u32,
            fingerprint: fp,
        }
    }

    #[test]
    fn committed_offsets_survive_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("positions.json");
        let mut p = Positions::empty(&path);
        let id = p.insert("/a.log".into(), ident(7, 42), 0);
        p.commit(id, 100);
        p.commit(id, 50);
        write_file(&path, &p.snapshot_if_dirty().unwrap(), true).unwrap();
        assert!(
            p.snapshot_if_dirty().is_none(),
            "nothing changed since the save"
        );

        let (q, outcome) = Positions::load(&path);
        assert!(
            matches!(outcome, LoadOutcome::Loaded { files: 1 }),
            "{outcome:?}"
        );
        let (_, identity, offset) = q.by_inode(1, 7).unwrap();
        assert_eq!(identity, ident(7, 42));
        assert_eq!(offset, 100);
    }

    #[test]
    fn a_corrupt_file_falls_back_to_the_previous_generation_then_to_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("positions.json");
        let mut p = Positions::empty(&path);
        let id = p.insert("/a.log".into(), ident(7, 42), 10);
        write_file(&path, &p.snapshot_if_dirty().unwrap(), false).unwrap();
        p.commit(id, 20);
        write_file(&path, &p.snapshot_if_dirty().unwrap(), false).unwrap();
        std::fs::write(&path, b"\0\0\0garbage").unwrap();

        let (q, outcome) = Positions::load(&path);
        assert!(
            matches!(outcome, LoadOutcome::RecoveredPrevious { files: 1, .. }),
            "{outcome:?}"
        );
        assert_eq!(q.by_inode(1, 7).unwrap().2, 10);

        std::fs::write(sibling(&path, ".prev"), b"{}").unwrap();
        let (q, outcome) = Positions::load(&path);
        let LoadOutcome::Corrupt { error } = outcome else {
            panic!("{outcome:?}")
        };
        assert!(error.to_string().contains("positions.json"), "{error}");
        assert!(q.entries().is_empty());
    }

    #[test]
    fn a_reused_inode_retires_the_old_entry_and_ignores_its_late_commits() {
        let mut p = Positions::empty(Path::new("/x"));
        let old = p.insert("/a.log".into(), ident(7, 1), 500);
        let new = p.insert("/b.log".into(), ident(7, 2), 0);
        p.commit(old, 900);
        assert_eq!(p.by_inode(1, 7).unwrap(), (new, ident(7, 2), 0));
        assert_eq!(p.entries(), vec![(PathBuf::from("/b.log"), 0)]);
    }

    #[test]
    fn a_copy_is_found_by_fingerprint_with_the_furthest_offset() {
        let mut p = Positions::empty(Path::new("/x"));
        let id = p.insert("/a.log".into(), ident(7, 99), 0);
        p.commit(id, 300);
        p.retire(id, 400);
        let copy = Path::new("/a.log.1");
        assert_eq!(p.by_fingerprint(99, (1, 8), copy), Some((id, 400)));
        assert_eq!(p.by_fingerprint(98, (1, 8), copy), None);
        assert_eq!(p.by_fingerprint(99, (1, 7), copy), None);
        // Same first bytes but another file (another pod, or a name that is not the
        // original's plus a suffix): not a copy.
        assert_eq!(p.by_fingerprint(99, (1, 8), Path::new("/b.log")), None);
        assert_eq!(p.by_fingerprint(99, (1, 8), Path::new("/d/a.log.1")), None);
        assert_eq!(p.by_fingerprint(99, (1, 8), Path::new("/a.logx")), None);
    }

    #[test]
    fn gc_forgets_files_not_seen_recently() {
        let mut p = Positions::empty(Path::new("/x"));
        let a = p.insert("/a.log".into(), ident(7, 1), 0);
        std::thread::sleep(Duration::from_millis(20));
        let b = p.insert("/b.log".into(), ident(8, 1), 0);
        p.touch(b);
        assert_eq!(p.gc(Duration::from_millis(10)), 1);
        assert!(p.offset(a).is_none());
        assert!(p.offset(b).is_some());
    }

    #[test]
    fn fingerprint_hashes_at_most_the_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"short").unwrap();
        let f = File::open(&path).unwrap();
        assert_eq!(
            fingerprint(&f, FINGERPRINT_BYTES).unwrap(),
            (5, crc32c::crc32c(b"short"))
        );
        assert_eq!(fingerprint(&f, 2).unwrap(), (2, crc32c::crc32c(b"sh")));
    }
}
