//! Fleet-wide rate and concurrency limits: their names, specs and what they look like now.
//!
//! A limit is named; a task counts against the limit named by its `limit_key` field, or by its
//! kind when it has none. Workers are configured with the limits they enforce
//! ([`WorkerConfig::limits`](crate::WorkerConfig::limits)); the state lives in Redis, in a
//! home slot of the limit's own (`rivulet:{limit:<name>}`), so every worker on every box
//! shares one bucket and one count of running tasks.
//!
//! - A **rate limit** (`10/s,burst=20`, `600/min`) is a token bucket run as GCRA: one timestamp
//!   (the bucket's "theoretical arrival time") per limit. A task over the rate reserves the
//!   next free slot of the schedule and waits for it in its shard's retry set, without using
//!   an attempt; when it comes back it holds its reservation and starts, so a waiting task
//!   costs one extra pass through Redis whatever the backlog.
//! - A **concurrency limit** (`train=2`) is a set of holders, each under a lease renewed with
//!   the task's own lease: a dead worker's slot comes back when its lease runs out.
//!
//! The specs parse here (pure); the scripts are `broker/scripts/limit_*.lua`; the worker's
//! side is `worker/limiter.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};

/// Longest limit name.
pub const MAX_LIMIT_NAME: usize = 128;
/// Most tasks per second a rate limit may allow.
pub const MAX_RATE_PER_SECOND: f64 = 1_000_000.0;
/// Largest burst and largest concurrency cap.
pub const MAX_LIMIT_COUNT: u32 = 1_000_000;

fn invalid(spec: &str, reason: impl fmt::Display) -> Error {
    Error::InvalidLimit {
        spec: spec.to_owned(),
        reason: reason.to_string(),
    }
}

/// Checks a limit name: 1 to 128 of `A-Z a-z 0-9 . _ - : /`, so it can never break the
/// limit's hash tag or a flag's `NAME=...` syntax.
pub fn check_limit_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(invalid(name, "the name is empty"));
    }
    if name.len() > MAX_LIMIT_NAME {
        return Err(invalid(
            name,
            format!("the name is longer than {MAX_LIMIT_NAME} characters"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')))
    {
        return Err(invalid(
            name,
            format!("the name has {c:?}; it may only contain A-Z, a-z, 0-9, '.', '_', '-', ':' and '/'"),
        ));
    }
    Ok(())
}

/// A rate: `count` tasks per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rate {
    /// Tasks per `per`.
    pub count: u32,
    /// The interval, e.g. one second.
    #[serde(serialize_with = "as_ms")]
    pub per: Duration,
    /// Tasks the bucket holds: how many may start at once after a quiet spell (at least 1).
    pub burst: u32,
}

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl Rate {
    /// `count` per `per` with the default burst: a second's worth of tasks, at least 1.
    pub fn new(count: u32, per: Duration) -> Self {
        let per_second = f64::from(count) / per.as_secs_f64();
        Rate {
            count,
            per,
            burst: (per_second.ceil() as u32).max(1),
        }
    }

    /// Tasks per second.
    pub fn per_second(&self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }

    /// The time between two tasks at the steady rate, ms (the GCRA emission interval).
    pub fn interval_ms(&self) -> f64 {
        self.per.as_secs_f64() * 1000.0 / f64::from(self.count)
    }

    fn check(&self, spec: &str) -> Result<()> {
        if self.count == 0 {
            return Err(invalid(
                spec,
                "a rate of 0 lets nothing run; remove the limit or give a positive count",
            ));
        }
        if self.per.is_zero() {
            return Err(invalid(spec, "the interval is zero"));
        }
        if self.per_second() > MAX_RATE_PER_SECOND {
            return Err(invalid(spec, format!("more than {MAX_RATE_PER_SECOND} per second")));
        }
        if self.burst == 0 || self.burst > MAX_LIMIT_COUNT {
            return Err(invalid(spec, format!("the burst must be 1..={MAX_LIMIT_COUNT}")));
        }
        Ok(())
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s".to_owned(),
            60 => "min".to_owned(),
            3600 => "h".to_owned(),
            _ => format!("{}ms", self.per.as_millis()),
        };
        write!(f, "{}/{unit},burst={}", self.count, self.burst)
    }
}

impl FromStr for Rate {
    type Err = Error;

    /// `COUNT/UNIT[,burst=N]`, UNIT one of `s`, `sec`, `m`, `min`, `h`, `hour`:
    /// `10/s,burst=20`, `600/min`.
    fn from_str(spec: &str) -> Result<Self> {
        let mut parts = spec.split(',');
        let rate = parts.next().unwrap_or_default().trim();
        let Some((count, unit)) = rate.split_once('/') else {
            return Err(invalid(spec, "expected COUNT/UNIT, e.g. 10/s or 600/min"));
        };
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| invalid(spec, format!("{:?} is not a whole number of tasks", count.trim())))?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => return Err(invalid(spec, format!("unknown unit {other:?} (expected s, min or h)"))),
        };
        if count == 0 {
            return Err(invalid(
                spec,
                "a rate of 0 lets nothing run; remove the limit or give a positive count",
            ));
        }
        let mut out = Rate::new(count, per);
        for part in parts {
            let Some(("burst", n)) = part.split_once('=').map(|(k, v)| (k.trim(), v)) else {
                return Err(invalid(
                    spec,
                    format!("unknown option {:?} (expected burst=N)", part.trim()),
                ));
            };
            out.burst = n
                .trim()
                .parse()
                .map_err(|_| invalid(spec, format!("burst {:?} is not a whole number", n.trim())))?;
            if out.burst == 0 {
                return Err(invalid(spec, "a burst of 0 lets nothing run; it must be at least 1"));
            }
        }
        out.check(spec)?;
        Ok(out)
    }
}

