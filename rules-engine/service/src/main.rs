//! `linewatch-rules`: run the rule engine service; publish and delete rules; check rule
//! scripts; replay recorded data points; list and replay undeliverable events.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use linewatch_rules::cli::{
    self,
    control::{DeleteArgs, KeygenArgs, PublishArgs},
    dead_letters::{DeadLettersArgs, DeadLettersCommand},
};
use linewatch_rules::service::config::{parse_partition, ServiceConfig};
use linewatch_rules::service::run::{run, RunOptions};
use linewatch_rules_core::eval::Partition;
use linewatch_rules_core::replay::{load_rule_files, replay, ReplayEvent, ReplayOptions};
use linewatch_rules_core::{
    EventSource, LatePolicy, Limits, Sandbox, WatermarkConfig, WatermarkScope,
};
use linewatch_runtime::logging::{self, LogFormat};
use linewatch_runtime::shutdown::CancellationToken;
use linewatch_runtime::signals;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// A replay allocates a few strings per data point and frees them after the reorder
/// buffer; mimalloc handles that pattern markedly better than glibc malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Lines of one kind reported individually before only counting them.
const REPORT_LIMIT: u64 = 100;

#[derive(Parser)]
#[command(name = "linewatch-rules", version, about = "linewatch's rule engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the rule engine: read the Kinesis stream, take rules from the MQTT control
    /// topic, deliver transitions to the webhooks. Stops cleanly on SIGTERM, SIGINT
    /// (Ctrl-C) or SIGHUP.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Own only the rules whose id hashes to I of N (`I/N`); run N instances, each
        /// reading the whole stream and control topic, to split the rules between them.
        #[arg(long, value_parser = parse_partition)]
        partition: Option<Partition>,
        /// Log format on stderr: `text`, or `json` (one object per line, the event's
        /// fields at the top level, the same shape as the agent's).
        #[arg(long, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Short for `--log-format json` (the agent's flag).
        #[arg(long)]
        log_json: bool,
    },
    /// Publish a rule script on the control topic and print the engine's answer.
    Publish(PublishArgs),
    /// Delete a rule from the control topic and print the engine's answer.
    Delete(DeleteArgs),
    /// Write an Ed25519 key pair: `STEM.key` (secret, mode 0600) and `STEM.pub`, for
    /// signing rules (`publish --key`) or the engine's statuses (`mqtt.auth.status_key`).
    Keygen(KeygenArgs),
    /// Events a webhook target refused or that ran out of retries.
    DeadLetters(DeadLettersArgs),
    /// Write the stream's data points (KPL aggregates de-aggregated) as NDJSON, the
    /// input `replay` takes; progress on stderr. Stops at `--until`/`--max`, or on
    /// SIGINT/SIGTERM.
    Capture(cli::capture::CaptureArgs),
    /// Compile and validate rule scripts, and with `--config` the service configuration;
    /// print every problem (a config problem as file:line: key: message). Exit 0: all
    /// good; 1: problems found; 2: a file cannot be read (or bad usage).
    Check {
        /// Rule files (.rhai) or directories of them.
        #[arg(required_unless_present = "config")]
        rules: Vec<PathBuf>,
        /// The service configuration (TOML) to check.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run rules over recorded data points (NDJSON, one per line) and print the
    /// transitions as NDJSON on stdout. Deterministic: idleness is judged on the replay
    /// clock (the highest event time read so far), and at the end of input the
    /// watermark moves to the highest event time seen so that due holds fire.
    Replay {
        /// Rule files (.rhai) or directories of them.
        #[arg(long, required = true, num_args = 1..)]
        rules: Vec<PathBuf>,
        /// NDJSON data points; `-` for stdin.
        #[arg(long)]
        input: String,
        /// How far behind its sender's newest point a point may arrive and still count.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        max_out_of_orderness: Duration,
        /// A sender silent for this long (replay clock) stops holding the watermark back.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        idle_timeout: Duration,
        /// Evaluation workers (rules are split by a hash of their id).
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// What to do with points at or below the watermark.
        #[arg(long, value_enum, default_value_t = Late::DeadLetter)]
        late: Late,
        /// Whose senders hold a rule back: every sender of the input (`global`) or
        /// only those of the rule's equipment (`equipment`).
        #[arg(long, value_enum, default_value_t = Scope::Global)]
        scope: Scope,
        /// Write late points (the raw lines) here under `--late dead-letter`.
        #[arg(long)]
        dead_letter: Option<PathBuf>,
        /// Print EventBridge envelopes instead of bare transitions.
        #[arg(long)]
        events: bool,
        /// `account` of the envelopes.
        #[arg(long, default_value = "000000000000")]
        account: String,
        /// `region` of the envelopes.
        #[arg(long, default_value = "local")]
        region: String,
        /// A progress line on stderr every this many input lines (0: none).
        #[arg(long, default_value_t = 1_000_000)]
        progress_every: u64,
        /// Treat the end of input as the end of time: every pending hold fires at its
        /// deadline. Off by default, which is what the live service would have emitted
        /// by the last point (a backtest of a stream that goes on); on, for "what would
        /// the rules say once everything in this file has played out".
        #[arg(long)]
        flush: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Late {
    DeadLetter,
    Apply,
}

#[derive(Clone, Copy, ValueEnum)]
enum Scope {
    Global,
    Equipment,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Run {
            log_format,
            log_json,
            ..
        } => {
            let format = if *log_json {
                LogFormat::Json
            } else {
                *log_format
            };
            logging::init(format, "info");
        }
        _ => {
            logging::init(LogFormat::Text, "warn");
        }
    }
    let result = match cli.command {
        Command::Run {
            config, partition, ..
        } => run_service(&config, partition),
        Command::Publish(args) => runtime().and_then(|rt| rt.block_on(cli::control::publish(args))),
        Command::Delete(args) => runtime().and_then(|rt| rt.block_on(cli::control::delete(args))),
        Command::Keygen(args) => cli::control::keygen(args),
        Command::DeadLetters(cmd) => dead_letters(cmd),
        Command::Capture(args) => run_capture(args),
        Command::Check { rules, config } => Ok(check(&rules, config.as_deref())),
        Command::Replay {
            rules,
            input,
            max_out_of_orderness,
            idle_timeout,
            workers,
            late,
            scope,
            dead_letter,
            events,
            account,
            region,
            progress_every,
            flush,
        } => run_replay(ReplayArgs {
            rules,
            input,
            opts: ReplayOptions {
                watermark: WatermarkConfig::with(max_out_of_orderness, idle_timeout),
                late_policy: match late {
                    Late::DeadLetter => LatePolicy::DeadLetter,
                    Late::Apply => LatePolicy::Apply,
                },
                scope: match scope {
                    Scope::Global => WatermarkScope::Global,
                    Scope::Equipment => WatermarkScope::Equipment,
                },
                workers,
                progress_every,
                flush,
                events: events.then_some(EventSource { account, region }),
                ..ReplayOptions::default()
            },
            dead_letter,
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", linewatch_runtime::error::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run_service(config: &Path, partition: Option<Partition>) -> anyhow::Result<ExitCode> {
    let cfg = ServiceConfig::load(config)?;
    let rt = runtime()?;
    rt.block_on(async move {
        // SIGINT, SIGTERM and SIGHUP each stop cleanly (the run loop then ticks,
        // checkpoints and finishes deliveries in flight); SIGPIPE is ignored.
        let stop = CancellationToken::new();
        let signals = signals::cancel_on_stop_signal(stop.clone());
        let opts = RunOptions {
            partition,
            ..RunOptions::default()
        };
        let result = run(cfg, opts, stop).await;
        signals.abort();
        result
    })?;
    Ok(ExitCode::SUCCESS)
}

fn run_capture(args: cli::capture::CaptureArgs) -> anyhow::Result<ExitCode> {
    let cfg = ServiceConfig::load(&args.config)?;
    let mut out: Box<dyn Write> = if args.output == "-" {
        Box::new(BufWriter::new(std::io::stdout().lock()))
    } else {
        let f = std::fs::File::create(&args.output)
            .with_context(|| format!("cannot create {}", args.output))?;
        Box::new(BufWriter::new(f))
    };
    let started = Instant::now();
    let state = runtime()?.block_on(async {
        let stop = CancellationToken::new();
        let signals = signals::cancel_on_stop_signal(stop.clone());
        let r = cli::capture::capture(&args, &cfg, &mut out, stop).await;
        signals.abort();
        r
    })?;
    eprintln!(
        "done: {} points in {:.1} s ({} not data points, {} after --until)",
        state.written,
        started.elapsed().as_secs_f64(),
        state.not_points,
        state.past_until
    );
    Ok(ExitCode::SUCCESS)
}

fn dead_letters(args: DeadLettersArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DeadLettersCommand::List { config, target } => {
            let cfg = ServiceConfig::load(&config)?;
            let mut out = std::io::stdout().lock();
            cli::dead_letters::list(&cfg.webhook_dead_letter_dir(), target.as_deref(), &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        DeadLettersCommand::Replay {
            config,
            target,
            ids,
        } => {
            let cfg = ServiceConfig::load(&config)?;
            let report = runtime()?.block_on(cli::dead_letters::replay(
                &cfg.webhook_dead_letter_dir(),
                &cfg.webhooks,
                target.as_deref(),
                &ids,
            ))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// `check`'s exit codes, the same as the agent's `check`.
const CHECK_PROBLEMS: u8 = 1;
const CHECK_UNREADABLE: u8 = 2;

fn check(paths: &[PathBuf], config: Option<&Path>) -> ExitCode {
    let mut code = 0u8;
    if let Some(path) = config {
        code = code.max(check_config(path));
    }
    if !paths.is_empty() {
        code = code.max(check_rules(paths));
    }
    ExitCode::from(code)
}

fn check_config(path: &Path) -> u8 {
    use linewatch_rules::service::config::ConfigError;
    match ServiceConfig::load(path) {
        Ok(cfg) => {
            for w in cfg.kinesis.aws.warnings("kinesis") {
                eprintln!("warning: {}: {w}", path.display());
            }
            println!(
                "ok: {}: stream {:?}, {} webhook target(s)",
                path.display(),
                cfg.kinesis.stream,
                cfg.webhooks.len()
            );
            0
        }
        Err(ConfigError::Invalid { path, problems }) => {
            for line in problems.render(&path.display().to_string()) {
                eprintln!("error: {line}");
            }
            eprintln!("{} problem(s) in {}", problems.len(), path.display());
            CHECK_PROBLEMS
        }
        Err(e) => {
            eprintln!("error: {e}");
            CHECK_UNREADABLE
        }
    }
}

fn check_rules(paths: &[PathBuf]) -> u8 {
    // A path that cannot be read is not a verdict on any rule.
    let unreadable = paths.iter().any(|p| std::fs::metadata(p).is_err());
    let sandbox = Sandbox::new(Limits::default());
    let (rules, errors) = load_rule_files(&sandbox, paths);
    for r in &rules {
        let groups: Vec<String> = r
            .groups()
            .iter()
            .map(|g| match g.hold_ms() {
                0 => format!("{} (weight {})", g.name(), g.weight()),
                h => format!(
                    "{} (weight {}, hold {})",
                    g.name(),
                    g.weight(),
                    humantime::format_duration(Duration::from_millis(h))
                ),
            })
            .collect();
        println!(
            "ok: {}: rule \"{}\" v{}, {} equipment, groups: {}",
            r.origin(),
            r.id(),
            r.version(),
            r.equipment().len(),
            groups.join(", ")
        );
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    match (unreadable, errors.is_empty()) {
        (true, _) => CHECK_UNREADABLE,
        (false, false) => CHECK_PROBLEMS,
        (false, true) => 0,
    }
}

/// An event time for people: `1732180000123 (2024-11-21T09:06:40.123Z)`, or `none` before
/// the first point.
fn event_time(ms: Option<u64>) -> String {
    match ms {
        Some(ms) => {
            let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
            format!("{ms} ({})", humantime::format_rfc3339_millis(at))
        }
        None => "none".to_owned(),
    }
}

struct ReplayArgs {
    rules: Vec<PathBuf>,
    input: String,
    opts: ReplayOptions,
    dead_letter: Option<PathBuf>,
}

fn run_replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let sandbox = Sandbox::new(args.opts.limits.clone());
    let (rules, errors) = load_rule_files(&sandbox, &args.rules);
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {e}");
        }
        return Ok(ExitCode::FAILURE);
    }
    let input: Box<dyn BufRead> = if args.input == "-" {
        Box::new(BufReader::with_capacity(1 << 16, std::io::stdin().lock()))
    } else {
        let f = std::fs::File::open(&args.input)
            .with_context(|| format!("cannot open {}", args.input))?;
        Box::new(BufReader::with_capacity(1 << 16, f))
    };
    let mut dead_letter = match &args.dead_letter {
        Some(p) => Some(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    let mut stdout = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let started = Instant::now();
    let (mut malformed, mut late) = (0u64, 0u64);
    let mut dl_error: Option<std::io::Error> = None;
    let mut on_event = |ev: ReplayEvent<'_>| match ev {
        ReplayEvent::Malformed { line, error } => {
            malformed += 1;
            if malformed <= REPORT_LIMIT {
                eprintln!("line {line}: skipped: {error}");
            }
            if malformed == REPORT_LIMIT {
                eprintln!("(further malformed lines are only counted)");
            }
        }
        ReplayEvent::Late {
            line,
            point,
            watermark,
            dead_letter: raw,
        } => {
            late += 1;
            if late <= REPORT_LIMIT {
                eprintln!(
                    "line {line}: late: {} {} at {} <= watermark {watermark}",
                    point.equipment_id, point.tag, point.timestamp
                );
            }
            if late == REPORT_LIMIT {
                eprintln!("(further late points are only counted)");
            }
            if let (Some(w), Some(raw)) = (dead_letter.as_mut(), raw) {
                if let Err(e) = w.write_all(raw).and_then(|_| w.write_all(b"\n")) {
                    dl_error.get_or_insert(e);
                }
            }
        }
        ReplayEvent::RuleChanged { line, outcome } => {
            let json = serde_json::to_string(outcome).unwrap_or_default();
            match line {
                0 => tracing::info!("rule: {json}"),
                _ => eprintln!("line {line}: rule change: {json}"),
            }
        }
        ReplayEvent::RuleRejected { line, error } => {
            eprintln!("line {line}: rule rejected: {error}")
        }
        ReplayEvent::Diagnostic(d) => {
            let line = d.line.map(|l| format!(" line {l}")).unwrap_or_default();
            eprintln!(
                "rule \"{}\" group \"{}\" (equipment {}){line}: {:?}: {}",
                d.rule_id, d.group, d.equipment_id, d.kind, d.message
            );
        }
        ReplayEvent::Progress(s) => {
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            eprintln!(
                "progress: {} lines, {:.0} lines/s, watermark {}, {} transitions, {} late, {} malformed",
                s.lines,
                s.lines as f64 / secs,
                event_time(s.watermark),
                s.transitions,
                s.late,
                s.malformed
            );
        }
    };
    let summary = replay(rules, input, &mut stdout, args.opts, &mut on_event)?;
    if let Some(mut w) = dead_letter {
        w.flush().context("writing the dead-letter file")?;
    }
    if let Some(e) = dl_error {
        return Err(e).context("writing the dead-letter file");
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "done: {} lines ({} points, {} heartbeats, {} malformed, {} late, {} resends dropped) in {secs:.2} s; {} transitions; watermark {}",
        summary.lines,
        summary.points,
        summary.heartbeats,
        summary.malformed,
        summary.late,
        summary.resends,
        summary.transitions,
        event_time(summary.watermark)
    );
    for (sender, n) in &summary.late_by_sender {
        eprintln!("late from {sender}: {n}");
    }
    Ok(ExitCode::SUCCESS)
}
