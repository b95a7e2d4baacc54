//! rivulet-fleet: the one supervisor of Rivulet worker processes, and what the two binaries
//! that start them (`worker-cli`, `autoscaler`) share.
//!
//! # Layout
//! - [`supervisor`]: [`Fleet`], which keeps a settable number of worker processes running:
//!   starts, stops idle ones first, replaces crashed ones with backoff, recycles clean exits
//!   and processes above a memory limit, SIGKILLs after a deadline, drains on shutdown.
//!   `worker-cli --workers N` runs it at a fixed size; the autoscaler's process actuator moves
//!   its target.
//! - [`policy`]: the pure rules the supervisor applies (restart delay, what an exit means,
//!   the crash-loop guard), with time as an input.
//! - [`contract`]: the parent/child contract: the environment a child gets
//!   ([`SUPERVISOR_PID_ENV`], [`SLOT_ENV`]) and the child's side of it (die with the parent).
//! - [`signals`]: SIGTERM/SIGINT onto a [`Stop`]: the first drains, the second stops at once.
//! - [`logging`]: tracing to stderr as text or JSON ([`LogFormat`]).
//! - [`usage`]: [`UsageError`], bad input found after parsing (exit code 2).
//! - [`memory`]: resident memory of a process, and sizes for people.
//! - [`probes`]: the one HTTP server of `--metrics-addr` (`/metrics`, `/healthz`, `/readyz`),
//!   loopback unless a token is set, which both binaries serve through.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod contract;
pub mod logging;
pub mod memory;
pub mod policy;
pub mod probes;
pub mod signals;
pub mod supervisor;
pub mod usage;

pub use contract::{METRICS_SOCKET_ENV, SLOT_ENV, SUPERVISOR_PID_ENV};
pub use logging::LogFormat;
pub use signals::Stop;
pub use supervisor::{Fleet, FleetConfig, FleetError, FleetHandle, FleetReport, FleetStatus};
pub use usage::UsageError;
