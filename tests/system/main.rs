//! System tests: real `redis-server` per test, real workers, real processes where it matters.
//!
//! One test binary (faster to link) with a module per area. The fixtures are the engine's
//! (`rivulet::testing`); tests that keep to their own queue share the binary's one server
//! (`Fixture::shared`), the others start their own (`Fixture::with_queue`) and say why.

mod bench;
mod core;
mod durability;
mod failures;
mod groups;
mod idle;
mod interop;
mod lifecycle;
mod limits;
mod reliability;
mod shutdown;
mod tls;
