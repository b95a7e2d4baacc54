//! The doc check: every `worker-cli ...` and `autoscaler ...` command in README.md and
//! docs/operations.md (fenced blocks, the systemd unit's `ExecStart`, inline code, and the
//! commands nested in `--worker-cmd "..."`) is parsed by the real binary with `--help` appended
//! (a documented flag or subcommand that does not exist, or a value it refuses, fails the
//! test), and the admin commands among them that need no placeholder are run for real against
//! a private Redis, in the order the docs give them.

use std::path::Path;
use std::process::{Command, Stdio};

use rivulet::testing::RedisServer;

use crate::common::BIN;

/// The documents whose commands are checked.
const DOCS: [&str; 2] = ["README.md", "docs/operations.md"];

/// Admin subcommands safe to run for real in a test: they return, and change nothing a later
/// documented command depends on in a way that makes it fail.
const RUN_FOR_REAL: [&str; 8] = [
    "enqueue", "stats", "queues", "workers", "pending", "dlq", "pause", "queue",
];

/// One documented command: which document, the program and its arguments.
#[derive(Debug, Clone)]
struct Documented {
    doc: &'static str,
    program: String,
    args: Vec<String>,
    /// From a fenced block (a command to type) rather than inline code (often a reference,
    /// like "see `worker-cli dlq show`").
    fenced: bool,
}

/// Shell-like words of one (continuation-joined) line: quotes removed, `#` comments dropped,
/// and unquoted `|`, `&&`, `||`, `;` ending a command. Enough for documentation, not a shell.
fn commands_in_line(line: &str) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new()];
    let mut word: Option<String> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    w.push(c);
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        c => w.push(c),
                    }
                }
            }
            '#' if word.is_none() => break,
            '|' | ';' | '&' => {
                if let Some(w) = word.take() {
                    out.last_mut().unwrap().push(w);
                }
                if chars.peek() == Some(&c) {
                    chars.next();
                }
                out.push(Vec::new());
            }
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    out.last_mut().unwrap().push(w);
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word {
        out.last_mut().unwrap().push(w);
    }
    out.retain(|c| !c.is_empty());
    out
}

/// The documented command in `words`, if one of ours: leading `VAR=value` words and
/// `ExecStart=` skipped, the program named by path or bare, `cargo run ... -p worker-cli --`
/// read as worker-cli.
fn ours(doc: &'static str, fenced: bool, words: &[String], found: &mut Vec<Documented>) {
    let mut i = 0;
    while i < words.len() && words[i].contains('=') && !words[i].starts_with('-') && !words[i].contains("/worker-cli") {
        i += 1;
    }
    let mut words: Vec<String> = words[i..].to_vec();
    if let Some(first) = words.first_mut()
        && let Some(rest) = first.strip_prefix("ExecStart=")
    {
        *first = rest.to_owned();
    }
    let Some(first) = words.first() else { return };
    let program = Path::new(first)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let args = if program == "cargo" {
        let Some(dash) = words.iter().position(|w| w == "--") else {
            return;
        };
        if !words.windows(2).any(|w| w[0] == "-p" && w[1] == "worker-cli") {
            return;
        }
        found.push(Documented {
            doc,
            program: "worker-cli".into(),
            args: words[dash + 1..].to_vec(),
            fenced,
        });
        return;
    } else if program == "worker-cli" || program == "autoscaler" {
        words[1..].to_vec()
    } else {
        return;
    };
    // A command inside a flag's value (`--worker-cmd "worker-cli work ..."`) is documented too.
    for a in &args {
        if a.starts_with("worker-cli ") || a.starts_with("autoscaler ") {
            for c in commands_in_line(a) {
                ours(doc, fenced, &c, found);
            }
        }
    }
    found.push(Documented {
        doc,
        program,
        args,
        fenced,
    });
}

/// Every documented command of `text`, in order.
fn documented(doc: &'static str, text: &str) -> Vec<Documented> {
    let mut found = Vec::new();
    let mut fence: Option<String> = None;
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(lang) = trimmed.strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(lang.trim().to_owned()),
            };
            continue;
        }
        match &fence {
            Some(lang) if lang.starts_with("rust") => {}
            Some(_) => {
                let line = trimmed.strip_prefix("$ ").unwrap_or(trimmed);
                if let Some(head) = line.trim_end().strip_suffix('\\') {
                    pending.push_str(head);
                    pending.push(' ');
                    continue;
                }
                pending.push_str(line);
                for c in commands_in_line(&std::mem::take(&mut pending)) {
                    ours(doc, true, &c, &mut found);
                }
            }
            None => {
                // Inline code: `worker-cli ...` and `autoscaler ...` spans of prose.
                for (i, span) in line.split('`').enumerate() {
                    if i % 2 == 1 && (span.starts_with("worker-cli ") || span.starts_with("autoscaler ")) {
                        for c in commands_in_line(span) {
                            ours(doc, false, &c, &mut found);
                        }
                    }
                }
            }
        }
    }
    found
}

