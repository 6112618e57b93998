//! Activity reports: every Operation of one environment over a period, as RFC 4180 CSV.

use std::io;

use crate::error::{Error, Result};
use crate::fold::{OperationState, Phase};
use crate::id::OperationId;
use crate::oplog::format_rfc3339_ms;
use crate::record::Outcome;
use crate::store::Store;

/// The CSV header, in column order.
pub const ACTIVITY_COLUMNS: [&str; 11] = [
    "operation id",
    "operation type",
    "status",
    "resource type",
    "resource",
    "actor",
    "created at",
    "finished at",
    "duration seconds",
    "failed step",
    "not undone",
];

/// One Operation in an activity report.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivityRow {
    /// The Operation.
    pub operation: OperationId,
    /// Its saga's name.
    pub operation_type: String,
    /// `succeeded`, `rolled back`, `rollback incomplete`, `running` or `rolling back`.
    pub status: String,
    /// The resource's type.
    pub resource_type: String,
    /// The resource's name.
    pub resource: String,
    /// Who started it.
    pub actor: String,
    /// When it was created (Unix ms).
    pub created_ms: u64,
    /// When it finished (Unix ms), if it did.
    pub finished_ms: Option<u64>,
    /// The step whose failure started the rollback, if any.
    pub failed_step: Option<String>,
    /// What the rollback did not undo, each with its reason.
    pub not_undone: Vec<String>,
}

impl ActivityRow {
    /// The row of an Operation, from its folded state.
    pub fn from_state(state: &OperationState) -> Self {
        let status = match (&state.outcome, state.phase()) {
            (Some(outcome), _) => outcome.status(),
            (None, Phase::RollingBack) => "rolling back",
            (None, _) => "running",
        };
        let not_undone = match &state.outcome {
            Some(Outcome::RollbackIncomplete { not_undone, .. }) => {
                not_undone.iter().map(ToString::to_string).collect()
            }
            _ => Vec::new(),
        };
        ActivityRow {
            operation: state.id,
            operation_type: state.saga.clone(),
            status: status.to_owned(),
            resource_type: state.resource.kind.clone(),
            resource: state.resource.name.clone(),
            actor: state.actor.clone(),
            created_ms: state.created_ms,
            finished_ms: state.finished_ms,
            failed_step: state.failure.as_ref().map(|(step, _)| step.clone()),
            not_undone,
        }
    }

    /// The duration in seconds, once finished.
    pub fn duration_secs(&self) -> Option<f64> {
        self.finished_ms.map(|f| f.saturating_sub(self.created_ms) as f64 / 1000.0)
    }

    /// The cells, in [`ACTIVITY_COLUMNS`] order, before neutralisation.
    pub fn cells(&self) -> [String; 11] {
        [
            self.operation.to_string(),
            self.operation_type.clone(),
            self.status.clone(),
            self.resource_type.clone(),
            self.resource.clone(),
            self.actor.clone(),
            format_rfc3339_ms(self.created_ms),
            self.finished_ms.map(format_rfc3339_ms).unwrap_or_default(),
            self.duration_secs().map(|d| format!("{d:.3}")).unwrap_or_default(),
            self.failed_step.clone().unwrap_or_default(),
            self.not_undone.join("; "),
        ]
    }
}

/// The rows of every Operation of `environment` created in `[since_ms, until_ms)`, in creation
/// order, including Operations on resources deleted since. Served from the store's environment
/// index: only those Operations' records are read.
pub async fn activity_report(
    store: &dyn Store,
    environment: &str,
    since_ms: u64,
    until_ms: u64,
) -> Result<Vec<ActivityRow>> {
    let ids = store.list_environment(environment, since_ms, until_ms).await?;
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids {
        let records = store.read(id).await?;
        let state = OperationState::fold(id, &records)?;
        if state.environment == environment {
            rows.push(ActivityRow::from_state(&state));
        }
    }
    Ok(rows)
}

/// Makes a cell safe to open in a spreadsheet: a cell that would be evaluated as a formula
/// (starting with `=`, `+`, `-`, `@`, a tab or a carriage return) gets a leading `'`.
pub fn neutralise_cell(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

/// Writes rows as RFC 4180 CSV (CRLF line ends, quoting as needed) with a header line, every cell
/// neutralised with [`neutralise_cell`].
pub fn write_activity_csv(rows: &[ActivityRow], out: impl io::Write) -> Result<()> {
    let mut writer = csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(out);
    let csv_error = |e: csv::Error| Error::Report(e.to_string());
    writer.write_record(ACTIVITY_COLUMNS).map_err(csv_error)?;
    for row in rows {
        let cells = row.cells();
        writer
            .write_record(cells.iter().map(|c| neutralise_cell(c).into_owned()))
            .map_err(csv_error)?;
    }
    writer.flush().map_err(|e| Error::Report(e.to_string()))?;
    Ok(())
}

/// The ISO week (Monday 00:00 UTC to the next Monday) that contains `ms`, as `[since, until)`.
pub fn iso_week_containing(ms: u64) -> (u64, u64) {
    const DAY: u64 = 86_400_000;
    let days = ms / DAY;
    // 1970-01-01 was a Thursday: Monday-based weekday is (days + 3) % 7.
    let monday = days - (days + 3) % 7;
    (monday * DAY, (monday + 7) * DAY)
}

/// The activity report of the ISO week that contains `ms`.
pub async fn weekly_activity_report(
    store: &dyn Store,
    environment: &str,
    ms: u64,
) -> Result<Vec<ActivityRow>> {
    let (since, until) = iso_week_containing(ms);
    activity_report(store, environment, since, until).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neutralises_formulas() {
        assert_eq!(neutralise_cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        for c in ["+1", "-1", "@a", "\tx", "\rx"] {
            assert!(neutralise_cell(c).starts_with('\''), "{c:?}");
        }
        assert_eq!(neutralise_cell("web"), "web");
        assert_eq!(neutralise_cell(""), "");
    }

    #[test]
    fn iso_weeks_start_on_monday() {
        // 2024-03-06 (a Wednesday) 12:00 UTC is in the week of Monday 2024-03-04.
        let (since, until) = iso_week_containing(1_709_726_400_000);
        assert_eq!(format_rfc3339_ms(since), "2024-03-04T00:00:00.000Z");
        assert_eq!(format_rfc3339_ms(until), "2024-03-11T00:00:00.000Z");
        // A Monday at midnight is the start of its own week.
        assert_eq!(iso_week_containing(since).0, since);
        // A Sunday late is in the week before.
        assert_eq!(iso_week_containing(since - 1).1, since);
    }
}
