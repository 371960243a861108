//! The push client: batching per tenant, sending, retrying, and acknowledging offsets.
//!
//! Owns batches (flushed at `client.batch_size` bytes of lines or after
//! `client.batch_wait`), one sender task per tenant (so a throttled tenant does not block
//! the others), the retry policy (429, 5xx and connection errors retried with exponential
//! backoff and full jitter; other 4xx dropped and counted, since resending never helps),
//! memory backpressure (`client.max_buffered_bytes`: the reader channel is not drained
//! while that much is unacknowledged), and the acknowledgement tracker that turns
//! acknowledged batches into committed file offsets. With `client.disk_buffer`, a batch
//! whose first push fails with a retryable error is written to the [`spool`](crate::spool)
//! instead — that counts as acknowledged — and one drainer task sends spooled batches
//! oldest first; new batches of a tenant with spooled ones queue behind them on disk. It
//! does not own reading files.
//!
//! Offsets commit only up to the longest acknowledged prefix of each file: entries of one
//! file may sit in several batches (several tenants) that finish out of order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lode_push::{Entry, PushRequest, PushStream};
use rand::Rng;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, error, info, warn};

use crate::config::ClientConfig;
use crate::metrics::{Metrics, StatusLabel};
use crate::positions::{FileId, Positions};
use crate::spool::Spool;
use crate::tailer::ReadEntry;

