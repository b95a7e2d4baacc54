//! System tests: real `redis-server` per test, real workers, real processes where it matters.
//!
//! One test binary (faster to link) with a module per area; `support` holds the fixtures.

mod support;

mod core;
mod durability;
mod failures;
mod interop;
mod tls;
