//! Where and as whom the adapter talks to Klarna: region, environment, base URL, credentials,
//! timeouts, resending and the outbound rate limit ([`TransportConfig`], [`RetryConfig`],
//! [`OutboundRateLimit`], [`SharedLimit`]), for Order Management
//! ([`KlarnaClientConfig`]) and for the partner Payments API ([`PaymentsClientConfig`]: API
//! key, path prefix, partner account, client certificate). Everything is checked once, when
//! the client is built, so a bad setting stops the gateway at start-up rather than at its
//! first refund.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use url::{Host, Url};

/// A Klarna region; each has its own Order Management host (see docs/klarna.md#base-urls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Region {
    /// Europe: `api.klarna.com`.
    Eu,
    /// North America: `api-na.klarna.com`.
    Na,
    /// Oceania: `api-oc.klarna.com`.
    Oc,
}

impl Region {
    /// The configuration name: `eu`, `na` or `oc`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eu => "eu",
            Self::Na => "na",
            Self::Oc => "oc",
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Region {
    type Err = KlarnaConfigError;

    /// Accepts `eu`, `na` or `oc` in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Eu, Self::Na, Self::Oc]
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| KlarnaConfigError::UnknownRegion(s.to_owned()))
    }
}

/// Klarna's test (`playground`) or production (`live`) environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Environment {
    /// Klarna's test environment: no real money moves.
    Playground,
    /// Production.
    Live,
}

impl Environment {
    /// The configuration name: `playground` or `live`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Playground => "playground",
            Self::Live => "live",
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Environment {
    type Err = KlarnaConfigError;

    /// Accepts `playground` or `live` in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Playground, Self::Live]
            .into_iter()
            .find(|e| e.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| KlarnaConfigError::UnknownEnvironment(s.to_owned()))
    }
}

/// The Order Management base URL of `region` in `environment` (see docs/klarna.md#base-urls):
/// `https://api{-na,-oc}{.playground}.klarna.com`.
pub fn regional_base_url(region: Region, environment: Environment) -> BaseUrl {
    let host = match (region, environment) {
        (Region::Eu, Environment::Live) => "api.klarna.com",
        (Region::Na, Environment::Live) => "api-na.klarna.com",
        (Region::Oc, Environment::Live) => "api-oc.klarna.com",
        (Region::Eu, Environment::Playground) => "api.playground.klarna.com",
        (Region::Na, Environment::Playground) => "api-na.playground.klarna.com",
        (Region::Oc, Environment::Playground) => "api-oc.playground.klarna.com",
    };
    let url = Url::parse(&format!("https://{host}/"));
    // The six hosts above are literals; `regional_urls_are_valid_base_urls` parses every one.
    #[allow(clippy::expect_used)]
    let url = url.expect("the regional Klarna URLs are valid");
    BaseUrl(url)
}

/// The partner Payments API's base URL in `environment` (see docs/klarna.md#partner-payments):
/// one global host, `https://api-global.klarna.com`, and `https://api-global.test.klarna.com`
/// for tests (Klarna's test environment, which Order Management calls the playground).
pub fn payments_base_url(environment: Environment) -> BaseUrl {
    let host = match environment {
        Environment::Live => "api-global.klarna.com",
        Environment::Playground => "api-global.test.klarna.com",
    };
    let url = Url::parse(&format!("https://{host}/"));
    // Both hosts are literals; `payments_urls_are_valid_base_urls` parses them.
    #[allow(clippy::expect_used)]
    let url = url.expect("the Payments API URLs are valid");
    BaseUrl(url)
}

/// Whether a [`BaseUrl`] may be plain `http://` to a host that is not loopback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum PlainHttp {
    /// Plain http only to a loopback host (a local simulator); anything else must be https.
    /// The default, and what [`BaseUrl::parse`] applies.
    #[default]
    LoopbackOnly,
    /// Plain http to any host: an operator's explicit choice, for Klarna (or a service that
    /// speaks its API) on a private network, or an egress proxy that originates the TLS. The
    /// credentials then cross the network between the gateway and that host in clear.
    Anywhere,
}

/// A checked Klarna base URL: `https://` for any host; plain `http://` only for a loopback
/// host (`127.0.0.0/8`, `::1`, `localhost`: a local simulator), since Basic credentials would
/// otherwise cross the network in clear, unless parsed with [`PlainHttp::Anywhere`] (see
/// [`BaseUrl::parse_with`]). No user info (credentials live in [`KlarnaCredentials`], and a URL
/// ends up in error messages), no query, no fragment. A path prefix is kept; the trailing
/// slash is normalised away in [`BaseUrl::as_str`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BaseUrl(Url);

impl BaseUrl {
    /// Checks `s` against the rules above, plain http allowed only to a loopback host:
    /// [`BaseUrl::parse_with`] with [`PlainHttp::LoopbackOnly`].
    pub fn parse(s: &str) -> Result<Self, KlarnaConfigError> {
        Self::parse_with(s, PlainHttp::LoopbackOnly)
    }

