#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| auditgate_fuzz::signed_notes(data));
