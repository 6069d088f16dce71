//! Injected faults: for the next N Klarna calls matching a method and path ([`FaultSpec`]),
//! or at random for a share of them ([`ChaosSpec`]), answer with a status, add latency (with
//! or without executing once the client has gone), close the connection before anything is
//! executed, or commit the operation and then hold or drop the answer.
//!
//! Faults apply to both Klarna APIs (Order Management and the partner Payments API), never to
//! `/__admin/`. A fault's answer is never stored in the idempotency memory, so a replay never
//! returns a fault. Armed faults take precedence: a call that one of them takes is not rolled
//! for chaos.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};

/// What to inject for matching requests.
///
/// JSON form (admin API): internally tagged by `"type"` in snake case, e.g.
/// `{"type": "status", "status": 503, "retry_after_secs": 1}`, `{"type": "latency", "millis":
/// 200}`, `{"type": "hold_then_commit", "millis": 1000}`, `{"type": "reset"}`,
/// `{"type": "commit_then_hold", "millis": 1000}`, `{"type": "commit_then_drop"}`,
/// `{"type": "commit_then_drop_forgetting"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer with `status` without executing anything. `body` is sent as is (JSON content
    /// type if it parses as JSON, else text); `Some("")` sends an empty body without any
    /// content type, as Klarna's DDoS protection does with its bare 403. Without `body` the
    /// answer is the error body of the API called, with the code usual for that status: Order
    /// Management's (`TEMPORARILY_UNAVAILABLE` for 502-504, `INTERNAL_SERVER_ERROR` for 500,
    /// ...) or the partner API's (`TECHNICAL_ERROR`/`INTERNAL_ERROR` for 5xx, `ACCESS_ERROR`/
    /// `OPERATION_FORBIDDEN` for 403, ...). `retry_after_secs` sets `Retry-After`. A status
    /// that is not a valid HTTP status becomes 500.
    Status {
        /// HTTP status to answer with.
        status: u16,
        /// Raw body to send instead of the default error body.
        #[serde(default)]
        body: Option<String>,
        /// Value of a `Retry-After` header.
        #[serde(default)]
        retry_after_secs: Option<u64>,
    },
    /// Wait `millis`, then process the request normally. A client that gives up during the
    /// wait and resets its stream or closes its connection ends the call there: nothing is
    /// executed or logged (it is counted in [`crate::Simulator::injected_faults`]).
    Latency {
        /// Added delay in milliseconds.
        millis: u64,
    },
    /// Wait `millis`, then execute the request and answer. Unlike [`FaultKind::Latency`], the
    /// request is executed (and remembered under its key, and logged) even when its client
    /// gives up during the wait: a Klarna still working on a request its client abandoned. A
    /// resend that arrives meanwhile runs concurrently with it, unless
    /// [`crate::Simulator::set_conflict_while_running`] answers it 409.
    HoldThenCommit {
        /// Delay before the execution in milliseconds.
        millis: u64,
    },
    /// Close the connection before anything is executed or answered: a reset that provably
    /// did nothing at Klarna, though the client cannot know that (it must resend). Over
    /// HTTP/2 the whole connection is closed, other streams on it included. Logged with
    /// `status` 0, as nothing was answered.
    Reset,
    /// Execute the request (and remember it under its idempotency key), then wait `millis`
    /// before answering.
    CommitThenHold {
        /// Delay between commit and answer in milliseconds.
        millis: u64,
    },
    /// Execute the request (and remember it under its idempotency key), then close the
    /// connection before any response header is sent. Over HTTP/2 the whole connection is
    /// closed, other streams on it included, as when a TCP connection breaks.
    CommitThenDrop,
    /// As [`FaultKind::CommitThenDrop`], but the key is not remembered: a Klarna whose
    /// idempotency memory lags behind its execution (Klarna does not document when a key is
    /// stored). A resend under the same key is judged afresh, and executes again or is refused
    /// (an over-refund, say) on the state the first execution left.
    CommitThenDropForgetting,
}

