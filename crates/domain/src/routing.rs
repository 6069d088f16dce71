//! Account routing: which configured Klarna account a request goes to.
//!
//! A platform with accounts per region and environment names stores (`[[store]]`: an id, its
//! country, its account) and routes (`[[route]]`: any of a store id, a country and a currency,
//! and an account). A request goes to, the first that applies:
//! 1. the account it names (`klarna_account`);
//! 2. the account of the store it names (`store_id`);
//! 3. the account of the first route, in file order, whose every criterion matches the
//!    request's store id, that store's country and the request's currency (a route without
//!    criteria matches everything: a default, last);
//! 4. the only account of the RPC's kind.
//!
//! A store's or route's account of another kind than the RPC needs is passed over, so one
//! table serves both Order Management and partner accounts. Nothing matching is
//! INVALID_ARGUMENT on `klarna_account`. When stores are configured, a `store_id` that no
//! store and no route names is refused: a mistyped store must not fall through to a route
//! chosen by currency alone. Routing runs before the operation's fingerprint is computed, so
//! the operation records the account it used, and a resend naming the account is the same
//! operation as one routed there.

use std::collections::BTreeMap;

use crate::error::{GatewayError, Precondition, PreconditionReason};
use crate::money::{CountryCode, Currency};
use crate::outcome::KlarnaApiKind;
use crate::reference::StoreId;
use crate::validation::Violations;

/// One `[[store]]`: a store, its country and its account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    /// The merchant's id of the store.
    pub id: StoreId,
    /// Where it is; routes may match on it.
    pub country: Option<CountryCode>,
    /// Its account; `None` leaves the choice to the routes.
    pub account: Option<String>,
}

/// One `[[route]]`: criteria (all optional; every one given must match) and an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Matches a request naming this store.
    pub store_id: Option<StoreId>,
    /// Matches a request naming a store in this country.
    pub country: Option<CountryCode>,
    /// Matches a request in this currency.
    pub currency: Option<Currency>,
    /// The account it routes to.
    pub account: String,
}

impl Route {
    fn matches(
        &self,
        store: Option<&StoreId>,
        country: Option<&CountryCode>,
        currency: Option<&Currency>,
    ) -> bool {
        fn criterion<T: PartialEq>(wanted: Option<&T>, given: Option<&T>) -> bool {
            wanted.is_none_or(|w| given == Some(w))
        }
        criterion(self.store_id.as_ref(), store)
            && criterion(self.country.as_ref(), country)
            && criterion(self.currency.as_ref(), currency)
    }
}

/// What of a request routing looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteRequest<'a> {
    /// The account the request names.
    pub account: Option<&'a str>,
    /// The store the request names.
    pub store_id: Option<&'a StoreId>,
    /// The request's currency, when it has one.
    pub currency: Option<&'a Currency>,
}

/// Why routing chose an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSource {
    /// The request named it.
    Named,
    /// The store the request named has it.
    Store,
    /// The route at this index (0-based, in file order) matched.
    Route(usize),
    /// It is the only account of the RPC's kind.
    OnlyAccount,
}

impl RouteSource {
    /// In words, for logs and traces: `named`, `store`, `route[2]`, `only_account`.
    pub fn describe(self) -> String {
        match self {
            Self::Named => "named".to_owned(),
            Self::Store => "store".to_owned(),
            Self::Route(i) => format!("route[{i}]"),
            Self::OnlyAccount => "only_account".to_owned(),
        }
    }
}

/// Stores and routes that cannot be used, said with the table and index to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {problem}")]
pub struct RoutingConfigError {
    /// Where: `store[0]`, `route[3]`.
    pub at: String,
    /// What is wrong.
    pub problem: String,
}

/// The configured accounts (by name, with their kinds), stores and routes.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    accounts: BTreeMap<String, KlarnaApiKind>,
    stores: Vec<Store>,
    routes: Vec<Route>,
}

