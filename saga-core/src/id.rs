//! Operation ids: 128 bits, sortable by creation time.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use crate::error::Error;
use crate::timestamp::Timestamp;

/// The id of one Operation.
///
/// A [ULID](https://github.com/ulid/spec) (made and spelt by the `ulid` crate): the top 48 bits
/// are the creation time in Unix milliseconds and the low 80 bits are random, so ids sort by
/// creation time. Ids made by one process are strictly increasing even within one millisecond
/// (the next id of a millisecond is the last one plus one). Displayed as 26 characters of
/// Crockford base 32; parsing ignores case.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OperationId(u128);

static LAST: Mutex<u128> = Mutex::new(0);

impl OperationId {
    /// A new id for an Operation created now.
    pub fn new() -> Self {
        let candidate = Ulid::from_parts(now_ms(), fastrand::u128(..)).0;
        let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let id = if candidate > *last { candidate } else { last.saturating_add(1) };
        *last = id;
        OperationId(id)
    }

    /// The id from its 128-bit value.
    pub const fn from_u128(value: u128) -> Self {
        OperationId(value)
    }

    /// The 128-bit value, whose big-endian bytes sort like the ids.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// The creation time in Unix milliseconds.
    pub const fn created_ms(self) -> u64 {
        (self.0 >> 80) as u64
    }
}

impl Default for OperationId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Ulid(self.0), f)
    }
}

impl fmt::Debug for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperationId({self})")
    }
}

impl FromStr for OperationId {
    type Err = Error;

    /// 26 characters of Crockford base 32, any case; the first at most `7` (128 bits).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || Error::InvalidOperationId(text.to_owned());
        // The ULID decoder drops the bits past 128 that a first character above 7 would give.
        if !text.as_bytes().first().is_some_and(|c| (b'0'..=b'7').contains(c)) {
            return Err(invalid());
        }
        Ulid::from_string(text).map(|ulid| OperationId(ulid.0)).map_err(|_| invalid())
    }
}

/// Milliseconds since the Unix epoch, now ([`Timestamp::now`]).
pub(crate) fn now_ms() -> u64 {
    Timestamp::now().unix_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_round_trip() {
        let a = OperationId::new();
        let b = OperationId::new();
        assert!(b > a);
        assert!(b.to_string() > a.to_string());
        let parsed: OperationId = a.to_string().parse().expect("parses");
        assert_eq!(parsed, a);
        assert!("not-an-id".parse::<OperationId>().is_err());
        assert!("ZZZZZZZZZZZZZZZZZZZZZZZZZZ".parse::<OperationId>().is_err());
        assert!("".parse::<OperationId>().is_err());
        assert!("0000000000000000000000000U".parse::<OperationId>().is_err());
        let lower: OperationId = a.to_string().to_lowercase().parse().expect("any case");
        assert_eq!(lower, a);
    }
}
