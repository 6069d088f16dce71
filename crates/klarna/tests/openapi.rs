//! What the adapter sends, checked against Klarna's published Order Management spec
//! (`tests/data/ordermanagement-2024.openapi3.yml`; where it comes from: `tests/data/PROVENANCE.md`).
//!
//! The real [`KlarnaClient`], driven through the domain's [`KlarnaApi`] port, makes every call
//! the port has against a local server that records each request. Every recorded request must
//! name an operation of the spec (path template and method); it must carry a body exactly when
//! that operation takes one, with a media type the operation accepts; every `Klarna-*` header it
//! sends must be a header parameter of the operation; and its body must conform to the
//! operation's request schema.
//!
//! The spec is OpenAPI 3.0, whose schemas are JSON Schema draft 4 with a few differences. They
//! are translated explicitly ([`json_schema`]) and validated as draft 4:
//! - `nullable: true` adds `null` to the type (OpenAPI 3.0's meaning; unused by this copy).
//! - A one-value `enum` that is its own `pattern` joined with `|` is read as the list of the
//!   names it joins. This copy has one, on `order_line.type`: read literally it refuses every
//!   real line type, including the spec's own example. `spec_defects_are_the_known_ones` pins
//!   it, so a corrected copy is noticed.
//! - Stricter than the spec: an object schema that declares `properties` and says nothing
//!   about others is closed (`additionalProperties: false`), so a misspelt or invented field
//!   fails instead of being ignored by the check (and, perhaps, by Klarna).

use std::collections::BTreeSet;

use refund_gateway_domain::{
    Caller, CaptureId, IdempotencyKey, KlarnaApi, KlarnaRefund, LineTypeInput, OperationId,
    OrderId, OrderLineDraft, OrderLineType, ProductIdentifiers, RefundId, RefundOrder,
    RefundOrderDraft, Rpc, SubscriptionDraft, SubscriptionInterval,
};
use refund_gateway_klarna::{
    BaseUrl, KlarnaClient, KlarnaClientConfig, KlarnaCredentials, RetryConfig,
};
use serde_json::{Map, Value, json};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SPEC_YAML: &str = include_str!("data/ordermanagement-2024.openapi3.yml");

const ORDER_ID: &str = "0b1d9815-165e-42e2-8867-35bc03789e00";
const CAPTURE_ID: &str = "4ba29b50-be7b-44f5-a492-113e6a865e22";
const REFUND_ID: &str = "b2cb1a91-1d3a-4d2b-a1a8-f1d7b5a1c0de";

/// The spec's operations the adapter is expected to use, by `operationId`.
const OPERATIONS_USED: [&str; 6] = [
    "getOrder",
    "refundOrder",
    "get",
    "releaseRemainingAuthorization",
    "getOptionsForExtendDueDate",
    "extendDueDate",
];

// ---------------------------------------------------------------------------------------------
// The spec

/// The spec as published, as JSON.
fn raw_spec() -> Value {
    serde_norway::from_str(SPEC_YAML).unwrap_or_else(|e| panic!("the spec is not YAML: {e}"))
}

/// The spec with its schemas translated to JSON Schema draft 4 (see the module docs).
struct Spec {
    doc: Value,
    /// Where a one-value `pattern` enum was read as the names it joins.
    split_enums: Vec<String>,
}

impl Spec {
    fn load() -> Self {
        let mut doc = raw_spec();
        let mut split_enums = Vec::new();
        if let Some(Value::Object(schemas)) = doc.pointer_mut("/components/schemas") {
            for (name, schema) in schemas {
                json_schema(
                    schema,
                    &format!("#/components/schemas/{name}"),
                    true,
                    &mut split_enums,
                );
            }
        }
        if let Some(Value::Object(paths)) = doc.get_mut("paths") {
            for (template, item) in paths {
                let Some(item) = item.as_object_mut() else {
                    continue;
                };
                for (verb, op) in item {
                    let Some(Value::Object(content)) = op.pointer_mut("/requestBody/content")
                    else {
                        continue;
                    };
                    for (media, body) in content {
                        if let Some(schema) = body.get_mut("schema") {
                            let at = format!("{verb} {template} {media}");
                            json_schema(schema, &at, true, &mut split_enums);
                        }
                    }
                }
            }
        }
        Self { doc, split_enums }
    }
}

