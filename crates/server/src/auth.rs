//! Who is calling, and what it may do (see `docs/architecture.md#security`): the callers file,
//! bearer-token authentication as a tower layer of the inbound stack, and the grants the
//! service checks with the identity that layer leaves on the request.
//!
//! The callers file (`REFUND_GATEWAY_CALLERS_FILE`, TOML) has one `[[caller]]` table per
//! calling service: its `name`, the SHA-256 of its token (`token_sha256`, hex: the token itself
//! is never stored), the RPCs and Klarna accounts it may use (names, or `["*"]`), optional
//! amount caps per currency, and an optional rate. The file is re-read on SIGHUP and when it
//! changes; a file that does not parse or validate is refused with a log line and the callers
//! in force stay.
//!
//! Every `refundgateway.*` method needs `authorization: Bearer <token>`; `grpc.health.v1` and
//! server reflection do not, so load balancers and `grpcurl list`/`describe` keep working. A
//! token is hashed and compared with every caller's hash in constant time; a missing,
//! malformed or unknown token gets `UNAUTHENTICATED`, and the answer never says which callers
//! exist. With authentication off (`REFUND_GATEWAY_AUTH=none`, loopback only) every call is
//! `anonymous` and may do everything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use figment::Figment;
use figment::providers::{Format, Toml};
use futures::future::BoxFuture;
use http::{Request, Response};
use refund_gateway_domain::{Caller, Currency, GatewayError};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::status::to_status;

/// Grants everything of its kind.
pub const ALL: &str = "*";

/// Every method a caller may be granted, by its bare name (unique across the gateway's
/// services). A test holds this list to the API's descriptors.
pub const RPC_NAMES: &[&str] = &[
    "RefundOrder",
    "ReleaseAuthorization",
    "GetExtendDueDateOptions",
    "ExtendDueDate",
    "GetOrder",
    "GetRefund",
    "RefundCapture",
    "RefundTransaction",
    "GetTransaction",
    "ListOperations",
    "LinkReceipt",
    "FindOrder",
    "GetOperation",
    "WatchOperation",
];

/// The methods of `OperatorService`: granted by `operator = true` alone, never by `rpcs`
/// (not even `"*"`): settling operations by hand is a person's job, not a service's.
pub const OPERATOR_RPCS: &[&str] = &["ListAttention", "ResolveOperation", "Reconcile"];

/// The package whose methods need a token.
const GUARDED_PREFIX: &str = "/refundgateway.";

/// How often the callers file is checked for a change, besides SIGHUP.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Why a callers file was refused. Never holds a token or a hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallersError {
    /// The file could not be read.
    #[error("callers file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is not valid.
    #[error("callers file: {0}")]
    Invalid(String),
}

/// One `[[caller]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallerEntry {
    name: String,
    token_sha256: Option<String>,
    certificate_subject: Option<String>,
    rpcs: Vec<String>,
    klarna_accounts: Vec<String>,
    #[serde(default)]
    max_amount: BTreeMap<String, i64>,
    #[serde(default)]
    max_amount_per_day: BTreeMap<String, i64>,
    requests_per_second: Option<u32>,
    burst: Option<u32>,
    scope_as: Option<String>,
    #[serde(default)]
    operator: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallersFile {
    #[serde(default)]
    caller: Vec<CallerEntry>,
}

/// Names granted: all of them, or these.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Granted {
    All,
    Only(BTreeSet<String>),
}

impl Granted {
    fn allows(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(names) => names.contains(name),
        }
    }
}

/// What one caller may do.
#[derive(Clone, PartialEq, Eq)]
pub struct CallerGrant {
    name: String,
    token_sha256: Option<[u8; 32]>,
    certificate_subject: Option<String>,
    rpcs: Granted,
    accounts: Granted,
    max_amount: BTreeMap<String, i64>,
    max_amount_per_day: BTreeMap<String, i64>,
    requests_per_second: Option<u32>,
    burst: Option<u32>,
    scope_as: Option<String>,
    operator: bool,
}

impl std::fmt::Debug for CallerGrant {
    /// Everything but the token's hash.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerGrant")
            .field("name", &self.name)
            .field("rpcs", &self.rpcs)
            .field("accounts", &self.accounts)
            .field("max_amount", &self.max_amount)
            .field("max_amount_per_day", &self.max_amount_per_day)
            .field("requests_per_second", &self.requests_per_second)
            .field("operator", &self.operator)
            .finish_non_exhaustive()
    }
}

