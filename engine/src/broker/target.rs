//! Where Redis is and how the engine talks to it: one node, a Redis Cluster, or a master found
//! through Sentinel. [`RedisTarget`] is the parsed URL (the one place a URL is read);
//! [`RedisConnection`] is the connection every broker call takes, an enum over the three kinds
//! that implements redis-rs's `ConnectionLike`, so the rest of the engine does not know which
//! one it talks to.
//!
//! - `redis://`, `rediss://`, `redis+unix://`: one node, through a `ConnectionManager` (it
//!   reconnects by itself). The single-node path is the one it always was.
//! - `redis+cluster://h1:p1,h2:p2` (seeds; `rediss+cluster://` for TLS): redis-rs's async
//!   cluster connection, which follows `MOVED` and `ASK` and refreshes its slot map after a
//!   failover. A non-atomic pipeline whose commands fall in several slots is split per slot
//!   here and its replies put back in order (redis-rs would refuse it with `CROSSSLOT`).
//!   Scripts and single commands are never split: every script's keys share one hash tag.
//! - `redis+sentinel://h1:p1,h2:p2/master-name[/db]`: asks the sentinels for the master and
//!   connects to it; when the master stops answering or answers `READONLY` (it was demoted),
//!   asks the sentinels again and moves to the new master.
//!
//! TLS ([`TlsOptions`]): `rediss://` for one node and `rediss+cluster://` for a cluster take
//! the same CA file, client certificate and verification opt-out. Sentinel over TLS is refused
//! with a clear error (not supported yet).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};

use crate::connection::TlsOptions;
use crate::error::{Error, Result};
use crate::keys::hash_slot;

/// Where Redis is: parsed once from a URL (see the module docs for the schemes).
///
/// Cheap to clone. `From<redis::Client>` keeps a hand-built single-node client working.
#[derive(Clone)]
pub struct RedisTarget {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    // Boxed, both: with TLS a client is 248 bytes, a cluster client about twice that.
    Single(Box<redis::Client>),
    Cluster(Box<ClusterClient>),
    Sentinel(Arc<SentinelTarget>),
}

struct SentinelTarget {
    /// `redis://host:port` of each sentinel.
    sentinels: Vec<String>,
    master: String,
    /// User, password and database for the master (not for the sentinels).
    node: redis::RedisConnectionInfo,
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password: only the kind and, for Sentinel, the addresses.
        match &self.kind {
            Kind::Single(c) => write!(f, "RedisTarget::Single({})", c.get_connection_info().addr()),
            Kind::Cluster(_) => f.write_str("RedisTarget::Cluster"),
            Kind::Sentinel(s) => write!(f, "RedisTarget::Sentinel({:?}, master {:?})", s.sentinels, s.master),
        }
    }
}

impl From<redis::Client> for RedisTarget {
    fn from(client: redis::Client) -> Self {
        RedisTarget {
            kind: Kind::Single(Box::new(client)),
        }
    }
}

impl From<&redis::Client> for RedisTarget {
    fn from(client: &redis::Client) -> Self {
        client.clone().into()
    }
}

impl From<&RedisTarget> for RedisTarget {
    fn from(target: &RedisTarget) -> Self {
        target.clone()
    }
}

/// What a URL that does not parse gets told: the shapes that do.
pub const URL_SHAPES: &str = "redis://host:6379, redis://user:password@host:6379/0, \
     rediss://host:6380 (TLS), redis+cluster://host1:7000,host2:7001 (Redis Cluster, several seed nodes) or \
     redis+sentinel://host1:26379,host2:26379/master-name (Sentinel)";

impl RedisTarget {
    /// Parses a URL: `redis://`, `rediss://`, `redis+unix://` (one node),
    /// `redis+cluster://` / `rediss+cluster://` (seed nodes, comma separated), or
    /// `redis+sentinel://` (sentinels, comma separated, then `/master-name`, optionally
    /// `/db`). User and password in the URL apply to the data nodes.
    pub fn parse(url: &str) -> Result<Self> {
        Self::with_tls(url, &TlsOptions::default())
    }

