//! The consistency check: each Operation's columns (unfinished flag, environment index, resource
//! queue, next sequence number, lease, cancel request) reconciled with its records, and the log
//! lines with the Operations; repaired from the records alone. Records are never changed.
//!
//! Without repair, the whole check reads one snapshot (`REPEATABLE READ`), so that an append
//! (one transaction) is either wholly in it or not. With repair, each Operation is checked and
//! repaired in a transaction of its own that locks its row, so that no append of it runs
//! halfway; the others go on.

use std::collections::HashMap;

use saga_core::log::Record;
use saga_core::store::{CheckReport, ExpectedMarks, Finding, Problem, StoreError};
use saga_core::OperationId;
use tokio_postgres::{GenericClient, IsolationLevel, Row};

use crate::connect::PostgresStore;
use crate::error::{corrupt, pg, pool_error};
use crate::logs::decode_line;
use crate::records::decode_row;
use crate::sql::{hex, parse_id, to_i64};

/// How many Operations (or log lines) one query of the check reads.
const PAGE: i64 = 256;

/// The columns a check reads of an Operation.
const COLUMNS: &str = "id, environment, created_ms, resource_kind, resource_name, finished, \
                       next_seq, lease_owner, cancel_actor, cancel_reason, cancel_at_ms";

/// A repair, from the records alone.
#[derive(Debug)]
enum Fix {
    Finished(bool),
    Environment { environment: Vec<u8>, created_ms: i64 },
    Resource { kind: Vec<u8>, name: Vec<u8> },
    NextSeq(i64),
    FreeLease,
    ClearCancel,
    DeleteRow,
}

/// What the check found of one Operation: problems with their repairs (`None`: not
/// repairable), and whether it has records at all.
struct Verdict {
    counted: bool,
    problems: Vec<(Problem, Option<Fix>)>,
}

impl PostgresStore {
    pub(crate) async fn check_once(&self, repair: bool) -> Result<CheckReport, StoreError> {
        let context = "checking the store";
        let mut report = CheckReport::default();
        let mut client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
        if !repair {
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(|e| pg(context, e))?;
            let mut after: Vec<u8> = Vec::new();
            loop {
                let rows = tx
                    .query(
                        &format!(
                            "SELECT {COLUMNS} FROM operations WHERE id > $1 ORDER BY id LIMIT $2"
                        ),
                        &[&after, &PAGE],
                    )
                    .await
                    .map_err(|e| pg(context, e))?;
                let Some(last) = rows.last() else { break };
                after = last.try_get(0).map_err(|e| pg(context, e))?;
                let ids: Vec<Vec<u8>> = rows
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()
                    .map_err(|e| pg(context, e))?;
                let records = tx
                    .query(
                        "SELECT operation, seq, bytes FROM records WHERE operation = ANY($1) \
                         ORDER BY operation, seq",
                        &[&ids],
                    )
                    .await
                    .map_err(|e| pg(context, e))?;
                let mut by_operation: HashMap<Vec<u8>, Vec<&Row>> = HashMap::new();
                for r in &records {
                    let op: Vec<u8> = r.try_get(0).map_err(|e| pg(context, e))?;
                    by_operation.entry(op).or_default().push(r);
                }
                for row in &rows {
                    let id: Vec<u8> = row.try_get(0).map_err(|e| pg(context, e))?;
                    let mine = by_operation.remove(&id).unwrap_or_default();
                    let verdict = judge(row, &mine)?;
                    record_verdict(&mut report, parse_id(&id, "operations").ok(), verdict, false);
                }
            }
            self.check_logs(&*tx, &mut report, false).await?;
            tx.commit().await.map_err(|e| pg(context, e))?;
            return Ok(report);
        }

        let mut after: Vec<u8> = Vec::new();
        loop {
            let ids: Vec<Vec<u8>> = client
                .query(
                    "SELECT id FROM operations WHERE id > $1 ORDER BY id LIMIT $2",
                    &[&after, &PAGE],
                )
                .await
                .map_err(|e| pg(context, e))?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()
                .map_err(|e| pg(context, e))?;
            let Some(last) = ids.last() else { break };
            after = last.clone();
            for id in ids {
                let tx = client.transaction().await.map_err(|e| pg(context, e))?;
                let row = tx
                    .query_opt(
                        &format!("SELECT {COLUMNS} FROM operations WHERE id = $1 FOR UPDATE"),
                        &[&id],
                    )
                    .await
                    .map_err(|e| pg(context, e))?;
                // Deleted since the page was read.
                let Some(row) = row else { continue };
                let records = tx
                    .query("SELECT operation, seq, bytes FROM records WHERE operation = $1 ORDER BY seq", &[&id])
                    .await
                    .map_err(|e| pg(context, e))?;
                let verdict = judge(&row, &records.iter().collect::<Vec<_>>())?;
                for (_, fix) in &verdict.problems {
                    if let Some(fix) = fix {
                        apply(&*tx, &id, fix).await?;
                    }
                }
                tx.commit().await.map_err(|e| pg(context, e))?;
                record_verdict(&mut report, parse_id(&id, "operations").ok(), verdict, true);
            }
        }
        let tx = client.transaction().await.map_err(|e| pg(context, e))?;
        self.check_logs(&*tx, &mut report, true).await?;
        tx.commit().await.map_err(|e| pg(context, e))?;
        Ok(report)
    }

