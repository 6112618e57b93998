//! Encoding of what the store keeps besides records (leases, cancel requests, log lines, index
//! entries), and sled's errors.
//!
//! Records use [`saga_core::store::encode`]; leases, cancel requests and log lines use
//! [`saga_core::store::encode_value`]: the format version byte, postcard, and (from format 3)
//! a CRC32C trailer, bound to the key for a lease and a cancel request, whose value does not
//! name its Operation. An index entry, whose key says everything, holds the CRC32C of its key
//! ([`index_value`]). sled 0.34 keeps no checksums of its own: these are what find a byte it
//! changed. Every error names the tree, the Operation and the key.

use serde::{Deserialize, Serialize};

use saga_core::log::LogLine;
use saga_core::store::{decode_value, encode_value, CancelRequest, Lease, StoreError};
use saga_core::OperationId;

use crate::keys;

/// A lease as stored (the Operation is the key).
#[derive(Serialize, Deserialize)]
struct StoredLease {
    owner: String,
    epoch: u64,
    expires_ms: u64,
}

/// Encodes a lease, bound to its key.
pub(crate) fn encode_lease(lease: &Lease) -> Result<Vec<u8>, StoreError> {
    let stored = StoredLease {
        owner: lease.owner.clone(),
        epoch: lease.epoch,
        expires_ms: lease.expires_ms,
    };
    let what = format!("the lease of operation {}", lease.operation);
    encode_value(&stored, &keys::operation_key(lease.operation), &what)
}

/// Decodes the lease of `operation`.
pub(crate) fn decode_lease(bytes: &[u8], operation: OperationId) -> Result<Lease, StoreError> {
    let key = keys::operation_key(operation);
    let place = || keys::place(keys::LEASES, &key, &format!("the lease of operation {operation}"));
    let stored: StoredLease = decode_value(bytes, &key, &place)?;
    Ok(Lease { operation, owner: stored.owner, epoch: stored.epoch, expires_ms: stored.expires_ms })
}

/// A cancel request as stored (the Operation is the key).
#[derive(Serialize, Deserialize)]
struct StoredCancel {
    actor: String,
    reason: String,
    at_ms: u64,
}

/// Encodes a cancel request, bound to its key.
pub(crate) fn encode_cancel(request: &CancelRequest) -> Result<Vec<u8>, StoreError> {
    let stored = StoredCancel {
        actor: request.actor.clone(),
        reason: request.reason.clone(),
        at_ms: request.at_ms,
    };
    let what = format!("the cancel request of operation {}", request.operation);
    encode_value(&stored, &keys::operation_key(request.operation), &what)
}

/// Decodes the cancel request of `operation`.
pub(crate) fn decode_cancel(
    bytes: &[u8],
    operation: OperationId,
) -> Result<CancelRequest, StoreError> {
    let key = keys::operation_key(operation);
    let what = format!("the cancel request of operation {operation}");
    let stored: StoredCancel =
        decode_value(bytes, &key, &|| keys::place(keys::CANCELS, &key, &what))?;
    Ok(CancelRequest { operation, actor: stored.actor, reason: stored.reason, at_ms: stored.at_ms })
}

/// Encodes a log line (which names its Operation and number itself).
pub(crate) fn encode_line(line: &LogLine) -> Result<Vec<u8>, StoreError> {
    let what = format!("log line {} of operation {}", line.seq, line.operation);
    encode_value(line, &[], &what)
}

/// Decodes log line `seq` of `operation`.
pub(crate) fn decode_line(
    bytes: &[u8],
    operation: OperationId,
    seq: u64,
) -> Result<LogLine, StoreError> {
    let key = keys::seq_key(operation, seq);
    let place =
        || keys::place(keys::LOGS, &key, &format!("log line {seq} of operation {operation}"));
    let line: LogLine = decode_value(bytes, &[], &place)?;
    if line.operation != operation || line.seq != seq {
        return Err(StoreError::Corrupt {
            place: place(),
            problem: format!("the bytes are line {} of operation {}", line.seq, line.operation),
        });
    }
    Ok(line)
}

