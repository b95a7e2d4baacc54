//! worker-cli end to end: the real binary, its real worker processes, a private `redis-server`
//! per test. Every spawned process is killed by a guard when a test ends, pass or fail; a
//! failing test prints the supervisor's log.
//!
//! One test binary (linked once, its tests run in parallel) with a module per subject:
//! `work` (the supervisor and its worker processes), `exec` (commands as handlers), `admin`
//! (the admin commands, dead letters and queue deletion against the engine's own view),
//! `compiled` (a kind compiled in through `main_with`, run in this process), `serve`
//! (long-lived handler processes on the `--serve` line protocol),
//! `acl` (the documented Redis ACL), `tls` (rediss:// and the --tls-* flags), `settings`
//! (eviction policy and durability checked at start), `metrics` (`--metrics-addr`: the box's
//! numbers added up, the probes), `usage` (bad flags, help, unreachable
//! Redis), `demo`, `schedule` (periodic tasks: racing schedulers, missed fires, the file), `ops` (what operators see: start-time checks, JSON logs, output shapes, tables);
//! `common` holds the process helpers.

mod common;

mod acl;
mod admin;
mod cluster;
mod compiled;
mod dashboard;
mod demo;
mod dlq;
mod docs;
mod drills;
mod exec;
mod faults;
mod groups;
mod limits;
mod metrics;
mod ops;
mod queue;
mod schedule;
mod serve;
mod settings;
mod tls;
mod usage;
mod work;
