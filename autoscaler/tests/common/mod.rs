//! Shared by the autoscaler's end-to-end tests.

use std::path::PathBuf;
use std::process::Command;

/// worker-cli is built next to this package's binary by `cargo test --workspace`; build it
/// when a narrower run did not.
pub fn worker_cli() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_autoscaler"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = dir.join("worker-cli");
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "worker-cli", "--bin", "worker-cli"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "could not build worker-cli");
    }
    assert!(path.exists(), "worker-cli not found at {}", path.display());
    path
}
