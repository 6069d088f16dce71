//! The attempt log: every attempt of every mutating call made inside [`recording_attempts`],
//! oldest first, for the domain's [`classify_mutation`](refund_gateway_domain::classify_mutation)
//! to judge the operation by its whole history rather than by the last answer.
//!
//! The log is a task-local, like the call deadline: the domain's `KlarnaApi` port keeps its
//! plain signatures, and the retry policy, which runs in the caller's task, can write to it.
//! Reads (GET) are not logged: they change nothing at Klarna.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use refund_gateway_domain::Attempt;

tokio::task_local! {
    static ATTEMPTS: Arc<Mutex<Vec<Attempt>>>;
}

/// Runs `f`, returning its output and the attempts of the mutating Klarna calls it made.
pub async fn recording_attempts<F: Future>(f: F) -> (F::Output, Vec<Attempt>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let output = ATTEMPTS.scope(log.clone(), f).await;
    let attempts = std::mem::take(&mut *log.lock().unwrap_or_else(PoisonError::into_inner));
    (output, attempts)
}

/// Appends `attempt` to the log of the current task, if it keeps one.
pub(crate) fn record(attempt: Attempt) {
    let _ = ATTEMPTS.try_with(|log| {
        log.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(attempt);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_inside_the_scope_only() {
        record(Attempt::NotSent);
        let ((), attempts) = recording_attempts(async {
            record(Attempt::NoAnswer);
            record(Attempt::Answered(201));
        })
        .await;
        assert_eq!(attempts, [Attempt::NoAnswer, Attempt::Answered(201)]);
    }
}
