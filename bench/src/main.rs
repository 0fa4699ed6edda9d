//! `indaba-bench`: Indaba's benchmark, one command (see README "Benchmark").
//!
//! Starts each target itself on loopback (the in-memory ceiling router, the Node `ws` peer,
//! the single-node program, the distributed deployment), runs the scenarios against each in
//! turn in the same run, and writes a JSON file and a markdown table under `bench/results/`,
//! every figure next to the ceiling's and the Node peer's, with the CPU time per delivered
//! message of every process.

mod ceiling;
mod chart;
mod cpu;
mod load;
mod targets;
mod uploads;

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use serde_json::{json, Value};

use targets::{Kind, Target};

#[derive(Parser)]
#[command(
    name = "indaba-bench",
    about = "Open-loop load tests of Indaba against an in-memory ceiling"
)]
struct Args {
    /// Targets, comma-separated: ceiling, node, single, distributed, distributed-per-message.
    #[arg(long, default_value = "ceiling,node,single,distributed")]
    targets: String,
    /// Scenarios, comma-separated: idle, direct, step, room, slow, reactions, uploads.
    #[arg(long, default_value = "idle,direct,step,room,slow")]
    scenarios: String,
    /// Idle connections (this sandbox allows 20,000 open files per process, and the ceiling
    /// router holds both ends of every socket in this one process).
    #[arg(long, default_value_t = 9_000)]
    idle: usize,
    /// Seconds per load run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Total rates (reactions/s) of the `reactions` scenario.
    #[arg(long, default_value = "1000")]
    reaction_rates: String,
    /// Total rates (msg/s) of the `direct` scenario.
    #[arg(long, default_value = "1000,2000,5000")]
    rates: String,
    /// Sender/receiver pairs.
    #[arg(long, default_value_t = 200)]
    pairs: usize,
    /// Rates tried by `step`, in order, until p99 > 50 ms or any loss.
    #[arg(long, default_value = "1000,2000,4000,6000,8000,12000,16000,20000")]
    steps: String,
    /// Room size.
    #[arg(long, default_value_t = 1000)]
    room: usize,
    /// Messages per second sent into the room by the `room` scenario.
    #[arg(long, default_value_t = 20)]
    room_rate: u64,
    /// Clients uploading photos in the `uploads` scenario (beside `direct` at 2,000/s).
    #[arg(long, default_value_t = 50)]
    uploaders: usize,
    /// What the `uploads` scenario sends: `photo` (a JPEG: checked, stripped, thumbnailed) or
    /// `pdf` (only its first bytes read).
    #[arg(long, default_value = "photo")]
    upload_kind: String,
    /// Each uploader's rate in kbit/s (0: as fast as loopback allows; 4000 is a phone's
    /// uplink).
    #[arg(long, default_value_t = 0)]
    upload_kbps: u64,
    /// Size of each photo in the `uploads` scenario, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    photo_bytes: usize,
    /// Where the release binaries are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Output directory.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Only redraw `latency.png` from an existing `latest.json` (no load is generated).
    #[arg(long)]
    chart_from: Option<PathBuf>,
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| x.trim().to_owned())
        .filter(|x| !x.is_empty())
        .collect()
}