/// Translates one OpenAPI 3.0 schema, in place, into JSON Schema draft 4; `close` says whether
/// an object schema with `properties` may be closed (not inside `allOf`/`anyOf`/`oneOf`, where
/// closing one branch would refuse the other branches' fields).
fn json_schema(schema: &mut Value, at: &str, close: bool, split_enums: &mut Vec<String>) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    if obj.contains_key("$ref") {
        // OpenAPI 3.0 ignores a `$ref`'s siblings; so does draft 4.
        return;
    }
    if obj.remove("nullable") == Some(Value::Bool(true)) {
        if let Some(Value::String(t)) = obj.get("type").cloned() {
            obj.insert("type".into(), json!([t, "null"]));
        }
        if let Some(Value::Array(values)) = obj.get_mut("enum")
            && !values.contains(&Value::Null)
        {
            values.push(Value::Null);
        }
    }
    let joined_enum = match (obj.get("enum"), obj.get("pattern")) {
        (Some(Value::Array(values)), Some(Value::String(pattern))) => match &values[..] {
            [Value::String(only)] if only == pattern && only.contains('|') => Some(only.clone()),
            _ => None,
        },
        _ => None,
    };
    if let Some(joined) = joined_enum {
        let names = joined.split('|').map(|s| Value::String(s.to_owned()));
        obj.insert("enum".into(), Value::Array(names.collect()));
        split_enums.push(at.to_owned());
    }
    if close && obj.contains_key("properties") && !obj.contains_key("additionalProperties") {
        obj.insert("additionalProperties".into(), Value::Bool(false));
    }
    if let Some(Value::Object(properties)) = obj.get_mut("properties") {
        for (name, property) in properties {
            json_schema(
                property,
                &format!("{at}/properties/{name}"),
                true,
                split_enums,
            );
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = obj.get_mut(key) {
            json_schema(sub, &format!("{at}/{key}"), true, split_enums);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = obj.get_mut(key) {
            for (i, branch) in branches.iter_mut().enumerate() {
                json_schema(branch, &format!("{at}/{key}/{i}"), false, split_enums);
            }
        }
    }
}

/// A compiled request-body schema: the operation's schema, resolved against the spec's
/// components.
struct BodySchema {
    /// The schema's name for messages: its `$ref`, or where it is written inline.
    name: String,
    validator: jsonschema::Validator,
}

impl BodySchema {
    fn new(doc: &Value, name: String, schema: &Value) -> Self {
        // Draft 4 ignores a `$ref`'s siblings, so the schema goes under `allOf`; `components`
        // sits beside it for `#/components/...` references to resolve in this document.
        let root = json!({
            "allOf": [schema],
            "components": doc.get("components").cloned().unwrap_or(Value::Null),
        });
        let validator = jsonschema::draft4::new(&root)
            .unwrap_or_else(|e| panic!("the schema {name} does not compile: {e}"));
        Self { name, validator }
    }

    /// Every way `body` breaks the schema, one line each.
    fn violations(&self, body: &Value) -> Vec<String> {
        self.validator
            .iter_errors(body)
            .map(|e| {
                let at = match e.instance_path().to_string() {
                    top if top.is_empty() => "the top".to_owned(),
                    at => format!("`{at}`"),
                };
                format!("at {at}: {e} (schema keyword {})", e.schema_path())
            })
            .collect()
    }
}

/// One operation of the spec.
struct Operation<'a> {
    template: &'a str,
    id: &'a str,
    op: &'a Value,
    /// Header parameters, lower case, with whether each is required.
    headers: Vec<(String, bool)>,
}

