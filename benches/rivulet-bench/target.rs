//! The Redis under test: a private `redis-server` started for the run (the default) or one
//! given with `--redis-url` (loopback only), plus the numbers read from it: `INFO cpu` and
//! `INFO commandstats` snapshots, and the per-task usage computed from their deltas.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use rivulet::Queue;
use rivulet::testing::RedisServer;
use serde::Serialize;

/// A connection config for the harness's own connections: a response timeout well above any
/// reply a loaded 2-core machine can delay (redis-rs would otherwise give up after 500 ms).
pub fn conn_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_secs(30)))
        .set_connection_timeout(Some(Duration::from_secs(5)))
}

/// The Redis the benchmark runs against.
pub struct Target {
    /// Kept alive for the run (a master, and its replicas for `replicated:N`); killed on drop.
    _servers: Vec<RedisServer>,
    /// What enqueues and settles wait for in every scenario.
    pub durability: rivulet::Durability,
    pub url: String,
    pub client: redis::Client,
    pub conn: MultiplexedConnection,
    pub version: String,
    /// Whether the harness started this server itself (so it may change its configuration).
    pub private: bool,
}

impl Target {
    /// Starts a private server, or connects to `url` after checking it is a loopback address.
    /// A private server gets a replica when `durability` waits for one (`replicated:1`; more
    /// replicas are refused: start them yourself and pass `--redis-url`).
    pub async fn open(url: Option<&str>, durability: rivulet::Durability) -> Result<Self> {
        let (servers, url) = match url {
            Some(u) => {
                check_loopback(u)?;
                (Vec::new(), u.to_owned())
            }
            None => match durability {
                rivulet::Durability::Replicated { replicas: 1, .. } => {
                    let pair = rivulet::testing::replica::ReplicaPair::start();
                    let url = pair.master.url();
                    (vec![pair.master, pair.replica], url)
                }
                rivulet::Durability::Replicated { replicas, .. } => {
                    bail!(
                        "--durability {durability}: the private server gets one replica; for {replicas}, pass --redis-url"
                    )
                }
                _ => {
                    let server = RedisServer::start();
                    let url = server.url();
                    (vec![server], url)
                }
            },
        };
        let client = redis::Client::open(url.as_str()).with_context(|| format!("bad redis url {url}"))?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&conn_config())
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        let server_info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await?;
        let version = field(&server_info, "redis_version").unwrap_or("unknown").to_owned();
        Ok(Target {
            private: !servers.is_empty(),
            _servers: servers,
            durability,
            url,
            client,
            conn,
            version,
        })
    }

    /// The CPU Redis has used and the calls per command so far.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let mut conn = self.conn.clone();
        let text: String = redis::cmd("INFO")
            .arg("cpu")
            .arg("commandstats")
            .query_async(&mut conn)
            .await?;
        let cpu = |name| field(&text, name).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let mut calls = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("cmdstat_") else {
                continue;
            };
            let Some((name, stats)) = rest.split_once(':') else {
                continue;
            };
            let n = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            calls.insert(name.to_owned(), n);
        }
        Ok(Snapshot {
            cpu_s: cpu("used_cpu_sys") + cpu("used_cpu_user"),
            calls,
        })
    }

    /// Deletes a fleet-wide limit's state, so each limited drain starts with a full bucket.
    pub async fn drop_limit(&self, name: &str) -> Result<()> {
        let k = rivulet::keys::LimitKeys::new(name);
        let mut conn = self.conn.clone();
        redis::pipe()
            .del(&[&k.state, &k.reserved, &k.running, &k.waiting])
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Deletes every key of a queue and its entry in the queue registry.
    pub async fn drop_queue(&self, queue: &Queue) -> Result<()> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for shard in queue.all_shards() {
            let k = &shard.keys;
            pipe.del(&[
                &k.stream,
                &k.scheduled,
                &k.retry,
                &k.dlq,
                &k.stats,
                &k.events,
                &k.cancels,
            ])
            .ignore();
        }
        pipe.hdel(rivulet::keys::QUEUES_KEY, queue.name().as_str()).ignore();
        pipe.query_async::<()>(&mut conn).await?;
        // Task records (kept for the retention) would pile up over a run's drains. The harness
        // may scan; the engine never does.
        for shard in queue.all_shards() {
            let pattern = shard.keys.task("*");
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(10_000)
                    .query_async(&mut conn)
                    .await?;
                if !keys.is_empty() {
                    redis::cmd("UNLINK").arg(&keys).query_async::<()>(&mut conn).await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }

    /// Mean `MEMORY USAGE` of up to `sample` task records of a queue, bytes.
    pub async fn record_bytes(&self, queue: &Queue, sample: usize) -> Result<f64> {
        let mut conn = self.conn.clone();
        let mut keys: Vec<String> = Vec::new();
        for shard in queue.all_shards() {
            let mut cursor = 0u64;
            loop {
                let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(shard.keys.task("*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await?;
                keys.extend(found);
                if next == 0 || keys.len() >= sample {
                    break;
                }
                cursor = next;
            }
        }
        keys.truncate(sample);
        if keys.is_empty() {
            return Ok(0.0);
        }
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("MEMORY").arg("USAGE").arg(k).arg("SAMPLES").arg(0);
        }
        let sizes: Vec<Option<u64>> = pipe.query_async(&mut conn).await?;
        let sizes: Vec<u64> = sizes.into_iter().flatten().collect();
        Ok(sizes.iter().sum::<u64>() as f64 / sizes.len().max(1) as f64)
    }

    /// Tasks settled as done in a queue so far (the `done` counters of its shards).
    pub async fn done(&self, queue: &Queue) -> Result<u64> {
        self.counter(queue, "done").await
    }

    /// A stats counter of a queue, summed over its shards.
    pub async fn counter(&self, queue: &Queue, name: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for shard in queue.all_shards() {
            pipe.hget(&shard.keys.stats, name);
        }
        let counts: Vec<Option<u64>> = pipe.query_async(&mut conn).await?;
        Ok(counts.into_iter().flatten().sum())
    }

    /// Live workers in the registry.
    pub async fn live_workers(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("ZCARD")
            .arg(rivulet::keys::WORKERS_KEY)
            .query_async(&mut conn)
            .await?)
    }

    /// Sets `notify-keyspace-events` and returns the previous value.
    pub async fn set_notify(&self, flags: &str) -> Result<String> {
        let mut conn = self.conn.clone();
        let old: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query_async(&mut conn)
            .await?;
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg(flags)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(old.get(1).cloned().unwrap_or_default())
    }
}

/// Refuses anything but a loopback address: the benchmark sends heavy traffic.
fn check_loopback(url: &str) -> Result<()> {
    let info = redis::Client::open(url)
        .with_context(|| format!("bad redis url {url}"))?
        .get_connection_info()
        .clone();
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, _) => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let ok = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !ok {
                bail!("--redis-url must point at a loopback address (127.0.0.0/8, ::1 or localhost), not {host}");
            }
            Ok(())
        }
        redis::ConnectionAddr::Unix(_) => Ok(()),
        _ => bail!("--redis-url must be a plain redis:// or unix socket URL on this machine"),
    }
}

fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
}

/// Redis's CPU time and command counters at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    cpu_s: f64,
    calls: BTreeMap<String, u64>,
}

/// What kind of traffic a measured window held, which decides which commands came from
/// inside Lua scripts (`INFO commandstats` counts those too and cannot tell them apart).
#[derive(Debug, Clone, Copy)]
pub enum Window {
    /// Producers only: no script runs, every command is top-level.
    Produce,
    /// Workers only: `HINCRBY` and `XADD` come from scripts (settle, promote).
    Consume,
    /// Producers and workers: `HINCRBY` is top-level once per enqueue pipeline (given), the
    /// rest comes from settle scripts.
    Mixed { pipelines: u64 },
}

/// Commands the harness itself sends (snapshots, progress polls, the done probe, setup),
/// left out of the per-task counts.
const HARNESS: &[&str] = &[
    "info",
    "hget",
    "config|get",
    "config|set",
    "subscribe",
    "zcard",
    "del",
    "hdel",
    "client|setinfo",
    "hello",
    "ping",
];

/// Commands the engine (and the bare loop) issues only from inside its Lua scripts in the
/// windows measured here.
const SCRIPT_ONLY: &[&str] = &[
    "xpending",
    "xack",
    "xdel",
    "xrange",
    "xclaim",
    "xautoclaim",
    "zrangebyscore",
    "zrange",
    "zrem",
];

