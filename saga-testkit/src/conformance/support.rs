//! What every check uses: a context that names the check in its failures, and records and
//! lines to write.

use std::fmt::{Debug, Display};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use saga_core::log::{LogLevel, LogLine, LogSource, Record, RecordKind};
use saga_core::store::{CheckReport, Lease, Store, StoreError};
use saga_core::{OperationId, Outcome, Resource};

use super::{HANG, LONG};

/// One check running against one store: its name for messages, and assertions that panic
/// with it.
pub(super) struct Ctx<S: ?Sized> {
    pub(super) check: &'static str,
    pub(super) store: Arc<S>,
}

impl<S: Store + ?Sized> Ctx<S> {
    pub(super) fn new(check: &'static str, store: Arc<S>) -> Self {
        Ctx { check, store }
    }

    /// Runs the check's body with a bound on its time, then `check(false)`, which must find
    /// nothing.
    pub(super) async fn run<'a, F, Fut>(&'a self, body: F)
    where
        F: FnOnce(&'a Self) -> Fut,
        Fut: Future<Output = ()> + 'a,
    {
        let all = async {
            body(self).await;
            let report = self.ok("check(false) at the end", self.store.check(false).await);
            if !report.findings.is_empty() {
                self.fail(format!(
                    "check(false) at the end of the check found {}",
                    show_report(&report)
                ));
            }
        };
        if tokio::time::timeout(HANG, all).await.is_err() {
            self.fail(format!("did not finish within {} s", HANG.as_secs()));
        }
    }

    pub(super) fn fail(&self, message: impl Display) -> ! {
        panic!("store conformance check `{}` failed: {message}", self.check)
    }

    pub(super) fn ok<T>(&self, what: &str, result: Result<T, StoreError>) -> T {
        match result {
            Ok(value) => value,
            Err(e) => self.fail(format!("{what}: unexpected error {e:?} ({e})")),
        }
    }

    pub(super) fn equal<T: PartialEq + Debug>(&self, got: T, expected: T, what: &str) {
        if got != expected {
            self.fail(format!("{what}: expected {expected:?}, got {got:?}"));
        }
    }

    /// The value of a task that returns `Err(message)` when its part of the check fails.
    pub(super) fn joined<T>(&self, joined: Result<Result<T, String>, tokio::task::JoinError>) -> T {
        match joined {
            Ok(Ok(value)) => value,
            Ok(Err(message)) => self.fail(message),
            Err(e) => self.fail(format!("a task of the check failed: {e}")),
        }
    }

    /// Creates an Operation of `environment` at `at_ms` for `owner`.
    pub(super) async fn create(
        &self,
        environment: &str,
        at_ms: u64,
        owner: &str,
    ) -> (OperationId, Lease, Record) {
        let record = created(OperationId::new(), environment, at_ms);
        let what = format!("creating an Operation in {} at {at_ms}", show_name(environment));
        let lease = self.ok(&what, self.store.create(&record, owner, LONG).await);
        (record.operation, lease, record)
    }

    pub(super) async fn read(&self, id: OperationId, when: &str) -> Vec<Record> {
        self.ok(&format!("reading {id} {when}"), self.store.read(id).await)
    }

    pub(super) async fn assert_records(&self, id: OperationId, expected: &[Record], when: &str) {
        let records = self.read(id, when).await;
        if records != expected {
            self.fail(format!(
                "reading {id} {when}: expected {}, got {}",
                show_records(expected),
                show_records(&records)
            ));
        }
    }

    /// `id` does not exist: `read` is `NotFound`, and neither listing names it.
    pub(super) async fn assert_absent(&self, id: OperationId, when: &str) {
        match self.store.read(id).await {
            Err(StoreError::NotFound(x)) if x == id => {}
            other => {
                self.fail(format!("reading {id} {when}: expected NotFound, got {}", brief(&other)))
            }
        }
        let listing = self.ok("listing unfinished", self.store.list_unfinished().await);
        if listing.ids.contains(&id) {
            self.fail(format!("list_unfinished {when} names {id}, which should not exist"));
        }
    }

    pub(super) async fn assert_unfinished(&self, expected: &[OperationId], when: &str) {
        let listing =
            self.ok(&format!("listing unfinished {when}"), self.store.list_unfinished().await);
        if !listing.damaged.is_empty() {
            self.fail(format!("list_unfinished {when}: damaged entries {:?}", listing.damaged));
        }
        if listing.ids != expected {
            self.fail(format!(
                "list_unfinished {when}: expected {:?} (in id order), got {:?}",
                expected, listing.ids
            ));
        }
    }

    pub(super) async fn assert_env(
        &self,
        environment: &str,
        since: u64,
        until: u64,
        expected: &[OperationId],
        when: &str,
    ) {
        let call = format!("list_environment({}, {since}, {until})", show_name(environment));
        let call = if when.is_empty() { call } else { format!("{call} {when}") };
        let listing = self.ok(&call, self.store.list_environment(environment, since, until).await);
        if !listing.damaged.is_empty() {
            self.fail(format!("{call}: damaged entries {:?}", listing.damaged));
        }
        if listing.ids != expected {
            self.fail(format!(
                "{call}: expected {expected:?} (in creation order), got {:?}",
                listing.ids
            ));
        }
    }

    pub(super) async fn assert_log(&self, id: OperationId, expected: &[LogLine], when: &str) {
        let lines =
            self.ok(&format!("reading the log of {id} {when}"), self.store.read_log(id).await);
        if lines != expected {
            self.fail(format!(
                "read_log({id}) {when}: expected lines {:?}, got {:?}",
                expected.iter().map(|l| (l.seq, l.at_ms)).collect::<Vec<_>>(),
                lines.iter().map(|l| (l.seq, l.at_ms)).collect::<Vec<_>>()
            ));
        }
    }

    pub(super) fn out_of_sequence<T: Debug>(
        &self,
        result: &Result<T, StoreError>,
        id: OperationId,
        expected: u64,
        got: u64,
        what: &str,
    ) {
        match result {
            Err(StoreError::OutOfSequence { operation, expected: e, got: g })
                if *operation == id && *e == expected && *g == got => {}
            other => self.fail(format!(
                "{what}: expected OutOfSequence {{ operation: {id}, expected: {expected}, \
                 got: {got} }}, got {}",
                brief(other)
            )),
        }
    }

    pub(super) fn refused<T: Debug>(&self, result: &Result<T, StoreError>, what: &str) {
        if let Ok(value) = result {
            self.fail(format!("{what}: expected an error, got Ok({value:?})"));
        }
    }

    pub(super) fn owned<T: Debug>(&self, result: &Result<T, StoreError>, holder: &str, what: &str) {
        match result {
            Err(StoreError::Owned { holder: h, .. }) if h == holder => {}
            other => self.fail(format!(
                "{what}: expected Owned {{ holder: {holder:?} }}, got {}",
                brief(other)
            )),
        }
    }

    pub(super) fn fenced<T: Debug>(
        &self,
        result: &Result<T, StoreError>,
        lease: &Lease,
        holder: &str,
        what: &str,
    ) {
        match result {
            Err(StoreError::Fenced { operation, epoch, holder: h })
                if *operation == lease.operation && *epoch == lease.epoch && h == holder => {}
            other => self.fail(format!(
                "{what}: expected Fenced {{ epoch: {}, holder: {holder:?} }}, got {}",
                lease.epoch,
                brief(other)
            )),
        }
    }
}

