//! The few MessagePack readers the engine needs where decoding into values would copy: arrays
//! of strings, read in place (a task's packed `task` field, the sorted-set members the scripts
//! pack with `cmsgpack`, the finished indexes' id lists).

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
