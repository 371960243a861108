//! End-to-end: the real `lode-shipper` binary tails a fake `/var/log/pods` tree and pushes
//! to a recording receiver; each test checks that every line written arrives exactly once
//! with the right labels and the runtime's timestamp, through rotation, truncation, pods
//! coming and going, crashes and server outages.

// Test helpers fail the test on any unexpected error, which is what unwrap does.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

#[test]
fn cri_and_docker_files_with_partial_lines_arrive_once_with_labels_and_runtime_timestamps() {
    let mut node = Node::new();
    let rx = Receiver::start();
    let web = node.container_log("shop", "web-7d9f8c6b5d-x2x4z", "uid-web", "nginx");
    let db = node.container_log("shop", "db-0", "uid-db", "postgres");
    let web_labels = pod_labels("shop", "web-7d9f8c6b5d-x2x4z", "nginx", Some("web"));
    let db_labels = pod_labels("shop", "db-0", "postgres", Some("db"));
    let mut expected = Vec::new();

    // CRI: a stdout line split in three fragments with a stderr line in between; the
    // joined entry carries its first fragment's timestamp.
    let t = T0;
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
    // Docker json-file (dockershim layout): a 20000-byte line split at 16 KiB.
    let long: String = "x".repeat(20_000);
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

    let mut shipper = node.start_shipper(&node.config(&rx.url(), ""));
    wait_until("the first four entries", &shipper, || rx.count() >= 4);

    // The final fragment arrives in a later write.
    append(&web, &cri(t + 40, "stdout", "F", "third"));
    expected.push(exp("first-second-third", t + 10, "stdout", &web_labels));

    // A pod that appears while the shipper runs.
    let late = node.container_log("batch", "report-28391-q8kzv", "uid-late", "job");
    let late_labels = pod_labels("batch", "report-28391-q8kzv", "job", Some("report-28391"));
    expected.extend(write_cri_lines(
        &late,
        "late",
        0..50,
        t + 1000,
        &late_labels,
    ));
    wait_until("all lines", &shipper, || rx.count() >= expected.len());
    shipper.terminate();

    let got = rx.entries();
    assert_exactly_once(&got, &expected);
    // Only the path-derived labels, `stream` and `node_name`: no `filename`, no `pod_uid`.
    let names: std::collections::BTreeSet<&str> = got
        .iter()
        .flat_map(|r| r.labels.iter().map(|(k, _)| k))
        .collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "app",
            "container",
            "job",
            "namespace",
            "node_name",
            "pod",
            "stream"
        ]
    );
    assert!(
        got.iter().all(|r| r.tenant.is_empty()),
        "no tenant configured"
    );
}

#[test]
fn kubelet_rotation_mid_stream_loses_and_duplicates_nothing() {
    let mut node = Node::new();
    let rx = Receiver::start();
    let log = node.container_log("shop", "api-5b7c9d8f6-k2l4m", "uid-api", "api");
    let labels = pod_labels("shop", "api-5b7c9d8f6-k2l4m", "api", Some("api"));
    let shipper = node.start_shipper(&node.config(&rx.url(), ""));

    // Kubelet: rename 0.log to 0.log.<ts>, the runtime reopens a new 0.log; on the next
    // rotation the previous rotated file is compressed and the uncompressed one unlinked.
    let dir = log.parent().unwrap().to_path_buf();
    let mut expected = Vec::new();
    let mut previous: Option<std::path::PathBuf> = None;
    let per_file = 400;
    for round in 0..5 {
        for chunk in 0..8 {
            let from = round * per_file + chunk * (per_file / 8);
            expected.extend(write_cri_lines(
                &log,
                "rot",
                from..from + per_file / 8,
                T0,
                &labels,
            ));
            std::thread::sleep(Duration::from_millis(30));
        }
        if let Some(old) = previous.take() {
            let gz = Path::new(&format!("{}.gz", old.display())).to_path_buf();
            std::fs::copy(&old, &gz).unwrap();
            std::fs::remove_file(&old).unwrap();
        }
        let rotated = dir.join(format!("0.log.20240501-10000{round}"));
        std::fs::rename(&log, &rotated).unwrap();
        // The runtime's last write before it reopens goes to the renamed file.
        let tail_line = format!("rot-tail {round}");
        append(
            &rotated,
            &cri(T0 + 5_000_000 + round as i64, "stdout", "F", &tail_line),
        );
        expected.push(exp(
            &tail_line,
            T0 + 5_000_000 + round as i64,
            "stdout",
            &labels,
        ));
        std::fs::File::create(&log).unwrap();
        previous = Some(rotated);
    }
    wait_until("all rotated lines", &shipper, || {
        rx.count() >= expected.len()
    });
    let mut shipper = shipper;
    shipper.terminate();
    assert_exactly_once(&rx.entries(), &expected);
}

