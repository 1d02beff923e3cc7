//! cargo-fuzz target `audit_export`: see `agentid_fuzz::audit_export`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = agentid_fuzz::audit_export(data);
});
