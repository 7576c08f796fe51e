//! MongoDB wire stream: the frame decoder at split points, and every view Sluice takes of a
//! frame (OP_MSG, OP_QUERY, routing facts, hello options, reply inspection, id rewrite).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_fuzz::fuzz_mongo(data);
});