/// Why the service refused a caller; the ErrorInfo reason of `PERMISSION_DENIED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The RPC is not granted.
    RpcNotPermitted,
    /// The Klarna account is not granted.
    AccountNotPermitted,
    /// Above the caller's cap per operation.
    AmountOverCallerLimit,
    /// The currency is not in a capped caller's table.
    CurrencyNotPermitted,
}

impl CallerGrant {
    /// The grant of `anonymous` when authentication is off (loopback only): everything, the
    /// operator's RPCs included.
    pub fn anonymous() -> Self {
        Self {
            name: Caller::anonymous().as_str().to_owned(),
            token_sha256: None,
            certificate_subject: None,
            rpcs: Granted::All,
            accounts: Granted::All,
            max_amount: BTreeMap::new(),
            max_amount_per_day: BTreeMap::new(),
            requests_per_second: None,
            burst: None,
            scope_as: None,
            operator: true,
        }
    }

    /// The caller's name, as the audit trail records it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The identity its operations are scoped to: its name, or `scope_as` (the migration path
    /// from `anonymous`: retries of requests made before authentication keep their operation).
    pub fn scope(&self) -> Caller {
        Caller::named(self.scope_as.as_deref().unwrap_or(&self.name))
    }

    /// Its rate limit, if any: (requests per second, burst).
    pub fn rate(&self) -> Option<(u32, u32)> {
        self.requests_per_second
            .map(|rps| (rps, self.burst.unwrap_or(rps)))
    }

    /// Its cap per UTC day in `currency`, if it has one.
    pub fn daily_cap(&self, currency: &Currency) -> Option<i64> {
        self.max_amount_per_day.get(currency.as_str()).copied()
    }

    /// True when it may see every caller's operations (it holds `*` for RPCs).
    pub fn sees_all_operations(&self) -> bool {
        self.rpcs == Granted::All
    }

    /// Checks that it may call `rpc`.
    pub fn check_rpc(&self, rpc: &str) -> Result<(), GatewayError> {
        let allowed = if OPERATOR_RPCS.contains(&rpc) {
            self.operator
        } else {
            self.rpcs.allows(rpc)
        };
        if allowed {
            Ok(())
        } else {
            Err(self.refuse(
                Refusal::RpcNotPermitted,
                format!("caller {} may not call {rpc}", self.name),
            ))
        }
    }

    /// Checks that it may use the Klarna account `account` (the resolved name).
    pub fn check_account(&self, account: &str) -> Result<(), GatewayError> {
        if self.accounts.allows(account) {
            Ok(())
        } else {
            Err(self.refuse(
                Refusal::AccountNotPermitted,
                format!("caller {} may not use Klarna account {account}", self.name),
            ))
        }
    }

    /// True when a cap per operation or per day applies to it, so an amount must be judged in
    /// a known currency.
    pub fn has_amount_caps(&self) -> bool {
        !self.max_amount.is_empty() || !self.max_amount_per_day.is_empty()
    }

    /// Checks one operation's amount against the cap for `currency`: a capped caller may move
    /// only currencies its tables name.
    pub fn check_amount(&self, amount: i64, currency: &Currency) -> Result<(), GatewayError> {
        if !self.has_amount_caps() {
            return Ok(());
        }
        let code = currency.as_str();
        let named =
            self.max_amount.contains_key(code) || self.max_amount_per_day.contains_key(code);
        if !named {
            return Err(self.refuse(
                Refusal::CurrencyNotPermitted,
                format!("caller {} may not move {code}", self.name),
            ));
        }
        match self.max_amount.get(code) {
            Some(&cap) if amount > cap => Err(self.refuse(
                Refusal::AmountOverCallerLimit,
                format!(
                    "{amount} {code} is above caller {}'s limit of {cap} {code} per operation",
                    self.name
                ),
            )),
            _ => Ok(()),
        }
    }

    fn refuse(&self, refusal: Refusal, description: String) -> GatewayError {
        GatewayError::PermissionDenied {
            reason: refusal.as_str(),
            description,
        }
    }
}

