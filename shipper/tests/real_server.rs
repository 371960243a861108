//! End-to-end with the real server: the real `lode` binary (`lode serve`, embedded
//! defaults) and the real `lode-shipper` binary run as child processes; the shipper tails a
//! fake `/var/log/pods` tree of CRI and Docker files and every check is made by querying
//! the server (`/loki/api/v1/query_range`), not by watching the push requests.
//!
//! Lode drops exact duplicates (same stream, timestamp and line) on its own, so a line the
//! shipper sent twice would still be returned once by a query. Every line written here has
//! a unique text, the query's counts are checked line by line, and the shipper's own
//! `sent_entries_total` (entries acknowledged by the server) is checked as well, because
//! that is what shows a resend the server's dedupe hides.
//!
//! Needs the `lode` binary built next to `lode-shipper` (`cargo build -p lode`, or
//! `cargo nextest run --workspace`); see `common::lode_binary`.

// Test helpers fail the test on any unexpected error, which is what unwrap does.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// Every stream the shipper sends carries `node_name="node-1"`.
const ALL: &str = r#"{node_name="node-1"}"#;
/// The server's default `max_entries_limit_per_query`; the tests write fewer lines.
const LIMIT: usize = 5000;

/// Now, in Unix nanoseconds.
fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap()
}

/// A base timestamp for this test's lines: ten minutes ago, whole seconds. The real
/// server refuses entries older than a week (`reject_old_samples`), so the fixed
/// [`T0`] of the receiver tests would be rejected.
fn recent_base() -> i64 {
    (now_ns() - 600_000_000_000) / 1_000_000_000 * 1_000_000_000
}

/// Everything the server holds for the node, over an hour around `base`.
fn query_all(server: &LodeServer, base: i64) -> Result<Vec<Received>, String> {
    let got = server.query_range(
        ALL,
        base - 3_600_000_000_000,
        now_ns() + 600_000_000_000,
        LIMIT,
    )?;
    assert!(got.len() < LIMIT, "the query hit its limit: page it");
    Ok(got)
}

/// Polls the server until it returns at least `n` entries.
fn wait_for_count(what: &str, server: &LodeServer, shipper: &Shipper, base: i64, n: usize) {
    let last = std::cell::RefCell::new(String::new());
    wait_for(
        what,
        || {
            format!(
                "last query: {}\nshipper log:\n{}\nserver log:\n{}",
                last.borrow(),
                shipper.log_tail(),
                server.log_tail()
            )
        },
        || match query_all(server, base) {
            Ok(got) => {
                *last.borrow_mut() = format!("{} of {n} entries", got.len());
                got.len() >= n
            }
            Err(e) => {
                *last.borrow_mut() = e;
                false
            }
        },
    );
}

fn exp(line: &str, ts: i64, stream: &'static str, labels: &[(String, String)]) -> Expected {
    Expected {
        line: line.to_string(),
        timestamp_ns: ts,
        stream,
        labels: labels.to_vec(),
    }
}

/// The acknowledged entries the shipper counted.
fn sent(shipper: &Shipper) -> f64 {
    shipper.metric("lode_shipper_sent_entries_total")
}

