//! Shared by the autoscaler's end-to-end tests.

use std::path::PathBuf;

/// worker-cli is built next to this package's binary by `cargo test --workspace`; build it
/// when a narrower run did not.
pub fn worker_cli() -> PathBuf {
    rivulet::testing::workspace_binary(env!("CARGO_BIN_EXE_autoscaler"), "worker-cli", "worker-cli")
}