impl Refusal {
    /// The ErrorInfo reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RpcNotPermitted => "RPC_NOT_PERMITTED",
            Self::AccountNotPermitted => "ACCOUNT_NOT_PERMITTED",
            Self::AmountOverCallerLimit => "AMOUNT_OVER_CALLER_LIMIT",
            Self::CurrencyNotPermitted => "CURRENCY_NOT_PERMITTED",
        }
    }
}

/// The callers of one version of the callers file.
#[derive(Debug, Clone, Default)]
pub struct Callers {
    callers: Vec<Arc<CallerGrant>>,
}

/// `text` as 32 bytes of lowercase or uppercase hex.
fn sha256_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text.trim()).ok()?;
    bytes.try_into().ok()
}

impl Callers {
    /// Parses and validates a callers file: names unique and non-empty; a token hash (64 hex
    /// digits, unique) or a certificate subject; RPC names the gateway has; caps positive in
    /// ISO currencies; rates at least 1.
    pub fn parse(text: &str) -> Result<Self, CallersError> {
        let file: CallersFile = Figment::from(Toml::string(text))
            .extract()
            .map_err(|e| CallersError::Invalid(e.to_string()))?;
        let mut names = BTreeSet::new();
        let mut hashes = BTreeSet::new();
        let mut callers = Vec::new();
        for (i, entry) in file.caller.into_iter().enumerate() {
            let at =
                |what: &str| CallersError::Invalid(format!("caller[{i}] ({}): {what}", entry.name));
            if entry.name.trim().is_empty() || entry.name.chars().any(char::is_control) {
                return Err(CallersError::Invalid(format!(
                    "caller[{i}]: name is required"
                )));
            }
            if !names.insert(entry.name.clone()) {
                return Err(at("the name is used twice"));
            }
            let token_sha256 = match &entry.token_sha256 {
                Some(hex) => {
                    let hash = sha256_hex(hex).ok_or_else(|| {
                        at("token_sha256 must be 64 hex digits (SHA-256 of the token)")
                    })?;
                    if !hashes.insert(hash) {
                        return Err(at("token_sha256 is another caller's too"));
                    }
                    Some(hash)
                }
                None => None,
            };
            if token_sha256.is_none() && entry.certificate_subject.is_none() {
                return Err(at("token_sha256 is required"));
            }
            let granted = |list: &[String], what: &str, known: Option<&[&str]>| {
                if list.iter().any(|n| n == ALL) {
                    return Ok(Granted::All);
                }
                if let Some(known) = known
                    && let Some(unknown) = list.iter().find(|n| !known.contains(&n.as_str()))
                {
                    return Err(at(&format!(
                        "{what} names {unknown:?}, which the gateway does not have (one of {}, or \"*\")",
                        known.join(", ")
                    )));
                }
                Ok(Granted::Only(list.iter().cloned().collect()))
            };
            let rpcs = granted(&entry.rpcs, "rpcs", Some(RPC_NAMES))?;
            let accounts = granted(&entry.klarna_accounts, "klarna_accounts", None)?;
            for (table, caps) in [
                ("max_amount", &entry.max_amount),
                ("max_amount_per_day", &entry.max_amount_per_day),
            ] {
                for (currency, cap) in caps {
                    if Currency::parse(currency).map(|c| c.as_str() == currency) != Ok(true) {
                        return Err(at(&format!(
                            "{table} has {currency:?}: currencies are ISO 4217 codes in upper case"
                        )));
                    }
                    if *cap < 1 {
                        return Err(at(&format!(
                            "{table}.{currency} must be at least 1 (minor units)"
                        )));
                    }
                }
            }
            if entry.requests_per_second == Some(0) || entry.burst == Some(0) {
                return Err(at("requests_per_second and burst must be at least 1"));
            }
            if entry.burst.is_some() && entry.requests_per_second.is_none() {
                return Err(at("burst needs requests_per_second"));
            }
            // Taking another caller's scope would let it replay (and resend) that caller's
            // operations: only the scope of the time before authentication can be taken.
            if entry
                .scope_as
                .as_deref()
                .is_some_and(|s| s != Caller::anonymous().as_str())
            {
                return Err(at("scope_as can only be \"anonymous\""));
            }
            callers.push(Arc::new(CallerGrant {
                name: entry.name,
                token_sha256,
                certificate_subject: entry.certificate_subject,
                rpcs,
                accounts,
                max_amount: entry.max_amount,
                max_amount_per_day: entry.max_amount_per_day,
                requests_per_second: entry.requests_per_second,
                burst: entry.burst,
                scope_as: entry.scope_as,
                operator: entry.operator,
            }));
        }
        Ok(Self { callers })
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, CallersError> {
        let text = std::fs::read_to_string(path).map_err(|e| CallersError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text)
    }

    /// True when a caller keeps the scope of `anonymous` (`scope_as = "anonymous"`), so the
    /// operations made before authentication can still be retried under their identity.
    pub fn scopes_anonymous(&self) -> bool {
        self.callers
            .iter()
            .any(|c| c.scope_as.as_deref() == Some(Caller::anonymous().as_str()))
    }

    /// How many callers there are.
    pub fn len(&self) -> usize {
        self.callers.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.callers.is_empty()
    }

    /// The caller without a token that is bound to the certificate subject `subject`.
    pub fn by_certificate(&self, subject: &str) -> Option<Arc<CallerGrant>> {
        self.callers
            .iter()
            .find(|c| c.token_sha256.is_none() && c.certificate_subject.as_deref() == Some(subject))
            .cloned()
    }

    /// The caller whose token this is. The token's hash is compared with every caller's in
    /// constant time, so neither the answer's time nor its content tells which callers exist.
    pub fn authenticate(&self, token: &str) -> Option<Arc<CallerGrant>> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for caller in &self.callers {
            let Some(expected) = &caller.token_sha256 else {
                continue;
            };
            if bool::from(expected.ct_eq(&hash)) {
                found = Some(caller.clone());
            }
        }
        found
    }
}

