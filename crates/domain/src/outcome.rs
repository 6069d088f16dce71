//! What a Klarna result proves: the only place that decides whether the outcome of a mutation
//! is final, unknown, or proves that nothing happened (see `docs/architecture.md#outcomes`).
//!
//! A mutation may take several attempts: the adapter resends a keyed request after a 5xx, a
//! 408, a 429 or a transport error, and the gateway resends an operation whose outcome was
//! unknown. The verdict depends on the whole history, not on the last answer: once an attempt
//! may have reached Klarna (no answer, a 5xx, a 408), a later answer that would otherwise
//! prove nothing happened (401, 425, 429, not sent, a local refusal) proves nothing any more,
//! and the outcome is unknown until Klarna's records settle it. A 409 after such an attempt
//! proves nothing either: Klarna does not document its answer to a key whose first request is
//! still being executed, and the common idempotency convention answers that with 409, so it
//! may be the earlier attempt still running rather than a refusal.
//!
//! | last attempt                                   | first attempt     | after a possibly received one |
//! |------------------------------------------------|-------------------|-------------------------------|
//! | 2xx, answer read                               | `Succeeded`       | `Succeeded`                   |
//! | 2xx whose body or id cannot be read            | `Unknown`         | `Unknown`                     |
//! | 400, 413, 422                                  | `Refused`         | `Refused`                     |
//! | 403, 404 (and any other 4xx not listed)        | `Refused`         | `Refused`                     |
//! | 409                                            | `Refused`         | `Unknown`                     |
//! | Payments API: 403 without an error object      | `NothingHappened` | `Unknown`                     |
//! | 408                                            | `Unknown`         | `Unknown`                     |
//! | 401, 425, 429                                  | `NothingHappened` | `Unknown`                     |
//! | 5xx, or any status this table does not know    | `Unknown`         | `Unknown`                     |
//! | sent, no answer (timeout, reset, cut body)     | `Unknown`         | `Unknown`                     |
//! | not sent                                       | `NothingHappened` | `Unknown`                     |
//! | refused by a state rule before sending         | `Refused`         | `Unknown`                     |
//!
//! The Payments API's DDoS protection answers 403 with no error object: that is not Klarna's
//! refusal, and proves only that the API never saw the request. From Order Management the
//! same answer is a refusal like any other 403.
//!
//! [`MUTATION_ROWS`] is that table as data; the tests check the function against it row by
//! row, and the server checks its error table (and the README's) against it.

use crate::klarna::KlarnaError;

/// Which Klarna API a call goes to. The partner Payments API answers some refusals
/// differently from Order Management; the verdict takes the API so that difference has one
/// place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum KlarnaApiKind {
    /// Order Management (`/ordermanagement/v1/…`).
    #[default]
    OrderManagement,
    /// The partner Payments API (payment transactions).
    Payments,
}

impl KlarnaApiKind {
    /// The kind of account that speaks it, in words (for messages).
    pub fn describe(self) -> &'static str {
        match self {
            Self::OrderManagement => "Order Management",
            Self::Payments => "partner (Payments API)",
        }
    }
}

/// How one attempt at a Klarna mutation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Attempt {
    /// Provably never reached Klarna: connection refused, DNS, TLS handshake, the deadline
    /// passed before sending, or a limit of ours.
    NotSent,
    /// Sent; no answer came (timeout, reset, a body cut off).
    NoAnswer,
    /// Klarna answered this status. A 2xx here means the answer was read.
    Answered(u16),
    /// Klarna answered 403 with no error object in the body.
    ForbiddenWithoutError,
    /// Klarna answered success, but the body or the id in it could not be read.
    Unreadable,
    /// Not sent: a state rule of ours refused it, from Klarna's or our own records.
    RefusedByRule,
}

impl Attempt {
    /// The attempt a failed call ended with.
    pub fn of_error(error: &KlarnaError) -> Self {
        match error {
            KlarnaError::Answered(r) if r.status == 403 && !r.error_object => {
                Self::ForbiddenWithoutError
            }
            KlarnaError::Answered(r) => Self::Answered(r.status),
            KlarnaError::NotSent(_) | KlarnaError::Throttled(_) => Self::NotSent,
            KlarnaError::NoAnswer(_) => Self::NoAnswer,
            KlarnaError::BadResponse(_) => Self::Unreadable,
        }
    }

