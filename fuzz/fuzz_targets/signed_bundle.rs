//! cargo-fuzz target `signed_bundle`: see `agentid_fuzz::signed_bundle`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = agentid_fuzz::signed_bundle(data);
});