impl Spec {
    /// The operation `method path` names, or why none does.
    fn operation(&self, method: &str, path: &str) -> Result<Operation<'_>, String> {
        let paths = self
            .doc
            .get("paths")
            .and_then(Value::as_object)
            .ok_or("the spec has no paths")?;
        let matching: Vec<_> = paths
            .iter()
            .filter(|(template, _)| template_matches(template, path))
            .collect();
        let (template, item) = match &matching[..] {
            [one] => *one,
            [] => return Err(format!("no path template of the spec matches {path}")),
            many => {
                let names: Vec<_> = many.iter().map(|(t, _)| t.as_str()).collect();
                return Err(format!("{path} matches several templates: {names:?}"));
            }
        };
        let verb = method.to_ascii_lowercase();
        let op = item.get(&verb).ok_or_else(|| {
            let verbs: Vec<_> = item
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
                .collect();
            format!("the spec has no {method} on {template} (it has {verbs:?})")
        })?;
        let headers = [item.get("parameters"), op.get("parameters")]
            .into_iter()
            .flatten()
            .filter_map(Value::as_array)
            .flatten()
            .filter(|p| p.get("in").and_then(Value::as_str) == Some("header"))
            .filter_map(|p| {
                let name = p.get("name").and_then(Value::as_str)?.to_ascii_lowercase();
                let required = p.get("required").and_then(Value::as_bool) == Some(true);
                Some((name, required))
            })
            .collect();
        Ok(Operation {
            template,
            id: op
                .get("operationId")
                .and_then(Value::as_str)
                .unwrap_or("(no operationId)"),
            op,
            headers,
        })
    }

    /// The JSON request schema of `operation`, if it takes a body.
    fn body_schema(&self, method: &str, operation: &Operation<'_>) -> Option<BodySchema> {
        let schema = operation
            .op
            .pointer("/requestBody/content/application~1json/schema")?;
        let name = match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => reference.to_owned(),
            None => format!("the inline schema of {method} {}", operation.template),
        };
        Some(BodySchema::new(&self.doc, name, schema))
    }
}

/// True when `path` (as sent, percent-encoded) fits `template`: same segments, each `{name}`
/// standing for one non-empty segment.
fn template_matches(template: &str, path: &str) -> bool {
    let template: Vec<_> = template.split('/').collect();
    let path: Vec<_> = path.split('/').collect();
    template.len() == path.len()
        && template.iter().zip(&path).all(|(t, p)| {
            if t.starts_with('{') && t.ends_with('}') {
                !p.is_empty()
            } else {
                t == p
            }
        })
}

// ---------------------------------------------------------------------------------------------
// Checking recorded requests

/// A request as the local server recorded it.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    /// Lower-case names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl From<&wiremock::Request> for Recorded {
    fn from(r: &wiremock::Request) -> Self {
        Self {
            method: r.method.as_str().to_owned(),
            path: r.url.path().to_owned(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| {
                    let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    (k.as_str().to_ascii_lowercase(), value)
                })
                .collect(),
            body: r.body.clone(),
        }
    }
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What checking one request found, when it conforms.
#[derive(Debug)]
struct Conforms {
    operation_id: String,
    /// The schema the body was validated against, when the operation takes a body.
    body_schema: Option<String>,
}

/// Checks one request against the spec; `Err` lists every problem, each naming the operation
/// and, for a body, the schema.
fn check(spec: &Spec, request: &Recorded) -> Result<Conforms, Vec<String>> {
    let what = format!("{} {}", request.method, request.path);
    let operation = spec
        .operation(&request.method, &request.path)
        .map_err(|e| vec![format!("{what}: {e}")])?;
    let what = format!("{what} ({} {})", operation.id, operation.template);
    let mut problems = Vec::new();

    for (name, _) in request
        .headers
        .iter()
        .filter(|(k, _)| k.starts_with("klarna-"))
    {
        if !operation
            .headers
            .iter()
            .any(|(declared, _)| declared == name)
        {
            problems.push(format!(
                "{what}: sends the header {name}, which the operation does not declare"
            ));
        }
    }
    for (name, required) in &operation.headers {
        if *required && request.header(name).is_none() {
            problems.push(format!("{what}: the required header {name} is missing"));
        }
    }

    let request_body = operation.op.get("requestBody");
    let mut body_schema = None;
    match request_body {
        None if request.body.is_empty() => {}
        None => problems.push(format!(
            "{what}: the operation takes no body, but {} bytes were sent: {}",
            request.body.len(),
            shortened(&String::from_utf8_lossy(&request.body))
        )),
        Some(declared) => {
            let required = declared.get("required").and_then(Value::as_bool) == Some(true);
            let media_type = request
                .header("content-type")
                .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned());
            let accepted = declared.get("content").and_then(Value::as_object);
            if request.body.is_empty() {
                if required {
                    problems.push(format!("{what}: the operation requires a body; none sent"));
                }
            } else if !accepted.is_some_and(|c| {
                media_type
                    .as_deref()
                    .is_some_and(|m| c.contains_key(&m.to_ascii_lowercase()))
            }) {
                let accepted: Vec<_> = accepted.into_iter().flatten().map(|(k, _)| k).collect();
                problems.push(format!(
                    "{what}: body sent as {media_type:?}, the operation accepts {accepted:?}"
                ));
            } else {
                match (
                    spec.body_schema(&request.method, &operation),
                    serde_json::from_slice::<Value>(&request.body),
                ) {
                    (None, _) => problems.push(format!(
                        "{what}: the operation declares no application/json schema"
                    )),
                    (_, Err(e)) => problems.push(format!("{what}: the body is not JSON: {e}")),
                    (Some(schema), Ok(body)) => {
                        let violations = schema.violations(&body);
                        if !violations.is_empty() {
                            problems.push(format!(
                                "{what}: the body does not conform to {}:\n  - {}\n  body: {}",
                                schema.name,
                                violations.join("\n  - "),
                                shortened(&body.to_string())
                            ));
                        }
                        body_schema = Some(schema.name);
                    }
                }
            }
        }
    }

    if problems.is_empty() {
        Ok(Conforms {
            operation_id: operation.id.to_owned(),
            body_schema,
        })
    } else {
        Err(problems)
    }
}

