//! What `cargo xtask image` proves of the images it just built, before anything runs them:
//!
//! - each platform's image stays within [`IMAGE_BUDGET`];
//! - the images are configured alike: user, entrypoint, command, healthcheck, stop signal,
//!   exposed ports, environment and labels are equal but for the SBOM's name, and each says its
//!   own architecture ([`config_differences`]);
//! - a binary of another architecture than this machine's (arm64 here) is run under emulation
//!   (Debian's `qemu-user-static`): it starts, answers `GET /`, `/healthz` and `/readyz`,
//!   passes a short `hello-world check` against itself (the check, emulated too) and stops on
//!   SIGTERM with status 0 ([`serve_under_emulation`]);
//! - each SBOM lists every direct dependency of the service at a version Cargo.lock holds, and
//!   exactly the crates the binary says it was built from (the list `cargo auditable` embedded),
//!   every one linked into it as required ([`bill_of_materials_differences`]).
//!
//! `cargo xtask image --reproduce` ([`reproduce`]) builds both binaries again from scratch in
//! another target directory and compares their digests with the first build's.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use xshell::{Shell, cmd};

use crate::image::{self, Built, Platform};

/// Each platform's image at most: the binary and nothing else, within the budget the protocols
/// (HTTP/2, gRPC health, WebSocket) were given: 6 MiB.
pub(crate) const IMAGE_BUDGET: u64 = 6 * 1024 * 1024;
/// The crates a reader of the SBOM looks for first: they must be there, at their locked versions.
const NAMED_CRATES: &[&str] = &["axum", "hyper", "tokio", "redis", "mimalloc", "serde"];
/// How long an emulated server may take to answer its first `/healthz`.
const EMULATED_START: Duration = Duration::from_secs(30);
/// How long an emulated server may take to exit after SIGTERM (its drain delay is 0 here).
const EMULATED_STOP: Duration = Duration::from_secs(15);

pub(crate) fn run(sh: &Shell, version: &str, built: &[Built]) -> Result<()> {
    let started = Instant::now();
    for b in built {
        let size = image::image_size(sh, &b.tag)?;
        ensure!(
            size <= IMAGE_BUDGET,
            "{} is {size} bytes, over the {IMAGE_BUDGET}-byte budget",
            b.tag
        );
    }
    let [first, rest @ ..] = built else {
        bail!("no image was built");
    };
    let first_config = inspect(sh, &first.tag)?;
    for other in rest {
        let differences = config_differences(
            (first.platform, &first_config),
            (other.platform, &inspect(sh, &other.tag)?),
            version,
        );
        ensure!(
            differences.is_empty(),
            "{} and {} are configured differently:\n  {}",
            first.tag,
            other.tag,
            differences.join("\n  ")
        );
    }
    println!("image: {} configured alike", tags(built));

    let lock = locked_versions()?;
    let direct = direct_dependencies(sh)?;
    for b in built {
        let sbom: Value = serde_json::from_str(&std::fs::read_to_string(&b.sbom)?)
            .with_context(|| format!("parsing {}", b.sbom.display()))?;
        let embedded = auditable_info::audit_info_from_file(&b.binary, Default::default())
            .with_context(|| {
                format!(
                    "reading the dependency list of {} (built without `cargo auditable`?)",
                    b.binary.display()
                )
            })?;
        let crates = |runtime_only: bool| -> BTreeSet<(String, String)> {
            embedded
                .packages
                .iter()
                .filter(|p| !p.root)
                .filter(|p| !runtime_only || p.kind == auditable_serde::DependencyKind::Runtime)
                .map(|p| (p.name.clone(), p.version.to_string()))
                .collect()
        };
        let (built_from, linked) = (crates(false), crates(true));
        let differences =
            bill_of_materials_differences(&sbom, &built_from, &linked, &lock, &direct);
        ensure!(
            differences.is_empty(),
            "{} does not describe {}:\n  {}",
            b.sbom.display(),
            b.binary.display(),
            differences.join("\n  ")
        );
        println!(
            "image: {} lists the {} crates the {} binary is built from ({} linked in)",
            b.sbom.display(),
            built_from.len(),
            b.platform.docker,
            linked.len()
        );
    }

    let host = Platform::host();
    for b in built.iter().filter(|b| !std::ptr::eq(b.platform, host)) {
        serve_under_emulation(b.platform, &b.binary, version)?;
    }
    println!("image: checked in {:.1?}", started.elapsed());
    Ok(())
}

fn tags(built: &[Built]) -> String {
    built
        .iter()
        .map(|b| b.tag.as_str())
        .collect::<Vec<_>>()
        .join(" and ")
}

