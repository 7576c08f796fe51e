//! Frontend byte stream: framing (`Frames`, `frame_len`) at every split point, and every
//! message view (Parse, Bind, Describe/Close, Query, SASL, password) over each frame.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_fuzz::fuzz_frontend(data);
});