#[test]
fn real_server_gets_cri_docker_partial_rotated_truncated_new_and_deleted_pod_lines_once() {
    let mut node = Node::new();
    let server = LodeServer::start(node.dir.path());
    let t = recent_base();
    let mut expected = Vec::new();

    // CRI with partial lines: a stdout line in three fragments with a stderr line in
    // between; the joined entry carries its first fragment's timestamp.
    let web = node.container_log("shop", "web-7d9f8c6b5d-x2x4z", "uid-web", "nginx");
    let web_labels = pod_labels("shop", "web-7d9f8c6b5d-x2x4z", "nginx", Some("web"));
    append(
        &web,
        &[
            cri(t, "stdout", "F", "GET /index.html 200"),
            cri(t + 10, "stdout", "P", "first-"),
            cri(t + 20, "stderr", "F", "warning: slow upstream"),
            cri(t + 30, "stdout", "P", "second-"),
        ]
        .concat(),
    );
    expected.push(exp("GET /index.html 200", t, "stdout", &web_labels));
    expected.push(exp("warning: slow upstream", t + 20, "stderr", &web_labels));
    // Docker json-file: a 20000-byte line split by Docker at 16 KiB.
    let db = node.container_log("shop", "db-0", "uid-db", "postgres");
    let db_labels = pod_labels("shop", "db-0", "postgres", Some("db"));
    let long = format!("long-docker-line {}", "x".repeat(20_000 - 17));
    let (head, tail) = long.split_at(16_384);
    append(
        &db,
        &[
            docker(t + 100, "stdout", "ready to accept connections\n"),
            docker(t + 110, "stderr", head),
            docker(t + 120, "stderr", &format!("{tail}\n")),
        ]
        .concat(),
    );
    expected.push(exp(
        "ready to accept connections",
        t + 100,
        "stdout",
        &db_labels,
    ));
    expected.push(exp(&long, t + 110, "stderr", &db_labels));
    // Files for copytruncate and pod deletion, with lines before the shipper starts.
    let legacy = node.container_log("legacy", "app-0", "uid-app", "app");
    let legacy_labels = pod_labels("legacy", "app-0", "app", Some("app"));
    expected.extend(write_cri_lines(
        &legacy,
        "legacy-before",
        0..300,
        t + 1_000_000,
        &legacy_labels,
    ));
    let cart = node.container_log("shop", "cart-6f8d7c9b5-bcdfg", "uid-cart", "cart");
    let cart_labels = pod_labels("shop", "cart-6f8d7c9b5-bcdfg", "cart", Some("cart"));
    expected.extend(write_cri_lines(&cart, "cart", 0..20, t, &cart_labels));

    let mut shipper = node.start_shipper(&node.config(&server.push_url(), ""));
    wait_for_count("the lines present at start", &server, &shipper, t, 324);

    // The final CRI fragment arrives in a later write.
    append(&web, &cri(t + 40, "stdout", "F", "third"));
    expected.push(exp("first-second-third", t + 10, "stdout", &web_labels));

    // A pod that appears while the shipper runs.
    let late = node.container_log("batch", "report-28391-q8kzv", "uid-late", "job");
    let late_labels = pod_labels("batch", "report-28391-q8kzv", "job", Some("report-28391"));
    expected.extend(write_cri_lines(
        &late,
        "late",
        0..50,
        t + 2_000_000,
        &late_labels,
    ));

    // Kubelet rotation mid-stream: 0.log renamed to 0.log.<ts> while lines are written,
    // the runtime's last write lands in the renamed file, a new 0.log follows; on the next
    // rotation the previous rotated file is compressed and the uncompressed one unlinked.
    let api = node.container_log("shop", "api-5b7c9d8f6-k2l4m", "uid-api", "api");
    let api_labels = pod_labels("shop", "api-5b7c9d8f6-k2l4m", "api", Some("api"));
    let api_dir = api.parent().unwrap().to_path_buf();
    let mut previous: Option<PathBuf> = None;
    let per_file = 200;
    for round in 0..3 {
        for chunk in 0..4 {
            let from = round * per_file + chunk * (per_file / 4);
            expected.extend(write_cri_lines(
                &api,
                "rot",
                from..from + per_file / 4,
                t + 3_000_000,
                &api_labels,
            ));
            std::thread::sleep(Duration::from_millis(30));
        }
        if let Some(old) = previous.take() {
            let gz = PathBuf::from(format!("{}.gz", old.display()));
            std::fs::copy(&old, &gz).unwrap();
            std::fs::remove_file(&old).unwrap();
        }
        let rotated = api_dir.join(format!("0.log.20240501-10000{round}"));
        std::fs::rename(&api, &rotated).unwrap();
        let tail_line = format!("rot-tail {round}");
        let ts = t + 4_000_000 + round as i64;
        append(&rotated, &cri(ts, "stdout", "F", &tail_line));
        expected.push(exp(&tail_line, ts, "stdout", &api_labels));
        std::fs::File::create(&api).unwrap();
        previous = Some(rotated);
    }

    // copytruncate: lines written just before the copy may not have been read yet; the
    // copy holds them and is read from where the original was, the truncated original
    // from 0.
    expected.extend(write_cri_lines(
        &legacy,
        "legacy-unread",
        300..400,
        t + 1_000_000,
        &legacy_labels,
    ));
    std::fs::copy(&legacy, legacy.with_file_name("0.log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&legacy)
        .unwrap()
        .set_len(0)
        .unwrap();
    expected.extend(write_cri_lines(
        &legacy,
        "legacy-after",
        0..50,
        t + 5_000_000,
        &legacy_labels,
    ));

    // A pod deleted: its last lines are written just before kubelet removes the whole
    // pod log directory and are read through the still-open file.
    expected.extend(write_cri_lines(&cart, "cart", 20..200, t, &cart_labels));
    std::fs::remove_dir_all(cart.parent().unwrap().parent().unwrap()).unwrap();

    wait_for_count("every line", &server, &shipper, t, expected.len());
    wait_until("the deleted pod's file released", &shipper, || {
        shipper.metric("lode_shipper_files_released_total") >= 1.0
    });
    wait_until("every entry acknowledged", &shipper, || {
        sent(&shipper) >= expected.len() as f64
    });
    assert_eq!(shipper.metric("lode_shipper_truncations_total"), 1.0);
    // Acknowledged exactly once each: a re-read (of the copy, a rotated file, the joined
    // partial line) would be an exact duplicate the server drops, visible only here.
    // Settle a little first so a late resend would be counted.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        sent(&shipper),
        expected.len() as f64,
        "entries acknowledged vs written\n{}",
        shipper.metrics()
    );
    shipper.terminate();

    let got = query_all(&server, t).unwrap();
    assert_exactly_once(&got, &expected);
    // The path-derived labels, `stream` and `node_name` from the shipper (no `filename`,
    // no `pod_uid`), plus what the server adds by its defaults: the `service_name` label
    // (`discover_service_name`, from `app` here) and `detected_level` structured metadata
    // (`discover_log_levels`), which a query answered without the `categorize-labels`
    // flag merges into the stream labels, as Loki does.
    let names: BTreeSet<&str> = got
        .iter()
        .flat_map(|r| r.labels.iter().map(|(k, _)| k))
        .collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "app",
            "container",
            "detected_level",
            "job",
            "namespace",
            "node_name",
            "pod",
            "service_name",
            "stream"
        ]
    );
    assert!(got
        .iter()
        .all(|r| r.labels.get("service_name") == r.labels.get("app")));
}

