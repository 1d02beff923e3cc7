//! cargo-fuzz target `revocation_list`: see `agentid_fuzz::revocation_list`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = agentid_fuzz::revocation_list(data);
});
