//! A Redis Cluster of 3 masters and 3 replicas on loopback ports, for tests.
//!
//! [`RedisCluster::start`] starts six tethered `redis-server --cluster-enabled yes` nodes
//! (explicit bus ports, a 1 s node timeout so a failover takes about two seconds), joins them
//! with `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`, and waits until
//! every node reports `cluster_state:ok` and every replica is in sync. [`RedisCluster::shared`]
//! starts one per test binary, for tests that give each their own queue; tests that kill or
//! move things start their own.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::node::{Node, free_ports, query};
use super::tls::TestCerts;

/// A running cluster; every node is killed when it drops (or when the test process ends).
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// For a TLS cluster ([`RedisCluster::start_tls`]): the certificates and each node's TLS
    /// port (its plain port stays open for the harness's own checks).
    tls: Option<(TestCerts, Vec<u16>)>,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    /// The node id.
    pub id: String,
    /// Its client port.
    pub port: u16,
    /// Whether it is a master now.
    pub master: bool,
    /// Whether the cluster marks it failed.
    pub failed: bool,
    /// Slot ranges it serves (masters), inclusive.
    pub slots: Vec<(u16, u16)>,
    /// The master it replicates (replicas).
    pub master_id: Option<String>,
}

impl RedisCluster {
    /// The cluster shared by every test of this binary, started on first use.
    pub fn shared() -> &'static RedisCluster {
        static SHARED: OnceLock<RedisCluster> = OnceLock::new();
        SHARED.get_or_init(RedisCluster::start)
    }

    /// Starts 3 masters with one replica each and waits until the cluster is ready.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// [`start`](Self::start), every node also serving TLS (`--tls-port`, `--tls-cluster yes`,
    /// `--tls-replication yes`, certificates made by the test): [`url`](Self::url) is then
    /// `rediss+cluster://` on the TLS ports, and Redis tells a TLS client the TLS ports of the
    /// other nodes.
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(tls) {
                Ok(c) => return c,
                // A probed port taken by someone else before the node bound it: try again.
                Err(e) => last = e,
            }
        }
        panic!("could not start a Redis Cluster: {last}");
    }

    fn try_start(tls: bool) -> Result<Self, String> {
        let ports = free_ports(18);
        let certs = tls.then(TestCerts::generate);
        let mut nodes = Vec::new();
        for i in 0..6 {
            let mut args: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &ports[6 + i].to_string(),
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if let Some(certs) = &certs {
                let (cert, key) = certs.server();
                // On the cluster bus a node is also a client, and the bus always checks client
                // certificates: it presents the client one.
                let (client_cert, client_key) = certs.client();
                args.extend([
                    "--tls-client-cert-file".to_owned(),
                    client_cert.display().to_string(),
                    "--tls-client-key-file".to_owned(),
                    client_key.display().to_string(),
                    "--tls-port".to_owned(),
                    ports[12 + i].to_string(),
                    "--tls-cluster".to_owned(),
                    "yes".to_owned(),
                    "--tls-replication".to_owned(),
                    "yes".to_owned(),
                    "--tls-cert-file".to_owned(),
                    cert.display().to_string(),
                    "--tls-key-file".to_owned(),
                    key.display().to_string(),
                    "--tls-ca-cert-file".to_owned(),
                    certs.ca().display().to_string(),
                    "--tls-auth-clients".to_owned(),
                    "no".to_owned(),
                ]);
            }
            nodes.push(Node::start(ports[i], &args, None));
        }
        let tls_ports: Vec<u16> = ports[12..].to_vec();
        let mut create = std::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        match &certs {
            // Over TLS the nodes meet on their TLS ports (the cluster bus is TLS too).
            Some(certs) => {
                create
                    .args(tls_ports.iter().map(|p| format!("127.0.0.1:{p}")))
                    .arg("--tls")
                    .arg("--cacert")
                    .arg(certs.ca());
            }
            None => {
                create.args(nodes.iter().map(Node::addr));
            }
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .map_err(|e| format!("redis-cli is not runnable ({e}); install redis-tools"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let cluster = RedisCluster {
            nodes,
            tls: certs.map(|c| (c, tls_ports)),
        };
        cluster.wait_ready(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// Waits until every live node says `cluster_state:ok`, knows a master for all 16384 slots,
    /// and every live replica's link to its master is up.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let why = self.not_ready();
            match why {
                None => return Ok(()),
                Some(why) if Instant::now() > deadline => return Err(format!("cluster not ready: {why}")),
                Some(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn not_ready(&self) -> Option<String> {
        for node in self.nodes.iter().filter(|n| n.alive()) {
            let info: String = match query(node.port(), redis::cmd("CLUSTER").arg("INFO")) {
                Ok(i) => i,
                Err(e) => return Some(format!("{}: {e}", node.addr())),
            };
            if !info.contains("cluster_state:ok") || !info.contains("cluster_slots_ok:16384") {
                return Some(format!(
                    "{}: {}",
                    node.addr(),
                    info.lines().take(3).collect::<Vec<_>>().join(" ")
                ));
            }
            let repl: String = match query(node.port(), redis::cmd("INFO").arg("replication")) {
                Ok(i) => i,
                Err(e) => return Some(format!("{}: {e}", node.addr())),
            };
            if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
                return Some(format!("{}: replica not in sync", node.addr()));
            }
        }
        // Every live node agrees on who serves what: no failed master still holds slots.
        let view = self.topology();
        if view.iter().any(|n| n.master && n.failed && !n.slots.is_empty()) {
            return Some("a failed master still holds slots".into());
        }
        None
    }

    /// `redis+cluster://` with every master's and replica's address as a seed
    /// (`rediss+cluster://` and the TLS ports for a TLS cluster).
    pub fn url(&self) -> String {
        match &self.tls {
            None => {
                let seeds: Vec<String> = self.nodes.iter().map(Node::addr).collect();
                format!("redis+cluster://{}", seeds.join(","))
            }
            Some((_, ports)) => {
                let seeds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
                format!("rediss+cluster://{}", seeds.join(","))
            }
        }
    }

    /// The TLS options that trust a TLS cluster's CA (default ones for a plain cluster).
    pub fn tls_options(&self) -> crate::TlsOptions {
        crate::TlsOptions {
            ca_file: self.tls.as_ref().map(|(certs, _)| certs.ca()),
            ..crate::TlsOptions::default()
        }
    }

    /// The certificates of a TLS cluster.
    pub fn certs(&self) -> Option<&TestCerts> {
        self.tls.as_ref().map(|(certs, _)| certs)
    }

    /// The parsed target for [`url`](Self::url) (with [`tls_options`](Self::tls_options)).
    pub fn target(&self) -> crate::RedisTarget {
        crate::RedisTarget::with_tls(&self.url(), &self.tls_options()).expect("a loopback cluster URL parses")
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// `CLUSTER NODES` as one live node sees it.
    pub fn topology(&self) -> Vec<ClusterNode> {
        for node in self.nodes.iter().filter(|n| n.alive()) {
            if let Ok(text) = query::<String>(node.port(), redis::cmd("CLUSTER").arg("NODES")) {
                return parse_nodes(&text);
            }
        }
        Vec::new()
    }

    /// The master serving `key` now.
    pub fn master_for(&self, key: &str) -> ClusterNode {
        self.serving(key).unwrap_or_else(|| {
            panic!(
                "no master serves slot {} of {key}",
                crate::keys::hash_slot(key.as_bytes())
            )
        })
    }

    /// The live master serving `key` now, if one does (none in the middle of a failover).
    pub fn serving(&self, key: &str) -> Option<ClusterNode> {
        let slot = crate::keys::hash_slot(key.as_bytes());
        self.topology()
            .into_iter()
            .find(|n| n.master && !n.failed && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
    }

    /// Waits until every replica of the master on `port` has all of its writes so far.
    pub fn wait_replicated(&self, port: u16, timeout: Duration) {
        let view = self.topology();
        let id = &view.iter().find(|n| n.port == port).expect("a node on that port").id;
        let replicas: Vec<u16> = view
            .iter()
            .filter(|n| n.master_id.as_ref() == Some(id))
            .map(|n| n.port)
            .collect();
        assert!(!replicas.is_empty(), "the master on {port} has no replica");
        let deadline = Instant::now() + timeout;
        while !replicas.iter().all(|&r| super::node::caught_up(port, r)) {
            assert!(
                Instant::now() < deadline,
                "replicas of {port} did not catch up in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process of the node on `port` (SIGKILL).
    pub fn kill(&mut self, port: u16) {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
            .kill();
    }

    /// Starts the killed node on `port` again (it rejoins as a replica of the master that took
    /// its slots) and waits until the cluster is whole again.
    pub fn restart(&mut self, port: u16) {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
            .restart();
        self.wait_ready(Duration::from_secs(30)).expect("the cluster heals");
    }

    /// Moves `slot` with its keys from the master serving it to the master on `to`, the way
    /// `redis-cli --cluster reshard` does: IMPORTING / MIGRATING, `MIGRATE` in batches, then
    /// `SETSLOT NODE` on every master. Clients see `ASK` while it runs and `MOVED` after.
    pub fn move_slot(&self, slot: u16, to: u16) -> redis::RedisResult<usize> {
        let view = self.topology();
        let src = view
            .iter()
            .find(|n| n.master && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .expect("some master serves every slot")
            .clone();
        let dst = view
            .iter()
            .find(|n| n.port == to)
            .expect("the target is a node")
            .clone();
        if src.port == dst.port {
            return Ok(0);
        }
        query::<()>(
            dst.port,
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("IMPORTING")
                .arg(&src.id),
        )?;
        query::<()>(
            src.port,
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("MIGRATING")
                .arg(&dst.id),
        )?;
        let mut moved = 0;
        loop {
            let keys: Vec<String> = query(src.port, redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(10))?;
            if keys.is_empty() {
                break;
            }
            moved += keys.len();
            query::<()>(
                src.port,
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(dst.port)
                    .arg("")
                    .arg(0)
                    .arg(5000)
                    .arg("KEYS")
                    .arg(&keys),
            )?;
        }
        for n in view.iter().filter(|n| n.master && !n.failed) {
            query::<()>(
                n.port,
                redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("NODE").arg(&dst.id),
            )?;
        }
        Ok(moved)
    }
}

fn parse_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let port = f[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags = f[2];
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|a| (a, a)),
                })
                .collect();
            Some(ClusterNode {
                id: f[0].to_owned(),
                port,
                master: flags.contains("master"),
                failed: flags.contains("fail") && !flags.contains("fail?"),
                slots,
                master_id: (f[3] != "-").then(|| f[3].to_owned()),
            })
        })
        .collect()
}
