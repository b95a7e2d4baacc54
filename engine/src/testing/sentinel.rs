//! A master, a replica and three sentinels on loopback ports, for tests.
//!
//! The sentinels watch the master as `mymaster` with quorum 2 and a 1 s down-after, so killing
//! the master promotes the replica within a few seconds.

use std::time::{Duration, Instant};

use super::node::{Node, free_ports, query};

/// The master name the sentinels use.
pub const MASTER_NAME: &str = "mymaster";

/// A running Sentinel setup; everything is killed when it drops (or the test process ends).
#[derive(Debug)]
pub struct SentinelSetup {
    /// `[master, replica]` as started (after a failover the replica is the master).
    pub data: Vec<Node>,
    /// The three sentinels.
    pub sentinels: Vec<Node>,
}

impl SentinelSetup {
    /// Starts the master, its replica (in sync before this returns) and three sentinels that
    /// agree on the master.
    pub fn start() -> Self {
        let ports = free_ports(5);
        let plain = |extra: &[&str]| -> Vec<String> {
            ["--save", "", "--appendonly", "no"]
                .iter()
                .chain(extra)
                .map(|s| s.to_string())
                .collect()
        };
        let master = Node::start(ports[0], &plain(&[]), None);
        let replica_of = ports[0].to_string();
        let replica = Node::start(ports[1], &plain(&["--replicaof", "127.0.0.1", &replica_of]), None);
        let sentinels = ports[2..]
            .iter()
            .map(|&p| {
                let conf = format!(
                    "sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    ports[0]
                );
                Node::start(p, &[], Some(&conf))
            })
            .collect();
        let setup = SentinelSetup {
            data: vec![master, replica],
            sentinels,
        };
        setup.wait(
            Duration::from_secs(30),
            "the replica in sync and the sentinels seeing it",
            |s| s.in_sync(1) && s.sentinels.iter().all(|n| s.sentinel_knows_replica(n.port())),
        );
        setup
    }

    /// `redis+sentinel://s1,s2,s3/mymaster`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(Node::addr).collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The port of the master as the first answering sentinel names it.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let addr: Vec<String> = query(
                s.port(),
                redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(MASTER_NAME),
            )
            .ok()?;
            addr.get(1)?.parse().ok()
        })
    }

    /// Waits (polling every 50 ms) until `check` holds; panics naming `what` otherwise.
    pub fn wait(&self, timeout: Duration, what: &str, check: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn in_sync(&self, replica: usize) -> bool {
        query::<String>(self.data[replica].port(), redis::cmd("INFO").arg("replication"))
            .is_ok_and(|i| i.contains("master_link_status:up"))
    }

    fn sentinel_knows_replica(&self, port: u16) -> bool {
        query::<Vec<redis::Value>>(port, redis::cmd("SENTINEL").arg("replicas").arg(MASTER_NAME))
            .is_ok_and(|r| !r.is_empty())
            // And the other two sentinels: a failover needs a majority of them to agree.
            && query::<Vec<redis::Value>>(port, redis::cmd("SENTINEL").arg("sentinels").arg(MASTER_NAME))
                .is_ok_and(|r| r.len() == 2)
    }
}
