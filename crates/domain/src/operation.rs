//! Operation identity. An operation is one caller's request under one idempotency key; its id
//! is derived, not stored, so every resend of a request computes the same id and therefore
//! reaches Klarna under the same `Klarna-Idempotency-Key`.

use std::fmt;

use uuid::Uuid;

use crate::ids::IdempotencyKey;

/// The namespace of the gateway's UUIDv5 operation ids. Changing it would change every
/// operation id and Klarna key: never change it.
pub const OPERATION_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a57_3c1e_4e0b_9d42_8a7b_51f0_c3e9);

/// Who called: the authenticated calling service, or `anonymous` before authentication exists.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller(String);

impl Caller {
    /// The caller of an unauthenticated gateway.
    pub fn anonymous() -> Self {
        Self("anonymous".to_owned())
    }

    /// A named caller (from authentication).
    pub fn named(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The caller's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kind of Klarna resource an operation acts on. Operations on one resource (account,
/// kind, id) are serialized, so state rules read and the mutation sent see the same state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    /// An Order Management order.
    Order,
    /// A payment transaction of the partner Payments API.
    Transaction,
}

impl ResourceKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Transaction => "transaction",
        }
    }

    /// The kind stored as `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Order, Self::Transaction]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// The mutating RPCs; part of an operation's identity, so the same key used for two different
/// RPCs names two operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    /// `RefundOrder`
    RefundOrder,
    /// `ReleaseAuthorization`
    ReleaseAuthorization,
    /// `ExtendDueDate`
    ExtendDueDate,
    /// `RefundCapture` (partner Payments API)
    RefundCapture,
    /// `RefundTransaction` (partner Payments API)
    RefundTransaction,
}

impl Rpc {
    /// The RPC's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RefundOrder => "RefundOrder",
            Self::ReleaseAuthorization => "ReleaseAuthorization",
            Self::ExtendDueDate => "ExtendDueDate",
            Self::RefundCapture => "RefundCapture",
            Self::RefundTransaction => "RefundTransaction",
        }
    }

    /// The Klarna API the RPC's calls go to.
    pub fn api(self) -> crate::KlarnaApiKind {
        match self {
            Self::RefundCapture | Self::RefundTransaction => crate::KlarnaApiKind::Payments,
            Self::RefundOrder | Self::ReleaseAuthorization | Self::ExtendDueDate => {
                crate::KlarnaApiKind::OrderManagement
            }
        }
    }
}

/// The gateway's id of an operation, and the `Klarna-Idempotency-Key` it is sent under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OperationId(Uuid);

impl OperationId {
    /// UUIDv5 of (caller, rpc, key). The parts are length-prefixed so no two different
    /// triples can produce the same name (`"ab" + "c"` vs `"a" + "bc"`).
    pub fn derive(caller: &Caller, rpc: Rpc, key: &IdempotencyKey) -> Self {
        use std::io::Write as _;
        let mut name = Vec::with_capacity(caller.0.len() + key.as_str().len() + 32);
        for part in [caller.as_str(), rpc.as_str(), key.as_str()] {
            // Writing into a `Vec` cannot fail; the length in decimal, as `to_string` wrote
            // it (ids already stored depend on these bytes), without a string per part.
            let _ = write!(name, "{}:", part.len());
            name.extend_from_slice(part.as_bytes());
        }
        Self(Uuid::new_v5(&OPERATION_NAMESPACE, &name))
    }

    /// The UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// Every mutating RPC (to read one back from its name).
pub const RPCS: [Rpc; 5] = [
    Rpc::RefundOrder,
    Rpc::ReleaseAuthorization,
    Rpc::ExtendDueDate,
    Rpc::RefundCapture,
    Rpc::RefundTransaction,
];

// Fails to compile when `Rpc` gains a variant, as a reminder to add it to `RPCS`.
#[allow(dead_code)]
fn rpcs_is_exhaustive(rpc: Rpc) {
    match rpc {
        Rpc::RefundOrder
        | Rpc::ReleaseAuthorization
        | Rpc::ExtendDueDate
        | Rpc::RefundCapture
        | Rpc::RefundTransaction => {}
    }
}

impl Rpc {
    /// The RPC of API name `name` (`RefundOrder`, …).
    pub fn from_name(name: &str) -> Option<Self> {
        RPCS.into_iter().find(|r| r.as_str() == name)
    }
}

/// How a request names an operation to read: by its id, or by what it was made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationName {
    /// The operation id, lower-case hyphenated, as the gateway answers it.
    Id(String),
    /// The caller, RPC and idempotency key it was made with.
    Made {
        /// Who made it.
        caller: Caller,
        /// With which RPC.
        rpc: Rpc,
        /// Under which key.
        key: IdempotencyKey,
    },
}

