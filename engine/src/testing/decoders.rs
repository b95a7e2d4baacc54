//! The properties the fuzz targets (`fuzz/`) and the bounded random-input test
//! (`engine/tests/decoders_never_panic.rs`) check on the two decoders whose input comes from
//! outside the engine (other languages' producers, hand-written registry entries): the
//! envelope decoder (`Envelope::from_fields`, then `Codec::decode`) and the queue layout parser
//! (`Queue::from_layout_json`). Each takes raw bytes, never panics, and answers a typed error
//! for a bad input; a good input reads back as written.

use crate::{Codec, Envelope, Error, Queue};

/// An entry's fields from raw bytes: one `name=value` per line (a line without `=` is a name
/// with an empty value), the shape a stream entry has.
pub fn fields_of(data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    data.split(|&b| b == b'\n')
        .map(|line| match line.iter().position(|&b| b == b'=') {
            Some(i) => (line[..i].to_vec(), line[i + 1..].to_vec()),
            None => (line.to_vec(), Vec::new()),
        })
        .collect()
}

/// The lines [`fields_of`] reads back into an envelope's fields.
pub fn lines_of(envelope: &Envelope) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in envelope.fields() {
        if !out.is_empty() {
            out.push(b'\n');
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        out.extend_from_slice(&value);
    }
    out
}

/// Decodes `data` as an entry's fields; panics only if a property breaks: a decoded envelope
/// must survive its retry settings' check, its payload's decoding (a value or a typed
/// `Codec` error) and a round trip through its own fields.
pub fn check_envelope(data: &[u8]) {
    let fields = fields_of(data);
    let Ok(envelope) = Envelope::from_fields(
        fields
            .iter()
            .map(|(k, v)| (k.as_slice(), bytes::Bytes::from(v.clone()))),
    ) else {
        return; // a typed `Malformed`: what the worker buries with its reason
    };
    let _ = envelope.retry_policy(crate::RetryPolicy::default());
    match envelope.codec.decode::<serde_json::Value>(&envelope.payload) {
        Ok(_) | Err(Error::Codec { .. }) => {}
        Err(other) => panic!("a payload that does not decode must be a codec error, not {other:?}"),
    }
    let again = Envelope::from_fields(envelope.fields()).expect("an envelope's own fields decode");
    assert_eq!(again, envelope, "an envelope reads back as written");
    let _ = Codec::parse(envelope.codec.as_str().as_bytes()).expect("a codec's own name parses");
}

/// Parses `data` as a queue's stored layout; panics only if a property breaks: bad JSON is a
/// `Protocol` error, a bad layout a typed error, and a good one reads back as written.
pub fn check_layout(data: &[u8]) {
    let json = String::from_utf8_lossy(data);
    match Queue::from_layout_json("fuzz", &json) {
        Ok(queue) => {
            let again = Queue::from_layout_json("fuzz", &queue.layout_json()).expect("a queue's own layout parses");
            assert_eq!(again, queue, "a layout reads back as written");
            assert_eq!(
                queue.all_shards().count(),
                queue.layout().priorities.len() * usize::from(queue.layout().shards)
            );
        }
        Err(
            Error::Protocol(_)
            | Error::InvalidConfig { .. }
            | Error::UnknownPriority { .. }
            | Error::InvalidQueueName { .. },
        ) => {}
        Err(other) => panic!("a bad layout must be a typed input error, not {other:?}"),
    }
}

