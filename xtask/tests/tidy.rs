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
    for dir in ["crates", "xtask/src", "xtask/tests"] {
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
