//! cargo-fuzz target `trust_bundle`: see `agentid_fuzz::trust_bundle`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = agentid_fuzz::trust_bundle(data);
});
