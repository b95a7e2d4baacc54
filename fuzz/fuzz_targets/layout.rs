//! The queue layout parser on arbitrary bytes, as a registry entry could hold them
//! (`rivulet::testing::decoders::check_layout` says what must hold).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rivulet::testing::decoders::check_layout(data);
});
