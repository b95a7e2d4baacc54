//! Bad input found after parsing: a combination of flags, or a value the engine rejects.
//! Both binaries report it like a clap error (with a usage line) and exit 2; every other
//! failure exits 1.

/// Bad input, in terms of the flags. Found in an `anyhow` chain with
/// `e.chain().any(|c| c.is::<UsageError>())`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    /// A usage error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        UsageError(message.into())
    }
}

/// The exit code of a usage error.
pub const EXIT_USAGE: u8 = 2;