/// The callers in force, re-read from their file on SIGHUP and when it changes.
#[derive(Debug)]
pub struct CallerRegistry {
    path: PathBuf,
    current: RwLock<Arc<Callers>>,
    /// What the file looked like when it was last read (modified time and length).
    seen: RwLock<Option<(SystemTime, u64)>>,
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl CallerRegistry {
    /// Loads the callers file at `path`; a file that cannot be used stops the start.
    pub fn open(path: &Path) -> Result<Self, CallersError> {
        let seen = file_stamp(path);
        let callers = Callers::load(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(callers)),
            seen: RwLock::new(seen),
        })
    }

    /// The callers in force.
    pub fn current(&self) -> Arc<Callers> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the file again: a valid one replaces the callers in force; an invalid one is
    /// refused (logged) and the callers in force stay.
    pub fn reload(&self) -> Result<usize, CallersError> {
        *self
            .seen
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = file_stamp(&self.path);
        match Callers::load(&self.path) {
            Ok(callers) => {
                let count = callers.len();
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(callers);
                tracing::info!(callers = count, "callers file reloaded");
                Ok(count)
            }
            Err(e) => {
                tracing::error!(error = %e, "callers file refused; the callers in force stay");
                Err(e)
            }
        }
    }

    /// True when the file changed since it was last read.
    fn changed(&self) -> bool {
        let seen = *self
            .seen
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        file_stamp(&self.path) != seen
    }

    /// Reloads on SIGHUP and when the file changes, until `stop`. The SIGHUP handler is
    /// installed when this is called, not when the returned future first runs: a SIGHUP that
    /// arrives in between must not end the process (its default action).
    pub fn watch(
        self: Arc<Self>,
        stop: watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let hangup = hangups();
        self.watch_with(hangup, stop)
    }

    async fn watch_with(self: Arc<Self>, mut hangup: Hangups, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(FILE_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = next_hangup(&mut hangup) => {
                    tracing::info!("SIGHUP: reloading the callers file");
                    let _ = self.reload();
                }
                _ = tick.tick() => {
                    if self.changed() {
                        let _ = self.reload();
                    }
                }
            }
        }
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

#[cfg(unix)]
fn hangups() -> Hangups {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangups() -> Hangups {}

#[cfg(unix)]
async fn next_hangup(signal: &mut Hangups) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangups) {
    std::future::pending().await
}

