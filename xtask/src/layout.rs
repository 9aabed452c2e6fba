//! `cargo xtask layout`: rewrites `crates/hello-world/layout/<target>.order`, the functions the
//! server runs from exec to its first answers, for the two builds the project ships: glibc (what
//! `cargo build --release` makes) and musl (the image's). `crates/hello-world/build.rs` links
//! them together, which is what keeps the idle RSS low; see there for why.
//!
//! How: each build is made as `--release` makes it, with symbols kept, and run under valgrind's
//! callgrind, pinned to one CPU as the bench and every container run it. The server starts and
//! answers `GET /` and the probes; every function callgrind saw until then (not the shutdown
//! that follows) goes into the file, one mangled name per line, sorted.
//!
//! A name depends on a function's path and types and on the build's settings, not on its
//! code, so the files stay good through most changes. Re-run after changing what a start does,
//! after updating dependencies or the toolchain, or when the bench shows the idle RSS rising.
//! The report says how much of the old file the new start still uses.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::bench::callgrind_control;
use crate::bench::servers::{MUSL_TARGET, SERVER_CPU, pin_current_thread, target_dir};

/// Functions a start runs that callgrind names after another: musl's `_start_c` jumps to this
/// one, and callgrind counts its code as `_start_c`'s.
const UNSEEN: [&str; 1] = ["__libc_start_main"];

/// The paths asked once the server answers: the greeting and what orchestrators poll.
const ASKED: [&str; 4] = ["/", "/", "/healthz", "/readyz"];

pub(crate) fn run(args: &[String]) -> Result<()> {
    if !args.is_empty() {
        bail!("`cargo xtask layout` takes no arguments");
    }
    let sh = Shell::new()?;
    cmd!(sh, "valgrind --version")
        .quiet()
        .ignore_stdout()
        .run()
        .context("valgrind is needed (Debian: apt-get install valgrind)")?;
    let build_dir = target_dir().join("layout");
    for target in [None, Some(MUSL_TARGET)] {
        let binary = build(&sh, &build_dir, target)?;
        let names = record(&binary, &build_dir)?;
        let triple = target.unwrap_or("x86_64-unknown-linux-gnu");
        write(triple, &names)?;
    }
    Ok(())
}

/// A release build with symbols. `-C strip=none` comes through `RUSTFLAGS`, which leaves the
/// symbol names as they are in a plain `--release` build (a profile override would not).
fn build(sh: &Shell, build_dir: &Path, target: Option<&str>) -> Result<PathBuf> {
    let target_args: Vec<&str> = target.map(|t| vec!["--target", t]).unwrap_or_default();
    cmd!(
        sh,
        "cargo build --release --locked --package hello-world --bin hello-world {target_args...}"
    )
    .env("CARGO_TARGET_DIR", build_dir)
    .env("RUSTFLAGS", "-C strip=none")
    .run()?;
    let mut binary = build_dir.to_path_buf();
    if let Some(target) = target {
        binary.push(target);
    }
    Ok(binary.join("release").join("hello-world"))
}

/// Runs `binary` under callgrind through a start and a few answers, then stops it; returns the
/// (mangled) name of every function that ran before the stop.
fn record(binary: &Path, build_dir: &Path) -> Result<BTreeSet<String>> {
    let profile = build_dir.join("callgrind.out");
    let log = build_dir.join("callgrind.log");
    for stale in [profile.clone(), profile.with_extension("out.1")] {
        let _ = fs::remove_file(stale);
    }
    let port = free_port()?;
    let admin_port = free_port()?;
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg("--demangle=no")
        .arg(format!("--callgrind-out-file={}", profile.display()))
        .arg(binary)
        .args(["serve", "--host", "127.0.0.1", "--access-log", "false"])
        .args(["--drain-delay", "0s", "--shutdown-timeout", "5s"])
        .args([
            "--port",
            &port.to_string(),
            "--admin-port",
            &admin_port.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log)?);
    // One CPU, as in the bench and in containers: the runtime is then single-threaded, and
    // those are the functions a deployed replica runs.
    let mut server = thread::scope(|s| {
        s.spawn(|| {
            pin_current_thread(SERVER_CPU);
            command.spawn()
        })
        .join()
        .expect("the spawning thread does not panic")
    })
    .context("starting valgrind")?;
    let asked = ask(port, &mut server);
    // Idle a moment as a replica does between requests: the allocator's delayed purging, for
    // one, runs then, and the bench measures the idle RSS after such a pause.
    thread::sleep(Duration::from_secs(2));
    // The profile so far (`callgrind.out.1`): what a start and the first answers ran, without
    // the shutdown that follows.
    let dumped = asked.is_ok() && callgrind_control(&["--dump", &server.id().to_string()]).is_ok();
    // SIGTERM: the server drains and exits 0.
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let exited = wait(&mut server, Duration::from_secs(60));
    asked.with_context(|| format!("see {}", log.display()))?;
    if !exited? {
        let _ = server.kill();
        bail!(
            "the server did not stop within 60 s of SIGTERM; see {}",
            log.display()
        );
    }
    if !dumped {
        bail!(
            "callgrind_control could not dump the profile; see {}",
            log.display()
        );
    }
    let dump = profile.with_extension("out.1");
    let text = fs::read_to_string(&dump).with_context(|| format!("reading {}", dump.display()))?;
    let mut names = function_names(&text);
    names.extend(UNSEEN.map(String::from));
    Ok(names)
}

