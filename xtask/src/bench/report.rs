//! Turns one run's [`Results`] into `RESULTS.md` (machine, method, exact commands, tables, ratios,
//! targets with pass/miss and what bounds a miss) and the PNG charts beside it.

use std::{fmt::Write as _, path::Path};

use anyhow::Result;

use super::{
    PeerRow, Plan, Results,
    chart::{self, Panel},
    median, servers,
};

/// Median figures of one server over its rounds.
#[derive(Debug, Clone)]
struct Row {
    name: String,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    cpu_us: f64,
    idle_rss_kib: f64,
    idle_pss_kib: f64,
    idle_anon_kib: f64,
    idle_file_kib: f64,
    idle_thp_kib: f64,
    peak_rss_kib: f64,
    startup_ms: f64,
    binary: Option<u64>,
    errors: u64,
    server_util: f64,
    wrk_util: f64,
}

fn rows(peers: &[PeerRow]) -> Vec<Row> {
    peers
        .iter()
        .filter(|p| !p.runs.is_empty())
        .map(|p| {
            let m = |f: &dyn Fn(&super::PeerRun) -> f64| median(p.runs.iter().map(f).collect());
            Row {
                name: p.spec.name.into(),
                rps: m(&|r| r.measured.wrk.rps()),
                p50_us: m(&|r| r.measured.wrk.p50_us),
                p99_us: m(&|r| r.measured.wrk.p99_us),
                p999_us: m(&|r| r.measured.wrk.p999_us),
                cpu_us: m(&|r| r.measured.cpu_us_per_request()),
                idle_rss_kib: m(&|r| r.idle_rss_kib as f64),
                idle_pss_kib: m(&|r| r.idle_pss_kib as f64),
                idle_anon_kib: m(&|r| r.idle_anon_kib as f64),
                idle_file_kib: m(&|r| r.idle_file_kib as f64),
                idle_thp_kib: m(&|r| r.idle_thp_kib as f64),
                peak_rss_kib: m(&|r| r.hwm_kib as f64),
                startup_ms: median(p.startup_ms.clone()),
                binary: p.spec.binary.as_deref().and_then(super::procfs::file_size),
                errors: p.runs.iter().map(|r| r.measured.wrk.errors).sum(),
                server_util: m(&|r| r.measured.server_util()),
                wrk_util: m(&|r| r.measured.wrk_util()),
            }
        })
        .collect()
}

fn ms(us: f64) -> String {
    if us.is_finite() {
        format!("{:.2}", us / 1e3)
    } else {
        "–".into()
    }
}
fn mib(kib: f64) -> String {
    if kib.is_finite() {
        format!("{:.2}", kib / 1024.0)
    } else {
        "–".into()
    }
}
fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "–".into()
    }
}
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        a / b
    } else {
        f64::NAN
    }
}

