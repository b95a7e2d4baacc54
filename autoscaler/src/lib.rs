//! The Rivulet autoscaler: keeps each priority's waiting time inside its SLA with as few worker
//! processes as that takes.
//!
//! # Layout
//! - [`policy`]: the pure control law (observation + current count + SLA -> desired count and
//!   a reason). No I/O.
//! - [`sim`]: a deterministic simulator that drives the real policy in virtual time with load
//!   shapes and measures breach time, worker-seconds against an oracle and flapping.
//! - [`observe`]: reads a queue's backlog, in-flight, oldest age, smoothed rates and live
//!   workers from Redis each tick.
//! - [`actuator`]: local worker processes (through `rivulet_fleet`'s supervisor, at a moving
//!   target) or a scale command.
//! - [`metrics`]: Prometheus metrics, served through `rivulet_fleet::probes`.
//! - [`daemon`]: the observe -> decide -> act loop and its settings.
//! - [`cli`]: the flags, their resolution into daemon settings, and the exit codes.

#![forbid(unsafe_code)]

pub mod actuator;
pub mod cli;
pub mod daemon;
pub mod metrics;
pub mod observe;
pub mod policy;
pub mod sim;