impl FaultKind {
    /// Short name used in the request log.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Status { .. } => "status",
            Self::Latency { .. } => "latency",
            Self::HoldThenCommit { .. } => "hold_then_commit",
            Self::Reset => "reset",
            Self::CommitThenHold { .. } => "commit_then_hold",
            Self::CommitThenDrop => "commit_then_drop",
            Self::CommitThenDropForgetting => "commit_then_drop_forgetting",
        }
    }

    /// What [`FaultTable::injected`] counts it under: the name, with the status for a
    /// status (`status 503`).
    fn label(&self) -> String {
        match self {
            Self::Status { status, .. } => format!("status {status}"),
            other => other.name().to_owned(),
        }
    }
}

/// A fault for the next `times` matching calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultSpec {
    /// HTTP method to match (case-insensitive); `None` matches any method.
    #[serde(default)]
    pub method: Option<String>,
    /// Request path (without query) to match exactly, or a prefix when it ends with `*`
    /// (`/ordermanagement/v1/orders/*` matches every order call). It matches the path as
    /// received and also percent-decoded (both sides), so a partner path naming a KRN matches
    /// whether the client sent its `:` as is or as `%3A`.
    pub path: String,
    /// How many matching calls get the fault (0 arms nothing). Defaults to 1 in JSON.
    #[serde(default = "one")]
    pub times: u32,
    /// What happens to those calls.
    pub kind: FaultKind,
}

fn one() -> u32 {
    1
}

/// The path percent-decoded (invalid UTF-8 replaced), or as is when there is nothing to decode.
pub(crate) fn decode_path(path: &str) -> Cow<'_, str> {
    percent_decode_str(path).decode_utf8_lossy()
}

fn path_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == pattern,
    }
}

/// Whether a call matches a spec's `method` and `path` (`pattern`, `decoded_pattern` being it
/// percent-decoded); `decoded` is the request path decoded.
fn call_matches(
    spec_method: Option<&str>,
    pattern: &str,
    decoded_pattern: &str,
    method: &str,
    path: &str,
    decoded: &str,
) -> bool {
    let method_ok = spec_method.is_none_or(|m| m.eq_ignore_ascii_case(method));
    method_ok && (path_matches(pattern, path) || path_matches(decoded_pattern, decoded))
}

impl FaultSpec {
    /// `decoded_pattern` is `self.path` percent-decoded, `decoded` the request path decoded.
    fn matches(&self, decoded_pattern: &str, method: &str, path: &str, decoded: &str) -> bool {
        call_matches(
            self.method.as_deref(),
            &self.path,
            decoded_pattern,
            method,
            path,
            decoded,
        )
    }
}

/// Random faults: each matching call that no armed [`FaultSpec`] took gets, with probability
/// `per_mille`/1000, one of `kinds` chosen uniformly. The draws come from a small PRNG seeded
/// with `seed`, so a run that makes its calls in the same order gets the same faults.
///
/// JSON form (admin API): `{"method": "POST", "path": "/ordermanagement/v1/orders/*",
/// "per_mille": 100, "kinds": [{"type": "reset"}, {"type": "status", "status": 503}],
/// "seed": 7}` (`method` and `seed` optional, default any method and 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChaosSpec {
    /// HTTP method to match (case-insensitive); `None` matches any method.
    #[serde(default)]
    pub method: Option<String>,
    /// Request path to match, as [`FaultSpec::path`] (exact, or a prefix ending with `*`).
    pub path: String,
    /// How many matching calls in 1000 get a fault: 0 none, 1000 (or more) every one.
    pub per_mille: u32,
    /// The faults drawn from; an empty list injects nothing.
    pub kinds: Vec<FaultKind>,
    /// Seed of the PRNG that draws whether and which fault applies.
    #[serde(default)]
    pub seed: u64,
}

/// The chaos mode in effect: the spec, its path decoded once, and the PRNG state.
#[derive(Debug)]
struct Chaos {
    spec: ChaosSpec,
    decoded_path: String,
    rng: SplitMix64,
}

