//! W3C trace context as the gateway keeps it: [`TraceParent`], a `traceparent` header value
//! (<https://www.w3.org/TR/trace-context/#traceparent-header>) that is valid by construction.
//! The store records the one of the RPC that created an operation, so that whoever settles
//! the operation later (the reconciler) can link its trace to the request's. Parsing only: no
//! propagation, no span creation (that is the server's telemetry).

use std::fmt;

/// Length of a version-00 `traceparent`: `vv-<32 hex>-<16 hex>-<2 hex>`. Later versions may
/// append fields after it; the gateway keeps these 55 characters.
const LEN: usize = 55;

/// Where the trace id, the parent (span) id and the flags start and end.
const TRACE_ID: std::ops::Range<usize> = 3..35;
const SPAN_ID: std::ops::Range<usize> = 36..52;
const FLAGS: std::ops::Range<usize> = 53..55;

/// A valid W3C `traceparent` header value, e.g.
/// `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`: a version, a trace id, the
/// parent (span) id and the trace flags, all lowercase hex. The trace and parent ids are not
/// all zeros. Only [`TraceParent::parse`] builds one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceParent(String);

impl TraceParent {
    /// The `traceparent` in `value`, or `None` when it is not valid. Version `00` must be
    /// exactly 55 characters. A later version (other than the forbidden `ff`) is accepted when
    /// its first 55 characters are a valid version-00 layout and whatever follows them starts
    /// with `-`, as the W3C's forward compatibility rule asks; only those 55 characters are
    /// kept, since the fields after them mean nothing to this version.
    pub fn parse(value: &str) -> Option<Self> {
        let bytes = value.as_bytes();
        let version = bytes.get(..2)?;
        if !version.iter().all(|&b| is_lower_hex(b)) || version == b"ff" {
            return None;
        }
        let valid_length = if version == b"00" {
            bytes.len() == LEN
        } else {
            bytes.len() == LEN || (bytes.len() > LEN && bytes[LEN] == b'-')
        };
        if !valid_length {
            return None;
        }
        let head = &bytes[..LEN];
        let dashes_in_place = [2, TRACE_ID.end, SPAN_ID.end]
            .into_iter()
            .all(|at| head[at] == b'-');
        let hex = |range: std::ops::Range<usize>| head[range].iter().all(|&b| is_lower_hex(b));
        let not_zero = |range: std::ops::Range<usize>| head[range].iter().any(|&b| b != b'0');
        let valid = dashes_in_place
            && hex(TRACE_ID)
            && hex(SPAN_ID)
            && hex(FLAGS)
            && not_zero(TRACE_ID)
            && not_zero(SPAN_ID);
        // Every byte checked is ASCII, so 55 bytes are 55 characters and a char boundary.
        valid.then(|| Self(value[..LEN].to_owned()))
    }

    /// The header value (55 characters).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trace id: 32 lowercase hex characters, the id a trace backend finds the trace by.
    pub fn trace_id(&self) -> &str {
        &self.0[TRACE_ID]
    }

    /// The parent id: 16 lowercase hex characters, the span of the caller that sent it.
    pub fn span_id(&self) -> &str {
        &self.0[SPAN_ID]
    }

    /// The `sampled` flag (bit 0 of the trace flags): whether the caller may have recorded
    /// the trace.
    pub fn sampled(&self) -> bool {
        let flags = &self.0[FLAGS];
        // Parsed as two hex digits, so this cannot fail; an impossible failure reads "not
        // sampled" rather than panicking.
        u8::from_str_radix(flags, 16).is_ok_and(|f| f & 0x01 == 0x01)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `0-9` or `a-f`: W3C trace context allows lowercase hex only.
fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_version_00_value_is_read_apart() {
        let tp = TraceParent::parse(VALID).unwrap_or_else(|| panic!("{VALID} refused"));
        assert_eq!(tp.as_str(), VALID);
        assert_eq!(tp.to_string(), VALID);
        assert_eq!(tp.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.span_id(), "00f067aa0ba902b7");
        assert!(tp.sampled());
        let unsampled = TraceParent::parse(&VALID.replace("-01", "-00"))
            .unwrap_or_else(|| panic!("unsampled refused"));
        assert!(!unsampled.sampled());
        // Flags other than `sampled` are allowed, and do not make it sampled.
        let other_flags = TraceParent::parse(&VALID.replace("-01", "-fe"))
            .unwrap_or_else(|| panic!("other flags refused"));
        assert!(!other_flags.sampled());
        assert!(TraceParent::parse(&VALID.replace("-01", "-03")).is_some_and(|tp| tp.sampled()));
    }

    #[test]
    fn invalid_values_are_refused() {
        let cases = [
            "",
            "00",
            // Too short, too long (version 00 is exactly 55 characters).
            &VALID[..54],
            &format!("{VALID}-extra"),
            &format!("{VALID}0"),
            // Uppercase hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // All-zero ids.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Not hex, separators out of place.
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-3600f067aa0ba902b7-01",
            // Version ff is forbidden, whatever follows.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Multi-byte characters where ASCII belongs.
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
            "é0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for case in cases {
            assert_eq!(TraceParent::parse(case), None, "{case:?}");
        }
    }

    #[test]
    fn later_versions_keep_the_version_00_fields() {
        let v1 = VALID.replacen("00", "01", 1);
        let tp = TraceParent::parse(&v1).unwrap_or_else(|| panic!("{v1} refused"));
        assert_eq!(tp.as_str(), v1);
        // Fields after the first 55 characters are dropped.
        let longer = format!("{v1}-what-comes-next");
        let tp = TraceParent::parse(&longer).unwrap_or_else(|| panic!("{longer} refused"));
        assert_eq!(tp.as_str(), v1);
        assert_eq!(tp.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.span_id(), "00f067aa0ba902b7");
        assert!(tp.sampled());
        let cc = VALID.replacen("00", "cc", 1);
        assert!(TraceParent::parse(&format!("{cc}-")).is_some());
        // But what follows must be a new field, and the known fields must be valid.
        assert_eq!(TraceParent::parse(&format!("{v1}x")), None);
        assert_eq!(TraceParent::parse(&v1[..54]), None);
        assert_eq!(
            TraceParent::parse("01-00000000000000000000000000000000-00f067aa0ba902b7-01-x"),
            None
        );
        assert_eq!(
            TraceParent::parse(&format!("{}-x", VALID.replacen("00", "ff", 1))),
            None
        );
    }
}
