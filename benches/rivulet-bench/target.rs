//! The Redis under test: a private `redis-server` started for the run (the default), a private
//! Redis Cluster (`--cluster`: 3 masters, 3 replicas) or one given with `--redis-url` (loopback
//! only; `redis+cluster://` too), plus the numbers read from it: `INFO cpu` and
//! `INFO commandstats` snapshots (summed over every master of a cluster), and the per-task
//! usage computed from their deltas.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use rivulet::testing::RedisServer;
use rivulet::testing::cluster::RedisCluster;
use rivulet::testing::tls::TlsRedis;
use rivulet::{Queue, RedisConnection, RedisTarget, TlsOptions};
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
    _cluster: Option<RedisCluster>,
    _tls_server: Option<TlsRedis>,
    /// What enqueues and settles wait for in every scenario.
    pub durability: rivulet::Durability,
    /// TLS options of `rediss://` targets (the private TLS server's CA).
    pub tls: TlsOptions,
    pub url: String,
    pub client: RedisTarget,
    pub conn: RedisConnection,
    /// A plain connection to each node whose CPU and commands count: the one node, or every
    /// master of a cluster.
    nodes: Vec<MultiplexedConnection>,
    pub node_urls: Vec<String>,
    /// Whether the target is a Redis Cluster (only drain and enqueue run there).
    pub cluster: bool,
    pub version: String,
    /// Whether the harness started this server itself (so it may change its configuration).
    pub private: bool,
    /// Commands the harness itself has sent that can fall inside a measured window (its
    /// snapshots, progress polls, registry counts, configuration), by name as
    /// `INFO commandstats` names them: windows leave these out by count, so an engine command
    /// of the same name still counts.
    sent: std::sync::Mutex<BTreeMap<&'static str, u64>>,
}

/// A private Redis the harness starts for a comparison in one run (`--only compare`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// One server, `fast`.
    Single,
    /// A master and one replica, every enqueue and settle `replicated:1`.
    Replicated,
    /// One TLS-only server (`rediss://`, verified against its CA), `fast`.
    Tls,
    /// 3 masters, 3 replicas, `fast`.
    Cluster,
}

impl Setup {
    pub fn label(self) -> &'static str {
        match self {
            Setup::Single => "one node, fast",
            Setup::Replicated => "one node + replica, replicated:1",
            Setup::Tls => "one node over TLS, fast",
            Setup::Cluster => "cluster 3+3, fast",
        }
    }
}

impl Target {
    /// Starts the private Redis `setup` names.
    pub async fn start(setup: Setup) -> Result<Self> {
        match setup {
            Setup::Single => Self::open(None, false, rivulet::Durability::Fast).await,
            Setup::Cluster => Self::open(None, true, rivulet::Durability::Fast).await,
            Setup::Replicated => Self::open(None, false, "replicated:1".parse()?).await,
            Setup::Tls => {
                let server = TlsRedis::start();
                let (url, tls) = (server.url(), server.tls());
                let mut t =
                    Self::connect(url, tls, rivulet::Durability::Fast, (Vec::new(), None, Some(server))).await?;
                t.private = true;
                Ok(t)
            }
        }
    }

    /// Starts a private server (or cluster), or connects to `url` after checking it is a
    /// loopback address. A private server gets a replica when `durability` waits for one
    /// (`replicated:1`; more replicas are refused: start them yourself and pass `--redis-url`).
    pub async fn open(url: Option<&str>, cluster: bool, durability: rivulet::Durability) -> Result<Self> {
        let (servers, private_cluster, url) = match url {
            Some(u) => {
                check_loopback(u)?;
                (Vec::new(), None, u.to_owned())
            }
            None if cluster => {
                let c = RedisCluster::start();
                let url = c.url();
                (Vec::new(), Some(c), url)
            }
            None => match durability {
                rivulet::Durability::Replicated { replicas: 1, .. } => {
                    let pair = rivulet::testing::replica::ReplicaPair::start();
                    let url = pair.master.url();
                    (vec![pair.master, pair.replica], None, url)
                }
                rivulet::Durability::Replicated { replicas, .. } => {
                    bail!(
                        "--durability {durability}: the private server gets one replica; for {replicas}, pass --redis-url"
                    )
                }
                _ => {
                    let server = RedisServer::start();
                    let url = server.url();
                    (vec![server], None, url)
                }
            },
        };
        let private = !servers.is_empty() || private_cluster.is_some();
        let mut t = Self::connect(url, TlsOptions::default(), durability, (servers, private_cluster, None)).await?;
        t.private = private;
        Ok(t)
    }

