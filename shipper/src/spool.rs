//! The optional on-disk buffer (`client.disk_buffer`): batches the server could not take
//! are written here, so their file offsets can be committed and a long outage neither
//! stops reading nor loses lines when the container logs rotate away meanwhile.
//!
//! Owns the spool directory: one file per batch, written atomically (temp file, fsync,
//! rename), its total size bounded by `max_size_bytes` (oldest batches deleted and counted
//! as `buffer_full` when a new one does not fit), and reading back batches oldest first,
//! also after a restart. It does not send anything (the `client` drains it) nor decide
//! when a batch is spooled.
//!
//! File layout (`<seq:020>.batch`; the request body is what is sent as is):
//!
//! ```text
//! +----------+---------+--------------+--------+---------+------------+----------------+
//! | "LODESPL"| ver u8  | tenant len   | tenant | entries | body crc32c| body           |
//! | 7 bytes  | = 1     | u32 LE       | bytes  | u64 LE  | u32 LE     | protobuf+snappy|
//! +----------+---------+--------------+--------+---------+------------+----------------+
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const MAGIC: &[u8; 7] = b"LODESPL";
const VERSION: u8 = 1;
/// Tenant ids longer than this are not valid anywhere; a longer field means corruption.
const MAX_TENANT: usize = 1024;

/// Why the spool could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot use client.disk_buffer.path {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt spooled batch {path}: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error(
        "batch of {size} bytes does not fit client.disk_buffer.max_size_bytes = {max}; raise it"
    )]
    TooLarge { size: u64, max: u64 },
}

/// A batch waiting on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spooled {
    pub seq: u64,
    pub tenant: String,
    pub entries: u64,
    pub size: u64,
}

/// Batches deleted to make room: `(entries, bytes on disk)`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    pub batches: u64,
    pub entries: u64,
}

#[derive(Debug, Default)]
struct State {
    files: BTreeMap<u64, Spooled>,
    total: u64,
    next_seq: u64,
}

/// The spool directory and its index.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn header(tenant: &str, entries: u64, body: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(24 + tenant.len());
    h.extend_from_slice(MAGIC);
    h.push(VERSION);
    h.extend_from_slice(&(tenant.len() as u32).to_le_bytes());
    h.extend_from_slice(tenant.as_bytes());
    h.extend_from_slice(&entries.to_le_bytes());
    h.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    h
}

/// Splits a spooled file into `(tenant, entries, body)`, checking magic, version and CRC.
fn decode(path: &Path, bytes: &[u8]) -> Result<(String, u64, Vec<u8>), Error> {
    let corrupt = |why: &str| Error::Corrupt {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| corrupt("bad magic"))?;
    let (&version, rest) = rest.split_first().ok_or_else(|| corrupt("truncated"))?;
    if version != VERSION {
        return Err(corrupt(&format!("version {version} (want {VERSION})")));
    }
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt("truncated"))?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > MAX_TENANT {
        return Err(corrupt(&format!("tenant length {len}")));
    }
    let tenant = rest.get(..len).ok_or_else(|| corrupt("truncated"))?;
    let tenant = String::from_utf8(tenant.to_vec()).map_err(|_| corrupt("tenant not utf-8"))?;
    let rest = rest.get(len..).unwrap_or(&[]);
    let (entries, rest) = rest
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("truncated"))?;
    let (crc, body) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt("truncated"))?;
    if crc32c::crc32c(body) != u32::from_le_bytes(*crc) {
        return Err(corrupt("checksum mismatch"));
    }
    Ok((tenant, u64::from_le_bytes(*entries), body.to_vec()))
}

impl Spool {
    /// Opens (creating) the directory and indexes the batches left by a previous run.
    /// Unreadable batches are deleted and returned, so the caller can count them.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Self, Vec<Error>), Error> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut state = State::default();
        let mut bad = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let path = e.map_err(io_err(dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".tmp") {
                // A write that never completed; its batch was not committed.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(seq) = name
                .strip_suffix(".batch")
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            state.next_seq = state.next_seq.max(seq + 1);
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            match decode(&path, &bytes) {
                Ok((tenant, entries, _)) => {
                    state.total += bytes.len() as u64;
                    state.files.insert(
                        seq,
                        Spooled {
                            seq,
                            tenant,
                            entries,
                            size: bytes.len() as u64,
                        },
                    );
                }
                Err(err) => {
                    let _ = std::fs::remove_file(&path);
                    bad.push(err);
                }
            }
        }
        Ok((
            Spool {
                dir: dir.to_path_buf(),
                max_bytes,
                state: Mutex::new(state),
            },
            bad,
        ))
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.batch"))
    }

