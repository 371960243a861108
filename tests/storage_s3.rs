//! Segments on an S3-compatible store: moto's S3 server on loopback stands in for AWS,
//! MinIO or Ceph. The ingester writes segments there; a fresh `Storage` opened on the same
//! bucket finds them and reads the entries back, and retention deletes them there.
//!
//! moto comes from `scripts/test.sh` (`pip install moto[server]`); without it this test
//! fails and says so rather than passing without testing anything.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use lode::clock::{Clock, ManualClock};
use lode::ingester::{Ingester, IngesterConfig};
use lode::limits::{Limits, LimitsConfig};
use lode::retention::{CompactorConfig, Retention};
use lode::storage::{AwsConfig, Storage, StorageConfig};
use lode::TenantId;
use lode_push::{Entry, LabelSet};

/// 2026-01-01T12:00:00Z.
const T0: i64 = 1_767_268_800_000_000_000;

/// The moto server process; killed when the test ends, pass or fail.
struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_moto() -> Moto {
    let import = Command::new("python3")
        .args(["-c", "import moto.server"])
        .status();
    assert!(
        import.is_ok_and(|s| s.success()),
        "python3 cannot import moto: run scripts/test.sh, which installs moto[server] \
         (pip install 'moto[server]') as CI does"
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("pick a free loopback port")
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn python3 -m moto.server");
    let moto = Moto { child, port };
    // Wait for it to listen; the bound only keeps a broken install from hanging CI.
    for _ in 0..600 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return moto;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("moto server did not listen on 127.0.0.1:{port} within 30s");
}

fn s3_config(port: u16, bucket: &str) -> StorageConfig {
    StorageConfig {
        aws: Some(AwsConfig {
            endpoint: format!("http://127.0.0.1:{port}"),
            bucketnames: bucket.into(),
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
            region: "us-east-1".into(),
            s3forcepathstyle: true,
            insecure: true,
        }),
        ..StorageConfig::default()
    }
}

fn entries(n: i64) -> Vec<Entry> {
    (0..n)
        .map(|i| Entry {
            timestamp_ns: T0 + i,
            line: format!("request {i} served"),
            structured_metadata: vec![("trace_id".into(), format!("t{i}"))].into(),
        })
        .collect()
}

#[tokio::test]
async fn segments_written_to_s3_are_found_and_read_after_reopen() {
    let moto = start_moto();
    let created = reqwest::Client::new()
        .put(format!("http://127.0.0.1:{}/lode-chunks", moto.port))
        .send()
        .await
        .unwrap();
    assert!(
        created.status().is_success(),
        "create bucket: {}",
        created.status()
    );

    let clock = Arc::new(ManualClock::new(T0));
    let cfg = s3_config(moto.port, "lode-chunks");
    let tenant = TenantId::new("team-a").unwrap();
    let labels = LabelSet::parse(r#"{app="api", env="prod"}"#).unwrap();
    let wal = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(&cfg, clock.clone()).await.unwrap();
        let ingester = Ingester::open(
            IngesterConfig::default(),
            wal.path().to_path_buf(),
            storage.clone(),
        )
        .await
        .unwrap();
        let out = ingester
            .push(&tenant, vec![(labels.clone(), entries(100))])
            .await
            .unwrap();
        assert_eq!(out.accepted_entries, 100);
        ingester.flush_all().await.unwrap();
    }

    let storage = Storage::open(&cfg, clock.clone()).await.unwrap();
    let segments = storage.segments(&tenant);
    assert_eq!(segments.len(), 1);
    assert!(segments[0].path.as_ref().starts_with("team-a/2026-01-01/"));
    let streams = storage.index().streams(&tenant, &[], T0, T0 + 100);
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0].labels, labels);
    let mut got = Vec::new();
    for sc in storage
        .index()
        .segment_chunks(&tenant, streams[0].id, T0, T0 + 100)
    {
        for block in &sc.info().unwrap().blocks {
            got.extend(
                storage
                    .read_block(&sc.segment, block)
                    .await
                    .unwrap()
                    .iter()
                    .cloned(),
            );
        }
    }
    assert_eq!(got, entries(100));

    // Retention deletes the object from the bucket, as a third open confirms.
    let retention = Retention::new(
        CompactorConfig::default(),
        storage.clone(),
        Arc::new(Limits::new(LimitsConfig::default())),
    )
    .unwrap();
    clock.set(T0 + 745 * 3_600_000_000_000);
    let stats = retention.run_once(clock.now_ns()).await.unwrap();
    assert_eq!(stats.deleted_segments, 1);
    let storage = Storage::open(&cfg, clock.clone()).await.unwrap();
    assert!(storage.segments(&tenant).is_empty());
}
