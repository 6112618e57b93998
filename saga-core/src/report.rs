//! Activity reports: every Operation of one environment over a period, as RFC 4180 CSV.
//!
//! [`activity_report`] reads the environment index of a [`Store`] and folds each Operation it
//! names into an [`ActivityRow`]. A report tells the whole story even when part of the store is
//! damaged: an Operation whose records do not read (a corrupt record, a gap, an index entry
//! naming an Operation the store does not have) or do not fold (an illegal log) gets a row of
//! status [`Status::Damaged`] in its place, saying why in its `problem`, and an index entry
//! that names no Operation at all gets such a row at the end. Only a store that cannot list, or
//! that is unavailable while the report reads, fails the report as a whole.
//!
//! [`write_activity_csv`] writes rows with the header [`ACTIVITY_COLUMNS`], every cell passed
//! through [`neutralise_cell`] so that no cell runs as a spreadsheet formula.

use std::borrow::Cow;
use std::fmt;
use std::io;

use crate::error::{Error, Result, StoreError};
use crate::fold::OperationState;
use crate::id::OperationId;
use crate::record::{Outcome, Record};
use crate::status::Status;
use crate::store::Store;
use crate::timestamp::Timestamp;

/// The CSV header, in column order: the Operation's identity and timing, then how it ended
/// (`failed step` and `failure`: the step failure that started the rollback and its error;
/// `not undone`; `cancelled by` and `cancel reason`: the cancel request; `abandoned by` and
/// `abandon reason`: the operator who abandoned an Operation that needed attention, whose step
/// and last error are then `failed step` and `failure`; `cancels refused`: each cancel request
/// refused because it came after the point of no return, with who asked, why, and why it was
/// refused), and last `problem`, why a [`damaged`](Status::Damaged) row's Operation
/// could not be read.
pub const ACTIVITY_COLUMNS: [&str; 18] = [
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
    "failure",
    "cancelled by",
    "cancel reason",
    "abandoned by",
    "abandon reason",
    "cancels refused",
    "problem",
];

/// One Operation in an activity report, or one damaged entry of the store's index.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivityRow {
    /// The Operation; [`ActivityRow::NO_OPERATION`] in the row of an index entry that names no
    /// Operation (see [`ActivityRow::names_operation`]).
    pub operation: OperationId,
    /// Its saga's name (empty in a damaged row whose `OperationCreated` record did not read).
    pub operation_type: String,
    /// Where it stands; [`Status::Damaged`] when its records could not be read or
    /// folded.
    pub status: Status,
    /// The resource's type (empty if unknown, as `operation_type`).
    pub resource_type: String,
    /// The resource's name (empty if unknown, as `operation_type`).
    pub resource: String,
    /// Who started it (empty if unknown, as `operation_type`).
    pub actor: String,
    /// When it was created. In a damaged row, from its `OperationCreated` record if that read,
    /// else the time in its id; the epoch (and an empty cell) in the row of an index entry that
    /// names no Operation.
    pub created: Timestamp,
    /// When it finished, if it did.
    pub finished: Option<Timestamp>,
    /// The step whose failure started the rollback, or the step that needs (or needed)
    /// attention, if any.
    pub failed_step: Option<String>,
    /// What the rollback did not undo, each with its reason.
    pub not_undone: Vec<String>,
    /// The error of the failure of `failed_step`, if any.
    pub failure: Option<String>,
    /// Who asked to cancel it, if anyone did.
    pub cancelled_by: Option<String>,
    /// Why they asked to cancel it.
    pub cancel_reason: Option<String>,
    /// Who abandoned it, if it was abandoned.
    pub abandoned_by: Option<String>,
    /// Why they abandoned it.
    pub abandon_reason: Option<String>,
    /// The cancel requests refused (they came after the point of no return), each as
    /// `<who>: <why> (refused: <why refused>)`, in the order the refusals were recorded.
    pub cancels_refused: Vec<String>,
    /// In a damaged row, why the Operation (or index entry) could not be read: the message of
    /// the store's or the fold's typed error. `None` in every other row.
    pub problem: Option<String>,
}

