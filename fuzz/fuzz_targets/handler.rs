#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    meshroot::fuzzing::handler(data);
});