/// How many complete lines `path` holds before the offset the shipper's positions file
/// records for it (0 if none is recorded).
fn lines_before_checkpoint(positions: &Path, path: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(positions) else {
        return 0;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let offset = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str() == path.to_str())
        .and_then(|f| f["offset"].as_u64())
        .unwrap_or(0);
    let bytes = std::fs::read(path).unwrap();
    let offset = usize::try_from(offset).unwrap();
    bytes[..offset].iter().filter(|b| **b == b'\n').count()
}

#[test]
fn real_server_gets_every_line_once_through_a_shipper_sigkill_and_a_server_restart() {
    let mut node = Node::new();
    let mut server = LodeServer::start(node.dir.path());
    let t = recent_base();
    let search = node.container_log("shop", "search-0", "uid-search", "search");
    let search_labels = pod_labels("shop", "search-0", "search", Some("search"));
    let mail = node.container_log("shop", "mail-7c9d8f6b5-q2w4x", "uid-mail", "mail");
    let mail_labels = pod_labels("shop", "mail-7c9d8f6b5-q2w4x", "mail", Some("mail"));
    let config = node.config(&server.push_url(), "");
    let mut expected = Vec::new();

    // Phase 1: SIGKILL while lines are being written and shipped.
    let mut shipper1 = node.start_shipper(&config);
    let mut sent_before_kill = 0.0;
    let mut written_at_kill = 0;
    for chunk in 0..20 {
        expected.extend(write_cri_lines(
            &search,
            "kill",
            chunk * 50..chunk * 50 + 50,
            t,
            &search_labels,
        ));
        if chunk == 5 {
            wait_until("some lines acknowledged", &shipper1, || {
                sent(&shipper1) > 0.0
            });
        }
        if chunk == 10 {
            // Mid-stream: lines acknowledged, the ones just written still being read or
            // batched, more to come.
            sent_before_kill = sent(&shipper1);
            written_at_kill = expected.len();
            shipper1.kill();
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    // What the killed shipper had checkpointed: the restart resumes there. Lines it had
    // acknowledged but not yet checkpointed in the instant before the kill are sent again
    // (documented; the server drops them as exact duplicates).
    let checkpointed = lines_before_checkpoint(&node.positions(), &search);
    let phase1 = expected.len();
    let mut shipper = node.start_shipper(&config);
    wait_for_count(
        "every line after the shipper restart",
        &server,
        &shipper,
        t,
        phase1,
    );
    wait_until("the restarted shipper's acknowledgements", &shipper, || {
        sent(&shipper) >= (phase1 - checkpointed) as f64
    });
    eprintln!(
        "SIGKILL: {written_at_kill} written and {sent_before_kill} acknowledged at the kill \
         (as last seen), {checkpointed} checkpointed, {} sent after the restart, of {phase1}",
        sent(&shipper)
    );
    assert_eq!(
        sent(&shipper),
        (phase1 - checkpointed) as f64,
        "the restart resends exactly what was not checkpointed"
    );
    assert!(
        checkpointed < phase1,
        "the kill happened mid-stream ({checkpointed} of {phase1} checkpointed)"
    );

    // Phase 2: the server stops (SIGTERM) while lines keep being written to a CRI and a
    // Docker file; the shipper retries; the server restarts on the same data dir.
    let sent_before_outage = sent(&shipper);
    server.stop();
    for chunk in 0..10 {
        expected.extend(write_cri_lines(
            &search,
            "outage",
            chunk * 30..chunk * 30 + 30,
            t + 1_000_000_000,
            &search_labels,
        ));
        let mut text = String::new();
        for i in chunk * 10..chunk * 10 + 10 {
            let ts = t + 2_000_000_000 + i as i64 * 1000;
            let line = format!("mail-outage {i:04} queued for delivery");
            text.push_str(&docker(ts, "stderr", &format!("{line}\n")));
            expected.push(exp(&line, ts, "stderr", &mail_labels));
        }
        append(&mail, &text);
        std::thread::sleep(Duration::from_millis(30));
    }
    wait_until("pushes failing while the server is down", &shipper, || {
        shipper.metric("lode_shipper_requests_total{status=\"error\"}") >= 3.0
    });
    server.restart();
    expected.extend(write_cri_lines(
        &search,
        "after",
        0..100,
        t + 3_000_000_000,
        &search_labels,
    ));
    wait_for_count(
        "every line after the server restart",
        &server,
        &shipper,
        t,
        expected.len(),
    );
    let phase2 = expected.len() - phase1;
    wait_until("phase 2 acknowledged", &shipper, || {
        sent(&shipper) - sent_before_outage >= phase2 as f64
    });
    assert!(shipper.metric("lode_shipper_retries_total") >= 3.0);
    // Settle a little so a late resend would be counted.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        sent(&shipper) - sent_before_outage,
        phase2 as f64,
        "entries acknowledged through the outage vs written\n{}",
        shipper.metrics()
    );
    shipper.terminate();

    // What the restarted server returns: the lines acknowledged before its stop (from its
    // data dir) and after, each once.
    let got = query_all(&server, t).unwrap();
    assert_exactly_once(&got, &expected);
}