    /// [`parse`](Self::parse), with TLS settings for `rediss://` and `rediss+cluster://` URLs
    /// (a CA file, a client certificate, or verification off). TLS options on a URL that is
    /// not TLS are refused, and so is any TLS for Sentinel.
    pub fn with_tls(url: &str, tls: &TlsOptions) -> Result<Self> {
        tls.validate()?;
        let bad = |reason: String| Error::InvalidUrl {
            url: crate::client::redact_url(url),
            reason,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("no scheme (expected e.g. redis://)".into()))?;
        match scheme {
            "redis+cluster" | "rediss+cluster" => {
                let node_scheme = scheme.strip_suffix("+cluster").expect("matched above");
                let (userinfo, hosts, tail) = split_authority(rest);
                if !tail.trim_start_matches('/').is_empty() {
                    return Err(bad(format!(
                        "a cluster URL has no database or path ({tail:?}): Redis Cluster has only database 0"
                    )));
                }
                let seeds = seed_urls(node_scheme, userinfo, hosts).map_err(bad)?;
                let mut builder = ClusterClient::builder(seeds.iter().map(String::as_str));
                if node_scheme == "rediss" {
                    if tls.insecure {
                        builder = builder.tls(redis::TlsMode::Insecure);
                    }
                    if let Some(certs) = crate::connection::certificates(tls)? {
                        builder = builder.certs(certs);
                    }
                } else if tls.is_set() {
                    return Err(Error::config(
                        "tls",
                        "TLS options need a rediss+cluster:// URL (the URL given is not TLS)",
                    ));
                }
                let client = builder.build().map_err(|e| bad(e.to_string()))?;
                Ok(RedisTarget {
                    kind: Kind::Cluster(Box::new(client)),
                })
            }
            "redis+sentinel" | "rediss+sentinel" => {
                if scheme == "rediss+sentinel" || tls.is_set() {
                    return Err(bad(
                        "Sentinel over TLS is not supported yet; use redis+sentinel:// without TLS options, or a rediss:// URL to the master".into()
                    ));
                }
                let (userinfo, hosts, tail) = split_authority(rest);
                let mut path = tail.trim_start_matches('/').split('/');
                let master = path.next().filter(|m| !m.is_empty()).ok_or_else(|| {
                    bad(
                        "a Sentinel URL names the master after the hosts: redis+sentinel://h1:26379,h2:26379/mymaster"
                            .into(),
                    )
                })?;
                let db = path.next().unwrap_or("0");
                if path.next().is_some() {
                    return Err(bad(format!("unexpected path after /{master}/{db}")));
                }
                let sentinels = seed_urls("redis", None, hosts).map_err(bad)?;
                // The data nodes' user, password and database, read by redis-rs's own parser.
                let at = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
                let node = format!("redis://{at}127.0.0.1/{db}")
                    .into_connection_info()
                    .map_err(|e| bad(e.to_string()))?
                    .redis_settings()
                    .clone();
                Ok(RedisTarget {
                    kind: Kind::Sentinel(Arc::new(SentinelTarget {
                        sentinels,
                        master: master.to_owned(),
                        node,
                    })),
                })
            }
            _ => match crate::connection::open(url, tls) {
                Ok(client) => Ok(client.into()),
                Err(Error::Redis(e)) if e.kind() == redis::ErrorKind::InvalidClientConfig => {
                    Err(bad(e.to_string().trim_end_matches(" - InvalidClientConfig").to_owned()))
                }
                Err(e) => Err(e),
            },
        }
    }

    /// Whether this is a Redis Cluster (keys live on several masters).
    pub fn is_cluster(&self) -> bool {
        matches!(self.kind, Kind::Cluster(_))
    }

    /// The client of a single node (none on a cluster or behind Sentinel): what a pub/sub
    /// subscription is opened with.
    pub(crate) fn single_client(&self) -> Option<&redis::Client> {
        match &self.kind {
            Kind::Single(client) => Some(client),
            _ => None,
        }
    }

    /// Whether the master is found through Sentinel.
    pub fn is_sentinel(&self) -> bool {
        matches!(self.kind, Kind::Sentinel(_))
    }

    /// Opens a connection that survives reconnects (and, on a cluster or behind Sentinel,
    /// redirections and failovers), with the engine's default response timeout.
    pub async fn connect(&self) -> Result<RedisConnection> {
        self.open(Some(crate::client::DEFAULT_RESPONSE_TIMEOUT)).await
    }

