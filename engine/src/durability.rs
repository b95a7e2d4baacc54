//! What an acknowledgement promises, and the Redis settings the engine needs to keep its
//! promises: [`Durability`] (when an enqueue or a settle counts as done), [`ServerInfo`] (what
//! the server says about itself at start) and the checks on both, as pure functions.
//!
//! Redis replicates asynchronously: a write acknowledged by a master that then fails can be
//! missing on the replica that takes over. `Durability::Replicated` closes that window for
//! Rivulet's writes with `WAIT N` after them (on the same connection), `Durability::Fsync` with
//! `WAITAOF 1 0` (Redis 7.2+) for a master that must not lose them to a power cut. Where the
//! wait goes is the caller's: a producer waits once per `enqueue_many` pipeline (it is the last
//! command of the pipeline, so it adds no round trip), a worker once per settle batch (one
//! round trip per batch, not per task).
//!
//! Eviction: Rivulet's task streams, sets and counters have no TTL, so any `allkeys-*` policy may
//! delete them under memory pressure (tasks vanish without an error). `volatile-*` policies evict
//! only keys with a TTL, which for Rivulet are the worker registry records: losing one makes a
//! live worker look dead for up to a heartbeat (its tasks may be reclaimed and run twice, as
//! at-least-once allows), never a task. So `noeviction` and `volatile-*` pass; `allkeys-*` is
//! refused unless the operator allows it explicitly.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

/// How long a durable write waits for its replicas or its fsync by default.
pub const DEFAULT_DURABILITY_TIMEOUT: Duration = Duration::from_secs(1);

/// When a write (enqueue, settle) counts as acknowledged.
///
/// ```
/// use rivulet::Durability;
///
/// let d: Durability = "replicated:1".parse()?;
/// assert_eq!(d.to_string(), "replicated:1");
/// assert_eq!("fast".parse::<Durability>()?, Durability::Fast);
/// # Ok::<(), rivulet::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// When the master has it in memory (the default, and Redis's own behaviour). A failover
    /// can lose the last acknowledged writes (enqueues vanish; settled tasks run again).
    #[default]
    Fast,
    /// When at least `replicas` replicas have it (`WAIT replicas timeout`). A write that is not
    /// confirmed in time fails with [`Error::NotDurable`]: it is on the master and may or may
    /// not survive a failover.
    Replicated {
        /// Replicas that must acknowledge.
        replicas: u32,
        /// How long to wait for them.
        timeout: Duration,
    },
    /// When the master has written it to its AOF and fsynced (`WAITAOF 1 0 timeout`, Redis 7.2+
    /// with `appendonly yes`).
    Fsync {
        /// How long to wait for the fsync.
        timeout: Duration,
    },
}

impl Durability {
    /// Whether writes wait for anything.
    pub fn waits(&self) -> bool {
        *self != Durability::Fast
    }

    /// Refuses a setting this server cannot honour: `fsync` needs Redis 7.2+ and AOF on;
    /// `replicated:0` waits for nothing.
    pub fn check(&self, server: &ServerInfo) -> Result<()> {
        match self {
            Durability::Fast => Ok(()),
            Durability::Replicated { replicas: 0, .. } => Err(Error::config(
                "durability",
                "replicated:0 waits for no replica; use fast, or replicated:1 or more",
            )),
            Durability::Replicated { .. } => Ok(()),
            Durability::Fsync { .. } if server.version < (7, 2, 0) => Err(Error::UnsupportedServer {
                setting: self.to_string(),
                reason: format!("needs Redis 7.2+ (WAITAOF); this server is {}", server.version_string()),
            }),
            Durability::Fsync { .. } if !server.aof_enabled => Err(Error::UnsupportedServer {
                setting: self.to_string(),
                reason: "needs appendonly yes on the server (WAITAOF waits for an AOF fsync)".into(),
            }),
            Durability::Fsync { .. } => Ok(()),
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let timeout = |t: &Duration| {
            if *t == DEFAULT_DURABILITY_TIMEOUT {
                String::new()
            } else {
                format!(":{}ms", t.as_millis())
            }
        };
        match self {
            Durability::Fast => f.write_str("fast"),
            Durability::Replicated { replicas, timeout: t } => write!(f, "replicated:{replicas}{}", timeout(t)),
            Durability::Fsync { timeout: t } => write!(f, "fsync{}", timeout(t)),
        }
    }
}

impl FromStr for Durability {
    type Err = Error;

