//! The bounded run of the fuzz targets on the stable toolchain (see `fuzz/README.md`): every
//! file of `fuzz/corpus/<target>/` once, then for each target proptest's arbitrary byte
//! strings and structure-aware mutations of its corpus (bytes flipped, inserted, deleted or
//! duplicated; JSON values replaced, removed or duplicated; protobuf fields replaced, removed,
//! duplicated or added). A panic in a target fails the test with the smallest input proptest
//! found; add that input to the target's corpus when the bug is fixed.
//!
//! `PROPTEST_CASES` sets the cases per target and driver (default [`DEFAULT_CASES`]).
//! `cargo test -p refund-gateway-tests --test fuzz -- --ignored write_seed_corpus` rewrites
//! the generated seeds of `fuzz/corpus/` (see [`write_seed_corpus`]).

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;
use refund_gateway::convert;
use refund_gateway::protocol::{KlarnaCall, encoding};
use refund_gateway::status;
use refund_gateway_domain::{
    Amount, CaptureId, Currency, GatewayError, KlarnaRefund, LineItem, LineItemDraft, OrderId,
    OrderLineDraft, PartnerRefund, PaymentCaptureId, PaymentTransactionId, Violations,
};
use refund_gateway_proto::v1 as pb;
use refund_gateway_tests::fuzz::{self, TARGETS, Target};
use serde_json::{Value, json};

/// Cases per target of each driver (arbitrary bytes, mutated corpus).
const DEFAULT_CASES: u32 = 2_000;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

fn target(name: &str) -> Target {
    TARGETS
        .into_iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
}

/// The files of a target's corpus, by name.
fn corpus(name: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = fuzz::corpus_dir().join(name);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    entries
        .map(|entry| {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, bytes)
        })
        .filter(|(name, _)| !name.starts_with('.'))
        .collect()
}

#[test]
fn every_corpus_file_runs_once() {
    for target in TARGETS {
        let files = corpus(target.name);
        assert!(
            files.len() >= 3,
            "fuzz/corpus/{} has {} files: seed it",
            target.name,
            files.len()
        );
        for (file, bytes) in files {
            if std::panic::catch_unwind(|| (target.run)(&bytes)).is_err() {
                panic!(
                    "fuzz target {} panicked on fuzz/corpus/{}/{file}",
                    target.name, target.name
                );
            }
        }
    }
}

/// An input, shown as escaped bytes when a case fails.
#[derive(Clone)]
struct Input(Vec<u8>);

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

/// Inputs the fuzzers found a bug with, kept in the corpus: each must now pass.
#[test]
fn regressions() {
    for (target_name, file, what) in [
        (
            "request",
            "regression_list_attention_min_seconds",
            "ListAttention with pending_older_than.seconds = i64::MIN overflowed prost-types' \
             Duration conversion",
        ),
        (
            "request",
            "regression_list_attention_millennia",
            "ListAttention's pending_older_than of millennia, subtracted from now, left time's \
             range",
        ),
        (
            "request",
            "regression_reconcile_to_earliest",
            "Reconcile's default from, a day before a to at the earliest time there is, left \
             time's range",
        ),
        (
            "klarna_response",
            "regression_transaction_captures_sum_overflow",
            "a partner transaction's captured amount, summed from its captures, overflowed",
        ),
        (
            "klarna_response",
            "regression_capture_refundable_overflow",
            "what a capture has not refunded (amount - refunded_amount) overflowed",
        ),
        (
            "klarna_response",
            "regression_om_location_refund_id_untrimmed",
            "Order Management's refund id from `Location` kept the spaces around it",
        ),
        (
            "stored_call",
            "regression_v0_negative_quantity",
            "a version 0 stored call was read without validation, then refused once stored again",
        ),
    ] {
        let bytes = corpus(target_name)
            .remove(file)
            .unwrap_or_else(|| panic!("fuzz/corpus/{target_name}/{file} is missing"));
        if std::panic::catch_unwind(|| (target(target_name).run)(&bytes)).is_err() {
            panic!("fuzz/corpus/{target_name}/{file} fails again: {what}");
        }
    }
    // The version 0 call with a negative quantity is refused when read, as version 1 is.
    let stored = corpus("stored_call")
        .remove("regression_v0_negative_quantity")
        .unwrap_or_default();
    let stored = String::from_utf8(stored).unwrap_or_default();
    assert!(encoding::decode_call(&stored).is_err());
    let now = time::OffsetDateTime::now_utc();
    let duration = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
    assert_eq!(
        refund_gateway::operator::pending_cutoff(duration(i64::MIN), now),
        None
    );
    assert_eq!(
        refund_gateway::operator::pending_cutoff(duration(i64::MAX), now),
        Some(time::PrimitiveDateTime::MIN.assume_utc())
    );
    let earliest = time::PrimitiveDateTime::MIN.assume_utc().unix_timestamp();
    let window = refund_gateway::operator::reconcile_window(
        None,
        Some(prost_types::Timestamp {
            seconds: earliest,
            nanos: 0,
        }),
        now,
    );
    assert!(window.is_err(), "{window:?}");
}

/// Runs `target` on `strategy`'s inputs; a panic fails with the smallest input found.
fn run(name: &str, strategy: impl Strategy<Value = Vec<u8>>) {
    let strategy = strategy.prop_map(Input);
    let target = target(name);
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new(config)
        .run(&strategy, |data| {
            (target.run)(&data.0);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("fuzz target {name}: {e}"));
}

fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 0..1024),
        // Mostly text, which the JSON, TOML and header readers look at longer.
        "[ -~\n]{0,512}".prop_map(String::into_bytes),
    ]
}