    /// Opens a connection. `response_timeout` must exceed any `BLOCK` issued on it: redis-rs
    /// would otherwise time a blocking read out.
    pub(crate) async fn open(&self, response_timeout: Option<Duration>) -> Result<RedisConnection> {
        let inner = match &self.kind {
            Kind::Single(client) => Inner::Single(manager(client, response_timeout).await?),
            Kind::Cluster(client) => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(Duration::from_secs(5))
                    .set_response_timeout(response_timeout.unwrap_or(Duration::from_secs(3600)));
                let conn = client.get_async_connection_with_config(config).await?;
                Inner::Cluster(conn)
            }
            Kind::Sentinel(target) => Inner::Sentinel(SentinelConnection::open(target, response_timeout).await?),
        };
        Ok(RedisConnection { inner })
    }

    /// Opens a fetcher's connection (for blocking reads; see `reader`): on one node over TCP
    /// or a Unix socket the engine's own reader, connected now; otherwise a connection as
    /// [`open`](Self::open) makes. `response_timeout` must exceed any `BLOCK` issued on it.
    pub(crate) async fn open_dedicated(
        &self,
        response_timeout: Duration,
    ) -> Result<super::reader::DedicatedConnection> {
        match self.open_raw(response_timeout).await? {
            Some(conn) => Ok(conn),
            None => Ok(self.open(Some(response_timeout)).await?.into()),
        }
    }

    /// The engine's own link (see `reader`), connected now: on one node over TCP or a Unix
    /// socket; `None` on a Cluster, behind Sentinel or over TLS.
    pub(crate) async fn open_raw(
        &self,
        response_timeout: Duration,
    ) -> Result<Option<super::reader::DedicatedConnection>> {
        let Kind::Single(client) = &self.kind else {
            return Ok(None);
        };
        let Some(mut conn) = super::reader::DedicatedConnection::raw(client.get_connection_info(), response_timeout)
        else {
            return Ok(None);
        };
        conn.connect().await?;
        Ok(Some(conn))
    }
}

/// Splits `userinfo@h1:p1,h2:p2/tail` into its parts (userinfo up to the last '@').
fn split_authority(rest: &str) -> (Option<&str>, &str, &str) {
    let (userinfo, after) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    (userinfo.filter(|u| !u.is_empty()), &after[..end], &after[end..])
}

fn seed_urls(scheme: &str, userinfo: Option<&str>, hosts: &str) -> std::result::Result<Vec<String>, String> {
    let at = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    let seeds: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| {
            if h.rsplit_once(':').is_none_or(|(_, p)| p.parse::<u16>().is_err()) {
                Err(format!("{h:?} is not host:port"))
            } else {
                Ok(format!("{scheme}://{at}{h}"))
            }
        })
        .collect::<std::result::Result<_, _>>()?;
    if seeds.is_empty() {
        return Err("no host:port given".into());
    }
    Ok(seeds)
}

async fn manager(client: &redis::Client, response_timeout: Option<Duration>) -> Result<ConnectionManager> {
    Ok(ConnectionManager::new_with_config(client.clone(), manager_config(response_timeout)).await?)
}

fn manager_config(response_timeout: Option<Duration>) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(response_timeout)
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(2))
        // Workers and bulk producers keep many requests in flight on one connection.
        .set_pipeline_buffer_size(4096)
}

/// A connection to a [`RedisTarget`]: what every broker call takes. Cheap to clone; clones
/// share the underlying connection(s), so a blocking read needs a connection of its own.
#[derive(Clone)]
pub struct RedisConnection {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConnection),
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.inner {
            Inner::Single(_) => "RedisConnection::Single",
            Inner::Cluster(_) => "RedisConnection::Cluster",
            Inner::Sentinel(_) => "RedisConnection::Sentinel",
        })
    }
}

impl RedisConnection {
    /// Whether keys in different slots live on different masters (a multi-key command must
    /// then stay within one slot).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
    }
}