    /// `fast`, `replicated:N`, `replicated:N:TIMEOUTms`, `fsync`, `fsync:TIMEOUTms`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::config(
                "durability",
                format!("{s:?}: expected fast, replicated:N (e.g. replicated:1) or fsync, optionally with :TIMEOUTms"),
            )
        };
        let ms = |t: Option<&str>| -> Result<Duration> {
            match t {
                None => Ok(DEFAULT_DURABILITY_TIMEOUT),
                Some(t) => {
                    let n: u64 = t.strip_suffix("ms").ok_or_else(bad)?.parse().map_err(|_| bad())?;
                    if n == 0 {
                        return Err(Error::config("durability", "the timeout must be above 0ms"));
                    }
                    Ok(Duration::from_millis(n))
                }
            }
        };
        let mut parts = s.trim().split(':');
        let d = match parts.next() {
            Some("fast") => Durability::Fast,
            Some("replicated") => {
                let replicas = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
                Durability::Replicated {
                    replicas,
                    timeout: ms(parts.next())?,
                }
            }
            Some("fsync") => Durability::Fsync {
                timeout: ms(parts.next())?,
            },
            _ => return Err(bad()),
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(d)
    }
}

/// What a worker or producer reads about the server at start (`INFO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `redis_version`, as (major, minor, patch).
    pub version: (u32, u32, u32),
    /// `maxmemory_policy`.
    pub maxmemory_policy: String,
    /// `aof_enabled:1`.
    pub aof_enabled: bool,
    /// `connected_slaves`: replicas attached to this master now.
    pub replicas: u32,
    /// `cluster_enabled:1`: a node of a Redis Cluster.
    pub cluster_enabled: bool,
}