/// What one named limit allows; at least one of the two is set.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Limit {
    /// Most task starts per interval, over the whole fleet.
    pub rate: Option<Rate>,
    /// Most tasks running at once, over the whole fleet.
    pub max_running: Option<u32>,
}

/// The limits a worker enforces, by name.
pub type Limits = BTreeMap<String, Limit>;

/// Checks every limit of a worker's configuration (names, rates, caps).
pub fn check_limits(limits: &Limits) -> Result<()> {
    for (name, limit) in limits {
        check_limit_name(name)?;
        if let Some(rate) = &limit.rate {
            rate.check(&format!("{name}={rate}"))?;
        }
        match limit.max_running {
            Some(0) => {
                return Err(invalid(
                    &format!("{name}=0"),
                    "a limit of 0 lets nothing run; it must be at least 1",
                ));
            }
            Some(n) if n > MAX_LIMIT_COUNT => {
                return Err(invalid(
                    &format!("{name}={n}"),
                    format!("the cap must be 1..={MAX_LIMIT_COUNT}"),
                ));
            }
            None if limit.rate.is_none() => return Err(invalid(name, "neither a rate nor a cap")),
            _ => {}
        }
    }
    Ok(())
}

/// Splits `NAME=VALUE` (as the CLI flags take them) and checks the name.
pub fn split_named(spec: &str) -> Result<(&str, &str)> {
    let Some((name, value)) = spec.split_once('=') else {
        return Err(invalid(spec, "expected NAME=VALUE, e.g. exchange.call=10/s"));
    };
    let name = name.trim();
    check_limit_name(name).map_err(|e| match e {
        Error::InvalidLimit { reason, .. } => invalid(spec, reason),
        other => other,
    })?;
    Ok((name, value.trim()))
}

/// Parses `NAME=RATE` (`exchange.call=10/s,burst=20`).
pub fn parse_rate_limit(spec: &str) -> Result<(String, Rate)> {
    let (name, value) = split_named(spec)?;
    let rate = value.parse::<Rate>().map_err(|e| match e {
        Error::InvalidLimit { reason, .. } => invalid(spec, reason),
        other => other,
    })?;
    Ok((name.to_owned(), rate))
}

/// Parses `NAME=N` (`train=2`), N at least 1.
pub fn parse_max_running(spec: &str) -> Result<(String, u32)> {
    let (name, value) = split_named(spec)?;
    let n: u32 = value
        .parse()
        .map_err(|_| invalid(spec, format!("{value:?} is not a whole number of tasks")))?;
    if n == 0 {
        return Err(invalid(spec, "a limit of 0 lets nothing run; it must be at least 1"));
    }
    if n > MAX_LIMIT_COUNT {
        return Err(invalid(spec, format!("the cap must be 1..={MAX_LIMIT_COUNT}")));
    }
    Ok((name.to_owned(), n))
}

/// The limits of `--rate-limit NAME=RATE` and `--max-running NAME=N` specs, by name (a name
/// may have both); a name given twice in one list is refused.
pub fn from_specs<R: AsRef<str>, C: AsRef<str>>(rate_limits: &[R], max_running: &[C]) -> Result<Limits> {
    let mut limits = Limits::new();
    for spec in rate_limits {
        let (name, rate) = parse_rate_limit(spec.as_ref())?;
        let slot = &mut limits.entry(name).or_default().rate;
        if slot.replace(rate).is_some() {
            return Err(invalid(spec.as_ref(), "this limit's rate is given twice"));
        }
    }
    for spec in max_running {
        let (name, n) = parse_max_running(spec.as_ref())?;
        let slot = &mut limits.entry(name).or_default().max_running;
        if slot.replace(n).is_some() {
            return Err(invalid(spec.as_ref(), "this limit's cap is given twice"));
        }
    }
    Ok(limits)
}

