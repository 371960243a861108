//! The server process: builds every component from a [`LodeConfig`], serves HTTP, and
//! shuts down gracefully.
//!
//! Owns the lifecycle: create the data directories, bind the listener (port 0 picks a free
//! one) and answer 503 there (`/ready` included) while storage opens (loading segment
//! footers into the index) and the ingester replays the WAL, start the flush loop and the
//! runtime-config reloader, start the ruler when `ruler.enabled`, then serve the router of
//! `crate::api`; on SIGTERM/SIGINT or
//! [`RunningServer::shutdown`]: stop accepting, let in-flight requests finish (up to
//! `server.graceful_shutdown_timeout`), stop the ruler (saving alert state), flush every
//! head to a segment and checkpoint the WAL. [`AppState`] is what every handler sees.
//!
//! It does not own any component's behaviour, only their wiring and order.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceExt;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::SystemClock;
use crate::config::{ConfigError, LodeConfig};
use crate::distributor::Distributor;
use crate::ingester::{self, Ingester};
use crate::limits::{self, Limits};
use crate::metrics::Metrics;
use crate::querier::Querier;
use crate::retention::Retention;
use crate::ruler::{EngineQuerier, Ruler, RulerError};
use crate::storage::{self, Storage};

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create data directory {path}: {source} (common.path_prefix or --data-dir)")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open storage: {0}")]
    Storage(#[from] storage::Error),
    #[error("ingester: {0}")]
    Ingester(#[from] ingester::Error),
    #[error("cannot load runtime_config.file: {0}")]
    Limits(#[from] limits::Error),
    #[error("cannot listen on {addr}: {source} (server.http_listen_address / http_listen_port, or --listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
    #[error("http server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot start the ruler: {0}")]
    Ruler(#[from] RulerError),
    #[error("cannot start retention: {0}")]
    Retention(#[from] crate::retention::Error),
}

/// A one-way "stop now" signal shared by every task of the server.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            tx: Arc::new(watch::channel(false).0),
        }
    }
}

impl Shutdown {
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once [`Shutdown::trigger`] has been called.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // An error means the sender is gone, which only happens when everything is.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// What every handler sees; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub config: Arc<LodeConfig>,
    pub limits: Arc<Limits>,
    pub ingester: Arc<Ingester>,
    pub storage: Arc<Storage>,
    pub metrics: Arc<Metrics>,
    pub distributor: Arc<Distributor>,
    pub querier: Arc<Querier>,
    pub retention: Arc<Retention>,
    /// The ruler, when `ruler.enabled`; its routes are mounted only then.
    pub ruler: Option<Ruler>,
    pub shutdown: Shutdown,
}

/// A started server: its bound address and state, and the handle to stop it.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    state: AppState,
    serve: Option<JoinHandle<std::io::Result<()>>>,
    background: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// The address the listener is bound to (the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Resolves when the HTTP server stops (after a shutdown was triggered) or fails.
    async fn serve_finished(&mut self) -> Result<(), Error> {
        match self.serve.as_mut() {
            Some(handle) => {
                let result = handle.await;
                self.serve = None;
                match result {
                    Ok(r) => r.map_err(Error::Serve),
                    Err(e) => Err(Error::Serve(std::io::Error::other(e.to_string()))),
                }
            }
            None => Ok(()),
        }
    }

    /// Stops accepting, drains in-flight requests (up to
    /// `server.graceful_shutdown_timeout`), flushes every head and checkpoints the WAL.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.state.shutdown.trigger();
        let timeout = self.state.config.graceful_shutdown_timeout();
        let drained = tokio::time::timeout(timeout, self.serve_finished()).await;
        match drained {
            Ok(Err(e)) => tracing::warn!(error = %e, "http server stopped with an error"),
            Err(_) => tracing::warn!(
                ?timeout,
                "in-flight requests did not finish in server.graceful_shutdown_timeout; flushing anyway"
            ),
            Ok(Ok(())) => {}
        }
        if let Some(ruler) = &self.state.ruler {
            ruler.shutdown().await;
        }
        tracing::info!("flushing heads before exit");
        let flushed = self.state.ingester.flush_all().await;
        for task in self.background.drain(..) {
            task.abort();
        }
        flushed?;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        // A server dropped without `shutdown` (a failed test) still stops serving.
        self.state.shutdown.trigger();
        for task in &self.background {
            task.abort();
        }
        if let Some(ruler) = &self.state.ruler {
            ruler.abort();
        }
    }
}

/// Builds every component and starts serving; returns once the listener is bound.
pub async fn start(config: LodeConfig) -> Result<RunningServer, Error> {
    config.validate()?;
    let config = Arc::new(config);
    for dir in [
        Some(&config.common.path_prefix),
        config
            .ingester
            .wal
            .enabled
            .then_some(&config.ingester.wal.dir),
        config
            .storage_config
            .aws
            .is_none()
            .then_some(&config.storage_config.filesystem.directory),
    ]
    .into_iter()
    .flatten()
    {
        std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
            path: dir.display().to_string(),
            source,
        })?;
    }

    // Listen first: until the WAL is replayed every request (probes included) gets a 503,
    // not a refused connection.
    let addr = config.listen_addr()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    let app: Arc<OnceLock<Router>> = Arc::new(OnceLock::new());
    let shutdown = Shutdown::default();
    let stop = shutdown.clone();
    let front = front_router(app.clone());
    let serve = tokio::spawn(async move {
        axum::serve(listener, front)
            .with_graceful_shutdown(async move { stop.wait().await })
            .await
    });
    tracing::info!(%addr, "listener bound; answering 503 until storage is open and the WAL replayed");
    // A failed start must not leave the listener behind.
    let started = build_state(config, shutdown.clone()).await;
    let (state, background) = match started {
        Ok(s) => s,
        Err(e) => {
            shutdown.trigger();
            let _ = serve.await;
            return Err(e);
        }
    };
    // Set once, here: the state was built exactly once above.
    let _ = app.set(crate::api::router(state.clone()));
    tracing::info!(%addr, "lode is listening");
    Ok(RunningServer {
        addr,
        state,
        serve: Some(serve),
        background,
    })
}

