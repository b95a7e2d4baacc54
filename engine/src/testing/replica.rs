//! A master with one replica, both private `redis-server`s owned by a test.
//!
//! [`ReplicaPair::start`] returns once the replica has synced (`master_link_status:up` on the
//! replica and `connected_slaves:1` on the master), so a test's first write already replicates.

use std::time::{Duration, Instant};

use super::RedisServer;

/// A master and a replica of it; both killed on drop.
#[derive(Debug)]
pub struct ReplicaPair {
    /// The master: tests write here.
    pub master: RedisServer,
    /// The replica (`--replicaof` the master): tests read here what has replicated.
    pub replica: RedisServer,
}

impl ReplicaPair {
    /// Starts both and waits (up to 20 s) until the replica is in sync.
    pub fn start() -> Self {
        let master = RedisServer::start();
        let port = master.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
        let pair = ReplicaPair { master, replica };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let linked = info(&pair.replica, "replication").contains("master_link_status:up");
            let attached = info(&pair.master, "replication").contains("connected_slaves:1");
            if linked && attached {
                return pair;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the replica did not sync within 20 s; replica log:\n{}",
            pair.replica.log_tail(30)
        );
    }
}

/// `INFO section` of a server, or "" while it cannot be read.
fn info(server: &RedisServer, section: &str) -> String {
    let Ok(mut conn) = server.client().get_connection() else {
        return String::new();
    };
    redis::cmd("INFO").arg(section).query(&mut conn).unwrap_or_default()
}