fn rates(s: &str) -> anyhow::Result<Vec<u64>> {
    list(s)
        .iter()
        .map(|r| r.parse().map_err(|_| anyhow::anyhow!("bad rate {r:?}")))
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(report) = &args.chart_from {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(report)?)?;
        let dir = report.parent().unwrap_or(std::path::Path::new("."));
        let png = chart::draw(&doc, dir).map_err(|e| anyhow::anyhow!(e))?;
        println!("wrote {}", png.display());
        return Ok(());
    }
    let scenarios = list(&args.scenarios);
    let kinds: Vec<Kind> = list(&args.targets)
        .iter()
        .map(|t| match t.as_str() {
            "ceiling" => Ok(Kind::Ceiling),
            "node" => Ok(Kind::Node),
            "single" => Ok(Kind::Single),
            "distributed" => Ok(Kind::Distributed),
            "distributed-per-message" => Ok(Kind::DistributedPerMessage),
            other => Err(anyhow::anyhow!("unknown target {other:?}")),
        })
        .collect::<anyhow::Result<_>>()?;
    let mut results: BTreeMap<&'static str, Value> = BTreeMap::new();
    // Fresh user ids per run, so no run sees another's conversations.
    let mut base: i64 = 1_000_000;
    let mut next_base = |n: usize| {
        base += i64::try_from(n).unwrap_or(0) + 1000;
        base
    };
    for kind in kinds {
        eprintln!("== {}", kind.name());
        let t = std::sync::Arc::new(Target::start(kind, &args.bin_dir).await?);
        let mut r = serde_json::Map::new();
        if scenarios.iter().any(|s| s == "idle") {
            let x = load::idle(&t, args.idle, next_base(args.idle)).await?;
            eprintln!("   idle: {x:?}");
            r.insert("idle".into(), json!(x));
        }
        if scenarios.iter().any(|s| s == "direct") {
            let mut runs = Vec::new();
            for rate in rates(&args.rates)? {
                let x = load::direct(
                    &t,
                    args.pairs,
                    rate,
                    args.seconds,
                    0,
                    next_base(args.pairs * 2),
                )
                .await?;
                eprintln!(
                    "   direct {rate}/s: e2e {:?} ack {:?} lost {} dup {}",
                    x.end_to_end_ms, x.ack_ms, x.lost, x.duplicated
                );
                eprintln!(
                    "   direct {rate}/s: CPU {:.0} µs/msg ({})",
                    x.cpu.total_us_per_msg,
                    x.cpu
                        .processes
                        .iter()
                        .map(|p| format!("{} {:.0}", p.name, p.us_per_msg))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                runs.push(json!(x));
            }
            r.insert("direct".into(), Value::Array(runs));
        }
        if scenarios.iter().any(|s| s == "step") {
            let mut best = 0;
            let mut runs = Vec::new();
            for rate in rates(&args.steps)? {
                let x = load::direct(
                    &t,
                    args.pairs,
                    rate,
                    args.seconds,
                    0,
                    next_base(args.pairs * 2),
                )
                .await?;
                // Clean: p99 within 50 ms, every send acknowledged, nothing lost or doubled.
                let clean = x.end_to_end_ms.p99 <= 50.0
                    && x.lost == 0
                    && x.duplicated == 0
                    && x.acked == x.sent;
                eprintln!(
                    "   step {rate}/s: p99 {:.2} ms lost {} → {}",
                    x.end_to_end_ms.p99,
                    x.lost,
                    if clean { "clean" } else { "stop" }
                );
                runs.push(json!(x));
                if !clean {
                    break;
                }
                best = rate;
            }
            r.insert(
                "step".into(),
                json!({"highest_clean_rate": best, "runs": runs}),
            );
        }
        if scenarios.iter().any(|s| s == "room") {
            let x = load::room(
                &t,
                args.room,
                args.room_rate,
                args.seconds,
                next_base(args.room),
            )
            .await?;
            eprintln!("   room: last {:?} lost {}", x.last_recipient_ms, x.lost);
            r.insert("room".into(), json!(x));
        }
        // The in-memory routers route chat messages only: they have no reactions to compare.
        if scenarios.iter().any(|s| s == "reactions") && !matches!(kind, Kind::Ceiling | Kind::Node)
        {
            let mut runs = Vec::new();
            for rate in rates(&args.reaction_rates)? {
                let x = load::reactions(&t, 100, rate, args.seconds, next_base(100)).await?;
                eprintln!(
                    "   reactions {rate}/s: own event {:?} answered {}/{} refused {}",
                    x.own_event_ms, x.answered, x.sent, x.refused
                );
                runs.push(json!(x));
            }
            r.insert("reactions".into(), Value::Array(runs));
        }
        if scenarios.iter().any(|s| s == "slow") {
            let slow = (args.pairs / 100).max(1);
            let x = load::direct(
                &t,
                args.pairs,
                2000,
                args.seconds,
                slow,
                next_base(args.pairs * 2),
            )
            .await?;
            eprintln!(
                "   slow: e2e {:?} lost {} rss {}→{} KiB",
                x.end_to_end_ms, x.lost, x.rss_before_kib, x.rss_after_kib
            );
            r.insert("slow".into(), json!(x));
        }
        // Photos shared while everyone chats: chat latency with and without them. The
        // in-memory routers have no attachments.
        if scenarios.iter().any(|s| s == "uploads") && !matches!(kind, Kind::Ceiling | Kind::Node) {
            let photo = std::sync::Arc::new(uploads::Upload::of_kind(
                &args.upload_kind,
                args.photo_bytes,
            )?);
            let quiet = load::direct(
                &t,
                args.pairs,
                2000,
                args.seconds,
                0,
                next_base(args.pairs * 2),
            )
            .await?;
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let uploaders = tokio::spawn(uploads::run(
                t.clone(),
                args.uploaders,
                next_base(args.uploaders * 2),
                photo.clone(),
                args.upload_kbps,
                stop.clone(),
            ));
            // Let the uploads reach their pace before measuring.
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            let busy = load::direct(
                &t,
                args.pairs,
                2000,
                args.seconds,
                0,
                next_base(args.pairs * 2),
            )
            .await?;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let up = uploaders.await?;
            eprintln!(
                "   uploads: chat p99 {:.2} ms without, {:.2} ms with {} uploaders ({:.1} photos/s, {:.1} MiB/s, photo message p99 {:.0} ms, {} failed{})",
                quiet.end_to_end_ms.p99,
                busy.end_to_end_ms.p99,
                up.clients,
                up.per_second,
                up.mib_per_second,
                up.photo_message_ms.p99,
                up.failed,
                up.first_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
            );
            r.insert(
                "uploads".into(),
                json!({"rate": 2000, "without_uploads": quiet, "with_uploads": busy, "uploads": up}),
            );
        }
        results.insert(kind.name(), Value::Object(r));
        drop(t);
    }
    write_report(&args, &results)
}

