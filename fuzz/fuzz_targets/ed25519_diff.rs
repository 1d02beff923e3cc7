//! cargo-fuzz target `ed25519_diff`: see `agentid_fuzz::ed25519_diff`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = agentid_fuzz::ed25519_diff(data);
});
