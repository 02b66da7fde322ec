#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    llamagen_tests::fuzz::pass_contained_panics();
    llamagen_tests::fuzz::png_record(data)
});