impl Chaos {
    fn new(spec: ChaosSpec) -> Self {
        Self {
            decoded_path: decode_path(&spec.path).into_owned(),
            rng: SplitMix64(spec.seed),
            spec,
        }
    }

    /// Rolls for a matching call: a fault with probability `per_mille`/1000.
    fn roll(&mut self) -> Option<FaultKind> {
        // Both draws are always made, so the sequence of draws does not depend on the kinds.
        let hit = self.rng.next() % 1000 < u64::from(self.spec.per_mille);
        let pick = self.rng.next();
        if !hit || self.spec.kinds.is_empty() {
            return None;
        }
        let len = u64::try_from(self.spec.kinds.len()).unwrap_or(u64::MAX);
        let index = usize::try_from(pick % len).unwrap_or(0);
        self.spec.kinds.get(index).cloned()
    }
}

/// splitmix64: a tiny, well-mixed PRNG, plenty for drawing faults (no dependency needed).
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// One armed fault: the spec, its path decoded once, and how many uses are left.
#[derive(Debug)]
struct Armed {
    spec: FaultSpec,
    decoded_path: String,
    left: u32,
}

/// What the table holds under its lock.
#[derive(Debug, Default)]
struct Faults {
    /// Armed faults, first armed first matched.
    armed: Vec<Armed>,
    chaos: Option<Chaos>,
    /// Faults injected so far, armed and chaos alike, by [`FaultKind::label`].
    injected: BTreeMap<String, u64>,
}

impl Faults {
    /// The number of things that may inject a fault: armed faults, plus one for chaos.
    fn active(&self) -> usize {
        self.armed.len() + usize::from(self.chaos.is_some())
    }
}

/// Armed faults and the chaos mode.
#[derive(Debug, Default)]
pub(crate) struct FaultTable {
    /// [`Faults::active`], read without the lock so that the common no-fault case costs one
    /// atomic load; written under the lock whenever it changes.
    active: AtomicUsize,
    faults: Mutex<Faults>,
}