/// The status of an activity report's row: [`Status`], the one status of the engine.
#[deprecated(since = "0.2.0", note = "use saga_core::Status")]
pub type ActivityStatus = Status;

impl ActivityRow {
    /// The `operation` of the row of an index entry that names no Operation: the nil id, which
    /// [`OperationId::new`] never makes.
    pub const NO_OPERATION: OperationId = OperationId::from_u128(0);

    /// The row of an Operation, from its folded state.
    pub fn from_state(state: &OperationState) -> Self {
        let not_undone = match &state.outcome {
            Some(Outcome::RollbackIncomplete { not_undone, .. }) => {
                not_undone.iter().map(ToString::to_string).collect()
            }
            _ => Vec::new(),
        };
        let (failed_step, failure) = match (&state.outcome, &state.attention, &state.failure) {
            (Some(Outcome::Abandoned { step, error, .. }), _, _)
            | (_, Some((step, error)), _)
            | (_, _, Some((step, error))) => (Some(step.clone()), Some(error.clone())),
            _ => (None, None),
        };
        let (abandoned_by, abandon_reason) = match &state.outcome {
            Some(Outcome::Abandoned { actor, reason, .. }) => {
                (Some(actor.clone()), Some(reason.clone()))
            }
            _ => (None, None),
        };
        ActivityRow {
            operation: state.id,
            operation_type: state.saga.clone(),
            status: Status::of(state),
            resource_type: state.resource.kind.clone(),
            resource: state.resource.name.clone(),
            actor: state.actor.clone(),
            created: Timestamp::from_unix_ms(state.created_ms),
            finished: state.finished_ms.map(Timestamp::from_unix_ms),
            failed_step,
            not_undone,
            failure,
            cancelled_by: state.cancel.as_ref().map(|(actor, _)| actor.clone()),
            cancel_reason: state.cancel.as_ref().map(|(_, reason)| reason.clone()),
            abandoned_by,
            abandon_reason,
            cancels_refused: state
                .cancel_refusals
                .iter()
                .map(|r| format!("{}: {} (refused: {})", r.actor, r.reason, r.refusal))
                .collect(),
            problem: None,
        }
    }

    /// The damaged row of an Operation whose records could not be read or folded, saying why.
    /// Only the id is known: the creation time is the one in the id.
    pub fn damaged(operation: OperationId, problem: impl fmt::Display) -> Self {
        ActivityRow {
            operation,
            operation_type: String::new(),
            status: Status::Damaged,
            resource_type: String::new(),
            resource: String::new(),
            actor: String::new(),
            created: Timestamp::from_unix_ms(operation.created_ms()),
            finished: None,
            failed_step: None,
            not_undone: Vec::new(),
            failure: None,
            cancelled_by: None,
            cancel_reason: None,
            abandoned_by: None,
            abandon_reason: None,
            cancels_refused: Vec::new(),
            problem: Some(problem.to_string()),
        }
    }

    /// The damaged row of an index entry that names no Operation (its key or value does not
    /// decode), saying why: its `operation` is [`ActivityRow::NO_OPERATION`].
    pub fn damaged_entry(problem: impl fmt::Display) -> Self {
        ActivityRow { created: Timestamp::UNIX_EPOCH, ..Self::damaged(Self::NO_OPERATION, problem) }
    }

    /// Whether the row is of an Operation: false only for the row of an index entry that names
    /// none, whose id and creation time cells are empty.
    pub fn names_operation(&self) -> bool {
        !(self.problem.is_some() && self.operation == Self::NO_OPERATION)
    }

    /// The duration in seconds, once finished.
    pub fn duration_secs(&self) -> Option<f64> {
        self.finished.map(|f| f.unix_ms().saturating_sub(self.created.unix_ms()) as f64 / 1000.0)
    }