/// Waits until the clock is past `ms`, and `margin` more (at most 2 s: a store whose clock is
/// far ahead fails the check rather than hang it).
pub(super) async fn sleep_past(ms: u64, margin: Duration) {
    let now = saga_core::Timestamp::now().unix_ms();
    let wait = Duration::from_millis(ms.saturating_sub(now).saturating_add(1)) + margin;
    tokio::time::sleep(wait.min(Duration::from_secs(2))).await;
}

/// A result for a message: the value or the error's variant and text.
pub(super) fn brief<T: Debug>(result: &Result<T, StoreError>) -> String {
    match result {
        Ok(value) => format!("Ok({value:?})"),
        Err(e) => format!("Err({e:?})"),
    }
}

/// Records for a message: their sequence numbers and kinds (not a 256 KiB output).
pub(super) fn show_records(records: &[Record]) -> String {
    let shown: Vec<String> =
        records.iter().map(|r| format!("{}:{}@{}", r.seq, r.kind.name(), r.operation)).collect();
    format!("{} records [{}]", records.len(), shown.join(", "))
}

pub(super) fn show_report(report: &CheckReport) -> String {
    let findings: Vec<String> = report.findings.iter().map(ToString::to_string).collect();
    format!(
        "{} findings of {} Operations: {}",
        findings.len(),
        report.operations,
        findings.join("; ")
    )
}

/// The `OperationCreated` record of `id` in `environment`, created at `at_ms`.
pub(super) fn created(id: OperationId, environment: &str, at_ms: u64) -> Record {
    Record {
        operation: id,
        seq: 0,
        at_ms,
        kind: RecordKind::OperationCreated {
            saga: "conformance".into(),
            version: 1,
            params: br#"{"size":3}"#.to_vec(),
            environment: environment.into(),
            resource: Resource::new("app", "web"),
            actor: "tester".into(),
        },
    }
}

pub(super) fn record(id: OperationId, seq: u64, kind: RecordKind) -> Record {
    Record { operation: id, seq, at_ms: 1_000_000 + seq, kind }
}

pub(super) fn started(id: OperationId, seq: u64) -> Record {
    record(id, seq, RecordKind::StepStarted { step: format!("step-{seq}"), attempt: 1 })
}

pub(super) fn finished(id: OperationId, seq: u64) -> Record {
    record(id, seq, RecordKind::OperationFinished { outcome: Outcome::Succeeded })
}

pub(super) fn line(id: OperationId, seq: u64, at_ms: u64) -> LogLine {
    LogLine {
        operation: id,
        seq,
        at_ms,
        level: LogLevel::Info,
        source: LogSource::Engine,
        step: Some("a".into()),
        message: format!("line {seq}"),
    }
}

/// A name for messages: quoted and escaped, cut when long.
pub(super) fn show_name(name: &str) -> String {
    if name.len() > 40 {
        let head: String = name.chars().take(16).collect();
        format!("{:?}... ({} bytes)", head, name.len())
    } else {
        format!("{name:?}")
    }
}
