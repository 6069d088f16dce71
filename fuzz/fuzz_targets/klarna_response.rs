//! cargo-fuzz target `klarna_response`: the body is `refund_gateway_tests::fuzz::klarna_response` (see
//! `tests/src/fuzz.rs`), which the test command also runs on the stable toolchain.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| refund_gateway_tests::fuzz::klarna_response(data));
