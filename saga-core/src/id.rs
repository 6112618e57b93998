//! Operation ids: 128 bits, sortable by creation time.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::Error;

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The id of one Operation.
///
/// The top 48 bits are the creation time in Unix milliseconds and the low 80 bits are random, as
/// in a ULID, so ids sort by creation time. Ids made by one process are strictly increasing even
/// within one millisecond. Displayed as 26 characters of Crockford base 32.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OperationId(u128);

static LAST: Mutex<u128> = Mutex::new(0);

impl OperationId {
    /// A new id for an Operation created now.
    pub fn new() -> Self {
        let candidate = (u128::from(now_ms()) << 80) | (fastrand::u128(..) >> 48);
        let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let id = if candidate > *last { candidate } else { *last + 1 };
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
        let mut out = [0u8; 26];
        for (i, slot) in out.iter_mut().enumerate() {
            let shift = 5 * (25 - i);
            *slot = ALPHABET[((self.0 >> shift) & 0x1f) as usize];
        }
        // The alphabet is ASCII, so this cannot fail; fall back to hex rather than panic.
        match std::str::from_utf8(&out) {
            Ok(text) => f.write_str(text),
            Err(_) => write!(f, "{:032x}", self.0),
        }
    }
}

impl fmt::Debug for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperationId({self})")
    }
}

impl FromStr for OperationId {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || Error::InvalidOperationId(text.to_owned());
        if text.len() != 26 {
            return Err(invalid());
        }
        let mut value: u128 = 0;
        for (i, c) in text.bytes().enumerate() {
            let c = c.to_ascii_uppercase();
            let digit = ALPHABET.iter().position(|&a| a == c).ok_or_else(invalid)? as u128;
            if i == 0 && digit > 7 {
                return Err(invalid());
            }
            value = (value << 5) | digit;
        }
        Ok(OperationId(value))
    }
}

/// Milliseconds since the Unix epoch, now: the clock of record timestamps and lease expiries,
/// which stores use too (0 if the system clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
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
    }
}
