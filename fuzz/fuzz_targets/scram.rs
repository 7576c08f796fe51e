//! The SCRAM-SHA-256 server: arbitrary client messages, a correct nonce with an arbitrary
//! tail, and complete exchanges (correct, tampered, unknown user).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_fuzz::fuzz_scram(data);
});