#[test]
fn copy_truncate_rotation_resumes_in_the_copy_and_rereads_the_truncated_file() {
    let mut node = Node::new();
    let rx = Receiver::start();
    let log = node.container_log("legacy", "app-0", "uid-app", "app");
    let labels = pod_labels("legacy", "app-0", "app", Some("app"));
    let mut expected = write_cri_lines(&log, "before", 0..300, T0, &labels);
    let mut shipper = node.start_shipper(&node.config(&rx.url(), ""));
    wait_until("lines before the copy", &shipper, || rx.count() >= 300);

    // logrotate copytruncate: lines written just before the copy may not have been read
    // yet; the copy holds them and is read from where the original was.
    expected.extend(write_cri_lines(&log, "unread", 300..400, T0, &labels));
    let copy = log.with_file_name("0.log.1");
    std::fs::copy(&log, &copy).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    expected.extend(write_cri_lines(
        &log,
        "after",
        0..50,
        T0 + 1_000_000,
        &labels,
    ));
    wait_until("all lines", &shipper, || rx.count() >= expected.len());
    assert_eq!(shipper.metric("lode_shipper_truncations_total"), 1.0);
    shipper.terminate();
    assert_exactly_once(&rx.entries(), &expected);
}

#[test]
fn a_deleted_pod_is_drained_and_other_pods_keep_flowing() {
    let mut node = Node::new();
    let rx = Receiver::start();
    let gone = node.container_log("shop", "cart-6f8d7c9b5-bcdfg", "uid-cart", "cart");
    let stays = node.container_log("shop", "web-0", "uid-web0", "web");
    let gone_labels = pod_labels("shop", "cart-6f8d7c9b5-bcdfg", "cart", Some("cart"));
    let stays_labels = pod_labels("shop", "web-0", "web", Some("web"));
    let mut expected = write_cri_lines(&gone, "cart", 0..20, T0, &gone_labels);
    let mut shipper = node.start_shipper(&node.config(&rx.url(), ""));
    wait_until("the pod's first lines", &shipper, || rx.count() >= 20);

    // Kubelet removes the whole pod log directory; the last lines were written just
    // before and are read through the still-open file.
    expected.extend(write_cri_lines(&gone, "cart", 20..200, T0, &gone_labels));
    std::fs::remove_dir_all(gone.parent().unwrap().parent().unwrap()).unwrap();
    expected.extend(write_cri_lines(&stays, "web", 0..100, T0, &stays_labels));
    wait_until("all lines", &shipper, || rx.count() >= expected.len());
    wait_until("the deleted file is released", &shipper, || {
        shipper.metric("lode_shipper_files_released_total") >= 1.0
            && shipper.metric("lode_shipper_open_files") == 1.0
    });
    shipper.terminate();
    assert_exactly_once(&rx.entries(), &expected);
}

#[test]
fn sigkill_while_the_server_fails_resends_only_unacknowledged_lines_after_restart() {
    let mut node = Node::new();
    let rx = Receiver::start();
    let log = node.container_log("shop", "pay-0", "uid-pay", "pay");
    let labels = pod_labels("shop", "pay-0", "pay", Some("pay"));
    let config = node.config(&rx.url(), "");
    let mut expected = write_cri_lines(&log, "acked", 0..300, T0, &labels);
    let mut shipper = node.start_shipper(&config);
    wait_until("acknowledged lines", &shipper, || rx.count() >= 300);

    // The server fails; these lines are read and retried but never acknowledged.
    rx.set_status(500);
    expected.extend(write_cri_lines(&log, "unacked", 300..600, T0, &labels));
    wait_until("retries of the unacknowledged batch", &shipper, || {
        rx.answered(500) >= 3
    });
    shipper.kill();

    rx.set_status(204);
    expected.extend(write_cri_lines(&log, "later", 600..700, T0, &labels));
    let mut shipper = node.start_shipper(&config);
    wait_until("all lines after the restart", &shipper, || {
        rx.count() >= expected.len()
    });
    shipper.terminate();
    assert_exactly_once(&rx.entries(), &expected);
}