fn all_documented() -> Vec<Documented> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    DOCS.iter()
        .flat_map(|doc| {
            let text = std::fs::read_to_string(root.join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"));
            documented(doc, &text)
        })
        .collect()
}

/// The autoscaler binary, next to worker-cli's (built when a narrower run did not).
fn autoscaler_bin() -> std::path::PathBuf {
    rivulet::testing::workspace_binary(BIN, "autoscaler", "autoscaler")
}

/// A word that stands for something the reader fills in (`ID`, `Q`, `K`, `...`).
/// An `enqueue --count N` over [`BULK_COUNT`]: documented imports of millions of tasks parse
/// like any command, but running them for real would spend minutes of every test run.
fn is_bulk_load(args: &[String]) -> bool {
    args.windows(2)
        .any(|w| w[0] == "--count" && w[1].parse::<u64>().is_ok_and(|n| n > BULK_COUNT))
}

/// The largest documented `--count` the test runs for real.
const BULK_COUNT: u64 = 10_000;

fn is_placeholder(word: &str) -> bool {
    word.contains("...") || (!word.is_empty() && word.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
}

#[test]
fn the_extraction_reads_shell_like_docs() {
    let c = commands_in_line(r#"REDIS_URL=x worker-cli enqueue --payload '{"w": 200}' --kind "a b" # note | here"#);
    assert_eq!(
        c,
        [[
            "REDIS_URL=x",
            "worker-cli",
            "enqueue",
            "--payload",
            r#"{"w": 200}"#,
            "--kind",
            "a b"
        ]]
    );
    let found = documented(
        "t",
        "x `worker-cli stats --json` y\n```sh\nautoscaler --queue q \\\n  --worker-cmd \"worker-cli work -q q\" | head\n```\n```ini\nExecStart=/usr/bin/worker-cli --workers 2\n```\n",
    );
    let shown: Vec<String> = found
        .iter()
        .map(|d| format!("{} {}", d.program, d.args.join(" ")))
        .collect();
    assert_eq!(
        shown,
        [
            "worker-cli stats --json",
            "worker-cli work -q q",
            "autoscaler --queue q --worker-cmd worker-cli work -q q",
            "worker-cli --workers 2",
        ]
    );
    assert!(is_placeholder("ID") && is_placeholder("...") && !is_placeholder("images") && !is_placeholder("--all"));
}

#[test]
fn every_documented_command_parses_and_the_admin_ones_run() {
    let commands = all_documented();
    let count = |p: &str| commands.iter().filter(|d| d.program == p).count();
    // Guards the extraction itself: the docs hold at least this many commands today.
    assert!(count("worker-cli") >= 15 && count("autoscaler") >= 3, "{commands:#?}");

    let autoscaler = autoscaler_bin();
    let mut failures = Vec::new();
    for d in &commands {
        let bin = if d.program == "worker-cli" {
            Path::new(BIN)
        } else {
            autoscaler.as_path()
        };
        let out = Command::new(bin)
            .args(&d.args)
            .arg("--help")
            // Nothing listens there: a command that got past parsing must not reach a Redis.
            .env("REDIS_URL", "redis://127.0.0.1:1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!(
                "{}: `{} {}` does not parse (exit {:?}):\n{}",
                d.doc,
                d.program,
                d.args.join(" "),
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }

    let server = RedisServer::start();
    let mut ran = 0;
    for d in commands.iter().filter(|d| d.program == "worker-cli" && d.fenced) {
        let Some(sub) = d.args.first() else { continue };
        if !RUN_FOR_REAL.contains(&sub.as_str()) || d.args.iter().any(|a| is_placeholder(a) || a == "--watch") {
            continue;
        }
        if is_bulk_load(&d.args) {
            continue; // parsed above; running it is a load test, not an admin command
        }
        let out = Command::new(BIN)
            .args(&d.args)
            .env("REDIS_URL", server.url())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        ran += 1;
        if !out.status.success() {
            failures.push(format!(
                "{}: `worker-cli {}` failed against a private Redis (exit {:?}):\n{}",
                d.doc,
                d.args.join(" "),
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(ran >= 5, "ran only {ran} documented admin commands for real");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