/// Mutations of `name`'s corpus files.
fn mutated(name: &str) -> impl Strategy<Value = Vec<u8>> + use<> {
    let seeds: Vec<Vec<u8>> = corpus(name).into_values().collect();
    let proto_offset = match name {
        "request" => Some(ProtoAt::AfterFirstByte),
        "stored_answer" => Some(ProtoAt::AfterFirstLine),
        _ => None,
    };
    let count = seeds.len().max(1);
    (0..count, proptest::collection::vec(mutation(), 1..6)).prop_map(move |(i, mutations)| {
        let mut data = seeds.get(i).cloned().unwrap_or_default();
        for m in &mutations {
            m.apply(&mut data, proto_offset);
        }
        data
    })
}

macro_rules! fuzz_target_tests {
    ($($name:ident),* $(,)?) => {
        mod arbitrary {
            $(
                #[test]
                fn $name() {
                    super::run(stringify!($name), super::arbitrary_bytes());
                }
            )*
        }
        mod mutated_corpus {
            $(
                #[test]
                fn $name() {
                    super::run(stringify!($name), super::mutated(stringify!($name)));
                }
            )*
        }
    };
}

fuzz_target_tests!(
    request,
    klarna_response,
    webhook,
    callers,
    stored_call,
    stored_answer
);

#[test]
fn every_target_is_driven() {
    let driven = [
        "request",
        "klarna_response",
        "webhook",
        "callers",
        "stored_call",
        "stored_answer",
    ];
    let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
    assert_eq!(names, driven);
    for name in driven {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/fuzz_targets")
            .join(format!("{name}.rs"));
        assert!(path.exists(), "no cargo-fuzz target {}", path.display());
    }
}

// ---------------------------------------------------------------------------------------------
// Mutations

