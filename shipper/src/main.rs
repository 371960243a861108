//! `lode-shipper`: tails container logs on a node and pushes them to Lode or Loki.
//!
//! Reads the YAML config (`--config.file`), applies the command-line overrides, sets up
//! structured logging, and runs until SIGTERM or SIGINT, then flushes and saves positions.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use lode_shipper::config::ShipperConfig;

#[derive(Parser, Debug)]
#[command(
    name = "lode-shipper",
    version,
    about = "Tails container logs and pushes them to Lode or Loki"
)]
struct Args {
    /// YAML configuration file (see shipper/shipper.example.yaml).
    #[arg(long = "config.file", env = "LODE_SHIPPER_CONFIG")]
    config_file: Option<PathBuf>,
    /// Push URL, e.g. http://lode:3100/loki/api/v1/push (overrides client.url).
    #[arg(long = "client.url")]
    client_url: Option<String>,
    /// Tenant sent as X-Scope-OrgID (overrides client.tenant_id).
    #[arg(long = "client.tenant-id")]
    tenant_id: Option<String>,
    /// Positions file (overrides positions.filename).
    #[arg(long = "positions.file")]
    positions_file: Option<PathBuf>,
    /// Glob of files to tail; repeat for several (replaces discovery.globs).
    #[arg(long = "glob")]
    globs: Vec<String>,
    /// Value of the node_name label (overrides labels.node_name and NODE_NAME).
    #[arg(long = "node-name")]
    node_name: Option<String>,
    /// Port of /metrics and /ready (overrides server.http_listen_port).
    #[arg(long = "server.http-listen-port")]
    http_port: Option<u16>,
    /// Log format: text or json.
    #[arg(long = "log.format", default_value = "text")]
    log_format: String,
    /// Log level filter (RUST_LOG syntax).
    #[arg(long = "log.level", env = "RUST_LOG", default_value = "info")]
    log_level: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("invalid --log.level {:?}", args.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format.as_str() {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => anyhow::bail!("invalid --log.format {other:?}: want text or json"),
    }

    let mut cfg = match &args.config_file {
        Some(p) => ShipperConfig::load(p)?,
        None => ShipperConfig::default(),
    };
    if let Some(u) = args.client_url {
        cfg.client.url = u;
    }
    if let Some(t) = args.tenant_id {
        cfg.client.tenant_id = t;
    }
    if let Some(p) = args.positions_file {
        cfg.positions.filename = p;
    }
    if !args.globs.is_empty() {
        cfg.discovery.globs = args.globs;
    }
    if let Some(n) = args.node_name {
        cfg.labels.node_name = Some(n);
    }
    if let Some(p) = args.http_port {
        cfg.server.http_listen_port = p;
    }

    let shutdown = async {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; stopping on SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    lode_shipper::run(cfg, shutdown).await?;
    Ok(())
}
