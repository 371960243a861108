//! Push wire formats over HTTP: what Promtail, Alloy and JSON shippers send is stored.

mod common;

use std::io::Write;

use common::{entry, now_ns, request, TestServer};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_snappy_push_is_stored_and_answered_204() {
    let s = TestServer::start("").await;
    let t = now_ns();
    let req = request(vec![(
        r#"{app="api", env="prod"}"#,
        vec![entry(t, "GET /users 200"), entry(t + 1, "GET /users 500")],
    )]);
    let (status, body) = s.push(None, &req).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        s.head_lines("fake", r#"{app="api",env="prod"}"#),
        vec!["GET /users 200", "GET /users 500"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_without_content_type_is_still_decoded() {
    let s = TestServer::start("").await;
    let req = request(vec![(r#"{app="api"}"#, vec![entry(now_ns(), "no header")])]);
    let (status, body) = s
        .push_raw(None, &[], lode_push::encode_protobuf_snappy(&req))
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(s.head_lines("fake", r#"{app="api"}"#), vec!["no header"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_push_keeps_structured_metadata() {
    let s = TestServer::start("").await;
    let t = now_ns();
    let body = json!({"streams": [{
        "stream": {"app": "api"},
        "values": [
            [t.to_string(), "plain"],
            [(t + 1).to_string(), "with metadata", {"trace_id": "0242ac120002", "user_id": "u1"}]
        ]
    }]});
    let (status, text) = s.push_json(None, &body).await;
    assert_eq!(status, 204, "{text}");
    let entries = s.head_entries("fake", r#"{app="api"}"#);
    assert_eq!(entries.len(), 2);
    let md = &entries[1].structured_metadata;
    assert!(
        md.contains(&("trace_id".to_string(), "0242ac120002".to_string())),
        "{md:?}"
    );
    assert!(
        md.contains(&("user_id".to_string(), "u1".to_string())),
        "{md:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_json_push_is_inflated() {
    let s = TestServer::start("").await;
    let body = json!({"streams": [{"stream": {"app": "gz"}, "values": [[now_ns().to_string(), "zipped"]]}]});
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.to_string().as_bytes()).unwrap();
    let (status, text) = s
        .push_raw(
            None,
            &[
                ("Content-Type", "application/json; charset=utf-8"),
                ("Content-Encoding", "gzip"),
            ],
            gz.finish().unwrap(),
        )
        .await;
    assert_eq!(status, 204, "{text}");
    assert_eq!(s.head_lines("fake", r#"{app="gz"}"#), vec!["zipped"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_prom_push_path_accepts_protobuf() {
    let s = TestServer::start("").await;
    let req = request(vec![(r#"{app="old"}"#, vec![entry(now_ns(), "legacy")])]);
    let r = s
        .client
        .post(format!("{}/api/prom/push", s.url))
        .body(lode_push::encode_protobuf_snappy(&req))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(s.head_lines("fake", r#"{app="old"}"#), vec!["legacy"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_400_and_the_server_stays_up() {
    let s = TestServer::start("").await;
    let (status, text) = s
        .push_raw(None, &[], b"\x05\xff\xff\xff garbage".to_vec())
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("snappy") || text.contains("protobuf"),
        "{text}"
    );
    // Valid snappy around bytes that are not protobuf.
    let junk = snap::raw::Encoder::new().compress_vec(&[0xff; 64]).unwrap();
    let (status, text) = s.push_raw(None, &[], junk).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.starts_with("malformed protobuf push body"), "{text}");
    let (status, text) = s
        .push_raw(
            None,
            &[("Content-Type", "application/json")],
            br#"{"streams":[{"stream":{"a":"b"},"values":[[1,"x"]]}]}"#.to_vec(),
        )
        .await;
    assert_eq!(status, 400, "{text}");
    let (status, text) = s
        .push_raw(None, &[("Content-Encoding", "br")], b"x".to_vec())
        .await;
    assert_eq!(status, 400);
    assert!(
        text.contains("Content-Encoding \"br\" not supported"),
        "{text}"
    );
    assert_eq!(s.get_text("/ready").await, (200, "ready\n".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_without_streams_is_422() {
    let s = TestServer::start("").await;
    let (status, text) = s.push_json(None, &json!({"streams": []})).await;
    assert_eq!(status, 422);
    assert_eq!(
        text.trim(),
        "error at least one valid stream is required for ingestion"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_bomb_bodies_are_413() {
    let s = TestServer::start(
        "distributor:\n  max_recv_msg_size: 256KiB\n  max_decompressed_size: 1MiB\n",
    )
    .await;
    let (status, _) = s.push_raw(None, &[], vec![b'x'; 300 << 10]).await;
    assert_eq!(status, 413);
    // 4 MiB of one byte gzips to a few KiB: under the body cap, over the decompressed one.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 4 << 20]).unwrap();
    let (status, text) = s
        .push_raw(
            None,
            &[
                ("Content-Type", "application/json"),
                ("Content-Encoding", "gzip"),
            ],
            gz.finish().unwrap(),
        )
        .await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("max_decompressed_size"), "{text}");
    // A snappy block whose preamble claims more than the cap.
    let line = "y".repeat(2 << 20);
    let req = request(vec![(r#"{app="big"}"#, vec![entry(now_ns(), &line)])]);
    let (status, text) = s.push(None, &req).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("max_decompressed_size"), "{text}");
}
