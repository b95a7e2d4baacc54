//! worker-cli
