//! Values on the command line: the parsers clap calls for each flag, and their inverses (what
//! a supervisor passes to its children). A leaf: it imports no other module of this crate, so
//! `cli` (which names the parsers) and `settings` (which resolves flags) both build on it.

use std::fmt;
use std::time::Duration;

use rivulet::{Durability, PriorityMode, TlsOptions, redact_url};
use rivulet_fleet::UsageError;

/// One `--exec KIND=COMMAND`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// The task kind it serves.
    pub kind: String,
    /// The command, run with `sh -c`.
    pub command: String,
}

impl fmt::Display for ExecSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.kind, self.command)
    }
}

/// One `--rate-limit NAME=RATE` or `--max-running NAME=N`, parsed by the engine's one parser
/// (`rivulet::limits`).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedLimit<T> {
    /// The limit's name: a task's `limit_key`, or a kind.
    pub name: String,
    /// The rate, or the cap.
    pub value: T,
}

/// Parses `--rate-limit NAME=COUNT/UNIT[,burst=N]`.
pub fn parse_rate_limit(s: &str) -> Result<NamedLimit<rivulet::Rate>, String> {
    rivulet::limits::parse_rate_limit(s)
        .map(|(name, value)| NamedLimit { name, value })
        .map_err(|e| e.to_string())
}

/// Parses `--max-running NAME=N`.
pub fn parse_max_running(s: &str) -> Result<NamedLimit<u32>, String> {
    rivulet::limits::parse_max_running(s)
        .map(|(name, value)| NamedLimit { name, value })
        .map_err(|e| e.to_string())
}

/// Parses `--group GROUP` by the engine's rule for group names.
pub fn parse_group(s: &str) -> Result<String, String> {
    rivulet::envelope::check_group(s).map_err(|m| m.to_string())?;
    Ok(s.to_owned())
}

/// Parses `--group-weight GROUP=W`: a valid group name (the engine's rule) and a weight of
/// 1 to `rivulet::worker::MAX_GROUP_WEIGHT`.
pub fn parse_group_weight(s: &str) -> Result<NamedLimit<u32>, String> {
    let Some((group, weight)) = s.split_once('=') else {
        return Err(format!("{s:?}: expected GROUP=WEIGHT, e.g. tenant-a=3"));
    };
    rivulet::envelope::check_group(group).map_err(|m| format!("{s:?}: {m}"))?;
    let max = rivulet::worker::MAX_GROUP_WEIGHT;
    match weight.parse::<u32>() {
        Ok(w) if (1..=max).contains(&w) => Ok(NamedLimit {
            name: group.to_owned(),
            value: w,
        }),
        _ => Err(format!(
            "{s:?}: the weight {weight:?} is not a whole number from 1 to {max}"
        )),
    }
}

/// Parses `KIND=COMMAND` (the first `=` separates them).
pub fn parse_exec(s: &str) -> Result<ExecSpec, String> {
    let Some((kind, command)) = s.split_once('=') else {
        return Err("expected KIND=COMMAND, e.g. resize=./resize.sh".into());
    };
    check_kind(kind)?;
    if command.trim().is_empty() {
        return Err(format!("the command for kind {kind:?} is empty"));
    }
    Ok(ExecSpec {
        kind: kind.to_owned(),
        command: command.to_owned(),
    })
}

/// A `--serve KINDS=COMMAND` flag: one long-lived handler process (per worker process)
/// serving these kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeSpec {
    /// The task kinds it serves (at least one, no duplicates).
    pub kinds: Vec<String>,
    /// The command, run with `sh -c`.
    pub command: String,
}

impl fmt::Display for ServeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.kinds.join(","), self.command)
    }
}

/// Parses `KIND[,KIND...]=COMMAND` (the first `=` separates them).
pub fn parse_serve(s: &str) -> Result<ServeSpec, String> {
    let Some((kinds, command)) = s.split_once('=') else {
        return Err("expected KIND[,KIND...]=COMMAND, e.g. train='python -m myapp.tasks'".into());
    };
    let mut list: Vec<String> = Vec::new();
    for kind in kinds.split(',') {
        check_kind(kind)?;
        if list.iter().any(|k| k == kind) {
            return Err(format!("kind {kind:?} is listed twice"));
        }
        list.push(kind.to_owned());
    }
    if command.trim().is_empty() {
        return Err(format!("the command for {kinds:?} is empty"));
    }
    Ok(ServeSpec {
        kinds: list,
        command: command.to_owned(),
    })
}