/// One row: a metric of a scenario for every target.
fn rows(results: &BTreeMap<&'static str, Value>) -> Vec<(String, BTreeMap<&'static str, f64>)> {
    let mut out: Vec<(String, BTreeMap<&'static str, f64>)> = Vec::new();
    // A row only one target has (a process of its own) goes right after that target's
    // previous row, not to the end of the table.
    let mut cursor: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut add = |name: String, target: &'static str, v: Option<f64>| {
        if let Some(v) = v {
            let at = match out.iter().position(|(n, _)| *n == name) {
                Some(i) => {
                    out[i].1.insert(target, v);
                    i
                }
                None => {
                    let i = cursor.get(target).map_or(out.len(), |c| c + 1);
                    out.insert(i, (name, BTreeMap::from([(target, v)])));
                    i
                }
            };
            cursor.insert(target, at);
        }
    };
    for (target, r) in results {
        let t = *target;
        if let Some(i) = r.get("idle") {
            add(
                format!("idle: {} connections, connects/s", i["connections"]),
                t,
                i["connects_per_s"].as_f64(),
            );
            if t != "ceiling" {
                add(
                    "idle: gateway KiB per connection".into(),
                    t,
                    i["kib_per_connection"].as_f64(),
                );
            }
        }
        for d in r
            .get("direct")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let rate = &d["rate"];
            for q in ["p50", "p99", "p999", "max"] {
                add(
                    format!("direct {rate}/s: end-to-end {q} ms"),
                    t,
                    d["end_to_end_ms"][q].as_f64(),
                );
            }
            add(
                format!("direct {rate}/s: delivered msg/s (distinct, over the send window)"),
                t,
                d["cpu"]["delivered"]
                    .as_f64()
                    .zip(d["seconds"].as_f64())
                    .map(|(n, s)| n / s.max(1.0)),
            );
            add(
                format!("direct {rate}/s: CPU µs per delivered message, all processes"),
                t,
                d["cpu"]["total_us_per_msg"].as_f64(),
            );
            for p in d["cpu"]["processes"].as_array().into_iter().flatten() {
                add(
                    format!(
                        "direct {rate}/s: CPU µs/msg, {}",
                        p["name"].as_str().unwrap_or("?")
                    ),
                    t,
                    p["us_per_msg"].as_f64(),
                );
            }
            add(
                format!("direct {rate}/s: ack p50 ms"),
                t,
                d["ack_ms"]["p50"].as_f64(),
            );
            add(
                format!("direct {rate}/s: ack p99 ms"),
                t,
                d["ack_ms"]["p99"].as_f64(),
            );
            add(
                format!("direct {rate}/s: generator send lateness p50 ms (floor)"),
                t,
                d["send_lateness_ms"]["p50"].as_f64(),
            );
            add(
                format!("direct {rate}/s: refused (error) + unanswered in the run"),
                t,
                d["refused"]
                    .as_f64()
                    .zip(d["unanswered"].as_f64())
                    .map(|(a, b)| a + b),
            );
            add(
                format!("direct {rate}/s: lost (acknowledged, not delivered)"),
                t,
                d["lost"].as_f64(),
            );
            add(
                format!("direct {rate}/s: duplicated"),
                t,
                d["duplicated"].as_f64(),
            );
        }
        for x in r
            .get("reactions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let rate = &x["rate"];
            for q in ["p50", "p99", "max"] {
                add(
                    format!("reactions {rate}/s (100 users, 1 message): own event {q} ms"),
                    t,
                    x["own_event_ms"][q].as_f64(),
                );
            }
            add(
                format!("reactions {rate}/s: unanswered or refused"),
                t,
                x["sent"]
                    .as_f64()
                    .zip(x["answered"].as_f64())
                    .map(|(s, a)| s - a),
            );
        }
        if let Some(s) = r.get("step") {
            add(
                "step: highest clean rate msg/s (p99 ≤ 50 ms, no loss)".into(),
                t,
                s["highest_clean_rate"].as_f64(),
            );
        }
        if let Some(m) = r.get("room") {
            add(
                format!("room {}: last recipient p50 ms", m["members"]),
                t,
                m["last_recipient_ms"]["p50"].as_f64(),
            );
            add(
                format!("room {}: last recipient p99 ms", m["members"]),
                t,
                m["last_recipient_ms"]["p99"].as_f64(),
            );
            add(
                format!("room {}: lost", m["members"]),
                t,
                m["lost"].as_f64(),
            );
        }
        if let Some(s) = r.get("slow") {
            add(
                "slow (1% stop reading, 2000/s): others' end-to-end p99 ms".into(),
                t,
                s["end_to_end_ms"]["p99"].as_f64(),
            );
            add(
                "slow: others lost (acknowledged, not delivered)".into(),
                t,
                s["lost"].as_f64(),
            );
            if t != "ceiling" {
                add(
                    "slow: gateway RSS growth KiB".into(),
                    t,
                    s["rss_after_kib"]
                        .as_f64()
                        .zip(s["rss_before_kib"].as_f64())
                        .map(|(a, b)| a - b),
                );
            }
        }
    }
    out
}