/// Why the client could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read client.bearer_token_file {path}: {source}")]
    Token {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Spool(#[from] crate::spool::Error),
}

type BatchId = u64;

/// Which batches hold the not-yet-committed entries of each file, in read order.
#[derive(Debug, Default)]
pub struct AckTracker {
    files: HashMap<FileId, VecDeque<(Option<BatchId>, u64)>>,
}

impl AckTracker {
    /// Records that `file`'s entries up to `offset` went into `batch` (`None`: consumed
    /// without sending). Returns an offset that can be committed right away.
    pub fn record(&mut self, file: FileId, batch: Option<BatchId>, offset: u64) -> Option<u64> {
        let q = self.files.entry(file).or_default();
        if batch.is_none() && q.is_empty() {
            self.files.remove(&file);
            return Some(offset);
        }
        match q.back_mut() {
            Some(last) if last.0 == batch => last.1 = last.1.max(offset),
            _ => q.push_back((batch, offset)),
        }
        None
    }

    /// Marks `batch` done for `files`; returns the offsets that became committable.
    pub fn ack(&mut self, batch: BatchId, files: &[FileId]) -> Vec<(FileId, u64)> {
        let mut out = Vec::new();
        for file in files {
            let Some(q) = self.files.get_mut(file) else {
                continue;
            };
            for seg in q.iter_mut() {
                if seg.0 == Some(batch) {
                    seg.0 = None;
                }
            }
            let mut committed = None;
            while q.front().is_some_and(|s| s.0.is_none()) {
                committed = q.pop_front().map(|s| s.1);
            }
            if q.is_empty() {
                self.files.remove(file);
            }
            if let Some(off) = committed {
                out.push((*file, off));
            }
        }
        out
    }
}

struct Batch {
    id: BatchId,
    tenant: Arc<str>,
    streams: HashMap<Arc<str>, Vec<Entry>>,
    bytes: usize,
    entries: usize,
    created: Instant,
    files: Vec<FileId>,
}

/// How a batch ended.
#[derive(Debug)]
enum Outcome {
    Sent,
    /// Written to the on-disk buffer; sent later by the drainer.
    Spooled,
    Dropped(&'static str),
}

/// How one push attempt ended.
enum Attempt {
    Sent,
    /// Not retryable (4xx other than 429): the reason to count.
    Rejected(&'static str),
    /// Retryable: the status (or `error`) for the log line.
    Retry(String),
}

struct Done {
    id: BatchId,
    outcome: Outcome,
}

/// Everything the client loop needs.
pub struct Client {
    cfg: ClientConfig,
    http: reqwest::Client,
    auth: Option<String>,
    metrics: Arc<Metrics>,
    positions: Arc<Mutex<Positions>>,
    positions_changed: Arc<Notify>,
    spool: Option<Arc<Spool>>,
    spooled: Notify,
}

impl Client {
    pub fn new(
        cfg: ClientConfig,
        metrics: Arc<Metrics>,
        positions: Arc<Mutex<Positions>>,
        positions_changed: Arc<Notify>,
    ) -> Result<Self, Error> {
        let auth = match &cfg.bearer_token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|source| Error::Token {
                        path: p.clone(),
                        source,
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .user_agent(concat!("lode-shipper/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let spool = match &cfg.disk_buffer {
            Some(b) => {
                let (spool, corrupt) = Spool::open(&b.path, b.max_size_bytes)?;
                for e in &corrupt {
                    metrics.disk_buffer_corrupt.inc();
                    error!(error = %e, "spooled batch unreadable; deleted");
                }
                let (batches, bytes) = spool.usage();
                if batches > 0 {
                    info!(
                        batches,
                        bytes,
                        "on-disk buffer holds batches from a previous run; sending them first"
                    );
                }
                Some(Arc::new(spool))
            }
            None => None,
        };
        Ok(Client {
            cfg,
            http,
            auth,
            metrics,
            positions,
            positions_changed,
            spool,
            spooled: Notify::new(),
        })
    }

    /// Runs until the reader closes `rx` (after `shutdown` flips) and every batch is
    /// acknowledged, or `client.shutdown_timeout` after shutdown began.
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<Vec<ReadEntry>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let this = Arc::new(self);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut senders: HashMap<Arc<str>, mpsc::UnboundedSender<Batch>> = HashMap::new();
        let mut tasks = Vec::new();
        let mut open: HashMap<Arc<str>, Batch> = HashMap::new();
        let mut in_flight: HashMap<BatchId, (Vec<FileId>, usize, usize, Instant)> = HashMap::new();
        let mut tracker = AckTracker::default();
        let mut next_id: BatchId = 1;
        let mut buffered: usize = 0;
        let mut input_open = true;
        let mut deadline: Option<tokio::time::Instant> = None;
        if let Some(spool) = this.spool.clone() {
            tasks.push(tokio::spawn(this.clone().drain_spool(spool)));
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100).min(this.cfg.batch_wait));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let flush =
            |batch: Batch,
             senders: &mut HashMap<Arc<str>, mpsc::UnboundedSender<Batch>>,
             tasks: &mut Vec<tokio::task::JoinHandle<()>>,
             in_flight: &mut HashMap<BatchId, (Vec<FileId>, usize, usize, Instant)>| {
                let tx = senders.entry(batch.tenant.clone()).or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tasks.push(tokio::spawn(this.clone().sender(
                        batch.tenant.clone(),
                        rx,
                        done_tx.clone(),
                    )));
                    tx
                });
                in_flight.insert(
                    batch.id,
                    (
                        batch.files.clone(),
                        batch.bytes,
                        batch.entries,
                        batch.created,
                    ),
                );
                let _ = tx.send(batch);
            };

        loop {
            if !input_open && open.is_empty() && in_flight.is_empty() {
                break;
            }
            let accept = input_open && buffered < this.cfg.max_buffered_bytes;
            let until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some(done) = done_rx.recv() => {
                    let Some((files, bytes, entries, _)) = in_flight.remove(&done.id) else { continue };
                    buffered = buffered.saturating_sub(bytes);
                    match done.outcome {
                        Outcome::Sent => {
                            this.metrics.sent_entries.inc_by(entries as u64);
                            this.metrics.sent_bytes.inc_by(bytes as u64);
                        }
                        Outcome::Spooled => {
                            this.metrics.spooled_entries.inc_by(entries as u64);
                        }
                        Outcome::Dropped(reason) => this.metrics.dropped(reason, entries as u64, bytes as u64),
                    }
                    let commits = tracker.ack(done.id, &files);
                    this.commit(&commits);
                }
                chunk = rx.recv(), if accept => {
                    let Some(chunk) = chunk else {
                        input_open = false;
                        for (_, b) in open.drain() {
                            flush(b, &mut senders, &mut tasks, &mut in_flight);
                        }
                        continue;
                    };
                    let mut commits = Vec::new();
                    for e in chunk {
                        let Some(target) = e.target else {
                            if let Some(off) = tracker.record(e.file, None, e.commit_offset) {
                                commits.push((e.file, off));
                            }
                            continue;
                        };
                        let batch = open.entry(target.tenant.clone()).or_insert_with(|| {
                            let id = next_id;
                            next_id += 1;
                            Batch {
                                id,
                                tenant: target.tenant.clone(),
                                streams: HashMap::new(),
                                bytes: 0,
                                entries: 0,
                                created: Instant::now(),
                                files: Vec::new(),
                            }
                        });
                        let size = e.entry.line.len();
                        batch.bytes += size;
                        batch.entries += 1;
                        buffered += size;
                        if batch.files.last() != Some(&e.file) && !batch.files.contains(&e.file) {
                            batch.files.push(e.file);
                        }
                        tracker.record(e.file, Some(batch.id), e.commit_offset);
                        batch.streams.entry(target.labels).or_default().push(e.entry);
                        if batch.bytes >= this.cfg.batch_size {
                            if let Some(b) = open.remove(&target.tenant) {
                                flush(b, &mut senders, &mut tasks, &mut in_flight);
                            }
                        }
                    }
                    this.commit(&commits);
                }
                _ = tick.tick() => {
                    let aged: Vec<Arc<str>> = open
                        .iter()
                        .filter(|(_, b)| b.created.elapsed() >= this.cfg.batch_wait)
                        .map(|(t, _)| t.clone())
                        .collect();
                    for t in aged {
                        if let Some(b) = open.remove(&t) {
                            flush(b, &mut senders, &mut tasks, &mut in_flight);
                        }
                    }
                    let oldest = in_flight.values().map(|v| v.3).min();
                    this.metrics.unacked_age_seconds.set(oldest.map_or(0.0, |t| t.elapsed().as_secs_f64()));
                }
                changed = shutdown.changed(), if deadline.is_none() => {
                    if changed.is_err() || *shutdown.borrow() {
                        info!(timeout = ?this.cfg.shutdown_timeout, "shutting down: flushing batches");
                        deadline = Some(tokio::time::Instant::now() + this.cfg.shutdown_timeout);
                    }
                }
                _ = until_deadline => {
                    warn!(batches = in_flight.len() + open.len(), "shutdown timeout: unsent batches will be re-read on the next start");
                    break;
                }
            }
            this.metrics.buffered_bytes.set(buffered as i64);
        }
        drop(senders);
        for t in tasks {
            t.abort();
        }
    }

    fn commit(&self, commits: &[(FileId, u64)]) {
        if commits.is_empty() {
            return;
        }
        if let Ok(mut p) = self.positions.lock() {
            for (f, off) in commits {
                p.commit(*f, *off);
            }
        }
        self.positions_changed.notify_one();
    }

    async fn sender(
        self: Arc<Self>,
        tenant: Arc<str>,
        mut rx: mpsc::UnboundedReceiver<Batch>,
        done: mpsc::UnboundedSender<Done>,
    ) {
        while let Some(batch) = rx.recv().await {
            let id = batch.id;
            let entries = batch.entries;
            let body = bytes::Bytes::from(lode_push::encode_protobuf_snappy(&PushRequest {
                streams: batch
                    .streams
                    .into_iter()
                    .map(|(labels, entries)| PushStream {
                        labels: labels.to_string(),
                        entries,
                    })
                    .collect(),
            }));
            let outcome = match &self.spool {
                // Keep order: while older batches of this tenant wait on disk, queue there.
                Some(spool) if spool.has_tenant(&tenant) => {
                    self.spool_batch(spool, &tenant, body, entries).await
                }
                Some(spool) => match self.send_once(&tenant, &body, entries, 0).await {
                    Attempt::Sent => Outcome::Sent,
                    Attempt::Rejected(reason) => Outcome::Dropped(reason),
                    Attempt::Retry(_) => {
                        self.metrics.retries.inc();
                        self.spool_batch(spool, &tenant, body, entries).await
                    }
                },
                None => self.send_with_retries(&tenant, body, entries).await,
            };
            if done.send(Done { id, outcome }).is_err() {
                return;
            }
        }
    }

    /// Writes a batch to the spool; falls back to retrying from memory when the disk
    /// write fails (full disk, permissions), so nothing is lost either way.
    async fn spool_batch(
        &self,
        spool: &Arc<Spool>,
        tenant: &str,
        body: bytes::Bytes,
        entries: usize,
    ) -> Outcome {
        let write = {
            let spool = spool.clone();
            let tenant = tenant.to_string();
            let body = body.clone();
            tokio::task::spawn_blocking(move || spool.push(&tenant, entries as u64, &body)).await
        };
        match write {
            Ok(Ok(evicted)) => {
                if evicted.batches > 0 {
                    warn!(batches = evicted.batches, entries = evicted.entries, "on-disk buffer full (client.disk_buffer.max_size_bytes); oldest batches dropped");
                    self.metrics.dropped("buffer_full", evicted.entries, 0);
                }
                self.update_spool_gauges(spool);
                self.spooled.notify_one();
                debug!(tenant, entries, "batch written to the on-disk buffer");
                Outcome::Spooled
            }
            Ok(Err(e)) => {
                error!(error = %e, "cannot write to the on-disk buffer; retrying from memory");
                self.send_with_retries(tenant, body, entries).await
            }
            Err(e) => {
                error!(error = %e, "on-disk buffer write task failed; retrying from memory");
                self.send_with_retries(tenant, body, entries).await
            }
        }
    }

    fn update_spool_gauges(&self, spool: &Spool) {
        let (batches, bytes) = spool.usage();
        self.metrics.disk_buffer_batches.set(batches as i64);
        self.metrics.disk_buffer_bytes.set(bytes as i64);
    }

    /// Sends spooled batches oldest first, retrying each until the server takes or
    /// rejects it; runs for the client's lifetime.
    async fn drain_spool(self: Arc<Self>, spool: Arc<Spool>) {
        let mut attempt: u32 = 0;
        loop {
            self.update_spool_gauges(&spool);
            let Some(next) = spool.oldest() else {
                attempt = 0;
                let _ = tokio::time::timeout(Duration::from_secs(1), self.spooled.notified()).await;
                continue;
            };
            let body = {
                let spool = spool.clone();
                let next = next.clone();
                tokio::task::spawn_blocking(move || spool.read(&next)).await
            };
            let body = match body {
                Ok(Ok(b)) => bytes::Bytes::from(b),
                Ok(Err(e)) => {
                    self.metrics.disk_buffer_corrupt.inc();
                    self.metrics.dropped("disk_buffer_corrupt", next.entries, 0);
                    error!(error = %e, "spooled batch unreadable; deleted");
                    continue;
                }
                Err(_) => return,
            };
            match self
                .send_once(&next.tenant, &body, next.entries as usize, attempt)
                .await
            {
                Attempt::Sent => {
                    attempt = 0;
                    // Gone already when evicted meanwhile: the eviction counted it.
                    if spool.remove(next.seq) {
                        self.metrics.sent_entries.inc_by(next.entries);
                    }
                }
                Attempt::Rejected(reason) => {
                    attempt = 0;
                    if spool.remove(next.seq) {
                        self.metrics.dropped(reason, next.entries, 0);
                    }
                }
                Attempt::Retry(_) => {
                    attempt += 1;
                    self.metrics.retries.inc();
                    tokio::time::sleep(backoff(
                        self.cfg.min_backoff,
                        self.cfg.max_backoff,
                        attempt,
                    ))
                    .await;
                }
            }
        }
    }

    /// One push of `body`.
    async fn send_once(
        &self,
        tenant: &str,
        body: &bytes::Bytes,
        entries: usize,
        attempt: u32,
    ) -> Attempt {
        let mut req = self
            .http
            .post(&self.cfg.url)
            .header("Content-Type", "application/x-protobuf")
            .body(body.clone());
        if !tenant.is_empty() {
            req = req.header("X-Scope-OrgID", tenant);
        }
        if let Some(token) = &self.auth {
            req = req.bearer_auth(token);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                self.metrics
                    .requests
                    .get_or_create(&StatusLabel {
                        status: status.as_u16().to_string(),
                    })
                    .inc();
                if status.is_success() {
                    self.metrics.encoded_bytes.inc_by(body.len() as u64);
                    debug!(tenant, entries, bytes = body.len(), "batch sent");
                    return Attempt::Sent;
                }
                let text = resp.text().await.unwrap_or_default();
                let text: String = text.chars().take(1024).collect();
                if status.as_u16() != 429 && status.is_client_error() {
                    error!(tenant, status = status.as_u16(), entries, body = %text.trim(), "push rejected; batch dropped (not retryable)");
                    return Attempt::Rejected(if status.as_u16() == 400 {
                        "bad_request"
                    } else {
                        "client_error"
                    });
                }
                warn!(tenant, status = status.as_u16(), attempt, body = %text.trim(), "push failed; retrying");
                Attempt::Retry(status.as_u16().to_string())
            }
            Err(e) => {
                self.metrics
                    .requests
                    .get_or_create(&StatusLabel {
                        status: "error".into(),
                    })
                    .inc();
                warn!(tenant, attempt, error = %e, "push failed; retrying");
                Attempt::Retry("error".into())
            }
        }
    }

    async fn send_with_retries(&self, tenant: &str, body: bytes::Bytes, entries: usize) -> Outcome {
        let mut attempt: u32 = 0;
        loop {
            let status = match self.send_once(tenant, &body, entries, attempt).await {
                Attempt::Sent => return Outcome::Sent,
                Attempt::Rejected(reason) => return Outcome::Dropped(reason),
                Attempt::Retry(status) => status,
            };
            attempt += 1;
            if self.cfg.max_retries > 0 && attempt > self.cfg.max_retries {
                error!(tenant, entries, last = %status, max_retries = self.cfg.max_retries, "giving up on batch (client.max_retries)");
                return Outcome::Dropped("max_retries");
            }
            self.metrics.retries.inc();
            tokio::time::sleep(backoff(self.cfg.min_backoff, self.cfg.max_backoff, attempt)).await;
        }
    }
}