/// The one rule for a task kind on the command line, for the producer's side (`enqueue
/// --kind`) and the worker's (`--exec KIND=...`) alike, so nothing can be enqueued that no
/// `--exec` could serve: not empty, no whitespace, no control characters.
pub fn check_kind(kind: &str) -> Result<(), String> {
    if kind.is_empty() {
        return Err("the task kind must not be empty (it names the handler that runs the task, e.g. resize)".into());
    }
    if kind.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "task kind {kind:?} must not contain spaces or control characters (it names a handler, e.g. \
             resize or images.resize)"
        ));
    }
    Ok(())
}

/// Parses a task kind given to `enqueue` (see [`check_kind`]).
pub fn parse_kind(s: &str) -> Result<String, String> {
    check_kind(s)?;
    Ok(s.to_owned())
}

/// Parses `fast`, `replicated:N[:TIMEOUTms]` or `fsync[:TIMEOUTms]`.
pub fn parse_durability(s: &str) -> Result<Durability, String> {
    s.parse::<Durability>().map_err(|e| match e {
        rivulet::Error::InvalidConfig { reason, .. } => reason,
        other => other.to_string(),
    })
}

/// Parses a duration like `30s`, `1m 30s`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.starts_with('-') && s[1..].starts_with(|c: char| c.is_ascii_digit()) {
        return Err("a duration cannot be negative (durations look like 500ms, 30s, 5m, 1h)".into());
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (durations look like 500ms, 30s, 5m, 1h)"))
}

/// Checks that `url` (from `--redis-url` or `REDIS_URL`) parses as a Redis URL: one that does
/// not is a bad flag (exit 2), not an unreachable Redis. The message never shows a password.
///
/// The TLS flags must fit it too (files readable, a certificate with its key, TLS flags only
/// with `rediss://` or `rediss+cluster://`).
pub fn check_redis_url(url: &str, tls: &TlsOptions) -> Result<(), UsageError> {
    rivulet::RedisTarget::with_tls(url, tls).map(drop).map_err(|e| match e {
        rivulet::Error::InvalidUrl { reason, .. } => UsageError::new(format!(
            "--redis-url (or REDIS_URL) {:?} is not a valid Redis URL ({reason}); URLs look like {}",
            redact_url(url),
            rivulet::URL_SHAPES
        )),
        other => UsageError::new(format!(
            "{other} (--redis-url {:?} with --tls-ca-file, --tls-cert-file, --tls-key-file, --tls-insecure)",
            redact_url(url)
        )),
    })
}

/// A duration above zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be above zero".into());
    }
    Ok(d)
}

/// A lease: at least 100 ms (the engine's minimum).
pub fn parse_lease(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err("must be at least 100ms".into());
    }
    Ok(d)
}

/// Parses `strict` or `weighted:W1,W2,...` (weights highest priority first).
pub fn parse_priority_mode(s: &str) -> Result<PriorityMode, String> {
    let s = s.trim();
    if s == "strict" {
        return Ok(PriorityMode::Strict);
    }
    let Some(list) = s.strip_prefix("weighted:") else {
        return Err("expected `strict` or `weighted:W1,W2,...` (e.g. weighted:6,3,1)".into());
    };
    let weights = list
        .split(',')
        .map(|w| {
            w.trim()
                .parse::<u32>()
                .map_err(|_| format!("weight {w:?} is not a whole number"))
        })
        .collect::<Result<Vec<u32>, String>>()?;
    if weights.iter().all(|&w| w == 0) {
        return Err("at least one weight must be positive".into());
    }
    Ok(PriorityMode::Weighted(weights))
}

/// The flag form of a priority mode (inverse of [`parse_priority_mode`]).
pub fn format_priority_mode(mode: &PriorityMode) -> String {
    match mode {
        PriorityMode::Strict => "strict".into(),
        PriorityMode::Weighted(w) => {
            let list: Vec<String> = w.iter().map(u32::to_string).collect();
            format!("weighted:{}", list.join(","))
        }
    }
}

