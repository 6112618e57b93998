//! The trees of the store and the layout of their keys.
//!
//! Every integer is big-endian so that sled's byte order is the numeric order.

use saga_core::store::StoreError;
use saga_core::OperationId;

/// Records: `id (16) ++ seq (8)` → [`saga_core::store::encode`]d record (version byte ++
/// postcard ++ CRC32C of the bytes before it; the record names its Operation and number, which
/// reading compares with the key).
pub(crate) const RECORDS: &str = "records";
/// Unfinished Operations: `id (16)` → CRC32C of the key ([`crate::codec::index_value`]; empty
/// in a store written before format 3).
pub(crate) const UNFINISHED: &str = "unfinished";
/// Environment index: `len(env) (8) ++ env ++ created ms (8) ++ id (16)` → CRC32C of the key
/// (or empty, before format 3).
pub(crate) const BY_ENVIRONMENT: &str = "by_environment";
/// Leases: `id (16)` → version byte ++ postcard lease ++ CRC32C of the key and the bytes
/// before it (the lease does not name its Operation: the key does).
pub(crate) const LEASES: &str = "leases";
/// Log lines: `id (16) ++ seq (8)` → version byte ++ postcard line ++ CRC32C of the bytes
/// before it (the line names its Operation and number, which reading compares with the key).
pub(crate) const LOGS: &str = "logs";
/// Log lines by time, for purging: `at ms (8) ++ id (16) ++ seq (8)` → CRC32C of the key (or
/// empty, before format 3).
pub(crate) const LOGS_BY_TIME: &str = "logs_by_time";
/// Resource queues: `len(kind) (8) ++ kind ++ len(name) (8) ++ name ++ id (16)` → CRC32C of
/// the key (or empty, before format 3): the unfinished Operations of each resource, in id
/// (creation) order.
pub(crate) const BY_RESOURCE: &str = "by_resource";
/// Pending cancel requests: `id (16)` → version byte ++ postcard request ++ CRC32C of the key
/// and the bytes before it.
pub(crate) const CANCELS: &str = "cancels";
/// Store metadata: [`META_LAYOUT`] and [`META_RECORD_FORMAT`] → one version byte each, without
/// a checksum: an older release must read the byte to refuse the store by name, and a damaged
/// byte either refuses the store or names an older version, which opening writes again.
pub(crate) const META: &str = "meta";

/// The meta key holding the key layout version.
pub(crate) const META_LAYOUT: &[u8] = b"layout";
/// The meta key holding the newest record format version written to the store.
pub(crate) const META_RECORD_FORMAT: &[u8] = b"record_format";
/// In [`META`]: the write-ahead log's LSN up to which sled's files hold every change, written
/// by each checkpoint before sled's flush (8 bytes LE, then their CRC32C, 4 bytes LE).
pub(crate) const META_CHECKPOINT_LSN: &[u8] = b"checkpoint_lsn";

/// The key of one Operation: its id, 16 bytes big-endian.
pub(crate) fn operation_key(id: OperationId) -> [u8; 16] {
    id.as_u128().to_be_bytes()
}

/// The key of an Operation's record or log line number `seq`.
pub(crate) fn seq_key(id: OperationId, seq: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(&operation_key(id));
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The prefix of one resource's queue keys: each part length-prefixed, so that no resource's keys
/// are a prefix of another's.
pub(crate) fn resource_prefix(resource: &saga_core::Resource) -> Vec<u8> {
    let (kind, name) = (resource.kind.as_bytes(), resource.name.as_bytes());
    let mut key = Vec::with_capacity(16 + kind.len() + name.len() + 16);
    key.extend_from_slice(&(kind.len() as u64).to_be_bytes());
    key.extend_from_slice(kind);
    key.extend_from_slice(&(name.len() as u64).to_be_bytes());
    key.extend_from_slice(name);
    key
}

/// The queue key of Operation `id` of `resource`.
pub(crate) fn resource_key(resource: &saga_core::Resource, id: OperationId) -> Vec<u8> {
    let mut key = resource_prefix(resource);
    key.extend_from_slice(&operation_key(id));
    key
}

/// The prefix of one environment's index keys: its length, then its bytes, so that no
/// environment's keys are a prefix of another's.
pub(crate) fn environment_prefix(environment: &str) -> Vec<u8> {
    let bytes = environment.as_bytes();
    let mut key = Vec::with_capacity(8 + bytes.len() + 24);
    key.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    key.extend_from_slice(bytes);
    key
}

/// The index key of an Operation of `environment` created at `created_ms`.
pub(crate) fn environment_key(environment: &str, created_ms: u64, id: OperationId) -> Vec<u8> {
    let mut key = environment_bound(environment, created_ms);
    key.extend_from_slice(&operation_key(id));
    key
}

/// The smallest index key of `environment` at `ms`, as a range bound.
pub(crate) fn environment_bound(environment: &str, ms: u64) -> Vec<u8> {
    let mut key = environment_prefix(environment);
    key.extend_from_slice(&ms.to_be_bytes());
    key
}

/// The log-by-time key of line `seq` of Operation `id`, written at `at_ms`.
pub(crate) fn time_key(at_ms: u64, id: OperationId, seq: u64) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&at_ms.to_be_bytes());
    key[8..].copy_from_slice(&seq_key(id, seq));
    key
}