/// Where a target's input holds a protobuf message.
#[derive(Debug, Clone, Copy)]
enum ProtoAt {
    AfterFirstByte,
    AfterFirstLine,
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit { at: usize, bit: u8 },
    SetByte { at: usize, byte: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Duplicate { at: usize, len: usize },
    Token { at: usize, token: usize },
    Json { node: usize, edit: JsonEdit },
    Proto { node: usize, edit: ProtoEdit },
}

#[derive(Debug, Clone)]
enum JsonEdit {
    Replace(Value),
    RemoveChild(usize),
    DuplicateChild(usize),
}

#[derive(Debug, Clone)]
enum ProtoEdit {
    Varint(u64),
    Bytes(Vec<u8>),
    Remove,
    Duplicate,
    Add(u32, u64),
}

/// Bytes that matter to the readers: JSON and TOML syntax, header and line breaks, numbers
/// at the edges of i64 and beyond.
const TOKENS: [&str; 24] = [
    "\"",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "null",
    "true",
    "-",
    "\n",
    "\n\n",
    "\r\n",
    "\\u0000",
    "\\ud800",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "1e999",
    "0.5",
    "[[caller]]\n",
    "=",
    "%",
    "\u{feff}",
];

fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop_oneof![
            Just(i64::MIN),
            Just(i64::MAX),
            Just(-1_i64),
            Just(0_i64),
            Just(1_i64),
            any::<i64>()
        ]
        .prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[ \\t\\x00-\\x1f]{0,3}[a-zA-Z0-9:-]{0,12}[ \\t]{0,2}".prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
        Just(json!([null, "x", 1, {"a": []}])),
        Just(json!({"error_code": "X", "errors": [{"parameter": "amount"}]})),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        1 => (at, 0..8_u8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        1 => (at, any::<u8>()).prop_map(|(at, byte)| Mutation::SetByte { at, byte }),
        1 => (at, proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (at, 1..64_usize).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => (at, 1..64_usize).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
        1 => (at, 0..TOKENS.len()).prop_map(|(at, token)| Mutation::Token { at, token }),
        3 => (at, prop_oneof![
            3 => json_value().prop_map(JsonEdit::Replace),
            1 => any::<usize>().prop_map(JsonEdit::RemoveChild),
            1 => any::<usize>().prop_map(JsonEdit::DuplicateChild),
        ])
            .prop_map(|(node, edit)| Mutation::Json { node, edit }),
        3 => (at, prop_oneof![
            prop_oneof![
                Just(0_u64),
                Just(1),
                Just(u64::MAX),
                Just(i64::MIN as u64),
                Just(u64::from(u32::MAX)),
                Just(1 << 31),
                any::<u64>()
            ]
            .prop_map(ProtoEdit::Varint),
            proptest::collection::vec(any::<u8>(), 0..32).prop_map(ProtoEdit::Bytes),
            "[ -~]{0,300}".prop_map(|s| ProtoEdit::Bytes(s.into_bytes())),
            Just(ProtoEdit::Remove),
            Just(ProtoEdit::Duplicate),
            (1..20_u32, any::<u64>()).prop_map(|(n, v)| ProtoEdit::Add(n, v)),
        ])
            .prop_map(|(node, edit)| Mutation::Proto { node, edit }),
    ]
}

impl Mutation {
    fn apply(&self, data: &mut Vec<u8>, proto: Option<ProtoAt>) {
        let len = data.len();
        let pos = |at: usize| if len == 0 { 0 } else { at % (len + 1) };
        match self {
            Self::FlipBit { at, bit } => {
                if let Some(b) = data.get_mut(pos(*at).min(len.saturating_sub(1))) {
                    *b ^= 1 << bit;
                }
            }
            Self::SetByte { at, byte } => {
                if let Some(b) = data.get_mut(pos(*at).min(len.saturating_sub(1))) {
                    *b = *byte;
                }
            }
            Self::Insert { at, bytes } => {
                let at = pos(*at);
                data.splice(at..at, bytes.iter().copied());
            }
            Self::Delete { at, len: n } => {
                let at = pos(*at);
                data.drain(at..(at + n).min(len));
            }
            Self::Duplicate { at, len: n } => {
                let at = pos(*at);
                let copy = data[at..(at + n).min(len)].to_vec();
                data.splice(at..at, copy);
            }
            Self::Token { at, token } => {
                let at = pos(*at);
                let token = TOKENS.get(*token).copied().unwrap_or_default();
                data.splice(at..at, token.bytes());
            }
            Self::Json { node, edit } => edit_json(data, *node, edit),
            Self::Proto { node, edit } => {
                if let Some(at) = proto {
                    edit_proto(data, at, *node, edit);
                }
            }
        }
    }
}

/// The JSON in `data`: all of it, the body after an empty line, or the first line.
fn json_region(data: &[u8]) -> Option<(usize, usize, Value)> {
    let after_blank = data.windows(2).position(|w| w == b"\n\n").map(|at| at + 2);
    let first_line = data.iter().position(|&b| b == b'\n');
    [
        Some((0, data.len())),
        after_blank.map(|at| (at, data.len())),
        first_line.map(|end| (0, end)),
    ]
    .into_iter()
    .flatten()
    .find_map(|(start, end)| {
        let value = serde_json::from_slice::<Value>(&data[start..end]).ok()?;
        Some((start, end, value))
    })
}

fn edit_json(data: &mut Vec<u8>, node: usize, edit: &JsonEdit) {
    let Some((start, end, mut value)) = json_region(data) else {
        return;
    };
    let count = count_nodes(&value);
    let mut n = node % count.max(1);
    edit_node(&mut value, &mut n, edit);
    let written = serde_json::to_vec(&value).unwrap_or_default();
    data.splice(start..end, written);
}

fn count_nodes(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        Value::Object(fields) => fields.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// Applies `edit` to the `n`-th node in preorder; true once applied.
fn edit_node(value: &mut Value, n: &mut usize, edit: &JsonEdit) -> bool {
    if *n == 0 {
        match (edit, &mut *value) {
            (JsonEdit::Replace(new), _) => *value = new.clone(),
            (JsonEdit::RemoveChild(i), Value::Array(items)) if !items.is_empty() => {
                let i = i % items.len();
                items.remove(i);
            }
            (JsonEdit::RemoveChild(i), Value::Object(fields)) if !fields.is_empty() => {
                let key = fields
                    .keys()
                    .nth(i % fields.len())
                    .cloned()
                    .unwrap_or_default();
                fields.remove(&key);
            }
            (JsonEdit::DuplicateChild(i), Value::Array(items)) if !items.is_empty() => {
                let i = i % items.len();
                let copy = items[i].clone();
                items.insert(i, copy);
            }
            _ => {}
        }
        return true;
    }
    *n -= 1;
    match value {
        Value::Array(items) => items.iter_mut().any(|v| edit_node(v, n, edit)),
        Value::Object(fields) => fields.values_mut().any(|v| edit_node(v, n, edit)),
        _ => false,
    }
}

/// A protobuf field as on the wire.
#[derive(Debug, Clone)]
enum Wire {
    Varint(u64),
    Fixed64(u64),
    Len(Vec<u8>),
    Fixed32(u32),
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0_u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The fields of a message, or `None` when the bytes are not one.
fn parse_fields(bytes: &[u8]) -> Option<Vec<(u64, Wire)>> {
    let mut at = 0;
    let mut fields = Vec::new();
    while at < bytes.len() {
        let key = read_varint(bytes, &mut at)?;
        let (number, wire) = (key >> 3, key & 7);
        if number == 0 {
            return None;
        }
        let value = match wire {
            0 => Wire::Varint(read_varint(bytes, &mut at)?),
            1 => {
                let b: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
                at += 8;
                Wire::Fixed64(u64::from_le_bytes(b))
            }
            2 => {
                let n = usize::try_from(read_varint(bytes, &mut at)?).ok()?;
                let v = bytes.get(at..at.checked_add(n)?)?.to_vec();
                at += n;
                Wire::Len(v)
            }
            5 => {
                let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
                at += 4;
                Wire::Fixed32(u32::from_le_bytes(b))
            }
            _ => return None,
        };
        fields.push((number, value));
    }
    Some(fields)
}

fn encode_fields(fields: &[(u64, Wire)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (number, value) in fields {
        let wire = match value {
            Wire::Varint(_) => 0,
            Wire::Fixed64(_) => 1,
            Wire::Len(_) => 2,
            Wire::Fixed32(_) => 5,
        };
        write_varint(&mut out, (number << 3) | wire);
        match value {
            Wire::Varint(v) => write_varint(&mut out, *v),
            Wire::Fixed64(v) => out.extend(v.to_le_bytes()),
            Wire::Len(v) => {
                write_varint(&mut out, v.len() as u64);
                out.extend(v);
            }
            Wire::Fixed32(v) => out.extend(v.to_le_bytes()),
        }
    }
    out
}

fn edit_proto(data: &mut Vec<u8>, at: ProtoAt, node: usize, edit: &ProtoEdit) {
    let start = match at {
        ProtoAt::AfterFirstByte => 1,
        ProtoAt::AfterFirstLine => match data.iter().skip(1).position(|&b| b == b'\n') {
            Some(i) => i + 2,
            None => return,
        },
    };
    if start > data.len() {
        return;
    }
    let Some(mut fields) = parse_fields(&data[start..]) else {
        return;
    };
    let mut n = node % (count_fields(&fields) + 1);
    edit_message(&mut fields, &mut n, edit);
    data.truncate(start);
    data.extend(encode_fields(&fields));
}

/// Fields in preorder, nested messages (length-delimited values that parse as one) included.
fn count_fields(fields: &[(u64, Wire)]) -> usize {
    fields
        .iter()
        .map(|(_, value)| match value {
            Wire::Len(bytes) => {
                1 + parse_fields(bytes)
                    .filter(|f| !f.is_empty())
                    .map_or(0, |f| count_fields(&f))
            }
            _ => 1,
        })
        .sum()
}

/// Applies `edit` at the `n`-th field in preorder (`n` past the last adds a field here).
fn edit_message(fields: &mut Vec<(u64, Wire)>, n: &mut usize, edit: &ProtoEdit) -> bool {
    let mut i = 0;
    while i < fields.len() {
        if *n == 0 {
            match edit {
                ProtoEdit::Varint(v) => fields[i].1 = Wire::Varint(*v),
                ProtoEdit::Bytes(b) => fields[i].1 = Wire::Len(b.clone()),
                ProtoEdit::Remove => {
                    fields.remove(i);
                }
                ProtoEdit::Duplicate => {
                    let copy = fields[i].clone();
                    fields.insert(i, copy);
                }
                ProtoEdit::Add(number, v) => {
                    fields.insert(i, (u64::from(*number), Wire::Varint(*v)))
                }
            }
            return true;
        }
        *n -= 1;
        if let Wire::Len(bytes) = &fields[i].1
            && let Some(mut nested) = parse_fields(bytes).filter(|f| !f.is_empty())
        {
            let inside = count_fields(&nested);
            if *n < inside {
                edit_message(&mut nested, n, edit);
                fields[i].1 = Wire::Len(encode_fields(&nested));
                return true;
            }
            *n -= inside;
        }
        i += 1;
    }
    if let ProtoEdit::Add(number, v) = edit {
        fields.push((u64::from(*number), Wire::Varint(*v)));
    }
    true
}

#[test]
fn mutations_keep_structure() {
    let mut body = b"200\nA: b\n\n{\"a\":[1,2],\"b\":null}".to_vec();
    Mutation::Json {
        node: 2,
        edit: JsonEdit::Replace(json!("x")),
    }
    .apply(&mut body, None);
    assert_eq!(body, b"200\nA: b\n\n{\"a\":[\"x\",2],\"b\":null}");
    let message = pb::GetOrderRequest {
        klarna_account: "a".to_owned(),
        order_id: "o".to_owned(),
    };
    let mut input = fuzz::request_input("GetOrder", &message);
    Mutation::Proto {
        node: 1,
        edit: ProtoEdit::Bytes(b"p".to_vec()),
    }
    .apply(&mut input, Some(ProtoAt::AfterFirstByte));
    let edited = pb::GetOrderRequest::decode(&input[1..]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(edited.order_id, "p");
}

// ---------------------------------------------------------------------------------------------
// The seed corpus

fn sample(name: &str) -> Vec<u8> {
    let path = fuzz::corpus_dir().join("klarna_response").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn http(first_line: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{first_line}\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\n"));
    }
    out.push('\n');
    let mut out = out.into_bytes();
    out.extend(body);
    out
}

const ORDER_ID: &str = "5ef9a5b3-6c08-42e1-91a3-065dcae5c5dd";
const TRANSACTION: &str = "krn:payment:eu1:transaction:6debe89e-98c0-486e-b3b6-0f6e6e0f1d2f";
const PARTNER_ACCOUNT: &str = "krn:partner:global:account:test:6a0c1b2d";

/// The docs' refund request (Klarna's sample) as the gRPC order lines.
fn docs_order_lines() -> Vec<pb::OrderLine> {
    let docs: Value = serde_json::from_slice(&sample("refund_request_docs.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    let lines = docs["order_lines"].as_array().cloned().unwrap_or_default();
    lines
        .iter()
        .map(|l| pb::OrderLine {
            r#type: match l["type"].as_str() {
                Some("return_fee") => pb::OrderLineType::ReturnFee,
                _ => pb::OrderLineType::Physical,
            }
            .into(),
            name: l["name"].as_str().unwrap_or_default().to_owned(),
            quantity: l["quantity"].as_i64().unwrap_or_default(),
            unit_price: l["unit_price"].as_i64().unwrap_or_default(),
            total_amount: l["total_amount"].as_i64().unwrap_or_default(),
            ..pb::OrderLine::default()
        })
        .collect()
}

fn request_seeds() -> Vec<(String, Vec<u8>)> {
    let lines = docs_order_lines();
    let amount: i64 = lines.iter().map(|l| l.total_amount).sum();
    let ts = |seconds| prost_types::Timestamp { seconds, nanos: 0 };
    let mut seeds = vec![
        (
            "RefundOrder",
            pb::RefundOrderRequest {
                idempotency_key: "refund-1786c73b".to_owned(),
                order_id: ORDER_ID.to_owned(),
                refunded_amount: amount,
                currency: "SEK".to_owned(),
                description: "Description of the refund shown to the customer".to_owned(),
                reference: "1786c73b-a2be-4d42-a9f7-ff1c4bca5ccc".to_owned(),
                order_lines: lines.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "ReleaseAuthorization",
            pb::ReleaseAuthorizationRequest {
                idempotency_key: "release-1".to_owned(),
                order_id: ORDER_ID.to_owned(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "GetExtendDueDateOptions",
            pb::GetExtendDueDateOptionsRequest {
                order_id: ORDER_ID.to_owned(),
                capture_id: "32904e4c-61d2-400e-9b77-000000000001".to_owned(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "ExtendDueDate",
            pb::ExtendDueDateRequest {
                idempotency_key: "extend-1".to_owned(),
                order_id: ORDER_ID.to_owned(),
                capture_id: "32904e4c-61d2-400e-9b77-000000000001".to_owned(),
                number_of_days: 14,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "GetOrder",
            pb::GetOrderRequest {
                klarna_account: "default".to_owned(),
                order_id: ORDER_ID.to_owned(),
            }
            .encode_to_vec(),
        ),
        (
            "GetRefund",
            pb::GetRefundRequest {
                order_id: ORDER_ID.to_owned(),
                refund_id: "ec2119a1-cbb9-40a3-8fb8-ad7b7c109c87".to_owned(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "RefundCapture",
            pb::RefundCaptureRequest {
                idempotency_key: "capture-refund-1".to_owned(),
                payment_transaction_id: TRANSACTION.to_owned(),
                payment_capture_id: format!("{TRANSACTION}:capture:1"),
                amount: 9500,
                currency: "EUR".to_owned(),
                reference: "r-1".to_owned(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "RefundTransaction",
            pb::RefundTransactionRequest {
                idempotency_key: "transaction-refund-1".to_owned(),
                payment_transaction_id: TRANSACTION.to_owned(),
                amount,
                currency: "EUR".to_owned(),
                line_items: lines
                    .iter()
                    .map(|l| pb::LineItem {
                        name: l.name.clone(),
                        quantity: l.quantity,
                        unit_price: l.unit_price,
                        total_amount: l.total_amount,
                        total_tax_amount: Some(0),
                        tax_rate: Some(2500),
                        reference: "sku-1".to_owned(),
                        r#type: "physical".to_owned(),
                    })
                    .collect(),
                store_id: "store-7".to_owned(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "GetTransaction",
            pb::GetTransactionRequest {
                payment_transaction_id: TRANSACTION.to_owned(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "ListOperations",
            pb::ListOperationsRequest {
                order_id: ORDER_ID.to_owned(),
                state: pb::OperationState::Pending.into(),
                created_after: Some(ts(1_700_000_000)),
                created_before: Some(ts(1_800_000_000)),
                page_size: 50,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "LinkReceipt",
            pb::LinkReceiptRequest {
                receipt_reference: "A17-0042".to_owned(),
                order_id: ORDER_ID.to_owned(),
                store_id: "store-7".to_owned(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "FindOrder",
            pb::FindOrderRequest {
                klarna_reference: "20S0XXXX".to_owned(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "GetOperation",
            pb::GetOperationRequest {
                rpc: "RefundOrder".to_owned(),
                idempotency_key: "refund-1786c73b".to_owned(),
                caller: "pos".to_owned(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "WatchOperation",
            pb::WatchOperationRequest {
                operation_id: "9b716595-5b16-467d-b7a6-063062fc00f8".to_owned(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "ListAttention",
            pb::ListAttentionRequest {
                pending_older_than: Some(prost_types::Duration {
                    seconds: 300,
                    nanos: 0,
                }),
                page_size: 10,
            }
            .encode_to_vec(),
        ),
        (
            "ResolveOperation",
            pb::ResolveOperationRequest {
                operation_id: "9b716595-5b16-467d-b7a6-063062fc00f8".to_owned(),
                outcome: pb::ResolutionOutcome::Succeeded.into(),
                refund_id: "ec2119a1-cbb9-40a3-8fb8-ad7b7c109c87".to_owned(),
                reason: "seen in the merchant portal".to_owned(),
            }
            .encode_to_vec(),
        ),
        (
            "Reconcile",
            pb::ReconcileRequest {
                klarna_account: "default".to_owned(),
                from: Some(ts(1_700_000_000)),
                to: Some(ts(1_700_086_400)),
            }
            .encode_to_vec(),
        ),
        ("grpc-timeout", b"2500m".to_vec()),
    ]
    .into_iter()
    .map(|(kind, bytes)| {
        let index = fuzz::REQUEST_KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_else(|| panic!("no request kind {kind}"));
        let mut input = vec![u8::try_from(index).unwrap_or(0)];
        input.extend(bytes);
        (format!("{index:02}_{kind}"), input)
    })
    .collect::<Vec<_>>();
    // A refund naming the order by receipt, with a bad line: every field checked.
    let mut by_receipt = pb::RefundOrderRequest {
        idempotency_key: "refund-2".to_owned(),
        receipt_reference: "A17-0042".to_owned(),
        refunded_amount: 1,
        order_lines: lines,
        ..Default::default()
    };
    by_receipt.order_lines[0].quantity = -1;
    seeds.push((
        "00_RefundOrder_by_receipt".to_owned(),
        fuzz::request_input("RefundOrder", &by_receipt),
    ));
    seeds
}

fn klarna_response_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let correlation = (
        "Klarna-Correlation-Id",
        "2f4a8e9b-1c3d-4e5f-8a7b-9c0d1e2f3a4b",
    );
    for (name, status) in [
        ("error_bad_value_400_observed.json", "400"),
        ("error_cancel_403.json", "403"),
        ("error_get_order_invalid_id.json", "400"),
        ("error_no_such_capture_404.json", "404"),
        ("error_no_such_order_404.json", "404"),
        ("error_refund_no_captures_403.json", "403"),
        ("error_refund_not_found_404.json", "404"),
        ("error_refund_over_refund_403.json", "403"),
        ("error_release_fully_captured_403.json", "403"),
        ("error_update_authorization_403.json", "403"),
    ] {
        seeds.push((
            format!("http_{name}"),
            http(&format!("HTTP/1.1 {status}"), &[correlation], &sample(name)),
        ));
    }
    seeds.push((
        "http_get_order_200.json".to_owned(),
        http(
            "200",
            &[correlation],
            &sample("get_order_200_docs_sample.json"),
        ),
    ));
    seeds.push((
        "http_extend_due_date_options_200.json".to_owned(),
        http("200", &[], &sample("extend_due_date_options_200.json")),
    ));
    // A refund as Order Management lists it: the docs' refund request, made.
    let mut refund: Value = serde_json::from_slice(&sample("refund_request_docs.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    refund["refund_id"] = json!("ec2119a1-cbb9-40a3-8fb8-ad7b7c109c87");
    refund["refunded_at"] = json!("2022-07-08T09:48:17.738Z");
    seeds.push((
        "http_get_refund_200.json".to_owned(),
        http("200", &[correlation], refund.to_string().as_bytes()),
    ));
    let refund_location = format!("/ordermanagement/v1/orders/{ORDER_ID}/refunds/ec2119a1");
    seeds.push((
        "http_create_refund_201_headers".to_owned(),
        http(
            "201",
            &[
                ("Refund-Id", "ec2119a1-cbb9-40a3-8fb8-ad7b7c109c87"),
                ("Location", &refund_location),
                correlation,
            ],
            b"",
        ),
    ));
    seeds.push((
        "http_create_refund_201_location".to_owned(),
        http(
            "201",
            &[(
                "Location",
                "https://api.playground.klarna.com/ordermanagement/v1/orders/o/refunds/a%20b",
            )],
            b"",
        ),
    ));
    // The partner Payments API (docs/klarna.md#partner-payments).
    let transaction = json!({
        "payment_transaction_id": TRANSACTION,
        "state": "AUTHORIZED",
        "amount": 10000,
        "currency": "eur",
        "captures": [
            {"payment_capture_id": format!("{TRANSACTION}:capture:1"), "amount": 6000,
             "refunded_amount": 500, "created_at": "2026-01-02T10:00:00Z"},
            {"payment_capture_id": format!("{TRANSACTION}:capture:2"), "amount": 4000}
        ],
        "refunds": [
            {"payment_refund_id": "krn:payment:eu1:refund:1", "payment_capture_id":
             format!("{TRANSACTION}:capture:1"), "amount": 500,
             "payment_refund_reference": "r-0", "created_at": "2026-01-03T10:00:00Z"}
        ],
        "line_items": [{"name": "T-Shirt", "quantity": 1, "total_amount": 10000}]
    });
    seeds.push((
        "http_partner_transaction_200.json".to_owned(),
        http(
            "200",
            &[("Partner-Correlation-Id", "9f1c2b3a4d5e6f708192a3b4c5d6e7f8")],
            transaction.to_string().as_bytes(),
        ),
    ));
    let created = json!({
        "payment_refund_id": "krn:payment:eu1:refund:2",
        "payment_transaction_id": TRANSACTION,
        "amount": 9500, "currency": "EUR", "payment_refund_reference": "r-1"
    });
    seeds.push((
        "http_partner_refund_201.json".to_owned(),
        http(
            "201",
            &[(
                "Location",
                "/v2/accounts/a/payment/transactions/t/refunds/krn%3Apayment%3Aeu1%3Arefund%3A2",
            )],
            created.to_string().as_bytes(),
        ),
    ));
    let partner_error = json!({
        "error_id": "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
        "error_type": "INPUT_ERROR",
        "error_code": "VALIDATION_ERROR",
        "error_message": "Validation failed",
        "errors": [{"parameter": "amount", "error_message": "must be positive"}, {}]
    });
    seeds.push((
        "http_partner_error_400.json".to_owned(),
        http("400", &[], partner_error.to_string().as_bytes()),
    ));
    let limit = json!({
        "error_id": "1b1c2d3e", "error_code": "OPERATION_FORBIDDEN",
        "error_message": "A transaction allows at most 200 refunds"
    });
    seeds.push((
        "http_partner_refund_limit_403.json".to_owned(),
        http("403", &[], limit.to_string().as_bytes()),
    ));
    seeds.push((
        "http_forbidden_without_error_403".to_owned(),
        http(
            "403 Forbidden",
            &[("Content-Type", "text/html")],
            b"<html>Request blocked</html>",
        ),
    ));
    seeds.push((
        "http_throttled_429_date".to_owned(),
        http(
            "429",
            &[
                ("Retry-After", "Sun, 06 Nov 2033 08:49:37 GMT"),
                correlation,
            ],
            b"",
        ),
    ));
    seeds.push((
        "http_unavailable_503_seconds".to_owned(),
        http(
            "503",
            &[("Retry-After", "7"), ("Correlation-Id", " c-2 ")],
            b"upstream down",
        ),
    ));
    seeds
}

fn webhook_seeds() -> Vec<(String, Vec<u8>)> {
    let (key_id, secret) = fuzz::WEBHOOK_KEYS[0];
    let key_id = key_id.unwrap_or_default();
    let (_, any_secret) = fuzz::WEBHOOK_KEYS[1];
    let refunded = json!({
        "metadata": {
            "event_type": "payment.transaction.refunded",
            "event_id": "3c1d8f5e-1a2b-4c3d-9e8f-7a6b5c4d3e2f",
            "event_version": "v2",
            "occurred_at": "2026-01-03T10:00:00.000Z",
            "correlation_id": "c0ffee00-1a2b-4c3d-9e8f-7a6b5c4d3e2f",
            "subject_account_id": PARTNER_ACCOUNT,
            "recipient_account_id": PARTNER_ACCOUNT,
            "product_instance_id": "krn:partner:product:payment:test:1",
            "webhook_id": "krn:partner:global:notification:webhook:1",
            "live": false
        },
        "payload": {
            "payment_transaction_id": TRANSACTION,
            "payment_refund_id": "krn:payment:eu1:refund:2",
            "payment_refund_reference": "r-1",
            "amount": 9500,
            "currency": "eur"
        }
    });
    let v1 = json!({
        "metadata": {
            "event_type": "payment.transaction.captured",
            "event_id": "e-v1-1",
            "account_id": PARTNER_ACCOUNT
        },
        "payload": {"payment_transaction_id": TRANSACTION, "amount": 100}
    });
    let signed = |body: &Value, secret: &str, key_id: &str| {
        let body = body.to_string().into_bytes();
        http(
            "POST /webhooks/klarna HTTP/1.1",
            &[
                ("Content-Type", "application/json"),
                ("Klarna-Signature", &fuzz::sign(secret, &body)),
                ("Klarna-Signing-Key-Id", key_id),
            ],
            &body,
        )
    };
    vec![
        (
            "refunded_v2_signed".to_owned(),
            signed(&refunded, secret, key_id),
        ),
        (
            "captured_v1_any_key_id".to_owned(),
            signed(
                &v1,
                any_secret,
                "krn:partner:global:notification:signing-key:other",
            ),
        ),
        (
            "refunded_payload_only.json".to_owned(),
            refunded["payload"].to_string().into_bytes(),
        ),
        (
            "refunded_unsigned".to_owned(),
            http(
                "POST /webhooks/klarna",
                &[],
                refunded.to_string().as_bytes(),
            ),
        ),
    ]
}

fn callers_seeds() -> Vec<(String, Vec<u8>)> {
    let hash = |token: &str| {
        use sha2::Digest;
        sha2::Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let [pos, backoffice, ops] = fuzz::CALLER_TOKENS;
    let file = format!(
        r#"# Callers of the gateway (docs/operations.md#callers).
[[caller]]
name = "pos"
token_sha256 = "{}"
rpcs = ["RefundOrder", "GetOrder", "GetOperation", "WatchOperation"]
klarna_accounts = ["default"]
max_amount = {{ SEK = 500000, EUR = 50000 }}
max_amount_per_day = {{ SEK = 2000000 }}
requests_per_second = 20
burst = 40
scope_as = "anonymous"

[[caller]]
name = "backoffice"
token_sha256 = "{}"
rpcs = ["*"]
klarna_accounts = ["*"]

[[caller]]
name = "ops"
token_sha256 = "{}"
rpcs = ["ListOperations", "ListAttention", "ResolveOperation", "Reconcile"]
klarna_accounts = ["default", "partner"]
operator = true

[[caller]]
name = "store-terminal"
certificate_subject = "CN=pos.example"
rpcs = ["RefundOrder"]
klarna_accounts = ["default"]
"#,
        hash(pos),
        hash(backoffice).to_ascii_uppercase(),
        hash(ops)
    );
    let refused = format!(
        "[[caller]]\nname = \"twice\"\ntoken_sha256 = \"{}\"\nrpcs = [\"Nope\"]\nklarna_accounts = []\nmax_amount = {{ sek = 0 }}\n",
        hash(pos)
    );
    vec![
        ("callers.toml".to_owned(), file.into_bytes()),
        ("refused.toml".to_owned(), refused.into_bytes()),
        ("empty.toml".to_owned(), Vec::new()),
    ]
}

/// The Klarna calls of the seeds: one of each kind, from the docs' refund request.
fn seed_calls() -> Vec<(&'static str, KlarnaCall)> {
    let order_id = OrderId::parse(ORDER_ID).unwrap_or_else(|e| panic!("{e}"));
    let drafts: Vec<OrderLineDraft> = docs_order_lines()
        .into_iter()
        .map(|l| {
            let r = convert::refund_order_draft(pb::RefundOrderRequest {
                order_lines: vec![l],
                ..Default::default()
            });
            r.order_lines
                .into_iter()
                .next()
                .unwrap_or_else(|| panic!("a line converts to a line"))
        })
        .collect();
    let cmd =
        refund_gateway_domain::RefundOrder::validate(refund_gateway_domain::RefundOrderDraft {
            idempotency_key: "refund-1786c73b".to_owned(),
            order_id: ORDER_ID.to_owned(),
            refunded_amount: 9500,
            order_lines: drafts,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let amount = Amount::parse(9500).unwrap_or_else(|e| panic!("{e}"));
    let currency = Currency::parse("EUR").unwrap_or_else(|e| panic!("{e}"));
    let transaction = PaymentTransactionId::parse(TRANSACTION).unwrap_or_else(|e| panic!("{e}"));
    let item = LineItem::parse(LineItemDraft {
        name: "T-Shirt".to_owned(),
        quantity: 1,
        unit_price: 9500,
        total_amount: 9500,
        total_tax_amount: Some(1900),
        tax_rate: Some(2500),
        reference: "sku-1".to_owned(),
        item_type: "physical".to_owned(),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let partner = |line_items| PartnerRefund {
        amount,
        currency: currency.clone(),
        reference: "r-1".to_owned(),
        description: Some("Returned".to_owned()),
        line_items,
    };
    vec![
        (
            "create_refund",
            KlarnaCall::CreateRefund {
                order_id: order_id.clone(),
                refund: KlarnaRefund {
                    refunded_amount: cmd.refunded_amount,
                    description: Some("Description of the refund shown to the customer".to_owned()),
                    reference: "1786c73b-a2be-4d42-a9f7-ff1c4bca5ccc".to_owned(),
                    order_lines: cmd.order_lines,
                },
            },
        ),
        (
            "release",
            KlarnaCall::ReleaseRemainingAuthorization {
                order_id: order_id.clone(),
            },
        ),
        (
            "extend_due_date",
            KlarnaCall::ExtendDueDate {
                order_id,
                capture_id: CaptureId::parse("32904e4c-61d2-400e-9b77-000000000001")
                    .unwrap_or_else(|e| panic!("{e}")),
                number_of_days: 14,
            },
        ),
        (
            "refund_capture",
            KlarnaCall::RefundCapture {
                transaction_id: transaction.clone(),
                capture_id: PaymentCaptureId::parse(&format!("{TRANSACTION}:capture:1"))
                    .unwrap_or_else(|e| panic!("{e}")),
                refund: partner(Vec::new()),
            },
        ),
        (
            "refund_transaction",
            KlarnaCall::RefundTransaction {
                transaction_id: transaction,
                refund: partner(vec![item]),
            },
        ),
    ]
}

fn stored_call_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (name, call) in seed_calls() {
        seeds.push((
            format!("v1_{name}"),
            encoding::encode_call(&call).into_bytes(),
        ));
        // Version 0: the domain types' serde form, as the first releases stored it.
        let v0 = serde_json::to_string(&call).unwrap_or_else(|e| panic!("{e}"));
        seeds.push((format!("v0_{name}"), v0.into_bytes()));
        if name == "extend_due_date" {
            let with_fee = format!(
                "{}\n{}",
                encoding::encode_call(&call),
                encoding::encode_extension_fee(1500, "SEK")
            );
            seeds.push((
                "v1_extend_due_date_with_fee".to_owned(),
                with_fee.into_bytes(),
            ));
        }
    }
    seeds
}

fn stored_answer_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let success = |message: &dyn Fn() -> Vec<u8>| {
        let mut input = vec![0, b'\n'];
        input.extend(message());
        input
    };
    seeds.push((
        "ok_refund_order".to_owned(),
        success(&|| {
            pb::RefundOrderResponse {
                operation_id: "9b716595-5b16-467d-b7a6-063062fc00f8".to_owned(),
                refund_id: "ec2119a1-cbb9-40a3-8fb8-ad7b7c109c87".to_owned(),
                correlation_id: "7863c755-eb1b-4b24-a884-06c2368389d7".to_owned(),
                order_id: ORDER_ID.to_owned(),
                refunded_amount: 9500,
                reference: "1786c73b-a2be-4d42-a9f7-ff1c4bca5ccc".to_owned(),
                validate_only: false,
                replayed: false,
            }
            .encode_to_vec()
        }),
    ));
    seeds.push((
        "ok_extend_due_date".to_owned(),
        success(&|| {
            pb::ExtendDueDateResponse {
                operation_id: "9b716595-5b16-467d-b7a6-063062fc00f8".to_owned(),
                order_id: ORDER_ID.to_owned(),
                capture_id: "32904e4c-61d2-400e-9b77-000000000001".to_owned(),
                number_of_days: 14,
                fee_amount: 1500,
                currency: "SEK".to_owned(),
                ..Default::default()
            }
            .encode_to_vec()
        }),
    ));
    let error = |e: GatewayError| {
        let stored = status::to_stored(&status::to_status(&e));
        let mut input = vec![u8::try_from(stored.code).unwrap_or(2)];
        input.extend(stored.message.replace('\n', " ").into_bytes());
        input.push(b'\n');
        input.extend(stored.payload);
        input
    };
    let mut bad = Violations::new();
    bad.push("refunded_amount", "must be positive");
    bad.push("order_lines[0].quantity", "must be at least 1");
    seeds.push((
        "error_invalid_argument".to_owned(),
        error(GatewayError::InvalidArgument(bad)),
    ));
    let over_refund = refund_gateway_domain::KlarnaErrorResponse {
        status: 403,
        error_code: Some("REFUND_NOT_ALLOWED".to_owned()),
        messages: vec!["Over refund is not allowed. Refund not possible.".to_owned()],
        correlation_id: Some("7863c755-eb1b-4b24-a884-06c2368389d7".to_owned()),
        error_object: true,
        ..Default::default()
    };
    seeds.push((
        "error_klarna_refused".to_owned(),
        error(GatewayError::Klarna {
            error: refund_gateway_domain::KlarnaError::Answered(Box::new(over_refund)),
            resource: refund_gateway_domain::ResourceRef::Order(ORDER_ID.to_owned()),
        }),
    ));
    seeds.push((
        "error_purged_details".to_owned(),
        b"\x09the order is fully captured\n".to_vec(),
    ));
    seeds
}

/// Rewrites the generated seeds of `fuzz/corpus/` (the copies of Klarna's samples in
/// `fuzz/corpus/klarna_response/` are kept as they are). Run after changing a seed here.
#[test]
#[ignore = "rewrites fuzz/corpus/; run by hand"]
fn write_seed_corpus() {
    let all = [
        ("request", request_seeds()),
        ("klarna_response", klarna_response_seeds()),
        ("webhook", webhook_seeds()),
        ("callers", callers_seeds()),
        ("stored_call", stored_call_seeds()),
        ("stored_answer", stored_answer_seeds()),
    ];
    for (target, seeds) in all {
        let dir = fuzz::corpus_dir().join(target);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for (name, bytes) in seeds {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}