impl RedisConnection {
    /// Runs `cmd` (a keyless command about this connection's own writes: `WAIT`, `WAITAOF`)
    /// where the writes to `keys` went: once on one node or behind Sentinel; on a cluster,
    /// once on the master of each distinct slot (the per-node connections the writes used).
    pub(crate) async fn on_masters_of(&mut self, cmd: &Cmd, keys: &[&str]) -> RedisResult<Vec<Value>> {
        let Inner::Cluster(c) = &mut self.inner else {
            return Ok(vec![self.req_packed_command(cmd).await?]);
        };
        let mut slots: Vec<u16> = keys.iter().map(|k| hash_slot(k.as_bytes())).collect();
        slots.sort_unstable();
        slots.dedup();
        let calls = slots.into_iter().map(|slot| {
            let mut conn = c.clone();
            let route =
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master)));
            async move { conn.route_command(cmd.clone(), route).await }
        });
        futures_util::future::try_join_all(calls).await
    }
}

impl RedisConnection {
    /// Runs a keyless command about a connection (`CLIENT ID`, `CLIENT UNBLOCK`) on the node
    /// that serves `key`: on one node or behind Sentinel, the node; on a cluster, the master of
    /// `key`'s slot, over this connection's link to it (the one a command on `key` uses).
    pub(crate) async fn on_node_of(&mut self, cmd: &Cmd, key: &str) -> RedisResult<Value> {
        match &mut self.inner {
            Inner::Cluster(c) => {
                let slot = hash_slot(key.as_bytes());
                let route =
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master)));
                c.route_command(cmd.clone(), route).await
            }
            _ => self.req_packed_command(cmd).await,
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.inner {
            Inner::Single(c) => c.req_packed_command(cmd),
            Inner::Cluster(c) => c.req_packed_command(cmd),
            Inner::Sentinel(c) => Box::pin(c.command(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.inner {
            Inner::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Inner::Cluster(c) => Box::pin(cluster_pipeline(c, pipeline, offset, count)),
            Inner::Sentinel(c) => Box::pin(c.pipeline(pipeline, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single(c) => c.get_db(),
            Inner::Cluster(c) => c.get_db(),
            Inner::Sentinel(c) => c.current().1.get_db(),
        }
    }
}

/// The key a pipelined command is routed by: the first key of a script call (`EVALSHA sha n
/// key ...`), else the first argument, for the data commands the broker pipelines (`XADD`,
/// `HINCRBY`, `HSET`, `ZADD`, `DEL`, ...); `None` for those without a key (`SCRIPT LOAD`,
/// `WAIT`), which go to every slot's part of a split pipeline.
fn routing_key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(b) => b,
        // A cursor or anything newer: not a key.
        _ => &b""[..],
    });
    let name = args.next()?;
    let is = |k: &str| name.eq_ignore_ascii_case(k.as_bytes());
    if ["EVAL", "EVALSHA", "FCALL"].into_iter().any(is) {
        let _script = args.next()?;
        let keys = args.next()?;
        return if keys == b"0" { None } else { args.next() };
    }
    let keyless = ["PING", "SCRIPT", "INFO", "CLUSTER", "MULTI", "EXEC", "WAIT", "WAITAOF"];
    if keyless.into_iter().any(is) {
        return None;
    }
    args.next()
}

/// Whether `cmd` is a durability wait, whose replies from several masters combine into the
/// weakest (fewest replicas or fsyncs).
fn is_wait(cmd: &Cmd) -> bool {
    matches!(cmd.args_iter().next(), Some(redis::Arg::Simple(n)) if n.eq_ignore_ascii_case(b"WAIT") || n.eq_ignore_ascii_case(b"WAITAOF"))
}

/// The weaker of two `WAIT` (an integer) or `WAITAOF` (an array, local count first) replies.
fn weaker(a: Value, b: Value) -> Value {
    let count = |v: &Value| match v {
        Value::Int(n) => Some(*n),
        Value::Array(items) => match items.first() {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        },
        _ => None,
    };
    match (count(&a), count(&b)) {
        (Some(x), Some(y)) if y < x => b,
        (Some(_), _) => a,
        _ => b,
    }
}

