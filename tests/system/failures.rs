//! Failure path tests (see issue 3).
