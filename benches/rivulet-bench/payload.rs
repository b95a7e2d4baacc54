//! The benchmark's task payload: when the task was sent, whether it is measured, and padding
//! up to the payload size under test.
//!
//! Layout (`bytes` codec): 16 ASCII digits of microseconds since the Unix epoch, then `m`
//! (measured) or `w` (warm-up, not recorded), then `.` up to the requested size. The clock is
//! the wall clock, shared by the producer and the worker processes on this one machine.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// The payload size of every scenario but `payload`, bytes.
pub const BASE_PAYLOAD: usize = 64;

/// Handler kind of the drain runs: does nothing but note when it started.
pub const KIND_NOOP: &str = "noop";
/// Handler kind of the latency runs: also records the latency carried in the payload.
pub const KIND_LATENCY: &str = "latency";

const STAMP: usize = 16;
/// The smallest payload: the stamp and the flag.
pub const HEADER: usize = STAMP + 1;

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A payload of `size` bytes (at least [`HEADER`]) stamped with `sent_us`.
pub fn make(size: usize, sent_us: u64, measured: bool) -> Bytes {
    let mut p = Vec::with_capacity(size.max(HEADER));
    p.extend_from_slice(format!("{:016}", sent_us % 10u64.pow(STAMP as u32)).as_bytes());
    p.push(if measured { b'm' } else { b'w' });
    p.resize(size.max(HEADER), b'.');
    Bytes::from(p)
}

/// The send time and the measured flag of a payload made by [`make`].
pub fn parse(p: &[u8]) -> Option<(u64, bool)> {
    let stamp = std::str::from_utf8(p.get(..STAMP)?).ok()?.parse().ok()?;
    Some((stamp, *p.get(STAMP)? == b'm'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_roundtrip_and_have_the_requested_size() {
        let p = make(64, 1_732_000_000_123_456, true);
        assert_eq!(p.len(), 64);
        assert_eq!(parse(&p), Some((1_732_000_000_123_456, true)));
        let small = make(1, 7, false);
        assert_eq!(small.len(), HEADER);
        assert_eq!(parse(&small), Some((7, false)));
        assert_eq!(parse(b"garbage"), None);
    }
}