    /// Checks `s` against the rules above, with `plain_http` deciding where plain `http://`
    /// is allowed; every other rule holds either way.
    pub fn parse_with(s: &str, plain_http: PlainHttp) -> Result<Self, KlarnaConfigError> {
        let invalid = |reason: &str| KlarnaConfigError::InvalidBaseUrl {
            // A URL with user info is never echoed back: it would print the password.
            url: if s.contains('@') {
                "(not shown: it contains user info)".to_owned()
            } else {
                s.to_owned()
            },
            reason: reason.to_owned(),
        };
        let url = Url::parse(s.trim()).map_err(|e| invalid(&e.to_string()))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "must not contain user info: give credentials separately",
            ));
        }
        if url.query().is_some() {
            return Err(invalid("must not have a query"));
        }
        if url.fragment().is_some() {
            return Err(invalid("must not have a fragment"));
        }
        let host = url
            .host()
            .ok_or_else(|| invalid("must have a host"))?
            .to_owned();
        match (url.scheme(), plain_http) {
            ("https", _) | ("http", PlainHttp::Anywhere) => {}
            ("http", PlainHttp::LoopbackOnly) if is_loopback(&host) => {}
            ("http", PlainHttp::LoopbackOnly) => {
                return Err(invalid(
                    "must use https (plain http is allowed only for a loopback host, unless \
                     explicitly allowed for any host)",
                ));
            }
            _ => return Err(invalid("must be an https URL")),
        }
        let mut url = url;
        // `path_segments_mut` later appends after the last segment: an empty trailing segment
        // (from `…/prefix/`) would put a double slash in every path.
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty();
        }
        Ok(Self(url))
    }

    /// True when requests to this URL are plain http to a host that is not loopback (only
    /// possible with [`PlainHttp::Anywhere`]): credentials then cross the network in clear.
    pub fn is_plain_http_off_loopback(&self) -> bool {
        self.0.scheme() == "http"
            && !self
                .0
                .host()
                .is_some_and(|host| is_loopback(&host.to_owned()))
    }

    /// The host, e.g. `api.klarna.com`, `10.1.2.3` or `[::1]`.
    pub fn host(&self) -> &str {
        self.0.host_str().unwrap_or_default()
    }

    /// The URL without a trailing slash, e.g. `https://api.klarna.com`.
    pub fn as_str(&self) -> &str {
        self.0.as_str().trim_end_matches('/')
    }

    /// The parsed URL, for building request URLs.
    pub(crate) fn url(&self) -> &Url {
        &self.0
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BaseUrl {
    type Err = KlarnaConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn is_loopback(host: &Host<String>) -> bool {
    match host {
        Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

/// Klarna API credentials for HTTP Basic authentication (never printed): an account's API
/// username and password, or an API key (`klarna_live_api_…` / `klarna_test_api_…`), which
/// Klarna takes as the whole Basic credential.
#[derive(Clone)]
pub struct KlarnaCredentials(pub(crate) Credential);

/// What a [`KlarnaCredentials`] holds.
#[derive(Clone)]
pub(crate) enum Credential {
    /// Sent as `Basic base64(username:password)`. The username is kept secret too: Klarna
    /// also accepts an API key in its place.
    UsernamePassword {
        username: String,
        password: SecretString,
    },
    /// Sent as `Basic <key>`, the key exactly as issued (not base64 of `key:`).
    ApiKey(SecretString),
}

impl KlarnaCredentials {
    /// Credentials from an API username and password.
    pub fn new(username: impl Into<String>, password: impl Into<SecretString>) -> Self {
        Self(Credential::UsernamePassword {
            username: username.into(),
            password: password.into(),
        })
    }

    /// Credentials from an API key, sent as the whole Basic credential: `Basic <key>`.
    pub fn api_key(key: impl Into<SecretString>) -> Self {
        Self(Credential::ApiKey(key.into()))
    }

    /// Whether they are an API key (not a username and password).
    pub fn is_api_key(&self) -> bool {
        matches!(self.0, Credential::ApiKey(_))
    }
}

/// `Authorization: Basic <api key>`, the key exactly as Klarna issued it (not base64 of
/// `key:`), marked sensitive; the plain copy is wiped after use. Both APIs take it so.
pub(crate) fn api_key_authorization(
    api_key: &SecretString,
) -> Result<http::HeaderValue, KlarnaConfigError> {
    let key = api_key.expose_secret();
    if key.is_empty() {
        return Err(KlarnaConfigError::InvalidApiKey("the API key is empty"));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KlarnaConfigError::InvalidApiKey(
            "the API key holds whitespace, control or non-ASCII characters",
        ));
    }
    let value = Zeroizing::new(format!("Basic {key}"));
    let mut header = http::HeaderValue::from_str(&value).map_err(|_| {
        // Visible ASCII is always a valid header value.
        KlarnaConfigError::InvalidApiKey("cannot be sent as a header")
    })?;
    header.set_sensitive(true);
    Ok(header)
}

impl fmt::Debug for KlarnaCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KlarnaCredentials { .. }")
    }
}

impl fmt::Display for KlarnaCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KlarnaCredentials { .. }")
    }
}

/// Default time one attempt (request sent to full answer read) may take.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time to establish a connection (TCP and TLS).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default time a whole call (every attempt and every wait between them) may take when the
/// caller set no deadline with [`crate::with_deadline`]: the gateway's own default RPC deadline.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// When and how often a Klarna call is resent (see docs/klarna.md#retries); which outcomes are
/// safe to resend is fixed, see [`crate::RetryPolicy`]. One retry budget is shared by every
/// call of one client ([`crate::KlarnaClient`], [`crate::PaymentsClient`]), i.e. per Klarna
/// account.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Attempts per call, the first included; 1 turns resending off. Default 4.
    pub max_attempts: u32,
    /// Ceiling of the first backoff; each later ceiling doubles, up to `max_backoff`. The wait
    /// is drawn uniformly below the ceiling ("full jitter"), and is at least Klarna's
    /// `Retry-After`. Default 100 ms.
    pub base_backoff: Duration,
    /// Largest backoff ceiling (a `Retry-After` may ask for longer). Default 2 s.
    pub max_backoff: Duration,
    /// How long a call counts towards the retry budget: 1 to 60 s. Default 10 s.
    pub budget_ttl: Duration,
    /// Resends allowed per second whatever the traffic, so that a quiet client can still
    /// resend. Default 10.
    pub budget_min_per_sec: u32,
    /// Resends allowed on top, as a ratio of calls made within `budget_ttl` (a ratio of
    /// requests, not money): 0.2 lets one call in five be resent once. 0 to 1000.
    /// Default 0.2.
    pub budget_retry_percent: f32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            budget_ttl: Duration::from_secs(10),
            budget_min_per_sec: 10,
            budget_retry_percent: 0.2,
        }
    }
}

impl RetryConfig {
    /// Resending off: every call makes exactly one attempt.
    pub fn no_retries() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Checks the settings against the limits above (tower's budget would panic outside
    /// them).
    pub fn validate(&self) -> Result<(), KlarnaConfigError> {
        if self.max_attempts == 0 {
            return Err(KlarnaConfigError::InvalidRetry(
                "max_attempts must be at least 1",
            ));
        }
        if self.max_backoff < self.base_backoff {
            return Err(KlarnaConfigError::InvalidRetry(
                "max_backoff must not be below base_backoff",
            ));
        }
        if self.budget_ttl < Duration::from_secs(1) || self.budget_ttl > Duration::from_secs(60) {
            return Err(KlarnaConfigError::InvalidRetry(
                "budget_ttl must be between 1 and 60 seconds",
            ));
        }
        if self.budget_min_per_sec >= i32::MAX.unsigned_abs() {
            return Err(KlarnaConfigError::InvalidRetry(
                "budget_min_per_sec is too large",
            ));
        }
        // NaN fails both comparisons, so it is refused too.
        if !(self.budget_retry_percent >= 0.0 && self.budget_retry_percent <= 1000.0) {
            return Err(KlarnaConfigError::InvalidRetry(
                "budget_retry_percent must be between 0 and 1000",
            ));
        }
        Ok(())
    }
}

/// How calls to one Klarna API are made: timeouts, resending, the default deadline, the
/// outbound rate limit and the `User-Agent` suffix. Shared by [`KlarnaClientConfig`] and
/// [`PaymentsClientConfig`], and checked by [`TransportConfig::validate`] when a client is
/// built.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportConfig {
    /// Limit on one attempt, from sending the request to reading the whole answer; an attempt
    /// that runs out ends as [`refund_gateway_domain::KlarnaError::NoAnswer`]. Default 10 s.
    /// Keep it above `connect_timeout`, so that a slow connect is reported as never sent.
    pub attempt_timeout: Duration,
    /// Limit on establishing a connection (TCP and TLS); running out means the request was
    /// never sent. Default 3 s.
    pub connect_timeout: Duration,
    /// Appended to the `User-Agent` after a space, e.g. `refund-gateway/1.2.0 (eu-live)`.
    pub user_agent_suffix: Option<String>,
    /// When and how often a call is resent. Default [`RetryConfig::default`].
    pub retry: RetryConfig,
    /// Time a whole call may take, resends and waits included, when the caller set no
    /// deadline with [`crate::with_deadline`]. Default 30 s.
    pub default_deadline: Duration,
    /// The account's outbound rate limit: one permit per attempt, resends included. `None`
    /// (the default) sends without one.
    pub rate_limit: Option<OutboundRateLimit>,
}