pub(crate) fn markdown(plan: &Plan, r: &Results, published: bool) -> String {
    let mut md = String::new();
    let w = &mut md;
    let rows = rows(&r.peers);
    let find = |n: &str| rows.iter().find(|x| x.name == n);

    let _ = writeln!(w, "# Benchmark results\n");
    let _ = writeln!(
        w,
        "Written by `cargo xtask bench{}` — do not edit by hand; re-run it. Started {}, finished {}.\n",
        if plan.quick { " --quick" } else { "" },
        r.started,
        r.finished
    );
    if !published {
        let _ = writeln!(
            w,
            "_A smoke or partial run: the published numbers are in `bench/RESULTS.md`._\n"
        );
    }
    let _ = writeln!(w, "## Machine and conditions\n");
    if let Some(m) = &r.machine {
        let _ = writeln!(
            w,
            "- CPU: {} × {}{}\n- Kernel: Linux {} (transparent huge pages: `{}`)\n- Memory: {:.1} GiB\n- Load average (1/5/15 min) before: {}; after: {}",
            m.cpus,
            m.cpu_model,
            if m.virtual_machine {
                " (virtual machine)"
            } else {
                ""
            },
            m.kernel,
            m.thp,
            m.mem_gib,
            m.loadavg_before,
            r.loadavg_after
        );
    }
    if let Ok(note) = std::env::var("HELLO_BENCH_NOTE") {
        let _ = writeln!(w, "- Conditions: {note}");
    }
    let _ = writeln!(
        w,
        "\nWith 2 CPUs, anything else running shares the cores with the server or with wrk: a load \
         average above ~0.3 before the run means the absolute figures are low and noisy. The ratios \
         are the robust part, since the servers take turns within each round.\n"
    );

    let _ = writeln!(w, "## Method\n");
    let _ = writeln!(
        w,
        "- Every server runs pinned to CPU {} (`taskset -c {}`; the bench sets the affinity itself so exec → first 200 \
         does not include taskset's own exec) and wrk to CPU {}. Same wrk parameters for all.\n\
         - {} round(s); in each, every server is started fresh ({} timed starts), warmed up for {} s, then loaded for {} s. \
         The order rotates between rounds so drift hits all alike. Figures are medians over rounds.\n\
         - **CPU µs per request** = (utime + stime of the server's whole process tree, from `/proc/PID/stat`, after − before the run) ÷ requests wrk completed.\n\
         - **Idle RSS**: `VmRSS` summed over the tree, 0.5 s after the first 200 (before any load); **idle PSS** the same from `smaps_rollup` (shared pages split between processes, so a master + worker pair is not counted twice). **Peak RSS**: `VmHWM` summed over the tree after the run.\n\
         - **Exec → first 200**: from spawn to the first `200` of a `GET /` polled on fresh connections every ~50 µs (median of all starts).\n\
         - **Bound**: server CPU use ÷ wall time and wrk's own CPU use ÷ wall time. A load generator at ~100 % of its core caps the rate it can show.\n\
         - Ours runs with every middleware on (metrics, request ids, `x-served-by`) and access logs off; nginx with `access_log off`. \
         The Flask dev server runs as the tutorial writes it, which logs every request to stderr (to a file here).\n",
        servers::SERVER_CPU,
        servers::SERVER_CPU,
        servers::LOAD_CPU,
        plan.rounds,
        plan.startups_per_round,
        plan.warmup_s,
        plan.run_s
    );

    let _ = writeln!(w, "## Commands\n\nSetup:\n```");
    for l in &r.setup {
        let _ = writeln!(w, "{l}");
    }
    let _ = writeln!(
        w,
        "```\n\nServers:\n\n| server | command | what it is |\n|---|---|---|"
    );
    for p in &r.peers {
        let _ = writeln!(
            w,
            "| {} | `{}` | {} |",
            p.spec.name,
            p.spec.command_line(),
            p.spec.note
        );
    }
    let _ = writeln!(
        w,
        "\nLoad (same for every server):\n```\n{}\n```\n",
        r.wrk_line
    );

    // The main table.
    let _ = writeln!(w, "## GET / — every server, same run\n");
    if !rows.is_empty() {
        let _ = writeln!(w, "![req/s and CPU per request](peers.png)\n");
    }
    let _ = writeln!(
        w,
        "| server | req/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req | idle RSS MiB | idle PSS MiB | peak RSS MiB | exec → 200 ms | binary MiB | errors | server CPU | wrk CPU |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for x in &rows {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} % | {:.0} % |",
            x.name,
            num(x.rps, 0),
            ms(x.p50_us),
            ms(x.p99_us),
            ms(x.p999_us),
            num(x.cpu_us, 2),
            mib(x.idle_rss_kib),
            mib(x.idle_pss_kib),
            mib(x.peak_rss_kib),
            num(x.startup_ms, 1),
            x.binary
                .map(|b| format!("{:.2}", b as f64 / 1048576.0))
                .unwrap_or_else(|| "–".into()),
            x.errors,
            x.server_util * 100.0,
            x.wrk_util * 100.0,
        );
    }
    for p in r.peers.iter().filter(|p| p.failure.is_some()) {
        let _ = writeln!(
            w,
            "\n**{} was not measured**: {}",
            p.spec.name,
            p.failure.as_deref().unwrap_or("")
        );
    }
    if let Some(size) = r.image_size {
        let _ = writeln!(
            w,
            "\nImage `hello-world:dev`: {:.2} MiB (`docker image inspect`).",
            size as f64 / 1048576.0
        );
    } else {
        let _ = writeln!(
            w,
            "\nImage size: no `hello-world:dev` image on this machine when the bench ran (`cargo xtask image` builds it)."
        );
    }

    // What idle memory is made of: heap and stacks, or pages of the mapped binary and libraries.
    let _ = writeln!(
        w,
        "\nIdle RSS by kind (`RssAnon` / `RssFile` of `/proc/PID/status`, `AnonHugePages` of `smaps_rollup`, summed over the tree):\n\n| server | anonymous MiB | of it in huge pages MiB | file-backed MiB |\n|---|---:|---:|---:|"
    );
    for x in &rows {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} |",
            x.name,
            mib(x.idle_anon_kib),
            mib(x.idle_thp_kib),
            mib(x.idle_file_kib)
        );
    }

    // Ratios.
    let nginx = find("nginx");
    let flask = find("flask-dev");
    let _ = writeln!(
        w,
        "\nRatios (req/s: higher is better; CPU/request: lower is better):\n"
    );
    let _ = writeln!(
        w,
        "| server | req/s ÷ nginx | CPU/req ÷ nginx | req/s ÷ Flask dev | CPU/req ÷ Flask dev |\n|---|---:|---:|---:|---:|"
    );
    for x in &rows {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} |",
            x.name,
            num(nginx.map_or(f64::NAN, |n| ratio(x.rps, n.rps)), 2),
            num(nginx.map_or(f64::NAN, |n| ratio(x.cpu_us, n.cpu_us)), 2),
            num(flask.map_or(f64::NAN, |n| ratio(x.rps, n.rps)), 1),
            num(flask.map_or(f64::NAN, |n| ratio(x.cpu_us, n.cpu_us)), 3),
        );
    }

    targets(w, r, &rows);
    growth(w, r);
    super::h2c::markdown(w, r.h2c.as_ref());
    super::newconn::markdown(w, r.newconn.as_ref());

    let _ = writeln!(w, "\n## Profile under the GET / load\n");
    instruction_table(w, r);
    match &r.profile {
        Some(profiles) => {
            for (name, p) in profiles {
                let _ = writeln!(w, "### {name}\n");
                match p {
                    Ok(p) => {
                        let _ = writeln!(w, "{}", p.text);
                    }
                    Err(e) => {
                        let _ = writeln!(w, "Not available: {e}\n");
                    }
                }
            }
        }
        None => {
            let _ = writeln!(
                w,
                "Not run in this mode (it runs in the full run, or with `--only profile`)."
            );
        }
    }
    if !r.notes.is_empty() {
        let _ = writeln!(w, "\n## Notes\n");
        for n in &r.notes {
            let _ = writeln!(w, "- {n}");
        }
    }
    md
}

/// One server's entry in a by-server list of results, if it was measured and succeeded.
fn measured<'r, T>(
    list: &'r Option<Vec<(String, Result<T, String>)>>,
    name: &str,
) -> Option<&'r T> {
    list.as_ref()?
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, result)| result.as_ref().ok())
}

/// A server's profile, if it ran.
fn profiled<'r>(r: &'r Results, name: &str) -> Option<&'r super::profile::Profile> {
    measured(&r.profile, name)
}

/// The most any server can be ahead of Flask's dev server on this machine: the kernel's part of
/// a request (nginx's, from its profile) is work every server does, so Flask's CPU per request
/// over it is the ceiling; and what a `target` ratio leaves for user space.
fn flask_ceiling(r: &Results, flask_cpu_us: f64, target: f64) -> String {
    let (Some(ours), Some(nginx)) = (profiled(r, "ours-glibc"), profiled(r, "nginx")) else {
        return String::new();
    };
    let kernel = nginx.kernel_us;
    let budget = flask_cpu_us / target;
    let verdict = if budget > kernel {
        format!(
            "{target:.0}× would leave {:.2} µs per request for user space, where nginx spends {:.2} µs and ours {:.2}",
            budget - kernel,
            nginx.user_us,
            ours.user_us
        )
    } else {
        format!(
            "{target:.0}× is out of reach for any server: it allows {budget:.2} µs per request, less than the kernel's part alone"
        )
    };
    format!(
        " The kernel's part of a request (loopback TCP, the same work for every server: {kernel:.2} µs in nginx's profile below) caps any server here at {:.0}× Flask's {flask_cpu_us:.0} µs; {verdict}.",
        flask_cpu_us / kernel
    )
}

