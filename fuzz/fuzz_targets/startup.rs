//! The untagged startup packet: `startup_len` + `parse_startup`, the parameter accessors,
//! the settings derived from it, and the writers' round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_fuzz::check_startup(data);
});
