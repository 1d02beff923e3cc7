//! cargo-fuzz target `frame`: see `agentid_fuzz::frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = agentid_fuzz::frame(data);
});
