//! Points in time, as the engine records them: Unix milliseconds, UTC, spelt in RFC 3339 and
//! grouped in ISO weeks by the `time` crate.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::Error;

const DAY_MS: u64 = 86_400_000;

/// A point in time: whole milliseconds since the Unix epoch, UTC (never before it).
///
/// `Display` spells it in RFC 3339 with milliseconds (`2024-03-04T00:00:00.000Z`), the form of
/// the log, the activity report and the admin API. Serialized as the bare number of
/// milliseconds, as records store it.
///
/// ```
/// use saga_core::Timestamp;
///
/// let t = Timestamp::from_unix_ms(1_709_726_400_000);
/// assert_eq!(t.to_string(), "2024-03-06T12:00:00.000Z");
/// assert_eq!("2024-03-06T12:00:00Z".parse::<Timestamp>()?, t);
/// let week = t.iso_week();
/// assert_eq!(week.since.to_string(), "2024-03-04T00:00:00.000Z");
/// assert_eq!(week.until.to_string(), "2024-03-11T00:00:00.000Z");
/// # Ok::<(), saga_core::Error>(())
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch, 1970-01-01T00:00:00Z: the earliest time there is.
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);

    /// Now, by the system clock (the epoch if the clock is before 1970): the clock of record
    /// times and lease expiries, which stores use too.
    pub fn now() -> Self {
        Timestamp(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
        )
    }

    /// The time `ms` milliseconds after the Unix epoch.
    pub const fn from_unix_ms(ms: u64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_ms(self) -> u64 {
        self.0
    }

    /// As a `time` date-time in UTC, or `None` past the year 9999.
    pub fn to_offset_date_time(self) -> Option<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000).ok()
    }

    /// The ISO week (Monday 00:00 UTC to the next Monday) that contains this time. The week of
    /// 1970-01-01 to 1970-01-04 began on Monday 1969-12-29: it starts at the epoch here, since no
    /// time is earlier. Past the year 9999 the week is counted from the epoch's weekday.
    pub fn iso_week(self) -> Week {
        let days = self.0 / DAY_MS;
        let since_monday = match self.to_offset_date_time() {
            Some(t) => u64::from(t.weekday().number_days_from_monday()),
            // 1970-01-01 was a Thursday (3 days after a Monday).
            None => (days + 3) % 7,
        };
        match days.checked_sub(since_monday) {
            Some(monday) => Week {
                since: Timestamp(monday.saturating_mul(DAY_MS)),
                until: Timestamp(monday.saturating_add(7).saturating_mul(DAY_MS)),
            },
            None => Week {
                since: Timestamp::UNIX_EPOCH,
                until: Timestamp((7 - since_monday + days).saturating_mul(DAY_MS)),
            },
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_millis(t.0)
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with milliseconds; past the year 9999, `+<ms>ms` after the epoch.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_offset_date_time() {
            Some(t) => write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            ),
            None => write!(f, "+{}ms", self.0),
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl std::str::FromStr for Timestamp {
    type Err = Error;

    /// An RFC 3339 time with any offset, at or after the epoch; sub-millisecond digits are cut.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid =
            |why: &str| Error::InvalidTimestamp { text: text.to_owned(), why: why.into() };
        let t =
            OffsetDateTime::parse(text.trim(), &Rfc3339).map_err(|e| invalid(&e.to_string()))?;
        let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
        u64::try_from(ms).map(Timestamp).map_err(|_| invalid("before 1970-01-01T00:00:00Z"))
    }
}

/// An ISO week, `[since, until)`: Monday 00:00 UTC to the next Monday 00:00 UTC
/// ([`Timestamp::iso_week`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Week {
    /// Its Monday at 00:00 UTC (the epoch for the week of 1970-01-01).
    pub since: Timestamp,
    /// The next Monday at 00:00 UTC: the first time after the week.
    pub until: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spelt_in_rfc_3339() {
        assert_eq!(Timestamp::UNIX_EPOCH.to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp::from_unix_ms(1_709_251_200_123).to_string(),
            "2024-03-01T00:00:00.123Z"
        );
        assert_eq!(Timestamp::from_unix_ms(u64::MAX).to_string(), format!("+{}ms", u64::MAX));
        let parsed: Timestamp = "2024-03-01T01:00:00.123456+01:00".parse().expect("parses");
        assert_eq!(parsed, Timestamp::from_unix_ms(1_709_251_200_123));
        assert!("1969-12-31T23:59:59Z".parse::<Timestamp>().is_err());
        assert!("yesterday".parse::<Timestamp>().is_err());
    }

    #[test]
    fn iso_weeks_start_on_monday() {
        // 2024-03-06 (a Wednesday) 12:00 UTC is in the week of Monday 2024-03-04.
        let Week { since, until } = Timestamp::from_unix_ms(1_709_726_400_000).iso_week();
        assert_eq!(since.to_string(), "2024-03-04T00:00:00.000Z");
        assert_eq!(until.to_string(), "2024-03-11T00:00:00.000Z");
        // A Monday at midnight is the start of its own week.
        assert_eq!(since.iso_week().since, since);
        // A Sunday late is in the week before.
        assert_eq!(Timestamp::from_unix_ms(since.unix_ms() - 1).iso_week().until, since);
    }

    #[test]
    fn the_week_of_the_first_days_of_1970_starts_at_the_epoch_without_a_panic() {
        // Thursday 1970-01-01 to Sunday 1970-01-04: the week of Monday 1969-12-29, from 0.
        let monday = "1970-01-05T00:00:00.000Z";
        for ms in [0, 1, DAY_MS * 3, DAY_MS * 4 - 1] {
            let week = Timestamp::from_unix_ms(ms).iso_week();
            assert_eq!(
                (week.since, week.until.to_string().as_str()),
                (Timestamp::UNIX_EPOCH, monday),
                "{ms}"
            );
        }
        let week = Timestamp::from_unix_ms(DAY_MS * 4).iso_week();
        assert_eq!(week.since.to_string(), monday);
        assert_eq!(week.until.to_string(), "1970-01-12T00:00:00.000Z");
        // The far end neither wraps nor panics.
        let Week { since, until } = Timestamp::from_unix_ms(u64::MAX).iso_week();
        assert!(since < until && since.unix_ms() > u64::MAX - 8 * DAY_MS, "{since} {until}");
    }
}