/// Waits (up to a minute: valgrind is slow) for the first 200, then asks each of [`ASKED`].
fn ask(port: u16, server: &mut Child) -> Result<()> {
    let started = Instant::now();
    while get(port, "/").is_none_or(|status| status != 200) {
        if let Some(status) = server.try_wait()? {
            bail!("the server exited with {status} before answering");
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the server did not answer within 60 s under valgrind");
        }
        thread::sleep(Duration::from_millis(100));
    }
    for path in ASKED {
        let status = get(port, path);
        if status != Some(200) {
            bail!("GET {path} answered {status:?}, not 200");
        }
    }
    Ok(())
}

/// One `GET` on a fresh connection; the status code, if an answer came.
fn get(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.get(9..12)?.parse().ok()
}

/// Whether `child` exited within `limit`.
fn wait(child: &mut Child, limit: Duration) -> Result<bool> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if child.try_wait()?.is_some() {
            return Ok(true);
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(false)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// The names in a callgrind profile. Each function is named once, where the profile first
/// mentions it, as `fn=(id) name` or `cfn=(id) name`; recursion adds `'depth` to a name.
fn function_names(profile: &str) -> BTreeSet<String> {
    profile
        .lines()
        .filter_map(|line| {
            let rest = line
                .strip_prefix("fn=(")
                .or_else(|| line.strip_prefix("cfn=("))?;
            let (_, name) = rest.split_once(") ")?;
            let name = name.split_once('\'').map_or(name, |(base, _)| base);
            // Unnamed code (`0x…`) and valgrind's own `(below main)` are not symbols.
            (!name.starts_with("0x") && !name.starts_with('(')).then(|| name.to_owned())
        })
        .collect()
}

/// Writes the order file for `triple`, and says how much of the previous one still ran.
fn write(triple: &str, names: &BTreeSet<String>) -> Result<()> {
    let path = crate::project_root()
        .join("crates/hello-world/layout")
        .join(format!("{triple}.order"));
    let previous: BTreeSet<String> = fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(str::to_owned)
        .collect();
    let mut text = format!(
        "# The functions hello-world's {triple} release build runs from exec to its first\n\
         # answers, linked together by build.rs. Written by `cargo xtask layout`; do not edit.\n"
    );
    for name in names {
        text.push_str(name);
        text.push('\n');
    }
    fs::create_dir_all(path.parent().expect("a file in a directory"))?;
    fs::write(&path, text)?;
    let kept = names.intersection(&previous).count();
    println!(
        "layout: {}: {} functions; {kept} of them were in the previous file ({} there in all)",
        path.display(),
        names.len(),
        previous.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_fn_and_cfn_lines_without_recursion_marks() {
        let profile = "\
fn=(1) _ZN11hello_world4main17h7ad758275eae5db8E
calls=1 0x0
cfn=(2) _RNvCs1_3std5start
cfn=(2)
fn=(3) _ZN4core3fmt5write17hE'2
fn=(4) 0x000000000001b8dc
fn=(5) (below main)
fn=(1)
";
        let names: Vec<String> = function_names(profile).into_iter().collect();
        assert_eq!(
            names,
            [
                "_RNvCs1_3std5start",
                "_ZN11hello_world4main17h7ad758275eae5db8E",
                "_ZN4core3fmt5write17hE",
            ]
        );
    }
}