    /// The cells, in [`ACTIVITY_COLUMNS`] order, before neutralisation. An absent value is an
    /// empty cell; `not undone` and `cancels refused` join their items with `; `.
    pub fn cells(&self) -> [String; 18] {
        let named = self.names_operation();
        [
            if named { self.operation.to_string() } else { String::new() },
            self.operation_type.clone(),
            self.status.to_string(),
            self.resource_type.clone(),
            self.resource.clone(),
            self.actor.clone(),
            if named { self.created.to_string() } else { String::new() },
            self.finished.map(|t| t.to_string()).unwrap_or_default(),
            self.duration_secs().map(|d| format!("{d:.3}")).unwrap_or_default(),
            self.failed_step.clone().unwrap_or_default(),
            self.not_undone.join("; "),
            self.failure.clone().unwrap_or_default(),
            self.cancelled_by.clone().unwrap_or_default(),
            self.cancel_reason.clone().unwrap_or_default(),
            self.abandoned_by.clone().unwrap_or_default(),
            self.abandon_reason.clone().unwrap_or_default(),
            self.cancels_refused.join("; "),
            self.problem.clone().unwrap_or_default(),
        ]
    }
}

/// The rows of every Operation of `environment` created in `[since, until)`, in creation
/// order, including Operations on resources deleted since. Served from the store's environment
/// index: only those Operations' records are read.
///
/// An Operation whose records cannot be read (a corrupt record, a gap, or an index entry naming
/// an Operation the store does not have) or do not fold (an illegal log) gets a
/// [damaged](ActivityRow::damaged) row in its place, with the error's message; so does, at the
/// end, each index entry that names no Operation ([`Listing::damaged`]). An Operation whose
/// `OperationCreated` record names another environment is left out, even when the rest of its
/// log is illegal.
///
/// # Errors
///
/// When the store cannot list the environment, or is unavailable
/// ([`StoreError::Unavailable`] or [`StoreError::Transient`]) while an Operation is read: those
/// say nothing about the Operation, and the same call may succeed later.
///
/// [`Listing::damaged`]: crate::store::Listing::damaged
pub async fn activity_report(
    store: &dyn Store,
    environment: &str,
    since: Timestamp,
    until: Timestamp,
) -> Result<Vec<ActivityRow>> {
    let listing = store.list_environment(environment, since.unix_ms(), until.unix_ms()).await?;
    let mut rows = Vec::with_capacity(listing.ids.len() + listing.damaged.len());
    for id in listing.ids {
        let records = match store.read(id).await {
            Ok(records) => records,
            Err(e @ (StoreError::Unavailable(_) | StoreError::Transient { .. })) => {
                return Err(e.into())
            }
            Err(e) => {
                rows.push(ActivityRow::damaged(id, e));
                continue;
            }
        };
        match OperationState::fold(id, &records) {
            Ok(state) if state.environment == environment => {
                rows.push(ActivityRow::from_state(&state))
            }
            Ok(_) => {}
            Err(e) => {
                if let Some(row) = illegal_log_row(id, records.first(), environment, &e) {
                    rows.push(row);
                }
            }
        }
    }
    rows.extend(listing.damaged.iter().map(ActivityRow::damaged_entry));
    Ok(rows)
}

/// The damaged row of an Operation whose log does not fold, with what its `OperationCreated`
/// record says if that is legal; `None` if that record puts it in another environment.
fn illegal_log_row(
    id: OperationId,
    first: Option<&Record>,
    environment: &str,
    error: &Error,
) -> Option<ActivityRow> {
    let mut row = ActivityRow::damaged(id, error);
    if let Some(created) = first.and_then(|r| OperationState::created(r).ok()) {
        if created.id != id {
            return Some(row);
        }
        if created.environment != environment {
            return None;
        }
        row.operation_type = created.saga;
        row.resource_type = created.resource.kind;
        row.resource = created.resource.name;
        row.actor = created.actor;
        row.created = Timestamp::from_unix_ms(created.created_ms);
    }
    Some(row)
}