/// `docker image inspect`, the image's one object.
fn inspect(sh: &Shell, tag: &str) -> Result<Value> {
    let json = cmd!(sh, "docker image inspect {tag}").quiet().read()?;
    let mut all: Vec<Value> =
        serde_json::from_str(&json).context("parsing docker image inspect")?;
    all.pop().with_context(|| format!("no image {tag}"))
}

/// What differs between two platforms' images beyond what must: each must name its own OS and
/// architecture, and its label its own SBOM; everything a container runs by must be equal.
pub(crate) fn config_differences(
    (a, a_image): (&Platform, &Value),
    (b, b_image): (&Platform, &Value),
    version: &str,
) -> Vec<String> {
    let mut differences = Vec::new();
    for (platform, image) in [(a, a_image), (b, b_image)] {
        let (os, arch) = platform.docker.split_once('/').unwrap_or_default();
        let said = (
            image["Os"].as_str().unwrap_or_default(),
            image["Architecture"].as_str().unwrap_or_default(),
        );
        if said != (os, arch) {
            differences.push(format!(
                "the {} image says it is {}/{}",
                platform.docker, said.0, said.1
            ));
        }
        let sbom = &image["Config"]["Labels"][image::SBOM_LABEL];
        if sbom.as_str() != Some(platform.sbom_name(version).as_str()) {
            differences.push(format!(
                "the {} image's {} label is {sbom}",
                platform.docker,
                image::SBOM_LABEL
            ));
        }
    }
    for field in [
        "User",
        "Entrypoint",
        "Cmd",
        "Healthcheck",
        "StopSignal",
        "ExposedPorts",
        "Env",
        "WorkingDir",
        "Volumes",
        "Labels",
    ] {
        let (mut x, mut y) = (
            a_image["Config"][field].clone(),
            b_image["Config"][field].clone(),
        );
        if field == "Labels" {
            for labels in [&mut x, &mut y] {
                if let Some(labels) = labels.as_object_mut() {
                    labels.remove(image::SBOM_LABEL);
                }
            }
        }
        if x != y {
            differences.push(format!("{field}: {x} ({}) vs {y} ({})", a.docker, b.docker));
        }
    }
    for (platform, image) in [(a, a_image), (b, b_image)] {
        for field in ["User", "StopSignal", "Healthcheck"] {
            let value = &image["Config"][field];
            if value.is_null() || value.as_str() == Some("") {
                differences.push(format!("the {} image has no {field}", platform.docker));
            }
        }
    }
    differences
}

/// `(name, version)` of every package Cargo.lock holds.
fn locked_versions() -> Result<BTreeSet<(String, String)>> {
    let path = crate::project_root().join("Cargo.lock");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    Ok(parse_lock(&text))
}

/// Cargo.lock's `[[package]]` entries: `name = "…"` followed by `version = "…"`.
fn parse_lock(text: &str) -> BTreeSet<(String, String)> {
    let quoted = |line: &str, key: &str| {
        line.strip_prefix(key)?
            .trim_start()
            .strip_prefix('=')?
            .trim()
            .strip_prefix('"')?
            .strip_suffix('"')
            .map(str::to_string)
    };
    let mut locked = BTreeSet::new();
    let mut name = None;
    for line in text.lines() {
        if line.starts_with("[[package]]") {
            name = None;
        } else if let Some(n) = quoted(line, "name") {
            name = Some(n);
        } else if let (Some(v), Some(n)) = (quoted(line, "version"), name.take()) {
            locked.insert((n, v));
        }
    }
    locked
}

/// The names of the service's own (normal, not dev or build) dependencies, from its manifest.
fn direct_dependencies(sh: &Shell) -> Result<BTreeSet<String>> {
    let json = cmd!(sh, "cargo metadata --format-version 1 --no-deps --locked")
        .quiet()
        .read()?;
    let metadata: Value = serde_json::from_str(&json)?;
    let service = metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|p| p["name"] == "hello-world"))
        .context("no hello-world package in cargo metadata")?;
    Ok(service["dependencies"]
        .as_array()
        .context("no dependencies")?
        .iter()
        .filter(|d| d["kind"].is_null() && d["optional"] != true)
        .filter_map(|d| d["name"].as_str().map(str::to_string))
        .collect())
}