impl OperationName {
    /// Either `operation_id`, or `rpc` with `idempotency_key` (and `caller`, else
    /// `calling`); empty means not given. Violations name the fields.
    pub fn parse(
        operation_id: &str,
        rpc: &str,
        idempotency_key: &str,
        caller: &str,
        calling: &Caller,
    ) -> Result<Self, crate::Violations> {
        let mut v = crate::Violations::new();
        let by_key = !(rpc.is_empty() && idempotency_key.is_empty() && caller.is_empty());
        if !operation_id.is_empty() {
            if by_key {
                v.push(
                    "rpc",
                    "name the operation once: by operation_id, or by rpc and idempotency_key",
                );
            }
            return match Uuid::parse_str(operation_id) {
                Ok(id) if v.is_empty() => Ok(Self::Id(id.hyphenated().to_string())),
                Ok(_) => Err(v),
                Err(_) => {
                    v.push("operation_id", "must be a UUID");
                    Err(v)
                }
            };
        }
        if !by_key {
            return Err(crate::Violations::single(
                "operation_id",
                "is required (or rpc and idempotency_key)",
            ));
        }
        let rpc = match Rpc::from_name(rpc) {
            Some(rpc) => Some(rpc),
            None => {
                let names: Vec<&str> = RPCS.iter().map(|r| r.as_str()).collect();
                v.push("rpc", format!("must be one of {}", names.join(", ")));
                None
            }
        };
        let key = v.check("idempotency_key", IdempotencyKey::parse(idempotency_key));
        let caller = if caller.is_empty() {
            calling.clone()
        } else {
            Caller::named(caller)
        };
        match (rpc, key) {
            (Some(rpc), Some(key)) if v.is_empty() => Ok(Self::Made { caller, rpc, key }),
            _ => Err(v),
        }
    }

    /// The operation's id, lower-case hyphenated.
    pub fn id_text(&self) -> String {
        match self {
            Self::Id(id) => id.clone(),
            Self::Made { caller, rpc, key } => OperationId::derive(caller, *rpc, key).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(s: &str) -> IdempotencyKey {
        IdempotencyKey::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The operation id is the Klarna idempotency key: if its derivation ever changed, a
    /// retry that spans a deploy would reach Klarna under a new key and refund twice. These
    /// ids were computed once and must never change.
    #[test]
    fn an_operation_is_named_by_id_or_by_what_it_was_made_with() {
        let me = Caller::named("pos");
        let id = OperationId::derive(&me, Rpc::RefundOrder, &key("k-1")).to_string();
        let by_id = OperationName::parse(&id.to_uppercase(), "", "", "", &me);
        assert_eq!(by_id.map(|n| n.id_text()).ok(), Some(id.clone()));
        let by_key = OperationName::parse("", "RefundOrder", "k-1", "", &me);
        assert_eq!(by_key.map(|n| n.id_text()).ok(), Some(id));
        let other = OperationName::parse("", "RefundOrder", "k-1", "till", &me);
        assert!(
            matches!(other, Ok(OperationName::Made { caller, .. }) if caller.as_str() == "till")
        );
        let fields = |r: Result<OperationName, crate::Violations>| -> Vec<String> {
            r.err()
                .unwrap_or_default()
                .as_slice()
                .iter()
                .map(|v| v.field.clone())
                .collect()
        };
        assert_eq!(
            fields(OperationName::parse("", "", "", "", &me)),
            ["operation_id"]
        );
        assert_eq!(
            fields(OperationName::parse("nope", "", "", "", &me)),
            ["operation_id"]
        );
        assert_eq!(
            fields(OperationName::parse("", "Refund", "", "", &me)),
            ["rpc", "idempotency_key"]
        );
        assert_eq!(
            fields(OperationName::parse(
                &Uuid::nil().to_string(),
                "RefundOrder",
                "k",
                "",
                &me
            )),
            ["rpc"]
        );
    }

    #[test]
    fn derivation_is_frozen() {
        let cases = [
            (
                "anonymous",
                Rpc::RefundOrder,
                "demo-refund-1",
                "23d0ebe8-ba7a-5662-aa89-b71533be519b",
            ),
            (
                "anonymous",
                Rpc::ReleaseAuthorization,
                "demo-release-1",
                "a7e43664-7f8e-52b0-b9ea-bc61d3123dc7",
            ),
            (
                "anonymous",
                Rpc::ExtendDueDate,
                "demo-extend-1",
                "52616bf3-c848-5cbb-bedd-4c72360cb55b",
            ),
            (
                "pos",
                Rpc::RefundOrder,
                "9f1c-ümlaut-🙂",
                "01d6dcf8-2caf-5705-9e4d-8e41904c13c6",
            ),
            (
                "web-returns",
                Rpc::RefundOrder,
                "a",
                "d5197738-a772-57ec-90ce-1861b292cf64",
            ),
        ];
        for (caller, rpc, k, expected) in cases {
            let id = OperationId::derive(&Caller::named(caller.to_owned()), rpc, &key(k));
            assert_eq!(id.to_string(), expected, "({caller}, {rpc:?}, {k})");
        }
    }

    #[test]
    fn deterministic_and_scoped() {
        let a = OperationId::derive(&Caller::anonymous(), Rpc::RefundOrder, &key("k1"));
        assert_eq!(
            a,
            OperationId::derive(&Caller::anonymous(), Rpc::RefundOrder, &key("k1"))
        );
        assert_ne!(
            a,
            OperationId::derive(&Caller::anonymous(), Rpc::RefundOrder, &key("k2"))
        );
        assert_ne!(
            a,
            OperationId::derive(&Caller::named("pos"), Rpc::RefundOrder, &key("k1"))
        );
        assert_ne!(
            a,
            OperationId::derive(&Caller::anonymous(), Rpc::ExtendDueDate, &key("k1"))
        );
        assert_eq!(a.as_uuid().get_version_num(), 5);
    }

    proptest! {
        #[test]
        fn no_ambiguity_between_caller_and_key(c1 in "[a-z]{1,5}", c2 in "[a-z]{1,5}", k1 in "[a-z]{1,5}", k2 in "[a-z]{1,5}") {
            let a = OperationId::derive(&Caller::named(c1.clone()), Rpc::RefundOrder, &key(&k1));
            let b = OperationId::derive(&Caller::named(c2.clone()), Rpc::RefundOrder, &key(&k2));
            prop_assert_eq!(a == b, c1 == c2 && k1 == k2);
        }
    }
}