    /// Log lines of no Operation, and lines that do not decode; removed when repairing.
    async fn check_logs<C: GenericClient>(
        &self,
        client: &C,
        report: &mut CheckReport,
        repair: bool,
    ) -> Result<(), StoreError> {
        let context = "checking log lines";
        let dangling = client
            .query(
                "SELECT DISTINCT l.operation FROM log_lines l \
                 WHERE NOT EXISTS (SELECT 1 FROM operations o WHERE o.id = l.operation)",
                &[],
            )
            .await
            .map_err(|e| pg(context, e))?;
        for row in &dangling {
            let id: Vec<u8> = row.try_get(0).map_err(|e| pg(context, e))?;
            if repair {
                client
                    .execute(
                        "DELETE FROM log_lines WHERE operation = $1 \
                         AND NOT EXISTS (SELECT 1 FROM operations WHERE id = $1)",
                        &[&id],
                    )
                    .await
                    .map_err(|e| pg(context, e))?;
            }
            report.findings.push(Finding {
                operation: parse_id(&id, "log_lines").ok(),
                problem: Problem::DanglingEntry { index: "logs".into() },
                repaired: repair,
            });
        }
        let (mut after_op, mut after_n): (Vec<u8>, i64) = (Vec::new(), i64::MIN);
        loop {
            let rows = client
                .query(
                    "SELECT operation, n, bytes FROM log_lines WHERE (operation, n) > ($1, $2) \
                     ORDER BY operation, n LIMIT $3",
                    &[&after_op, &after_n, &(PAGE * 4)],
                )
                .await
                .map_err(|e| pg(context, e))?;
            if rows.is_empty() {
                return Ok(());
            }
            for row in &rows {
                let op: Vec<u8> = row.try_get(0).map_err(|e| pg(context, e))?;
                let n: i64 = row.try_get(1).map_err(|e| pg(context, e))?;
                let bytes: Vec<u8> = row.try_get(2).map_err(|e| pg(context, e))?;
                let decoded = parse_id(&op, "log_lines")
                    .and_then(|id| decode_line(id, n, &bytes).map(|_| id));
                if let Err(cause) = decoded {
                    if repair {
                        client
                            .execute(
                                "DELETE FROM log_lines WHERE operation = $1 AND n = $2",
                                &[&op, &n],
                            )
                            .await
                            .map_err(|e| pg(context, e))?;
                    }
                    report.findings.push(Finding {
                        operation: parse_id(&op, "log_lines").ok(),
                        problem: Problem::DamagedEntry { index: "logs".into(), cause },
                        repaired: repair,
                    });
                }
                (after_op, after_n) = (op, n);
            }
        }
    }
}

fn record_verdict(
    report: &mut CheckReport,
    id: Option<OperationId>,
    verdict: Verdict,
    repair: bool,
) {
    if verdict.counted {
        report.operations += 1;
    }
    for (problem, fix) in verdict.problems {
        report.findings.push(Finding { operation: id, problem, repaired: repair && fix.is_some() });
    }
}