    async fn connect(
        url: String,
        tls: TlsOptions,
        durability: rivulet::Durability,
        (servers, private_cluster, tls_server): (Vec<RedisServer>, Option<RedisCluster>, Option<TlsRedis>),
    ) -> Result<Self> {
        let client = RedisTarget::with_tls(&url, &tls).with_context(|| format!("bad redis url {url}"))?;
        let mut conn = client
            .connect()
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        let is_cluster = client.is_cluster();
        let node_urls = if is_cluster {
            // Every master, from the cluster's own view.
            let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut conn).await?;
            nodes
                .lines()
                .filter(|l| {
                    l.split_whitespace()
                        .nth(2)
                        .is_some_and(|f| f.contains("master") && !f.contains("fail"))
                })
                .filter_map(|l| {
                    let scheme = if url.starts_with("rediss") { "rediss" } else { "redis" };
                    l.split_whitespace()
                        .nth(1)?
                        .split('@')
                        .next()
                        .map(|a| format!("{scheme}://{a}"))
                })
                .collect()
        } else {
            vec![url.clone()]
        };
        let mut nodes = Vec::new();
        for u in &node_urls {
            nodes.push(
                rivulet::connection::open(u, &tls)?
                    .get_multiplexed_async_connection_with_config(&conn_config())
                    .await
                    .with_context(|| format!("cannot connect to {u}"))?,
            );
        }
        let server_info: String = redis::cmd("INFO").arg("server").query_async(&mut nodes[0]).await?;
        let version = field(&server_info, "redis_version").unwrap_or("unknown").to_owned();
        Ok(Target {
            private: false,
            _servers: servers,
            _cluster: private_cluster,
            _tls_server: tls_server,
            durability,
            tls,
            url,
            client,
            conn,
            nodes,
            node_urls,
            cluster: is_cluster,
            version,
            sent: std::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// A new plain connection to the (first) node: the bare loop runs on one node only.
    pub async fn node_connection(&self) -> Result<MultiplexedConnection> {
        Ok(rivulet::connection::open(&self.node_urls[0], &self.tls)?
            .get_multiplexed_async_connection_with_config(&conn_config())
            .await?)
    }

    /// Counts `n` calls of `command` sent by the harness.
    fn note(&self, command: &'static str, n: u64) {
        *self
            .sent
            .lock()
            .expect("no code panics while holding this lock")
            .entry(command)
            .or_default() += n;
    }

    /// The CPU Redis has used and the calls per command so far.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let mut cpu_s = 0.0;
        let mut calls = BTreeMap::new();
        for conn in &self.nodes {
            let (c, node_calls) = node_snapshot(&mut conn.clone()).await?;
            cpu_s += c;
            for (name, n) in node_calls {
                *calls.entry(name).or_default() += n;
            }
        }
        // A command shows in `commandstats` after it ran: this snapshot's INFOs show in the
        // next one, which the count taken after them matches.
        self.note("info", self.nodes.len() as u64);
        let harness = self
            .sent
            .lock()
            .expect("no code panics while holding this lock")
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        Ok(Snapshot { cpu_s, calls, harness })
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
        self.drop_queues(std::slice::from_ref(queue)).await
    }

    /// Deletes every key of these queues and their entries in the queue registry.
    pub async fn drop_queues(&self, queues: &[Queue]) -> Result<()> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for queue in queues {
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
                    &k.succeeded,
                    &k.cancelled,
                    &k.waiting,
                ])
                .ignore();
            }
            pipe.hdel(rivulet::keys::QUEUES_KEY, queue.name().as_str()).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        // Task records (kept for the retention) would pile up over a run's drains. The harness
        // may scan; the engine never does. One queue: a pattern per shard; many: one pass over
        // the keyspace for the names' common prefix (a pass per shard would be quadratic).
        let patterns: Vec<String> = match queues {
            [] => Vec::new(),
            [queue] => queue.all_shards().map(|s| s.keys.task("*")).collect(),
            [first, rest @ ..] => {
                let mut prefix = first.name().as_str();
                for q in rest {
                    let name = q.name().as_str();
                    let common = prefix.bytes().zip(name.bytes()).take_while(|(a, b)| a == b).count();
                    prefix = &prefix[..common];
                }
                vec![format!("{}:{{{prefix}*:task:*", rivulet::keys::PREFIX)]
            }
        };
        for pattern in patterns {
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

    /// Memory per retained finished task, bytes: the `MEMORY USAGE` of the shards' `finished`
    /// hashes (where succeeded records live: engine/src/broker/scripts/record.lua) and
    /// `succeeded` indexes (one member per settle call), over the tasks they hold. `sample`
    /// bounds the fields `MEMORY USAGE` looks at per hash (0 = all of them).
    pub async fn record_bytes(&self, queue: &Queue, sample: usize) -> Result<f64> {
        let mut conn = self.conn.clone();
        let (mut bytes, mut records) = (0u64, 0u64);
        for shard in queue.all_shards() {
            let (hash, index, n): (Option<u64>, Option<u64>, u64) = redis::pipe()
                .cmd("MEMORY")
                .arg("USAGE")
                .arg(&shard.keys.finished)
                .arg("SAMPLES")
                .arg(sample)
                .cmd("MEMORY")
                .arg("USAGE")
                .arg(&shard.keys.succeeded)
                .arg("SAMPLES")
                .arg(0)
                .cmd("HLEN")
                .arg(&shard.keys.finished)
                .query_async(&mut conn)
                .await?;
            bytes += hash.unwrap_or(0) + index.unwrap_or(0);
            records += n;
        }
        Ok(bytes as f64 / records.max(1) as f64)
    }

    /// Tasks settled as done in a queue so far (the `done` counters of its shards).
    pub async fn done(&self, queue: &Queue) -> Result<u64> {
        self.counter(queue, "done").await
    }

    /// Tasks settled as done in these queues so far, in one round trip.
    pub async fn done_all(&self, queues: &[Queue]) -> Result<u64> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for queue in queues {
            for shard in queue.all_shards() {
                pipe.hget(&shard.keys.stats, "done");
            }
        }
        let counts: Vec<Option<u64>> = pipe.query_async(&mut conn).await?;
        self.note("hget", counts.len() as u64);
        Ok(counts.into_iter().flatten().sum())
    }

    /// A stats counter of a queue, summed over its shards.
    pub async fn counter(&self, queue: &Queue, name: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for shard in queue.all_shards() {
            pipe.hget(&shard.keys.stats, name);
        }
        let counts: Vec<Option<u64>> = pipe.query_async(&mut conn).await?;
        self.note("hget", counts.len() as u64);
        Ok(counts.into_iter().flatten().sum())
    }

    /// Live workers in the registry.
    pub async fn live_workers(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        self.note("zcard", 1);
        Ok(redis::cmd("ZCARD")
            .arg(rivulet::keys::WORKERS_KEY)
            .query_async(&mut conn)
            .await?)
    }

    /// Sets `notify-keyspace-events` and returns the previous value.
    pub async fn set_notify(&self, flags: &str) -> Result<String> {
        let mut conn = self.conn.clone();
        self.note("config|get", 1);
        self.note("config|set", 1);
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

/// One node's CPU seconds and calls per command so far.
async fn node_snapshot(conn: &mut MultiplexedConnection) -> Result<(f64, BTreeMap<String, u64>)> {
    let text: String = redis::cmd("INFO")
        .arg("cpu")
        .arg("commandstats")
        .query_async(conn)
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
    Ok((cpu("used_cpu_sys") + cpu("used_cpu_user"), calls))
}

/// Refuses anything but a loopback address: the benchmark sends heavy traffic.
fn check_loopback(url: &str) -> Result<()> {
    if let Some(rest) = url.strip_prefix("redis+cluster://") {
        // Every seed must be loopback; the nodes they name are checked the same way by
        // their addresses in CLUSTER NODES being the seeds' own machine.
        let hosts = rest.rsplit('@').next().unwrap_or(rest).split('/').next().unwrap_or("");
        for seed in hosts.split(',') {
            check_loopback(&format!("redis://{seed}"))?;
        }
        return Ok(());
    }
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
    /// The harness's own commands sent so far (see `Target::note`).
    harness: BTreeMap<String, u64>,
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

/// Commands only the harness's worker processes send, never the engine: the done probe's
/// subscription (its `HGET`s are left out by count, see `Usage::discount`).
const HARNESS: &[&str] = &["subscribe"];

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
    /// Redis CPU seconds and calls per command between `self` (before) and `after`, the
    /// harness's own commands left out by count.
    pub fn delta(&self, after: &Snapshot) -> (f64, BTreeMap<String, u64>) {
        let calls = after
            .calls
            .iter()
            .map(|(name, &n)| {
                let own = |s: &Snapshot| s.harness.get(name).copied().unwrap_or(0);
                let n = n
                    .saturating_sub(self.calls.get(name).copied().unwrap_or(0))
                    .saturating_sub(own(after).saturating_sub(own(self)));
                (name.clone(), n)
            })
            .collect();
        ((after.cpu_s - self.cpu_s).max(0.0), calls)
    }

    /// The usage per task between `self` (before) and `after`. The bare loop issues XACK and
    /// XDEL itself, so `bare` makes every command top-level.
    pub fn usage(&self, after: &Snapshot, tasks: u64, window: Window, bare: bool) -> Usage {
        let n = tasks.max(1) as f64;
        let mut total = 0u64;
        let mut inner = 0u64;
        let mut per = BTreeMap::new();
        let (cpu_s, calls) = self.delta(after);
        for (name, d) in calls {
            if HARNESS.contains(&name.as_str()) {
                continue;
            }
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
            cpu_us_per_task: cpu_s * 1e6 / n,
            commands_per_task: total as f64 / n,
            top_level_per_task: (total - inner) as f64 / n,
            calls_per_task: per,
        }
    }
}

impl Usage {
    /// Leaves out `calls` top-level calls of `command` over `tasks` tasks that the harness's
    /// worker processes sent (the done probe's `HGET`s).
    pub fn discount(&mut self, command: &str, calls: u64, tasks: u64) {
        let Some(per) = self.calls_per_task.get_mut(command) else {
            return;
        };
        let d = (calls as f64 / tasks.max(1) as f64).min(*per);
        *per -= d;
        self.commands_per_task -= d;
        self.top_level_per_task -= d;
    }

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

    fn snap(cpu_s: f64, calls: &[(&str, u64)], harness: &[(&str, u64)]) -> Snapshot {
        let map = |v: &[(&str, u64)]| v.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        Snapshot {
            cpu_s,
            calls: map(calls),
            harness: map(harness),
        }
    }

    #[test]
    fn usage_splits_script_calls_from_top_level_ones() {
        let before = snap(1.0, &[("xreadgroup", 10), ("info", 3)], &[("info", 3)]);
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
            &[("info", 9)],
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

    /// The harness's own calls are left out by count, not by name: an engine command that
    /// shares a name with one of the harness's (an `HGET`, an `HDEL` in a script) still counts.
    #[test]
    fn harness_calls_are_left_out_by_count() {
        let before = snap(0.0, &[("hget", 100), ("hdel", 5)], &[("hget", 40)]);
        let after = snap(0.0, &[("hget", 190), ("hdel", 25)], &[("hget", 70)]);
        let u = before.usage(&after, 10, Window::Consume, false);
        // 90 HGETs ran, 30 of them the harness's; every HDEL is the engine's.
        assert_eq!(u.calls_per_task["hget"], 6.0);
        assert_eq!(u.calls_per_task["hdel"], 2.0);
        assert_eq!(u.commands_per_task, 8.0);
        let (_, calls) = before.delta(&after);
        assert_eq!(calls["hget"], 60);
        let mut probe = u.clone();
        probe.discount("hget", 20, 10);
        assert_eq!(probe.calls_per_task["hget"], 4.0);
        assert_eq!(probe.commands_per_task, 6.0);
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
