//! `cargo bench -p linewatch-rules` — replay throughput on one core with 1,000 and
//! 10,000 Krones-style two-group rules (one per equipment, four tags each, JSON
//! parsing included), the cost of one group evaluation, memory per loaded rule and
//! the resident memory of the replay.
//!
//! Environment: `LW_BENCH_POINTS` (points per replay, default 2,000,000),
//! `LW_BENCH_SIZES` (comma-separated rule counts, `d` suffix: every rule with its own
//! code; default `1000,10000,1000d`),
//! `LW_BENCH_RUNS` (replays per size, best reported, default 3).

use linewatch_rules_core::replay::{Replay, ReplayOptions};
use linewatch_rules_core::{
    Evaluator, Limits, Output, Reading, Rule, RuleChange, Sandbox, WatermarkConfig,
};
use linewatch_schemas::DataPoint;
use std::alloc::{GlobalAlloc, Layout};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Live heap bytes, for memory per rule; allocation itself goes to mimalloc, the
/// allocator of the `linewatch-rules` binary.
struct Counting;
static INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to mimalloc unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { INNER.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { INNER.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { INNER.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { INNER.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const T0: u64 = 1_732_180_000_000;

/// CPU time of this thread: on a shared machine, wall time also counts the time
/// other processes had the core.
fn cpu_secs() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill in.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    if rc != 0 {
        return f64::NAN;
    }
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn equipment_id(e: usize) -> String {
    format!("00000000-0000-4000-8000-{e:012}")
}

/// A Krones-style rule. With `distinct`, each rule's temperature limit is another
/// literal inside its closure, so no two rules share compiled code (the worst case
/// for memory and cache); otherwise they differ only in id and equipment.
fn rule_source(e: usize, distinct: bool) -> String {
    let limit = if distinct {
        format!("{:.3}", 80.0 + e as f64 / 1000.0)
    } else {
        "80.0".to_string()
    };
    format!(
        r#"#{{ id: "filler-{e}", version: 1, equipment: "{eq}",
  states: ["OK", "IDLE", "ACTIVE", "WARNING", "ERROR"],
  groups: [
    #{{ name: "production", weight: 1, tags: ["machine_state", "product"],
       state: |v| if v.machine_state == "RUNNING" && v.product == "1L" {{ "ACTIVE" }} else {{ "IDLE" }} }},
    #{{ name: "thermal", weight: 3, tags: ["water_temperature", "pressure"], hold: "5m",
       state: |v| if v.water_temperature > {limit} && v.pressure > 2.5 {{ "WARNING" }} else {{ () }} }},
  ] }}"#,
        eq = equipment_id(e)
    )
}

/// Every equipment reports its four tags once a second (a few hundred ms of jitter,
/// so arrival is slightly out of order). Temperature and pressure wander (their
/// values change on almost every reading); machine state and product are steady
/// with occasional changes. Senders: one PLC source per equipment, 50 per gateway.
fn write_input(path: &Path, equipment: usize, points: usize) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut rng = Rng(42);
    let mut temp: Vec<f64> = (0..equipment).map(|_| 76.0 + rng.unit() * 6.0).collect();
    let mut pres: Vec<f64> = (0..equipment).map(|_| 2.3 + rng.unit() * 0.4).collect();
    let mut running: Vec<bool> = vec![true; equipment];
    let mut seq = vec![0u64; equipment];
    let ids: Vec<String> = (0..equipment).map(equipment_id).collect();
    let mut n = 0;
    let mut second = 0u64;
    'outer: loop {
        for e in 0..equipment {
            for tag in 0..4 {
                if n == points {
                    break 'outer;
                }
                let ts = T0 + second * 1000 + (rng.next() % 400);
                seq[e] += 1;
                let value = match tag {
                    0 => {
                        if rng.unit() < 0.002 {
                            running[e] = !running[e];
                        }
                        if running[e] {
                            "\"RUNNING\""
                        } else {
                            "\"STOPPED\""
                        }
                        .to_string()
                    }
                    1 => if rng.unit() < 0.001 {
                        "\"2L\""
                    } else {
                        "\"1L\""
                    }
                    .to_string(),
                    2 => {
                        temp[e] = (temp[e] + (rng.unit() - 0.5) * 0.6).clamp(70.0, 90.0);
                        format!("{:.2}", temp[e])
                    }
                    _ => {
                        pres[e] = (pres[e] + (rng.unit() - 0.5) * 0.05).clamp(2.0, 3.0);
                        format!("{:.3}", pres[e])
                    }
                };
                let tag = ["machine_state", "product", "water_temperature", "pressure"][tag];
                writeln!(
                    w,
                    r#"{{"version":1,"timestamp":{ts},"equipmentId":"{}","tag":"{tag}","value":{value},"quality":"Ok","meta":{{"sequenceNumber":{},"createdAt":{},"sourceId":"plc-{e}","gatewayId":"gw-{}"}}}}"#,
                    ids[e],
                    seq[e],
                    ts + 7,
                    e / 50
                )?;
                n += 1;
            }
        }
        second += 1;
    }
    w.flush()
}