impl Default for TransportConfig {
    /// The default timeouts, deadline and retry settings, and no `User-Agent` suffix.
    fn default() -> Self {
        Self {
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            user_agent_suffix: None,
            retry: RetryConfig::default(),
            default_deadline: DEFAULT_DEADLINE,
            rate_limit: None,
        }
    }
}

impl TransportConfig {
    /// Fails on a zero timeout or default deadline, retry settings out of range (see
    /// [`RetryConfig::validate`]) or a rate limit [`OutboundRateLimit::validate`] refuses. The
    /// `User-Agent` suffix is checked when the header is built.
    pub fn validate(&self) -> Result<(), KlarnaConfigError> {
        if self.attempt_timeout.is_zero() {
            return Err(KlarnaConfigError::ZeroTimeout("attempt_timeout"));
        }
        if self.connect_timeout.is_zero() {
            return Err(KlarnaConfigError::ZeroTimeout("connect_timeout"));
        }
        if self.default_deadline.is_zero() {
            return Err(KlarnaConfigError::ZeroTimeout("default_deadline"));
        }
        if let Some(limit) = &self.rate_limit {
            limit.validate()?;
        }
        self.retry.validate()
    }
}

/// Klarna's request quota per merchant in production (see docs/klarna.md#rate-limits).
pub const KLARNA_LIVE_REQUESTS_PER_SECOND: u32 = 200;
/// Klarna's request quota per merchant in the playground.
pub const KLARNA_PLAYGROUND_REQUESTS_PER_SECOND: u32 = 50;
/// How long the shared limit waits for Redis before using the local fallback, by default.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
/// Largest rate and burst accepted: beyond it a permit's interval is below a microsecond.
const MAX_RATE: u32 = 1_000_000;
/// Longest Redis key name accepted (the name also labels a metric and log events).
const MAX_KEY_LEN: usize = 200;

/// The outbound rate limit of one Klarna account (see docs/klarna.md#outbound-rate-limit):
/// every attempt, resends included, takes a permit. Permits come at `requests_per_second`
/// with up to `burst` at once (GCRA: over any window of `t` seconds at most
/// `requests_per_second * t + burst` attempts start). An attempt waits for its permit when it
/// comes before the call's deadline, and is otherwise refused at once, unsent, as
/// [`refund_gateway_domain::KlarnaError::Throttled`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRateLimit {
    /// Sustained permits per second; at least 1.
    pub requests_per_second: u32,
    /// Permits available at once after a quiet spell; at least 1. [`OutboundRateLimit::new`]
    /// sets it to `requests_per_second`, one second's worth.
    pub burst: u32,
    /// Shares the limit with every replica through Redis; `None` limits this process alone.
    pub shared: Option<SharedLimit>,
}

impl OutboundRateLimit {
    /// `requests_per_second` with a burst of one second's worth, local to this process.
    pub fn new(requests_per_second: u32) -> Self {
        Self {
            requests_per_second,
            burst: requests_per_second,
            shared: None,
        }
    }

    /// Klarna's quota per merchant: 200 requests per second live, 50 in the playground.
    pub fn klarna_default(environment: Environment) -> Self {
        Self::new(match environment {
            Environment::Live => KLARNA_LIVE_REQUESTS_PER_SECOND,
            Environment::Playground => KLARNA_PLAYGROUND_REQUESTS_PER_SECOND,
        })
    }

    /// The same limit shared by every replica through the Redis at `redis_url`, under
    /// `key` (the account's name), with the default fallback and timeout of
    /// [`SharedLimit::new`].
    pub fn shared_through(
        mut self,
        redis_url: impl Into<SecretString>,
        key: impl Into<String>,
    ) -> Self {
        self.shared = Some(SharedLimit::new(redis_url, key, self.requests_per_second));
        self
    }

    /// Fails unless the rate, the burst and a fallback rate are between 1 and 1,000,000 (the
    /// fallback no more than the rate), the Redis timeout is above zero, the key is 1 to 200
    /// characters without whitespace or control characters, and the Redis URL is one the
    /// client can use (`redis://`, `redis+unix://` or `unix://`; no TLS). A refused URL is
    /// never quoted: it may hold a password.
    pub fn validate(&self) -> Result<(), KlarnaConfigError> {
        let invalid = KlarnaConfigError::InvalidRateLimit;
        if !(1..=MAX_RATE).contains(&self.requests_per_second) {
            return Err(invalid("requests_per_second must be between 1 and 1000000"));
        }
        if !(1..=MAX_RATE).contains(&self.burst) {
            return Err(invalid("burst must be between 1 and 1000000"));
        }
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        if shared.fallback_requests_per_second == 0 {
            return Err(invalid("fallback_requests_per_second must be at least 1"));
        }
        if shared.fallback_requests_per_second > self.requests_per_second {
            return Err(invalid(
                "fallback_requests_per_second must not exceed requests_per_second",
            ));
        }
        if shared.timeout.is_zero() {
            return Err(invalid("the Redis timeout must be greater than zero"));
        }
        if shared.key.is_empty() || shared.key.len() > MAX_KEY_LEN {
            return Err(invalid("the shared limit's key must be 1 to 200 bytes"));
        }
        if shared
            .key
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "the shared limit's key must not contain whitespace or control characters",
            ));
        }
        shared.redis_client().map(drop)
    }
}

/// Where and under which name replicas share an [`OutboundRateLimit`]: a Redis server and the
/// account's key. `Debug` never shows the URL (it may hold a password).
#[derive(Clone)]
pub struct SharedLimit {
    /// `redis://[user:password@]host[:port][/db]`; a secret, since it may hold a password.
    pub redis_url: SecretString,
    /// The account's name, e.g. `eu-live`: replicas limiting the same Klarna account use the
    /// same key. Stored in Redis as `refund-gateway:klarna-quota:{key}`.
    pub key: String,
    /// The rate this replica allows itself while Redis cannot be reached: its share of the
    /// quota, so that calls go on without exceeding it much. Default a quarter of the quota,
    /// at least 1.
    pub fallback_requests_per_second: u32,
    /// How long a permit may take to come from Redis before the local fallback decides.
    /// Default 50 ms ([`DEFAULT_REDIS_TIMEOUT`]).
    pub timeout: Duration,
}