/// Valid inputs for the mutations to start from: what a producer writes.
pub fn seeds() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut full = Envelope::new(
        "email.send",
        bytes::Bytes::from_static(br#"{"to":"a@b.c","n":[1,2.5,null]}"#),
        Codec::Json,
    );
    full.attempt = 2;
    full.max_attempts = Some(7);
    full.timeout_ms = Some(1500);
    full.backoff_base_ms = Some(100);
    full.backoff_factor = Some(1.5);
    full.backoff_cap_ms = Some(60_000);
    full.error = Some("timed out".into());
    let packed = rmp_serde::to_vec(&("x", 1u8, [true, false])).expect("a tuple encodes");
    let envelopes = vec![
        lines_of(&full),
        lines_of(&Envelope::new("k", bytes::Bytes::from(packed), Codec::MsgPack)),
        lines_of(&Envelope::new(
            "raw",
            bytes::Bytes::from_static(&[0, 159, 146, 150]),
            Codec::Bytes,
        )),
    ];
    let layouts = vec![
        br#"{"priorities":["high","normal","low"],"shards":1}"#.to_vec(),
        br#"{"priorities":["p0"],"shards":16}"#.to_vec(),
    ];
    (envelopes, layouts)
}

/// `seed` with a few random byte edits (flip, insert, delete, duplicate a span), from `rng`.
pub fn mutate(rng: &mut fastrand::Rng, seed: &[u8]) -> Vec<u8> {
    const INTERESTING: &[u8] = b"=\n{}[]\",:0-9eE.+ \xff\x00";
    let mut out = seed.to_vec();
    for _ in 0..rng.usize(1..=8) {
        let at = rng.usize(..=out.len());
        match rng.u8(..5) {
            0 if at < out.len() => out[at] ^= 1 << rng.u8(..8),
            1 => out.insert(at, INTERESTING[rng.usize(..INTERESTING.len())]),
            2 if at < out.len() => {
                out.remove(at);
            }
            3 if at < out.len() => {
                let end = rng.usize(at..=out.len().min(at + 16));
                let span = out[at..end].to_vec();
                out.splice(at..at, span);
            }
            _ => out.insert(at, rng.u8(..)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stable-toolchain stand-in for `cargo fuzz`: bounded, seeded (the seed is printed so
    /// a failure can be replayed), random bytes and mutations of valid inputs.
    #[test]
    fn random_and_mutated_inputs_never_panic_and_get_typed_errors() {
        let seed = fastrand::u64(..);
        eprintln!("decoder fuzz seed {seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        let (envelopes, layouts) = seeds();
        for s in &envelopes {
            let decoded = Envelope::from_fields(fields_of(s).into_iter().map(|(k, v)| (k, bytes::Bytes::from(v))));
            assert!(decoded.is_ok(), "a seed decodes: {decoded:?}");
        }
        for l in &layouts {
            assert!(Queue::from_layout_json("q", std::str::from_utf8(l).unwrap()).is_ok());
        }
        let mut decoded = 0;
        for i in 0..20_000 {
            let input = match i % 4 {
                0 => (0..rng.usize(..200)).map(|_| rng.u8(..)).collect(),
                1 | 2 => {
                    let pick = rng.usize(..envelopes.len());
                    mutate(&mut rng, &envelopes[pick])
                }
                _ => {
                    let pick = rng.usize(..layouts.len());
                    mutate(&mut rng, &layouts[pick])
                }
            };
            check_envelope(&input);
            check_layout(&input);
            decoded += usize::from(
                Envelope::from_fields(fields_of(&input).into_iter().map(|(k, v)| (k, bytes::Bytes::from(v)))).is_ok(),
            );
        }
        // Mutations keep some inputs valid: the round-trip checks ran, not only the error path.
        assert!(decoded > 100, "only {decoded} of 20000 inputs decoded");
    }

    #[test]
    fn known_bad_inputs_are_typed_errors() {
        let bad = Envelope::from_fields(fields_of(b"id=1\nkind=\npayload=x\ncodec=json"));
        assert!(bad.is_err(), "{bad:?}");
        for json in [
            "",
            "{",
            "[]",
            r#"{"priorities":[],"shards":1}"#,
            r#"{"priorities":["a"],"shards":0}"#,
            r#"{"priorities":["a","a"],"shards":1}"#,
        ] {
            let q = Queue::from_layout_json("q", json);
            assert!(
                matches!(
                    q,
                    Err(Error::Protocol(_) | Error::InvalidConfig { .. } | Error::UnknownPriority { .. })
                ),
                "{json:?}: {q:?}"
            );
        }
    }
}
