//! Shared fixtures of the end-to-end tests: a Loki-compatible push receiver that records
//! what arrives and can answer errors or be stopped, the real `lode` server binary as a
//! child process that can be stopped, restarted on its data dir and queried, the real
//! `lode-shipper` binary as a child process, and writers of CRI and Docker log files
//! under a fake `/var/log/pods`.
//!
//! It does not assert anything itself beyond waiting with a deadline; the tests decide
//! what "correct" is.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use lode_push::LabelSet;

/// How long any wait in these tests may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// One entry as the receiver stored it.
#[derive(Clone, Debug)]
pub struct Received {
    pub tenant: String,
    pub labels: LabelSet,
    pub timestamp_ns: i64,
    pub line: String,
}

#[derive(Default)]
struct Shared {
    entries: Mutex<Vec<Received>>,
    /// Status answered to every push; 204 stores the entries.
    status: AtomicU16,
    /// Statuses answered so far, in order.
    answered: Mutex<Vec<u16>>,
}

/// A push endpoint on 127.0.0.1 that can be stopped and restarted on the same port.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
}

async fn push(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> StatusCode {
    let status = shared.status.load(Ordering::SeqCst);
    if let Ok(mut a) = shared.answered.lock() {
        a.push(status);
    }
    if status != 204 {
        return StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let Ok(req) = lode_push::decode_protobuf_snappy(&body, 64 << 20) else {
        return StatusCode::BAD_REQUEST;
    };
    let tenant = headers
        .get("x-scope-orgid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut out = Vec::new();
    for s in req.streams {
        let Ok(labels) = LabelSet::parse(&s.labels) else {
            return StatusCode::BAD_REQUEST;
        };
        for e in s.entries {
            out.push(Received {
                tenant: tenant.clone(),
                labels: labels.clone(),
                timestamp_ns: e.timestamp_ns,
                line: e.line,
            });
        }
    }
    if let Ok(mut all) = shared.entries.lock() {
        all.extend(out);
    }
    StatusCode::NO_CONTENT
}

impl Receiver {
    pub fn start() -> Self {
        let shared = Arc::new(Shared {
            status: AtomicU16::new(204),
            ..Default::default()
        });
        let mut r = Receiver {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            shared,
            rt: None,
        };
        r.restart();
        r
    }

    /// (Re)binds the same address and serves again.
    pub fn restart(&mut self) {
        assert!(self.rt.is_none(), "receiver already running");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let addr = self.addr;
        let listener = rt.block_on(async {
            let start = Instant::now();
            loop {
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => return l,
                    Err(e) if start.elapsed() < DEADLINE => {
                        eprintln!("rebinding {addr}: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("cannot bind {addr}: {e}"),
                }
            }
        });
        self.addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/loki/api/v1/push", axum::routing::post(push))
            .with_state(self.shared.clone());
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        self.rt = Some(rt);
    }

    /// Closes the listener and every open connection, like a server process exiting.
    pub fn stop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }

    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("http://{}/loki/api/v1/push", self.addr)
    }

    pub fn entries(&self) -> Vec<Received> {
        self.shared.entries.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.shared.entries.lock().unwrap().len()
    }

    /// How many pushes were answered with `status`.
    pub fn answered(&self, status: u16) -> usize {
        self.shared
            .answered
            .lock()
            .unwrap()
            .iter()
            .filter(|s| **s == status)
            .count()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A free TCP port for the shipper's `/metrics` listener.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test's working area: the fake pods root, the shipper's state, its config and log.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub pods: PathBuf,
    pub metrics_port: u16,
    starts: usize,
}

impl Node {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pods = dir.path().join("var/log/pods");
        std::fs::create_dir_all(&pods).unwrap();
        Node {
            dir,
            pods,
            metrics_port: free_port(),
            starts: 0,
        }
    }

    pub fn positions(&self) -> PathBuf {
        self.dir.path().join("state/positions.json")
    }

    /// A config with short periods so each test takes seconds; `extra_client` lines are
    /// appended to the `client:` section.
    pub fn config(&self, url: &str, extra_client: &str) -> String {
        format!(
            "server:
  http_listen_address: 127.0.0.1
  http_listen_port: {port}
client:
  url: {url}
  batch_wait: 100ms
  batch_size: 65536
  max_buffered_bytes: 1048576
  timeout: 2s
  min_backoff: 50ms
  max_backoff: 300ms
  shutdown_timeout: 3s
{extra_client}
positions:
  filename: {positions}
  sync_period: 100ms
discovery:
  globs: ['{pods}/*/*/*.log']
  rescan_interval: 200ms
  poll_interval: 50ms
  rotate_wait: 300ms
labels:
  node_name: node-1
",
            port = self.metrics_port,
            positions = self.positions().display(),
            pods = self.pods.display(),
        )
    }

    /// Starts the real binary with `config`.
    pub fn start_shipper(&mut self, config: &str) -> Shipper {
        self.starts += 1;
        let cfg = self.dir.path().join("shipper.yaml");
        std::fs::write(&cfg, config).unwrap();
        let log_path = self.dir.path().join(format!("shipper-{}.log", self.starts));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_lode-shipper"))
            .arg("--config.file")
            .arg(&cfg)
            .env("RUST_LOG", "lode_shipper=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let s = Shipper {
            child: Some(child),
            log: log_path,
            port: self.metrics_port,
        };
        s.wait_ready();
        s
    }

    /// The log file of `<namespace>_<pod>_<uid>/<container>/0.log`, its directory created.
    pub fn container_log(&self, ns: &str, pod: &str, uid: &str, container: &str) -> PathBuf {
        let dir = self.pods.join(format!("{ns}_{pod}_{uid}")).join(container);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("0.log")
    }
}

/// The running shipper; SIGKILLed when dropped.
pub struct Shipper {
    child: Option<Child>,
    log: PathBuf,
    port: u16,
}

impl Shipper {
    fn wait_ready(&self) {
        let port = self.port;
        wait_until("shipper /ready answers 200", self, || {
            http_get(port, "/ready").is_some_and(|(status, _)| status == 200)
        });
    }

    /// The shipper's `/metrics` text.
    pub fn metrics(&self) -> String {
        http_get(self.port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// The value of one sample line of `/metrics` (`name{labels}` exactly), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// SIGKILL: no flush, no final positions write.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the graceful exit; panics if the exit status is not 0.
    pub fn terminate(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        match sigterm_and_wait(&mut c) {
            Ok(status) => assert!(
                status.success(),
                "shipper exited with {status}\n{}",
                self.log_tail()
            ),
            Err(e) => panic!("shipper: {e}\n{}", self.log_tail()),
        }
    }

    /// The last lines the shipper logged, for failure messages.
    pub fn log_tail(&self) -> String {
        file_tail(&self.log)
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `cond` every 20 ms until it holds; fails the test with the shipper's log after
/// [`DEADLINE`].
pub fn wait_until(what: &str, shipper: &Shipper, cond: impl FnMut() -> bool) {
    wait_for(
        what,
        || format!("shipper log:\n{}", shipper.log_tail()),
        cond,
    );
}

/// Polls `cond` every 20 ms until it holds; after [`DEADLINE`] fails the test with
/// `context()` (e.g. the logs of the processes involved).
pub fn wait_for(what: &str, context: impl Fn() -> String, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > DEADLINE {
            panic!("timed out waiting for: {what}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM to `child`, then waits up to [`DEADLINE`] for its exit; `Err` says why not.
fn sigterm_and_wait(child: &mut Child) -> Result<std::process::ExitStatus, String> {
    let sent = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .is_ok_and(|s| s.success());
    if !sent {
        return Err("cannot send SIGTERM".into());
    }
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no exit within {DEADLINE:?} of SIGTERM"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last 40 lines of a process's log file, for failure messages.
fn file_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(40);
    lines.get(from..).unwrap_or(&[]).join("\n")
}

/// The real `lode` server binary: cargo builds it next to `lode-shipper` when the
/// workspace (or `-p lode`) is built, but not for `-p lode-shipper` alone.
pub fn lode_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_lode-shipper")).with_file_name("lode");
    assert!(
        path.is_file(),
        "the real server binary {} is missing: these tests run the `lode` server next to \
         the shipper; build it first (`cargo build -p lode`) or run the suite with \
         `cargo nextest run --workspace`, as scripts/test.sh does",
        path.display()
    );
    path
}

/// The real `lode` server (`lode serve`, embedded defaults: no auth, tenant `fake`) on
/// 127.0.0.1, with its data dir; SIGKILLed when dropped.
pub struct LodeServer {
    child: Option<Child>,
    data_dir: PathBuf,
    logs: PathBuf,
    port: u16,
    starts: usize,
}

impl LodeServer {
    /// Starts a server on a free port with its data in `<dir>/lode-data` and its logs in
    /// `<dir>/lode-<n>.log`; returns once `/ready` answers 200.
    pub fn start(dir: &Path) -> Self {
        let mut s = LodeServer {
            child: None,
            data_dir: dir.join("lode-data"),
            logs: dir.to_path_buf(),
            port: free_port(),
            starts: 0,
        };
        s.restart();
        s
    }

    /// Starts the server again on the same port and data dir (after [`Self::stop`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let start = Instant::now();
        loop {
            self.starts += 1;
            let log = std::fs::File::create(self.log_path()).unwrap();
            let mut child = Command::new(lode_binary())
                .arg("serve")
                .arg("--data-dir")
                .arg(&self.data_dir)
                .arg("--listen")
                .arg(format!("127.0.0.1:{}", self.port))
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            loop {
                if http_get(self.port, "/ready").is_some_and(|(status, _)| status == 200) {
                    self.child = Some(child);
                    return;
                }
                if let Some(status) = child.try_wait().unwrap() {
                    // e.g. the port not released yet by the previous run: try again.
                    eprintln!("lode exited at start with {status}:\n{}", self.log_tail());
                    break;
                }
                if start.elapsed() > DEADLINE {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("lode did not become ready\n{}", self.log_tail());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                start.elapsed() < DEADLINE,
                "lode could not start\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM (graceful: in-flight requests finish, heads are flushed, the WAL is
    /// checkpointed), then waits for exit status 0.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        match sigterm_and_wait(&mut c) {
            Ok(status) => assert!(
                status.success(),
                "lode exited with {status}\n{}",
                self.log_tail()
            ),
            Err(e) => panic!("lode: {e}\n{}", self.log_tail()),
        }
    }

    pub fn push_url(&self) -> String {
        format!("http://127.0.0.1:{}/loki/api/v1/push", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.logs.join(format!("lode-{}.log", self.starts))
    }

    /// The last lines the current (or last) server run logged.
    pub fn log_tail(&self) -> String {
        file_tail(&self.log_path())
    }

    /// `GET /loki/api/v1/query_range` for `logql` over `[start_ns, end_ns]`, forward, at
    /// most `limit` entries; each returned value becomes a [`Received`] with the stream's
    /// labels as the server answered them (tenant `fake`). `Err` on any HTTP or decoding
    /// failure, so callers polling a restarting server can retry.
    pub fn query_range(
        &self,
        logql: &str,
        start_ns: i64,
        end_ns: i64,
        limit: usize,
    ) -> Result<Vec<Received>, String> {
        let path = format!(
            "/loki/api/v1/query_range?query={}&start={start_ns}&end={end_ns}&limit={limit}&direction=forward",
            percent_encode(logql)
        );
        let (status, body) =
            http_get_timeout(self.port, &path, Duration::from_secs(10)).ok_or("no answer")?;
        if status != 200 {
            return Err(format!("status {status}: {body}"));
        }
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        if v["data"]["resultType"] != "streams" {
            return Err(format!("not a streams result: {body}"));
        }
        let mut out = Vec::new();
        for s in v["data"]["result"].as_array().ok_or("no data.result")? {
            let labels = LabelSet::from_pairs(
                s["stream"]
                    .as_object()
                    .ok_or("no stream labels")?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())),
            )
            .map_err(|e| e.to_string())?;
            for value in s["values"].as_array().ok_or("no values")? {
                let ts = value[0].as_str().ok_or("timestamp not a string")?;
                out.push(Received {
                    tenant: "fake".into(),
                    labels: labels.clone(),
                    timestamp_ns: ts.parse().map_err(|e| format!("timestamp {ts}: {e}"))?,
                    line: value[1].as_str().ok_or("line not a string")?.to_string(),
                });
            }
        }
        Ok(out)
    }
}

impl Drop for LodeServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A minimal HTTP/1.0 GET: `(status, body)`.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_timeout(port, path, Duration::from_secs(2))
}

/// [`http_get`] with a read timeout of `timeout`.
fn http_get_timeout(port: u16, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split(' ').nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Go's `RFC3339Nano`: trailing zeros of the fraction dropped, no fraction when zero.
pub fn rfc3339_nano(ts_ns: i64) -> String {
    let secs = ts_ns.div_euclid(1_000_000_000);
    let nanos = ts_ns.rem_euclid(1_000_000_000) as u32;
    let t = chrono::DateTime::from_timestamp(secs, nanos).unwrap();
    let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    if nanos == 0 {
        format!("{base}Z")
    } else {
        let frac = format!("{nanos:09}");
        format!("{base}.{}Z", frac.trim_end_matches('0'))
    }
}

/// One CRI record (`tag` is `F` or `P`), with its newline.
pub fn cri(ts_ns: i64, stream: &str, tag: &str, msg: &str) -> String {
    format!("{} {stream} {tag} {msg}\n", rfc3339_nano(ts_ns))
}

/// One Docker json-file record; `log` carries its own trailing `\n` unless it is a chunk.
pub fn docker(ts_ns: i64, stream: &str, log: &str) -> String {
    let v = serde_json::json!({"log": log, "stream": stream, "time": rfc3339_nano(ts_ns)});
    format!("{v}\n")
}

/// Appends `text` to `path` in one write, as a runtime does.
pub fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// A base timestamp for generated lines (2024-05-01T10:00:00Z).
pub const T0: i64 = 1_714_557_600_000_000_000;

/// Fails unless every `(line, timestamp)` of `expected` arrived exactly once, nothing
/// else arrived, and each entry's stream has `labels` (a subset check) plus the
/// `stream` label it was written to.
pub fn assert_exactly_once(got: &[Received], expected: &[Expected]) {
    let mut by_line: HashMap<&str, Vec<&Received>> = HashMap::new();
    for r in got {
        by_line.entry(r.line.as_str()).or_default().push(r);
    }
    let mut problems = Vec::new();
    for e in expected {
        match by_line.remove(e.line.as_str()).as_deref() {
            None => problems.push(format!("missing: {:?}", short(&e.line))),
            Some([r]) => {
                if r.timestamp_ns != e.timestamp_ns {
                    problems.push(format!(
                        "{:?}: timestamp {} want {}",
                        short(&e.line),
                        r.timestamp_ns,
                        e.timestamp_ns
                    ));
                }
                for (k, v) in e
                    .labels
                    .iter()
                    .chain([&("stream".to_string(), e.stream.to_string())])
                {
                    if r.labels.get(k) != Some(v.as_str()) {
                        problems.push(format!(
                            "{:?}: label {k}={:?} want {v:?} in {}",
                            short(&e.line),
                            r.labels.get(k),
                            r.labels
                        ));
                    }
                }
            }
            Some(rs) => problems.push(format!("{:?} arrived {} times", short(&e.line), rs.len())),
        }
    }
    for (line, rs) in by_line {
        problems.push(format!(
            "unexpected line {:?} ({}x) in {}",
            short(line),
            rs.len(),
            rs[0].labels
        ));
    }
    assert!(
        problems.is_empty(),
        "{} problems of {} expected / {} received lines:\n{}",
        problems.len(),
        expected.len(),
        got.len(),
        problems
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn short(s: &str) -> String {
    s.chars().take(60).collect()
}

/// A line the test wrote and expects to arrive once.
#[derive(Clone, Debug)]
pub struct Expected {
    pub line: String,
    pub timestamp_ns: i64,
    pub stream: &'static str,
    pub labels: Vec<(String, String)>,
}

/// The labels the shipper derives for a pod container on `node-1`.
pub fn pod_labels(
    ns: &str,
    pod: &str,
    container: &str,
    app: Option<&str>,
) -> Vec<(String, String)> {
    let mut l = vec![
        ("namespace".to_string(), ns.to_string()),
        ("pod".to_string(), pod.to_string()),
        ("container".to_string(), container.to_string()),
        ("job".to_string(), format!("{ns}/{container}")),
        ("node_name".to_string(), "node-1".to_string()),
    ];
    if let Some(a) = app {
        l.push(("app".to_string(), a.to_string()));
    }
    l
}

/// Writes `n` full CRI stdout lines `"{tag} {i}"` to `path`, one write each, and returns
/// what should arrive; `ts` advances by 1 µs per line from `ts0`.
pub fn write_cri_lines(
    path: &Path,
    tag: &str,
    range: std::ops::Range<usize>,
    ts0: i64,
    labels: &[(String, String)],
) -> Vec<Expected> {
    let mut out = Vec::new();
    let mut text = String::new();
    for i in range {
        let ts = ts0 + i as i64 * 1000;
        let line = format!("{tag} {i:06} padding-to-make-lines-longer-than-a-fingerprint");
        text.push_str(&cri(ts, "stdout", "F", &line));
        out.push(Expected {
            line,
            timestamp_ns: ts,
            stream: "stdout",
            labels: labels.to_vec(),
        });
    }
    append(path, &text);
    out
}
