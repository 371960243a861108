//! An acknowledged push survives `kill -9`: the real `lode serve` binary takes concurrent
//! pushes while its flush loop writes segments, is SIGKILLed mid-push, restarted on the
//! same data directory, and every acknowledged entry must come back from the query API
//! exactly once (entries whose push was cut off may appear, but never twice).

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

const WORKERS: usize = 4;
const BATCH: usize = 10;
/// Kill once this many entries are acknowledged: enough for several flushes and WAL
/// checkpoints, under the default 5000-line query limit per stream.
const KILL_AFTER: usize = 2000;
/// Pushers stop here, so a stream stays under the query limit of 5000 lines.
const MAX_PER_WORKER: usize = 4000;

/// A running `lode serve`; killed with SIGKILL when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Small blocks and chunks, a tight memory bound and a fast flush loop, so segments are
/// written (of chunks closed by size, and of sealed blocks split off open chunks under
/// memory pressure) and the WAL is checkpointed while pushes are in flight.
const CONFIG: &str = "\
ingester:
  chunk_block_size: 2048
  chunk_target_size: 16384
  max_sealed_bytes: 8192
  chunk_idle_period: 300ms
  flush_check_period: 100ms
";

async fn start(data: &Path) -> Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("pick a free loopback port")
        .port();
    let config = data.join("lode.yaml");
    std::fs::write(&config, CONFIG).expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_lode"))
        .arg("serve")
        .arg("--config.file")
        .arg(&config)
        .arg("--data-dir")
        .arg(data)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn lode serve");
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    // Wait for readiness; the bound only keeps a broken build from hanging CI.
    for _ in 0..600 {
        let ready = client.get(format!("{}/ready", server.base)).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("lode serve did not become ready on port {port}");
}

/// Segment objects under the chunks directory.
fn count_segments(dir: &Path) -> usize {
    let Ok(items) = std::fs::read_dir(dir) else {
        return 0;
    };
    items
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                count_segments(&p)
            } else {
                usize::from(p.extension().is_some_and(|x| x == "seg"))
            }
        })
        .sum()
}

fn now_ns() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Pushes batches for one worker's stream until a push fails (the server was killed);
/// returns the acknowledged (timestamp, line) pairs.
async fn pusher(
    base: String,
    worker: usize,
    t0: i64,
    acked: Arc<AtomicUsize>,
) -> Vec<(i64, String)> {
    let client = reqwest::Client::new();
    let mut mine = Vec::new();
    for batch in 0..MAX_PER_WORKER / BATCH {
        let values: Vec<(i64, String)> = (0..BATCH)
            .map(|i| {
                let seq = batch * BATCH + i;
                (
                    t0 + seq as i64 * 1000,
                    format!("worker {worker} entry {seq}"),
                )
            })
            .collect();
        let body = json!({"streams": [{
            "stream": {"job": "durability", "worker": worker.to_string()},
            "values": values.iter().map(|(ts, l)| json!([ts.to_string(), l])).collect::<Vec<_>>(),
        }]});
        let sent = client
            .post(format!("{base}/loki/api/v1/push"))
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                acked.fetch_add(values.len(), Ordering::SeqCst);
                mine.extend(values);
            }
            Ok(r) => panic!("push refused with {}: {:?}", r.status(), r.text().await),
            Err(_) => return mine,
        }
    }
    mine
}

/// Every line of one worker's stream, with its timestamp, via `query_range`.
async fn query_worker(base: &str, worker: usize, start: i64, end: i64) -> Vec<(i64, String)> {
    let resp: Value = reqwest::Client::new()
        .get(format!("{base}/loki/api/v1/query_range"))
        .query(&[
            (
                "query",
                format!(r#"{{job="durability", worker="{worker}"}}"#),
            ),
            ("start", start.to_string()),
            ("end", end.to_string()),
            ("limit", "5000".to_string()),
            ("direction", "forward".to_string()),
        ])
        .send()
        .await
        .expect("query_range request")
        .json()
        .await
        .expect("query_range json");
    assert_eq!(resp["status"], "success", "{resp}");
    let mut out = Vec::new();
    for stream in resp["data"]["result"].as_array().expect("result array") {
        for v in stream["values"].as_array().expect("values array") {
            let ts = v[0].as_str().and_then(|s| s.parse().ok()).expect("ts");
            out.push((ts, v[1].as_str().expect("line").to_string()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_entry_survives_kill_9_exactly_once() {
    let data = tempfile::tempdir().unwrap();
    let mut server = start(data.path()).await;
    let t0 = now_ns() - 60_000_000_000;
    let acked = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(pusher(server.base.clone(), w, t0, acked.clone())))
        .collect();
    let chunks = data.path().join("chunks");
    while acked.load(Ordering::SeqCst) < KILL_AFTER || count_segments(&chunks) == 0 {
        assert!(
            acked.load(Ordering::SeqCst) < WORKERS * MAX_PER_WORKER,
            "pushers finished before any segment was flushed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // SIGKILL while the pushers are still sending.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut acknowledged: HashMap<usize, Vec<(i64, String)>> = HashMap::new();
    for (w, t) in tasks.into_iter().enumerate() {
        acknowledged.insert(w, t.await.unwrap());
    }

    let server = start(data.path()).await;
    let end = now_ns() + 60_000_000_000;
    for w in 0..WORKERS {
        let got = query_worker(&server.base, w, t0 - 1, end).await;
        let mut counts: HashMap<&(i64, String), usize> = HashMap::new();
        for e in &got {
            *counts.entry(e).or_default() += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "worker {w}: entries returned twice: {twice:?}"
        );
        let missing: Vec<_> = acknowledged[&w]
            .iter()
            .filter(|e| !counts.contains_key(e))
            .collect();
        assert!(
            missing.is_empty(),
            "worker {w}: {} acknowledged entries lost, first {:?}",
            missing.len(),
            missing.first()
        );
    }
}