/// Instructions per `GET /` by server (callgrind), with each one's ratio to nginx.
fn instruction_table(w: &mut String, r: &Results) {
    let Some(counts) = &r.instructions else {
        return;
    };
    let _ = writeln!(
        w,
        "### Instructions per request\n\n\
         User-space instructions per `GET /`, counted by valgrind's callgrind: unlike CPU time, \
         hardly moved by how busy the machine is (two counts of one binary agree within about \
         1 %). The kernel's part of a request (loopback TCP, the profiles below) is the same \
         for every server.\n\n\
         | server | instructions / request | ÷ nginx | requests counted |\n|---|---:|---:|---:|"
    );
    let nginx = instructions_of(r, "nginx");
    for (name, count) in counts {
        match count {
            Ok(c) => {
                let _ = writeln!(
                    w,
                    "| {name} | {:.0} | {} | {} |",
                    c.per_request,
                    num(nginx.map_or(f64::NAN, |n| c.per_request / n), 2),
                    c.requests
                );
            }
            Err(e) => {
                let _ = writeln!(w, "| {name} | not counted: {} | | |", e.replace('|', "\\|"));
            }
        }
    }
    let _ = writeln!(w, "\nCommands:\n");
    for (name, count) in counts {
        if let Ok(c) = count {
            let _ = writeln!(
                w,
                "- {name}: `{}`, counted over `{}` between `callgrind_control -i on PID` and `-i off`",
                c.server, c.load
            );
        }
    }
    let _ = writeln!(w);
}

/// A server's instructions per request, if they were counted.
fn instructions_of(r: &Results, name: &str) -> Option<f64> {
    measured(&r.instructions, name).map(|c| c.per_request)
}

/// The instruction counts' answer to "how much more work does ours do than nginx, and how
/// much of that is the framework".
fn instruction_gap(r: &Results, build: &str) -> String {
    let (Some(ours), Some(axum), Some(nginx)) = (
        instructions_of(r, build),
        instructions_of(r, "axum-bare"),
        instructions_of(r, "nginx"),
    ) else {
        return String::new();
    };
    format!(
        " Counted by callgrind, a `GET /` runs {ours:.0} user-space instructions in ours, {axum:.0} in a bare axum hello world (hyper and tokio, no middleware) and {nginx:.0} in nginx: the framework alone does {:.2}× nginx's work per request, and ours {:.2}×.",
        axum / nginx,
        ours / nginx
    )
}

/// The profile's answer to "where does ours spend more than nginx": kernel vs user space.
fn cpu_split(r: &Results) -> String {
    if r.profile.is_none() {
        return "(no profile in this run)".into();
    }
    match (profiled(r, "ours-glibc"), profiled(r, "nginx")) {
        (Some(o), Some(n)) => format!(
            "Profile (glibc build, see below): ours {:.2} µs/request = kernel {:.2} + user space {:.2}; nginx {:.2} = kernel {:.2} + user space {:.2}. \
             User space accounts for {:.2} µs of the {:.2} µs gap.",
            o.cpu_us,
            o.kernel_us,
            o.user_us,
            n.cpu_us,
            n.kernel_us,
            n.user_us,
            o.user_us - n.user_us,
            o.cpu_us - n.cpu_us
        ),
        _ => "(the profile did not run for both ours and nginx)".into(),
    }
}

/// How ours compares with the framework it is built on: a bare axum hello world, measured in
/// the same run, is the floor our middleware sits on.
fn framework_floor(ours: &Row, axum: Option<&Row>, nginx: Option<&Row>) -> String {
    let (Some(axum), Some(nginx)) = (axum, nginx) else {
        return String::new();
    };
    format!(
        " A bare axum hello world (the framework, no middleware) costs {:.2} µs ({:.2}× nginx) in this run; {}",
        axum.cpu_us,
        ratio(axum.cpu_us, nginx.cpu_us),
        beyond_framework(ours.cpu_us - axum.cpu_us)
    )
}

/// What ours costs beyond the bare framework, `extra` µs per request, said either way round.
fn beyond_framework(extra: f64) -> String {
    const CARRIED: &str = "a request id, the x-served-by/x-version/x-request-id stamps, the \
         route-template lookup and metrics by route, the Host and body-limit checks, the in-flight \
         gauge and the connection watchdog's counters";
    if extra > 0.0 {
        format!("ours adds {extra:.2} µs per request for what every answer carries: {CARRIED}.")
    } else {
        format!(
            "ours costs {:.2} µs less per request, with what every answer carries ({CARRIED}): \
             within this run's noise, or what its allocator (mimalloc) and one-write answers \
             save over the bare framework's defaults.",
            -extra
        )
    }
}

/// Says what limits a server's rate in the run: its own core, or wrk's.
fn bound(x: &Row) -> String {
    if x.wrk_util >= 0.9 && x.server_util < 0.9 {
        format!(
            "bounded by the load generator: wrk used {:.0} % of its core while the server used {:.0} % of its own",
            x.wrk_util * 100.0,
            x.server_util * 100.0
        )
    } else if x.server_util >= 0.9 {
        format!(
            "bounded by the server's core ({:.0} % busy); see the profile below",
            x.server_util * 100.0
        )
    } else {
        format!(
            "neither core saturated (server {:.0} %, wrk {:.0} %): latency or machine noise bounds it",
            x.server_util * 100.0,
            x.wrk_util * 100.0
        )
    }
}

/// One target: what, which issue, the measured value, the limit, whether higher is better, and
/// the value as shown.
type TargetLine = (&'static str, &'static str, Option<f64>, f64, bool, String);

