//! The relay's protocol state machine (`Exchange`) driven from both sides: client frames,
//! server bytes and server switches, in any order (see `sluice_pg::session::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_pg::session::fuzzing::drive_exchange(data);
});
