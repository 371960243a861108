//! The `lode` binary as an operator runs it: config files, env expansion, flags, SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};

use parking_lot::Mutex;
use std::time::Duration;

use common::{entry, now_ns, request};

/// A `lode serve` child process and everything it has logged.
struct Lode {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

fn lode() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lode"))
}

/// Starts `lode` with `args` and waits until it logs its bound address.
fn spawn(mut cmd: Command) -> Lode {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "info")
        .spawn()
        .expect("spawn lode");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let sink = log.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line
                .split("lode is listening addr=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
            {
                let _ = tx.send(addr.to_string());
            }
            let mut l = sink.lock();
            l.push_str(&line);
            l.push('\n');
        }
    });
    // A guard against a hung start, not a speed expectation.
    let addr = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => addr,
        Err(_) => {
            let _ = child.kill();
            panic!("lode did not start:\n{}", log.lock());
        }
    };
    Lode {
        child,
        url: format!("http://{addr}"),
        log,
        reader: Some(reader),
    }
}

impl Lode {
    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn wait(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().expect("wait");
        // The pipe closed with the process: the reader ends after its last line.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let log = self.log.lock().clone();
        (status, log)
    }
}

impl Drop for Lode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn an_unknown_key_in_the_config_file_is_refused_with_its_name_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lode.yaml");
    std::fs::write(
        &file,
        "server:\n  http_listen_port: 3100\nlimits_config:\n  max_line_sise: 1KB\n",
    )
    .unwrap();
    let out = lode()
        .args(["serve", "--config.file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_line_sise"), "{err}");
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("lode.yaml"), "{err}");
}

#[test]
fn an_invalid_value_names_the_key_to_change_with_lokis_flag_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lode.yaml");
    std::fs::write(&file, "limits_config:\n  ingestion_rate_mb: -1\n").unwrap();
    let out = lode()
        .args(["serve", "-config.expand-env=true", "-config.file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ingestion_rate_mb"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_expansion_and_flags_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lode.yaml");
    let data = dir.path().join("from-flag");
    std::fs::write(
        &file,
        "server:\n  http_listen_port: 1\n\
         common:\n  path_prefix: /nonexistent/from-file\n\
         limits_config:\n  max_line_size: ${LODE_TEST_MAX_LINE}\n  retention_period: ${LODE_TEST_UNSET:-48h}\n",
    )
    .unwrap();
    let mut cmd = lode();
    cmd.args([
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--config.expand-env",
    ])
    .args([
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .env("LODE_TEST_MAX_LINE", "12KB")
    .env_remove("LODE_TEST_UNSET");
    let server = spawn(cmd);
    let config = reqwest::get(format!("{}/config", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(config.contains("max_line_size: 12KB"), "{config}");
    assert!(config.contains("retention_period: 48h"), "{config}");
    assert!(
        config.contains(&format!("path_prefix: {}", data.display())),
        "{config}"
    );
    assert!(
        config.contains("http_listen_address: 127.0.0.1"),
        "{config}"
    );
    assert!(data.join("wal").is_dir());
    server.sigterm();
    let (status, log) = server.wait();
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_after_flushing_what_was_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = lode();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path());
    let server = spawn(cmd);
    let req = request(vec![(r#"{app="term"}"#, vec![entry(now_ns(), "keep me")])]);
    let r = reqwest::Client::new()
        .post(format!("{}/loki/api/v1/push", server.url))
        .body(lode_push::encode_protobuf_snappy(&req))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert!(files_under(&dir.path().join("chunks")).is_empty());

    server.sigterm();
    let (status, log) = server.wait();
    assert!(status.success(), "exit {status:?}\n{log}");
    assert!(log.contains("shutdown complete"), "{log}");
    let segments = files_under(&dir.path().join("chunks"));
    assert_eq!(segments.len(), 1, "{segments:?}\n{log}");
    let bytes = std::fs::read(&segments[0]).unwrap();
    assert!(
        bytes.windows(b"app".len()).any(|w| w == b"app"),
        "segment holds the stream's labels"
    );
}

#[test]
fn rules_check_reports_unreadable_files() {
    let out = lode()
        .args(["rules", "check", "/nonexistent/rules.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FAILED"), "{err}");
    assert!(err.contains("cannot read rule file"), "{err}");
}

/// The server turns transparent huge pages off for itself (mimalloc would otherwise get
/// 2 MiB pages, each zeroed whole at its first touch). Read from the kernel's own view of
/// the process, where the kernel shows it.
#[cfg(target_os = "linux")]
#[test]
fn the_server_runs_without_transparent_huge_pages() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = lode();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path());
    let server = spawn(cmd);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) else {
        eprintln!("this kernel does not show THP_enabled in /proc/PID/status; nothing to check");
        return;
    };
    assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
}