/// How calls are authenticated.
#[derive(Debug, Clone)]
pub enum Authentication {
    /// Off (`REFUND_GATEWAY_AUTH=none`, loopback only): every call is `anonymous`.
    None,
    /// Bearer tokens of the callers file.
    Callers(Arc<CallerRegistry>),
}

/// The authenticated caller of a request, left in its extensions by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthenticatedCaller(pub Arc<CallerGrant>);

/// The tower layer that authenticates every `refundgateway.*` call.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authentication: Authentication,
    anonymous: Arc<CallerGrant>,
}

impl AuthLayer {
    /// Authenticates with `authentication`.
    pub fn new(authentication: Authentication) -> Self {
        Self {
            authentication,
            anonymous: Arc::new(CallerGrant::anonymous()),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            layer: self.clone(),
        }
    }
}

/// [`AuthLayer`]'s service.
#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    layer: AuthLayer,
}

/// The subject of the client certificate the call's TLS connection presented, as
/// `CN=…, O=…` (in the order the certificate holds it), if it presented one.
fn peer_subject<B>(request: &Request<B>) -> Option<String> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let info = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certificates = info.peer_certs()?;
    let leaf = certificates.first()?;
    let (_, certificate) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(certificate.subject().to_string())
}

/// The caller of `request`, or why it is not let in: by its bearer token (and, for a caller
/// bound to a certificate subject, the client certificate's subject too), or, for a caller
/// with a subject and no token hash, by its client certificate alone.
fn identify<B>(layer: &AuthLayer, request: &Request<B>) -> Result<Arc<CallerGrant>, GatewayError> {
    let registry = match &layer.authentication {
        Authentication::None => return Ok(layer.anonymous.clone()),
        Authentication::Callers(registry) => registry,
    };
    let refused = |why: &str| GatewayError::Unauthenticated(why.to_owned());
    let callers = registry.current();
    let subject = peer_subject(request);
    let Some(header) = request.headers().get(http::header::AUTHORIZATION) else {
        return subject
            .and_then(|s| callers.by_certificate(&s))
            .ok_or_else(|| refused("the call carries no authorization: Bearer <token>"));
    };
    let token = header
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| refused("the authorization is not Bearer <token>"))?;
    let caller = callers
        .authenticate(token)
        .ok_or_else(|| refused("the token is not valid"))?;
    match &caller.certificate_subject {
        Some(bound) if subject.as_deref() != Some(bound.as_str()) => {
            Err(refused("the token is not valid on this connection"))
        }
        _ => Ok(caller),
    }
}