/// Redis's work per task over a measured window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    /// Redis CPU (user + system, all threads) per task, microseconds.
    pub cpu_us_per_task: f64,
    /// Every command Redis executed per task, including those run inside Lua scripts.
    pub commands_per_task: f64,
    /// Commands sent over the network per task (scripts count once, as EVALSHA).
    pub top_level_per_task: f64,
    /// Calls per task of each command (harness commands left out).
    pub calls_per_task: BTreeMap<String, f64>,
}

impl Snapshot {
    /// The usage per task between `self` (before) and `after`. The bare loop issues XACK and
    /// XDEL itself, so `bare` makes every command top-level.
    pub fn usage(&self, after: &Snapshot, tasks: u64, window: Window, bare: bool) -> Usage {
        let n = tasks.max(1) as f64;
        let mut total = 0u64;
        let mut inner = 0u64;
        let mut per = BTreeMap::new();
        for (name, &calls) in &after.calls {
            if HARNESS.contains(&name.as_str()) {
                continue;
            }
            let d = calls.saturating_sub(self.calls.get(name).copied().unwrap_or(0));
            if d == 0 {
                continue;
            }
            total += d;
            per.insert(name.clone(), d as f64 / n);
            if bare {
                continue;
            }
            let scripted = match (window, name.as_str()) {
                (_, c) if SCRIPT_ONLY.contains(&c) => d,
                (Window::Produce, _) => 0,
                (Window::Consume, "hincrby" | "xadd") => d,
                (Window::Mixed { pipelines }, "hincrby") => d.saturating_sub(pipelines),
                _ => 0,
            };
            inner += scripted;
        }
        Usage {
            cpu_us_per_task: (after.cpu_s - self.cpu_s).max(0.0) * 1e6 / n,
            commands_per_task: total as f64 / n,
            top_level_per_task: (total - inner) as f64 / n,
            calls_per_task: per,
        }
    }
}

impl Usage {
    /// The usage of two windows over the same tasks (e.g. enqueue, then drain).
    pub fn plus(&self, other: &Usage) -> Usage {
        let mut per = self.calls_per_task.clone();
        for (k, v) in &other.calls_per_task {
            *per.entry(k.clone()).or_default() += v;
        }
        Usage {
            cpu_us_per_task: self.cpu_us_per_task + other.cpu_us_per_task,
            commands_per_task: self.commands_per_task + other.commands_per_task,
            top_level_per_task: self.top_level_per_task + other.top_level_per_task,
            calls_per_task: per,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(cpu_s: f64, calls: &[(&str, u64)]) -> Snapshot {
        Snapshot {
            cpu_s,
            calls: calls.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn usage_splits_script_calls_from_top_level_ones() {
        let before = snap(1.0, &[("xreadgroup", 10), ("info", 3)]);
        let after = snap(
            1.5,
            &[
                ("xreadgroup", 20),
                ("evalsha", 10),
                ("xack", 10),
                ("xdel", 10),
                ("xpending", 10),
                ("hincrby", 10),
                ("info", 9),
            ],
        );
        let u = before.usage(&after, 1000, Window::Consume, false);
        assert!((u.cpu_us_per_task - 500.0).abs() < 1e-6, "{u:?}");
        assert!((u.commands_per_task - 0.06).abs() < 1e-9, "{u:?}");
        assert!((u.top_level_per_task - 0.02).abs() < 1e-9, "{u:?}");
        assert!(!u.calls_per_task.contains_key("info"));
        let mixed = before.usage(&after, 1000, Window::Mixed { pipelines: 4 }, false);
        assert!((mixed.top_level_per_task - 0.024).abs() < 1e-9, "{mixed:?}");
        let bare = before.usage(&after, 1000, Window::Consume, true);
        assert_eq!(bare.top_level_per_task, bare.commands_per_task);
    }

    #[test]
    fn only_loopback_urls_are_accepted() {
        assert!(check_loopback("redis://127.0.0.1:6379").is_ok());
        assert!(check_loopback("redis://127.3.2.1:6379/2").is_ok());
        assert!(check_loopback("redis://localhost:6379").is_ok());
        assert!(check_loopback("redis://[::1]:6379").is_ok());
        assert!(check_loopback("redis://10.0.0.1:6379").is_err());
        assert!(check_loopback("redis://example.com:6379").is_err());
    }
}
