//! What the bench reads from `/proc`: a server's process tree, its CPU time and its memory, and
//! the machine description that goes at the top of the results.
//!
//! A server is measured as its whole process tree (nginx master + worker, gunicorn arbiter +
//! worker), since what a request costs is the work of every process that serves it.

use std::{collections::HashMap, fs, path::Path, sync::OnceLock};

use anyhow::{Context, Result};

/// `pid` and every live descendant of it.
pub(crate) fn tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(parent) = stat_fields(child).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                children.entry(parent).or_default().push(child);
            }
        }
    }
    let mut out = vec![pid];
    let mut next = 0;
    while next < out.len() {
        if let Some(kids) = children.get(&out[next]) {
            out.extend(kids);
        }
        next += 1;
    }
    out
}

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces and parens):
/// index 0 is the state, 1 the parent pid, 11/12 utime/stime in clock ticks.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 2..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// Clock ticks per second, the unit of utime/stime (100 on every Linux build seen in practice,
/// but asked rather than assumed).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds consumed so far by the processes of `pids` (threads included, also
/// the ones that already exited: the kernel folds them into the process totals).
pub(crate) fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|&pid| {
            let f = stat_fields(pid)?;
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 / clock_ticks()
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`), summed over `pids`.
pub(crate) fn status_kib(pids: &[u32], field: &str) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = text.lines().find(|l| l.starts_with(field))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// A `/proc/PID/smaps_rollup` field in KiB, summed over `pids`. `Pss` (proportional set size)
/// splits shared pages between the processes that map them, so unlike summed RSS it does not
/// count nginx's or gunicorn's shared libraries once per process; `AnonHugePages` is the part of
/// anonymous memory held in transparent huge pages.
pub(crate) fn rollup_kib(pids: &[u32], field: &str) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
            let line = text.lines().find(|l| l.starts_with(field))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// Open file descriptors of `pids` (for the idle-connection run: how many sockets are held).
pub(crate) fn open_fds(pids: &[u32]) -> usize {
    pids.iter()
        .filter_map(|pid| fs::read_dir(format!("/proc/{pid}/fd")).ok())
        .map(|d| d.count())
        .sum()
}

/// What the results file says about the machine the numbers come from.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub(crate) cpu_model: String,
    pub(crate) cpus: usize,
    pub(crate) kernel: String,
    pub(crate) mem_gib: f64,
    pub(crate) loadavg_before: String,
    /// Transparent huge pages mode (`always`, `madvise`, `never`): with `always`, an allocator's
    /// arena becomes 2 MiB of resident memory at the first touch.
    pub(crate) thp: String,
    /// The CPU flags name a hypervisor: the cores are virtual and may be shared.
    pub(crate) virtual_machine: bool,
}

pub(crate) fn machine() -> Result<Machine> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_owned();
    let mem_kib = fs::read_to_string("/proc/meminfo")?
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0);
    Ok(Machine {
        cpu_model,
        cpus,
        kernel,
        mem_gib: mem_kib / 1024.0 / 1024.0,
        loadavg_before: loadavg(),
        virtual_machine: cpuinfo
            .lines()
            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor")),
        thp: fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .ok()
            .and_then(|s| Some(s.split('[').nth(1)?.split(']').next()?.to_owned()))
            .unwrap_or_else(|| "unknown".into()),
    })
}

/// The 1/5/15-minute load averages, to say how busy the machine was around a run.
pub(crate) fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Size of a file in bytes, if it exists.
pub(crate) fn file_size(path: &Path) -> Option<u64> {
    fs::metadata(path).ok().map(|m| m.len())
}
