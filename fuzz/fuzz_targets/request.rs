//! cargo-fuzz target `request`: the body is `refund_gateway_tests::fuzz::request` (see
//! `tests/src/fuzz.rs`), which the test command also runs on the stable toolchain.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| refund_gateway_tests::fuzz::request(data));
