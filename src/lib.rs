//! Test, bench and example host for Rivulet; no code of its own.
