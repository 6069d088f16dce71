//! The hostile-input catalogue, first part: what a careless or malicious caller can send
//! besides a wrong field. Oversized messages and repeated fields, metadata that is not text, a
//! giant token, out-of-spec deadlines, path traversal and percent-encoding in ids, header
//! injection in free text, amounts at the ends of i64, unknown enum values, degenerate
//! idempotency keys, and a flood of calls cancelled mid-mutation. A refused input gets a clean
//! answer (a status the gateway built, or where the transport itself refuses, a failed call and
//! nothing else), never a panic, and nothing reaches Klarna or the store; an input that is
//! harmless (raw bytes in metadata beside a valid call) leaves the call as it was. Either way
//! the gateway serves a good request afterwards.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use klarna_sim::{CaptureSeed, TransactionSeed};
use refund_gateway_tests::{AppOptions, TestApp, spawn_app, spawn_app_with, wait_until};
use sha2::{Digest, Sha256};
use tonic::metadata::{AsciiMetadataValue, BinaryMetadataValue};
use tonic::{Request, Status};

use super::*;

const TOKEN: &str = "ops-token-hostile-77a1";

/// A well-formed transaction KRN and one of its captures (unknown to the simulator: only
/// requests refused before anything is sent use them).
const TRANSACTION: &str = "krn:payment:eu1:transaction:6b1f3c2e-0d4a-4b8e-9f1a-2c3d4e5f6a70";
const CAPTURE: &str = "krn:payment:eu1:transaction:6b1f3c2e-0d4a-4b8e-9f1a-2c3d4e5f6a70:capture:1";

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `message` with `authorization: Bearer <token>`.
fn bearer<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    request.metadata_mut().insert("authorization", value);
    request
}

/// A gateway with authentication on and one caller, `ops`, that may do everything.
async fn app_with_callers() -> anyhow::Result<TestApp> {
    spawn_app_with(AppOptions {
        callers: Some(format!(
            "[[caller]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nrpcs = [\"*\"]\nklarna_accounts = [\"*\"]\n",
            hash(TOKEN)
        )),
        ..AppOptions::default()
    })
    .await
}

/// `message`, with the bearer token when the gateway authenticates (`token` is `Some`).
fn call<T>(token: Option<&str>, message: T) -> Request<T> {
    match token {
        Some(token) => bearer(token, message),
        None => Request::new(message),
    }
}

/// Asserts `status` is INVALID_ARGUMENT naming exactly `fields`.
#[track_caller]
fn assert_bad_fields(status: &Status, fields: &[&str], what: &str) {
    assert_eq!(bad_fields(status), fields, "{what}: {status:?}");
}

/// The call was refused: its status, or a panic saying what was let through.
#[track_caller]
fn refused<T: std::fmt::Debug>(answer: Result<tonic::Response<T>, Status>, what: &str) -> Status {
    match answer {
        Ok(response) => panic!("{what} was accepted: {response:?}"),
        Err(status) => status,
    }
}

#[track_caller]
fn assert_nothing_sent(app: &TestApp) {
    let calls = klarna_calls(&app.sim.sim);
    assert!(calls.is_empty(), "Klarna was called: {calls:?}");
}

async fn assert_nothing_stored(app: &TestApp, token: Option<&str>) -> anyhow::Result<()> {
    let stored = app
        .client
        .clone()
        .list_operations(call(token, pb::ListOperationsRequest::default()))
        .await?
        .into_inner()
        .operations;
    anyhow::ensure!(stored.is_empty(), "stored: {stored:?}");
    Ok(())
}

/// A good refund, on a fresh order, after the hostile requests: the gateway still serves.
async fn still_serves(app: &TestApp, token: Option<&str>) -> anyhow::Result<()> {
    let order = captured_order(&app.sim.sim, 10_000);
    let key = format!("good-{}", uuid::Uuid::new_v4());
    let made = app
        .client
        .clone()
        .refund_order(call(token, refund_request(&key, &order.order_id, 100)))
        .await?
        .into_inner();
    anyhow::ensure!(!made.refund_id.is_empty(), "{made:?}");
    let after = app
        .sim
        .sim
        .order_json(&order.order_id)
        .ok_or_else(|| anyhow::anyhow!("order gone"))?;
    anyhow::ensure!(after["refunded_amount"] == 100, "{after}");
    Ok(())
}