/// Whether a spreadsheet may drop `c` from the start of a cell before it decides whether the
/// cell is a formula: Unicode whitespace (spaces, line feed, no-break spaces), control
/// characters (NUL and the like), and the invisible format characters (zero-width spaces and
/// joiners, the byte order mark, direction marks, word joiner, variation selectors, tags).
fn may_be_trimmed(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// Whether `c` may start a formula: `=`, `+`, `-`, `@`, a tab or a carriage return, or a
/// compatibility form of one of the four signs (fullwidth, small, superscript and subscript
/// forms, and the minus sign U+2212) that a spreadsheet may fold to it.
fn starts_formula(c: char) -> bool {
    matches!(
        c,
        '=' | '+'
            | '-'
            | '@'
            | '\t'
            | '\r'
            | '\u{FF1D}' // ＝
            | '\u{FF0B}' // ＋
            | '\u{FF0D}' // －
            | '\u{FF20}' // ＠
            | '\u{FE66}' // ﹦
            | '\u{FE62}' // ﹢
            | '\u{FE63}' // ﹣
            | '\u{FE6B}' // ﹫
            | '\u{207A}' // ⁺
            | '\u{207B}' // ⁻
            | '\u{207C}' // ⁼
            | '\u{208A}' // ₊
            | '\u{208B}' // ₋
            | '\u{208C}' // ₌
            | '\u{2212}' // −
    )
}

/// Makes a cell safe to open in a spreadsheet by giving a leading `'` to a cell that would be
/// evaluated as a formula: one that starts with `=`, `+`, `-`, `@`, a tab or a carriage return,
/// or with a fullwidth, small or other compatibility form of those signs (`＝＋－＠`, `﹦﹢﹣﹫`,
/// super- and subscripts, U+2212), also after any run of characters a spreadsheet may trim or
/// ignore first (whitespace including line feeds and no-break spaces, control characters such as
/// NUL, zero-width spaces and joiners, the byte order mark). A harmless cell such as `-1` is
/// neutralised too; every other cell is returned unchanged.
pub fn neutralise_cell(cell: &str) -> Cow<'_, str> {
    for c in cell.chars() {
        if starts_formula(c) {
            return format!("'{cell}").into();
        }
        if !may_be_trimmed(c) {
            break;
        }
    }
    cell.into()
}

/// Writes rows as RFC 4180 CSV (CRLF line ends, quoting as needed) with a header line of
/// [`ACTIVITY_COLUMNS`], every cell of [`ActivityRow::cells`] neutralised with
/// [`neutralise_cell`]. Damaged rows are written like the others.
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

