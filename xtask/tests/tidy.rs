//! Tidy checks over the whole tree: the habits that keep the code a guided tour.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives below the root")
        .to_path_buf()
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in
        std::fs::read_dir(dir).unwrap_or_else(|err| panic!("read {}: {err}", dir.display()))
    {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// Every Rust file opens with a `//!` saying what it owns.
#[test]
fn every_rust_file_says_what_it_owns() {
    let mut files = Vec::new();
    for dir in ["crates", "xtask/src", "xtask/tests", "fuzz/fuzz_targets"] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(files.len() > 20, "the walk found too few files: {files:?}");
    let missing: Vec<String> = files
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).expect("readable source");
            !text.trim_start().starts_with("//!")
        })
        .map(|path| {
            path.strip_prefix(root())
                .unwrap_or(path)
                .display()
                .to_string()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! header: {missing:?}"
    );
}

/// ARCHITECTURE.md's code map names every module of the service: by its path, or by its file
/// name below its folder's line (`api/` … `kv.rs`).
#[test]
fn the_code_map_names_every_module() {
    let map = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let src = root().join("crates/hello-world/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let unnamed: Vec<String> = files
        .iter()
        .map(|path| {
            path.strip_prefix(&src)
                .expect("below src")
                .display()
                .to_string()
        })
        .filter(|relative| {
            let path = Path::new(relative);
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let folder = path.parent().and_then(|p| p.to_str()).unwrap_or("");
            let by_path = map.contains(relative.as_str());
            let by_folder = !folder.is_empty()
                && map.contains(&format!("{folder}/"))
                && (name == "mod.rs" || map.contains(name));
            !(by_path || by_folder)
        })
        .collect();
    assert!(
        unnamed.is_empty(),
        "modules missing from ARCHITECTURE.md's code map: {unnamed:?}"
    );
}

/// The service's modules, by layer, top first. Dependencies point one way (ARCHITECTURE.md):
/// a module may name modules of its own layer or of the layers below it, never one above, and
/// no module reaches itself through others (no cycle).
const LAYERS: &[(&str, &[&str])] = &[
    ("server", &["server", "watchdog", "h2c"]),
    ("middleware", &["observe"]),
    (
        "routes",
        &["api", "admin", "web", "faults", "error", "lifecycle"],
    ),
    ("store", &["store"]),
    (
        "basics",
        &["config", "metrics", "telemetry", "check", "healthcheck"],
    ),
];

/// The crate modules a source file names (`crate::name`), outside comments.
fn crate_modules_named(text: &str) -> Result<Vec<String>, String> {
    let mut named = Vec::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let code = code.split("//").next().unwrap_or("");
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            if rest.starts_with('{') {
                return Err(format!(
                    "`{}`: name each crate module on its own `use` line, so this check can read it",
                    line.trim()
                ));
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::VERSION` and `crate::COMMIT` are the crate root's, not a module's.
            if !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_uppercase()) {
                named.push(name);
            }
        }
    }
    Ok(named)
}

#[test]
fn dependencies_point_from_the_server_down_to_the_store() {
    let src = root().join("crates/hello-world/src");
    let layer_of = |module: &str| {
        LAYERS
            .iter()
            .position(|(_, modules)| modules.contains(&module))
    };
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges = std::collections::BTreeSet::new();
    let mut problems = Vec::new();
    for path in &files {
        let relative = path.strip_prefix(&src).expect("below src");
        let module = relative
            .components()
            .next()
            .and_then(|first| first.as_os_str().to_str())
            .map(|first| first.trim_end_matches(".rs").to_owned())
            .expect("a file below src");
        if module == "main" || module == "lib" {
            // The binary and the crate root may name anything.
            continue;
        }
        let Some(layer) = layer_of(&module) else {
            problems.push(format!(
                "{module}: in no layer of LAYERS (xtask/tests/tidy.rs)"
            ));
            continue;
        };
        let text = std::fs::read_to_string(path).expect("readable source");
        match crate_modules_named(&text) {
            Err(problem) => problems.push(format!("{}: {problem}", relative.display())),
            Ok(named) => {
                for other in named.into_iter().filter(|other| *other != module) {
                    match layer_of(&other) {
                        Some(below) if below >= layer => {
                            edges.insert((module.clone(), other));
                        }
                        Some(above) => problems.push(format!(
                            "{}: names crate::{other} ({}), a layer above {module} ({})",
                            relative.display(),
                            LAYERS[above].0,
                            LAYERS[layer].0
                        )),
                        None => problems.push(format!(
                            "{}: names crate::{other}, in no layer",
                            relative.display()
                        )),
                    }
                }
            }
        }
    }
    // Within a layer, no cycle either: no module reaches itself through the others.
    for (start, _) in &edges {
        let mut seen = std::collections::BTreeSet::new();
        let mut next = vec![start.clone()];
        while let Some(module) = next.pop() {
            for (_, to) in edges.iter().filter(|(from, _)| *from == module) {
                if to == start {
                    problems.push(format!("{start} names itself through a cycle: {edges:?}"));
                    next.clear();
                    break;
                }
                if seen.insert(to.clone()) {
                    next.push(to.clone());
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        edges.contains(&("observe".to_owned(), "api".to_owned())),
        "the walk found no middleware → routes edge: {edges:?}"
    );
}

#[test]
fn the_direction_check_reads_names_and_skips_comments() {
    let text = "use crate::api::AppState;\n// crate::server in a comment\nlet v = crate::VERSION; crate::store::open(x) // crate::admin\n";
    assert_eq!(
        crate_modules_named(text),
        Ok(vec!["api".to_owned(), "store".to_owned()])
    );
    assert!(crate_modules_named("use crate::{api, store};").is_err());
}

/// Every fuzz target is declared in `fuzz/Cargo.toml` and keeps a small corpus in the repository,
/// which `cargo xtask fuzz` seeds it with.
#[test]
fn every_fuzz_target_is_declared_and_has_a_corpus() {
    let fuzz = root().join("fuzz");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let mut targets = Vec::new();
    rust_files(&fuzz.join("fuzz_targets"), &mut targets);
    assert!(targets.len() >= 10, "too few fuzz targets: {targets:?}");
    for target in targets {
        let name = target
            .file_stem()
            .and_then(|stem| stem.to_str())
            .expect("a target has a name");
        assert!(
            manifest.contains(&format!(
                "name = \"{name}\"\npath = \"fuzz_targets/{name}.rs\""
            )),
            "fuzz/Cargo.toml declares no [[bin]] {name}"
        );
        let corpus = fuzz.join("corpus").join(name);
        let seeds = std::fs::read_dir(&corpus)
            .unwrap_or_else(|err| panic!("{}: {err}", corpus.display()))
            .count();
        assert!(seeds > 0, "{} is empty", corpus.display());
    }
}

/// No file keeps the markers of an unresolved merge.
#[test]
fn no_file_holds_merge_conflict_markers() {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if matches!(name.to_str(), Some("target" | ".git" | ".venv" | "corpus")) {
                continue;
            }
            if path.is_dir() {
                walk(&path, found);
            } else {
                found.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root(), &mut files);
    let marked: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(path).ok()?;
            text.lines()
                .any(|line| line.starts_with("<<<<<<< ") || line.starts_with(">>>>>>> "))
                .then(|| {
                    path.strip_prefix(root())
                        .unwrap_or(path)
                        .display()
                        .to_string()
                })
        })
        .collect();
    assert!(marked.is_empty(), "merge conflict markers in {marked:?}");
}