/// What is wrong with `sbom` as the bill of materials of a binary built from the crates
/// `built_from` (`(name, version)`, as `cargo auditable` recorded them), of which `linked` are
/// linked into it (the others run at build time only: build scripts' dependencies, proc
/// macros), given the `locked` packages of Cargo.lock and the service's `direct` dependencies.
/// The SBOM must list exactly `built_from`, every crate of `linked` as required.
pub(crate) fn bill_of_materials_differences(
    sbom: &Value,
    built_from: &BTreeSet<(String, String)>,
    linked: &BTreeSet<(String, String)>,
    locked: &BTreeSet<(String, String)>,
    direct: &BTreeSet<String>,
) -> Vec<String> {
    let mut differences = Vec::new();
    if sbom["bomFormat"] != "CycloneDX" {
        differences.push(format!("bomFormat is {}, not CycloneDX", sbom["bomFormat"]));
    }
    if sbom["metadata"]["component"]["name"] != "hello-world" {
        differences.push(format!(
            "it describes {}, not hello-world",
            sbom["metadata"]["component"]["name"]
        ));
    }
    let components = sbom["components"].as_array().map_or(&[][..], Vec::as_slice);
    let mut listed = BTreeSet::new();
    let mut required = BTreeSet::new();
    for component in components {
        let (Some(name), Some(version)) =
            (component["name"].as_str(), component["version"].as_str())
        else {
            differences.push(format!("a component without name or version: {component}"));
            continue;
        };
        let entry = (name.to_string(), version.to_string());
        if !locked.contains(&entry) {
            differences.push(format!("{name} {version} is not in Cargo.lock"));
        }
        if component["scope"] != "excluded" {
            required.insert(entry.clone());
        }
        listed.insert(entry);
    }
    for name in direct
        .iter()
        .map(String::as_str)
        .chain(NAMED_CRATES.iter().copied())
    {
        if !required.iter().any(|(n, _)| n == name) {
            differences.push(format!("{name} is missing"));
        }
    }
    for (name, version) in listed.difference(built_from) {
        differences.push(format!("{name} {version} is listed but not built from"));
    }
    for (name, version) in built_from.difference(&listed) {
        differences.push(format!("{name} {version} is built from but not listed"));
    }
    for (name, version) in linked.difference(&required) {
        differences.push(format!(
            "{name} {version} is linked in but not listed as required"
        ));
    }
    differences
}

/// Runs `binary` (of `platform`, not this machine's) under `qemu-<arch>-static` as a server on
/// loopback, probes it, checks it with its own `check` and stops it with SIGTERM.
fn serve_under_emulation(platform: &Platform, binary: &Path, version: &str) -> Result<()> {
    let qemu = format!(
        "qemu-{}-static",
        match platform.arch {
            "arm64" => "aarch64",
            _ => "x86_64",
        }
    );
    ensure!(
        image::which(&qemu),
        "{qemu} is needed to run the {} binary here: apt-get install qemu-user-static",
        platform.docker
    );
    let started = Instant::now();
    let port = free_port()?;
    let admin_port = free_port()?;
    let mut server = Command::new(&qemu)
        .arg(binary)
        .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--admin-port", &admin_port.to_string()])
        .args(["--drain-delay", "0s", "--shutdown-timeout", "5s"])
        .args(["--instance-name", "emulated", "--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} under {qemu}", binary.display()))?;
    let result = probe_and_check(&qemu, binary, port, version, &mut server);
    let stopped = stop(&mut server);
    result?;
    stopped?;
    println!(
        "image: the {} binary served, passed a check and stopped on SIGTERM under {qemu} in {:.1?}",
        platform.docker,
        started.elapsed()
    );
    Ok(())
}

