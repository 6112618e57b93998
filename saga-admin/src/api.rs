//! The JSON bodies of the HTTP API, as the router writes them and a client (the `saga` CLI)
//! reads them. Times are RFC 3339 UTC strings with milliseconds; absent values are `null`.

use saga_core::{NotUndone, NotUndoneReason, Outcome};
use serde::{Deserialize, Serialize};

/// Where an Operation stands, as the API spells it: saga-core's one [`Status`] (`snake_case`
/// in JSON and in the `status` filter, which also takes the words with spaces or hyphens;
/// `Display` gives the words of the activity report, `rolled back`).
pub use saga_core::{Status, UnknownStatus};

/// The body of every error answer: a machine-readable `error` code, a `message` for people,
/// and, for a bad request, the `parameter` at fault (`id`, `since`, `status`, `reason`...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// `unauthorized`, `forbidden`, `not_found`, `bad_request`, `unsupported_media_type`,
    /// `already_finished`, `past_point_of_no_return`, `conflict`, `unavailable` or `internal`.
    pub error: String,
    /// What went wrong, in words.
    pub message: String,
    /// The parameter at fault, for a bad request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
}

/// `GET /api/v1/me`: what the caller's token grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Me {
    /// Who the token belongs to.
    pub principal: String,
    /// Whether it sees every environment.
    pub all_environments: bool,
    /// The environments it sees, when not all.
    pub environments: Vec<String>,
    /// Whether it may cancel.
    pub may_cancel: bool,
}

/// One Operation in a listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperationSummary {
    /// Its id (26 characters of Crockford base 32); empty for a damaged index entry that names
    /// no Operation.
    pub id: String,
    /// Its environment.
    pub environment: String,
    /// Its saga's name (the operation type).
    pub saga: String,
    /// Where it stands.
    pub status: Status,
    /// The resource's type.
    pub resource_type: String,
    /// The resource's name.
    pub resource: String,
    /// Who started it.
    pub actor: String,
    /// When it was created.
    pub created_at: String,
    /// When it finished, if it did.
    pub finished_at: Option<String>,
    /// How long it took, once finished.
    pub duration_seconds: Option<f64>,
    /// The step whose failure started the rollback, or that needs attention.
    pub failed_step: Option<String>,
    /// That step's error.
    pub failure: Option<String>,
    /// What the rollback did not undo, each with its reason.
    pub not_undone: Vec<String>,
    /// Who cancelled it, if anyone did.
    pub cancelled_by: Option<String>,
    /// Why a damaged Operation could not be read.
    pub problem: Option<String>,
}