/// A refund of a capture, well formed but for the KRNs a test puts in.
fn capture_refund(
    key: &str,
    transaction: &str,
    capture: &str,
    amount: i64,
) -> pb::RefundCaptureRequest {
    pb::RefundCaptureRequest {
        idempotency_key: key.into(),
        payment_transaction_id: transaction.into(),
        payment_capture_id: capture.into(),
        amount,
        currency: "SEK".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_request_over_max_message_bytes_is_message_too_large() -> anyhow::Result<()> {
    let app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    let mut request = refund_request("huge-1", &order.order_id, 100);
    request.description = "x".repeat(5 << 20);
    // The client's own limit would refuse to send it.
    let mut client = app.client.clone().max_encoding_message_size(usize::MAX);
    let status = refused(client.refund_order(request).await, "a 5 MiB request");
    assert_reason(&status, Code::ResourceExhausted, "MESSAGE_TOO_LARGE");
    assert_nothing_sent(&app);
    assert_nothing_stored(&app, None).await?;
    still_serves(&app, None).await?;
    app.shutdown().await
}

/// Calls `method` of the refund service with `message` as the request's bytes, as a client
/// that writes its own protobuf would, and returns the status it got.
async fn raw_call(app: &TestApp, method: &str, message: &[u8]) -> anyhow::Result<Status> {
    let mut body = vec![0_u8];
    body.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
    body.extend_from_slice(message);
    let http = reqwest::Client::builder().http2_prior_knowledge().build()?;
    let response = http
        .post(format!(
            "{}/refundgateway.v1.RefundGatewayService/{method}",
            app.grpc_url
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .send()
        .await?;
    Status::from_header_map(response.headers())
        .ok_or_else(|| anyhow::anyhow!("no grpc-status in {:?}", response.headers()))
}

/// Bytes that are not a valid protobuf message are the caller's bad input: INVALID_ARGUMENT
/// naming the field the decoder failed in, never INTERNAL, and nothing happens.
#[tokio::test]
async fn a_request_that_is_not_valid_protobuf_is_an_invalid_argument() -> anyhow::Result<()> {
    let app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    let id = order.order_id.as_bytes();
    let mut key_not_utf8 = vec![0x0a, 2, 0xff, 0xfe, 0x1a, u8::try_from(id.len())?];
    key_not_utf8.extend_from_slice(id);
    key_not_utf8.extend_from_slice(&[0x20, 100]);
    // order_lines (8) holding a line whose name (2) is not UTF-8.
    let line_not_utf8 = [0x42, 4, 0x12, 2, 0xc3, 0x28];
    // refunded_amount (4) cut off in its varint; a tag cut off before any field.
    let truncated_amount = [0x20, 0xff, 0xff];
    let truncated_tag = [0xff, 0xff];
    let cases: [(&str, &[u8], &str); 5] = [
        ("RefundOrder", &key_not_utf8, "idempotency_key"),
        ("RefundOrder", &line_not_utf8, "order_lines.name"),
        ("RefundOrder", &truncated_amount, "refunded_amount"),
        ("RefundOrder", &truncated_tag, "request"),
        // GetOrderRequest.klarna_account (1), one byte that is not UTF-8.
        ("GetOrder", &[0x0a, 1, 0x80], "klarna_account"),
    ];
    for (method, message, field) in cases {
        let status = raw_call(&app, method, message).await?;
        assert_eq!(
            bad_fields(&status),
            [field],
            "{method} {message:02x?}: {status:?}"
        );
    }
    assert_nothing_sent(&app);
    assert_nothing_stored(&app, None).await?;
    still_serves(&app, None).await?;
    app.shutdown().await
}

#[tokio::test]
async fn a_hundred_thousand_order_lines_are_refused_by_their_count() -> anyhow::Result<()> {
    let app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    let mut request = refund_request("many-lines-1", &order.order_id, 100_000);
    // About 13 bytes a line: 1.3 MB, under the 4 MiB message limit, so validation answers.
    request.order_lines = (0..100_000).map(|_| line("x", 1, 1)).collect();
    let started = Instant::now();
    let status = refused(
        app.client.clone().refund_order(request).await,
        "10^5 order lines",
    );
    let took = started.elapsed();
    assert_bad_fields(&status, &["order_lines"], "10^5 order lines");
    assert!(status.message().contains("at most 1000"), "{status:?}");
    assert!(took < Duration::from_secs(30), "answered after {took:?}");
    assert_nothing_sent(&app);
    assert_nothing_stored(&app, None).await?;
    still_serves(&app, None).await?;
    app.shutdown().await
}

/// Lines with a negative quantity: one violation each.
fn bad_lines(count: usize) -> Vec<pb::OrderLine> {
    (0..count)
        .map(|_| pb::OrderLine {
            quantity: -1,
            total_amount: -1,
            ..line("x", 1, 1)
        })
        .collect()
}

#[tokio::test]
async fn a_hundred_bad_order_lines_get_an_answer_the_caller_can_read() -> anyhow::Result<()> {
    let app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    let mut request = refund_request("bad-lines-1", &order.order_id, 1_000);
    // Well within Klarna's 1000 lines, each line wrong in the same way.
    request.order_lines = bad_lines(100);
    let status = refused(
        app.client.clone().refund_order(request).await,
        "100 bad order lines",
    );
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "the answer cannot be read: {status:?}"
    );
    // The first problems, and a count of the rest: the answer must fit in the headers.
    let fields = bad_fields(&status);
    assert!(
        fields.iter().any(|f| f == "order_lines[0].quantity"),
        "the answer does not say what is wrong: {fields:?}"
    );
    let details = status.get_error_details();
    let unlisted = details
        .bad_request()
        .and_then(|b| b.field_violations.last())
        .map(|v| v.description.clone())
        .unwrap_or_default();
    assert!(unlisted.contains("more problems"), "{unlisted}");
    assert!(status.message().len() < 2_000, "{}", status.message().len());
    assert_nothing_sent(&app);
    assert_nothing_stored(&app, None).await?;
    still_serves(&app, None).await?;
    app.shutdown().await
}

#[tokio::test]
async fn a_hundred_thousand_bad_order_lines_are_answered_and_change_nothing() -> anyhow::Result<()>
{
    let app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    let mut request = refund_request("bad-lines-2", &order.order_id, 1_000);
    request.order_lines = bad_lines(100_000);
    let started = Instant::now();
    let status = refused(
        app.client.clone().refund_order(request).await,
        "10^5 bad order lines",
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "answered after {took:?}");
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "the answer cannot be read: {status:?}"
    );
    assert_nothing_sent(&app);
    assert_nothing_stored(&app, None).await?;
    still_serves(&app, None).await?;
    app.shutdown().await
}

#[tokio::test]
async fn an_authorization_that_is_not_text_is_unauthenticated() -> anyhow::Result<()> {
    let app = app_with_callers().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    let values: Vec<Vec<u8>> = vec![
        b"\xff\xfe".to_vec(),
        b"Bearer \xff\xfe".to_vec(),
        // The valid token with one byte more that is not text.
        [b"Bearer ".as_slice(), TOKEN.as_bytes(), b"\xff"].concat(),
        // Not UTF-8 at all (a lone continuation byte).
        [b"Bearer ".as_slice(), b"\xc3\x28", TOKEN.as_bytes()].concat(),
        // A tab for the space.
        [b"Bearer\t".as_slice(), TOKEN.as_bytes()].concat(),
    ];
    for value in values {
        let value = AsciiMetadataValue::try_from(value.as_slice())
            .map_err(|e| anyhow::anyhow!("{value:?}: {e}"))?;
        let mut request = Request::new(refund_request("raw-auth-1", &order.order_id, 100));
        request
            .metadata_mut()
            .insert("authorization", value.clone());
        let status = refused(
            app.client.clone().refund_order(request).await,
            &format!("authorization {value:?}"),
        );
        assert_reason(&status, Code::Unauthenticated, "UNAUTHENTICATED");
    }
    assert_nothing_sent(&app);
    assert_nothing_stored(&app, Some(TOKEN)).await?;
    still_serves(&app, Some(TOKEN)).await?;
    app.shutdown().await
}

#[tokio::test]
async fn metadata_of_raw_bytes_beside_a_valid_call_changes_nothing_it_does() -> anyhow::Result<()> {
    let app = app_with_callers().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    let mut request = bearer(TOKEN, refund_request("raw-meta-1", &order.order_id, 100));
    // A request id that is not text, and binary metadata of every byte value.
    request.metadata_mut().insert(
        "x-request-id",
        AsciiMetadataValue::try_from(&b"\xff\xfe\x80id"[..]).map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    request.metadata_mut().insert_bin(
        "x-junk-bin",
        BinaryMetadataValue::from_bytes(&(0..=255u8).collect::<Vec<_>>()),
    );
    let made = app.client.clone().refund_order(request).await?.into_inner();
    assert!(!made.refund_id.is_empty());
    let posts: Vec<_> = klarna_calls(&app.sim.sim)
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(
        posts[0].header("klarna-idempotency-key"),
        Some(made.operation_id.as_str())
    );
    still_serves(&app, Some(TOKEN)).await?;
    app.shutdown().await
}

/// `grpc-timeout` values a conforming client never sends (the spec allows 8 digits): each must
/// get a clean answer (ignored, or refused by the gateway), never a panic.
#[tokio::test]
async fn a_grpc_timeout_beyond_the_spec_gets_a_clean_answer() -> anyhow::Result<()> {
    let app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    let values = [
        "18446744073709551615S",
        "10000000000000000H",
        "999999999999999999M",
        "99999999999999999999999H",
        "-5S",
        "5",
        "S",
        "5x",
    ];
    let mut problems = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let value: AsciiMetadataValue = value.parse()?;
        let mut read = Request::new(pb::GetOrderRequest {
            order_id: order.order_id.clone(),
            ..Default::default()
        });
        read.metadata_mut().insert("grpc-timeout", value.clone());
        if let Err(status) = app.client.clone().get_order(read).await
            && status.get_error_details().error_info().is_none()
        {
            problems.push(format!("GetOrder with grpc-timeout {value:?}: {status:?}"));
        }
        let mut refund = Request::new(refund_request(&format!("timeout-{i}"), &order.order_id, 10));
        refund.metadata_mut().insert("grpc-timeout", value.clone());
        if let Err(status) = app.client.clone().refund_order(refund).await
            && status.get_error_details().error_info().is_none()
        {
            problems.push(format!(
                "RefundOrder with grpc-timeout {value:?}: {status:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    still_serves(&app, None).await?;
    app.shutdown().await
}

#[tokio::test]
async fn a_one_mebibyte_bearer_token_is_refused_cleanly() -> anyhow::Result<()> {
    let app = app_with_callers().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    let huge = "a".repeat(1 << 20);
    let status = refused(
        app.client
            .clone()
            .refund_order(bearer(
                &huge,
                refund_request("big-token-1", &order.order_id, 100),
            ))
            .await,
        "a 1 MiB bearer token",
    );
    // Over HTTP/2's header list limit the transport may refuse it before the gateway sees
    // it; if the gateway sees it, it must say UNAUTHENTICATED.
    if status.get_error_details().error_info().is_some() {
        assert_reason(&status, Code::Unauthenticated, "UNAUTHENTICATED");
    }
    // A token large but within the header limit is judged by the gateway.
    let big = "a".repeat(8 << 10);
    let status = refused(
        app.client
            .clone()
            .refund_order(bearer(
                &big,
                refund_request("big-token-2", &order.order_id, 100),
            ))
            .await,
        "an 8 KiB bearer token",
    );
    assert_reason(&status, Code::Unauthenticated, "UNAUTHENTICATED");
    assert_nothing_sent(&app);
    assert_nothing_stored(&app, Some(TOKEN)).await?;
    still_serves(&app, Some(TOKEN)).await?;
    app.shutdown().await
}

#[tokio::test]
async fn order_ids_with_path_traversal_or_percent_encoding_are_invalid() -> anyhow::Result<()> {
    let app = spawn_app().await?;
    // 36 characters, the length of a UUID.
    let traversal36 = "../../../../../../__admin/clock/xxxx";
    assert_eq!(traversal36.len(), 36);
    let ids = [
        "../admin",
        "%2F..%2F",
        "a%00b",
        "4e6b2c1a-8f3d-4b7e-9a2c-5d1e0f3b7a64/../x",
        "4e6b2c1a-8f3d-4b7e-9a2c-5d1e0f3b7a64%2F..",
        "..%2F..%2F__admin%2Fclock",
        traversal36,
    ];
    for id in ids {
        let status = refused(
            app.client
                .clone()
                .refund_order(refund_request("traversal-1", id, 100))
                .await,
            &format!("RefundOrder on {id:?}"),
        );
        assert_bad_fields(&status, &["order_id"], id);
        let status = refused(
            app.client
                .clone()
                .get_order(pb::GetOrderRequest {
                    order_id: id.into(),
                    ..Default::default()
                })
                .await,
            &format!("GetOrder on {id:?}"),
        );
        assert_bad_fields(&status, &["order_id"], id);
        let status = refused(
            app.client
                .clone()
                .release_authorization(pb::ReleaseAuthorizationRequest {
                    idempotency_key: "traversal-2".into(),
                    order_id: id.into(),
                    ..Default::default()
                })
                .await,
            &format!("ReleaseAuthorization on {id:?}"),
        );
        assert_bad_fields(&status, &["order_id"], id);
    }
    assert_nothing_sent(&app);
    assert_nothing_stored(&app, None).await?;
    still_serves(&app, None).await?;
    app.shutdown().await
}

/// Asserts RefundCapture (with `krn` as either KRN) and GetTransaction refuse `krn`, naming
/// the field.
async fn assert_krn_refused(app: &TestApp, krn: &str) -> anyhow::Result<()> {
    let status = refused(
        app.client
            .clone()
            .refund_capture(capture_refund("krn-1", krn, CAPTURE, 100))
            .await,
        &format!("RefundCapture of transaction {krn:?}"),
    );
    assert_bad_fields(&status, &["payment_transaction_id"], krn);
    let status = refused(
        app.client
            .clone()
            .refund_capture(capture_refund("krn-2", TRANSACTION, krn, 100))
            .await,
        &format!("RefundCapture of capture {krn:?}"),
    );
    assert_bad_fields(&status, &["payment_capture_id"], krn);
    let status = refused(
        app.client
            .clone()
            .get_transaction(pb::GetTransactionRequest {
                payment_transaction_id: krn.into(),
                ..Default::default()
            })
            .await,
        &format!("GetTransaction of {krn:?}"),
    );
    assert_bad_fields(&status, &["payment_transaction_id"], krn);
    Ok(())
}

#[tokio::test]
async fn krns_with_path_traversal_are_invalid() -> anyhow::Result<()> {
    let app = spawn_app().await?;
    for krn in [
        "krn:a/../b",
        "krn:../../__admin/clock",
        "krn:payment:eu1:transaction:x/../../refunds",
        "krn:a?b=../c",
        "krn:a#/../b",
    ] {
        assert_krn_refused(&app, krn).await?;
    }
    assert_nothing_sent(&app);
    assert_nothing_stored(&app, None).await?;
    still_serves(&app, None).await?;
    app.shutdown().await
}

/// A `%` in a KRN: Klarna's KRNs never hold one, and a percent-encoded `/` or NUL is a
/// traversal or truncation attempt on any server that decodes the path once more.
#[tokio::test]
async fn krns_with_percent_encoding_are_invalid() -> anyhow::Result<()> {
    let app = spawn_app().await?;
    for krn in ["krn:a%2Fb", "krn:a%00", "krn:..%2F..%2F__admin%2Fclock"] {
        assert_krn_refused(&app, krn).await?;
    }
    assert_nothing_sent(&app);
    assert_nothing_stored(&app, None).await?;
    still_serves(&app, None).await?;
    app.shutdown().await
}

/// Asserts the one logged Klarna POST carries exactly one idempotency key, the operation id,
/// no header made of the injected text, and the text in its JSON body.
#[track_caller]
fn assert_text_only_in_body(post: &LoggedRequest, operation_id: &str, texts: &[&str]) {
    let keys: Vec<&str> = post
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("klarna-idempotency-key"))
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(keys, [operation_id], "{post:?}");
    for (name, value) in &post.headers {
        assert!(
            !name.eq_ignore_ascii_case("x-injected") && !value.contains("evil"),
            "injected header {name}: {value}"
        );
    }
    for text in texts {
        let json = serde_json::to_string(text).unwrap_or_else(|e| panic!("{e}"));
        assert!(post.body.contains(&json), "{json} not in {}", post.body);
    }
}

const INJECTED_DESCRIPTION: &str =
    "x\r\nKlarna-Idempotency-Key: evil\r\n\r\n{\"refunded_amount\": 1}";
const INJECTED_REFERENCE: &str = "r\r\nX-Injected: evil\nKlarna-Idempotency-Key: evil";

/// Asserts `status` is INVALID_ARGUMENT naming exactly `description` and `reference`, each
/// for its control characters.
#[track_caller]
fn assert_text_refused(status: &Status) {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let violations: BTreeSet<(String, String)> = status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default();
    let refused = "must not contain control characters".to_owned();
    assert_eq!(
        violations,
        BTreeSet::from([
            ("description".to_owned(), refused.clone()),
            ("reference".to_owned(), refused)
        ]),
        "{status:?}"
    );
}

#[tokio::test]
async fn line_breaks_in_a_refunds_text_are_refused_and_stay_inside_the_json_body_elsewhere()
-> anyhow::Result<()> {
    let app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    // The customer's text and the settlement reference: refused by name, nothing sent.
    let mut request = refund_request("crlf-1", &order.order_id, 100);
    request.description = INJECTED_DESCRIPTION.into();
    request.reference = INJECTED_REFERENCE.into();
    let status = match app.client.clone().refund_order(request).await {
        Ok(made) => anyhow::bail!("accepted: {made:?}"),
        Err(status) => status,
    };
    assert_text_refused(&status);
    assert_nothing_sent(&app);
    assert_nothing_stored(&app, None).await?;

    // A line's merchant data is free text: it goes, inside the JSON body and nowhere else.
    let mut request = refund_request("crlf-2", &order.order_id, 100);
    request.order_lines = vec![pb::OrderLine {
        merchant_data: INJECTED_DESCRIPTION.into(),
        ..line("Shirt", 1, 100)
    }];
    let made = app.client.clone().refund_order(request).await?.into_inner();
    let posts: Vec<_> = klarna_calls(&app.sim.sim)
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_text_only_in_body(&posts[0], &made.operation_id, &[INJECTED_DESCRIPTION]);
    let body: serde_json::Value = serde_json::from_str(&posts[0].body)?;
    assert_eq!(body["refunded_amount"], 100);
    assert_eq!(
        body["order_lines"][0]["merchant_data"],
        INJECTED_DESCRIPTION
    );
    still_serves(&app, None).await?;
    app.shutdown().await
}

#[tokio::test]
async fn line_breaks_in_a_partner_refunds_text_are_refused() -> anyhow::Result<()> {
    let app = spawn_app().await?;
    let seeded = app.sim.sim.seed_transaction(TransactionSeed {
        amount: 10_000,
        captures: vec![CaptureSeed {
            amount: 10_000,
            payment_capture_id: None,
        }],
        ..TransactionSeed::default()
    });
    let capture = seeded
        .payment_capture_ids
        .first()
        .ok_or_else(|| anyhow::anyhow!("no capture seeded"))?;
    let mut request = capture_refund("crlf-3", &seeded.payment_transaction_id, capture, 100);
    request.description = INJECTED_DESCRIPTION.into();
    request.reference = INJECTED_REFERENCE.into();
    let status = match app.client.clone().refund_capture(request).await {
        Ok(made) => anyhow::bail!("accepted: {made:?}"),
        Err(status) => status,
    };
    assert_text_refused(&status);
    assert_nothing_sent(&app);
    assert_nothing_stored(&app, None).await?;
    still_serves(&app, None).await?;
    app.shutdown().await
}

#[tokio::test]
async fn amounts_out_of_range_and_overflowing_lines_are_invalid_arguments() -> anyhow::Result<()> {
    let app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    for amount in [-1, 0, i64::MIN, i64::MAX, 200_000_001] {
        let status = refused(
            app.client
                .clone()
                .refund_order(refund_request("amount-1", &order.order_id, amount))
                .await,
            &format!("RefundOrder of {amount}"),
        );
        assert_bad_fields(&status, &["refunded_amount"], &amount.to_string());
        let status = refused(
            app.client
                .clone()
                .refund_capture(capture_refund("amount-2", TRANSACTION, CAPTURE, amount))
                .await,
            &format!("RefundCapture of {amount}"),
        );
        assert_bad_fields(&status, &["amount"], &amount.to_string());
    }

    let half = i64::MAX / 2 + 1;
    let extreme = |quantity: i64, unit_price: i64, total_amount: i64| pb::OrderLine {
        quantity,
        unit_price,
        total_amount,
        ..line("x", 1, 1)
    };
    let return_fee_at = |amount: i64| pb::OrderLine {
        r#type: pb::OrderLineType::ReturnFee.into(),
        ..extreme(1, amount, amount)
    };
    let cases: Vec<(&str, Vec<pb::OrderLine>, &str)> = vec![
        (
            "two lines whose totals sum past i64::MAX",
            vec![extreme(1, half, half), extreme(1, half, half)],
            "order_lines[1].total_amount",
        ),
        (
            "a return fee at i64::MIN beside a line at i64::MAX",
            vec![extreme(1, i64::MAX, i64::MAX), return_fee_at(i64::MIN)],
            "order_lines[1].total_amount",
        ),
        (
            "quantity times unit price past i64::MAX",
            vec![extreme(i64::MAX, 2, 0)],
            "order_lines[0].total_amount",
        ),
        (
            "a discount of i64::MIN",
            vec![pb::OrderLine {
                total_discount_amount: i64::MIN,
                ..line("x", 1, 1)
            }],
            "order_lines[0].total_discount_amount",
        ),
        (
            "a negative quantity times i64::MIN",
            vec![extreme(-1, i64::MIN, i64::MIN)],
            "order_lines[0].quantity",
        ),
        (
            "a tax rate of i32::MIN",
            vec![pb::OrderLine {
                tax_rate: i32::MIN,
                ..line("x", 1, 1)
            }],
            "order_lines[0].tax_rate",
        ),
    ];
    for (what, lines, field) in cases {
        let mut request = refund_request("lines-overflow-1", &order.order_id, 100);
        request.order_lines = lines;
        let status = refused(app.client.clone().refund_order(request).await, what);
        let fields = bad_fields(&status);
        assert!(fields.iter().any(|f| f == field), "{what}: {fields:?}");
        assert!(
            fields.iter().all(|f| f.starts_with("order_lines")),
            "{what}: {fields:?}"
        );
    }

    // A partner refund's line items whose totals sum past i64::MAX.
    let item = |total: i64| pb::LineItem {
        name: "x".into(),
        quantity: 1,
        unit_price: total,
        total_amount: total,
        ..Default::default()
    };
    let request = pb::RefundTransactionRequest {
        idempotency_key: "items-overflow-1".into(),
        payment_transaction_id: TRANSACTION.into(),
        amount: 100,
        currency: "SEK".into(),
        line_items: vec![item(half), item(half)],
        ..Default::default()
    };
    let status = refused(
        app.client.clone().refund_transaction(request).await,
        "line items whose totals sum past i64::MAX",
    );
    // Each total is beyond Klarna's bound on an amount, which is refused before any sum.
    assert_bad_fields(
        &status,
        &[
            "line_items[0].unit_price",
            "line_items[0].total_amount",
            "line_items[1].unit_price",
            "line_items[1].total_amount",
        ],
        "line items summing past i64::MAX",
    );
    assert_nothing_sent(&app);
    assert_nothing_stored(&app, None).await?;
    still_serves(&app, None).await?;
    app.shutdown().await
}

/// Order lines are held to Klarna's ±200 000 000 per amount; a partner refund's line items
/// must be too, even when their totals cancel out to a valid amount.
#[tokio::test]
async fn partner_line_items_beyond_klarnas_maximum_are_invalid_even_when_they_sum_right()
-> anyhow::Result<()> {
    let app = spawn_app().await?;
    let seeded = app.sim.sim.seed_transaction(TransactionSeed {
        amount: 10_000,
        captures: vec![CaptureSeed {
            amount: 10_000,
            payment_capture_id: None,
        }],
        ..TransactionSeed::default()
    });
    let item = |total: i64| pb::LineItem {
        name: "x".into(),
        quantity: 1,
        unit_price: total,
        total_amount: total,
        ..Default::default()
    };
    let request = pb::RefundTransactionRequest {
        idempotency_key: "items-extreme-1".into(),
        payment_transaction_id: seeded.payment_transaction_id.clone(),
        amount: 100,
        currency: "SEK".into(),
        line_items: vec![item(i64::MAX), item(-i64::MAX + 100)],
        ..Default::default()
    };
    let status = refused(
        app.client.clone().refund_transaction(request).await,
        "line items of i64::MAX and -i64::MAX + 100",
    );
    let fields = bad_fields(&status);
    assert!(
        fields.iter().any(|f| f.starts_with("line_items[0]"))
            && fields.iter().all(|f| f.starts_with("line_items")),
        "{fields:?}"
    );
    let sent: Vec<_> = klarna_calls(&app.sim.sim)
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    assert!(sent.is_empty(), "{sent:?}");
    assert_nothing_stored(&app, None).await?;
    still_serves(&app, None).await?;
    app.shutdown().await
}

#[tokio::test]
async fn unknown_enum_values_are_invalid_arguments_naming_the_field() -> anyhow::Result<()> {
    let app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    for value in [999, -1, i32::MAX] {
        let mut request = refund_request("enum-1", &order.order_id, 100);
        request.order_lines = vec![pb::OrderLine {
            r#type: value,
            ..line("x", 1, 100)
        }];
        let status = refused(
            app.client.clone().refund_order(request).await,
            &format!("order line type {value}"),
        );
        assert_bad_fields(&status, &["order_lines[0].type"], &value.to_string());

        let mut request = refund_request("enum-2", &order.order_id, 100);
        request.order_lines = vec![pb::OrderLine {
            subscription: Some(pb::Subscription {
                name: "Monthly box".into(),
                interval: value,
                interval_count: 1,
            }),
            ..line("x", 1, 100)
        }];
        let status = refused(
            app.client.clone().refund_order(request).await,
            &format!("subscription interval {value}"),
        );
        assert_bad_fields(
            &status,
            &["order_lines[0].subscription.interval"],
            &value.to_string(),
        );

        let status = refused(
            app.client
                .clone()
                .list_operations(pb::ListOperationsRequest {
                    state: value,
                    ..Default::default()
                })
                .await,
            &format!("ListOperations state {value}"),
        );
        assert_bad_fields(&status, &["state"], &value.to_string());
    }
    // Out-of-range numbers beside the enums: a page size and timestamps no clock reaches.
    let mut filter = pb::ListOperationsRequest {
        page_size: i32::MIN,
        created_after: Some(Default::default()),
        created_before: Some(Default::default()),
        ..Default::default()
    };
    if let Some(after) = filter.created_after.as_mut() {
        after.seconds = i64::MAX;
    }
    if let Some(before) = filter.created_before.as_mut() {
        before.seconds = i64::MIN;
        before.nanos = -1;
    }
    let status = refused(
        app.client.clone().list_operations(filter).await,
        "ListOperations with out-of-range numbers",
    );
    let fields: BTreeSet<String> = bad_fields(&status).into_iter().collect();
    assert_eq!(
        fields,
        ["created_after", "created_before", "page_size"]
            .into_iter()
            .map(str::to_owned)
            .collect::<BTreeSet<_>>()
    );
    assert_nothing_sent(&app);
    assert_nothing_stored(&app, None).await?;
    still_serves(&app, None).await?;
    app.shutdown().await
}

#[tokio::test]
async fn degenerate_idempotency_keys_are_invalid_arguments() -> anyhow::Result<()> {
    let app = spawn_app().await?;
    let order = captured_order(&app.sim.sim, 10_000);
    let keys = [
        String::new(),
        "k".repeat(10_000),
        "é".repeat(256),
        "a\u{0}b".to_owned(),
        "a\r\nKlarna-Idempotency-Key: evil".to_owned(),
    ];
    for key in &keys {
        let shown: String = key.chars().take(40).collect();
        let status = refused(
            app.client
                .clone()
                .refund_order(refund_request(key, &order.order_id, 100))
                .await,
            &format!("RefundOrder under {shown:?}"),
        );
        assert_bad_fields(&status, &["idempotency_key"], &shown);
        let status = refused(
            app.client
                .clone()
                .refund_capture(capture_refund(key, TRANSACTION, CAPTURE, 100))
                .await,
            &format!("RefundCapture under {shown:?}"),
        );
        assert_bad_fields(&status, &["idempotency_key"], &shown);
        let status = refused(
            app.client
                .clone()
                .release_authorization(pb::ReleaseAuthorizationRequest {
                    idempotency_key: key.clone(),
                    order_id: order.order_id.clone(),
                    ..Default::default()
                })
                .await,
            &format!("ReleaseAuthorization under {shown:?}"),
        );
        assert_bad_fields(&status, &["idempotency_key"], &shown);
    }
    assert_nothing_sent(&app);
    assert_nothing_stored(&app, None).await?;
    // 255 characters is a key.
    let longest = "é".repeat(255);
    app.client
        .clone()
        .refund_order(refund_request(&longest, &order.order_id, 100))
        .await?;
    still_serves(&app, None).await?;
    app.shutdown().await
}

backend_test! {
    async fn a_flood_of_calls_cancelled_mid_mutation_loses_and_doubles_nothing(
        db: Backend,
    ) -> anyhow::Result<()> {
        // A lease far longer than the waits below: a claim cut from the task that works it
        // (the caller gone mid-claim) would sit until it expired, holding its order on
        // PostgreSQL, and the waits would give up. The call runs detached from its caller,
        // so none is cut.
        let app = spawn_app_with(AppOptions {
            reconcile_interval_ms: Some(50),
            lease_secs: Some(300),
            ..db.options()
        })
        .await?;
        let order = captured_order(&app.sim.sim, 100_000);
        fault_refunds(
            &app.sim.sim,
            &order.order_id,
            1_000,
            FaultKind::Latency { millis: 300 },
        );
        let refunds_path = format!("/ordermanagement/v1/orders/{}/refunds", order.order_id);
        let posts = || {
            klarna_calls(&app.sim.sim)
                .iter()
                .filter(|r| r.method == "POST" && r.path == refunds_path)
                .count()
        };
        // Distinct amounts, so a lost or doubled refund shows in the sum.
        let calls: Vec<_> = (0..20i64)
            .map(|i| {
                let mut client = app.client.clone();
                let request = refund_request(&format!("cancelled-{i}"), &order.order_id, 100 + i);
                tokio::spawn(async move { client.refund_order(request).await })
            })
            .collect();
        // Half are cancelled early, one more scheduling step apart each, so they are cut at
        // different points (before sending, in the claim, waiting for the order); the rest
        // once Klarna has refunds and Klarna holds one.
        let (early, late) = calls.split_at(10);
        for call in early {
            tokio::task::yield_now().await;
            call.abort();
        }
        wait_until("some refunds to reach Klarna", Duration::from_secs(30), async || {
            Ok::<_, anyhow::Error>((posts() >= 2).then_some(()))
        })
        .await?;
        for call in late {
            call.abort();
        }
        let mut cancelled = 0;
        for call in calls {
            // Cancelled, or finished before the abort: either way the caller is gone.
            if call.await.err().is_some_and(|e| e.is_cancelled()) {
                cancelled += 1;
            }
        }
        assert!(cancelled > 0, "every call ended before it was cancelled");

        let client = app.client.clone();
        let settled = wait_until(
            "every stored operation to reach a final state",
            Duration::from_secs(90),
            async || {
                let ops = client
                    .clone()
                    .list_operations(pb::ListOperationsRequest {
                        page_size: 500,
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .operations;
                let all_final = ops.iter().all(|o| {
                    matches!(
                        o.state(),
                        pb::OperationState::Succeeded
                            | pb::OperationState::Failed
                            | pb::OperationState::RequiresReview
                    )
                });
                Ok::<_, anyhow::Error>(all_final.then_some(ops))
            },
        )
        .await?;
        assert!(!settled.is_empty(), "nothing was stored although Klarna was called");
        for op in &settled {
            assert_eq!(
                op.state(),
                pb::OperationState::Succeeded,
                "{} ended {:?}",
                op.idempotency_key,
                op.state()
            );
        }
        let after = app
            .sim
            .sim
            .order_json(&order.order_id)
            .ok_or_else(|| anyhow::anyhow!("order gone"))?;
        let stored_sum: i64 = settled.iter().map(|o| o.amount).sum();
        assert_eq!(after["refunded_amount"], stored_sum, "{after}");
        let at_klarna: BTreeSet<String> = after["refunds"]
            .as_array()
            .map(|refunds| {
                refunds
                    .iter()
                    .filter_map(|r| r["refund_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let recorded: BTreeSet<String> = settled.iter().map(|o| o.refund_id.clone()).collect();
        assert_eq!(recorded.len(), settled.len(), "two operations share a refund");
        assert_eq!(at_klarna, recorded, "Klarna's refunds and the operations differ");
        app.sim.sim.clear_faults();
        still_serves(&app, None).await?;
        app.shutdown().await
    }
}