impl<S, B, ResBody> tower::Service<Request<B>> for Authenticate<S>
where
    S: tower::Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if !request.uri().path().starts_with(GUARDED_PREFIX) {
            return Box::pin(self.inner.call(request));
        }
        match identify(&self.layer, &request) {
            Ok(caller) => {
                tracing::Span::current().record("refund.caller", caller.name());
                request.extensions_mut().insert(AuthenticatedCaller(caller));
                Box::pin(self.inner.call(request))
            }
            Err(error) => {
                tracing::info!(error = %error, "call refused: not authenticated");
                let response = to_status(&error).into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    fn file() -> String {
        format!(
            "[[caller]]\nname = \"pos\"\ntoken_sha256 = \"{}\"\nrpcs = [\"RefundOrder\", \"GetOrder\"]\n\
             klarna_accounts = [\"eu\"]\nmax_amount = {{ SEK = 500000 }}\nrequests_per_second = 5\n\
             [[caller]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nrpcs = [\"*\"]\nklarna_accounts = [\"*\"]\n",
            hash("pos-token"),
            hash("ops-token")
        )
    }

    #[test]
    fn tokens_find_their_caller_and_nothing_else() {
        let callers = Callers::parse(&file()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            callers
                .authenticate("pos-token")
                .map(|c| c.name.clone())
                .as_deref(),
            Some("pos")
        );
        assert_eq!(
            callers
                .authenticate("ops-token")
                .map(|c| c.name.clone())
                .as_deref(),
            Some("ops")
        );
        assert!(callers.authenticate("pos-token ").is_none());
        assert!(callers.authenticate("").is_none());
        let pos = callers
            .authenticate("pos-token")
            .unwrap_or_else(|| panic!("pos"));
        assert_eq!(pos.rate(), Some((5, 5)));
        assert!(pos.check_rpc("RefundOrder").is_ok());
        assert!(pos.check_rpc("ListOperations").is_err());
        assert!(pos.check_account("eu").is_ok());
        assert!(pos.check_account("na").is_err());
        assert!(!pos.sees_all_operations());
        let sek = Currency::parse("SEK").unwrap_or_else(|e| panic!("{e}"));
        let eur = Currency::parse("EUR").unwrap_or_else(|e| panic!("{e}"));
        assert!(pos.check_amount(500_000, &sek).is_ok());
        let over = pos.check_amount(500_001, &sek).err();
        assert!(
            matches!(
                over,
                Some(GatewayError::PermissionDenied {
                    reason: "AMOUNT_OVER_CALLER_LIMIT",
                    ..
                })
            ),
            "{over:?}"
        );
        let other = pos.check_amount(1, &eur).err();
        assert!(
            matches!(
                other,
                Some(GatewayError::PermissionDenied {
                    reason: "CURRENCY_NOT_PERMITTED",
                    ..
                })
            ),
            "{other:?}"
        );
        let debug = format!("{callers:?}");
        assert!(!debug.contains(&hash("pos-token")), "{debug}");
    }

    #[test]
    fn bad_files_are_refused_naming_the_problem() {
        let ok = format!(
            "token_sha256 = \"{}\"\nrpcs = [\"*\"]\nklarna_accounts = [\"*\"]\n",
            hash("t")
        );
        let cases = [
            (
                format!(
                    "[[caller]]\nname = \"a\"\n{ok}[[caller]]\nname = \"a\"\n{}",
                    ok.replace(&hash("t"), &hash("u"))
                ),
                "used twice",
            ),
            (
                format!("[[caller]]\nname = \"a\"\n{ok}[[caller]]\nname = \"b\"\n{ok}"),
                "another caller's",
            ),
            (
                format!(
                    "[[caller]]\nname = \"a\"\n{}",
                    ok.replace(&hash("t"), "abc")
                ),
                "64 hex digits",
            ),
            (
                format!(
                    "[[caller]]\nname = \"a\"\n{}",
                    ok.replace("[\"*\"]\nklarna", "[\"Refund\"]\nklarna")
                ),
                "does not have",
            ),
            (
                format!("[[caller]]\nname = \"a\"\n{ok}max_amount = {{ sek = 1 }}\n"),
                "upper case",
            ),
            (
                format!("[[caller]]\nname = \"a\"\n{ok}max_amount = {{ SEK = 0 }}\n"),
                "at least 1",
            ),
            (
                format!("[[caller]]\nname = \"a\"\n{ok}token = \"plain\"\n"),
                "unknown field",
            ),
            (
                "[[caller]]\nname = \"a\"\nrpcs = []\nklarna_accounts = []\n".to_owned(),
                "token_sha256 is required",
            ),
        ];
        for (text, expected) in cases {
            let error = Callers::parse(&text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
            assert!(!error.contains(&hash("t")), "{error}");
        }
    }

    #[test]
    fn every_method_of_the_api_can_be_granted() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(refund_gateway_proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut methods: Vec<String> = set
            .file
            .iter()
            .filter(|f| f.package().starts_with("refundgateway"))
            .flat_map(|f| f.service.iter())
            .flat_map(|s| s.method.iter().map(|m| m.name().to_owned()))
            .collect();
        methods.sort();
        let mut granted: Vec<String> = RPC_NAMES
            .iter()
            .chain(OPERATOR_RPCS)
            .map(|s| (*s).to_owned())
            .collect();
        granted.sort();
        assert_eq!(methods, granted);
    }

    #[test]
    fn a_bad_reload_keeps_the_callers_in_force() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("callers.toml");
        std::fs::write(&path, file()).unwrap_or_else(|e| panic!("{e}"));
        let registry = CallerRegistry::open(&path).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&path, "[[caller]]\nname = 1\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(registry.changed());
        assert!(registry.reload().is_err());
        assert!(registry.current().authenticate("pos-token").is_some());
        std::fs::write(&path, file().replace("name = \"pos\"", "name = \"till\""))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(registry.reload(), Ok(2));
        assert_eq!(
            registry
                .current()
                .authenticate("pos-token")
                .map(|c| c.name.clone())
                .as_deref(),
            Some("till")
        );
    }
}