impl SharedLimit {
    /// Shares a quota of `requests_per_second` under `key`, falling back to a quarter of it
    /// (at least 1) when Redis does not answer within [`DEFAULT_REDIS_TIMEOUT`].
    pub fn new(
        redis_url: impl Into<SecretString>,
        key: impl Into<String>,
        requests_per_second: u32,
    ) -> Self {
        Self {
            redis_url: redis_url.into(),
            key: key.into(),
            fallback_requests_per_second: (requests_per_second / 4).max(1),
            timeout: DEFAULT_REDIS_TIMEOUT,
        }
    }

    /// The Redis key holding the account's state.
    pub fn redis_key(&self) -> String {
        format!("refund-gateway:klarna-quota:{}", self.key)
    }

    /// The Redis client for `redis_url`: parsed only, nothing is connected.
    pub(crate) fn redis_client(&self) -> Result<redis::Client, KlarnaConfigError> {
        // redis' messages may quote the URL, and with it a password: never passed on.
        redis::Client::open(self.redis_url.expose_secret()).map_err(|_| {
            KlarnaConfigError::InvalidRateLimit(
                "the Redis URL cannot be used (expected redis://host:port, or a unix socket; \
                 TLS is not supported)",
            )
        })
    }
}

impl PartialEq for SharedLimit {
    fn eq(&self, other: &Self) -> bool {
        self.redis_url.expose_secret() == other.redis_url.expose_secret()
            && self.key == other.key
            && self.fallback_requests_per_second == other.fallback_requests_per_second
            && self.timeout == other.timeout
    }
}

impl Eq for SharedLimit {}

impl fmt::Debug for SharedLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedLimit")
            .field("redis_url", &"(not shown)")
            .field("key", &self.key)
            .field(
                "fallback_requests_per_second",
                &self.fallback_requests_per_second,
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Everything [`crate::KlarnaClient::new`] needs for one Klarna merchant account. `Debug`
/// never shows the credentials.
#[derive(Clone)]
pub struct KlarnaClientConfig {
    /// Where Klarna is: [`regional_base_url`], or an override (a simulator's loopback URL, a
    /// proxy).
    pub base_url: BaseUrl,
    /// Basic credentials of the merchant account.
    pub credentials: KlarnaCredentials,
    /// PEM certificates trusted in addition to the system's roots (a test CA, a private
    /// deployment's CA).
    pub extra_root_certificates: Vec<Vec<u8>>,
    /// Timeouts, resending, default deadline, outbound rate limit, `User-Agent` suffix.
    pub transport: TransportConfig,
}

impl KlarnaClientConfig {
    /// A configuration without extra roots, with the default [`TransportConfig`].
    pub fn new(base_url: BaseUrl, credentials: KlarnaCredentials) -> Self {
        Self {
            base_url,
            credentials,
            extra_root_certificates: Vec::new(),
            transport: TransportConfig::default(),
        }
    }
}

impl fmt::Debug for KlarnaClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KlarnaClientConfig")
            .field("base_url", &self.base_url.as_str())
            .field("credentials", &self.credentials)
            .field(
                "extra_root_certificates",
                &format_args!("{} PEM bundle(s)", self.extra_root_certificates.len()),
            )
            .field("transport", &self.transport)
            .finish()
    }
}

/// A client certificate for mutual TLS, which Klarna requires of acquiring partners: a PEM
/// certificate chain (leaf first, then any intermediates) and the leaf's PEM private key
/// (PKCS #8 `PRIVATE KEY`, PKCS #1 `RSA PRIVATE KEY` or SEC1 `EC PRIVATE KEY`, unencrypted).
/// The key is a secret: `Debug` never shows it, and errors about it never quote it. Checked
/// when the client is built ([`crate::PaymentsClient::new`]).
#[derive(Clone)]
pub struct ClientIdentity {
    /// PEM certificates, leaf first.
    pub certificate_chain: Vec<u8>,
    /// The leaf certificate's PEM private key.
    pub private_key: SecretSlice<u8>,
}

impl ClientIdentity {
    /// An identity from a PEM certificate chain and a PEM private key.
    pub fn from_pem(
        certificate_chain: impl Into<Vec<u8>>,
        private_key: impl Into<SecretSlice<u8>>,
    ) -> Self {
        Self {
            certificate_chain: certificate_chain.into(),
            private_key: private_key.into(),
        }
    }

    /// Checks both halves and reads them for rustls. The chain must hold at least one
    /// certificate and no private key; the key PEM exactly one private key and nothing else.
    /// Whether the key belongs to the leaf is checked when the TLS client is built.
    pub(crate) fn to_rustls(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), KlarnaConfigError> {
        let invalid = KlarnaConfigError::InvalidClientIdentity;
        let chain = pem_sections(&self.certificate_chain)
            .map_err(|()| invalid("the certificate chain is not valid PEM"))?;
        if chain.iter().any(|kind| is_private_key(*kind)) {
            return Err(invalid(
                "the certificate chain holds a private key: give it as the private key",
            ));
        }
        if !chain.contains(&SectionKind::Certificate) {
            return Err(invalid("the certificate chain holds no PEM certificate"));
        }
        if chain.iter().any(|kind| *kind != SectionKind::Certificate) {
            return Err(invalid(
                "the certificate chain holds PEM sections other than certificates",
            ));
        }
        let key = pem_sections(self.private_key.expose_secret())
            .map_err(|()| invalid("the private key is not valid PEM"))?;
        match key.as_slice() {
            [kind] if is_private_key(*kind) => {}
            [] => {
                return Err(invalid(
                    "no private key found: expected one unencrypted PEM private key \
                     (PKCS #8, PKCS #1 or SEC1)",
                ));
            }
            _ => {
                return Err(invalid(
                    "the private key PEM must hold exactly one private key and nothing else",
                ));
            }
        }
        // The parsers' errors are dropped: they may quote a line of the input.
        let chain = CertificateDer::pem_slice_iter(&self.certificate_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| invalid("the certificate chain cannot be read"))?;
        let key = PrivateKeyDer::from_pem_slice(self.private_key.expose_secret())
            .map_err(|_| invalid("the private key cannot be read"))?;
        Ok((chain, key))
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field(
                "certificate_chain",
                &format_args!("{} bytes of PEM", self.certificate_chain.len()),
            )
            .finish_non_exhaustive()
    }
}