fn targets(w: &mut String, r: &Results, rows: &[Row]) {
    let find = |n: &str| rows.iter().find(|x| x.name == n);
    let _ = writeln!(w, "\n## Targets\n");
    let _ = writeln!(
        w,
        "Issue 2 set the first bar for the service, issue 7 the stricter one, issue 3 the Redis one, issue 15 the replicated one; issue 16 the memory kinds (anonymous memory is what each replica holds of its own; the musl build's idle RSS is the image's) and the instruction budget, which `cargo xtask ci` also checks (`cargo xtask budget`).\n\n| target | issue | measured | verdict |\n|---|---|---|---|"
    );
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "**pass**",
        Some(false) => "**miss**",
        None => "not measured",
    };
    let mut misses: Vec<String> = vec![];
    let nginx = find("nginx");
    let flask = find("flask-dev");
    for build in ["ours-glibc", "ours-musl"] {
        let Some(x) = find(build) else { continue };
        let rps_n = nginx.map(|n| ratio(x.rps, n.rps)).filter(|v| v.is_finite());
        let cpu_n = nginx
            .map(|n| ratio(x.cpu_us, n.cpu_us))
            .filter(|v| v.is_finite());
        let rps_f = flask.map(|n| ratio(x.rps, n.rps)).filter(|v| v.is_finite());
        let instructions_a = instructions_of(r, build)
            .zip(instructions_of(r, "axum-bare"))
            .map(|(ours, axum)| ratio(ours, axum))
            .filter(|v| v.is_finite());
        let lines: [TargetLine; 11] = [
            (
                "req/s ≥ 0.9× nginx",
                "#2",
                rps_n,
                0.9,
                true,
                format!("{:.2}×", rps_n.unwrap_or(f64::NAN)),
            ),
            (
                "req/s ≥ 1.0× nginx",
                "#7",
                rps_n,
                1.0,
                true,
                format!("{:.2}×", rps_n.unwrap_or(f64::NAN)),
            ),
            (
                "CPU/req ≤ 1.25× nginx",
                "#2",
                cpu_n,
                1.25,
                false,
                format!("{:.2}×", cpu_n.unwrap_or(f64::NAN)),
            ),
            (
                "CPU/req ≤ 1.0× nginx",
                "#7",
                cpu_n,
                1.0,
                false,
                format!("{:.2}×", cpu_n.unwrap_or(f64::NAN)),
            ),
            (
                "req/s ≥ 50× Flask dev",
                "#2",
                rps_f,
                50.0,
                true,
                format!("{:.0}×", rps_f.unwrap_or(f64::NAN)),
            ),
            (
                "req/s ≥ 60× Flask dev",
                "#7",
                rps_f,
                60.0,
                true,
                format!("{:.0}×", rps_f.unwrap_or(f64::NAN)),
            ),
            (
                "idle RSS ≤ 4 MiB",
                "#2",
                Some(x.idle_rss_kib / 1024.0),
                4.0,
                false,
                format!("{} MiB", mib(x.idle_rss_kib)),
            ),
            (
                "idle RSS ≤ 2 MiB",
                "#7",
                Some(x.idle_rss_kib / 1024.0),
                2.0,
                false,
                format!("{} MiB", mib(x.idle_rss_kib)),
            ),
            (
                "idle anonymous RSS ≤ 1 MiB",
                "#16",
                Some(x.idle_anon_kib / 1024.0),
                1.0,
                false,
                format!("{} MiB", mib(x.idle_anon_kib)),
            ),
            (
                "instructions/req within the budget × bare axum",
                "#16",
                instructions_a,
                crate::budget::BUDGET,
                false,
                format!(
                    "{:.2}× (budget {:.2}×)",
                    instructions_a.unwrap_or(f64::NAN),
                    crate::budget::BUDGET
                ),
            ),
            (
                "exec → first 200 ≤ 10 ms (#2: ≤ 50 ms)",
                "#7",
                Some(x.startup_ms),
                10.0,
                false,
                format!("{:.1} ms", x.startup_ms),
            ),
        ];
        for (what, issue, value, limit, higher, shown) in lines {
            let ok = value
                .filter(|v| v.is_finite())
                .map(|v| if higher { v >= limit } else { v <= limit });
            let _ = writeln!(
                w,
                "| {build}: {what} | {issue} | {shown} | {} |",
                verdict(ok)
            );
            if ok == Some(false) {
                let why = if what.starts_with("CPU") {
                    format!(
                        "{}{}{} During the run: {}.",
                        cpu_split(r),
                        framework_floor(x, find("axum-bare"), nginx),
                        instruction_gap(r, build),
                        bound(x)
                    )
                } else if what.contains("Flask") {
                    // The ratio is bounded by what a request costs the kernel (loopback TCP,
                    // the same for every server): nginx, in the same run, shows that floor.
                    let nginx_ratio = nginx
                        .zip(flask)
                        .map_or(f64::NAN, |(n, f)| ratio(n.rps, f.rps));
                    format!(
                        "{}. Per request, Flask's dev server spends {} × ours' CPU time: what a saturated core would show. nginx, in the same run, serves {} × Flask's req/s: most of a fast server's request is the kernel's loopback TCP work, which Flask's Python does not dwarf on every machine.{}",
                        bound(x),
                        num(flask.map_or(f64::NAN, |f| ratio(f.cpu_us, x.cpu_us)), 0),
                        num(nginx_ratio, 0),
                        flask.map_or(String::new(), |f| flask_ceiling(r, f.cpu_us, limit))
                    )
                } else if what.starts_with("req/s") {
                    format!("{}.", bound(x))
                } else if what.starts_with("idle RSS") {
                    format!(
                        "Of it, {} MiB are file-backed pages (the mapped binary and its libraries{}) and {} MiB anonymous memory{}.",
                        mib(x.idle_file_kib),
                        if build == "ours-glibc" {
                            ": a dynamically linked build maps glibc, libm, libgcc_s and the loader besides itself, pages every process on the host shares; the image's static musl build maps only itself. The kernel maps file pages 64 KiB around each page touched (fault-around), so what counts is how many 64 KiB spans a start touches: clean pages of the file, shared with every process that maps it and dropped first under memory pressure"
                        } else {
                            ": the static binary's own code and data. The kernel maps file pages 64 KiB around each page touched (fault-around), so what counts is how many 64 KiB spans a start touches: `.rodata` (325 KiB of merged constants, which the linker cannot reorder) is touched throughout, and the code a start runs is spread across the binary: clean pages of the file, shared with every replica on the host and dropped first under memory pressure"
                        },
                        mib(x.idle_anon_kib),
                        if x.idle_thp_kib > 0.0 {
                            format!(
                                ", of which {} MiB are transparent huge pages (THP mode `{}` here; an allocator that asks for huge pages on its arenas, as mimalloc does unless built with its `no_thp` feature, makes each touched arena 2 MiB resident)",
                                mib(x.idle_thp_kib),
                                r.machine.as_ref().map_or("unknown", |m| m.thp.as_str())
                            )
                        } else {
                            String::new()
                        }
                    )
                } else {
                    String::new()
                };
                misses.push(format!(
                    "{build}: {what} ({issue}) — measured {shown}. {why}"
                ));
            }
        }
    }
    if let (Some(g), Some(m)) = (find("ours-glibc"), find("ours-musl")) {
        let d = ratio(m.cpu_us, g.cpu_us);
        let ok = d.is_finite().then_some(d <= 1.10);
        let _ = writeln!(
            w,
            "| musl CPU/req within 10 % of glibc | #7 | {:.2}× | {} |",
            d,
            verdict(ok)
        );
        if ok == Some(false) {
            misses.push(format!(
                "musl CPU/req is {d:.2}× glibc's (#7 wants ≤ 1.10×). Both builds run the same code \
                 with the same allocator (mimalloc) and count the same instructions per request \
                 under callgrind; the difference is the C library's memory routines, which every \
                 move of a request or future goes through: musl's `memcpy`/`memset` are plain \
                 `rep movs`/`rep stos` loops with a high start-up cost per call, where glibc picks \
                 vectorised variants for this CPU"
            ));
        }
    }
    let img = r.image_size.map(|s| s as f64 / 1048576.0);
    let _ = writeln!(
        w,
        "| image ≤ 4 MiB | #7 | {} | {} |",
        img.map(|v| format!("{v:.2} MiB"))
            .unwrap_or_else(|| "no image".into()),
        verdict(img.map(|v| v <= 4.0))
    );
    if let Some(Ok(c)) = &r.counter {
        let q = ratio(c.ours.wrk.rps(), c.redis_rps);
        let ok = q.is_finite().then_some(q >= 0.5);
        let _ = writeln!(
            w,
            "| increments on Redis ≥ 0.5× redis-benchmark INCR | #3, #7 | {q:.2}× | {} |",
            verdict(ok)
        );
        if ok == Some(false) {
            misses.push(format!(
                "increments reach {q:.2}× of redis-benchmark's INCR rate; see the counter section for where the CPU goes"
            ));
        }
    } else {
        let _ = writeln!(
            w,
            "| increments on Redis ≥ 0.5× redis-benchmark INCR | #3, #7 | – | not measured |"
        );
    }
    const REPLICATED: &str =
        "increments confirmed by a replica (Sentinel, `WAIT 1`) ≥ 0.5× unreplicated";
    if let Some(Ok(c)) = &r.replication {
        let q = ratio(c.replicated.rps, c.unreplicated.rps);
        let ok = q.is_finite().then_some(q >= 0.5);
        let _ = writeln!(w, "| {REPLICATED} | #15 | {q:.2}× | {} |", verdict(ok));
        if ok == Some(false) {
            misses.push(format!(
                "increments confirmed by a replica reach {q:.2}× of the unreplicated rate; see the replication section"
            ));
        }
    } else {
        let _ = writeln!(w, "| {REPLICATED} | #15 | – | not measured |");
    }
    if !misses.is_empty() {
        let _ = writeln!(w, "\nWhat bounds each miss:\n");
        for m in misses {
            let _ = writeln!(w, "- {m}");
        }
    }
}