/// The activity report of the ISO week that contains `at` ([`Timestamp::iso_week`]).
pub async fn weekly_activity_report(
    store: &dyn Store,
    environment: &str,
    at: Timestamp,
) -> Result<Vec<ActivityRow>> {
    let week = at.iso_week();
    activity_report(store, environment, week.since, week.until).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neutralised(cell: &str) -> bool {
        neutralise_cell(cell) == format!("'{cell}")
    }

    #[test]
    fn neutralises_formulas() {
        assert_eq!(neutralise_cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        for c in ["+1", "-1", "@a", "\tx", "\rx", "\t", "\r", "=", "-"] {
            assert!(neutralised(c), "{c:?}");
        }
        assert_eq!(neutralise_cell("web"), "web");
        assert_eq!(neutralise_cell(""), "");
    }

    /// Every character a spreadsheet may trim before it looks for a formula.
    const TRIMMED: [(char, &str); 16] = [
        (' ', "space"),
        ('\n', "line feed"),
        ('\u{FEFF}', "byte order mark"),
        ('\u{200B}', "zero-width space"),
        ('\u{200C}', "zero-width non-joiner"),
        ('\u{200D}', "zero-width joiner"),
        ('\u{2060}', "word joiner"),
        ('\u{00A0}', "no-break space"),
        ('\u{202F}', "narrow no-break space"),
        ('\u{2007}', "figure space"),
        ('\0', "NUL"),
        ('\u{3000}', "ideographic space"),
        ('\u{2028}', "line separator"),
        ('\u{000B}', "vertical tab"),
        ('\u{0085}', "next line"),
        ('\u{001F}', "unit separator"),
    ];

    /// Every character that may start a formula.
    const SIGNS: [(char, &str); 21] = [
        ('=', "equals"),
        ('+', "plus"),
        ('-', "minus"),
        ('@', "at"),
        ('\t', "tab"),
        ('\r', "carriage return"),
        ('\u{FF1D}', "fullwidth equals"),
        ('\u{FF0B}', "fullwidth plus"),
        ('\u{FF0D}', "fullwidth minus"),
        ('\u{FF20}', "fullwidth at"),
        ('\u{FE66}', "small equals"),
        ('\u{FE62}', "small plus"),
        ('\u{FE63}', "small minus"),
        ('\u{FE6B}', "small at"),
        ('\u{207A}', "superscript plus"),
        ('\u{207B}', "superscript minus"),
        ('\u{207C}', "superscript equals"),
        ('\u{208A}', "subscript plus"),
        ('\u{208B}', "subscript minus"),
        ('\u{208C}', "subscript equals"),
        ('\u{2212}', "minus sign"),
    ];

    #[test]
    fn neutralises_every_formula_sign_alone_and_after_trimmed_characters() {
        for (sign, what) in SIGNS {
            let cell = format!("{sign}1+1");
            assert!(neutralised(&cell), "{what}: {cell:?}");
            for (trimmed, before) in TRIMMED {
                let cell = format!("{trimmed}{sign}HYPERLINK(\"x\")");
                assert!(neutralised(&cell), "{before} then {what}: {cell:?}");
                let cell = format!("{trimmed}{trimmed} {sign}1");
                assert!(neutralised(&cell), "a run of {before} then {what}: {cell:?}");
            }
        }
        // A run mixing several of them.
        assert!(neutralised("\u{FEFF}\u{200B}\u{00A0} \n\0\u{FF1D}1"));
    }

    #[test]
    fn leaves_plain_cells_and_trimmed_characters_before_plain_text_unchanged() {
        for cell in ["web", "alice", "1-2", "a=b", "x@y", "bob (ops)", "\u{FF21}", "'=1"] {
            assert_eq!(neutralise_cell(cell), cell, "{cell:?}");
        }
        for (trimmed, what) in TRIMMED {
            let cell = format!("{trimmed}web");
            assert_eq!(neutralise_cell(&cell), cell, "{what}");
            let cell = format!("{trimmed}");
            assert_eq!(neutralise_cell(&cell), cell, "{what} alone");
        }
        // A sign after the first visible character is harmless.
        assert_eq!(neutralise_cell(" web=1"), " web=1");
    }

    #[test]
    fn a_damaged_entry_row_has_empty_id_and_time_cells() {
        let row = ActivityRow::damaged_entry("corrupt data in by_environment: bad key");
        assert!(!row.names_operation());
        let cells = row.cells();
        assert_eq!(cells.len(), ACTIVITY_COLUMNS.len());
        assert_eq!(cells[0], "");
        assert_eq!(cells[2], "damaged");
        assert_eq!(cells[6], "");
        let problem = ACTIVITY_COLUMNS.iter().position(|c| *c == "problem").expect("a column");
        assert_eq!(cells[problem], "corrupt data in by_environment: bad key");
        let id = OperationId::new();
        let row = ActivityRow::damaged(id, "gone");
        assert!(row.names_operation());
        assert_eq!(row.cells()[0], id.to_string());
        assert_eq!(row.created.unix_ms(), id.created_ms());
    }

    #[test]
    fn statuses_display_the_report_words() {
        let words: Vec<String> = [
            Status::Succeeded,
            Status::RolledBack,
            Status::RollbackIncomplete,
            Status::Running,
            Status::RollingBack,
            Status::NeedsAttention,
            Status::Abandoned,
            Status::Damaged,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        let expected = [
            "succeeded",
            "rolled back",
            "rollback incomplete",
            "running",
            "rolling back",
            "needs attention",
            "abandoned",
            "damaged",
        ];
        assert_eq!(words, expected);
    }
}