/// The kinds of the PEM sections in `pem`, in order (sections of kinds rustls does not know,
/// such as an encrypted key, are skipped). `Err` when the PEM is malformed; the parser's
/// error is dropped because it may quote a line of the input, which may be key material.
fn pem_sections(pem: &[u8]) -> Result<Vec<SectionKind>, ()> {
    <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(pem)
        .map(|section| {
            section.map(|(kind, der)| {
                // The DER of a key section is key material: wiped, not just dropped.
                drop(Zeroizing::new(der));
                kind
            })
        })
        .collect::<Result<_, _>>()
        .map_err(|_| ())
}

fn is_private_key(kind: SectionKind) -> bool {
    matches!(
        kind,
        SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
    )
}

/// The certificates of every PEM bundle of `bundles` (a client's `extra_root_certificates`),
/// for the trust store; an error names the first bundle that cannot be used.
pub(crate) fn extra_root_certificates(
    bundles: &[Vec<u8>],
) -> Result<Vec<CertificateDer<'static>>, KlarnaConfigError> {
    let mut roots = Vec::new();
    for (index, pem) in bundles.iter().enumerate() {
        roots.extend(root_certificates(index, pem)?);
    }
    Ok(roots)
}

/// Certificates from a PEM bundle, for the trust store; at least one.
pub(crate) fn root_certificates(
    index: usize,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, KlarnaConfigError> {
    let invalid = |reason| KlarnaConfigError::InvalidRootCertificate { index, reason };
    let kinds = pem_sections(pem).map_err(|()| invalid("not valid PEM"))?;
    if kinds.iter().any(|kind| is_private_key(*kind)) {
        return Err(invalid("holds a private key"));
    }
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| invalid("not valid PEM"))?;
    if certificates.is_empty() {
        return Err(invalid("holds no PEM certificate"));
    }
    Ok(certificates)
}

/// Everything [`crate::PaymentsClient::new`] needs for one partner account of Klarna's
/// partner Payments API (see docs/klarna.md#partner-payments). `Debug` never shows the API
/// key or the private key.
#[derive(Clone)]
pub struct PaymentsClientConfig {
    /// [`payments_base_url`], or an override (a simulator's loopback URL, a proxy).
    pub base_url: BaseUrl,
    /// The API key exactly as Klarna issued it (`klarna_live_api_…`, `klarna_test_api_…`):
    /// sent as `Authorization: Basic <api key>`. Visible ASCII without spaces.
    pub api_key: SecretString,
    /// Path before `/payment/…`: `/v2/accounts/{partner_account_id}` for an acquiring partner
    /// (the id filled in), `/v2` for a direct integration. Starts with `/`; no `?` or `#`, no
    /// whitespace, no `.` or `..` segment. Each segment is percent-decoded, then percent-encoded
    /// when a URL is built, so a KRN's `:` and an already encoded `%3A` both work.
    pub path_prefix: String,
    /// The account acted for, sent as `Klarna-Partner-Account`; `None` sends no such header.
    pub on_behalf_of: Option<String>,
    /// The client certificate for mutual TLS; required by Klarna for acquiring partners.
    pub client_identity: Option<ClientIdentity>,
    /// PEM certificates trusted in addition to the system's roots (a test CA, a private
    /// deployment's CA).
    pub extra_root_certificates: Vec<Vec<u8>>,
    /// Timeouts, resending, default deadline, outbound rate limit, `User-Agent` suffix.
    pub transport: TransportConfig,
}

impl PaymentsClientConfig {
    /// A configuration without partner account header, client certificate or extra roots,
    /// with the default [`TransportConfig`].
    pub fn new(
        base_url: BaseUrl,
        api_key: impl Into<SecretString>,
        path_prefix: impl Into<String>,
    ) -> Self {
        Self {
            base_url,
            api_key: api_key.into(),
            path_prefix: path_prefix.into(),
            on_behalf_of: None,
            client_identity: None,
            extra_root_certificates: Vec::new(),
            transport: TransportConfig::default(),
        }
    }
}

impl fmt::Debug for PaymentsClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PaymentsClientConfig")
            .field("base_url", &self.base_url.as_str())
            .field("api_key", &"(not shown)")
            .field("path_prefix", &self.path_prefix)
            .field("on_behalf_of", &self.on_behalf_of)
            .field("client_identity", &self.client_identity)
            .field(
                "extra_root_certificates",
                &format_args!("{} PEM bundle(s)", self.extra_root_certificates.len()),
            )
            .field("transport", &self.transport)
            .finish()
    }
}

/// The segments of a Payments API path prefix (see [`PaymentsClientConfig::path_prefix`]),
/// percent-decoded; empty segments (`//`, a trailing `/`) are dropped.
pub(crate) fn path_prefix_segments(prefix: &str) -> Result<Vec<String>, KlarnaConfigError> {
    let invalid = |reason| KlarnaConfigError::InvalidPathPrefix {
        prefix: prefix.to_owned(),
        reason,
    };
    if !prefix.starts_with('/') {
        return Err(invalid("must start with '/'"));
    }
    if prefix.contains(['?', '#']) {
        return Err(invalid("must not contain '?' or '#'"));
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("must not contain whitespace or control characters"));
    }
    prefix
        .split('/')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            let decoded = percent_decode_str(segment)
                .decode_utf8()
                .map_err(|_| invalid("a percent-encoded segment is not UTF-8"))?;
            if decoded.chars().any(char::is_control) {
                return Err(invalid(
                    "a percent-encoded segment holds control characters",
                ));
            }
            // `url` drops such segments when extending a path: refused rather than skipped.
            if matches!(decoded.as_ref(), "." | "..") {
                return Err(invalid("must not contain '.' or '..' segments"));
            }
            Ok(decoded.into_owned())
        })
        .collect()
}

