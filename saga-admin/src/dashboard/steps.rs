//! The timeline of an Operation's page: a row per step, with every attempt of its `execute`
//! (when, how it ended, how long, its error) and how its compensation went.

use maud::{html, Markup};

use crate::api::{AttemptResult, CompensationStatus, OperationDetail, StepStatus, StepTimeline};

use super::layout::short_time;

/// The table (`#timeline`, replaced in place by `operation.js` when the stream ends).
pub(super) fn table(op: &OperationDetail) -> Markup {
    html! {
        div.scroll.steps #timeline {
            table {
                thead {
                    tr {
                        th { "Step" }
                        th { "Status" }
                        th { "Attempts (UTC)" }
                        th { "Compensation" }
                    }
                }
                tbody {
                    @for step in &op.steps {
                        (row(step))
                    }
                    @if op.steps.is_empty() {
                        tr { td.muted colspan="4" { "No step started yet." } }
                    }
                }
            }
        }
    }
}

fn row(step: &StepTimeline) -> Markup {
    let status = match step.status {
        StepStatus::Running => "running",
        StepStatus::Retrying => "retrying",
        StepStatus::Succeeded => "succeeded",
        StepStatus::Failed => "failed",
    };
    html! {
        tr data-step=(step.name) {
            td { (step.name) }
            td { span.badge.(status) { (status) } }
            td.attempts {
                @for a in &step.attempts {
                    div {
                        "#" (a.attempt) " " (short_time(&a.started_at)) " " (result(a.result))
                        @if let Some(ms) = a.duration_ms {
                            " (" (ms) " ms)"
                        }
                        @if let Some(error) = &a.error {
                            ": " span.error { (error) }
                        }
                    }
                }
            }
            td { (compensation(step)) }
        }
    }
}

/// How the compensation went, its attempts' errors, and why the step was not undone.
fn compensation(step: &StepTimeline) -> Markup {
    html! {
        @match step.compensation.status {
            CompensationStatus::NotStarted => { "—" }
            CompensationStatus::Running => { "compensating" }
            CompensationStatus::Retrying => { "retrying compensation" }
            CompensationStatus::Succeeded => { "compensated" }
            CompensationStatus::Failed => { span.error { "compensation failed" } }
        }
        @for a in &step.compensation.attempts {
            @if let Some(error) = &a.error {
                div.error { "#" (a.attempt) ": " (error) }
            }
        }
        @if let Some(reason) = &step.not_undone {
            div.error { "not undone: " (reason) }
        }
    }
}

fn result(result: AttemptResult) -> &'static str {
    match result {
        AttemptResult::Running => "running",
        AttemptResult::Succeeded => "succeeded",
        AttemptResult::FailedWillRetry => "failed, retried",
        AttemptResult::Failed => "failed",
        AttemptResult::FailedWithoutEffect => "failed without effect",
        AttemptResult::Unknown => "cut short",
    }
}