fn probe_and_check(
    qemu: &str,
    binary: &Path,
    port: u16,
    version: &str,
    server: &mut Child,
) -> Result<()> {
    let base = format!("http://127.0.0.1:{port}");
    let get = |path: &str| -> Result<(u16, String)> {
        let output = Command::new("curl")
            .args([
                "--silent",
                "--max-time",
                "5",
                "--write-out",
                "\n%{http_code}",
            ])
            .arg(format!("{base}{path}"))
            .output()
            .context("running curl")?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
        Ok((status.parse().unwrap_or(0), body.to_string()))
    };
    let deadline = Instant::now() + EMULATED_START;
    loop {
        if let Some(status) = server.try_wait()? {
            bail!("the emulated server exited at start ({status})");
        }
        if get("/healthz")?.0 == 200 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the emulated server did not answer /healthz within {EMULATED_START:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = get("/")?;
    ensure!(
        (status, body.as_str()) == (200, "Hello World!"),
        "GET / answered {status} {body:?}"
    );
    let (status, body) = get("/readyz")?;
    ensure!(
        status == 200 && body.contains("\"ready\""),
        "GET /readyz answered {status} {body}"
    );
    let (status, body) = get("/version")?;
    ensure!(
        status == 200 && body.contains(&format!("\"{version}\"")),
        "GET /version answered {status} {body}, not version {version}"
    );
    // The check client is the emulated binary too: 400 requests, 4 at a time, all answered by
    // this one replica, or it exits non-zero.
    let check = Command::new(qemu)
        .arg(binary)
        .args(["check", &format!("{base}/"), "--requests", "400"])
        .args(["--concurrency", "4", "--expect-replicas", "1"])
        .output()
        .context("running the emulated check")?;
    ensure!(
        check.status.success(),
        "the emulated `hello-world check` failed ({}):\n{}{}",
        check.status,
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    Ok(())
}

/// SIGTERM (qemu hands it to the emulated program), then a bounded wait for exit status 0.
fn stop(server: &mut Child) -> Result<()> {
    if server.try_wait()?.is_none() {
        Command::new("kill")
            .args(["-TERM", &server.id().to_string()])
            .status()
            .context("kill -TERM")?;
    }
    let deadline = Instant::now() + EMULATED_STOP;
    while Instant::now() < deadline {
        if let Some(status) = server.try_wait()? {
            ensure!(status.success(), "the emulated server exited with {status}");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    server.kill()?;
    server.wait()?;
    bail!("the emulated server did not exit within {EMULATED_STOP:?} of SIGTERM")
}

/// A loopback port free at the moment of asking.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Builds both platforms' binaries twice, the second time from nothing in another target
/// directory, and fails unless each pair is byte for byte the same.
pub(crate) fn reproduce(sh: &Shell) -> Result<()> {
    let version = image::crate_version(sh)?;
    let commit = image::git_commit(sh);
    let target = image::target_dir(sh)?;
    let again = target.join("reproduce");
    let mut lines = Vec::new();
    for platform in image::PLATFORMS {
        let first = image::build_static_binary(sh, platform, &version, &commit, &target)?;
        sh.remove_path(&again)?;
        let started = Instant::now();
        let second = image::build_static_binary(sh, platform, &version, &commit, &again)?;
        let (a, b) = (sha256(sh, &first)?, sha256(sh, &second)?);
        ensure!(
            a == b,
            "the {} binary is not reproducible: {} is {a}, {} is {b}",
            platform.docker,
            first.display(),
            second.display()
        );
        lines.push(format!(
            "{}: sha256 {a} both times (rebuilt from nothing in {:.0?})",
            platform.docker,
            started.elapsed()
        ));
    }
    sh.remove_path(&again)?;
    println!(
        "image: reproducible, commit {commit}:\n  {}",
        lines.join("\n  ")
    );
    Ok(())
}

fn sha256(sh: &Shell, file: &Path) -> Result<String> {
    let out = cmd!(sh, "sha256sum {file}").quiet().read()?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .context("sha256sum printed nothing")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn image(platform: &Platform, user: &str) -> Value {
        let (os, arch) = platform.docker.split_once('/').expect("os/arch");
        json!({
            "Os": os,
            "Architecture": arch,
            "Config": {
                "User": user,
                "Entrypoint": ["/hello-world"],
                "Cmd": ["serve"],
                "Healthcheck": {"Test": ["CMD", "/hello-world", "healthcheck"]},
                "StopSignal": "SIGTERM",
                "ExposedPorts": {"5000/tcp": {}, "9000/tcp": {}},
                "Labels": {
                    "org.opencontainers.image.version": "1.0.0",
                    image::SBOM_LABEL: platform.sbom_name("1.0.0"),
                },
            },
        })
    }

    #[test]
    fn images_alike_but_for_their_platform_and_sbom_do_not_differ() {
        let amd64 = image(&image::AMD64, "65532:65532");
        let arm64 = image(&image::ARM64, "65532:65532");
        assert_eq!(
            config_differences((&image::AMD64, &amd64), (&image::ARM64, &arm64), "1.0.0"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn another_user_or_a_wrong_architecture_is_a_difference() {
        let amd64 = image(&image::AMD64, "65532:65532");
        let mut arm64 = image(&image::ARM64, "0:0");
        arm64["Architecture"] = json!("amd64");
        let differences =
            config_differences((&image::AMD64, &amd64), (&image::ARM64, &arm64), "1.0.0");
        assert!(
            differences.iter().any(|d| d.starts_with("User:")),
            "{differences:?}"
        );
        assert!(
            differences
                .iter()
                .any(|d| d.contains("the linux/arm64 image says it is linux/amd64")),
            "{differences:?}"
        );
    }

    #[test]
    fn a_missing_healthcheck_on_both_is_still_a_difference() {
        let mut amd64 = image(&image::AMD64, "65532:65532");
        let mut arm64 = image(&image::ARM64, "65532:65532");
        amd64["Config"]["Healthcheck"] = Value::Null;
        arm64["Config"]["Healthcheck"] = Value::Null;
        let differences =
            config_differences((&image::AMD64, &amd64), (&image::ARM64, &arm64), "1.0.0");
        assert_eq!(differences.len(), 2, "{differences:?}");
    }

    #[test]
    fn a_linked_crate_marked_excluded_fails() {
        let components: Vec<_> = NAMED
            .iter()
            .map(|(n, v)| {
                (
                    *n,
                    *v,
                    if *n == "tokio" {
                        "excluded"
                    } else {
                        "required"
                    },
                )
            })
            .collect();
        let differences = bill_of_materials_differences(
            &sbom(&components),
            &set(NAMED),
            &set(NAMED),
            &set(NAMED),
            &BTreeSet::new(),
        );
        assert!(
            differences.contains(&"tokio 1.54.1 is linked in but not listed as required".into()),
            "{differences:?}"
        );
    }

    #[test]
    fn the_lock_parser_reads_every_package_and_version() {
        let lock = "version = 4\n\n[[package]]\nname = \"axum\"\nversion = \"0.8.9\"\n\
                    source = \"registry+https://github.com/rust-lang/crates.io-index\"\n\
                    dependencies = [\n \"bytes\",\n]\n\n[[package]]\nname = \"hello-world\"\n\
                    version = \"0.1.0\"\n";
        let pairs = |v: &[(&str, &str)]| -> BTreeSet<(String, String)> {
            v.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            parse_lock(lock),
            pairs(&[("axum", "0.8.9"), ("hello-world", "0.1.0")])
        );
    }

    fn set(v: &[(&str, &str)]) -> BTreeSet<(String, String)> {
        v.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn sbom(components: &[(&str, &str, &str)]) -> Value {
        json!({
            "bomFormat": "CycloneDX",
            "metadata": {"component": {"name": "hello-world"}},
            "components": components.iter().map(|(n, v, scope)| json!({
                "name": n, "version": v, "scope": scope,
            })).collect::<Vec<_>>(),
        })
    }

    const NAMED: &[(&str, &str)] = &[
        ("axum", "0.8.9"),
        ("hyper", "1.12.0"),
        ("tokio", "1.54.1"),
        ("redis", "1.8.1"),
        ("mimalloc", "0.1.52"),
        ("serde", "1.0.228"),
    ];

    #[test]
    fn an_sbom_of_exactly_the_binarys_locked_crates_passes() {
        let mut components: Vec<_> = NAMED.iter().map(|(n, v)| (*n, *v, "required")).collect();
        // A build script's dependency, and a proc macro the SBOM counts as required.
        components.push(("cc", "1.2.0", "excluded"));
        components.push(("serde_derive", "1.0.228", "required"));
        let mut built_from = set(NAMED);
        built_from.insert(("cc".into(), "1.2.0".into()));
        built_from.insert(("serde_derive".into(), "1.0.228".into()));
        let direct = ["axum".to_string()].into();
        assert_eq!(
            bill_of_materials_differences(
                &sbom(&components),
                &built_from,
                &set(NAMED),
                &built_from,
                &direct
            ),
            Vec::<String>::new()
        );
    }

    #[test]
    fn another_version_than_the_locked_one_or_a_crate_left_out_fails() {
        let components: Vec<_> = NAMED
            .iter()
            .filter(|(n, _)| *n != "redis")
            .map(|(n, v)| (*n, if *n == "tokio" { "1.0.0" } else { *v }, "required"))
            .collect();
        let direct = ["axum".to_string(), "subtle".to_string()].into();
        let differences = bill_of_materials_differences(
            &sbom(&components),
            &set(NAMED),
            &set(NAMED),
            &set(NAMED),
            &direct,
        );
        for expected in [
            "tokio 1.0.0 is not in Cargo.lock",
            "redis is missing",
            "subtle is missing",
            "tokio 1.0.0 is listed but not built from",
            "redis 1.8.1 is built from but not listed",
            "redis 1.8.1 is linked in but not listed as required",
        ] {
            assert!(
                differences.iter().any(|d| d == expected),
                "{expected}: {differences:?}"
            );
        }
    }
}