impl FaultTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn arm(&self, spec: FaultSpec) {
        if spec.times == 0 {
            return;
        }
        let mut faults = self.lock();
        faults.armed.push(Armed {
            decoded_path: decode_path(&spec.path).into_owned(),
            left: spec.times,
            spec,
        });
        self.active.store(faults.active(), Ordering::Release);
    }

    /// Sets (or, with `None`, ends) the chaos mode; a new spec restarts its PRNG from its seed.
    pub(crate) fn set_chaos(&self, spec: Option<ChaosSpec>) {
        let mut faults = self.lock();
        faults.chaos = spec.map(Chaos::new);
        self.active.store(faults.active(), Ordering::Release);
    }

    /// Disarms every fault and ends the chaos mode.
    pub(crate) fn clear(&self) {
        let mut faults = self.lock();
        faults.armed.clear();
        faults.chaos = None;
        self.active.store(faults.active(), Ordering::Release);
    }

    /// The faults injected so far (armed and chaos alike; [`FaultTable::clear`] does not
    /// reset the counts), by kind: `status 503`, `latency`, `reset`, `commit_then_hold`,
    /// `commit_then_drop`.
    pub(crate) fn injected(&self) -> BTreeMap<String, u64> {
        self.lock().injected.clone()
    }

    /// Consumes one use of the first armed fault matching the call; failing that, rolls for
    /// chaos if the call matches it.
    pub(crate) fn take(&self, method: &str, path: &str) -> Option<FaultKind> {
        if self.active.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut faults = self.lock();
        let kind = self.take_locked(&mut faults, method, path)?;
        *faults.injected.entry(kind.label()).or_insert(0) += 1;
        Some(kind)
    }

    fn take_locked(&self, faults: &mut Faults, method: &str, path: &str) -> Option<FaultKind> {
        let decoded = decode_path(path);
        let index = faults.armed.iter().position(|armed| {
            armed
                .spec
                .matches(&armed.decoded_path, method, path, &decoded)
        });
        let Some(index) = index else {
            let chaos = faults.chaos.as_mut()?;
            let spec = &chaos.spec;
            if !call_matches(
                spec.method.as_deref(),
                &spec.path,
                &chaos.decoded_path,
                method,
                path,
                &decoded,
            ) {
                return None;
            }
            return chaos.roll();
        };
        let armed = &mut faults.armed[index];
        let kind = armed.spec.kind.clone();
        armed.left -= 1;
        if armed.left == 0 {
            faults.armed.remove(index);
        }
        self.active.store(faults.active(), Ordering::Release);
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(method: Option<&str>, path: &str, times: u32) -> FaultSpec {
        FaultSpec {
            method: method.map(str::to_owned),
            path: path.to_owned(),
            times,
            kind: FaultKind::CommitThenDrop,
        }
    }

    fn matches(spec: &FaultSpec, method: &str, path: &str) -> bool {
        spec.matches(&decode_path(&spec.path), method, path, &decode_path(path))
    }

    #[test]
    fn matches_exact_prefix_and_method() {
        assert!(matches(&spec(None, "/a/b", 1), "GET", "/a/b"));
        assert!(!matches(&spec(None, "/a/b", 1), "GET", "/a/bc"));
        assert!(matches(&spec(None, "/a/*", 1), "POST", "/a/bc"));
        assert!(matches(&spec(Some("post"), "/a/*", 1), "POST", "/a/bc"));
        assert!(!matches(&spec(Some("GET"), "/a/*", 1), "POST", "/a/bc"));
    }

    #[test]
    fn matches_encoded_and_plain_colons_alike() {
        let plain = "/v2/payment/captures/krn:payment:eu1:transaction:t:capture:1/refunds";
        let encoded =
            "/v2/payment/captures/krn%3Apayment%3Aeu1%3Atransaction%3At%3Acapture%3A1/refunds";
        assert!(matches(&spec(None, plain, 1), "POST", encoded));
        assert!(matches(&spec(None, encoded, 1), "POST", plain));
        assert!(matches(&spec(None, plain, 1), "POST", plain));
        assert!(!matches(
            &spec(None, plain, 1),
            "POST",
            "/v2/payment/captures/x/refunds"
        ));
    }

    #[test]
    fn counts_down_and_disarms() {
        let table = FaultTable::default();
        table.arm(spec(None, "/x", 2));
        table.arm(spec(None, "/y", 0));
        assert!(table.take("GET", "/y").is_none());
        assert!(table.take("GET", "/x").is_some());
        assert!(table.take("GET", "/x").is_some());
        assert!(table.take("GET", "/x").is_none());
        table.arm(spec(None, "/x", 5));
        table.clear();
        assert!(table.take("GET", "/x").is_none());
    }

    fn chaos(path: &str, per_mille: u32, seed: u64) -> ChaosSpec {
        ChaosSpec {
            method: Some("POST".into()),
            path: path.into(),
            per_mille,
            kinds: vec![
                FaultKind::Reset,
                FaultKind::CommitThenDrop,
                FaultKind::Status {
                    status: 503,
                    body: None,
                    retry_after_secs: None,
                },
            ],
            seed,
        }
    }

    /// How many of `calls` POSTs to `path` got a fault, by kind name.
    fn roll_many(table: &FaultTable, path: &str, calls: usize) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..calls {
            if let Some(kind) = table.take("POST", path) {
                *counts.entry(kind.name()).or_insert(0) += 1;
            }
        }
        counts
    }

    #[test]
    fn chaos_roughly_honours_its_rate_and_spreads_over_the_kinds() {
        let table = FaultTable::default();
        table.set_chaos(Some(chaos("/o/*", 200, 42)));
        let counts = roll_many(&table, "/o/1/refunds", 10_000);
        let total: usize = counts.values().sum();
        // Binomial(10 000, 0.2): a standard deviation of 40, so ±200 is five of them.
        assert!(
            (1_800..=2_200).contains(&total),
            "{total} faults: {counts:?}"
        );
        assert_eq!(counts.len(), 3, "{counts:?}");
        for (kind, n) in &counts {
            assert!((500..=850).contains(n), "{kind}: {n} of {total}");
        }
        // Calls that do not match are never rolled.
        assert!(table.take("GET", "/o/1").is_none());
        assert!(table.take("POST", "/p").is_none());
    }

    #[test]
    fn chaos_is_deterministic_for_a_seed() {
        let draws = |seed| {
            let table = FaultTable::default();
            table.set_chaos(Some(chaos("/o/*", 300, seed)));
            (0..200)
                .map(|_| table.take("POST", "/o/x").map(|k| k.name()))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
    }

    #[test]
    fn chaos_at_0_and_1000_per_mille_is_exact() {
        let table = FaultTable::default();
        table.set_chaos(Some(chaos("/o/*", 0, 1)));
        assert!(roll_many(&table, "/o/1", 10_000).is_empty());
        table.set_chaos(Some(chaos("/o/*", 1000, 1)));
        assert_eq!(
            roll_many(&table, "/o/1", 10_000).values().sum::<usize>(),
            10_000
        );
        // Above 1000 is every call too; no kinds is no fault.
        table.set_chaos(Some(chaos("/o/*", 5000, 1)));
        assert_eq!(roll_many(&table, "/o/1", 100).values().sum::<usize>(), 100);
        table.set_chaos(Some(ChaosSpec {
            kinds: Vec::new(),
            ..chaos("/o/*", 1000, 1)
        }));
        assert!(roll_many(&table, "/o/1", 100).is_empty());
    }

    #[test]
    fn armed_faults_come_before_chaos_and_clear_ends_both() {
        let table = FaultTable::default();
        table.set_chaos(Some(chaos("/o/*", 1000, 3)));
        table.arm(FaultSpec {
            kind: FaultKind::Latency { millis: 5 },
            ..spec(None, "/o/1", 2)
        });
        for _ in 0..2 {
            assert_eq!(
                table.take("POST", "/o/1"),
                Some(FaultKind::Latency { millis: 5 })
            );
        }
        let next = table.take("POST", "/o/1");
        assert!(
            next.is_some() && next != Some(FaultKind::Latency { millis: 5 }),
            "{next:?}"
        );
        let injected = table.injected();
        assert_eq!(injected.get("latency"), Some(&2), "{injected:?}");
        assert_eq!(injected.values().sum::<u64>(), 3, "{injected:?}");
        table.set_chaos(None);
        assert!(table.take("POST", "/o/1").is_none());
        table.set_chaos(Some(chaos("/o/*", 1000, 3)));
        table.arm(spec(None, "/o/1", 1));
        table.clear();
        assert!(table.take("POST", "/o/1").is_none());
        assert_eq!(table.active.load(Ordering::Acquire), 0);
        // The counts are history: clearing does not reset them.
        assert_eq!(table.injected().values().sum::<u64>(), 3);
    }

    #[test]
    fn json_form() {
        let spec: FaultSpec =
            serde_json::from_str(r#"{"path": "/p", "kind": {"type": "status", "status": 503}}"#)
                .unwrap();
        assert_eq!(spec.times, 1);
        assert_eq!(
            spec.kind,
            FaultKind::Status {
                status: 503,
                body: None,
                retry_after_secs: None
            }
        );
        let drop: FaultKind = serde_json::from_str(r#"{"type": "commit_then_drop"}"#).unwrap();
        assert_eq!(drop, FaultKind::CommitThenDrop);
        let reset: FaultKind = serde_json::from_str(r#"{"type": "reset"}"#).unwrap();
        assert_eq!(reset, FaultKind::Reset);
        let chaos: ChaosSpec = serde_json::from_str(
            r#"{"path": "/p/*", "per_mille": 50, "kinds": [{"type": "reset"}]}"#,
        )
        .unwrap();
        assert_eq!(
            chaos,
            ChaosSpec {
                method: None,
                path: "/p/*".into(),
                per_mille: 50,
                kinds: vec![FaultKind::Reset],
                seed: 0,
            }
        );
    }
}