fn write_report(args: &Args, results: &BTreeMap<&'static str, Value>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let cmd: Vec<String> = std::env::args().collect();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    // The CPU model: absolute figures move 2× between machines of one kind; a result is
    // read as ratios between targets of one run, on the machine it names.
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let doc = json!({
        "command": cmd.join(" "),
        "cpus": cpus,
        "cpu_model": cpu_model,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "results": results,
    });
    std::fs::write(
        args.out.join("latest.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    // In the order they run, whatever the map's order.
    let order = [
        "ceiling",
        "node",
        "single-node",
        "distributed",
        "distributed, commit per message",
    ];
    let mut targets: Vec<&str> = results.keys().copied().collect();
    targets.sort_by_key(|t| order.iter().position(|o| o == t).unwrap_or(order.len()));
    let mut md = format!(
        "# Indaba benchmark\n\nCommand: `{}`  \nMachine: {cpus} CPUs ({cpu_model}), load generator on the same machine, loopback only.\n",
        cmd.join(" "),
    );
    md.push_str(&references(results));
    md.push_str(&format!("\n| metric | {} |", targets.join(" | ")));
    // Ratios to the references of the same run: the in-memory Rust ceiling and the Node peer.
    let refs: Vec<&str> = ["ceiling", "node"]
        .into_iter()
        .filter(|r| targets.contains(r))
        .collect();
    let mut ratios: Vec<(&str, &str)> = Vec::new();
    for (k, r) in refs.iter().enumerate() {
        for o in &targets {
            if !refs[..=k].contains(o) {
                ratios.push((o, r));
            }
        }
    }
    for (o, r) in &ratios {
        md.push_str(&format!(" {o} ÷ {r} |"));
    }
    md.push_str("\n|---|");
    for _ in 0..targets.len() + ratios.len() {
        md.push_str("---:|");
    }
    md.push('\n');
    for (name, vals) in rows(results) {
        md.push_str(&format!("| {name} |"));
        for t in &targets {
            match vals.get(t) {
                Some(v) => md.push_str(&format!(" {} |", fmt(*v))),
                None => md.push_str(" — |"),
            }
        }
        for (o, r) in &ratios {
            match (vals.get(o), vals.get(r)) {
                (Some(v), Some(c)) if *c != 0.0 => md.push_str(&format!(" {:.2} |", v / c)),
                _ => md.push_str(" — |"),
            }
        }
        md.push('\n');
    }
    md.push_str(CPU_NOTE);
    match chart::draw(&doc, &args.out) {
        Ok(png) => md.push_str(&format!(
            "\n![latency against rate]({})\n",
            png.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("latency.png")
        )),
        Err(note) => eprintln!("chart: {note}"),
    }
    std::fs::write(args.out.join("latest.md"), &md)?;
    println!("{md}");
    Ok(())
}

/// How the CPU rows are measured (printed under the table).
const CPU_NOTE: &str =
    "\nCPU µs per delivered message: user+system time (`/proc/<pid>/stat` utime+stime, in \
clock ticks of `getconf CLK_TCK`) of every process of the target — gateway, message-service, \
presence-service, nats-server, PostgreSQL (the postmaster with every backend and helper it forked, \
and the time of those it reaped during the run), the single-node `indaba`, the Node router — and \
of the generator (this process), read just before the first send of a run and again once every \
send was answered and every acknowledged message delivered (at most 7 s after the last send), \
divided by the distinct messages delivered in that run. The ceiling router runs inside the \
generator's process, so its one figure is both. A tick is 10 ms at the usual CLK_TCK of 100: \
short runs at low rates carry a few percent of rounding per process. The figure falls as the rate \
rises (more messages per wakeup of every process, background work spread thinner): compare \
targets at one rate.\n";

/// The reference targets' figures of this run, for the header: with them a reader tells a
/// slow machine from a slow change.
fn references(results: &BTreeMap<&'static str, Value>) -> String {
    let mut out = String::new();
    for r in ["ceiling", "node"] {
        let Some(x) = results.get(r) else { continue };
        let mut parts: Vec<String> = Vec::new();
        for d in x
            .get("direct")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            parts.push(format!(
                "direct {}/s p50 {} / p99 {} ms, {} CPU µs/msg",
                d["rate"],
                fmt(d["end_to_end_ms"]["p50"].as_f64().unwrap_or(0.0)),
                fmt(d["end_to_end_ms"]["p99"].as_f64().unwrap_or(0.0)),
                fmt(d["cpu"]["total_us_per_msg"].as_f64().unwrap_or(0.0)),
            ));
        }
        if let Some(s) = x.get("step") {
            parts.push(format!("step {} msg/s", s["highest_clean_rate"]));
        }
        if let Some(i) = x.get("idle") {
            parts.push(format!(
                "{} connects/s",
                fmt(i["connects_per_s"].as_f64().unwrap_or(0.0))
            ));
        }
        if !parts.is_empty() {
            let what = if r == "ceiling" {
                "Rust ceiling (in-memory, in the generator's process)"
            } else {
                "Node `ws` peer (bench/peer/node-router.js)"
            };
            out.push_str(&format!("{what} in this run: {}.  \n", parts.join("; ")));
        }
    }
    out
}

fn fmt(v: f64) -> String {
    if (v.fract() == 0.0 && v.abs() < 1e12) || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