/// What a limit looks like now, as `worker-cli limits` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitStatus {
    /// The limit's name.
    pub name: String,
    /// The rate, as the last worker to start or to use the limit was configured (workers
    /// publish their settings at start).
    pub rate: Option<Rate>,
    /// The cap, as the last worker to start or to use the limit was configured.
    pub max_running: Option<u32>,
    /// Starts in the last whole second.
    pub current_rate: u64,
    /// Tasks holding a running slot now (leases not run out).
    pub running: u64,
    /// Tasks waiting for their reserved start time (rate limit).
    pub waiting_for_rate: u64,
    /// Tasks waiting for a running slot (concurrency limit).
    pub waiting_for_slot: u64,
    /// Starts granted since the limit was first used.
    pub granted: u64,
    /// Times a task was sent to wait (rate or cap) since the limit was first used.
    pub waited: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(e: Error) -> String {
        match e {
            Error::InvalidLimit { spec, reason } => format!("{spec}: {reason}"),
            other => panic!("not a limit error: {other}"),
        }
    }

    #[test]
    fn rates_parse_with_units_and_burst() {
        let r: Rate = "10/s,burst=20".parse().unwrap();
        assert_eq!((r.count, r.per, r.burst), (10, Duration::from_secs(1), 20));
        assert_eq!(r.interval_ms(), 100.0);
        let r: Rate = "600/min".parse().unwrap();
        assert_eq!((r.count, r.per, r.burst), (600, Duration::from_secs(60), 10));
        assert_eq!(r.per_second(), 10.0);
        let r: Rate = "1/h".parse().unwrap();
        assert_eq!(r.burst, 1);
        assert_eq!(r.to_string(), "1/h,burst=1");
        assert_eq!(" 50 / s , burst = 5 ".parse::<Rate>().unwrap().burst, 5);
    }

    #[test]
    fn bad_rates_name_the_text_and_why() {
        for (spec, why) in [
            ("0/s", "a rate of 0"),
            ("10", "expected COUNT/UNIT"),
            ("ten/s", "\"ten\" is not a whole number"),
            ("10/week", "unknown unit \"week\""),
            ("10/s,burst=0", "a burst of 0"),
            ("10/s,burst=x", "burst \"x\""),
            ("10/s,bust=3", "unknown option \"bust=3\""),
            ("2000000/s", "more than"),
        ] {
            let e = reason(spec.parse::<Rate>().unwrap_err());
            assert!(e.starts_with(spec) && e.contains(why), "{spec}: {e}");
        }
    }

    #[test]
    fn named_specs_parse_and_refuse_zero_and_bad_names() {
        assert_eq!(
            parse_rate_limit("exchange.call=10/s,burst=20").unwrap().0,
            "exchange.call"
        );
        assert_eq!(parse_max_running("train=2").unwrap(), ("train".to_owned(), 2));
        for (spec, why) in [
            ("train=0", "a limit of 0"),
            ("train=-1", "not a whole number"),
            ("train", "expected NAME=VALUE"),
            ("=2", "the name is empty"),
            ("tr{ain}=2", "'{'"),
            ("a b=2", "' '"),
        ] {
            let e = reason(parse_max_running(spec).unwrap_err());
            assert!(e.starts_with(spec) && e.contains(why), "{spec}: {e}");
        }
        let e = reason(parse_rate_limit("x=0/min").unwrap_err());
        assert!(e.starts_with("x=0/min") && e.contains("a rate of 0"), "{e}");
    }

    #[test]
    fn specs_combine_by_name_and_a_name_twice_is_refused() {
        let l = from_specs(&["x=10/s", "y=1/min"], &["x=2"]).unwrap();
        assert_eq!((l["x"].rate.map(|r| r.count), l["x"].max_running), (Some(10), Some(2)));
        assert_eq!(l["y"].max_running, None);
        assert!(reason(from_specs(&["x=1/s", "x=2/s"], &[] as &[&str]).unwrap_err()).contains("twice"));
        assert!(reason(from_specs(&[] as &[&str], &["t=1", "t=2"]).unwrap_err()).contains("twice"));
    }

    #[test]
    fn a_worker_config_with_an_empty_or_zero_limit_is_refused() {
        let mut limits = Limits::new();
        limits.insert("a".into(), Limit::default());
        assert!(reason(check_limits(&limits).unwrap_err()).contains("neither"));
        limits.insert(
            "a".into(),
            Limit {
                max_running: Some(0),
                rate: None,
            },
        );
        assert!(reason(check_limits(&limits).unwrap_err()).contains("a limit of 0"));
        limits.insert(
            "a".into(),
            Limit {
                max_running: Some(2),
                rate: Some(Rate::new(5, Duration::from_secs(1))),
            },
        );
        check_limits(&limits).unwrap();
    }
}