    /// True when Klarna may have executed this attempt without the gateway knowing its
    /// answer: whatever comes after it cannot prove that nothing happened.
    pub fn may_have_taken_effect(self) -> bool {
        // The verdict on an attempt that may have taken effect is the same from both APIs.
        classify_one(KlarnaApiKind::OrderManagement, self) == Verdict::Unknown
    }
}

/// What the attempts of a mutation prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Klarna did it, and we read its answer. Final.
    Succeeded,
    /// Klarna (or a state rule of ours) refused it, definitively. Final: stored and replayed.
    Refused,
    /// It may or may not have happened: PENDING until Klarna's records settle it.
    Unknown,
    /// Provably nothing happened: the claim is given back and the key can be used again.
    NothingHappened,
}

/// The verdict on one attempt taken alone, as if it were the first.
fn classify_one(api: KlarnaApiKind, attempt: Attempt) -> Verdict {
    match attempt {
        Attempt::ForbiddenWithoutError => match api {
            KlarnaApiKind::OrderManagement => Verdict::Refused,
            KlarnaApiKind::Payments => Verdict::NothingHappened,
        },
        Attempt::NotSent => Verdict::NothingHappened,
        Attempt::NoAnswer | Attempt::Unreadable => Verdict::Unknown,
        Attempt::RefusedByRule => Verdict::Refused,
        Attempt::Answered(status) => match status {
            200..=299 => Verdict::Succeeded,
            401 | 425 | 429 => Verdict::NothingHappened,
            408 => Verdict::Unknown,
            400..=499 => Verdict::Refused,
            // 5xx, and statuses Klarna does not send (1xx, 3xx): nothing proves it did not act.
            _ => Verdict::Unknown,
        },
    }
}

/// The verdict on a mutation from its attempts, oldest first (see the module docs). No
/// attempt at all means nothing was sent.
pub fn classify_mutation(api: KlarnaApiKind, attempts: &[Attempt]) -> Verdict {
    let Some((&last, earlier)) = attempts.split_last() else {
        return Verdict::NothingHappened;
    };
    let verdict = classify_one(api, last);
    let possibly_received_before = earlier.iter().any(|a| a.may_have_taken_effect());
    match verdict {
        Verdict::NothingHappened if possibly_received_before => Verdict::Unknown,
        // A state rule runs before the first send; refusing after a send that may have been
        // executed proves nothing about that send. A 409 after such a send may say only that
        // the send is still being executed under the same key.
        Verdict::Refused
            if possibly_received_before
                && matches!(last, Attempt::RefusedByRule | Attempt::Answered(409)) =>
        {
            Verdict::Unknown
        }
        other => other,
    }
}

/// Whether Klarna's refusal of the last of `attempts` ([`Verdict::Refused`]) must be checked
/// against Klarna's records before it is final: an earlier attempt may have taken effect, and
/// the refusal may be its consequence. Klarna replays the answer to a key it has executed, but
/// does not document when the key is remembered; a Klarna that executed the earlier attempt
/// and had not yet stored its key would judge the resend afresh, and refuse, say, a refund
/// whose amount the earlier attempt already took. Recorded as a refusal, that refund would be
/// FAILED though the customer has the money, and a caller retrying under a new key would
/// refund twice.
pub fn refusal_needs_checking(attempts: &[Attempt]) -> bool {
    attempts
        .split_last()
        .is_some_and(|(_, earlier)| earlier.iter().any(|a| a.may_have_taken_effect()))
}

/// What a failed read proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadVerdict {
    /// Klarna's definitive answer about its records (the order does not exist, …): the same
    /// read gets the same answer.
    Refused,
    /// Transient: Klarna unreachable, overloaded, or our credentials or rate refused; a later
    /// read may work.
    Unavailable,
}