/// Parses a byte size: a number with an optional unit. `K`, `M`, `G`, `T` and `KiB`, `MiB`,
/// `GiB`, `TiB` are powers of 1024; `KB`, `MB`, `GB`, `TB` powers of 1000; `B` or none are bytes.
/// With a unit the number may have a decimal fraction (`1.5GiB`); the result is rounded down
/// to whole bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let not_a_size = || format!("{s:?} is not a size (e.g. 512MiB, 1.5GiB, 2G, 300000000)");
    if s.starts_with('-') {
        return Err(format!("{s:?}: a size cannot be negative"));
    }
    let (whole, fraction) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(not_a_size());
    }
    // Up to 9 decimals keep the arithmetic below exact in u128.
    if fraction.len() > 9 {
        return Err(format!("{s:?}: at most 9 decimals"));
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| not_a_size())?
    };
    let digits: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| not_a_size())?
    };
    let unit = unit.trim().to_ascii_lowercase();
    if !fraction.is_empty() && matches!(unit.as_str(), "" | "b") {
        return Err(format!(
            "{s:?}: a byte count is a whole number (fractions need a unit, e.g. 1.5GiB)"
        ));
    }
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use K, M, G, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    let scale = 10u128.pow(fraction.len() as u32);
    let bytes = whole
        .checked_mul(u128::from(mult))
        .and_then(|w| w.checked_add(digits * u128::from(mult) / scale))
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if bytes == 0 {
        return Err("must be above zero".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_specs_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_exec("resize=./r.sh --w=3").unwrap(),
            ExecSpec {
                kind: "resize".into(),
                command: "./r.sh --w=3".into()
            }
        );
        assert!(parse_exec("nocommand").is_err());
        assert!(parse_exec("=cmd").is_err());
        assert!(parse_exec("a b=cmd").is_err());
        assert!(parse_exec("k=  ").is_err());
    }

    #[test]
    fn serve_specs_name_kinds_and_a_command() {
        let s = parse_serve("train,eval=python -m app --x=1").unwrap();
        assert_eq!(s.kinds, ["train", "eval"]);
        assert_eq!(s.command, "python -m app --x=1");
        assert_eq!(parse_serve(&s.to_string()).unwrap(), s);
        for bad in ["train", "=cmd", "a,=cmd", "a,a=cmd", "a b=cmd", "k= "] {
            assert!(parse_serve(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn priority_modes_parse_and_print_back() {
        assert_eq!(parse_priority_mode("strict").unwrap(), PriorityMode::Strict);
        let w = parse_priority_mode("weighted:6,3,1").unwrap();
        assert_eq!(w, PriorityMode::Weighted(vec![6, 3, 1]));
        assert_eq!(format_priority_mode(&w), "weighted:6,3,1");
        for bad in ["", "fair", "weighted:", "weighted:0,0", "weighted:a,1", "weighted:-1"] {
            assert!(parse_priority_mode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_size("300").unwrap(), 300);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("10 KiB").unwrap(), 10 << 10);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("0.5 MiB").unwrap(), 1 << 19);
        assert_eq!(parse_size(".5k").unwrap(), 512);
        assert_eq!(parse_size("2.5GB").unwrap(), 2_500_000_000);
        assert_eq!(parse_size("1.0000001KiB").unwrap(), 1024);
        for bad in [
            "",
            "0",
            "0.0001B",
            "MiB",
            ".",
            "1..5G",
            "1.2.3G",
            "1.5",
            "1.5B",
            "12XB",
            "99999999999999T",
            "1.0000000001G",
            "-1G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert!(parse_size("1.5").unwrap_err().contains("whole number"));
        // What the supervisor's messages print reads back.
        use rivulet_fleet::memory::format_size;
        assert_eq!(format_size(100), "100 B");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(parse_size(&format_size(3 << 29).replace(' ', "")).unwrap(), 3 << 29);
    }

    #[test]
    fn kinds_follow_one_rule_for_enqueue_and_exec() {
        assert_eq!(parse_kind("resize").unwrap(), "resize");
        assert_eq!(parse_kind("images/resize.v2").unwrap(), "images/resize.v2");
        assert!(parse_kind("").unwrap_err().contains("must not be empty"));
        for bad in [" ", "\t\n", "weird kind/with spaces", "a\u{7}b"] {
            let enqueue = parse_kind(bad).unwrap_err();
            let exec = parse_exec(&format!("{bad}=true")).unwrap_err();
            assert_eq!(enqueue, exec, "{bad:?}");
            assert!(enqueue.contains("spaces or control characters"), "{bad:?}: {enqueue}");
        }
    }

    #[test]
    fn redis_urls_that_do_not_parse_are_usage_errors_without_the_password() {
        assert!(check_redis_url("redis://127.0.0.1:6379", &TlsOptions::default()).is_ok());
        let e = check_redis_url("notaurl", &TlsOptions::default()).unwrap_err();
        assert!(e.0.contains("--redis-url") && e.0.contains("\"notaurl\""), "{e}");
        let e = check_redis_url("redis://u:secret@h:notaport", &TlsOptions::default()).unwrap_err();
        assert!(!e.0.contains("secret"), "{e}");
    }

    #[test]
    fn durations_reject_zero_and_short_leases() {
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_lease("99ms").is_err());
        assert!(parse_lease("100ms").is_ok());
        assert!(parse_duration("soon").unwrap_err().contains("500ms"));
    }
}