impl Routing {
    /// Routing over `accounts`; every store and route must name one of them, and a store id
    /// may appear once.
    pub fn new(
        accounts: impl IntoIterator<Item = (String, KlarnaApiKind)>,
        stores: Vec<Store>,
        routes: Vec<Route>,
    ) -> Result<Self, RoutingConfigError> {
        let accounts: BTreeMap<String, KlarnaApiKind> = accounts.into_iter().collect();
        let known = |at: String, account: &str| {
            if accounts.contains_key(account) {
                Ok(())
            } else {
                Err(RoutingConfigError {
                    at,
                    problem: format!(
                        "account {account:?} is not configured; configured: {}",
                        names(accounts.keys())
                    ),
                })
            }
        };
        for (i, store) in stores.iter().enumerate() {
            if let Some(account) = &store.account {
                known(format!("store[{i}] ({})", store.id), account)?;
            }
            if stores[..i].iter().any(|s| s.id == store.id) {
                return Err(RoutingConfigError {
                    at: format!("store[{i}]"),
                    problem: format!("store id {:?} is configured twice", store.id.as_str()),
                });
            }
        }
        for (i, route) in routes.iter().enumerate() {
            known(format!("route[{i}]"), &route.account)?;
        }
        Ok(Self {
            accounts,
            stores,
            routes,
        })
    }

    /// Only the accounts: every request names its account or there is one of its kind.
    pub fn accounts_only(accounts: impl IntoIterator<Item = (String, KlarnaApiKind)>) -> Self {
        Self {
            accounts: accounts.into_iter().collect(),
            ..Self::default()
        }
    }

    /// The configured stores.
    pub fn stores(&self) -> &[Store] {
        &self.stores
    }

    /// The configured routes, in the order they are tried.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The account `request` goes to for an RPC of kind `api`, and why (see the module docs
    /// for the precedence). An unknown store or account, or none at all, is INVALID_ARGUMENT
    /// naming the field (`store_id`, `klarna_account`); a named account of the other kind is FAILED_PRECONDITION
    /// `WRONG_ACCOUNT_KIND`.
    pub fn route<'a>(
        &'a self,
        request: RouteRequest<'_>,
        api: KlarnaApiKind,
    ) -> Result<(&'a str, RouteSource), GatewayError> {
        // An unknown store is refused even when the account is named: the store id is kept
        // with what the request does, and a mistyped one is better caught at once.
        let store = match request.store_id {
            Some(id) => self.store(id)?,
            None => None,
        };
        if let Some(name) = request.account {
            let Some((name, kind)) = self.accounts.get_key_value(name) else {
                return Err(Violations::single(
                    "klarna_account",
                    format!(
                        "unknown account {name:?}; configured: {}",
                        names(self.accounts.keys())
                    ),
                )
                .into());
            };
            if *kind != api {
                return Err(Precondition {
                    reason: PreconditionReason::WrongAccountKind,
                    subject: format!("accounts/{name}"),
                    description: format!(
                        "account {name:?} is an account of kind {}; this RPC needs one of kind {}",
                        kind.describe(),
                        api.describe()
                    ),
                }
                .into());
            }
            return Ok((name, RouteSource::Named));
        }
        let of_kind = |account: &str| self.accounts.get(account) == Some(&api);
        if let Some(account) = store.and_then(|s| s.account.as_deref())
            && of_kind(account)
        {
            return Ok((self.name(account), RouteSource::Store));
        }
        let country = store.and_then(|s| s.country.as_ref());
        if let Some((i, route)) = self.routes.iter().enumerate().find(|(_, r)| {
            of_kind(&r.account) && r.matches(request.store_id, country, request.currency)
        }) {
            return Ok((self.name(&route.account), RouteSource::Route(i)));
        }
        let mut candidates = self.accounts.iter().filter(|(_, kind)| **kind == api);
        match (candidates.next(), candidates.next()) {
            (Some((name, _)), None) => Ok((name, RouteSource::OnlyAccount)),
            (None, _) => Err(Violations::single(
                "klarna_account",
                format!(
                    "no {} account is configured; configured: {}",
                    api.describe(),
                    names(self.accounts.keys())
                ),
            )
            .into()),
            (Some(_), Some(_)) => {
                let routed = if self.stores.is_empty() && self.routes.is_empty() {
                    String::new()
                } else {
                    " and no store or route matched the request".to_owned()
                };
                Err(Violations::single(
                    "klarna_account",
                    format!(
                        "is required: the gateway has several {} accounts ({}){routed}",
                        api.describe(),
                        names(
                            self.accounts
                                .iter()
                                .filter(|(_, kind)| **kind == api)
                                .map(|(name, _)| name)
                        )
                    ),
                )
                .into())
            }
        }
    }

    /// The store `id`; an id no store and no route names is refused when stores are
    /// configured (without stores, a store id is the caller's own label).
    fn store(&self, id: &StoreId) -> Result<Option<&Store>, GatewayError> {
        if let Some(store) = self.stores.iter().find(|s| &s.id == id) {
            return Ok(Some(store));
        }
        let routed = self.routes.iter().any(|r| r.store_id.as_ref() == Some(id));
        if self.stores.is_empty() || routed {
            return Ok(None);
        }
        Err(Violations::single(
            "store_id",
            format!(
                "unknown store {:?}; configured: {}",
                id.as_str(),
                names(self.stores.iter().map(|s| s.id.as_str()))
            ),
        )
        .into())
    }

    /// The account name as held here (the routes' copy has the same text).
    fn name<'a>(&'a self, account: &str) -> &'a str {
        self.accounts
            .get_key_value(account)
            .map_or("", |(name, _)| name.as_str())
    }
}

