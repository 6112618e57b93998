//! Encoding of what the store keeps besides records (leases, log lines), and sled's errors.
//!
//! Records use [`saga_core::store::encode`]; leases and log lines use the same shape: the format
//! version byte, then postcard.

use serde::{Deserialize, Serialize};

use saga_core::log::LogLine;
use saga_core::store::{CancelRequest, Lease, StoreError, FORMAT_VERSION};
use saga_core::OperationId;

/// A lease as stored (the Operation is the key).
#[derive(Serialize, Deserialize)]
struct StoredLease {
    owner: String,
    epoch: u64,
    expires_ms: u64,
}

fn to_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(value, vec![FORMAT_VERSION])
        .map_err(|e| StoreError::backend("encoding a value", e))
}

fn from_bytes<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    place: &dyn Fn() -> String,
) -> Result<T, StoreError> {
    let corrupt = |problem: String| StoreError::Corrupt { place: place(), problem };
    let (&version, body) = bytes.split_first().ok_or_else(|| corrupt("empty value".into()))?;
    if version > FORMAT_VERSION {
        return Err(StoreError::NewerFormat { found: version, supported: FORMAT_VERSION });
    }
    if version == 0 {
        return Err(corrupt("format version 0 does not exist".into()));
    }
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
    if !rest.is_empty() {
        return Err(corrupt(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

/// Encodes a lease.
pub(crate) fn encode_lease(lease: &Lease) -> Result<Vec<u8>, StoreError> {
    to_bytes(&StoredLease {
        owner: lease.owner.clone(),
        epoch: lease.epoch,
        expires_ms: lease.expires_ms,
    })
}

/// Decodes the lease of `operation`.
pub(crate) fn decode_lease(bytes: &[u8], operation: OperationId) -> Result<Lease, StoreError> {
    let stored: StoredLease = from_bytes(bytes, &|| format!("lease of operation {operation}"))?;
    Ok(Lease { operation, owner: stored.owner, epoch: stored.epoch, expires_ms: stored.expires_ms })
}

/// A cancel request as stored (the Operation is the key).
#[derive(Serialize, Deserialize)]
struct StoredCancel {
    actor: String,
    reason: String,
    at_ms: u64,
}

/// Encodes a cancel request.
pub(crate) fn encode_cancel(request: &CancelRequest) -> Result<Vec<u8>, StoreError> {
    to_bytes(&StoredCancel {
        actor: request.actor.clone(),
        reason: request.reason.clone(),
        at_ms: request.at_ms,
    })
}

/// Decodes the cancel request of `operation`.
pub(crate) fn decode_cancel(
    bytes: &[u8],
    operation: OperationId,
) -> Result<CancelRequest, StoreError> {
    let stored: StoredCancel =
        from_bytes(bytes, &|| format!("cancel request of operation {operation}"))?;
    Ok(CancelRequest { operation, actor: stored.actor, reason: stored.reason, at_ms: stored.at_ms })
}

/// Encodes a log line.
pub(crate) fn encode_line(line: &LogLine) -> Result<Vec<u8>, StoreError> {
    to_bytes(line)
}

/// Decodes log line `seq` of `operation`.
pub(crate) fn decode_line(
    bytes: &[u8],
    operation: OperationId,
    seq: u64,
) -> Result<LogLine, StoreError> {
    let place = || format!("log line {seq} of operation {operation}");
    let line: LogLine = from_bytes(bytes, &place)?;
    if line.operation != operation || line.seq != seq {
        return Err(StoreError::Corrupt {
            place: place(),
            problem: format!("line is {} of operation {}", line.seq, line.operation),
        });
    }
    Ok(line)
}

/// A sled error as a store error; `context` says what was being done.
pub(crate) fn sled_error(context: &str, error: sled::Error) -> StoreError {
    match error {
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

    use super::*;

    #[test]
    fn leases_and_lines_round_trip_and_reject_bad_bytes() {
        let id = OperationId::from_u128(5);
        let lease = Lease { operation: id, owner: "a".into(), epoch: 3, expires_ms: 9 };
        let bytes = encode_lease(&lease).expect("encodes");
        assert_eq!(decode_lease(&bytes, id).expect("decodes"), lease);
        for cut in 0..bytes.len() {
            assert!(decode_lease(&bytes[..cut], id).is_err(), "cut at {cut}");
        }

        let line = LogLine {
            operation: id,
            seq: 2,
            at_ms: 7,
            level: LogLevel::Info,
            source: LogSource::Engine,
            step: Some("s".into()),
            message: "hello".into(),
        };
        let bytes = encode_line(&line).expect("encodes");
        assert_eq!(decode_line(&bytes, id, 2).expect("decodes"), line);
        assert!(decode_line(&bytes, id, 3).is_err());
        let mut newer = bytes.clone();
        newer[0] = FORMAT_VERSION + 1;
        assert!(matches!(decode_line(&newer, id, 2), Err(StoreError::NewerFormat { .. })));
    }
}