/// Serves `app` once it is set; before, answers every request with 503 (the WAL is being
/// replayed), so readiness probes see "not ready" rather than a refused connection.
fn front_router(app: Arc<OnceLock<Router>>) -> Router {
    Router::new().fallback(move |req: axum::extract::Request| {
        let app = app.get().cloned();
        async move {
            match app {
                Some(router) => router.oneshot(req).await.into_response(),
                None => starting_response(),
            }
        }
    })
}

fn starting_response() -> Response {
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        "not ready: lode is starting (opening storage, replaying the WAL)\n",
    )
        .into_response()
}

/// Opens storage and the ingester (WAL replay) and builds every other component.
async fn build_state(
    config: Arc<LodeConfig>,
    shutdown: Shutdown,
) -> Result<(AppState, Vec<JoinHandle<()>>), Error> {
    let metrics = Arc::new(Metrics::new());
    let limits = Arc::new(Limits::new(config.limits_config.clone()));
    let runtime_file = config.runtime_config.file.clone();
    let mut background = Vec::new();
    if !runtime_file.as_os_str().is_empty() {
        let n = limits.reload(&runtime_file)?;
        tracing::info!(file = %runtime_file.display(), tenants = n, "loaded per-tenant overrides");
        background.push(spawn_reloader(
            limits.clone(),
            runtime_file,
            config.runtime_config.period.0,
        ));
    }

    let storage = Storage::open(&config.storage_config, Arc::new(SystemClock)).await?;
    let ingester = Ingester::open(
        config.ingester.clone(),
        config.ingester.wal.dir.clone(),
        storage.clone(),
    )
    .await?;
    ingester.set_metrics(metrics.clone());
    background.push(ingester.start());
    // The compactor loop runs while `retention` lives (it is kept in the state).
    let retention = Retention::new(config.compactor.clone(), storage.clone(), limits.clone())?;
    retention.set_metrics(metrics.clone());
    background.push(retention.start());
    let distributor = Arc::new(Distributor::new(
        limits.clone(),
        metrics.clone(),
        ingester.clone(),
        storage.clock().clone(),
        config.ingester.chunk_idle_period,
    ));

    let querier = Arc::new(Querier::new(
        storage.clone(),
        ingester.clone(),
        limits.clone(),
    ));
    let ruler = start_ruler(&config, &querier, &metrics).await?;
    let state = AppState {
        retention,
        config: config.clone(),
        limits,
        querier,
        ruler,
        ingester,
        storage,
        metrics,
        distributor,
        shutdown,
    };
    Ok((state, background))
}

/// Runs the server until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(config: LodeConfig) -> Result<(), Error> {
    let mut server = start(config).await?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::Signal)?;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
        result = server.serve_finished() => {
            // The listener died on its own: still flush what is in memory.
            if let Err(e) = &result {
                tracing::error!(error = %e, "http server stopped");
            }
            server.shutdown().await?;
            return result;
        }
    }
    server.shutdown().await
}

/// Builds and starts the ruler over the query engine when `ruler.enabled`.
async fn start_ruler(
    config: &LodeConfig,
    querier: &Arc<Querier>,
    metrics: &Metrics,
) -> Result<Option<Ruler>, Error> {
    if !config.ruler.enabled {
        return Ok(None);
    }
    let engine = Arc::new(EngineQuerier::new(querier.clone()));
    let ruler = Ruler::new(config.ruler.clone(), engine, metrics)?;
    ruler.start().await?;
    tracing::info!(
        rules_dir = %config.ruler.storage.local.directory.display(),
        "ruler started"
    );
    Ok(Some(ruler))
}

/// Re-reads the runtime config file every `period`; a bad file keeps the old overrides.
fn spawn_reloader(
    limits: Arc<Limits>,
    file: std::path::PathBuf,
    period: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = limits.reload(&file) {
                tracing::warn!(error = %e, "runtime config not reloaded; previous overrides stay in force");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> axum::extract::Request {
        axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn requests_get_503_until_startup_is_done_then_reach_the_api() {
        let app = Arc::new(OnceLock::new());
        let front = front_router(app.clone());
        for path in ["/ready", "/loki/api/v1/push", "/metrics"] {
            let r = front.clone().oneshot(get(path)).await.unwrap();
            assert_eq!(r.status(), 503, "{path}");
        }
        let api = Router::new().route("/ready", axum::routing::get(|| async { "ready\n" }));
        app.set(api).unwrap();
        let r = front.clone().oneshot(get("/ready")).await.unwrap();
        assert_eq!(r.status(), 200);
        let r = front.oneshot(get("/elsewhere")).await.unwrap();
        assert_eq!(r.status(), 404);
    }
}