/// The value of an index entry (trees `unfinished`, `by_environment`, `by_resource`,
/// `logs_by_time`), whose key says everything: the CRC32C of the key, little-endian, so that a
/// damaged key (or value) is found when the entry is read ([`check_index_value`]).
pub(crate) fn index_value(key: &[u8]) -> [u8; 4] {
    crc32c::crc32c(key).to_le_bytes()
}

/// Checks the value of an index entry of `tree` against its key: the key's CRC32C, or empty (an
/// entry written by a release before format 3, which has no checksum). `what` says what the
/// entry is (naming its Operation as the key reads), for the error.
pub(crate) fn check_index_value(
    tree: &str,
    key: &[u8],
    value: &[u8],
    what: &str,
) -> Result<(), StoreError> {
    let computed = crc32c::crc32c(key);
    let problem = match <[u8; 4]>::try_from(value) {
        _ if value.is_empty() => return Ok(()),
        Ok(stored) if u32::from_le_bytes(stored) == computed => return Ok(()),
        Ok(stored) => format!(
            "checksum mismatch (stored CRC32C {:#010x}, computed {computed:#010x} from the key)",
            u32::from_le_bytes(stored)
        ),
        Err(_) => format!("a value of {} bytes where the key's 4-byte CRC32C belongs", value.len()),
    };
    Err(StoreError::Corrupt { place: keys::place(tree, key, what), problem })
}

/// A sled error as a store error; `context` says what was being done.
pub(crate) fn sled_error(context: &str, error: sled::Error) -> StoreError {
    match error {
        sled::Error::Io(source)
            if source.get_ref().is_some_and(|e| e.is::<crate::bundle::Damaged>()) =>
        {
            let damaged = source.get_ref().and_then(|e| e.downcast_ref::<crate::bundle::Damaged>());
            StoreError::Corrupt {
                place: damaged.map_or_else(String::new, |d| d.place.clone()),
                problem: format!(
                    "{} (while {context})",
                    damaged.map_or_else(String::new, |d| d.problem.clone())
                ),
            }
        }
        sled::Error::Io(source) => StoreError::Io { context: context.to_owned(), source },
        sled::Error::Corruption { at, .. } => StoreError::Corrupt {
            place: match at {
                Some(sled::DiskPtr::Inline(offset)) => {
                    format!("sled's log (its `db` file) at offset {offset}")
                }
                Some(sled::DiskPtr::Blob(offset, blob)) => {
                    format!("sled's blob file {blob} (named at offset {offset} of its `db` file)")
                }
                None => "sled's files (sled names no offset)".to_owned(),
            },
            problem: format!("sled found damaged data while {context}"),
        },
        other => StoreError::backend(context, other),
    }
}

#[cfg(test)]
mod tests {
    use saga_core::log::{LogLevel, LogSource};
    use saga_core::store::FORMAT_VERSION;

    use super::*;

    /// Every byte of `bytes` changed to every other value: `decode` fails, never returning
    /// other content.
    fn every_byte_changed<T: std::fmt::Debug>(
        bytes: &[u8],
        decode: impl Fn(&[u8]) -> Result<T, StoreError>,
    ) {
        for at in 0..bytes.len() {
            for mask in 1..=255u8 {
                let mut changed = bytes.to_vec();
                changed[at] ^= mask;
                if let Ok(value) = decode(&changed) {
                    panic!("byte {at} xor {mask:#04x} still decodes, as {value:?}");
                }
            }
        }
    }

    fn line(id: OperationId) -> LogLine {
        LogLine {
            operation: id,
            seq: 2,
            at_ms: 7,
            level: LogLevel::Info,
            source: LogSource::Engine,
            step: Some("s".into()),
            message: "hello".into(),
        }
    }

    #[test]
    fn leases_and_lines_round_trip_and_reject_bad_bytes() {
        let id = OperationId::from_u128(5);
        let lease = Lease { operation: id, owner: "a".into(), epoch: 3, expires_ms: 9 };
        let bytes = encode_lease(&lease).expect("encodes");
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode_lease(&bytes, id).expect("decodes"), lease);
        for cut in 0..bytes.len() {
            assert!(decode_lease(&bytes[..cut], id).is_err(), "cut at {cut}");
        }

