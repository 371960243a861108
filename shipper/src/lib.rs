//! `lode-shipper`: tails container logs on a node and pushes them to Lode or any
//! Loki-compatible endpoint, committing a file offset only after the server acknowledged
//! every entry before it.
//!
//! Data flow: the reader thread ([`tailer`]) discovers files, reads and parses them
//! ([`format`]), labels entries ([`pipeline`]) and sends them over a bounded channel to
//! the [`client`], which batches per tenant, pushes protobuf + snappy, retries, and
//! commits acknowledged offsets into [`positions`]; a writer task persists positions.
//! With `client.disk_buffer`, batches the server cannot take go to the [`spool`].
//! [`metrics`] and `/ready` are served over HTTP by [`run`]. With
//! `kubernetes.enrich_pod_labels`, a [`kubernetes`] task lists this node's pods and the
//! reader adds their labels to the pods' streams.

pub mod client;
pub mod config;
pub mod format;
pub mod kubernetes;
pub mod metrics;
pub mod pipeline;
pub mod positions;
pub mod spool;
pub mod tailer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use crate::config::ShipperConfig;
use crate::metrics::Metrics;
use crate::positions::{LoadOutcome, Positions};

/// Why the shipper could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error(transparent)]
    Pipeline(#[from] pipeline::Error),
    #[error(transparent)]
    Client(#[from] client::Error),
    #[error("cannot listen on {addr} (server.http_listen_address/http_listen_port): {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start the reader thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot create the positions directory {path}: {source}")]
    PositionsDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Runs the shipper until `shutdown` resolves, then flushes and saves positions.
pub async fn run(
    cfg: ShipperConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    cfg.validate()?;
    let metrics = Arc::new(Metrics::new());
    let mut pipeline = pipeline::Pipeline::new(&cfg.labels, &cfg.pipeline)?;
    let mut refresher = None;
    if cfg.kubernetes.enrich_pod_labels {
        let Some(node) = pipeline.node_name().map(str::to_string) else {
            return Err(config::Error::Invalid {
                key: "kubernetes.enrich_pod_labels",
                value: "true".into(),
                why: "needs this node's name to list its pods: set labels.node_name or the NODE_NAME environment variable (downward API spec.nodeName)".into(),
            }
            .into());
        };
        let store = Arc::new(kubernetes::PodLabels::default());
        pipeline = pipeline.with_pod_labels(store.clone());
        refresher = Some(kubernetes::Refresher::new(
            cfg.kubernetes.clone(),
            node,
            store,
            metrics.clone(),
        ));
    }
    let pipeline = Arc::new(pipeline);

    let pos_path = cfg.positions.filename.clone();
    if let Some(dir) = pos_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| Error::PositionsDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let (positions, outcome) = Positions::load(&pos_path);
    match outcome {
        LoadOutcome::Missing => {
            info!(path = %pos_path.display(), "no positions file; starting fresh")
        }
        LoadOutcome::Loaded { files } => {
            info!(path = %pos_path.display(), files, "positions loaded")
        }
        LoadOutcome::RecoveredPrevious { error, files } => {
            metrics.positions_corrupt.inc();
            warn!(%error, files, "positions file unreadable; using the previous generation");
        }
        LoadOutcome::Corrupt { error } => {
            metrics.positions_corrupt.inc();
            error!(%error, "positions file unreadable and no previous generation; starting fresh (files are read according to discovery.start_at)");
        }
    }
    let positions = Arc::new(Mutex::new(positions));
    let positions_changed = Arc::new(Notify::new());

    let addr = format!(
        "{}:{}",
        cfg.server.http_listen_address, cfg.server.http_listen_port
    );
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| Error::Listen {
            addr: addr.clone(),
            source,
        })?;
    let ready = Arc::new(AtomicBool::new(false));
    let app = {
        let metrics = metrics.clone();
        let ready = ready.clone();
        axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let m = metrics.clone();
                    async move {
                        (
                            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                            m.encode(),
                        )
                    }
                }),
            )
            .route(
                "/ready",
                axum::routing::get(move || {
                    let ready = ready.load(Ordering::Relaxed);
                    async move {
                        if ready {
                            (axum::http::StatusCode::OK, "ready\n")
                        } else {
                            (
                                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                "starting: first scan not done\n",
                            )
                        }
                    }
                }),
            )
    };
    info!(%addr, "serving /metrics and /ready");
    let http = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!(error = %e, "http server stopped");
        }
    });

    let client = client::Client::new(
        cfg.client.clone(),
        metrics.clone(),
        positions.clone(),
        positions_changed.clone(),
    )?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let stop_reader = Arc::new(AtomicBool::new(false));
    let tailer = tailer::Tailer::new(tailer::TailerParts {
        discovery: cfg.discovery.clone(),
        stages: cfg.pipeline.clone(),
        tenant_id: cfg.client.tenant_id.clone(),
        tenant_label: cfg.client.tenant_label.clone(),
        pipeline,
        positions: positions.clone(),
        metrics: metrics.clone(),
        tx,
        shutdown: stop_reader.clone(),
        ready,
    });
    let reader = std::thread::Builder::new()
        .name("lode-shipper-reader".into())
        .spawn(move || tailer.run())
        .map_err(Error::Thread)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    // The writer outlives the client so acknowledgements during the shutdown drain are
    // persisted as they come.
    let (writer_stop_tx, writer_stop_rx) = watch::channel(false);
    let writer = tokio::spawn(positions_writer(
        positions.clone(),
        positions_changed.clone(),
        cfg.positions.sync_period,
        metrics.clone(),
        writer_stop_rx,
    ));
    let client_task = tokio::spawn(client.run(rx, stop_rx.clone()));
    let refresher_task = refresher.map(|r| tokio::spawn(r.run(stop_rx)));

    shutdown.await;
    info!("shutdown requested");
    stop_reader.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let _ = client_task.await;
    if let Some(t) = refresher_task {
        let _ = t.await;
    }
    let _ = writer_stop_tx.send(true);
    let _ = writer.await;
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    save_positions(&positions, true, &metrics);
    http.abort();
    info!("stopped");
    Ok(())
}

fn save_positions(positions: &Mutex<Positions>, fsync: bool, metrics: &Metrics) {
    let Some((bytes, path)) = positions
        .lock()
        .ok()
        .and_then(|mut p| p.snapshot_if_dirty().map(|b| (b, p.path().to_path_buf())))
    else {
        return;
    };
    match positions::write_file(&path, &bytes, fsync) {
        Ok(()) => metrics
            .positions_written_at_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed),
        Err(e) => {
            metrics.positions_write_failures.inc();
            // Keep the data dirty so the next attempt writes it.
            if let Ok(mut p) = positions.lock() {
                p.mark_dirty();
            }
            error!(error = %e, "positions write failed");
        }
    }
}

async fn positions_writer(
    positions: Arc<Mutex<Positions>>,
    changed: Arc<Notify>,
    period: std::time::Duration,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => save_positions(&positions, true, &metrics),
            _ = changed.notified() => save_positions(&positions, false, &metrics),
            _ = stop.changed() => return,
        }
    }
}