impl ServerInfo {
    /// Reads the fields from `INFO` text (`key:value` lines; unknown lines are ignored).
    pub fn parse(info: &str) -> Result<Self> {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                .map(str::trim)
        };
        let version = field("redis_version").ok_or_else(|| Error::protocol("INFO without redis_version"))?;
        let mut nums = version.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
        let version = (
            nums.next().unwrap_or(0),
            nums.next().unwrap_or(0),
            nums.next().unwrap_or(0),
        );
        Ok(ServerInfo {
            version,
            maxmemory_policy: field("maxmemory_policy").unwrap_or("noeviction").to_owned(),
            aof_enabled: field("aof_enabled") == Some("1"),
            replicas: field("connected_slaves").and_then(|n| n.parse().ok()).unwrap_or(0),
            cluster_enabled: field("cluster_enabled") == Some("1"),
        })
    }

    /// What a Redis Cluster can promise as a whole, from each master's `INFO`: the oldest
    /// version, an evicting policy if any master has one, AOF only if every master has it, the
    /// fewest replicas.
    pub fn weakest(infos: impl IntoIterator<Item = ServerInfo>) -> Option<ServerInfo> {
        infos.into_iter().reduce(|a, b| ServerInfo {
            version: a.version.min(b.version),
            maxmemory_policy: if a.maxmemory_policy.starts_with("allkeys-") {
                a.maxmemory_policy
            } else {
                b.maxmemory_policy
            },
            aof_enabled: a.aof_enabled && b.aof_enabled,
            replicas: a.replicas.min(b.replicas),
            cluster_enabled: a.cluster_enabled || b.cluster_enabled,
        })
    }

    /// `7.0.15`.
    pub fn version_string(&self) -> String {
        let (a, b, c) = self.version;
        format!("{a}.{b}.{c}")
    }

    /// Refuses an eviction policy that can delete task keys (any `allkeys-*`), naming the
    /// setting to change. `noeviction` and `volatile-*` pass (see the module docs).
    pub fn check_eviction(&self) -> Result<()> {
        if self.maxmemory_policy.starts_with("allkeys-") {
            return Err(Error::UnsafeRedisSetting {
                setting: "maxmemory-policy",
                value: self.maxmemory_policy.clone(),
                why: "under memory pressure Redis would delete task streams and retry sets: tasks would vanish without an error",
                fix: "set maxmemory-policy noeviction (CONFIG SET maxmemory-policy noeviction, and in redis.conf), or allow eviction explicitly (--allow-eviction, WorkerConfig::allow_eviction)",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(version: &str, policy: &str, aof: bool) -> ServerInfo {
        ServerInfo::parse(&format!(
            "# Server\r\nredis_version:{version}\r\n# Memory\r\nmaxmemory_policy:{policy}\r\n# Persistence\r\naof_enabled:{}\r\n# Replication\r\nconnected_slaves:2\r\n",
            u8::from(aof)
        ))
        .unwrap()
    }

    #[test]
    fn info_fields_parse() {
        let i = info("7.0.15", "allkeys-lru", true);
        assert_eq!(
            i,
            ServerInfo {
                version: (7, 0, 15),
                maxmemory_policy: "allkeys-lru".into(),
                aof_enabled: true,
                replicas: 2,
                cluster_enabled: false,
            }
        );
        let node = ServerInfo::parse("redis_version:7.2.4\r\ncluster_enabled:1\r\nconnected_slaves:1\r\n").unwrap();
        assert!(node.cluster_enabled);
        let all = ServerInfo::weakest([i.clone(), node]).unwrap();
        assert_eq!((all.version, all.replicas, all.aof_enabled), ((7, 0, 15), 1, false));
        assert_eq!(all.maxmemory_policy, "allkeys-lru");
        assert!(ServerInfo::parse("nothing").is_err());
    }

    #[test]
    fn durability_round_trips_through_its_text_form() {
        for s in ["fast", "replicated:1", "replicated:2:250ms", "fsync", "fsync:50ms"] {
            assert_eq!(s.parse::<Durability>().unwrap().to_string(), s);
        }
        for bad in [
            "",
            "slow",
            "replicated",
            "replicated:x",
            "replicated:1:5",
            "fsync:0ms",
            "fast:1",
        ] {
            assert!(bad.parse::<Durability>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn fsync_needs_redis_7_2_and_aof() {
        let fsync: Durability = "fsync".parse().unwrap();
        let e = fsync.check(&info("7.0.15", "noeviction", true)).unwrap_err();
        assert!(e.to_string().contains("needs Redis 7.2+"), "{e}");
        assert!(e.to_string().contains("7.0.15"), "{e}");
        let e = fsync.check(&info("7.2.4", "noeviction", false)).unwrap_err();
        assert!(e.to_string().contains("appendonly yes"), "{e}");
        assert!(fsync.check(&info("7.2.4", "noeviction", true)).is_ok());
        assert!(
            "replicated:1"
                .parse::<Durability>()
                .unwrap()
                .check(&info("6.2.0", "noeviction", false))
                .is_ok()
        );
        assert!(
            "replicated:0"
                .parse::<Durability>()
                .unwrap()
                .check(&info("7.0.0", "noeviction", false))
                .is_err()
        );
    }

    #[test]
    fn only_policies_that_can_evict_task_keys_are_refused() {
        for ok in [
            "noeviction",
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ] {
            assert!(info("7.0.0", ok, false).check_eviction().is_ok(), "{ok}");
        }
        for bad in ["allkeys-lru", "allkeys-lfu", "allkeys-random"] {
            let e = info("7.0.0", bad, false).check_eviction().unwrap_err();
            assert!(e.to_string().contains("maxmemory-policy noeviction"), "{e}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
