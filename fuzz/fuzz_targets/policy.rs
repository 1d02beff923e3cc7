//! cargo-fuzz target `policy`: see `agentid_fuzz::policy`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = agentid_fuzz::policy(data);
});
