//! Shared pieces of the ruler's integration tests: a `ruler:` config block for
//! `TestServer`, rule files on disk, polling with a deadline, log lines with a given
//! 5xx share, and real Prometheus / Alertmanager processes on loopback.
//!
//! Owns starting and killing those child processes and finding free ports. It does not
//! own assertions (each `tests/ruler_*.rs` says what a user should see) nor the Lode
//! server harness (`tests/common`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A directory with `rules/<tenant>/` files and the ruler's scratch space.
pub struct RuleDirs {
    pub dir: tempfile::TempDir,
}

impl RuleDirs {
    pub fn new() -> RuleDirs {
        RuleDirs {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn rules(&self) -> PathBuf {
        self.dir.path().join("rules")
    }

    /// Writes `rules/<tenant>/<namespace>` with `text`.
    pub fn write(&self, tenant: &str, namespace: &str, text: &str) {
        let dir = self.rules().join(tenant);
        std::fs::create_dir_all(&dir).expect("rules dir");
        std::fs::write(dir.join(namespace), text).expect("write rule file");
    }

    /// The `ruler:` block: enabled, 1s evaluation and reload, `extra` lines appended
    /// (each indented by two spaces, e.g. `  alertmanager_url: http://...`).
    pub fn config(&self, extra: &str) -> String {
        format!(
            "ruler:\n  enabled: true\n  storage: {{type: local, local: {{directory: {rules}}}}}\n  rule_path: {scratch}\n  evaluation_interval: 1s\n  poll_interval: 1s\n  resend_delay: 1s\n{extra}\n",
            rules = self.rules().display(),
            scratch = self.dir.path().join("scratch").display(),
        )
    }
}

/// Polls `f` every 200 ms until it returns `Some` or `timeout` passes; then panics
/// with `what` and the last observation.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A JSON push body of `n` lines for `{app="<app>"}` ending now, one per 10 ms, where
/// every `error_every`-th line has status 500 (0 = none) and the rest 200.
pub fn access_log_push(app: &str, n: usize, error_every: usize, now_ns: i64) -> Value {
    let values: Vec<Value> = (0..n)
        .map(|i| {
            let status = if error_every > 0 && i % error_every == 0 {
                500
            } else {
                200
            };
            let ts = now_ns - ((n - i) as i64) * 10_000_000;
            let line =
                json!({"status": status, "path": "/api/items", "duration": 0.05}).to_string();
            json!([ts.to_string(), line])
        })
        .collect();
    json!({"streams": [{"stream": {"app": app}, "values": values}]})
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A child process killed when dropped, with its stderr kept in a file for failures.
pub struct Daemon {
    child: Child,
    pub url: String,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// The daemon's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts `binary` with `args`, then waits until `GET <url>/-/ready` answers 200.
    pub async fn start(binary: &str, args: Vec<String>, port: u16, dir: &Path) -> Daemon {
        assert!(
            Path::new(binary).exists(),
            "{binary} is missing: run scripts/test.sh, which installs the Debian packages \
             prometheus and prometheus-alertmanager the ruler's end-to-end tests use"
        );
        let log = dir.join(format!(
            "{}.log",
            Path::new(binary)
                .file_name()
                .map_or("daemon".into(), |n| n.to_string_lossy())
        ));
        let file = std::fs::File::create(&log).expect("daemon log file");
        let child = Command::new(binary)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let daemon = Daemon {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let client = reqwest::Client::new();
        let ready = format!("{}/-/ready", daemon.url);
        eventually(
            &format!("{binary} to be ready"),
            Duration::from_secs(20),
            || async {
                match client.get(&ready).send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("{} {}", r.status(), daemon.log())),
                    Err(e) => Err(format!("{e} {}", daemon.log())),
                }
            },
        )
        .await;
        daemon
    }

    /// `prometheus-alertmanager` on a free loopback port, gossip off, grouping waits of
    /// one second so alerts show up at once.
    pub async fn alertmanager(dir: &Path) -> Daemon {
        let port = free_port();
        let config = dir.join("am.yml");
        std::fs::write(
            &config,
            "route: {receiver: 'null', group_by: [alertname], group_wait: 1s, group_interval: 1s, repeat_interval: 1h}\nreceivers:\n  - name: 'null'\n",
        )
        .expect("write am config");
        let storage = dir.join("am-data");
        Daemon::start(
            "/usr/bin/prometheus-alertmanager",
            vec![
                format!("--config.file={}", config.display()),
                format!("--storage.path={}", storage.display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--cluster.listen-address=".to_string(),
            ],
            port,
            dir,
        )
        .await
    }

    /// `prometheus` with the remote-write receiver on a free loopback port, scraping
    /// nothing.
    pub async fn prometheus(dir: &Path) -> Daemon {
        let port = free_port();
        let config = dir.join("prom.yml");
        std::fs::write(&config, "global: {scrape_interval: 1h}\n").expect("write prom config");
        let storage = dir.join("prom-data");
        Daemon::start(
            "/usr/bin/prometheus",
            vec![
                format!("--config.file={}", config.display()),
                format!("--storage.tsdb.path={}", storage.display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--web.enable-remote-write-receiver".to_string(),
            ],
            port,
            dir,
        )
        .await
    }
}

/// The sum of the samples of an OpenMetrics exposition whose line starts with `name`
/// and contains `label_fragment` (e.g. `tenant="fake"`; empty matches every series).
pub fn metric_sum(exposition: &str, name: &str, label_fragment: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l.contains(label_fragment))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}
