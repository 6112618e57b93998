//! Conversions between the engine's values and their columns, and the database's clock.

use std::time::Duration;

use saga_core::store::StoreError;
use saga_core::OperationId;

use crate::error::corrupt;

/// The database's clock in Unix milliseconds: every lease rule compares against it, never the
/// client's clock.
pub(crate) const NOW_MS: &str = "(floor(extract(epoch FROM clock_timestamp()) * 1000))::bigint";

/// An id as its column value: 16 bytes, big-endian, so that `bytea` order is id order.
pub(crate) fn id_bytes(id: OperationId) -> Vec<u8> {
    id.as_u128().to_be_bytes().to_vec()
}

/// An id column's value, or a [`StoreError::Corrupt`] naming `table` and the bytes.
pub(crate) fn parse_id(bytes: &[u8], table: &str) -> Result<OperationId, StoreError> {
    let array: [u8; 16] = bytes.try_into().map_err(|_| {
        corrupt(
            format!("table {table}, row with id {}", hex(bytes)),
            format!("an id is 16 bytes, this one {}", bytes.len()),
        )
    })?;
    Ok(OperationId::from_u128(u128::from_be_bytes(array)))
}

/// `bytes` as `\x..` hex, the way psql shows a `bytea` (cut after 32 bytes).
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::from("\\x");
    for b in bytes.iter().take(32) {
        out.push_str(&format!("{b:02x}"));
    }
    if bytes.len() > 32 {
        out.push_str("...");
    }
    out
}

/// A `u64` (a time, an epoch, a sequence number) as a `bigint`, saturating at `i64::MAX`.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A `bigint` column read back as a `u64`; a negative value is corrupt.
pub(crate) fn to_u64(value: i64, place: impl FnOnce() -> String) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| corrupt(place(), format!("negative value {value}")))
}

/// A lease time to live in milliseconds, bounded so that the database's clock plus it cannot
/// overflow a `bigint`.
pub(crate) fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).min(i64::MAX / 4)
}

/// A text column kept as `bytea` (see the schema), read back.
pub(crate) fn text(bytes: Vec<u8>, place: impl FnOnce() -> String) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|e| corrupt(place(), format!("not UTF-8: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_bad_ones_say_where() {
        let id = OperationId::new();
        assert_eq!(parse_id(&id_bytes(id), "operations").expect("parses"), id);
        let e = parse_id(&[1, 2, 3], "operations").expect_err("short");
        assert!(e.to_string().contains("operations") && e.to_string().contains("\\x010203"));
        assert_eq!(to_i64(u64::MAX), i64::MAX);
        assert!(to_u64(-1, || "x".into()).is_err());
        assert_eq!(ttl_ms(Duration::MAX), i64::MAX / 4);
    }
}