fn growth(w: &mut String, r: &Results) {
    let _ = writeln!(w, "\n## Growth curves\n");

    let _ = writeln!(w, "### Concurrency: 1 → 64 → 256 → 1024 connections\n");
    if r.concurrency.is_empty() {
        let _ = writeln!(w, "Not run.");
    } else {
        let _ = writeln!(
            w,
            "![concurrency](concurrency.png)\n\n```\n{}\n```\n\n| server | connections | req/s | p99 ms | max RSS MiB | CPU µs/req | errors |\n|---|---:|---:|---:|---:|---:|---:|",
            r.concurrency_line
        );
        for (name, c, m) in &r.concurrency {
            match m {
                Ok(m) => {
                    let _ = writeln!(
                        w,
                        "| {name} | {c} | {} | {} | {} | {} | {} |",
                        num(m.wrk.rps(), 0),
                        ms(m.wrk.p99_us),
                        mib(m.max_rss_kib as f64),
                        num(m.cpu_us_per_request(), 2),
                        m.wrk.errors
                    );
                }
                Err(e) => {
                    let _ = writeln!(w, "| {name} | {c} | failed: {e} | | | | |");
                }
            }
        }
    }

    let _ = writeln!(w, "\n### Idle keep-alive connections\n");
    if r.idle.is_empty() {
        let _ = writeln!(w, "Not run.");
    } else {
        let _ = writeln!(
            w,
            "![idle connections](idle-connections.png)\n\nA bounded client in the bench opens the connections one by one to 127.0.0.1, sends one `GET /` on each, reads the answer, \
             and holds them; the server's RSS is read 1 s later. Kernel socket buffers are not in RSS: this is the server's own memory per connection.\n\n\
             | server | opened | still open after hold | server fds | RSS before MiB | RSS with connections MiB | KiB per connection |\n|---|---:|---:|---:|---:|---:|---:|"
        );
        for row in &r.idle {
            match row {
                Ok(x) => {
                    let _ = writeln!(
                        w,
                        "| {} | {} / {} | {} | {} | {} | {} | {} |",
                        x.name,
                        x.opened,
                        x.requested,
                        x.open_after_hold,
                        x.fds_after,
                        mib(x.rss_before_kib as f64),
                        mib(x.rss_after_kib as f64),
                        num(x.kib_per_connection(), 2)
                    );
                    if let Some(why) = &x.stopped_by {
                        let _ = writeln!(w, "\n{}: opening stopped early at {why}\n", x.name);
                    }
                }
                Err(e) => {
                    let _ = writeln!(w, "| failed: {e} | | | | | | |");
                }
            }
        }
    }

    let _ = writeln!(w, "\n### POST /api/echo: body 1 KiB → 1 MiB (ours)\n");
    if r.echo.is_empty() {
        let _ = writeln!(w, "Not run.");
    } else {
        let _ = writeln!(
            w,
            "![echo](echo.png)\n\n```\n{}\n```\n\nMB/s counts the request bodies (the answers carry as many bytes back).\n\n| body | req/s | MB/s | p99 ms | max RSS MiB | CPU µs/req | errors |\n|---:|---:|---:|---:|---:|---:|---:|",
            r.echo_line
        );
        for row in &r.echo {
            match row {
                Ok(x) => {
                    let _ = writeln!(
                        w,
                        "| {} | {} | {} | {} | {} | {} | {} |",
                        size(x.bytes),
                        num(x.measured.wrk.rps(), 0),
                        num(x.mb_per_s(), 1),
                        ms(x.measured.wrk.p99_us),
                        mib(x.measured.max_rss_kib as f64),
                        num(x.measured.cpu_us_per_request(), 1),
                        x.measured.wrk.errors
                    );
                }
                Err(e) => {
                    let _ = writeln!(w, "| failed: {e} | | | | | | |");
                }
            }
        }
    }

    let _ = writeln!(
        w,
        "\n### Through the Swarm stack's HAProxy: 1 / 3 / 5 replicas vs direct\n"
    );
    match &r.stack {
        None => {
            let _ = writeln!(w, "Not run in this mode.");
        }
        Some(Err(e)) => {
            let _ = writeln!(w, "{e}");
        }
        Some(Ok(st)) => {
            let direct = st.runs.iter().find(|(n, _)| *n == 0).map(|(_, o)| o.rps());
            let _ = writeln!(
                w,
                "![stack](stack.png)\n\nThe stack's containers are not pinned (Swarm services cannot set a cpuset): HAProxy and the \
                 replicas share both cores with wrk, so this measures the balancer's cost on this machine, not a scale-out gain \
                 (every replica runs on the same 2 cores). Access logs as the stack ran them: `ACCESS_LOG={}` (the \
                 default logs errors and slow requests only, README's \"Run it distributed\"). Each replica count is loaded \
                 twice: through the published port on 127.0.0.1, which the engine relays through its userland proxy \
                 (`docker-proxy`), and at the balancer's own address on `docker_gwbridge`, where that proxy is not in \
                 the path.\n\n```\n{}\n{}\n{}\n```\n\n| path | req/s | p50 ms | p99 ms | errors | req/s ÷ direct |\n|---|---:|---:|---:|---:|---:|",
                st.access_log, st.direct_line, st.wrk_line, st.own_line
            );
            let row = |w: &mut String, name: String, o: &super::load::WrkOut| {
                let _ = writeln!(
                    w,
                    "| {name} | {} | {} | {} | {} | {} |",
                    num(o.rps(), 0),
                    ms(o.p50_us),
                    ms(o.p99_us),
                    o.errors,
                    num(direct.map_or(f64::NAN, |d| ratio(o.rps(), d)), 2)
                );
            };
            for (n, o) in &st.runs {
                if *n == 0 {
                    row(w, "direct (ours-musl on loopback)".to_owned(), o);
                    continue;
                }
                row(
                    w,
                    format!("HAProxy → {n} replica(s), via 127.0.0.1:8080"),
                    o,
                );
                if let Some((_, own)) = st.own_address.iter().find(|(m, _)| m == n) {
                    row(
                        w,
                        format!("HAProxy → {n} replica(s), at its own address"),
                        own,
                    );
                }
            }
        }
    }
    super::seed_stack::markdown(w, r.seed_stack.as_ref());

    let _ = writeln!(
        w,
        "\n### POST /api/counter/increment on Redis vs redis-benchmark INCR\n"
    );
    match &r.counter {
        None => {
            let _ = writeln!(w, "Not run.");
        }
        Some(Err(e)) => {
            let _ = writeln!(w, "Failed: {e}");
        }
        Some(Ok(c)) => {
            let ours_total = c.ours.cpu_seconds + c.redis_cpu_seconds_under_ours;
            let reqs = c.ours.wrk.requests.max(1) as f64;
            let _ = writeln!(
                w,
                "![counter](counter.png)\n\nRedis and ours share CPU {} (the server side), the clients run on CPU {}; {} connections on both sides.\n\n```\n{}\n{}\n{}\n{}\n```\n\n\
                 | path | ops/s | p50 ms | p99 ms | server-side CPU µs/op | errors |\n|---|---:|---:|---:|---:|---:|\n\
                 | redis-benchmark INCR (RESP, no HTTP) | {} | {:.3} | {:.3} | {} (redis) | – |\n\
                 | ours: POST /api/counter/increment | {} | {} | {} | {} (ours {} + redis {}) | {} |\n\n\
                 Ratio: **{:.2}×** of Redis's own INCR rate. The counter moved by {} during the {} requests wrk completed \
                 (requests still in flight when wrk stops are counted by Redis but not by wrk).\n",
                servers::SERVER_CPU,
                servers::LOAD_CPU,
                c.connections,
                c.redis_server_line,
                c.redis_line,
                c.ours_line,
                c.wrk_line,
                num(c.redis_rps, 0),
                c.redis_p50_ms,
                c.redis_p99_ms,
                num(
                    c.redis_cpu_seconds * 1e6 / c.redis_requests.max(1) as f64,
                    2
                ),
                num(c.ours.wrk.rps(), 0),
                ms(c.ours.wrk.p50_us),
                ms(c.ours.wrk.p99_us),
                num(ours_total * 1e6 / reqs, 2),
                num(c.ours.cpu_seconds * 1e6 / reqs, 2),
                num(c.redis_cpu_seconds_under_ours * 1e6 / reqs, 2),
                c.ours.wrk.errors,
                ratio(c.ours.wrk.rps(), c.redis_rps),
                c.counted
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "(unread)".into()),
                c.ours.wrk.requests,
            );
            match &c.profile {
                Some(Ok(text)) => {
                    let _ = writeln!(
                        w,
                        "Where an increment's CPU goes in ours (same load, a build with symbols):\n\n{text}"
                    );
                }
                Some(Err(e)) => {
                    let _ = writeln!(w, "Profile of the increment path not available: {e}\n");
                }
                None => {}
            }
        }
    }
    replication(w, r);
}

