//! Tidy: the invariants ARCHITECTURE.md states about the code itself, held by tests (the
//! rust-analyzer habit). Each failure says what to change.
//!
//! - Which crates may depend on which ([`MAY_USE`]): the agent never on the controller's side,
//!   the pure crates never on one that does I/O.
//! - `unwrap()` is linted everywhere but in tests (`clippy::unwrap_used`, and `clippy.toml`
//!   allows it in tests); outside a test module no file allows it again.
//! - A source file has at most [`MAX_CODE_LINES`] lines before its tests, unless its first doc
//!   paragraphs say why it is one long file (a paragraph starting `One long file:`).

#![cfg(test)]

use std::path::{Path, PathBuf};

/// Each workspace crate and the workspace crates it may use (normal dependencies; tests and
/// benchmarks may use more).
const MAY_USE: &[(&str, &[&str])] = &[
    // Pure: values, wire types, logic. No I/O, nothing of ours that does any.
    ("qb-api", &[]),
    ("qb-agent-proto", &["qb-api"]),
    ("qb-pki", &["qb-api"]),
    ("qb-plan", &["qb-api", "qb-agent-proto", "qb-pki"]),
    ("qb-tunnel", &[]),
    ("qb-ui", &[]),
    ("qb-package", &[]),
    // The host, the controller's store, the lab.
    ("qb-host", &[]),
    ("qb-store", &["qb-api", "qb-plan"]),
    ("qb-lab", &["qb-host", "qb-test-support"]),
    ("qb-test-support", &[]),
    // The add-ons: programs that run in the clusters, knowing nothing of qb's insides.
    ("qb-addon-kit", &[]),
    ("qb-dns", &["qb-addon-kit"]),
    ("qb-ingress", &["qb-addon-kit"]),
    // The programs. The agent and the CLI know nothing of the controller's insides.
    (
        "qb-agent",
        &["qb-api", "qb-agent-proto", "qb-pki", "qb-tunnel", "qb-host"],
    ),
    ("qb-cli", &["qb-api"]),
    (
        "qb-controller",
        &[
            "qb-api",
            "qb-agent-proto",
            "qb-host",
            "qb-pki",
            "qb-plan",
            "qb-store",
            "qb-tunnel",
            "qb-ui",
            "qb-package",
        ],
    ),
    ("xtask", &["qb-lab"]),
];

/// Lines of code before a file's `mod tests` (or in all, without one).
const MAX_CODE_LINES: usize = 1000;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_owned()
}

/// Every workspace member's directory.
fn members() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .expect("crates/")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    dirs.push(root().join("xtask"));
    dirs.sort();
    dirs
}

/// `.rs` files below `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A source file's code: all of it before its `mod tests`.
fn code(text: &str) -> &str {
    text.find("\nmod tests {").map_or(text, |end| &text[..end])
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn crates_depend_only_on_what_they_may_use() {
    let mut wrong = Vec::new();
    for dir in members() {
        let manifest: toml::Table = std::fs::read_to_string(dir.join("Cargo.toml"))
            .expect("Cargo.toml")
            .parse()
            .expect("Cargo.toml parses");
        let name = manifest["package"]["name"].as_str().expect("a name");
        let Some((_, allowed)) = MAY_USE.iter().find(|(n, _)| *n == name) else {
            wrong.push(format!("{name}: not in MAY_USE; say there what it may use"));
            continue;
        };
        let ours = manifest
            .get("dependencies")
            .and_then(|d| d.as_table())
            .into_iter()
            .flat_map(|d| d.keys())
            .filter(|k| k.starts_with("qb-"));
        for dep in ours {
            if !allowed.contains(&dep.as_str()) {
                wrong.push(format!("{name} depends on {dep}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "crates may use only what ARCHITECTURE.md allows (xtask/src/tidy.rs, MAY_USE):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn unwrap_is_allowed_only_in_tests() {
    let mut wrong = Vec::new();
    for dir in members() {
        for file in rust_files(&dir.join("src")) {
            let text = std::fs::read_to_string(&file).expect("a source file");
            for (i, line) in code(&text).lines().enumerate() {
                // Spelled in two parts so that this line is not a hit itself.
                if line.contains(concat!("allow(clippy::", "unwrap_used)")) {
                    wrong.push(format!("{}:{}", relative(&file), i + 1));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "unwrap() stays linted outside tests; handle the error instead:\n{}",
        wrong.join("\n")
    );
    let clippy = std::fs::read_to_string(root().join("clippy.toml")).expect("clippy.toml");
    assert!(clippy.contains("allow-unwrap-in-tests = true"));
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    assert!(manifest.contains("unwrap_used = \"warn\""));
}

#[test]
fn long_files_say_why() {
    let mut wrong = Vec::new();
    for dir in members() {
        for file in rust_files(&dir.join("src")) {
            let text = std::fs::read_to_string(&file).expect("a source file");
            let lines = code(&text).lines().count();
            let says_why = text.lines().take_while(|l| l.starts_with("//!")).any(|l| {
                l.trim_start_matches("//!")
                    .trim()
                    .starts_with("One long file:")
            });
            if lines > MAX_CODE_LINES && !says_why {
                wrong.push(format!("{}: {lines} lines", relative(&file)));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "files over {MAX_CODE_LINES} lines of code: split them, or say at their top why not \
         (a doc paragraph starting `One long file:`):\n{}",
        wrong.join("\n")
    );
}
