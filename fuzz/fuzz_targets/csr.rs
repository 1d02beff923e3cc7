//! cargo-fuzz target `csr`: see `agentid_fuzz::csr`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = agentid_fuzz::csr(data);
});