fn names<S: AsRef<str>>(names: impl Iterator<Item = S>) -> String {
    let names: Vec<String> = names.map(|n| n.as_ref().to_owned()).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::GatewayError;

    const OM: KlarnaApiKind = KlarnaApiKind::OrderManagement;
    const PARTNER: KlarnaApiKind = KlarnaApiKind::Payments;

    fn store(id: &str, country: &str, account: Option<&str>) -> Store {
        Store {
            id: StoreId::parse(id).unwrap_or_else(|e| panic!("{e}")),
            country: Some(CountryCode::parse(country).unwrap_or_else(|e| panic!("{e}"))),
            account: account.map(str::to_owned),
        }
    }

    fn route(
        store_id: Option<&str>,
        country: Option<&str>,
        currency: Option<&str>,
        account: &str,
    ) -> Route {
        Route {
            store_id: store_id.map(|s| StoreId::parse(s).unwrap_or_else(|e| panic!("{e}"))),
            country: country.map(|c| CountryCode::parse(c).unwrap_or_else(|e| panic!("{e}"))),
            currency: currency.map(|c| Currency::parse(c).unwrap_or_else(|e| panic!("{e}"))),
            account: account.to_owned(),
        }
    }

    fn accounts() -> Vec<(String, KlarnaApiKind)> {
        [
            ("eu-live", OM),
            ("na-live", OM),
            ("oc-live", OM),
            ("partner", PARTNER),
        ]
        .into_iter()
        .map(|(n, k)| (n.to_owned(), k))
        .collect()
    }

    fn routing() -> Routing {
        Routing::new(
            accounts(),
            vec![
                store("stockholm-1", "SE", Some("eu-live")),
                store("sydney-1", "AU", None),
                store("oslo-1", "NO", Some("partner")),
            ],
            vec![
                route(Some("outlet-9"), None, None, "oc-live"),
                route(None, Some("AU"), None, "oc-live"),
                route(None, None, Some("USD"), "na-live"),
                route(None, None, Some("NOK"), "partner"),
                route(None, None, Some("NOK"), "eu-live"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn routed(
        r: &Routing,
        account: Option<&str>,
        store: Option<&str>,
        currency: Option<&str>,
        api: KlarnaApiKind,
    ) -> Result<(String, RouteSource), GatewayError> {
        let store = store.map(|s| StoreId::parse(s).unwrap_or_else(|e| panic!("{e}")));
        let currency = currency.map(|c| Currency::parse(c).unwrap_or_else(|e| panic!("{e}")));
        r.route(
            RouteRequest {
                account,
                store_id: store.as_ref(),
                currency: currency.as_ref(),
            },
            api,
        )
        .map(|(name, source)| (name.to_owned(), source))
    }

    fn field_of(error: GatewayError) -> String {
        match error {
            GatewayError::InvalidArgument(v) => v.as_slice()[0].field.clone(),
            other => panic!("not INVALID_ARGUMENT: {other:?}"),
        }
    }

    #[test]
    fn a_named_account_wins_over_store_and_route() {
        let r = routing();
        assert_eq!(
            routed(&r, Some("na-live"), Some("stockholm-1"), Some("SEK"), OM)
                .unwrap_or_else(|e| panic!("{e}")),
            ("na-live".to_owned(), RouteSource::Named)
        );
    }

    #[test]
    fn the_store_account_wins_over_routes() {
        let r = routing();
        assert_eq!(
            routed(&r, None, Some("stockholm-1"), Some("USD"), OM)
                .unwrap_or_else(|e| panic!("{e}")),
            ("eu-live".to_owned(), RouteSource::Store)
        );
    }

    #[test]
    fn routes_match_the_store_id_the_store_country_and_the_currency_first_match_wins() {
        let r = routing();
        assert_eq!(
            routed(&r, None, Some("outlet-9"), Some("USD"), OM).unwrap_or_else(|e| panic!("{e}")),
            ("oc-live".to_owned(), RouteSource::Route(0))
        );
        assert_eq!(
            routed(&r, None, Some("sydney-1"), Some("USD"), OM).unwrap_or_else(|e| panic!("{e}")),
            ("oc-live".to_owned(), RouteSource::Route(1))
        );
        assert_eq!(
            routed(&r, None, None, Some("USD"), OM).unwrap_or_else(|e| panic!("{e}")),
            ("na-live".to_owned(), RouteSource::Route(2))
        );
    }

    #[test]
    fn accounts_of_the_other_kind_are_passed_over() {
        let r = routing();
        // oslo-1's account is a partner account: an Order Management refund in NOK skips it
        // and the partner NOK route, and takes the next NOK route.
        assert_eq!(
            routed(&r, None, Some("oslo-1"), Some("NOK"), OM).unwrap_or_else(|e| panic!("{e}")),
            ("eu-live".to_owned(), RouteSource::Route(4))
        );
        assert_eq!(
            routed(&r, None, Some("oslo-1"), Some("NOK"), PARTNER)
                .unwrap_or_else(|e| panic!("{e}")),
            ("partner".to_owned(), RouteSource::Store)
        );
        assert_eq!(
            routed(&r, None, None, None, PARTNER).unwrap_or_else(|e| panic!("{e}")),
            ("partner".to_owned(), RouteSource::OnlyAccount)
        );
    }

    #[test]
    fn nothing_matching_among_several_accounts_names_klarna_account() {
        let r = routing();
        let error = routed(&r, None, None, Some("SEK"), OM)
            .err()
            .unwrap_or_else(|| panic!("routed"));
        assert!(
            error.to_string().contains("no store or route matched"),
            "{error}"
        );
        assert_eq!(field_of(error), "klarna_account");
        // A route's criterion that the request cannot meet (no currency) does not match.
        assert_eq!(
            field_of(
                routed(&r, None, None, None, OM)
                    .err()
                    .unwrap_or_else(|| panic!("routed"))
            ),
            "klarna_account"
        );
    }

    #[test]
    fn an_unknown_store_is_refused_when_stores_are_configured() {
        let r = routing();
        assert_eq!(
            field_of(
                routed(&r, None, Some("stockholm-2"), Some("USD"), OM)
                    .err()
                    .unwrap_or_else(|| panic!("routed"))
            ),
            "store_id"
        );
        // Without stores, a store id is a label: it routes by the other criteria.
        let bare = Routing::new(
            accounts(),
            vec![],
            vec![route(None, None, Some("USD"), "na-live")],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            routed(&bare, None, Some("anything"), Some("USD"), OM)
                .unwrap_or_else(|e| panic!("{e}"))
                .0,
            "na-live"
        );
    }

    #[test]
    fn a_named_account_must_exist_and_be_of_the_rpcs_kind() {
        let r = routing();
        assert_eq!(
            field_of(
                routed(&r, Some("mars"), None, None, OM)
                    .err()
                    .unwrap_or_else(|| panic!("routed"))
            ),
            "klarna_account"
        );
        match routed(&r, Some("partner"), None, None, OM)
            .err()
            .unwrap_or_else(|| panic!("routed"))
        {
            GatewayError::Precondition(p) => {
                assert_eq!(p.reason, PreconditionReason::WrongAccountKind)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_configuration_is_checked() {
        let unknown = Routing::new(
            accounts(),
            vec![],
            vec![route(None, None, Some("SEK"), "eu-test")],
        )
        .err()
        .unwrap_or_else(|| panic!("routed"));
        assert_eq!(unknown.at, "route[0]");
        assert!(unknown.problem.contains("eu-test"), "{unknown}");
        let twice = Routing::new(
            accounts(),
            vec![
                store("a", "SE", Some("eu-live")),
                store("a", "NO", Some("eu-live")),
            ],
            vec![],
        )
        .err()
        .unwrap_or_else(|| panic!("routed"));
        assert_eq!(twice.at, "store[1]");
    }
}
