//! Past one Redis: the engine on a Redis Cluster (3 masters, 3 replicas) and behind Sentinel
//! (a master, a replica, 3 sentinels), each started by the test harness on loopback ports.
//!
//! `cluster` runs the core scenarios on one cluster shared by the binary (a queue per test:
//! any command or script spanning slots would fail there with `CROSSSLOT`); `failover`,
//! `reshard` and `sentinel` break or move things, on a cluster or setup of their own (the
//! resharding test moves only its own queue's slot, on the shared cluster); `tls` runs a
//! cluster over TLS (`rediss+cluster://`).

mod support;

mod cluster;
mod failover;
mod reshard;
mod sentinel;
mod tls;