#[test]
fn sigkill_mid_stream_loses_nothing() {
    let mut node = Node::new();
    let rx = Receiver::start();
    let log = node.container_log("shop", "search-0", "uid-search", "search");
    let labels = pod_labels("shop", "search-0", "search", Some("search"));
    let config = node.config(&rx.url(), "");
    let mut shipper = node.start_shipper(&config);
    let mut expected = Vec::new();
    for chunk in 0..20 {
        expected.extend(write_cri_lines(
            &log,
            "s",
            chunk * 50..chunk * 50 + 50,
            T0,
            &labels,
        ));
        std::thread::sleep(Duration::from_millis(15));
        if chunk == 10 {
            shipper.kill();
        }
    }
    let mut shipper2 = node.start_shipper(&config);
    wait_until("all lines after the restart", &shipper2, || {
        let got = rx.entries();
        let distinct: std::collections::HashSet<&str> =
            got.iter().map(|r| r.line.as_str()).collect();
        distinct.len() >= expected.len()
    });
    shipper2.terminate();
    drop(shipper);
    // A batch the server acknowledged in the instant before SIGKILL, whose offset was not
    // yet written, is sent again; Lode drops such exact duplicates (same stream,
    // timestamp and line), so compare after doing the same.
    let mut seen = std::collections::HashSet::new();
    let got: Vec<Received> = rx
        .entries()
        .into_iter()
        .filter(|r| seen.insert((r.labels.to_string(), r.timestamp_ns, r.line.clone())))
        .collect();
    assert_exactly_once(&got, &expected);
}

#[test]
fn a_server_outage_and_throttling_are_retried_until_everything_arrives() {
    let mut node = Node::new();
    let mut rx = Receiver::start();
    let log = node.container_log("shop", "mail-0", "uid-mail", "mail");
    let labels = pod_labels("shop", "mail-0", "mail", Some("mail"));
    let mut shipper = node.start_shipper(&node.config(&rx.url(), ""));

    rx.set_status(429);
    let mut expected = write_cri_lines(&log, "throttled", 0..100, T0, &labels);
    wait_until("throttled pushes", &shipper, || rx.answered(429) >= 2);
    rx.set_status(204);
    wait_until("throttled lines", &shipper, || rx.count() >= 100);

    rx.stop();
    expected.extend(write_cri_lines(&log, "outage", 100..400, T0, &labels));
    wait_until("connection errors", &shipper, || {
        shipper.metric("lode_shipper_requests_total{status=\"error\"}") >= 3.0
    });
    rx.restart();
    wait_until("all lines after the outage", &shipper, || {
        rx.count() >= expected.len()
    });
    assert!(shipper.metric("lode_shipper_retries_total") >= 5.0);
    shipper.terminate();
    assert_exactly_once(&rx.entries(), &expected);
}

#[test]
fn rejected_batches_are_dropped_counted_and_not_resent_after_restart() {
    let mut node = Node::new();
    let rx = Receiver::start();
    let log = node.container_log("shop", "old-0", "uid-old", "old");
    let labels = pod_labels("shop", "old-0", "old", Some("old"));
    let config = node.config(&rx.url(), "");
    let mut shipper = node.start_shipper(&config);

    rx.set_status(400);
    let _rejected = write_cri_lines(&log, "rejected", 0..40, T0, &labels);
    wait_until("the rejected lines counted", &shipper, || {
        shipper.metric("lode_shipper_dropped_entries_total{reason=\"bad_request\"}") >= 40.0
    });
    assert_eq!(
        shipper.metric("lode_shipper_retries_total"),
        0.0,
        "a 400 is not retried"
    );
    rx.set_status(204);
    let mut expected = write_cri_lines(&log, "accepted", 40..80, T0, &labels);
    wait_until("accepted lines", &shipper, || rx.count() >= 40);
    shipper.terminate();

    // Dropped lines count as handled: a restart neither resends them nor the others.
    expected.extend(write_cri_lines(&log, "restarted", 80..90, T0, &labels));
    let mut shipper = node.start_shipper(&config);
    wait_until("lines after the restart", &shipper, || {
        rx.count() >= expected.len()
    });
    shipper.terminate();
    assert_exactly_once(&rx.entries(), &expected);
}