        let line = line(id);
        let bytes = encode_line(&line).expect("encodes");
        assert_eq!(decode_line(&bytes, id, 2).expect("decodes"), line);
        assert!(decode_line(&bytes, id, 3).is_err());
        let mut newer = bytes.clone();
        newer[0] = FORMAT_VERSION + 1;
        assert!(matches!(decode_line(&newer, id, 2), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn every_byte_changed_in_a_value_is_an_error() {
        let id = OperationId::from_u128(0x0190_0000_0000_0000_0000_0000_0000_0005);
        let lease = Lease { operation: id, owner: "worker-1".into(), epoch: 3, expires_ms: 9 };
        every_byte_changed(&encode_lease(&lease).expect("encodes"), |b| decode_lease(b, id));
        let request = CancelRequest {
            operation: id,
            actor: "amy".into(),
            reason: "stop".into(),
            at_ms: 1_700_000_000_000,
        };
        let bytes = encode_cancel(&request).expect("encodes");
        every_byte_changed(&bytes, |b| decode_cancel(b, id));
        every_byte_changed(&encode_line(&line(id)).expect("encodes"), |b| decode_line(b, id, 2));
        let key = keys::seq_key(id, 2);
        let value = index_value(&key);
        every_byte_changed(&value, |v| check_index_value(keys::UNFINISHED, &key, v, "an entry"));
        every_byte_changed(&key, |k| check_index_value(keys::UNFINISHED, k, &value, "an entry"));
    }

    #[test]
    fn a_lease_or_request_read_under_another_key_is_an_error() {
        let id = OperationId::from_u128(5);
        let other = OperationId::from_u128(5 ^ (1 << 100));
        let lease = Lease { operation: id, owner: "a".into(), epoch: 3, expires_ms: 9 };
        let e = decode_lease(&encode_lease(&lease).expect("encodes"), other).expect_err("moved");
        let text = e.to_string();
        for part in ["tree leases", &other.to_string(), "key 0x0000001000", "checksum mismatch"] {
            assert!(text.contains(part), "{part:?} in {text}");
        }
        let request =
            CancelRequest { operation: id, actor: "a".into(), reason: "r".into(), at_ms: 1 };
        let bytes = encode_cancel(&request).expect("encodes");
        assert!(decode_cancel(&bytes, other).is_err());
    }

    /// A value as format 2 wrote it: the version byte, then postcard.
    fn old<T: Serialize>(value: &T) -> Vec<u8> {
        postcard::to_extend(value, vec![2]).expect("encodes")
    }

    #[test]
    fn values_of_format_2_read_as_before() {
        let id = OperationId::from_u128(5);
        let lease = StoredLease { owner: "a".into(), epoch: 3, expires_ms: 9 };
        let read = decode_lease(&old(&lease), id).expect("decodes");
        assert_eq!((read.owner.as_str(), read.epoch, read.expires_ms), ("a", 3, 9));
        let request = StoredCancel { actor: "a".into(), reason: "r".into(), at_ms: 1 };
        assert_eq!(decode_cancel(&old(&request), id).expect("decodes").reason, "r");
        assert_eq!(decode_line(&old(&line(id)), id, 2).expect("decodes"), line(id));
        // An index entry of format 2 is empty.
        check_index_value(keys::UNFINISHED, &keys::operation_key(id), &[], "a mark")
            .expect("an empty entry is a legacy one");
    }

    #[test]
    fn a_damaged_index_entry_names_the_tree_the_operation_and_the_key() {
        let id = OperationId::from_u128(5);
        let key = keys::operation_key(id);
        let mut value = index_value(&key);
        value[1] ^= 0x04;
        let what = format!("the unfinished mark of operation {id}");
        match check_index_value(keys::UNFINISHED, &key, &value, &what) {
            Err(StoreError::Corrupt { place, problem }) => {
                assert_eq!(
                    place,
                    format!(
                        "the unfinished mark of operation {id} (tree unfinished, key \
                         0x00000000000000000000000000000005)"
                    )
                );
                assert!(problem.starts_with("checksum mismatch (stored CRC32C 0x"), "{problem}");
            }
            other => panic!("expected a corrupt entry, got {other:?}"),
        }
        let e = check_index_value(keys::UNFINISHED, &key, &[1, 2], &what).expect_err("2 bytes");
        assert!(e.to_string().contains("a value of 2 bytes"), "{e}");
    }
}
