//! cargo-fuzz target `http_presentation`: see `agentid_fuzz::http_presentation`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = agentid_fuzz::http_presentation(data);
});