/// `text`, cut after 2000 characters: a thousand-line body would drown the problem.
fn shortened(text: &str) -> String {
    const MAX: usize = 2000;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}… ({} bytes in all)", &text[..cut], text.len()),
        None => text.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Driving the adapter

/// A stand-in for Klarna that answers each call the adapter makes with a success and records
/// every request.
async fn klarna_stand_in() -> MockServer {
    let server = MockServer::start().await;
    let order = "^/ordermanagement/v1/orders/[^/]+";
    let capture = format!("{order}/captures/[^/]+");
    let json = |status: u16, body: Value| {
        ResponseTemplate::new(status).set_body_raw(body.to_string(), "application/json")
    };
    let answers = [
        (
            "GET",
            format!("{order}$"),
            json(
                200,
                serde_json::from_str(&fixture("get_order_200_docs_sample.json"))
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
        ),
        (
            "POST",
            format!("{order}/refunds$"),
            ResponseTemplate::new(201)
                .insert_header("Refund-Id", REFUND_ID)
                .insert_header(
                    "Location",
                    format!("/ordermanagement/v1/orders/{ORDER_ID}/refunds/{REFUND_ID}").as_str(),
                ),
        ),
        (
            "GET",
            format!("{order}/refunds/[^/]+$"),
            json(
                200,
                json!({"refund_id": REFUND_ID, "refunded_amount": 100,
                       "refunded_at": "2024-03-01T10:00:00Z", "order_lines": []}),
            ),
        ),
        (
            "POST",
            format!("{order}/release-remaining-authorization$"),
            ResponseTemplate::new(204),
        ),
        (
            "GET",
            format!("{capture}/extend-due-date-options$"),
            json(
                200,
                serde_json::from_str(&fixture("extend_due_date_options_200.json"))
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
        ),
        (
            "PATCH",
            format!("{capture}/extend-due-date$"),
            ResponseTemplate::new(204),
        ),
    ];
    for (verb, path, answer) in answers {
        Mock::given(method(verb))
            .and(path_regex(path))
            .respond_with(answer)
            .mount(&server)
            .await;
    }
    server
}

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A client making one attempt per call, so that each call is one recorded request.
fn client(server: &MockServer) -> KlarnaClient {
    let mut config = KlarnaClientConfig::new(
        BaseUrl::parse(&server.uri()).unwrap_or_else(|e| panic!("{e}")),
        KlarnaCredentials::new("PK_openapi_test", "not-a-secret"),
    );
    config.transport.retry = RetryConfig::no_retries();
    KlarnaClient::new(config).unwrap_or_else(|e| panic!("{e}"))
}

async fn recorded(server: &MockServer) -> Vec<Recorded> {
    server
        .received_requests()
        .await
        .unwrap_or_else(|| panic!("the stand-in does not record requests"))
        .iter()
        .map(Recorded::from)
        .collect()
}

fn op(rpc: Rpc) -> OperationId {
    let key =
        IdempotencyKey::parse(&uuid::Uuid::new_v4().to_string()).unwrap_or_else(|e| panic!("{e}"));
    OperationId::derive(&Caller::anonymous(), rpc, &key)
}

/// The refund the gateway would send for `draft`: validated by the domain's own rules, so only
/// what a caller can get through is sent, with the reference defaulting to the operation id.
fn refund(name: &str, draft: RefundOrderDraft, op: &OperationId) -> KlarnaRefund {
    let draft = RefundOrderDraft {
        idempotency_key: op.to_string(),
        order_id: ORDER_ID.to_owned(),
        ..draft
    };
    let cmd = RefundOrder::validate(draft)
        .unwrap_or_else(|v| panic!("the domain refuses the {name} refund: {v}"));
    KlarnaRefund {
        refunded_amount: cmd.refunded_amount,
        description: cmd.description,
        reference: cmd.reference.unwrap_or_else(|| op.to_string()),
        order_lines: cmd.order_lines,
    }
}

fn line(
    line_type: Option<OrderLineType>,
    name: &str,
    quantity: i64,
    unit_price: i64,
) -> OrderLineDraft {
    OrderLineDraft {
        line_type: line_type.map_or(LineTypeInput::Unspecified, LineTypeInput::Known),
        name: name.to_owned(),
        quantity,
        unit_price,
        total_amount: quantity * unit_price,
        ..OrderLineDraft::default()
    }
}

/// Amount only.
fn minimal_refund() -> RefundOrderDraft {
    RefundOrderDraft {
        refunded_amount: 100,
        ..RefundOrderDraft::default()
    }
}

/// A line of every type the domain has, a return fee among them (so the lines sum to the
/// amount), with discounts, tax, quantity units, merchant data, URLs, product identifiers and a
/// subscription; plus a line without a type.
fn refund_with_every_line_type() -> RefundOrderDraft {
    let mut lines = Vec::new();
    for t in OrderLineType::ALL {
        let mut l = match t {
            OrderLineType::Physical => OrderLineDraft {
                quantity_unit: "pcs".into(),
                total_discount_amount: 1000,
                total_amount: 2 * 5000 - 1000,
                tax_rate: 2500,
                total_tax_amount: 1800,
                reference: "SKU-1".into(),
                merchant_data: r#"{"size":"M"}"#.into(),
                product_url: "https://shop.example/p/1".into(),
                image_url: "https://shop.example/p/1.jpg".into(),
                product_identifiers: Some(ProductIdentifiers {
                    brand: "Brand".into(),
                    category_path: "Clothing > T-Shirts".into(),
                    global_trade_item_number: "735858293167".into(),
                    manufacturer_part_number: "BOXNUC5CPYH".into(),
                    color: "Denim blue".into(),
                    size: "M".into(),
                }),
                subscription: Some(SubscriptionDraft {
                    name: "Monthly shirt".into(),
                    interval: Some(SubscriptionInterval::Month),
                    interval_count: 1,
                }),
                ..line(Some(t), "T-Shirt", 2, 5000)
            },
            OrderLineType::Discount => OrderLineDraft {
                tax_rate: 2500,
                total_tax_amount: -200,
                ..line(Some(t), "Spring discount", 1, -1000)
            },
            OrderLineType::ShippingFee => line(Some(t), "Shipping", 1, 500),
            OrderLineType::SalesTax => line(Some(t), "Sales tax", 1, 300),
            OrderLineType::StoreCredit => line(Some(t), "Store credit", 1, -200),
            OrderLineType::GiftCard => line(Some(t), "Gift card", 1, -100),
            OrderLineType::Digital => OrderLineDraft {
                quantity_unit: "licences".into(),
                ..line(Some(t), "E-book", 3, 100)
            },
            OrderLineType::Surcharge => line(Some(t), "Card surcharge", 1, 50),
            OrderLineType::ReturnFee => OrderLineDraft {
                tax_rate: 2500,
                total_tax_amount: -100,
                ..line(Some(t), "Return fee", 1, -500)
            },
        };
        l.reference = if l.reference.is_empty() {
            format!("ref-{}", t.klarna_name())
        } else {
            l.reference
        };
        lines.push(l);
    }
    lines.push(line(None, "Untyped line", 1, 150));
    let refunded_amount = lines.iter().map(|l| l.total_amount).sum();
    RefundOrderDraft {
        refunded_amount,
        description: "Returned items, less the return fee".into(),
        reference: "RMA-2024-0001".into(),
        order_lines: lines,
        ..RefundOrderDraft::default()
    }
}

/// Every text at the domain's longest (in multi-byte characters where it can be), the largest
/// amounts, rates and discounts, the most negative prices, and each subscription interval.
fn refund_at_the_domain_limits() -> RefundOrderDraft {
    let text = |c: char, n: usize| std::iter::repeat_n(c, n).collect::<String>();
    let url = |n: usize| format!("https://shop.example/{}", text('p', n - 21));
    let full = |interval, name: &str| OrderLineDraft {
        quantity_unit: text('ø', 10),
        tax_rate: 10_000,
        total_tax_amount: 200_000_000,
        reference: text('r', 255),
        merchant_data: text('m', 1024),
        product_url: url(1024),
        image_url: url(1024),
        product_identifiers: Some(ProductIdentifiers {
            brand: text('b', 70),
            category_path: text('c', 750),
            global_trade_item_number: text('7', 50),
            manufacturer_part_number: text('n', 70),
            color: text('é', 64),
            size: text('s', 64),
        }),
        subscription: Some(SubscriptionDraft {
            name: text('ü', 255),
            interval: Some(interval),
            interval_count: i32::MAX,
        }),
        ..line(Some(OrderLineType::Physical), name, 1, 200_000_000)
    };
    let mut lines: Vec<_> = [
        SubscriptionInterval::Day,
        SubscriptionInterval::Week,
        SubscriptionInterval::Month,
        SubscriptionInterval::Year,
    ]
    .into_iter()
    .map(|i| full(i, &text('å', 255)))
    .collect();
    lines.push(OrderLineDraft {
        total_discount_amount: 200_000_000,
        total_amount: 0,
        ..line(
            Some(OrderLineType::Physical),
            "All discounted",
            2,
            100_000_000,
        )
    });
    lines.push(OrderLineDraft {
        total_tax_amount: -200_000_000,
        ..line(
            Some(OrderLineType::Discount),
            "Largest discount",
            1,
            -200_000_000,
        )
    });
    RefundOrderDraft {
        refunded_amount: 200_000_000,
        description: text('ä', 255),
        reference: text('x', 255),
        order_lines: lines,
        ..RefundOrderDraft::default()
    }
}

/// As many lines as the domain allows.
fn refund_with_most_lines() -> RefundOrderDraft {
    let lines: Vec<_> = (0..refund_gateway_domain::command::MAX_ORDER_LINES)
        .map(|i| line(Some(OrderLineType::Physical), &format!("Item {i}"), 1, 10))
        .collect();
    RefundOrderDraft {
        refunded_amount: 10_000,
        order_lines: lines,
        ..RefundOrderDraft::default()
    }
}

/// Optional texts given empty and product identifiers given all empty: the adapter leaves them
/// out.
fn refund_with_empty_optionals() -> RefundOrderDraft {
    RefundOrderDraft {
        refunded_amount: 5000,
        description: String::new(),
        reference: String::new(),
        order_lines: vec![OrderLineDraft {
            product_identifiers: Some(ProductIdentifiers::default()),
            ..line(None, "Plain line", 1, 5000)
        }],
        ..RefundOrderDraft::default()
    }
}

fn refunds() -> Vec<(&'static str, RefundOrderDraft)> {
    vec![
        ("minimal", minimal_refund()),
        ("every line type", refund_with_every_line_type()),
        ("at the domain's limits", refund_at_the_domain_limits()),
        ("most lines", refund_with_most_lines()),
        ("empty optionals", refund_with_empty_optionals()),
    ]
}

/// Number of days the adapter is asked to extend by: the domain's least and an i32's most.
const EXTENSIONS: [i32; 2] = [1, i32::MAX];

/// Makes every call of the port through `api`: each refund, a release, each extension, and the
/// three reads. Panics, after the calls, if any failed.
async fn make_every_call(api: &dyn KlarnaApi) {
    let order_id = OrderId::parse(ORDER_ID).unwrap_or_else(|e| panic!("{e}"));
    let capture_id = CaptureId::parse(CAPTURE_ID).unwrap_or_else(|e| panic!("{e}"));
    let refund_id = RefundId::parse(REFUND_ID).unwrap_or_else(|e| panic!("{e}"));
    let mut failures = Vec::new();
    let mut note = |what: &str, result: Result<(), refund_gateway_domain::KlarnaError>| {
        if let Err(e) = result {
            failures.push(format!("{what}: {e}"));
        }
    };
    for (name, draft) in refunds() {
        let op = op(Rpc::RefundOrder);
        let refund = refund(name, draft, &op);
        let result = api.create_refund(&order_id, &refund, &op).await;
        note(&format!("create_refund ({name})"), result.map(drop));
    }
    let result = api
        .release_remaining_authorization(&order_id, &op(Rpc::ReleaseAuthorization))
        .await;
    note("release_remaining_authorization", result.map(drop));
    for days in EXTENSIONS {
        let result = api
            .extend_due_date(&order_id, &capture_id, days, &op(Rpc::ExtendDueDate))
            .await;
        note(&format!("extend_due_date ({days} days)"), result.map(drop));
    }
    note("get_order", api.get_order(&order_id).await.map(drop));
    note(
        "get_refund",
        api.get_refund(&order_id, &refund_id).await.map(drop),
    );
    note(
        "get_extend_due_date_options",
        api.get_extend_due_date_options(&order_id, &capture_id)
            .await
            .map(drop),
    );
    assert!(
        failures.is_empty(),
        "calls failed against the stand-in:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn every_request_the_adapter_builds_conforms_to_the_spec() {
    let spec = Spec::load();
    let server = klarna_stand_in().await;
    let client = client(&server);
    make_every_call(&client).await;
    let requests = recorded(&server).await;

    let mut problems = Vec::new();
    let mut operations = BTreeSet::new();
    let mut bodies = 0;
    for request in &requests {
        match check(&spec, request) {
            Ok(conforms) => {
                let body = match &conforms.body_schema {
                    Some(schema) => {
                        bodies += 1;
                        format!("body conforms to {schema}")
                    }
                    None => "no body".to_owned(),
                };
                println!(
                    "ok: {} {} ({}): {body}",
                    request.method, request.path, conforms.operation_id
                );
                operations.insert(conforms.operation_id);
            }
            Err(found) => problems.extend(found),
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s) against the spec:\n{}",
        problems.len(),
        problems.join("\n")
    );

    let calls = refunds().len() + 1 + EXTENSIONS.len() + 3;
    assert_eq!(requests.len(), calls, "one request per call");
    let expected_bodies = refunds().len() + EXTENSIONS.len();
    assert!(bodies > 0, "no body was validated");
    assert_eq!(bodies, expected_bodies, "bodies validated");
    let expected: BTreeSet<_> = OPERATIONS_USED.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(operations, expected, "operations reached");
    println!(
        "{} requests checked, {bodies} bodies validated, operations: {operations:?}",
        requests.len()
    );
}

#[tokio::test]
async fn the_check_refuses_what_the_spec_does_not_allow() {
    let spec = Spec::load();
    let server = klarna_stand_in().await;
    let api = client(&server);
    let refund_op = op(Rpc::RefundOrder);
    let refund = refund("every line type", refund_with_every_line_type(), &refund_op);
    let order_id = OrderId::parse(ORDER_ID).unwrap_or_else(|e| panic!("{e}"));
    let capture_id = CaptureId::parse(CAPTURE_ID).unwrap_or_else(|e| panic!("{e}"));
    KlarnaApi::create_refund(&api, &order_id, &refund, &refund_op)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    KlarnaApi::extend_due_date(&api, &order_id, &capture_id, 14, &op(Rpc::ExtendDueDate))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let [refund_request, extend_request] = &recorded(&server).await[..] else {
        panic!("expected two requests");
    };
    let body = |r: &Recorded| -> Value {
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}"))
    };
    let with_body = |r: &Recorded, body: Value| Recorded {
        body: body.to_string().into_bytes(),
        ..r.clone()
    };
    // Unchanged, both pass: the refusals below are the changes'.
    for r in [refund_request, extend_request] {
        if let Err(problems) = check(&spec, r) {
            panic!("{}", problems.join("\n"));
        }
    }

    let refund_body = body(refund_request);
    let changed = |f: &dyn Fn(&mut Map<String, Value>)| {
        let mut body = refund_body.clone();
        f(body
            .as_object_mut()
            .unwrap_or_else(|| panic!("not an object")));
        with_body(refund_request, body)
    };
    let cases: Vec<(&str, Recorded, &str)> = vec![
        (
            "refunded_amount as a string",
            changed(&|b| {
                b.insert("refunded_amount".into(), json!("9500"));
            }),
            "does not conform to #/components/schemas/RefundObject:\n  \
             - at `/refunded_amount`: \"9500\" is not of type \"integer\"",
        ),
        (
            "refunded_amount missing",
            changed(&|b| {
                b.remove("refunded_amount");
            }),
            "\"refunded_amount\" is a required property",
        ),
        (
            "refunded_amount above Klarna's maximum",
            changed(&|b| {
                b.insert("refunded_amount".into(), json!(200_000_001));
            }),
            "at `/refunded_amount`",
        ),
        (
            "a misspelt field",
            changed(&|b| {
                let amount = b.remove("refunded_amount").unwrap_or_default();
                b.insert("refund_amount".into(), amount);
            }),
            "refund_amount",
        ),
        (
            "an unknown line type",
            changed(&|b| {
                b["order_lines"][0]["type"] = json!("teleport");
            }),
            "at `/order_lines/0/type`",
        ),
        (
            "a negative tax rate",
            changed(&|b| {
                b["order_lines"][0]["tax_rate"] = json!(-1);
            }),
            "at `/order_lines/0/tax_rate`",
        ),
        (
            "a subscription without its interval",
            changed(&|b| {
                let line = b["order_lines"][0].as_object_mut();
                let subscription = line.and_then(|l| l.get_mut("subscription"));
                if let Some(Value::Object(s)) = subscription {
                    s.remove("interval");
                }
            }),
            "\"interval\" is a required property",
        ),
        (
            "number_of_days as a string",
            with_body(extend_request, json!({"number_of_days": "14"})),
            "at `/number_of_days`",
        ),
        (
            "a body on release, which takes none",
            Recorded {
                method: "POST".into(),
                path: format!(
                    "/ordermanagement/v1/orders/{ORDER_ID}/release-remaining-authorization"
                ),
                body: b"{}".to_vec(),
                ..refund_request.clone()
            },
            "the operation takes no body",
        ),
        (
            "a path the spec does not have",
            Recorded {
                path: format!("/ordermanagement/v1/orders/{ORDER_ID}/refund"),
                ..refund_request.clone()
            },
            "no path template of the spec matches",
        ),
        (
            "a method the spec does not have there",
            Recorded {
                method: "PUT".into(),
                ..refund_request.clone()
            },
            "the spec has no PUT on /ordermanagement/v1/orders/{order_id}/refunds",
        ),
        (
            "an undeclared Klarna header",
            Recorded {
                headers: [("klarna-teleport".to_owned(), "1".to_owned())]
                    .into_iter()
                    .chain(refund_request.headers.iter().cloned())
                    .collect(),
                ..refund_request.clone()
            },
            "klarna-teleport",
        ),
    ];
    for (what, request, expected) in cases {
        match check(&spec, &request) {
            Ok(_) => panic!("{what}: accepted"),
            Err(problems) => {
                let problems = problems.join("\n");
                assert!(
                    problems.contains(expected),
                    "{what}: expected a problem with {expected:?}, got:\n{problems}"
                );
                println!("refused, as it should be: {what}: {problems}");
            }
        }
    }
}

/// The copy's one known defect, pinned: read literally, `order_line.type` refuses every line
/// type (its enum is one value, the names joined with `|`); read as the names it joins, it
/// takes each of the domain's types and nothing else.
#[test]
fn spec_defects_are_the_known_ones() {
    let spec = Spec::load();
    assert_eq!(
        spec.split_enums,
        ["#/components/schemas/order_line/properties/type"]
    );

    let raw = raw_spec();
    let joined = raw
        .pointer("/components/schemas/order_line/properties/type/enum")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        joined,
        json!([
            "physical|discount|shipping_fee|sales_tax|store_credit|gift_card|digital|surcharge|return_fee"
        ])
    );
    let line_type = |doc: &Value| {
        let schema = json!({"$ref": "#/components/schemas/order_line/properties/type"});
        BodySchema::new(doc, "order_line.type".into(), &schema)
    };
    let literal = line_type(&raw);
    let read = line_type(&spec.doc);
    for t in OrderLineType::ALL {
        let name = json!(t.klarna_name());
        assert!(
            !literal.violations(&name).is_empty(),
            "{name} taken literally"
        );
        assert_eq!(read.violations(&name), Vec::<String>::new(), "{name}");
    }
    for wrong in ["teleport", "physical_goods", "PHYSICAL", ""] {
        assert!(!read.violations(&json!(wrong)).is_empty(), "{wrong} taken");
    }
}
