//! Query parameters: the listing's filters and paging, and periods. Every mistake is a 400 that
//! names the parameter.

use std::collections::HashSet;

use saga_core::OperationId;

use crate::api::Status;
use crate::error::ApiError;

/// The default page size of a listing.
pub(crate) const DEFAULT_LIMIT: usize = 50;
/// The largest page size of a listing.
pub(crate) const MAX_LIMIT: usize = 500;

/// The filters and paging of a listing.
#[derive(Clone, Debug, Default)]
pub(crate) struct ListQuery {
    pub(crate) statuses: Vec<Status>,
    pub(crate) resource: Option<String>,
    pub(crate) resource_type: Option<String>,
    pub(crate) since_ms: Option<u64>,
    pub(crate) until_ms: Option<u64>,
    pub(crate) limit: usize,
    pub(crate) cursor: Option<OperationId>,
}

impl ListQuery {
    pub(crate) fn parse(pairs: &[(String, String)]) -> Result<Self, ApiError> {
        let mut query = ListQuery { limit: DEFAULT_LIMIT, ..ListQuery::default() };
        let mut seen = HashSet::new();
        for (key, value) in pairs {
            if key != "status" && !seen.insert(key.as_str()) {
                return Err(ApiError::bad_request(key.clone(), format!("{key} is given twice")));
            }
            match key.as_str() {
                "status" => {
                    for part in value.split(',').filter(|p| !p.trim().is_empty()) {
                        let status = part
                            .parse::<Status>()
                            .map_err(|e| ApiError::bad_request("status", e.to_string()))?;
                        query.statuses.push(status);
                    }
                }
                "resource" => query.resource = non_empty(value),
                "resource_type" => query.resource_type = non_empty(value),
                "since" => query.since_ms = Some(parse_time("since", value)?),
                "until" => query.until_ms = Some(parse_time("until", value)?),
                "limit" => query.limit = parse_limit(value)?,
                "cursor" => {
                    let cursor = value.parse().map_err(|_| {
                        ApiError::bad_request(
                            "cursor",
                            format!("{value:?} is not a cursor (the next_cursor of a page)"),
                        )
                    })?;
                    query.cursor = Some(cursor);
                }
                _ => {
                    return Err(ApiError::bad_request(
                        key.clone(),
                        format!(
                            "unknown parameter {key:?}: expected status, resource, resource_type, \
                             since, until, limit or cursor"
                        ),
                    ))
                }
            }
        }
        check_period(query.since_ms, query.until_ms)?;
        Ok(query)
    }

    /// Whether a row of this status and resource passes the filters.
    pub(crate) fn accepts(&self, status: Status, resource_type: &str, resource: &str) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&status))
            && self.resource.as_deref().is_none_or(|r| r == resource)
            && self.resource_type.as_deref().is_none_or(|t| t == resource_type)
    }
}

fn non_empty(value: &str) -> Option<String> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

fn parse_limit(value: &str) -> Result<usize, ApiError> {
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(
            "limit",
            format!("{value:?} is not a page size: expected a number from 1 to {MAX_LIMIT}"),
        )),
    }
}

/// Parses an RFC 3339 time into Unix milliseconds. A `+` of an offset that arrived as a space
/// (an unencoded `+` in a query string) is taken as the `+` it was.
pub(crate) fn parse_time(parameter: &'static str, value: &str) -> Result<u64, ApiError> {
    let text = value.trim().replace(' ', "+");
    let bad = |why: String| {
        ApiError::bad_request(
            parameter,
            format!("{value:?} is not an RFC 3339 time (like 2025-01-31T00:00:00Z): {why}"),
        )
    };
    match text.parse::<saga_core::Timestamp>() {
        Ok(time) => Ok(time.unix_ms()),
        Err(saga_core::Error::InvalidTimestamp { why, .. }) => Err(bad(why)),
        Err(other) => Err(bad(other.to_string())),
    }
}

/// A period's ends must be in order.
pub(crate) fn check_period(since_ms: Option<u64>, until_ms: Option<u64>) -> Result<(), ApiError> {
    match (since_ms, until_ms) {
        (Some(since), Some(until)) if since >= until => {
            Err(ApiError::bad_request("until", "until must be later than since"))
        }
        _ => Ok(()),
    }
}

/// The `since` and `until` of a report: both, or neither (the current ISO week).
pub(crate) fn report_period(pairs: &[(String, String)]) -> Result<Option<(u64, u64)>, ApiError> {
    let mut since = None;
    let mut until = None;
    for (key, value) in pairs {
        let slot = match key.as_str() {
            "since" => &mut since,
            "until" => &mut until,
            _ => {
                return Err(ApiError::bad_request(
                    key.clone(),
                    format!("unknown parameter {key:?}: expected since and until"),
                ))
            }
        };
        if slot.is_some() {
            return Err(ApiError::bad_request(key.clone(), format!("{key} is given twice")));
        }
        *slot = Some(parse_time(if key == "since" { "since" } else { "until" }, value)?);
    }
    check_period(since, until)?;
    match (since, until) {
        (Some(s), Some(u)) => Ok(Some((s, u))),
        (None, None) => Ok(None),
        (None, Some(_)) => Err(ApiError::bad_request(
            "since",
            "give both since and until, or neither for the current week",
        )),
        (Some(_), None) => Err(ApiError::bad_request(
            "until",
            "give both since and until, or neither for the current week",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn times_and_filters() {
        assert_eq!(parse_time("since", "1970-01-01T00:00:01Z").ok(), Some(1000));
        assert_eq!(parse_time("since", "1970-01-01T01:00:01 01:00").ok(), Some(1000));
        assert!(parse_time("since", "yesterday").is_err());
        assert!(parse_time("since", "1969-12-31T23:59:59Z").is_err());
        let q = ListQuery::parse(&pairs(&[("status", "rolled back,running"), ("limit", "3")]))
            .expect("parses");
        assert_eq!(q.statuses, vec![Status::RolledBack, Status::Running]);
        assert_eq!(q.limit, 3);
        for bad in [("status", "done"), ("limit", "0"), ("cursor", "x"), ("colour", "red")] {
            let e = ListQuery::parse(&pairs(&[bad])).expect_err("bad");
            assert_eq!(e.parameter.as_deref(), Some(bad.0));
        }
    }
}
