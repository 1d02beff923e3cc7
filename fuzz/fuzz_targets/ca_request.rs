//! cargo-fuzz target `ca_request`: see `agentid_fuzz::ca_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = agentid_fuzz::ca_request(data);
});
