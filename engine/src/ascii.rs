//! Decimal numbers read from the bytes Redis hands back, by hand: stream ids and an entry's
//! integer fields are read for every task, and `str::parse` (a UTF-8 check, then a generic
//! parser) was a measurable share of decoding one (docs/benchmarks.md).

/// A run of ASCII digits as a `u64`: one to 20 digits (a `u64`'s most), nothing else (no sign,
/// no spaces), `None` on overflow.
pub(crate) fn decimal(s: &[u8]) -> Option<u64> {
    // Up to 19 digits cannot overflow a `u64`: only a 20-digit run needs the checks.
    const SAFE: usize = 19;
    if s.is_empty() || s.len() > SAFE + 1 {
        return None;
    }
    let (head, tail) = s.split_at(s.len().min(SAFE));
    let mut n = 0u64;
    for &d in head {
        let v = d.wrapping_sub(b'0');
        if v > 9 {
            return None;
        }
        n = n * 10 + u64::from(v);
    }
    match tail {
        [] => Some(n),
        [d] if d.is_ascii_digit() => n.checked_mul(10)?.checked_add(u64::from(d - b'0')),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::decimal;

    #[test]
    fn digits_only_and_no_overflow() {
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"1700000000000"), Some(1_700_000_000_000));
        assert_eq!(decimal(b"18446744073709551615"), Some(u64::MAX));
        // Nineteen digits take the unchecked loop, a twentieth the checked step.
        assert_eq!(decimal(b"9999999999999999999"), Some(9_999_999_999_999_999_999));
        assert_eq!(decimal(b"00000000000000000001"), Some(1));
        for bad in [
            &b""[..],
            b"18446744073709551616",
            b"99999999999999999999",
            b"000000000000000000001",
            b"1111111111111111111a",
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"1a",
            b"\xff",
        ] {
            assert_eq!(decimal(bad), None, "{bad:?}");
        }
    }
}