/// A Klarna setting that cannot work. Messages never contain a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KlarnaConfigError {
    /// Not `eu`, `na` or `oc`.
    #[error("unknown Klarna region {0:?}: expected eu, na or oc")]
    UnknownRegion(String),
    /// Not `playground` or `live`.
    #[error("unknown Klarna environment {0:?}: expected playground or live")]
    UnknownEnvironment(String),
    /// The base URL breaks a rule of [`BaseUrl`].
    #[error("invalid Klarna base URL {url:?}: {reason}")]
    InvalidBaseUrl {
        /// The URL as given (withheld when it carries user info).
        url: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// The credentials cannot be sent as HTTP Basic credentials.
    #[error("invalid Klarna credentials: {0}")]
    InvalidCredentials(&'static str),
    /// The `User-Agent` suffix is not a valid header value.
    #[error("invalid User-Agent suffix: {0}")]
    InvalidUserAgent(&'static str),
    /// A zero timeout would fail every call.
    #[error("Klarna {0} must be greater than zero")]
    ZeroTimeout(&'static str),
    /// A [`RetryConfig`] setting is out of range.
    #[error("invalid Klarna retry setting: {0}")]
    InvalidRetry(&'static str),
    /// An [`OutboundRateLimit`] setting cannot work.
    #[error("invalid Klarna outbound rate limit: {0}")]
    InvalidRateLimit(&'static str),
    /// The HTTP client could not be built (TLS set-up, e.g. a private key that does not
    /// belong to the certificate).
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
    /// The Payments API key cannot be sent as `Authorization: Basic <api key>`.
    #[error("invalid Klarna API key: {0}")]
    InvalidApiKey(&'static str),
    /// The Payments API path prefix breaks a rule of [`PaymentsClientConfig::path_prefix`].
    #[error("invalid Klarna Payments path prefix {prefix:?}: {reason}")]
    InvalidPathPrefix {
        /// The prefix as given.
        prefix: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The partner account acted for cannot be sent as `Klarna-Partner-Account`.
    #[error("invalid Klarna partner account (on_behalf_of): {0}")]
    InvalidPartnerAccount(&'static str),
    /// The client certificate or its private key cannot be used.
    #[error("invalid client certificate for mutual TLS: {0}")]
    InvalidClientIdentity(&'static str),
    /// An extra root certificate cannot be used.
    #[error("invalid extra root certificate #{index}: {reason}")]
    InvalidRootCertificate {
        /// Its position in `extra_root_certificates`, from 0.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_and_environments_parse_in_any_case() {
        assert_eq!("eu".parse(), Ok(Region::Eu));
        assert_eq!("NA".parse(), Ok(Region::Na));
        assert_eq!("Oc".parse(), Ok(Region::Oc));
        assert!("us".parse::<Region>().is_err());
        assert_eq!("playground".parse(), Ok(Environment::Playground));
        assert_eq!("LIVE".parse(), Ok(Environment::Live));
        assert!("test".parse::<Environment>().is_err());
        for r in [Region::Eu, Region::Na, Region::Oc] {
            assert_eq!(r.to_string().parse(), Ok(r));
        }
        for e in [Environment::Playground, Environment::Live] {
            assert_eq!(e.to_string().parse(), Ok(e));
        }
    }

    #[test]
    fn regional_urls_are_valid_base_urls() {
        let cases = [
            (Region::Eu, Environment::Live, "https://api.klarna.com"),
            (Region::Na, Environment::Live, "https://api-na.klarna.com"),
            (Region::Oc, Environment::Live, "https://api-oc.klarna.com"),
            (
                Region::Eu,
                Environment::Playground,
                "https://api.playground.klarna.com",
            ),
            (
                Region::Na,
                Environment::Playground,
                "https://api-na.playground.klarna.com",
            ),
            (
                Region::Oc,
                Environment::Playground,
                "https://api-oc.playground.klarna.com",
            ),
        ];
        for (region, env, want) in cases {
            let url = regional_base_url(region, env);
            assert_eq!(url.as_str(), want);
            assert_eq!(BaseUrl::parse(want), Ok(url));
        }
    }

    #[test]
    fn https_is_accepted_anywhere() {
        for ok in [
            "https://api.klarna.com",
            "https://api.klarna.com/",
            "HTTPS://API.KLARNA.COM",
            "https://10.0.0.8:8443",
            "https://klarna.internal/proxy/",
        ] {
            assert!(BaseUrl::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn plain_http_only_on_loopback() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.1.2.3",
            "http://[::1]:9000/",
            "http://localhost:1234",
            "http://LOCALHOST",
        ] {
            assert!(BaseUrl::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://api.klarna.com",
            "http://10.0.0.1",
            "http://[::2]",
            "http://localhost.example.com",
            "http://128.0.0.1",
            "http://0.0.0.0",
        ] {
            assert!(
                matches!(
                    BaseUrl::parse(bad),
                    Err(KlarnaConfigError::InvalidBaseUrl { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn plain_http_anywhere_only_when_asked() {
        for off_loopback in [
            "http://10.1.2.3:8080",
            "http://klarna.internal/proxy/",
            "http://[fd00::1]:8080",
            "HTTP://API.KLARNA.COM",
        ] {
            let strict = BaseUrl::parse(off_loopback).err();
            assert!(
                strict.as_ref().is_some_and(|e| e
                    .to_string()
                    .contains("plain http is allowed only for a loopback host")),
                "{off_loopback}: {strict:?}"
            );
            assert_eq!(
                BaseUrl::parse_with(off_loopback, PlainHttp::LoopbackOnly).err(),
                strict
            );
            let url = BaseUrl::parse_with(off_loopback, PlainHttp::Anywhere)
                .unwrap_or_else(|e| panic!("{off_loopback}: {e}"));
            assert!(url.is_plain_http_off_loopback(), "{off_loopback}");
        }
        let url = BaseUrl::parse_with("http://10.1.2.3:8080/klarna/", PlainHttp::Anywhere)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (url.as_str(), url.host()),
            ("http://10.1.2.3:8080/klarna", "10.1.2.3")
        );
        assert_eq!("http://10.1.2.3".parse::<BaseUrl>().ok(), None);
    }

    #[test]
    fn https_and_loopback_http_are_the_same_in_both_modes() {
        for ok in [
            "https://api.klarna.com",
            "https://10.0.0.8:8443/proxy/",
            "http://127.0.0.1:8080",
            "http://[::1]:9000/",
            "http://localhost:1234",
        ] {
            let strict = BaseUrl::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            let anywhere =
                BaseUrl::parse_with(ok, PlainHttp::Anywhere).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(strict, anywhere, "{ok}");
            assert!(!strict.is_plain_http_off_loopback(), "{ok}");
        }
        assert_eq!(
            regional_base_url(Region::Eu, Environment::Live).host(),
            "api.klarna.com"
        );
        assert_eq!(PlainHttp::default(), PlainHttp::LoopbackOnly);
    }

    #[test]
    fn user_info_query_and_fragment_are_refused_in_both_modes() {
        for bad in [
            "http://user@10.1.2.3",
            "http://user:hunter2@10.1.2.3",
            "http://10.1.2.3/?x=1",
            "http://10.1.2.3/#top",
            "https://user:hunter2@api.klarna.com",
            "ftp://10.1.2.3",
            "ws://10.1.2.3",
            "10.1.2.3:8080",
        ] {
            for mode in [PlainHttp::LoopbackOnly, PlainHttp::Anywhere] {
                let e = BaseUrl::parse_with(bad, mode).err();
                let shown = format!("{e:?}");
                assert!(
                    matches!(e, Some(KlarnaConfigError::InvalidBaseUrl { .. })),
                    "{bad} {mode:?}: {shown}"
                );
                assert!(!shown.contains("hunter2"), "{shown}");
            }
        }
    }

    #[test]
    fn bad_schemes_and_parts_are_refused() {
        for bad in [
            "",
            "api.klarna.com",
            "ftp://api.klarna.com",
            "ws://127.0.0.1",
            "file:///etc/passwd",
            "https://api.klarna.com/?x=1",
            "https://api.klarna.com/#top",
            "https://user@api.klarna.com",
            "https://user:secret@api.klarna.com",
            "mailto:ops@example.com",
        ] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refused_url_with_user_info_is_not_echoed() {
        let err = BaseUrl::parse("http://user:hunter2@api.klarna.com")
            .err()
            .map(|e| format!("{e} {e:?}"))
            .unwrap_or_default();
        assert!(!err.is_empty());
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn trailing_slash_is_normalised_and_prefix_kept() {
        let a = BaseUrl::parse("http://127.0.0.1:8080/").map(|u| u.as_str().to_owned());
        assert_eq!(a, Ok("http://127.0.0.1:8080".to_owned()));
        let b = BaseUrl::parse("https://proxy.example/klarna/").map(|u| u.as_str().to_owned());
        assert_eq!(b, Ok("https://proxy.example/klarna".to_owned()));
        assert_eq!(
            BaseUrl::parse("https://proxy.example/klarna/"),
            BaseUrl::parse("https://proxy.example/klarna")
        );
    }

    #[test]
    fn credentials_never_print() {
        let c = KlarnaCredentials::new("PK12345_api_user", "hunter2-secret");
        for shown in [format!("{c:?}"), format!("{c:#?}"), c.to_string()] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(!shown.contains("PK12345"), "{shown}");
        }
        let config =
            KlarnaClientConfig::new(regional_base_url(Region::Eu, Environment::Playground), c);
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("PK12345"), "{shown}");
        assert!(shown.contains("api.playground.klarna.com"), "{shown}");
        assert_eq!(config.transport.attempt_timeout, Duration::from_secs(10));
        assert_eq!(config.transport.connect_timeout, Duration::from_secs(3));
        assert_eq!(config.transport.default_deadline, Duration::from_secs(30));
        assert_eq!(config.transport.retry, RetryConfig::default());
        assert_eq!(config.transport.user_agent_suffix, None);
    }

    #[test]
    fn transport_settings_are_validated_once() {
        assert_eq!(TransportConfig::default().validate(), Ok(()));
        for (field, config) in [
            (
                "attempt_timeout",
                TransportConfig {
                    attempt_timeout: Duration::ZERO,
                    ..TransportConfig::default()
                },
            ),
            (
                "connect_timeout",
                TransportConfig {
                    connect_timeout: Duration::ZERO,
                    ..TransportConfig::default()
                },
            ),
            (
                "default_deadline",
                TransportConfig {
                    default_deadline: Duration::ZERO,
                    ..TransportConfig::default()
                },
            ),
        ] {
            assert_eq!(
                config.validate(),
                Err(KlarnaConfigError::ZeroTimeout(field))
            );
        }
        let bad_retry = TransportConfig {
            retry: RetryConfig {
                max_attempts: 0,
                ..RetryConfig::default()
            },
            ..TransportConfig::default()
        };
        assert!(matches!(
            bad_retry.validate(),
            Err(KlarnaConfigError::InvalidRetry(_))
        ));
    }

    #[test]
    fn rate_limit_defaults() {
        assert_eq!(TransportConfig::default().rate_limit, None);
        let live = OutboundRateLimit::klarna_default(Environment::Live);
        assert_eq!(
            (live.requests_per_second, live.burst, live.shared),
            (200, 200, None)
        );
        let playground = OutboundRateLimit::klarna_default(Environment::Playground);
        assert_eq!((playground.requests_per_second, playground.burst), (50, 50));
        let shared = OutboundRateLimit::new(50).shared_through("redis://127.0.0.1:6379", "eu-1");
        let limit = shared.shared.as_ref().map(|s| {
            (
                s.key.as_str(),
                s.redis_key(),
                s.fallback_requests_per_second,
                s.timeout,
            )
        });
        assert_eq!(
            limit,
            Some((
                "eu-1",
                "refund-gateway:klarna-quota:eu-1".to_owned(),
                12,
                Duration::from_millis(50)
            ))
        );
        assert_eq!(shared.validate(), Ok(()));
        for rate in [1, 2, 3] {
            let fallback = SharedLimit::new("redis://r", "k", rate).fallback_requests_per_second;
            assert_eq!(fallback, 1);
        }
    }

    #[test]
    fn rate_limits_are_validated_without_quoting_the_url() {
        let ok = || OutboundRateLimit::new(10).shared_through("redis://127.0.0.1:6379/2", "eu");
        let with_shared = |f: fn(&mut SharedLimit)| {
            let mut limit = ok();
            if let Some(shared) = limit.shared.as_mut() {
                f(shared);
            }
            limit
        };
        let bad = [
            OutboundRateLimit::new(0),
            OutboundRateLimit::new(1_000_001),
            OutboundRateLimit {
                burst: 0,
                ..OutboundRateLimit::new(10)
            },
            with_shared(|s| s.fallback_requests_per_second = 0),
            with_shared(|s| s.fallback_requests_per_second = 11),
            with_shared(|s| s.timeout = Duration::ZERO),
            with_shared(|s| s.key = String::new()),
            with_shared(|s| s.key = "eu live".to_owned()),
            with_shared(|s| s.key = "x".repeat(201)),
            with_shared(|s| s.redis_url = "http://user:hunter2@redis:6379".into()),
            with_shared(|s| s.redis_url = "rediss://user:hunter2@redis:6379".into()),
            with_shared(|s| s.redis_url = "not a url hunter2".into()),
        ];
        for limit in bad {
            let e = limit.validate().err();
            let shown = format!(
                "{e:?} {}",
                e.as_ref().map(ToString::to_string).unwrap_or_default()
            );
            assert!(
                matches!(e, Some(KlarnaConfigError::InvalidRateLimit(_))),
                "{limit:?}: {shown}"
            );
            assert!(!shown.contains("hunter2"), "{shown}");
            let transport = TransportConfig {
                rate_limit: Some(limit),
                ..TransportConfig::default()
            };
            assert_eq!(transport.validate().err(), e);
        }
        assert_eq!(ok().validate(), Ok(()));
        assert_eq!(OutboundRateLimit::new(1_000_000).validate(), Ok(()));
        let unix = with_shared(|s| s.redis_url = "unix:///run/redis.sock".into());
        assert_eq!(unix.validate(), Ok(()));
    }

    #[test]
    fn payments_urls_are_valid_base_urls() {
        for (env, want) in [
            (Environment::Live, "https://api-global.klarna.com"),
            (
                Environment::Playground,
                "https://api-global.test.klarna.com",
            ),
        ] {
            let url = payments_base_url(env);
            assert_eq!(url.as_str(), want);
            assert_eq!(BaseUrl::parse(want), Ok(url));
        }
    }

    #[test]
    fn path_prefixes_are_split_and_decoded() {
        let ok = |p: &str| path_prefix_segments(p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok("/v2"), ["v2"]);
        assert_eq!(ok("/v2/"), ["v2"]);
        assert_eq!(ok("/"), Vec::<String>::new());
        assert_eq!(
            ok("/v2/accounts/krn:partner:global:account:test:1"),
            ["v2", "accounts", "krn:partner:global:account:test:1"]
        );
        assert_eq!(
            ok("/v2/accounts/krn%3Apartner%3Aa%2Fb"),
            ["v2", "accounts", "krn:partner:a/b"]
        );
        for bad in [
            "",
            "v2",
            "/v2?x=1",
            "/v2#top",
            "/v2/a b",
            "/v2/\tx",
            "/v2/../admin",
            "/v2/./x",
            "/v2/%2E%2E",
            "/v2/%00",
            "/v2/%FF",
        ] {
            assert!(
                matches!(
                    path_prefix_segments(bad),
                    Err(KlarnaConfigError::InvalidPathPrefix { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn client_identities_are_checked_without_echoing_the_key() {
        let (cert, key_text) = testing::self_signed();
        let (cert, key) = (cert.into_bytes(), key_text.clone().into_bytes());
        let key_line = testing::key_line(&key_text);
        assert!(key_line.len() > 20);
        assert!(
            ClientIdentity::from_pem(cert.clone(), key.clone())
                .to_rustls()
                .is_ok()
        );
        // A combined file given as the chain carries the key where it does not belong.
        let mut both = cert.clone();
        both.extend_from_slice(&key);
        let cases = [
            (cert.clone(), Vec::new()),
            (cert.clone(), cert.clone()),
            (Vec::new(), key.clone()),
            (b"garbage".to_vec(), key.clone()),
            (both.clone(), key.clone()),
            (cert.clone(), both),
            (key.clone(), key.clone()),
            (
                cert.clone(),
                b"-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n".to_vec(),
            ),
            (
                cert.clone(),
                key_text
                    .replace("-----END PRIVATE KEY-----", "")
                    .into_bytes(),
            ),
        ];
        for (i, (chain, private_key)) in cases.into_iter().enumerate() {
            let identity = ClientIdentity::from_pem(chain, private_key);
            let shown = format!("{identity:?}");
            assert!(!shown.contains(&key_line), "{shown}");
            let e = identity.to_rustls().err();
            let text = format!(
                "{e:?} {}",
                e.as_ref().map(ToString::to_string).unwrap_or_default()
            );
            assert!(
                matches!(e, Some(KlarnaConfigError::InvalidClientIdentity(_))),
                "case {i}: {text}"
            );
            assert!(!text.contains(&key_line), "case {i}: {text}");
            assert!(!text.contains("PRIVATE KEY-----"), "case {i}: {text}");
        }
    }

    #[test]
    fn root_certificates_need_a_certificate() {
        let (ca, key) = testing::self_signed();
        let (other, _) = testing::self_signed();
        let certs = root_certificates(0, ca.as_bytes());
        assert_eq!(certs.map(|c| c.len()), Ok(1));
        let bundle = format!("{ca}{other}");
        assert_eq!(
            root_certificates(0, bundle.as_bytes()).map(|c| c.len()),
            Ok(2)
        );
        for (pem, reason) in [
            (b"garbage".to_vec(), "holds no PEM certificate"),
            (Vec::new(), "holds no PEM certificate"),
            (key.into_bytes(), "holds a private key"),
            (
                b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n".to_vec(),
                "not valid PEM",
            ),
        ] {
            assert_eq!(
                root_certificates(3, &pem).err(),
                Some(KlarnaConfigError::InvalidRootCertificate { index: 3, reason })
            );
        }
    }

    #[test]
    fn payments_config_debug_hides_secrets() {
        let mut config = PaymentsClientConfig::new(
            payments_base_url(Environment::Playground),
            "klarna_test_api_c2VjcmV0",
            "/v2",
        );
        let (cert, key) = testing::self_signed();
        let key_line = testing::key_line(&key);
        config.client_identity = Some(ClientIdentity::from_pem(cert, key.into_bytes()));
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        assert!(!shown.contains(&key_line), "{shown}");
        assert!(shown.contains("api-global.test.klarna.com"), "{shown}");
    }

    #[test]
    fn retry_defaults_and_limits() {
        let d = RetryConfig::default();
        assert_eq!(d.max_attempts, 4);
        assert_eq!(d.base_backoff, Duration::from_millis(100));
        assert_eq!(d.max_backoff, Duration::from_secs(2));
        assert_eq!(d.budget_ttl, Duration::from_secs(10));
        assert_eq!(d.budget_min_per_sec, 10);
        assert!((d.budget_retry_percent - 0.2).abs() < f32::EPSILON);
        assert_eq!(d.validate(), Ok(()));
        assert_eq!(RetryConfig::no_retries().max_attempts, 1);
        let bad = [
            RetryConfig {
                max_attempts: 0,
                ..RetryConfig::default()
            },
            RetryConfig {
                base_backoff: Duration::from_secs(3),
                ..RetryConfig::default()
            },
            RetryConfig {
                budget_ttl: Duration::from_millis(999),
                ..RetryConfig::default()
            },
            RetryConfig {
                budget_ttl: Duration::from_secs(61),
                ..RetryConfig::default()
            },
            RetryConfig {
                budget_min_per_sec: u32::MAX,
                ..RetryConfig::default()
            },
            RetryConfig {
                budget_retry_percent: -0.1,
                ..RetryConfig::default()
            },
            RetryConfig {
                budget_retry_percent: f32::NAN,
                ..RetryConfig::default()
            },
            RetryConfig {
                budget_retry_percent: 1000.5,
                ..RetryConfig::default()
            },
        ];
        for config in bad {
            assert!(
                matches!(config.validate(), Err(KlarnaConfigError::InvalidRetry(_))),
                "{config:?}"
            );
        }
    }
}

/// Throwaway certificates for tests.
#[cfg(test)]
pub(crate) mod testing {
    /// A fresh self-signed certificate and its PKCS #8 key, both PEM.
    pub(crate) fn self_signed() -> (String, String) {
        self_signed_for(&["partner.test"])
    }

    /// The same for `names` (DNS names or IP addresses): a server certificate that is also
    /// its own private CA.
    pub(crate) fn self_signed_for(names: &[&str]) -> (String, String) {
        let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(names).unwrap_or_else(|e| panic!("{e}"));
        (cert.pem(), signing_key.serialize_pem())
    }

    /// A line of the key's base64 body: what must never show up in output.
    pub(crate) fn key_line(key_pem: &str) -> String {
        let line = key_pem
            .lines()
            .find(|l| !l.starts_with("-----") && l.len() > 20)
            .unwrap_or_else(|| panic!("no key body in {} bytes", key_pem.len()));
        line.to_owned()
    }
}
