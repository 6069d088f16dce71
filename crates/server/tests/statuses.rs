//! Every gateway condition becomes a gRPC status in one place (`src/status.rs`), and every
//! status it builds carries google.rpc details.

use std::path::Path;
use std::time::Duration;

use refund_gateway::status::{stored, to_status};
use refund_gateway_domain::{
    GatewayError, KlarnaError, Precondition, PreconditionReason, ResourceRef, StoredResponse,
    Violations,
};
use tonic_types::StatusExt;

/// The `.rs` files under `dir`.
fn sources(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn only_status_rs_builds_a_status() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 5, "no sources found under {}", src.display());
    let mut offenders = Vec::new();
    for file in files.iter().filter(|f| !f.ends_with("status.rs")) {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{e}"));
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if let Some(at) = code.find("Status::") {
                let after = &code[at + "Status::".len()..];
                let constructor = after.starts_with(|c: char| c.is_ascii_lowercase())
                    && after.split('(').next().is_some_and(|name| {
                        name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    })
                    && after.contains('(');
                // `ServingStatus::` and other types ending in "Status" are not tonic's.
                let tonic = !code[..at].ends_with(|c: char| c.is_ascii_alphanumeric());
                if constructor && tonic {
                    offenders.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "build statuses in status.rs only:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn every_condition_carries_error_details() {
    let answered = |status| {
        KlarnaError::Answered(Box::new(refund_gateway_domain::KlarnaErrorResponse {
            status,
            ..Default::default()
        }))
    };
    let order = ResourceRef::Order("o".into());
    let mut conditions = vec![
        GatewayError::InvalidArgument(Violations::single("order_id", "bad")),
        GatewayError::Precondition(Precondition {
            reason: PreconditionReason::CurrencyMismatch,
            subject: "orders/o".into(),
            description: "d".into(),
        }),
        GatewayError::OutcomePending {
            operation_id: "op".into(),
            error: KlarnaError::NoAnswer("reset".into()),
        },
        GatewayError::KeyReused {
            operation_id: "op".into(),
            idempotency_key: "k".into(),
        },
        GatewayError::KeyInUse {
            operation_id: "op".into(),
            retry_after: Duration::from_secs(1),
        },
        GatewayError::StoreUnavailable("connection refused".into()),
        GatewayError::RequiresReview {
            operation_id: "op".into(),
            detail: "d".into(),
        },
        // A panicked operation task, an unreadable stored answer.
        GatewayError::Internal("the task of operation op failed".into()),
        GatewayError::Internal("the stored answer is unreadable".into()),
    ];
    for error in [
        KlarnaError::NotSent("refused".into()),
        KlarnaError::NoAnswer("reset".into()),
        KlarnaError::BadResponse("cut".into()),
    ]
    .into_iter()
    .chain(
        [400, 401, 403, 404, 408, 409, 413, 422, 425, 429, 500, 503]
            .into_iter()
            .map(answered),
    ) {
        conditions.push(GatewayError::Klarna {
            error,
            resource: order.clone(),
        });
    }
    for condition in conditions {
        let status = to_status(&condition);
        let details = status.get_error_details();
        let has_info = details
            .error_info()
            .is_some_and(|i| i.domain == "refundgateway" && !i.reason.is_empty());
        assert!(
            has_info || details.bad_request().is_some(),
            "{condition:?} -> {status:?} has no details"
        );
    }
}

#[test]
fn a_stored_answer_without_its_details_still_has_details() {
    let status = stored(
        StoredResponse {
            code: tonic::Code::FailedPrecondition as i32,
            message: "Klarna answered 403".into(),
            payload: Vec::new(),
        },
        true,
    );
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(status.message(), "Klarna answered 403");
    assert!(status.get_error_details().error_info().is_some());
    assert_eq!(
        status
            .metadata()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
}
