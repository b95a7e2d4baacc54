//! The check behind "the broker is the only module that talks to Redis".
//!
//! Scans the production source of every crate in the workspace (`engine/src` and each member
//! crate's `src/`) and fails, naming file and line, wherever code outside `engine/src/broker/`
//! builds a Redis command, pipeline or script, or builds a key from the prefix outside
//! `engine/src/keys.rs`. Tests, benches, examples, the root test-suite package and the test
//! harness (`engine/src/testing/`) are aside: they may poke Redis directly to set up or check a
//! state. A file's `#[cfg(test)]` module (the last item, by the house convention) is skipped.

use std::path::{Path, PathBuf};

/// What building a command, pipeline or script looks like with redis-rs.
const COMMAND_PATTERNS: &[&str] = &[
    "redis::cmd(",
    "redis::pipe(",
    "redis::Cmd",
    "redis::Pipeline",
    "Cmd::new(",
    "Pipeline::new(",
    "Script::new(",
    "redis::Script",
    "AsyncCommands",
    "AsyncTypedCommands",
    "redis::Commands",
    "redis::TypedCommands",
    ".query_async(",
    ".query_async::<",
    ".invoke_async(",
    ".invoke_async::<",
];

/// What building a key name outside `keys.rs` looks like.
const KEY_PATTERNS: &[&str] = &["keys::PREFIX", "{PREFIX}"];

/// One hit: file (relative to the workspace), line number, the pattern and the line.
type Hit = (String, usize, &'static str, String);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the engine crate sits in the workspace root")
        .to_path_buf()
}

/// Every production source tree: `engine/src` and `<crate>/src` of each other member crate
/// (any top-level directory with a Cargo.toml), so a crate added later is checked too.
fn source_trees(root: &Path) -> Vec<PathBuf> {
    let mut trees: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("the workspace root is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("Cargo.toml").is_file() && p.join("src").is_dir())
        .map(|p| p.join("src"))
        .collect();
    trees.sort();
    trees
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source directory is readable") {
        let path = entry.expect("a directory entry is readable").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether a file (a path relative to the workspace, `/`-separated) may build commands or
/// keys.
fn exempt(rel: &str, patterns: &[&str]) -> bool {
    if patterns == KEY_PATTERNS {
        rel == "engine/src/keys.rs"
    } else {
        rel.starts_with("engine/src/broker/")
            || rel == "engine/src/testing.rs"
            || rel.starts_with("engine/src/testing/")
    }
}

/// The lines of `text` that match one of `patterns`, outside comments and the test module.
fn scan(rel: &str, text: &str, patterns: &'static [&'static str]) -> Vec<Hit> {
    let mut hits = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|(_, next)| next.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        for p in patterns {
            if code.contains(p) {
                hits.push((rel.to_owned(), i + 1, *p, line.trim().to_owned()));
            }
        }
    }
    hits
}

fn violations(root: &Path) -> Vec<Hit> {
    let mut files = Vec::new();
    for tree in source_trees(root) {
        rust_files(&tree, &mut files);
    }
    files.sort();
    let mut hits = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(root)
            .expect("scanned files are under the root")
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&file).expect("a source file is readable");
        for patterns in [COMMAND_PATTERNS, KEY_PATTERNS] {
            if !exempt(&rel, patterns) {
                hits.extend(scan(&rel, &text, patterns));
            }
        }
    }
    hits
}

#[test]
fn only_the_broker_builds_redis_commands_and_only_keys_rs_builds_keys() {
    let root = workspace_root();
    let trees = source_trees(&root);
    assert!(
        trees.iter().any(|t| t.ends_with("engine/src")),
        "the scan must cover engine/src; it found {trees:?}"
    );
    let hits = violations(&root);
    let report: Vec<String> = hits
        .iter()
        .map(|(file, line, pattern, code)| format!("{file}:{line}: `{pattern}` in `{code}`"))
        .collect();
    assert!(
        hits.is_empty(),
        "Redis commands belong in engine/src/broker/ and key names in engine/src/keys.rs \
         (add a broker function and call it); found {}:\n{}",
        hits.len(),
        report.join("\n")
    );
}

#[test]
fn the_scan_flags_commands_and_keys_but_not_comments_or_tests() {
    let sample = "\
use redis::AsyncCommands;
// redis::cmd(\"GET\") in a comment is fine
let n: u64 = redis::cmd(\"XLEN\").arg(k).query_async(&mut c).await?;
let key = format!(\"{PREFIX}:x\");
#[cfg(test)]
mod tests {
    fn t() { redis::pipe(); }
}
";
    let found: Vec<(usize, &str)> = scan("x.rs", sample, COMMAND_PATTERNS)
        .into_iter()
        .chain(scan("x.rs", sample, KEY_PATTERNS))
        .map(|(_, line, pattern, _)| (line, pattern))
        .collect();
    assert_eq!(
        found,
        [
            (1, "AsyncCommands"),
            (3, "redis::cmd("),
            (3, ".query_async("),
            (4, "{PREFIX}")
        ]
    );
    assert!(exempt("engine/src/broker/stream.rs", COMMAND_PATTERNS));
    assert!(exempt("engine/src/testing/fixtures.rs", COMMAND_PATTERNS));
    assert!(!exempt("engine/src/inspector.rs", COMMAND_PATTERNS));
    assert!(exempt("engine/src/keys.rs", KEY_PATTERNS));
    assert!(!exempt("engine/src/broker/admin.rs", KEY_PATTERNS));
}
