//! CPU cost per delivered message: user+system time of every process of a target (and of
//! the generator), read from `/proc/<pid>/stat` before and after a run's window.
//!
//! A process counts with all its descendants alive at the time of reading (PostgreSQL's
//! backends are children of the postmaster), plus its own `cutime`+`cstime`: the time of
//! children it has already reaped. That sum only grows, so a backend that exits during the
//! window still counts, from the time it had at the first reading to its end (its whole time
//! moves into the postmaster's `cutime` when reaped). The generator (this process) counts
//! alone: its children are the targets' processes.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

/// A process of a target: what it is called in the report and its pid.
#[derive(Debug, Clone)]
pub struct Proc {
    pub name: String,
    pub pid: u32,
    /// Count its descendants and reaped children too (not for the generator).
    pub tree: bool,
}

/// CPU ticks of a set of processes at one moment.
pub struct Sample {
    at: Instant,
    ticks: Vec<(String, u64)>,
}

/// One process's share of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProcCost {
    pub name: String,
    pub cpu_ms: f64,
    /// Mean cores busy over the window (1.0 = one core).
    pub cores: f64,
    pub us_per_msg: f64,
}

/// A run's CPU cost.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CpuCost {
    /// Seconds between the two readings.
    pub window_s: f64,
    /// Distinct messages delivered in the run (the divisor).
    pub delivered: u64,
    pub processes: Vec<ProcCost>,
    pub total_cpu_ms: f64,
    pub total_cores: f64,
    pub total_us_per_msg: f64,
}

fn clk_tck() -> u64 {
    static T: OnceLock<u64> = OnceLock::new();
    *T.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// `(ppid, utime+stime, cutime+cstime)` of a process.
fn stat(pid: u32) -> Option<(u32, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): ppid is field 4, utime..cstime fields 14..17.
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok());
    let ppid = u32::try_from(n(1)?).ok()?;
    Some((ppid, n(11)? + n(12)?, n(13)? + n(14)?))
}

/// Every process's `(ppid, own ticks)`.
fn all() -> HashMap<u32, (u32, u64)> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((ppid, own, _)) = stat(pid) {
            out.insert(pid, (ppid, own));
        }
    }
    out
}

/// Reads the ticks of `procs` now.
pub fn sample(procs: &[Proc]) -> Sample {
    let table = if procs.iter().any(|p| p.tree) {
        all()
    } else {
        HashMap::new()
    };
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, (ppid, _)) in &table {
        children.entry(*ppid).or_default().push(*pid);
    }
    let ticks = procs
        .iter()
        .map(|p| {
            let Some((_, own, reaped)) = stat(p.pid) else {
                return (p.name.clone(), 0);
            };
            let mut sum = own;
            if p.tree {
                sum += reaped;
                let mut stack = children.get(&p.pid).cloned().unwrap_or_default();
                while let Some(c) = stack.pop() {
                    sum += table.get(&c).map_or(0, |(_, t)| *t);
                    stack.extend(children.get(&c).into_iter().flatten());
                }
            }
            (p.name.clone(), sum)
        })
        .collect();
    Sample {
        at: Instant::now(),
        ticks,
    }
}

/// The cost between two readings of the same processes, per delivered message.
pub fn cost(before: &Sample, after: &Sample, delivered: u64) -> CpuCost {
    let window_s = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    let tck = clk_tck() as f64;
    let per = |ms: f64| {
        if delivered == 0 {
            0.0
        } else {
            ms * 1000.0 / delivered as f64
        }
    };
    let processes: Vec<ProcCost> = after
        .ticks
        .iter()
        .map(|(name, t)| {
            let t0 = before
                .ticks
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, t)| *t);
            let cpu_ms = t.saturating_sub(t0) as f64 * 1000.0 / tck;
            ProcCost {
                name: name.clone(),
                cpu_ms,
                cores: cpu_ms / 1000.0 / window_s,
                us_per_msg: per(cpu_ms),
            }
        })
        .collect();
    let total_cpu_ms: f64 = processes.iter().map(|p| p.cpu_ms).sum();
    CpuCost {
        window_s,
        delivered,
        total_cpu_ms,
        total_cores: total_cpu_ms / 1000.0 / window_s,
        total_us_per_msg: per(total_cpu_ms),
        processes,
    }
}
