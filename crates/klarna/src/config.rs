//! Where and as whom the adapter talks to Klarna: region, environment, base URL, credentials,
//! timeouts and resending ([`RetryConfig`]). Everything is checked once, when the client is built, so a bad setting stops
//! the gateway at start-up rather than at its first refund.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;
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

/// A checked Klarna base URL: `https://` for any host; plain `http://` only for a loopback
/// host (`127.0.0.0/8`, `::1`, `localhost`: a local simulator), since Basic credentials would
/// otherwise cross the network in clear. No user info (credentials live in
/// [`KlarnaCredentials`], and a URL ends up in error messages), no query, no fragment. A path
/// prefix is kept; the trailing slash is normalised away in [`BaseUrl::as_str`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BaseUrl(Url);

impl BaseUrl {
    /// Checks `s` against the rules above.
    pub fn parse(s: &str) -> Result<Self, KlarnaConfigError> {
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
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&host) => {}
            "http" => {
                return Err(invalid(
                    "must use https (plain http is allowed only for a loopback host)",
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

/// Klarna API credentials for HTTP Basic authentication: the API username and password of a
/// merchant account. Neither half is ever printed: Klarna also accepts an API key as the
/// username, which makes the username a secret too.
#[derive(Clone)]
pub struct KlarnaCredentials {
    /// API username (or API key).
    pub username: String,
    /// API password.
    pub password: SecretString,
}

impl KlarnaCredentials {
    /// Credentials from a username and password.
    pub fn new(username: impl Into<String>, password: impl Into<SecretString>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }
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
/// call of one [`crate::KlarnaClient`], i.e. per Klarna account.
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

/// Everything [`crate::KlarnaClient::new`] needs for one Klarna merchant account.
#[derive(Debug, Clone)]
pub struct KlarnaClientConfig {
    /// Where Klarna is: [`regional_base_url`], or a simulator's loopback URL.
    pub base_url: BaseUrl,
    /// Basic credentials of the merchant account.
    pub credentials: KlarnaCredentials,
    /// Limit on one attempt, from sending the request to reading the whole answer; an attempt
    /// that runs out ends as [`refund_gateway_domain::KlarnaError::NoAnswer`]. Default 10 s.
    /// Keep it above `connect_timeout`, so that a slow connect is reported as never sent.
    pub attempt_timeout: Duration,
    /// Limit on establishing a connection; running out means the request was never sent.
    /// Default 3 s.
    pub connect_timeout: Duration,
    /// Appended to the `User-Agent` after a space, e.g. `refund-gateway/1.2.0 (eu-live)`.
    pub user_agent_suffix: Option<String>,
    /// When and how often a call is resent. Default [`RetryConfig::default`].
    pub retry: RetryConfig,
    /// Time a whole call may take, resends and waits included, when the caller set no
    /// deadline with [`crate::with_deadline`]. Default 30 s.
    pub default_deadline: Duration,
}

impl KlarnaClientConfig {
    /// A configuration with the default timeouts, deadline and retry settings, and no
    /// `User-Agent` suffix.
    pub fn new(base_url: BaseUrl, credentials: KlarnaCredentials) -> Self {
        Self {
            base_url,
            credentials,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            user_agent_suffix: None,
            retry: RetryConfig::default(),
            default_deadline: DEFAULT_DEADLINE,
        }
    }
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
    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
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
        assert_eq!(config.attempt_timeout, Duration::from_secs(10));
        assert_eq!(config.connect_timeout, Duration::from_secs(3));
        assert_eq!(config.default_deadline, Duration::from_secs(30));
        assert_eq!(config.retry, RetryConfig::default());
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
