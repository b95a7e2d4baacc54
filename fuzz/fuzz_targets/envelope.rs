//! The envelope decoder on arbitrary bytes: one `name=value` per line is an entry's fields
//! (`rivulet::testing::decoders::check_envelope` says what must hold).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rivulet::testing::decoders::check_envelope(data);
});