/// The verdict on a failed read (a GET): 4xx other than 401, 408, 425 and 429 (and the
/// Payments API's 403 without an error object) is Klarna's answer about its records;
/// everything else may pass.
pub fn classify_read(error: &KlarnaError) -> ReadVerdict {
    let api = match error {
        KlarnaError::Answered(r) => r.api,
        _ => KlarnaApiKind::OrderManagement,
    };
    match Attempt::of_error(error) {
        Attempt::ForbiddenWithoutError if api == KlarnaApiKind::Payments => {
            ReadVerdict::Unavailable
        }
        Attempt::ForbiddenWithoutError => ReadVerdict::Refused,
        Attempt::Answered(401 | 408 | 425 | 429) => ReadVerdict::Unavailable,
        Attempt::Answered(400..=499) => ReadVerdict::Refused,
        _ => ReadVerdict::Unavailable,
    }
}

/// One row of the mutation table: the last attempt, its verdict as a first attempt, and its
/// verdict after an attempt that may have reached Klarna.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MutationRow {
    /// The API the row is about; `None` for both.
    pub api: Option<KlarnaApiKind>,
    /// The last attempt.
    pub attempt: Attempt,
    /// The verdict when it is the only attempt.
    pub first: Verdict,
    /// The verdict when an earlier attempt may have reached Klarna.
    pub after_possible_delivery: Verdict,
}

const fn row(attempt: Attempt, first: Verdict, after_possible_delivery: Verdict) -> MutationRow {
    MutationRow {
        api: None,
        attempt,
        first,
        after_possible_delivery,
    }
}

/// The table of the module docs, one row per representative attempt.
pub const MUTATION_ROWS: &[MutationRow] = {
    use Attempt::*;
    use Verdict::*;
    &[
        row(Answered(200), Succeeded, Succeeded),
        row(Answered(201), Succeeded, Succeeded),
        row(Answered(204), Succeeded, Succeeded),
        row(Unreadable, Unknown, Unknown),
        row(Answered(400), Refused, Refused),
        row(Answered(413), Refused, Refused),
        row(Answered(422), Refused, Refused),
        row(Answered(403), Refused, Refused),
        row(Answered(404), Refused, Refused),
        row(Answered(409), Refused, Unknown),
        MutationRow {
            api: Some(KlarnaApiKind::OrderManagement),
            ..row(ForbiddenWithoutError, Refused, Refused)
        },
        MutationRow {
            api: Some(KlarnaApiKind::Payments),
            ..row(ForbiddenWithoutError, NothingHappened, Unknown)
        },
        row(Answered(408), Unknown, Unknown),
        row(Answered(401), NothingHappened, Unknown),
        row(Answered(425), NothingHappened, Unknown),
        row(Answered(429), NothingHappened, Unknown),
        row(Answered(500), Unknown, Unknown),
        row(Answered(502), Unknown, Unknown),
        row(Answered(503), Unknown, Unknown),
        row(Answered(504), Unknown, Unknown),
        row(NoAnswer, Unknown, Unknown),
        row(NotSent, NothingHappened, Unknown),
        row(RefusedByRule, Refused, Unknown),
    ]
};

#[cfg(test)]
mod tests {
    use super::*;

    const APIS: [KlarnaApiKind; 2] = [KlarnaApiKind::OrderManagement, KlarnaApiKind::Payments];

