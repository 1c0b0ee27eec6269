//! `linewatch-agent`: the edge agent's command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use linewatch_agent::app;
use linewatch_agent::config::{Config, ConfigError};
use linewatch_runtime::logging::{self, LogFormat};
use linewatch_runtime::shutdown::CancellationToken;
use linewatch_runtime::signals;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "linewatch-agent",
    version,
    about = "Reads PLC tags (Modbus TCP, OPC UA, Siemens S7) into linewatch data points, keeps them in a crash-safe disk buffer and ships them to Amazon Kinesis.",
    after_help = "Configuration keys and defaults: firmware-config/reference.md. Metrics: GET /metrics and /healthz on telemetry.listen."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent until SIGTERM, SIGINT (Ctrl-C) or SIGHUP (then: commit the buffer, finish or keep the in-flight batch, exit 0).
    Run {
        /// Gateway configuration (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Log JSON lines instead of text (overrides telemetry.log_format).
        #[arg(long)]
        log_json: bool,
    },
    /// Validate a configuration file and print every problem (file:line: key: message).
    /// Exit 0: valid; 1: problems found; 2: the file cannot be read (or bad usage).
    Check {
        /// Gateway configuration (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config, log_json } => match run(config, log_json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                let e = linewatch_runtime::error::chain(e.as_ref());
                tracing::error!(error = %e, "agent stopped");
                eprintln!("linewatch-agent: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(cfg) => {
            for w in cfg.warnings() {
                eprintln!("warning: {}: {w}", path.display());
            }
            let tags: usize = cfg.sources.iter().map(|s| s.tag_count()).sum();
            println!(
                "ok: {}: gateway {:?}, {} source(s), {} tag(s), stream {:?}",
                path.display(),
                cfg.gateway_id,
                cfg.sources.len(),
                tags,
                cfg.kinesis.stream
            );
            ExitCode::SUCCESS
        }
        Err(ConfigError::Invalid { path, problems }) => {
            for line in problems.render(&path.display().to_string()) {
                eprintln!("error: {line}");
            }
            eprintln!("{} problem(s) in {}", problems.len(), path.display());
            ExitCode::from(1)
        }
        // Unreadable: not a verdict on the file's content.
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(config: PathBuf, log_json: bool) -> anyhow::Result<()> {
    // Before any thread exists (tracing and the runtime start threads).
    linewatch_agent::memory::tune_allocator();
    let cfg = Config::load(&config).map_err(anyhow::Error::new)?;
    let format = if log_json {
        LogFormat::Json
    } else {
        cfg.telemetry.log_format
    };
    logging::init(format, &cfg.telemetry.log_level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.worker_threads())
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        // SIGINT, SIGTERM and SIGHUP stop cleanly; SIGPIPE is ignored (`| tee` and Ctrl-C).
        signals::cancel_on_stop_signal(shutdown.clone());
        app::run(cfg, shutdown).await
    })?;
    Ok(())
}