    /// Writes a batch durably; once this returns Ok the batch survives a crash. Older
    /// batches are deleted first when it would not fit.
    pub fn push(&self, tenant: &str, entries: u64, body: &[u8]) -> Result<Evicted, Error> {
        let head = header(tenant, entries, body);
        let size = (head.len() + body.len()) as u64;
        if size > self.max_bytes {
            return Err(Error::TooLarge {
                size,
                max: self.max_bytes,
            });
        }
        let mut evicted = Evicted::default();
        let seq = {
            let mut st = self.state.lock().map_err(|_| Error::Corrupt {
                path: self.dir.clone(),
                why: "spool index poisoned".into(),
            })?;
            while st.total + size > self.max_bytes {
                let Some((&old, _)) = st.files.iter().next() else {
                    break;
                };
                if let Some(f) = st.files.remove(&old) {
                    st.total = st.total.saturating_sub(f.size);
                    let _ = std::fs::remove_file(self.path(old));
                    evicted.batches += 1;
                    evicted.entries += f.entries;
                }
            }
            let seq = st.next_seq;
            st.next_seq += 1;
            // Reserve the room before writing, so concurrent writers stay in bounds.
            st.total += size;
            seq
        };
        let path = self.path(seq);
        let tmp = path.with_extension("tmp");
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&head)?;
            f.write_all(body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        let mut st = self.state.lock().map_err(|_| Error::Corrupt {
            path: self.dir.clone(),
            why: "spool index poisoned".into(),
        })?;
        if let Err(source) = written {
            st.total = st.total.saturating_sub(size);
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::Io { path, source });
        }
        st.files.insert(
            seq,
            Spooled {
                seq,
                tenant: tenant.to_string(),
                entries,
                size,
            },
        );
        Ok(evicted)
    }

    /// The oldest batch waiting, if any.
    pub fn oldest(&self) -> Option<Spooled> {
        let st = self.state.lock().ok()?;
        st.files.values().next().cloned()
    }

    /// Whether batches of `tenant` are waiting (new ones must queue behind them).
    pub fn has_tenant(&self, tenant: &str) -> bool {
        self.state
            .lock()
            .is_ok_and(|st| st.files.values().any(|f| f.tenant == tenant))
    }

    /// Reads a batch's body back. A corrupt batch is removed and reported.
    pub fn read(&self, s: &Spooled) -> Result<Vec<u8>, Error> {
        let path = self.path(s.seq);
        let bytes = std::fs::read(&path).map_err(io_err(&path));
        match bytes.and_then(|b| decode(&path, &b)) {
            Ok((_, _, body)) => Ok(body),
            Err(e) => {
                self.remove(s.seq);
                Err(e)
            }
        }
    }

    /// Deletes a batch (sent, rejected, or unreadable). Returns false when it was already
    /// gone (evicted to make room).
    pub fn remove(&self, seq: u64) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        let Some(f) = st.files.remove(&seq) else {
            return false;
        };
        st.total = st.total.saturating_sub(f.size);
        let _ = std::fs::remove_file(self.path(seq));
        true
    }

    /// `(batches, bytes)` waiting.
    pub fn usage(&self) -> (u64, u64) {
        self.state
            .lock()
            .map_or((0, 0), |st| (st.files.len() as u64, st.total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_survive_a_reopen_in_order_and_corrupt_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (s, bad) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(bad.is_empty());
        s.push("a", 3, b"first").unwrap();
        s.push("", 1, b"second").unwrap();
        s.push("b", 2, b"third").unwrap();
        drop(s);
        // Flip a body byte of the third batch and leave a torn temp file behind.
        let third = dir.path().join(format!("{:020}.batch", 2));
        let mut bytes = std::fs::read(&third).unwrap();
        *bytes.last_mut().unwrap() ^= 0xff;
        std::fs::write(&third, bytes).unwrap();
        std::fs::write(dir.path().join("00000000000000000003.tmp"), b"torn").unwrap();

        let (s, bad) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(bad[0].to_string().contains("checksum"), "{}", bad[0]);
        let first = s.oldest().unwrap();
        assert_eq!((first.tenant.as_str(), first.entries), ("a", 3));
        assert_eq!(s.read(&first).unwrap(), b"first");
        assert!(s.remove(first.seq));
        let second = s.oldest().unwrap();
        assert_eq!(s.read(&second).unwrap(), b"second");
        assert!(s.has_tenant(""));
        assert!(!s.has_tenant("b"));
        s.remove(second.seq);
        assert_eq!(s.usage(), (0, 0));
        // New batches never reuse a sequence number of an old one.
        s.push("c", 1, b"x").unwrap();
        assert!(s.oldest().unwrap().seq >= 3);
    }

    #[test]
    fn a_full_spool_evicts_the_oldest_batches_and_counts_their_entries() {
        let dir = tempfile::tempdir().unwrap();
        let one = (header("t", 5, &[0; 100]).len() + 100) as u64;
        let (s, _) = Spool::open(dir.path(), one * 2).unwrap();
        assert_eq!(s.push("t", 5, &[0; 100]).unwrap(), Evicted::default());
        assert_eq!(s.push("t", 6, &[1; 100]).unwrap(), Evicted::default());
        assert_eq!(
            s.push("t", 7, &[2; 100]).unwrap(),
            Evicted {
                batches: 1,
                entries: 5
            }
        );
        assert_eq!(s.usage(), (2, one * 2));
        assert_eq!(s.read(&s.oldest().unwrap()).unwrap(), vec![1; 100]);
        let err = s.push("t", 1, &[0; 1000]).unwrap_err().to_string();
        assert!(err.contains("client.disk_buffer.max_size_bytes"), "{err}");
    }
}
