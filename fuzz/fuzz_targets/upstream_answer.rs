#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kizen_gateway::fuzzing::upstream_answer(data));