fn compile_rules(sandbox: &Sandbox, n: usize, distinct: bool) -> Vec<Arc<Rule>> {
    (0..n)
        .map(|e| {
            Arc::new(
                Rule::compile(sandbox, &rule_source(e, distinct), "bench")
                    .expect("bench rule compiles"),
            )
        })
        .collect()
}

fn status_kb(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Reset the peak-RSS counter (Linux), so VmHWM covers only what follows.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mib(kb: Option<u64>) -> String {
    kb.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

/// The real binary over the same input: peak RSS (KB) and wall seconds.
fn binary_replay(dir: &Path, rules_n: usize, distinct: bool, input: &Path) -> Option<(u64, f64)> {
    let rules_dir = dir.join(format!(
        "rules-{rules_n}{}",
        if distinct { "-distinct" } else { "" }
    ));
    if !rules_dir
        .join(format!("filler-{}.rhai", rules_n - 1))
        .exists()
    {
        std::fs::create_dir_all(&rules_dir).ok()?;
        for e in 0..rules_n {
            std::fs::write(
                rules_dir.join(format!("filler-{e}.rhai")),
                rule_source(e, distinct),
            )
            .ok()?;
        }
    }
    let started = Instant::now();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_linewatch-rules"))
        .arg("replay")
        .arg("--rules")
        .arg(&rules_dir)
        .arg("--input")
        .arg(input)
        .args(["--max-out-of-orderness", "1s", "--progress-every", "0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it in for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: `pid` is our child, not yet reaped; the pointers are valid.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = started.elapsed().as_secs_f64();
    (rc == pid && status == 0).then_some((usage.ru_maxrss as u64, secs))
}

struct Figures {
    rules: usize,
    distinct: bool,
    points: u64,
    secs: f64,
    cpu: f64,
    transitions: u64,
    group_evals: u64,
    peak_rss_kb: Option<u64>,
    binary: Option<(u64, f64)>,
    bytes_per_rule_loaded: f64,
    bytes_per_rule_with_state: f64,
    compile_us_per_rule: f64,
}

fn bench_size(dir: &Path, rules_n: usize, distinct: bool, points: usize, runs: usize) -> Figures {
    let input = dir.join(format!("krones-{rules_n}-rules-{points}-points.ndjson"));
    if !input.exists() {
        write_input(&input, rules_n, points).expect("write bench input");
    }

    // Memory per loaded rule: compiled rules plus the evaluator's index and state,
    // measured by the counting allocator; then again once every rule has state.
    let sandbox = Sandbox::new(Limits::default());
    let before = LIVE.load(Ordering::SeqCst);
    let started = Instant::now();
    let rules = compile_rules(&sandbox, rules_n, distinct);
    let compile_us_per_rule = started.elapsed().as_secs_f64() * 1e6 / rules_n as f64;
    let mut eval = Evaluator::new(Limits::default());
    let mut out = Output::default();
    for r in &rules {
        eval.apply(&RuleChange::Upsert(Arc::clone(r)), 0, &mut out);
    }
    let loaded = LIVE.load(Ordering::SeqCst) - before;
    // One reading of every tag of every equipment gives every rule its state.
    let reader = BufReader::new(std::fs::File::open(&input).expect("open input"));
    for line in reader.lines().take(rules_n * 4) {
        let p = DataPoint::from_json(line.expect("read").as_bytes()).expect("valid point");
        let at = p.timestamp;
        eval.on_point(&Reading::from(p), at, &mut out);
    }
    out.transitions.clear();
    out.transitions.shrink_to_fit();
    let with_state = LIVE.load(Ordering::SeqCst) - before;
    drop(eval);
    drop(out);

    // Throughput: the whole replay, one worker on this thread, reading the file. Best
    // of `runs`: on a shared machine the slowest runs measure the neighbours.
    reset_peak_rss();
    let (mut secs, mut cpu) = (f64::INFINITY, f64::INFINITY);
    let mut summary = None;
    for _ in 0..runs {
        let file = std::fs::File::open(&input).expect("open input");
        let started = Instant::now();
        let cpu_start = cpu_secs();
        let mut sink = std::io::sink();
        let replay = Replay::new(
            rules.clone(),
            &mut sink,
            ReplayOptions {
                workers: 1,
                watermark: WatermarkConfig::with(Duration::from_secs(1), Duration::from_secs(30)),
                progress_every: 0,
                ..ReplayOptions::default()
            },
            &mut |_| {},
        )
        .expect("replay starts");
        let s = replay
            .run(BufReader::with_capacity(1 << 16, file), &mut |_| {})
            .expect("replay runs");
        secs = secs.min(started.elapsed().as_secs_f64());
        cpu = cpu.min(cpu_secs() - cpu_start);
        summary = Some(s);
    }
    let summary = summary.expect("at least one run");
    Figures {
        rules: rules_n,
        distinct,
        points: summary.points,
        secs,
        cpu,
        transitions: summary.transitions,
        group_evals: summary.evaluation.group_evaluations,
        peak_rss_kb: status_kb("VmHWM:"),
        binary: binary_replay(dir, rules_n, distinct, &input),
        bytes_per_rule_loaded: loaded as f64 / rules_n as f64,
        bytes_per_rule_with_state: with_state as f64 / rules_n as f64,
        compile_us_per_rule,
    }
}

/// One group evaluation, end to end inside the evaluator: routing, the Rhai call,
/// hold bookkeeping and ranking. Every point changes the temperature.
fn group_eval_cost() -> (f64, f64) {
    let sandbox = Sandbox::new(Limits::default());
    let rule =
        Arc::new(Rule::compile(&sandbox, &rule_source(0, false), "bench").expect("compiles"));
    let mut eval = Evaluator::new(Limits::default());
    let mut out = Output::default();
    eval.apply(&RuleChange::Upsert(rule), 0, &mut out);
    let eq = equipment_id(0);
    let mk = |tag: &str, ts: u64, v: linewatch_schemas::Value| {
        let mut p = DataPoint::from_json(
            format!(
                r#"{{"version":1,"timestamp":{ts},"equipmentId":"{eq}","tag":"{tag}","value":1,"quality":"Ok","meta":{{"sequenceNumber":1,"createdAt":1,"sourceId":"s"}}}}"#
            )
            .as_bytes(),
        )
        .expect("valid");
        p.value = v;
        p
    };
    for p in [
        mk("machine_state", 1, "RUNNING".into()),
        mk("product", 1, "1L".into()),
        mk("pressure", 1, 2.0.into()),
    ] {
        eval.on_point(&Reading::from(p), 1, &mut out);
    }
    let points: Vec<Reading> = (0..1000)
        .map(|i| {
            let p = mk(
                "water_temperature",
                2,
                (70.0 + (i % 100) as f64 * 0.1).into(),
            );
            Reading::from(p)
        })
        .collect();
    let n = 1_000_000;
    let before = eval.stats().group_evaluations;
    let started = cpu_secs();
    for i in 0..n {
        eval.on_point(&points[i % points.len()], 2, &mut out);
    }
    let per = (cpu_secs() - started) * 1e9 / n as f64;
    let evals = eval.stats().group_evaluations - before;
    assert_eq!(evals, n as u64, "every point evaluates one group");

    // Parsing one data point, for comparison.
    let line = mk("water_temperature", 2, 70.5.into()).to_json();
    let started = cpu_secs();
    for _ in 0..n {
        std::hint::black_box(DataPoint::from_json(std::hint::black_box(&line)).expect("valid"));
    }
    let parse = (cpu_secs() - started) * 1e9 / n as f64;
    (per, parse)
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let points: usize = std::env::var("LW_BENCH_POINTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let runs: usize = std::env::var("LW_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    // `N` rules from one template, `Nd` rules with distinct code.
    let sizes: Vec<(usize, bool)> = std::env::var("LW_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000,1000d".into())
        .split(',')
        .filter_map(|x| {
            let x = x.trim();
            match x.strip_suffix('d') {
                Some(n) => n.parse().ok().map(|n| (n, true)),
                None => x.parse().ok().map(|n| (n, false)),
            }
        })
        .collect();
    let dir: PathBuf = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("linewatch-bench");
    std::fs::create_dir_all(&dir).expect("bench dir");

    println!("load average before: {}", load_average());
    let (eval_ns, parse_ns) = group_eval_cost();
    println!("one group evaluation (routing + Rhai call + hold + ranking): {eval_ns:.0} ns CPU");
    println!("one data point parsed and validated (DataPoint::from_json): {parse_ns:.0} ns CPU");
    println!();
    println!("| rules | points | wall s | CPU s | points/s (wall) | points/s (CPU time, 1 core) | group evals | transitions | bytes/rule loaded | bytes/rule with state | compile µs/rule | binary: wall s, points/s | binary: peak RSS |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (n, distinct) in sizes {
        let f = bench_size(&dir, n, distinct, points, runs);
        let (bin_time, bin_rss) = match f.binary {
            Some((kb, secs)) => (
                format!("{secs:.2}, {:.0}", f.points as f64 / secs),
                mib(Some(kb)),
            ),
            None => ("n/a".into(), "n/a".into()),
        };
        println!(
            "| {}{} | {} | {:.2} | {:.2} | {:.0} | {:.0} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {} |",
            f.rules,
            if f.distinct { " (distinct code)" } else { "" },
            f.points,
            f.secs,
            f.cpu,
            f.points as f64 / f.secs,
            f.points as f64 / f.cpu,
            f.group_evals,
            f.transitions,
            f.bytes_per_rule_loaded,
            f.bytes_per_rule_with_state,
            f.compile_us_per_rule,
            bin_time,
            bin_rss
        );
        eprintln!(
            "(in-process peak RSS after the {n}-rule replays: {}; includes earlier phases)",
            mib(f.peak_rss_kb)
        );
    }
    println!();
    println!("load average after: {}", load_average());
    println!("inputs kept in {}", dir.display());
}
