//! Pages of [`OperationStore::list`](refund_gateway_domain::OperationStore::list): sizes and
//! keyset page tokens.
//!
//! A token names the last operation of the previous page by its position in list order,
//! `(created_at, operation_id)`, so the next page is "everything strictly after it": stable
//! when operations are added or removed meanwhile, and cheap at any depth (an index range, no
//! OFFSET). It also carries a hash of the filter, so a token cannot silently be used with
//! another filter. Encoding: hex of `version (1) | created_at µs (8, big-endian) | operation
//! id (16) | filter hash (8)`.

use refund_gateway_domain::{OperationFilter, StoreError};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::row::{OperationRow, micros};

/// Page size when the caller asks for 0.
pub(crate) const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page.
pub(crate) const MAX_PAGE_SIZE: u32 = 500;

const TOKEN_VERSION: u8 = 1;
const TOKEN_BYTES: usize = 1 + 8 + 16 + 8;

/// `requested` within `1..=MAX_PAGE_SIZE`, 0 meaning the default.
pub(crate) fn page_size(requested: u32) -> u32 {
    match requested {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// Where the next page starts: strictly after this position, in `(created_at DESC,
/// operation_id DESC)` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// `created_at` of the last operation shown, in microseconds.
    pub(crate) created_at: i64,
    /// Its id, as stored (lower-case hyphenated UUID).
    pub(crate) operation_id: String,
}

fn filter_hash(filter: &OperationFilter) -> [u8; 8] {
    let mut hasher = Sha256::new();
    // Each field tagged and length-prefixed, so no two filters hash the same input.
    let strings = [&filter.order_id, &filter.caller, &filter.idempotency_key];
    for field in strings {
        match field {
            Some(value) => {
                hasher.update([1]);
                hasher.update((value.len() as u64).to_be_bytes());
                hasher.update(value.as_bytes());
            }
            None => hasher.update([0]),
        }
    }
    match filter.state {
        Some(state) => {
            hasher.update([1]);
            hasher.update(state.as_str().as_bytes());
            hasher.update([0]);
        }
        None => hasher.update([0]),
    }
    for time in [filter.created_from, filter.created_to] {
        match time {
            Some(t) => {
                hasher.update([1]);
                hasher.update(micros(t).to_be_bytes());
            }
            None => hasher.update([0]),
        }
    }
    // Hashed after the rest and only when set, so the tokens of filters without it, issued
    // before the field existed, stay valid; the fields above delimit themselves, so the
    // suffix cannot make two filters hash the same input.
    if let Some(transaction) = &filter.payment_transaction_id {
        hasher.update([2]);
        hasher.update((transaction.len() as u64).to_be_bytes());
        hasher.update(transaction.as_bytes());
    }
    if let Some(id) = &filter.operation_id {
        hasher.update([3]);
        hasher.update((id.len() as u64).to_be_bytes());
        hasher.update(id.as_bytes());
    }
    let digest = hasher.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// Cuts `rows`, fetched with one row more than `size`, to the page, and returns the token of
/// the next page if that extra row was there.
pub(crate) fn next_page(
    rows: &mut Vec<OperationRow>,
    size: u32,
    filter: &OperationFilter,
) -> Result<Option<String>, StoreError> {
    let size = size as usize;
    if rows.len() <= size {
        return Ok(None);
    }
    rows.truncate(size);
    rows.last()
        .map(|last| {
            let cursor = Cursor {
                created_at: last.created_at_micros(),
                operation_id: last.id().to_owned(),
            };
            encode(&cursor, filter)
        })
        .transpose()
}

/// The token of the page after `cursor` under `filter`. Fails only on a cursor this store
/// did not produce (an id that is not a UUID).
pub(crate) fn encode(cursor: &Cursor, filter: &OperationFilter) -> Result<String, StoreError> {
    let id = Uuid::try_parse(&cursor.operation_id)
        .map_err(|_| StoreError::Corrupt(format!("bad operation id {:?}", cursor.operation_id)))?;
    let mut bytes = Vec::with_capacity(TOKEN_BYTES);
    bytes.push(TOKEN_VERSION);
    bytes.extend_from_slice(&cursor.created_at.to_be_bytes());
    bytes.extend_from_slice(id.as_bytes());
    bytes.extend_from_slice(&filter_hash(filter));
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The cursor in `token`; [`StoreError::InvalidPageToken`] unless this store issued it for
/// this same `filter`.
pub(crate) fn decode(token: &str, filter: &OperationFilter) -> Result<Cursor, StoreError> {
    if token.len() != TOKEN_BYTES * 2 || !token.is_ascii() {
        return Err(StoreError::InvalidPageToken);
    }
    let bytes = (0..TOKEN_BYTES)
        .map(|i| u8::from_str_radix(&token[i * 2..i * 2 + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| StoreError::InvalidPageToken)?;
    let (version, rest) = bytes.split_at(1);
    let (created_at, rest) = rest.split_at(8);
    let (id, hash) = rest.split_at(16);
    if version != [TOKEN_VERSION] || hash != filter_hash(filter) {
        return Err(StoreError::InvalidPageToken);
    }
    let created_at = <[u8; 8]>::try_from(created_at).map_err(|_| StoreError::InvalidPageToken)?;
    let id = Uuid::from_slice(id).map_err(|_| StoreError::InvalidPageToken)?;
    Ok(Cursor {
        created_at: i64::from_be_bytes(created_at),
        operation_id: id.hyphenated().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use refund_gateway_domain::OperationState;

    #[test]
    fn sizes() {
        assert_eq!(page_size(0), 50);
        assert_eq!(page_size(1), 1);
        assert_eq!(page_size(500), 500);
        assert_eq!(page_size(501), 500);
    }

    #[test]
    fn filters_without_a_transaction_hash_as_before_it_existed() {
        // The input before `payment_transaction_id`: six absent fields, one byte each.
        let before: [u8; 32] = Sha256::digest([0u8; 6]).into();
        assert_eq!(filter_hash(&OperationFilter::default())[..], before[..8]);
    }

    #[test]
    fn tokens_round_trip_and_bind_to_the_filter() {
        let cursor = Cursor {
            created_at: -5,
            operation_id: "6f1c2a57-3c1e-4e0b-9d42-8a7b51f0c3e9".to_owned(),
        };
        let filter = OperationFilter {
            state: Some(OperationState::Pending),
            ..OperationFilter::default()
        };
        let token = encode(&cursor, &filter).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decode(&token, &filter).ok(), Some(cursor));
        assert!(matches!(
            decode(&token, &OperationFilter::default()),
            Err(StoreError::InvalidPageToken)
        ));
        for bad in [
            "",
            "zz",
            &token[1..],
            &format!("{token}00"),
            &token.replace('0', "g"),
        ] {
            assert!(
                matches!(decode(bad, &filter), Err(StoreError::InvalidPageToken)),
                "{bad}"
            );
        }
        let by_transaction = OperationFilter {
            payment_transaction_id: Some("tx-1".to_owned()),
            ..filter.clone()
        };
        assert!(matches!(
            decode(&token, &by_transaction),
            Err(StoreError::InvalidPageToken)
        ));
        let multibyte = "é".repeat(TOKEN_BYTES);
        assert!(matches!(
            decode(&multibyte, &filter),
            Err(StoreError::InvalidPageToken)
        ));
    }
}