#[test]
fn bad_input_is_shipped_or_counted_without_losing_the_lines_around_it() {
    let mut node = Node::new();
    let rx = Receiver::start();
    let log = node.container_log("shop", "noisy-0", "uid-noisy", "noisy");
    // A corrupt positions file must not stop the shipper.
    std::fs::create_dir_all(node.positions().parent().unwrap()).unwrap();
    std::fs::write(node.positions(), b"\x00\x01 not json").unwrap();

    let mut raw: Vec<u8> = Vec::new();
    raw.extend(cri(T0, "stdout", "F", "good before").as_bytes());
    raw.extend(b"this is not a CRI line\n");
    raw.extend(format!("{} stdout\n", rfc3339_nano(T0 + 2)).as_bytes());
    raw.extend(b"\xff\xfe invalid utf-8\n");
    raw.extend(cri(T0 + 3, "stdout", "F", &"L".repeat(10 << 20)).as_bytes());
    raw.extend(b"\x00\x01\x02\x03binary\x7f\n");
    raw.extend(cri(T0 + 4, "stdout", "F", "good after").as_bytes());
    std::fs::write(&log, &raw).unwrap();

    let mut shipper = node.start_shipper(&node.config(&rx.url(), ""));
    wait_until("the good line after the bad ones", &shipper, || {
        rx.entries().iter().any(|r| r.line == "good after")
    });
    assert_eq!(shipper.metric("lode_shipper_positions_corrupt_total"), 1.0);
    assert_eq!(shipper.metric("lode_shipper_truncated_lines_total"), 1.0);
    assert!(
        shipper.metric("lode_shipper_malformed_lines_total{format=\"cri\"}") >= 4.0,
        "{}",
        shipper.metrics()
    );
    shipper.terminate();

    let got = rx.entries();
    let find = |pred: &dyn Fn(&Received) -> bool| got.iter().filter(|r| pred(r)).count();
    assert_eq!(
        find(&|r| r.line == "good before" && r.timestamp_ns == T0),
        1
    );
    assert_eq!(
        find(&|r| r.line == "good after" && r.timestamp_ns == T0 + 4),
        1
    );
    // Malformed lines are shipped verbatim on the file's last stream.
    assert_eq!(find(&|r| r.line == "this is not a CRI line"), 1);
    assert_eq!(find(&|r| r.line == "\u{fffd}\u{fffd} invalid utf-8"), 1);
    // The 10 MiB line is cut to pipeline.max_line_size (256 KiB by default).
    assert_eq!(
        find(&|r| r.line.starts_with("LLL") && r.line.len() == 256 << 10),
        1
    );
    assert!(got.iter().all(|r| r.labels.get("pod") == Some("noisy-0")));
    assert_eq!(
        got.len(),
        7,
        "{:?}",
        got.iter()
            .map(|r| &r.line[..r.line.len().min(30)])
            .collect::<Vec<_>>()
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

#[test]
fn the_disk_buffer_keeps_lines_through_an_outage_a_crash_and_deleted_logs() {
    let mut node = Node::new();
    let mut rx = Receiver::start();
    let spool_dir = node.dir.path().join("state/buffer");
    let config = node.config(
        &rx.url(),
        &format!(
            "  disk_buffer:\n    path: {}\n    max_size_bytes: 10485760",
            spool_dir.display()
        ),
    );
    let gone = node.container_log("shop", "tmp-0", "uid-tmp", "tmp");
    let stays = node.container_log("shop", "web-0", "uid-web", "web");
    let gone_labels = pod_labels("shop", "tmp-0", "tmp", Some("tmp"));
    let stays_labels = pod_labels("shop", "web-0", "web", Some("web"));
    let mut shipper = node.start_shipper(&config);

    rx.stop();
    let mut expected = write_cri_lines(&gone, "gone", 0..300, T0, &gone_labels);
    expected.extend(write_cri_lines(&stays, "stays", 0..100, T0, &stays_labels));
    wait_until("every line written to the disk buffer", &shipper, || {
        shipper.metric("lode_shipper_spooled_entries_total") >= 400.0
    });
    assert!(shipper.metric("lode_shipper_disk_buffer_batches") >= 1.0);
    // A crash, and the pod's logs deleted meanwhile: its lines now exist only on disk
    // in the buffer. The other file's offsets were committed when it was spooled, so it
    // is not read again.
    shipper.kill();
    std::fs::remove_dir_all(gone.parent().unwrap().parent().unwrap()).unwrap();
    rx.restart();
    let mut shipper = node.start_shipper(&config);
    wait_until("the buffered lines", &shipper, || {
        rx.count() >= expected.len()
    });
    wait_until("the buffer drained", &shipper, || {
        shipper.metric("lode_shipper_disk_buffer_batches") == 0.0
    });
    shipper.terminate();
    assert_exactly_once(&rx.entries(), &expected);
    let left: Vec<_> = std::fs::read_dir(&spool_dir).unwrap().collect();
    assert!(left.is_empty(), "sent batches are deleted: {left:?}");
}

#[test]
fn a_full_disk_buffer_drops_the_oldest_batches_and_counts_them() {
    let mut node = Node::new();
    let mut rx = Receiver::start();
    let config = node
        .config(
            &rx.url(),
            &format!(
                "  disk_buffer:\n    path: {}\n    max_size_bytes: 4096",
                node.dir.path().join("state/buffer").display()
            ),
        )
        .replace("batch_size: 65536", "batch_size: 1024");
    let log = node.container_log("shop", "chatty-0", "uid-chatty", "chatty");
    let labels = pod_labels("shop", "chatty-0", "chatty", Some("chatty"));
    let mut shipper = node.start_shipper(&config);
    rx.stop();
    let mut written = Vec::new();
    for chunk in 0..20 {
        written.extend(write_cri_lines(
            &log,
            "c",
            chunk * 20..chunk * 20 + 20,
            T0,
            &labels,
        ));
        std::thread::sleep(Duration::from_millis(10));
    }
    let dropped = "lode_shipper_dropped_entries_total{reason=\"buffer_full\"}";
    wait_until("all lines spooled or dropped", &shipper, || {
        shipper.metric("lode_shipper_spooled_entries_total") >= 400.0
    });
    let lost = shipper.metric(dropped) as usize;
    assert!(lost > 0, "a 4 KiB buffer cannot hold 400 lines");
    rx.restart();
    wait_until("the kept lines", &shipper, || {
        rx.count() + lost >= written.len()
    });
    wait_until("the buffer drained", &shipper, || {
        shipper.metric("lode_shipper_disk_buffer_batches") == 0.0
    });
    shipper.terminate();
    // What survived is the newest part, each line once; exactly the counted ones are lost.
    let kept = written.split_off(lost);
    assert_exactly_once(&rx.entries(), &kept);
}

#[test]
fn pods_whose_logs_start_with_the_same_bytes_are_all_shipped() {
    // Replicas starting in the same instant write identical first lines; only a copy
    // in the same directory (copytruncate) may be mistaken for its original.
    let mut node = Node::new();
    let rx = Receiver::start();
    let mut text = String::new();
    for i in 0..50 {
        text.push_str(&cri(
            T0,
            "stdout",
            "F",
            &format!("same line {i:03} of a replica's banner"),
        ));
    }
    for r in 0..3 {
        append(
            &node.container_log("shop", &format!("web-{r}"), &format!("uid-{r}"), "web"),
            &text,
        );
    }
    let mut shipper = node.start_shipper(&node.config(&rx.url(), ""));
    wait_until("every replica's lines", &shipper, || rx.count() >= 150);
    shipper.terminate();
    let got = rx.entries();
    for r in 0..3 {
        let pod = format!("web-{r}");
        let lines: Vec<&str> = got
            .iter()
            .filter(|e| e.labels.get("pod") == Some(pod.as_str()))
            .map(|e| e.line.as_str())
            .collect();
        assert_eq!(lines.len(), 50, "{pod}");
        assert_eq!(lines.first(), Some(&"same line 000 of a replica's banner"));
    }
    assert_eq!(got.len(), 150);
}