/// `GET /api/v1/environments/{env}/operations`: one page of Operations, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperationPage {
    /// The environment.
    pub environment: String,
    /// The Operations of this page, newest first.
    pub operations: Vec<OperationSummary>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/operations/{id}`: one Operation, its step timeline and how it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperationDetail {
    /// Its id.
    pub id: String,
    /// Its environment.
    pub environment: String,
    /// Its saga's name.
    pub saga: String,
    /// Its saga's version.
    pub version: u32,
    /// Where it stands.
    pub status: Status,
    /// The resource's type.
    pub resource_type: String,
    /// The resource's name.
    pub resource: String,
    /// Who started it.
    pub actor: String,
    /// When it was created.
    pub created_at: String,
    /// When it finished, if it did.
    pub finished_at: Option<String>,
    /// The cancel, if one was recorded.
    pub cancel: Option<CancelInfo>,
    /// A cancel request pending in the store, which the executor running the Operation (or the
    /// next to claim it) has not answered yet: it rolls back, or records the refusal.
    #[serde(default)]
    pub cancel_pending: Option<CancelInfo>,
    /// The cancel requests refused because they came after the point of no return, each with
    /// who asked, why, and why it was refused.
    #[serde(default)]
    pub cancels_refused: Vec<CancelRefusal>,
    /// The step failure that started the rollback, if any.
    pub failure: Option<StepError>,
    /// The step that needs attention, while it does.
    pub attention: Option<StepError>,
    /// How it ended, once it did.
    pub outcome: Option<OutcomeInfo>,
    /// What was not undone (the same as in `outcome`, empty until it ended).
    pub not_undone: Vec<NotUndoneInfo>,
    /// Its steps, in the order they first started, each with its attempts and compensation.
    pub steps: Vec<StepTimeline>,
    /// The Operation ahead of it on its resource, while it waits for its turn.
    pub waiting_for: Option<String>,
    /// Whether it runs on the executor behind this API now.
    pub running_here: bool,
    /// Why the executor cannot vouch for more than the records shown (it halted on a store
    /// failure, or cannot be recovered), if so.
    pub problem: Option<String>,
}

/// A recorded cancel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelInfo {
    /// Who asked.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When it was recorded, if the record is in the log.
    pub at: Option<String>,
}

/// A refused cancel request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRefusal {
    /// Who asked.
    pub actor: String,
    /// Why they asked.
    pub reason: String,
    /// When they asked.
    pub requested_at: String,
    /// Why it was refused.
    pub refusal: String,
    /// When the refusal was recorded.
    pub at: String,
}

/// A step and its error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    /// The step.
    pub step: String,
    /// Its error.
    pub error: String,
}

/// How an Operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeInfo {
    /// `succeeded`, `rolled_back`, `rollback_incomplete` or `abandoned`.
    pub status: Status,
    /// The outcome in words, as the log's last line says it.
    pub text: String,
    /// Why it rolled back, if it did.
    pub cause: Option<String>,
    /// What stays.
    pub not_undone: Vec<NotUndoneInfo>,
}

impl OutcomeInfo {
    /// The view of an outcome.
    pub fn of(outcome: &Outcome) -> Self {
        let (cause, not_undone) = match outcome {
            Outcome::Succeeded => (None, Vec::new()),
            Outcome::RolledBack { cause } => (Some(cause.to_string()), Vec::new()),
            Outcome::RollbackIncomplete { cause, not_undone } => {
                (Some(cause.to_string()), not_undone.iter().map(NotUndoneInfo::of).collect())
            }
            _ => (None, Vec::new()),
        };
        let text = match outcome {
            Outcome::RolledBack { cause } => format!("rolled back ({cause})"),
            other => other.to_string(),
        };
        OutcomeInfo { status: Status::of_outcome(outcome), text, cause, not_undone }
    }
}

/// A change the rollback did not undo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotUndoneInfo {
    /// The step whose change stays.
    pub step: String,
    /// Whether it stays because the step is irreversible (else its compensation failed).
    pub irreversible: bool,
    /// Why, in words.
    pub reason: String,
}

impl NotUndoneInfo {
    /// The view of a change not undone.
    pub fn of(item: &NotUndone) -> Self {
        let (irreversible, reason) = match &item.reason {
            NotUndoneReason::Irreversible => (true, "irreversible".to_owned()),
            NotUndoneReason::CompensationFailed(e) => (false, format!("compensation failed: {e}")),
        };
        NotUndoneInfo { step: item.step.clone(), irreversible, reason }
    }
}

/// One step's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTimeline {
    /// The step.
    pub name: String,
    /// Where its `execute` stands.
    pub status: StepStatus,
    /// When its first attempt started.
    pub started_at: String,
    /// When its last attempt ended, if it did.
    pub ended_at: Option<String>,
    /// Its `execute` attempts, in order.
    pub attempts: Vec<Attempt>,
    /// Its compensation.
    pub compensation: CompensationTimeline,
    /// Why its change stays, if the rollback did not undo it.
    pub not_undone: Option<String>,
}

/// Where a step's `execute` stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// An attempt runs (or its outcome is unknown after a crash).
    Running,
    /// An attempt failed and another follows.
    Retrying,
    /// It succeeded.
    Succeeded,
    /// It failed for good.
    Failed,
}

/// A step's compensation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompensationTimeline {
    /// Where it stands.
    pub status: CompensationStatus,
    /// Its attempts, in order.
    pub attempts: Vec<Attempt>,
}

/// Where a step's `compensate` stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompensationStatus {
    /// Not started (nothing to undo yet, or a step the rollback skips).
    NotStarted,
    /// An attempt runs.
    Running,
    /// An attempt failed and another follows.
    Retrying,
    /// The change was undone.
    Succeeded,
    /// It failed for good; the change stays.
    Failed,
}

/// One attempt of a step's `execute` or `compensate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The attempt's number, from 1.
    pub attempt: u32,
    /// When it started.
    pub started_at: String,
    /// When it ended, if its end is recorded.
    pub ended_at: Option<String>,
    /// How long it took, if its end is recorded.
    pub duration_ms: Option<u64>,
    /// How it ended.
    pub result: AttemptResult,
    /// Its error, if it failed.
    pub error: Option<String>,
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptResult {
    /// Not ended yet.
    Running,
    /// It succeeded.
    Succeeded,
    /// It failed; another attempt follows.
    FailedWillRetry,
    /// It failed for good.
    Failed,
    /// It failed saying it had no effect.
    FailedWithoutEffect,
    /// Its end is not recorded and another attempt started (a crash or shutdown cut it short).
    Unknown,
}

/// `POST /api/v1/operations/{id}/cancel`: the request body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelBody {
    /// Who cancels; the token's principal when absent.
    #[serde(default)]
    pub actor: Option<String>,
    /// Why (required, not blank).
    pub reason: String,
}

/// The answer to a cancel (202 Accepted), once what it says is durable; follow the log stream
/// for the verdict. A refusal is an error answer instead (409, saying why; past the point of
/// no return the refusal is recorded in the Operation's log).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelAccepted {
    /// The Operation.
    pub operation: String,
    /// Who cancelled.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// What the cancel did: `rolling back` (recorded in the log: it rolls back), `already
    /// rolling back` (nothing recorded), or `requested` (a request durable in the store, which
    /// the executor running the Operation answers: it rolls back, or records why it refused).
    #[serde(default)]
    pub answer: String,
    /// The request pending in the store, when `answer` is `requested`: this one, or an earlier
    /// one that stands for it.
    #[serde(default)]
    pub pending: Option<CancelInfo>,
}

/// The data of a `line` event of the log stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvent {
    /// The line's position in the Operation's log (also the event's `id`).
    pub seq: u64,
    /// When it was written.
    pub at: String,
    /// `DEBUG`, `INFO`, `WARN` or `ERROR`.
    pub level: String,
    /// `engine` or `step`.
    pub source: String,
    /// The step it is about, if any.
    pub step: Option<String>,
    /// The message.
    pub message: String,
    /// The whole line as the log download writes it.
    pub text: String,
}

/// The data of the `end` event that closes the log stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndEvent {
    /// Where the Operation stands.
    pub status: Status,
    /// How it ended, if it did (it may also stop needing attention, or halt).
    pub outcome: Option<OutcomeInfo>,
    /// Why the stream ends without an outcome, if it does.
    pub problem: Option<String>,
}

/// Unix milliseconds as the API spells times: RFC 3339 in UTC with milliseconds.
pub(crate) fn rfc3339(ms: u64) -> String {
    saga_core::Timestamp::from_unix_ms(ms).to_string()
}