/// Runs a pipeline on a cluster: as one pipeline when its commands share a slot, otherwise
/// one sub-pipeline per slot, side by side, replies put back in the pipeline's order. Keyless
/// commands (`SCRIPT LOAD` before script calls, a trailing `WAIT`) go into every part, so
/// every master has the script, and a wait covers every part's writes on its own master
/// (the replies combine into the weakest). Only commands on different slots (different
/// shards) are reordered against each other, and the broker never pipelines commands whose
/// order across shards matters.
async fn cluster_pipeline(
    conn: &mut ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    let slots: Vec<Option<u16>> = pipeline.cmd_iter().map(|c| routing_key(c).map(hash_slot)).collect();
    let mut distinct: Vec<u16> = slots.iter().flatten().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() <= 1 || pipeline.is_transaction() {
        // A transaction cannot be split; on several slots the server refuses it (CROSSSLOT).
        return conn.req_packed_commands(pipeline, offset, count).await;
    }
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); distinct.len()];
    for (i, slot) in slots.iter().enumerate() {
        match slot {
            Some(s) => groups[distinct.binary_search(s).expect("every slot has a group")].push(i),
            None => groups.iter_mut().for_each(|g| g.push(i)),
        }
    }
    let cmds: Vec<&Cmd> = pipeline.cmd_iter().collect();
    let calls = groups.iter().map(|idx| {
        let mut sub = redis::pipe();
        for &i in idx {
            sub.add_command(cmds[i].clone());
        }
        let mut conn = conn.clone();
        async move {
            let n = sub.len();
            conn.req_packed_commands(&sub, 0, n).await
        }
    });
    let replies = futures_util::future::try_join_all(calls).await?;
    let mut out: Vec<Option<Value>> = vec![None; cmds.len()];
    for (idx, values) in groups.iter().zip(replies) {
        for (&i, v) in idx.iter().zip(values) {
            out[i] = Some(match out[i].take() {
                Some(seen) if is_wait(cmds[i]) => weaker(seen, v),
                Some(seen) => seen,
                None => v,
            });
        }
    }
    Ok(out
        .into_iter()
        .map(|v| v.unwrap_or(Value::Nil))
        .skip(offset)
        .take(count)
        .collect())
}

/// A connection to the master Sentinel names, moved to the new master after a failover.
#[derive(Clone)]
struct SentinelConnection {
    shared: Arc<SentinelShared>,
}

struct SentinelShared {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// (generation, connection to the master as last resolved).
    current: Mutex<(u64, ConnectionManager, String)>,
    response_timeout: Option<Duration>,
    /// When the sentinels were last asked: at most a few lookups a second however many
    /// requests fail at once.
    last_lookup: Mutex<Option<Instant>>,
}

/// How often a connection that keeps failing asks the sentinels for the master.
const LOOKUP_EVERY: Duration = Duration::from_millis(250);

impl SentinelConnection {
    async fn open(target: &SentinelTarget, response_timeout: Option<Duration>) -> Result<Self> {
        let mut sentinel = SentinelClient::build(
            target.sentinels.clone(),
            target.master.clone(),
            Some(SentinelNodeConnectionInfo::default().set_redis_connection_info(target.node.clone())),
            SentinelServerType::Master,
        )?;
        let client = sentinel.async_get_client().await?;
        let addr = client.get_connection_info().addr().to_string();
        let conn = manager(&client, response_timeout).await?;
        Ok(SentinelConnection {
            shared: Arc::new(SentinelShared {
                sentinel: tokio::sync::Mutex::new(sentinel),
                current: Mutex::new((0, conn, addr)),
                response_timeout,
                last_lookup: Mutex::new(Some(Instant::now())),
            }),
        })
    }

    fn current(&self) -> (u64, ConnectionManager) {
        let cur = self.shared.current.lock().expect("never poisoned: no panic while held");
        (cur.0, cur.1.clone())
    }

