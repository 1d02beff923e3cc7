//! cargo-fuzz target `chain_signed`: see `agentid_fuzz::chain_signed`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = agentid_fuzz::chain_signed(data);
});
