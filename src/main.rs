//! The `lode` binary: `lode serve` runs every component in one process.
//!
//! Owns the command line (clap): `lode serve [--config.file F | --config F]
//! [--config.expand-env] [--data-dir DIR] [--listen ADDR:PORT]` and `lode rules check
//! FILES`, and the logcli-like client `lode query|labels|series` (`lode::cli`). Loki's single-dash spelling (`-config.file=F`) is accepted too, so a Loki
//! container's arguments carry over. It does not own what the commands do: `config`
//! loads the file, `server` runs it, `ruler::check` checks rule files.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use lode::config::LodeConfig;

// mimalloc rather than glibc malloc: queries allocate and free a few small strings per
// decoded line, which glibc spent about a third of a count query on.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. mimalloc asks for them on its
/// arenas, and the kernel then zeroes a whole 2 MiB page at the first touch of any byte of
/// it: that was half of a first query's CPU on a fresh server, and it inflates resident
/// memory by pages the server barely uses.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("lode: cannot turn transparent huge pages off ({e}); running with them");
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "lode",
    version,
    about = "Log aggregation and query service that speaks Grafana Loki's protocols"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server: push, query, ruler and retention in one process.
    Serve(ServeArgs),
    /// Work with rule files.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Run a LogQL query against a Loki-compatible server (like logcli query).
    Query(lode::cli::QueryArgs),
    /// List label names, or one label's values.
    Labels(lode::cli::LabelsArgs),
    /// List the streams matching selectors.
    Series(lode::cli::SeriesArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// YAML configuration file (Loki's section and key names); embedded defaults without it.
    #[arg(long = "config.file", visible_alias = "config", value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Replace ${VAR} and ${VAR:-default} in the configuration file with environment values.
    /// Accepts Loki's `-config.expand-env=true` spelling too.
    #[arg(
        long = "config.expand-env",
        num_args = 0..=1,
        default_value_t = false,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    expand_env: bool,
    /// Data directory (overrides common.path_prefix): WAL in DIR/wal, segments in DIR/chunks.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Listen address (overrides server.http_listen_address and http_listen_port).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
}

#[derive(Subcommand, Debug)]
enum RulesCommand {
    /// Check rule files as the ruler would load them; exit 1 on any problem.
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

/// Rewrites Loki's `-config.file=x` style into clap's `--config.file=x`.
fn loki_style_args() -> Vec<String> {
    std::env::args()
        .map(|a| {
            if a.starts_with("-config.") {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(loki_style_args());
    match cli.command {
        Command::Serve(args) => match serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lode: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Query(args) => client(lode::cli::query(args)),
        Command::Labels(args) => client(lode::cli::labels(args)),
        Command::Series(args) => client(lode::cli::series(args)),
        Command::Rules(RulesCommand::Check { files }) => {
            match lode::ruler::check::check_files(&files) {
                Ok(summary) => {
                    println!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(failure) => {
                    eprint!("{failure}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs a client command on a small runtime; errors go to stderr with exit code 1.
fn client(command: impl std::future::Future<Output = Result<(), lode::cli::Error>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lode: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lode: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    no_transparent_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let mut config = LodeConfig::load(args.config_file.as_deref(), args.expand_env)?;
    config.apply_flags(args.data_dir.as_deref(), args.listen.as_deref())?;
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(lode::server::run(config))?;
    Ok(())
}