/// The problems of one Operation's row, given its records (rows `operation, seq, bytes`).
fn judge(row: &Row, records: &[&Row]) -> Result<Verdict, StoreError> {
    let context = "checking an operation";
    let get = |e| pg(context, e);
    let raw_id: Vec<u8> = row.try_get(0).map_err(get)?;
    let mut problems = Vec::new();
    let id = match parse_id(&raw_id, "operations") {
        Ok(id) => id,
        Err(cause) => {
            // Its records (if any) hang on this key: nothing to repair from.
            problems.push((Problem::DamagedEntry { index: "operations".into(), cause }, None));
            return Ok(Verdict { counted: !records.is_empty(), problems });
        }
    };
    if records.is_empty() {
        problems
            .push((Problem::DanglingEntry { index: "operations".into() }, Some(Fix::DeleteRow)));
        return Ok(Verdict { counted: false, problems });
    }
    let mut decoded: Vec<Record> = Vec::with_capacity(records.len());
    for (position, r) in records.iter().enumerate() {
        let seq: i64 = r.try_get(1).map_err(get)?;
        let bytes: Vec<u8> = r.try_get(2).map_err(get)?;
        match decode_row(id, position as u64, seq, &bytes) {
            Ok(record) => decoded.push(record),
            Err(cause) => {
                problems.push((Problem::DamagedRecords(cause), None));
                return Ok(Verdict { counted: true, problems });
            }
        }
    }
    let expected = match ExpectedMarks::of(id, &decoded) {
        Ok(expected) => expected,
        Err(cause) => {
            problems.push((Problem::DamagedRecords(cause), None));
            return Ok(Verdict { counted: true, problems });
        }
    };
    let ExpectedMarks { finished, environment, created_ms: at_ms, resource } = expected;
    let marked_finished: bool = row.try_get(5).map_err(get)?;
    let fix = Fix::Finished(!marked_finished);
    if let Some(problem) = expected.unfinished_mark_problem(!marked_finished) {
        problems.push((problem, Some(fix)));
    }
    let env: Vec<u8> = row.try_get(1).map_err(get)?;
    let created_ms: i64 = row.try_get(2).map_err(get)?;
    if env != environment.as_bytes() || created_ms != to_i64(at_ms) {
        let fix = Fix::Environment {
            environment: environment.as_bytes().to_vec(),
            created_ms: to_i64(at_ms),
        };
        problems.push((Problem::MissingIndexEntry, Some(fix)));
    }
    let kind: Vec<u8> = row.try_get(3).map_err(get)?;
    let name: Vec<u8> = row.try_get(4).map_err(get)?;
    if kind != resource.kind.as_bytes() || name != resource.name.as_bytes() {
        let fix = Fix::Resource {
            kind: resource.kind.as_bytes().to_vec(),
            name: resource.name.as_bytes().to_vec(),
        };
        problems.push((Problem::DanglingEntry { index: "resource_queue".into() }, Some(fix)));
    }
    let next_seq: i64 = row.try_get(6).map_err(get)?;
    let count = decoded.len() as i64;
    if next_seq != count {
        let cause = corrupt(
            format!("table operations, row {id}, next_seq"),
            format!("next_seq is {next_seq}, but the operation has {count} records"),
        );
        problems.push((
            Problem::DamagedEntry { index: "operations.next_seq".into(), cause },
            Some(Fix::NextSeq(count)),
        ));
    }
    let owner: Vec<u8> = row.try_get(7).map_err(get)?;
    if let Err(e) = std::str::from_utf8(&owner) {
        let cause = corrupt(
            format!("table operations, row {id}, lease_owner {}", hex(&owner)),
            format!("not UTF-8: {e}"),
        );
        problems
            .push((Problem::DamagedEntry { index: "leases".into(), cause }, Some(Fix::FreeLease)));
    }
    let actor: Option<Vec<u8>> = row.try_get(8).map_err(get)?;
    let reason: Option<Vec<u8>> = row.try_get(9).map_err(get)?;
    let at: Option<i64> = row.try_get(10).map_err(get)?;
    if let Some(at) = at {
        let readable = actor.as_deref().is_some_and(|a| std::str::from_utf8(a).is_ok())
            && reason.as_deref().is_some_and(|r| std::str::from_utf8(r).is_ok())
            && at >= 0;
        if finished && !marked_finished {
            // Cleared with the finish mark (below).
        } else if finished {
            problems
                .push((Problem::DanglingEntry { index: "cancels".into() }, Some(Fix::ClearCancel)));
        } else if !readable {
            let cause =
                corrupt(format!("table operations, row {id}, cancel request"), "does not read");
            problems.push((
                Problem::DamagedEntry { index: "cancels".into(), cause },
                Some(Fix::ClearCancel),
            ));
        }
    }
    Ok(Verdict { counted: true, problems })
}

/// Applies one repair to the row of `id`.
async fn apply<C: GenericClient>(client: &C, id: &Vec<u8>, fix: &Fix) -> Result<(), StoreError> {
    let context = "repairing an operation";
    let done =
        match fix {
            Fix::Finished(true) => {
                client
                    .execute(
                        "UPDATE operations SET finished = true, cancel_actor = NULL, \
                     cancel_reason = NULL, cancel_at_ms = NULL WHERE id = $1",
                        &[id],
                    )
                    .await
            }
            Fix::Finished(false) => {
                client.execute("UPDATE operations SET finished = false WHERE id = $1", &[id]).await
            }
            Fix::Environment { environment, created_ms } => {
                client
                    .execute(
                        "UPDATE operations SET environment = $2, created_ms = $3 WHERE id = $1",
                        &[id, environment, created_ms],
                    )
                    .await
            }
            Fix::Resource { kind, name } => client
                .execute(
                    "UPDATE operations SET resource_kind = $2, resource_name = $3 WHERE id = $1",
                    &[id, kind, name],
                )
                .await,
            Fix::NextSeq(next) => {
                client
                    .execute("UPDATE operations SET next_seq = $2 WHERE id = $1", &[id, next])
                    .await
            }
            Fix::FreeLease => client
                .execute(
                    "UPDATE operations SET lease_owner = '\\x', lease_expires_ms = 0 WHERE id = $1",
                    &[id],
                )
                .await,
            Fix::ClearCancel => {
                client
                    .execute(
                        "UPDATE operations SET cancel_actor = NULL, cancel_reason = NULL, \
                     cancel_at_ms = NULL WHERE id = $1",
                        &[id],
                    )
                    .await
            }
            Fix::DeleteRow => {
                client
                    .execute(
                        "DELETE FROM operations WHERE id = $1 \
                     AND NOT EXISTS (SELECT 1 FROM records WHERE operation = $1)",
                        &[id],
                    )
                    .await
            }
        };
    done.map(|_| ()).map_err(|e| pg(context, e))
}
