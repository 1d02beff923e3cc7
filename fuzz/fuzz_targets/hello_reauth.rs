//! cargo-fuzz target `hello_reauth`: see `agentid_fuzz::hello_reauth`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = agentid_fuzz::hello_reauth(data);
});
