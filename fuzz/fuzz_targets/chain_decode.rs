//! cargo-fuzz target `chain_decode`: see `agentid_fuzz::chain_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = agentid_fuzz::chain_decode(data);
});