/// A key as text: `0x` and its bytes in hexadecimal.
pub(crate) fn hex(key: &[u8]) -> String {
    let mut text = String::with_capacity(2 + 2 * key.len());
    text.push_str("0x");
    for byte in key {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// Where an entry is, for an error: what it is (naming its Operation), its tree and its key.
pub(crate) fn place(tree: &str, key: &[u8], what: &str) -> String {
    format!("{what} (tree {tree}, key {})", hex(key))
}

/// The error of a key of `tree` of the wrong length (`expected` says what it should be).
pub(crate) fn corrupt_key(tree: &str, key: &[u8], expected: &str) -> StoreError {
    StoreError::Corrupt {
        place: format!("tree {tree}, key {}", hex(key)),
        problem: format!("key of {} bytes, expected {expected}", key.len()),
    }
}

/// The Operation id of a 16-byte key of `tree`.
pub(crate) fn parse_operation(tree: &str, key: &[u8]) -> Result<OperationId, StoreError> {
    let bytes: [u8; 16] = key.try_into().map_err(|_| corrupt_key(tree, key, "16"))?;
    Ok(OperationId::from_u128(u128::from_be_bytes(bytes)))
}

/// The id and sequence number of a 24-byte key of `tree`.
pub(crate) fn parse_seq_key(tree: &str, key: &[u8]) -> Result<(OperationId, u64), StoreError> {
    if key.len() != 24 {
        return Err(corrupt_key(tree, key, "24"));
    }
    let id = parse_operation(tree, &key[..16])?;
    let seq: [u8; 8] = key[16..].try_into().map_err(|_| corrupt_key(tree, key, "24"))?;
    Ok((id, u64::from_be_bytes(seq)))
}

/// The id at the end of an environment index key.
pub(crate) fn parse_environment_key(key: &[u8]) -> Result<OperationId, StoreError> {
    match key.len().checked_sub(16) {
        Some(start) if start >= 16 => parse_operation(BY_ENVIRONMENT, &key[start..]),
        _ => Err(corrupt_key(BY_ENVIRONMENT, key, "at least 32")),
    }
}

/// The environment, creation time and id of an environment index key, checked against the
/// layout (the length prefix, then the name, 8 bytes of time and 16 of id).
pub(crate) fn parse_environment_entry(
    key: &[u8],
) -> Result<(String, u64, OperationId), StoreError> {
    let Some((len, rest)) = key.split_first_chunk::<8>() else {
        return Err(corrupt_key(BY_ENVIRONMENT, key, "at least 32"));
    };
    let len = u64::from_be_bytes(*len);
    let name_len = usize::try_from(len).ok().filter(|n| rest.len().checked_sub(24) == Some(*n));
    let Some(name_len) = name_len else {
        return Err(corrupt_key(
            BY_ENVIRONMENT,
            key,
            &format!("8 + {len} + 24 (its length prefix)"),
        ));
    };
    let (name, rest) = rest.split_at(name_len);
    let environment = std::str::from_utf8(name).map_err(|e| StoreError::Corrupt {
        place: format!("tree {BY_ENVIRONMENT}, key {}", hex(key)),
        problem: format!("the environment name is not UTF-8: {e}"),
    })?;
    let (ms, id) = rest.split_at(8);
    let ms = u64::from_be_bytes(ms.try_into().map_err(|_| corrupt_key(BY_ENVIRONMENT, key, "8"))?);
    Ok((environment.to_owned(), ms, parse_operation(BY_ENVIRONMENT, id)?))
}

/// The id and sequence number of a log-by-time key.
pub(crate) fn parse_time_key(key: &[u8]) -> Result<(OperationId, u64), StoreError> {
    if key.len() != 32 {
        return Err(corrupt_key(LOGS_BY_TIME, key, "32"));
    }
    parse_seq_key(LOGS_BY_TIME, &key[8..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_keys_sort_by_id_then_seq() {
        let a = OperationId::from_u128(1);
        let b = OperationId::from_u128(2);
        assert!(seq_key(a, 255) < seq_key(a, 256));
        assert!(seq_key(a, u64::MAX) < seq_key(b, 0));
        assert_eq!(parse_seq_key(RECORDS, &seq_key(b, 9)).expect("parses"), (b, 9));
        assert!(parse_seq_key(RECORDS, &[1, 2, 3]).is_err());
    }

    #[test]
    fn environments_never_collide() {
        let id = OperationId::from_u128(7);
        let plain = environment_key("a", 5, id);
        let longer = environment_key("a\0\0\0\0\0\0\0", 5, id);
        assert!(!longer.starts_with(&environment_prefix("a")));
        assert!(!plain.starts_with(&environment_prefix("a\0\0\0\0\0\0\0")));
        assert_eq!(parse_environment_key(&plain).expect("parses"), id);
        assert!(parse_environment_key(&[0; 20]).is_err());
        let entry = parse_environment_entry(&longer).expect("parses");
        assert_eq!(entry, ("a\0\0\0\0\0\0\0".to_owned(), 5, id));
        assert!(parse_environment_entry(&plain[..plain.len() - 1]).is_err());
        let mut extra = plain.clone();
        extra.push(0);
        assert!(parse_environment_entry(&extra).is_err());
        assert!(parse_environment_entry(&[0; 5]).is_err());
        let mut bad_name = environment_key("é", 5, id);
        bad_name[9] = 0xff;
        assert!(parse_environment_entry(&bad_name).is_err());
    }

    #[test]
    fn time_keys_round_trip() {
        let id = OperationId::from_u128(3);
        assert_eq!(parse_time_key(&time_key(10, id, 4)).expect("parses"), (id, 4));
        assert!(time_key(1, id, 9) < time_key(2, id, 0));
    }
}
