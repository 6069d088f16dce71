//! Generated code for the `refundgateway.v1` API: prost messages, the tonic server and client
//! for `RefundGatewayService`, and the encoded file descriptor set that reflection serves.
//! This crate holds no logic; the server converts these messages to domain types in one place.

#![allow(missing_docs, clippy::all, missing_debug_implementations)]

/// `refundgateway.v1`: the messages and the service.
pub mod v1 {
    tonic::include_proto!("refundgateway.v1");
}

/// The encoded `FileDescriptorSet` of `refund_gateway.proto` (with its imports), for
/// `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/refund_gateway_descriptor.bin"));