/// The replication section: what a replica's confirmation of every write costs.
fn replication(w: &mut String, r: &Results) {
    let _ = writeln!(
        w,
        "\n### POST /api/counter/increment confirmed by a replica (Sentinel, WAIT 1) vs unreplicated\n"
    );
    let c = match &r.replication {
        None => {
            let _ = writeln!(w, "Not run.");
            return;
        }
        Some(Err(e)) => {
            let _ = writeln!(w, "Failed: {e}");
            return;
        }
        Some(Ok(c)) => c,
    };
    let _ = writeln!(
        w,
        "Redis servers, the Sentinel and ours share CPU {} (the server side), wrk runs on CPU {}. \
         The two paths take turns over {} round(s), each started fresh and warmed up for 1 s; \
         figures are medians over rounds.\n\n```\n{}\n{}\n{}\n{}\n```\n",
        servers::SERVER_CPU,
        servers::LOAD_CPU,
        c.rounds,
        c.redis_lines.join("\n"),
        c.unreplicated.ours_line,
        c.replicated.ours_line,
        c.wrk_line,
    );
    let _ = writeln!(
        w,
        "| path | req/s | p50 ms | p99 ms | errors | req/s ÷ unreplicated |\n|---|---:|---:|---:|---:|---:|"
    );
    for (name, path) in [
        ("unreplicated (`--redis-url`, plain Redis)", &c.unreplicated),
        (
            "confirmed by the replica (`--redis-sentinel`, `WAIT 1`)",
            &c.replicated,
        ),
    ] {
        let _ = writeln!(
            w,
            "| {name} | {} | {} | {} | {} | {} |",
            num(path.rps, 0),
            ms(path.p50_us),
            ms(path.p99_us),
            path.errors,
            num(ratio(path.rps, c.unreplicated.rps), 2)
        );
    }
    let count = |n: Option<i64>| n.map_or_else(|| "(unread)".to_owned(), |n| n.to_string());
    let _ = writeln!(
        w,
        "\nThe replica's acknowledgement adds **{} ms at p50 and {} ms at p99**. After the last \
         round the primary counted {} and its replica {}.",
        ms(c.replicated.p50_us - c.unreplicated.p50_us),
        ms(c.replicated.p99_us - c.unreplicated.p99_us),
        count(c.primary_count),
        count(c.replica_count),
    );
}

fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// Draws every chart the results have data for into `dir`.
pub(crate) fn charts(r: &Results, dir: &Path) -> Result<()> {
    let rows = rows(&r.peers);
    if !rows.is_empty() {
        chart::draw(
            &dir.join("peers.png"),
            "GET / \"Hello World!\": server on 1 core, wrk on the other",
            &[
                Panel::Bars {
                    title: "requests per second (higher is better)".into(),
                    y_label: "req/s".into(),
                    items: rows.iter().map(|x| (x.name.clone(), x.rps)).collect(),
                },
                Panel::Bars {
                    title: "server CPU per request (lower is better)".into(),
                    y_label: "CPU µs / request".into(),
                    items: rows.iter().map(|x| (x.name.clone(), x.cpu_us)).collect(),
                },
                Panel::Bars {
                    title: "idle RSS (lower is better)".into(),
                    y_label: "MiB".into(),
                    items: rows
                        .iter()
                        .map(|x| (x.name.clone(), x.idle_rss_kib / 1024.0))
                        .collect(),
                },
                Panel::Bars {
                    title: "exec → first 200 (lower is better)".into(),
                    y_label: "ms".into(),
                    items: rows
                        .iter()
                        .map(|x| (x.name.clone(), x.startup_ms))
                        .collect(),
                },
            ],
        )?;
    }
    if !r.concurrency.is_empty() {
        let mut names: Vec<&String> = r.concurrency.iter().map(|(n, _, _)| n).collect();
        names.dedup();
        let series = |f: &dyn Fn(&super::Measured) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
            names
                .iter()
                .map(|n| {
                    let pts = r
                        .concurrency
                        .iter()
                        .filter(|(m, _, _)| m == *n)
                        .filter_map(|(_, c, m)| m.as_ref().ok().map(|m| (f64::from(*c), f(m))))
                        .collect();
                    ((*n).clone(), pts)
                })
                .collect()
        };
        chart::draw(
            &dir.join("concurrency.png"),
            "GET / as connections grow (wrk -t1, server on 1 core)",
            &[
                Panel::Lines {
                    title: "requests per second".into(),
                    x_label: "connections".into(),
                    y_label: "req/s".into(),
                    log_x: true,
                    series: series(&|m| m.wrk.rps()),
                },
                Panel::Lines {
                    title: "p99 latency".into(),
                    x_label: "connections".into(),
                    y_label: "ms".into(),
                    log_x: true,
                    series: series(&|m| m.wrk.p99_us / 1e3),
                },
                Panel::Lines {
                    title: "server RSS under load".into(),
                    x_label: "connections".into(),
                    y_label: "MiB".into(),
                    log_x: true,
                    series: series(&|m| m.max_rss_kib as f64 / 1024.0),
                },
                Panel::Lines {
                    title: "server CPU per request".into(),
                    x_label: "connections".into(),
                    y_label: "µs".into(),
                    log_x: true,
                    series: series(&|m| m.cpu_us_per_request()),
                },
            ],
        )?;
    }
    let idle: Vec<_> = r.idle.iter().filter_map(|x| x.as_ref().ok()).collect();
    if !idle.is_empty() {
        let n = idle.iter().map(|x| x.opened).max().unwrap_or(0);
        chart::draw(
            &dir.join("idle-connections.png"),
            &format!("{n} idle keep-alive connections"),
            &[
                Panel::Bars {
                    title: "server memory per connection (lower is better)".into(),
                    y_label: "KiB / connection".into(),
                    items: idle
                        .iter()
                        .map(|x| (x.name.clone(), x.kib_per_connection()))
                        .collect(),
                },
                Panel::Bars {
                    title: "server RSS holding them".into(),
                    y_label: "MiB".into(),
                    items: idle
                        .iter()
                        .map(|x| (x.name.clone(), x.rss_after_kib as f64 / 1024.0))
                        .collect(),
                },
            ],
        )?;
    }
    let echo: Vec<_> = r.echo.iter().filter_map(|x| x.as_ref().ok()).collect();
    if !echo.is_empty() {
        let pts = |f: &dyn Fn(&super::EchoRow) -> f64| {
            vec![(
                "ours".to_owned(),
                echo.iter()
                    .map(|x| (x.bytes as f64 / 1024.0, f(x)))
                    .collect(),
            )]
        };
        chart::draw(
            &dir.join("echo.png"),
            "POST /api/echo: throughput and memory as the body grows",
            &[
                Panel::Lines {
                    title: "throughput (request bodies)".into(),
                    x_label: "body KiB".into(),
                    y_label: "MB/s".into(),
                    log_x: true,
                    series: pts(&|x| x.mb_per_s()),
                },
                Panel::Lines {
                    title: "server RSS under load".into(),
                    x_label: "body KiB".into(),
                    y_label: "MiB".into(),
                    log_x: true,
                    series: pts(&|x| x.measured.max_rss_kib as f64 / 1024.0),
                },
            ],
        )?;
    }
    if let Some(Ok(st)) = &r.stack {
        let name = |n: u32| {
            if n == 0 {
                "direct".to_owned()
            } else {
                format!("LB → {n}")
            }
        };
        chart::draw(
            &dir.join("stack.png"),
            "GET / through the Swarm stack's HAProxy vs direct",
            &[
                Panel::Bars {
                    title: "requests per second".into(),
                    y_label: "req/s".into(),
                    items: st.runs.iter().map(|(n, o)| (name(*n), o.rps())).collect(),
                },
                Panel::Bars {
                    title: "p99 latency".into(),
                    y_label: "ms".into(),
                    items: st
                        .runs
                        .iter()
                        .map(|(n, o)| (name(*n), o.p99_us / 1e3))
                        .collect(),
                },
            ],
        )?;
    }
    if let Some(Ok(c)) = &r.counter {
        chart::draw(
            &dir.join("counter.png"),
            &format!("Increments on one Redis, {} connections", c.connections),
            &[Panel::Bars {
                title: "operations per second".into(),
                y_label: "ops/s".into(),
                items: vec![
                    ("redis-benchmark INCR".into(), c.redis_rps),
                    ("ours POST /api/counter/increment".into(), c.ours.wrk.rps()),
                ],
            }],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cost_beyond_the_framework_reads_right_either_way() {
        assert!(beyond_framework(0.25).starts_with("ours adds 0.25 µs per request"));
        let cheaper = beyond_framework(-0.11);
        assert!(
            cheaper.starts_with("ours costs 0.11 µs less per request"),
            "{cheaper}"
        );
        assert!(!cheaper.contains("-0."), "{cheaper}");
    }

    fn profiled_run(ours_user_us: f64, nginx_kernel_us: f64, nginx_user_us: f64) -> Results {
        let profile = |kernel_us: f64, user_us: f64| {
            Ok(super::super::profile::Profile {
                text: String::new(),
                cpu_us: kernel_us + user_us,
                kernel_us,
                user_us,
            })
        };
        Results {
            profile: Some(vec![
                ("ours-glibc".into(), profile(6.4, ours_user_us)),
                ("nginx".into(), profile(nginx_kernel_us, nginx_user_us)),
            ]),
            ..Results::default()
        }
    }

    #[test]
    fn the_instruction_gap_compares_ours_and_the_framework_with_nginx() {
        let count = |per_request: f64| {
            Ok(super::super::instructions::Count {
                per_request,
                requests: 1000,
                server: String::new(),
                load: String::new(),
            })
        };
        let mut run = Results {
            instructions: Some(vec![
                ("ours-glibc".into(), count(9200.0)),
                ("axum-bare".into(), count(9500.0)),
                ("nginx".into(), count(7300.0)),
            ]),
            ..Results::default()
        };
        let gap = instruction_gap(&run, "ours-glibc");
        assert!(
            gap.contains("9200 user-space instructions in ours"),
            "{gap}"
        );
        assert!(gap.contains("the framework alone does 1.30×"), "{gap}");
        assert!(gap.contains("and ours 1.26×"), "{gap}");
        let mut table = String::new();
        instruction_table(&mut table, &run);
        assert!(
            table.contains("| ours-glibc | 9200 | 1.26 | 1000 |"),
            "{table}"
        );
        // Without nginx's count there is nothing to compare with.
        run.instructions
            .as_mut()
            .expect("set above")
            .retain(|(name, _)| name != "nginx");
        assert_eq!(instruction_gap(&run, "ours-glibc"), "");
    }

    #[test]
    fn the_flask_ceiling_is_flasks_cost_over_the_kernels_part() {
        let run = profiled_run(1.3, 6.0, 1.0);
        // 360 µs over 6 µs of kernel work: no server passes 60×; 50× leaves 7.2 - 6.0 µs.
        let at_50 = flask_ceiling(&run, 360.0, 50.0);
        assert!(at_50.contains("caps any server here at 60×"), "{at_50}");
        assert!(at_50.contains("50× would leave 1.20 µs"), "{at_50}");
        assert!(
            at_50.contains("nginx spends 1.00 µs and ours 1.30"),
            "{at_50}"
        );
        let at_70 = flask_ceiling(&run, 360.0, 70.0);
        assert!(
            at_70.contains("70× is out of reach for any server: it allows 5.14 µs"),
            "{at_70}"
        );
        assert_eq!(flask_ceiling(&Results::default(), 360.0, 50.0), "");
    }
}