    async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        let (generation, mut conn) = self.current();
        match conn.req_packed_command(cmd).await {
            Err(e) if master_lost(&e) => {
                if let Some(mut moved) = self.follow(generation).await
                    && not_executed(&e)
                {
                    // Refused without running (demoted master, nothing listening): safe to
                    // send again to the new master.
                    return moved.req_packed_command(cmd).await;
                }
                Err(e)
            }
            r => r,
        }
    }

    async fn pipeline(&self, pipeline: &Pipeline, offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        let (generation, mut conn) = self.current();
        match conn.req_packed_commands(pipeline, offset, count).await {
            Err(e) if master_lost(&e) => {
                if let Some(mut moved) = self.follow(generation).await
                    && not_executed(&e)
                {
                    return moved.req_packed_commands(pipeline, offset, count).await;
                }
                Err(e)
            }
            r => r,
        }
    }

    /// Asks the sentinels where the master is now and, if it moved, connects there. Returns
    /// the connection to use from now on when it changed.
    async fn follow(&self, seen: u64) -> Option<ConnectionManager> {
        let mut sentinel = self.shared.sentinel.lock().await;
        {
            let cur = self.shared.current.lock().expect("never poisoned");
            if cur.0 != seen {
                // Another request already moved the connection.
                return Some(cur.1.clone());
            }
        }
        {
            let mut last = self.shared.last_lookup.lock().expect("never poisoned");
            if last.is_some_and(|t| t.elapsed() < LOOKUP_EVERY) {
                return None;
            }
            *last = Some(Instant::now());
        }
        let client = match sentinel.async_get_client().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "sentinels did not name a master");
                return None;
            }
        };
        let addr = client.get_connection_info().addr().to_string();
        if self.shared.current.lock().expect("never poisoned").2 == addr {
            // Same master: its connection reconnects by itself.
            return None;
        }
        match manager(&client, self.shared.response_timeout).await {
            Ok(conn) => {
                tracing::info!(master = %addr, "following the master Sentinel names");
                let mut cur = self.shared.current.lock().expect("never poisoned");
                *cur = (cur.0 + 1, conn.clone(), addr);
                Some(conn)
            }
            Err(e) => {
                tracing::warn!(error = %e, master = %addr, "cannot reach the master Sentinel names");
                None
            }
        }
    }
}

/// An error after which the master may have changed: it is unreachable, or it was demoted.
fn master_lost(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN"))
}

/// An error that says the command did not run.
fn not_executed(e: &redis::RedisError) -> bool {
    e.is_connection_refusal() || matches!(e.code(), Some("READONLY" | "MASTERDOWN"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_choose_the_kind() {
        assert!(!RedisTarget::parse("redis://127.0.0.1:6379").unwrap().is_cluster());
        assert!(
            RedisTarget::parse("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
                .unwrap()
                .is_cluster()
        );
        assert!(
            RedisTarget::parse("redis+cluster://u:p@127.0.0.1:7000/")
                .unwrap()
                .is_cluster()
        );
        let s = RedisTarget::parse("redis+sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/mymaster/2").unwrap();
        let Kind::Sentinel(s) = &s.kind else {
            panic!("not sentinel: {s:?}")
        };
        assert_eq!(s.master, "mymaster");
        assert_eq!(s.sentinels, ["redis://127.0.0.1:26379", "redis://127.0.0.1:26380"]);
        assert_eq!(s.node.db(), 2);
        assert_eq!(s.node.password(), Some("pw"));
    }

    #[test]
    fn bad_urls_say_why_without_the_password() {
        for (url, says) in [
            ("redis+cluster://", "no host:port"),
            ("redis+cluster://127.0.0.1", "not host:port"),
            ("redis+cluster://127.0.0.1:7000/3", "only database 0"),
            ("redis+sentinel://127.0.0.1:26379", "names the master"),
            ("redis+sentinel://u:secret@127.0.0.1:26379", "names the master"),
            ("127.0.0.1:6379", "no scheme"),
        ] {
            let e = RedisTarget::parse(url).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("secret"), "{url}: {e}");
        }
    }

    #[test]
    fn pipelined_commands_route_by_their_key() {
        let mut cmd = redis::cmd("XADD");
        cmd.arg("rivulet:{q:high:0}:stream").arg("*");
        assert_eq!(routing_key(&cmd), Some(&b"rivulet:{q:high:0}:stream"[..]));
        assert_eq!(routing_key(&redis::cmd("PING")), None);
        let mut script = redis::cmd("EVALSHA");
        script.arg("abc").arg(2).arg("rivulet:{q:high:1}:stream").arg("other");
        assert_eq!(routing_key(&script), Some(&b"rivulet:{q:high:1}:stream"[..]));
        let mut wait = redis::cmd("WAIT");
        wait.arg(1).arg(100);
        assert_eq!(routing_key(&wait), None);
        assert_eq!(weaker(Value::Int(1), Value::Int(0)), Value::Int(0));
    }
}