/// Exponential backoff with full jitter: uniform in `[min, min(max, min * 2^(attempt-1))]`.
pub fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = min.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let cap = exp.min(max).max(min);
    let ms = rand::thread_rng().gen_range(min.as_millis()..=cap.as_millis());
    Duration::from_millis(ms as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fid(p: &mut Positions, n: u64) -> FileId {
        p.insert(
            format!("/f{n}").into(),
            crate::positions::Identity {
                dev: 1,
                inode: n,
                fingerprint_len: 0,
                fingerprint: 0,
            },
            0,
        )
    }

    #[test]
    fn offsets_commit_only_up_to_the_longest_acknowledged_prefix() {
        let mut p = Positions::empty(std::path::Path::new("/x"));
        let f = fid(&mut p, 1);
        let mut t = AckTracker::default();
        assert_eq!(t.record(f, Some(1), 10), None);
        assert_eq!(t.record(f, Some(1), 20), None);
        assert_eq!(t.record(f, Some(2), 30), None);
        assert_eq!(t.record(f, None, 40), None);
        assert_eq!(t.record(f, Some(1), 50), None);
        // Batch 2 done first: nothing before it is acknowledged yet.
        assert_eq!(t.ack(2, &[f]), vec![]);
        // Batch 1 done: everything up to 50 is now acknowledged.
        assert_eq!(t.ack(1, &[f]), vec![(f, 50)]);
        assert_eq!(t.record(f, None, 60), Some(60));
    }

    #[test]
    fn backoff_grows_exponentially_within_bounds() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for attempt in 1..30 {
            let d = backoff(min, max, attempt);
            assert!(d >= min && d <= max, "{attempt}: {d:?}");
            let cap = min.saturating_mul(1 << (attempt - 1).min(20)).min(max);
            assert!(d <= cap, "{attempt}: {d:?} > {cap:?}");
        }
    }
}
