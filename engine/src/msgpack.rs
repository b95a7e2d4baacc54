//! The few MessagePack readers the engine needs where decoding into values would copy: arrays
//! of strings, read in place (a task's packed `task` field, the sorted-set members the scripts
//! pack with `cmsgpack`, the finished indexes' id lists); and the one writer it needs per task,
//! a string, by hand.

/// A MessagePack length of `n` bytes, big-endian, at `at`.
fn len(m: &[u8], at: &mut usize, n: usize) -> Option<usize> {
    let b = m.get(*at..*at + n)?;
    *at += n;
    Some(b.iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x)))
}

/// A MessagePack string (str or bin types, as Lua's `cmsgpack.pack` writes strings) at `at`.
pub(crate) fn string<'a>(m: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let tag = *m.get(*at)?;
    *at += 1;
    let n = match tag {
        0xa0..=0xbf => usize::from(tag & 0x1f),
        0xd9 | 0xc4 => len(m, at, 1)?,
        0xda | 0xc5 => len(m, at, 2)?,
        0xdb | 0xc6 => len(m, at, 4)?,
        _ => return None,
    };
    let s = m.get(*at..*at + n)?;
    *at += n;
    Some(s)
}

/// The length of the MessagePack array that starts `m`, and where its items start.
pub(crate) fn array(m: &[u8]) -> Option<(usize, usize)> {
    let mut at = 1;
    let count = match *m.first()? {
        tag @ 0x90..=0x9f => usize::from(tag & 0x0f),
        0xdc => len(m, &mut at, 2)?,
        0xdd => len(m, &mut at, 4)?,
        _ => return None,
    };
    Some((count, at))
}

/// Writes `s` as a MessagePack str (fixstr, str 8, 16 or 32 by its length: the bytes
/// `rmp::encode::write_str_len` writes, which a test holds it to), whatever the bytes: Lua's
/// cmsgpack decodes no bin type. By hand because it runs for every field of every final
/// record and compact entry, where `rmp`'s writer (through `std::io::Write`, a call per byte
/// of the marker) was a fifth of packing one. `s` must be under 4 GiB.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    match n {
        0..32 => out.push(0xa0 | n as u8),
        32..256 => out.extend_from_slice(&[0xd9, n as u8]),
        256..65_536 => {
            out.push(0xda);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(0xdb);
            out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
        }
    }
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_written_as_rmp_writes_them_and_read_back() {
        for n in [0usize, 1, 31, 32, 255, 256, 65_535, 65_536, 100_000] {
            let s: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let mut ours = Vec::new();
            put_str(&mut ours, &s);
            let mut theirs = Vec::new();
            rmp::encode::write_str_len(&mut theirs, n as u32).unwrap();
            theirs.extend_from_slice(&s);
            assert_eq!(ours, theirs, "{n} bytes");
            let mut at = 0;
            assert_eq!(string(&ours, &mut at), Some(&s[..]));
            assert_eq!(at, ours.len());
        }
    }
}