    fn rows_of(api: KlarnaApiKind) -> impl Iterator<Item = &'static MutationRow> {
        MUTATION_ROWS
            .iter()
            .filter(move |r| r.api.is_none_or(|a| a == api))
    }

    /// Every attempt that may have reached Klarna, as an earlier attempt.
    const POSSIBLY_RECEIVED: [Attempt; 5] = [
        Attempt::NoAnswer,
        Attempt::Answered(500),
        Attempt::Answered(503),
        Attempt::Answered(408),
        Attempt::Unreadable,
    ];

    /// Earlier attempts that prove nothing was received.
    const NOT_RECEIVED: [Attempt; 4] = [
        Attempt::NotSent,
        Attempt::Answered(429),
        Attempt::Answered(401),
        Attempt::Answered(425),
    ];

    #[test]
    fn every_row_as_a_first_attempt() {
        for api in APIS {
            for r in rows_of(api) {
                assert_eq!(
                    classify_mutation(api, &[r.attempt]),
                    r.first,
                    "{api:?} {:?}",
                    r.attempt
                );
            }
        }
    }

    #[test]
    fn every_row_after_an_attempt_that_may_have_taken_effect() {
        for api in APIS {
            for earlier in POSSIBLY_RECEIVED {
                for r in rows_of(api) {
                    assert_eq!(
                        classify_mutation(api, &[earlier, r.attempt]),
                        r.after_possible_delivery,
                        "{api:?} {earlier:?} then {:?}",
                        r.attempt
                    );
                    // However far back it was.
                    assert_eq!(
                        classify_mutation(api, &[earlier, Attempt::NotSent, r.attempt]),
                        r.after_possible_delivery,
                        "{api:?} {earlier:?}, not sent, then {:?}",
                        r.attempt
                    );
                }
            }
        }
    }

    #[test]
    fn attempts_that_prove_nothing_do_not_change_the_last_verdict() {
        for api in APIS {
            for earlier in NOT_RECEIVED {
                for r in rows_of(api) {
                    assert_eq!(
                        classify_mutation(api, &[earlier, r.attempt]),
                        r.first,
                        "{api:?} {earlier:?} then {:?}",
                        r.attempt
                    );
                }
            }
        }
    }

    #[test]
    fn no_attempt_means_nothing_was_sent() {
        assert_eq!(
            classify_mutation(KlarnaApiKind::OrderManagement, &[]),
            Verdict::NothingHappened
        );
    }

    #[test]
    fn a_refusal_is_checked_only_after_an_attempt_that_may_have_taken_effect() {
        use Attempt::*;
        assert!(!refusal_needs_checking(&[]));
        assert!(!refusal_needs_checking(&[Answered(403)]));
        assert!(!refusal_needs_checking(&[
            NotSent,
            Answered(429),
            Answered(403)
        ]));
        assert!(refusal_needs_checking(&[NoAnswer, Answered(403)]));
        assert!(refusal_needs_checking(&[
            Answered(503),
            NotSent,
            Answered(422)
        ]));
        // The attempt that may have taken effect must come before the last one.
        assert!(!refusal_needs_checking(&[Answered(403), NoAnswer]));
    }

    #[test]
    fn reads_refused_only_by_klarnas_definitive_4xx() {
        let answered = |status| {
            KlarnaError::Answered(Box::new(crate::klarna::KlarnaErrorResponse {
                status,
                ..Default::default()
            }))
        };
        for status in [400, 403, 404, 409, 410, 413, 422] {
            assert_eq!(classify_read(&answered(status)), ReadVerdict::Refused);
        }
        for status in [401, 408, 425, 429, 500, 503] {
            assert_eq!(classify_read(&answered(status)), ReadVerdict::Unavailable);
        }
        let shielded = KlarnaError::Answered(Box::new(crate::klarna::KlarnaErrorResponse {
            status: 403,
            api: KlarnaApiKind::Payments,
            ..Default::default()
        }));
        assert_eq!(classify_read(&shielded), ReadVerdict::Unavailable);
        assert_eq!(
            classify_mutation(KlarnaApiKind::Payments, &[Attempt::of_error(&shielded)]),
            Verdict::NothingHappened
        );
        let refused = KlarnaError::Answered(Box::new(crate::klarna::KlarnaErrorResponse {
            status: 403,
            api: KlarnaApiKind::Payments,
            error_object: true,
            ..Default::default()
        }));
        assert_eq!(classify_read(&refused), ReadVerdict::Refused);
        assert_eq!(
            classify_mutation(KlarnaApiKind::Payments, &[Attempt::of_error(&refused)]),
            Verdict::Refused
        );
        for e in [
            KlarnaError::NotSent("x".into()),
            KlarnaError::NoAnswer("x".into()),
            KlarnaError::BadResponse("x".into()),
        ] {
            assert_eq!(classify_read(&e), ReadVerdict::Unavailable);
        }
    }
}
