//! Activity reports over a damaged store, the cancel and failure columns, and hostile cells.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_core::log::{Record, RecordKind};
use saga_core::report::{neutralise_cell, write_activity_csv, ActivityRow, ACTIVITY_COLUMNS};
use saga_core::store::{Listing, Store, StoreError};
use saga_core::Status;
use saga_core::Timestamp;
use saga_core::{async_trait, Executor, MemoryStore, OperationId, Outcome, Resource, Saga, Start};

use crate::support::{poll_status, report, TestStep, World};

/// A request to start an Operation of `saga` in `prod`.
fn in_prod(saga: &str, resource: &str, actor: &str) -> Start {
    Start::new(saga, Resource::new("app", resource)).params(&()).environment("prod").actor(actor)
}

/// A `MemoryStore` with chosen damage: reads of some ids fail with a corrupt record, the
/// environment listing names some ids that have no records and reports damaged entries.
#[derive(Default)]
struct DamagedStore {
    inner: MemoryStore,
    corrupt: Mutex<HashSet<OperationId>>,
    /// Ids the listing names at these positions, with no records behind them.
    dangling: Mutex<Vec<(usize, OperationId)>>,
    /// Problems of listing entries that name no Operation.
    damaged_entries: Mutex<Vec<String>>,
}

impl DamagedStore {
    fn corrupt(&self, id: OperationId) {
        self.corrupt.lock().unwrap().insert(id);
    }
}

#[async_trait]
impl saga_core::store::StoreWrapper for DamagedStore {
    fn inner(&self) -> &dyn Store {
        &self.inner
    }

    async fn read(&self, operation: OperationId) -> Result<Vec<Record>, StoreError> {
        if self.corrupt.lock().unwrap().contains(&operation) {
            return Err(StoreError::CorruptRecord {
                operation,
                position: 2,
                problem: "bad checksum".into(),
            });
        }
        self.inner.read(operation).await
    }

    async fn list_environment(
        &self,
        environment: &str,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Listing, StoreError> {
        let mut listing = self.inner.list_environment(environment, since_ms, until_ms).await?;
        for &(at, id) in self.dangling.lock().unwrap().iter() {
            listing.ids.insert(at.min(listing.ids.len()), id);
        }
        for problem in self.damaged_entries.lock().unwrap().iter() {
            listing.damaged.push(StoreError::Corrupt {
                place: "by_environment".into(),
                problem: problem.clone(),
            });
        }
        Ok(listing)
    }
}

fn deploy(world: &World) -> Saga {
    Saga::builder("deploy", 1).step("a", TestStep::new("a", world)).build().unwrap()
}

/// Runs one Operation to its end and returns its id.
async fn run_one(executor: &Executor, saga: &str, resource: &str, actor: &str) -> OperationId {
    let id = executor.start(in_prod(saga, resource, actor)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), executor.wait(id)).await.unwrap().unwrap();
    id
}

/// Three Operations of `prod` run through an executor over a `DamagedStore`.
async fn three_operations() -> (Arc<DamagedStore>, Executor, Vec<OperationId>, u64) {
    let world = World::default();
    let store = Arc::new(DamagedStore::default());
    let executor = crate::executor(store.clone(), vec![deploy(&world)]);
    let before = Timestamp::now().unix_ms();
    let mut ids = Vec::new();
    for name in ["one", "two", "three"] {
        ids.push(run_one(&executor, "deploy", name, "alice").await);
    }
    (store, executor, ids, before)
}

fn assert_normal(row: &ActivityRow, id: OperationId, resource: &str) {
    assert_eq!(row.operation, id);
    assert_eq!(row.status, Status::Succeeded);
    assert_eq!(row.resource, resource);
    assert_eq!(row.problem, None);
}

/// Creates an Operation of `prod` in `store` directly, with these records after its creation.
async fn write_log(store: &dyn Store, environment: &str, kinds: Vec<RecordKind>) -> OperationId {
    let id = OperationId::new();
    let at_ms = Timestamp::now().unix_ms();
    let created = Record {
        operation: id,
        seq: 0,
        at_ms,
        kind: RecordKind::OperationCreated {
            saga: "deploy".into(),
            version: 1,
            params: b"null".to_vec(),
            environment: environment.into(),
            resource: Resource::new("app", "bad"),
            actor: "mallory".into(),
        },
    };
    let lease = store.create(&created, "writer", Duration::from_secs(60)).await.unwrap();
    let records: Vec<Record> = kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| Record { operation: id, seq: i as u64 + 1, at_ms, kind })
        .collect();
    store.append(&lease, &records).await.unwrap();
    id
}

#[tokio::test]
async fn a_corrupt_operation_gets_a_damaged_row_in_its_place_and_the_others_still_list() {
    let (store, _executor, ids, before) = three_operations().await;
    store.corrupt(ids[1]);
    let rows = report(store.as_ref(), "prod", before, Timestamp::now().unix_ms() + 1).await;
    assert_eq!(rows.len(), 3, "{rows:#?}");
    assert_normal(&rows[0], ids[0], "one");
    assert_normal(&rows[2], ids[2], "three");
    let damaged = &rows[1];
    assert_eq!(damaged.operation, ids[1]);
    assert_eq!(damaged.status, Status::Damaged);
    let problem = damaged.problem.as_deref().unwrap();
    assert!(problem.contains("record at position 2 is corrupt: bad checksum"), "{problem}");
    assert!(problem.contains(&ids[1].to_string()), "{problem}");
    let cells = damaged.cells();
    assert_eq!(cells[0], ids[1].to_string());
    assert_eq!(cells[2], "damaged");
    assert_eq!(cells[ACTIVITY_COLUMNS.len() - 1], problem);
}

#[tokio::test]
async fn a_dangling_entry_an_illegal_log_and_a_damaged_entry_each_get_a_row() {
    let (store, _executor, ids, before) = three_operations().await;
    let missing = OperationId::new();
    store.dangling.lock().unwrap().push((1, missing));
    store.damaged_entries.lock().unwrap().push("key 0xff does not decode".into());
    // A StepSucceeded with no StepStarted: the store takes it, the fold does not.
    let illegal = write_log(
        store.as_ref(),
        "prod",
        vec![RecordKind::StepSucceeded { step: "a".into(), output: b"null".to_vec() }],
    )
    .await;
    // The same in another environment stays out of this one's report.
    write_log(
        store.as_ref(),
        "staging",
        vec![RecordKind::StepSucceeded { step: "a".into(), output: b"null".to_vec() }],
    )
    .await;

    let rows = report(store.as_ref(), "prod", before, Timestamp::now().unix_ms() + 1).await;
    let got: Vec<(OperationId, Status)> = rows.iter().map(|r| (r.operation, r.status)).collect();
    assert_eq!(
        got,
        [
            (ids[0], Status::Succeeded),
            (missing, Status::Damaged),
            (ids[1], Status::Succeeded),
            (ids[2], Status::Succeeded),
            (illegal, Status::Damaged),
            (ActivityRow::NO_OPERATION, Status::Damaged),
        ],
        "{rows:#?}"
    );
    let not_found = rows[1].problem.as_deref().unwrap();
    assert_eq!(not_found, format!("operation {missing} not found"));

    let illegal_row = &rows[4];
    let problem = illegal_row.problem.as_deref().unwrap();
    assert!(problem.contains(&format!("operation {illegal}: record 1 is illegal")), "{problem}");
    // What the legal OperationCreated record says is kept.
    assert_eq!(illegal_row.actor, "mallory");
    assert_eq!(illegal_row.resource, "bad");
    assert_eq!(illegal_row.operation_type, "deploy");

    let entry = &rows[5];
    assert!(!entry.names_operation());
    let problem = entry.problem.as_deref().unwrap();
    assert!(problem.contains("by_environment") && problem.contains("key 0xff"), "{problem}");
    let cells = entry.cells();
    assert_eq!(cells[0], "", "no id is known");
    assert_eq!(cells[2], "damaged");

    // The staging report has its own illegal Operation and nothing of prod's.
    store.damaged_entries.lock().unwrap().clear();
    store.dangling.lock().unwrap().clear();
    let staged = report(store.as_ref(), "staging", before, Timestamp::now().unix_ms() + 1).await;
    assert_eq!(staged.len(), 1, "{staged:#?}");
    assert_eq!(staged[0].status, Status::Damaged);
    assert!(!ids.contains(&staged[0].operation) && staged[0].operation != illegal);
}

#[tokio::test]
async fn an_operation_whose_first_record_names_another_environment_stays_out() {
    let store = Arc::new(DamagedStore::default());
    let before = Timestamp::now().unix_ms();
    let elsewhere = write_log(
        store.as_ref(),
        "staging",
        vec![RecordKind::StepSucceeded { step: "a".into(), output: b"null".to_vec() }],
    )
    .await;
    // The prod index names it by mistake: its log is illegal, yet its records say staging.
    store.dangling.lock().unwrap().push((0, elsewhere));
    let rows = report(store.as_ref(), "prod", before, Timestamp::now().unix_ms() + 1).await;
    assert!(rows.is_empty(), "{rows:#?}");
}

/// On tokio's paused clock (the store is in memory): the 30 s step and the polls take no real
/// time. The rows' times are the system's, which goes on.
#[tokio::test(start_paused = true)]
async fn a_cancelled_row_names_who_and_why_and_a_failed_row_the_error() {
    let world = World::default();
    let slow = Saga::builder("slow", 1)
        .step("a", TestStep::new("a", &world))
        .step("long", TestStep::new("long", &world).slow(Duration::from_secs(30)))
        .build()
        .unwrap();
    let failing = Saga::builder("resize", 1)
        .step("grow", TestStep::new("grow", &world))
        .step("restart", TestStep::new("restart", &world).failing())
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let executor = crate::executor(store.clone(), vec![slow, failing, deploy(&world)]);
    let before = Timestamp::now().unix_ms();
    let cancelled = executor.start(in_prod("slow", "web", "alice")).await.unwrap();
    poll_status(&executor, cancelled, "step long starts", |s| s.step("long").is_some()).await;
    executor.cancel(cancelled, "ops-bob", "wrong version").await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(20), executor.wait(cancelled))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    let failed = run_one(&executor, "resize", "db", "carol").await;
    let fine = run_one(&executor, "deploy", "web", "dave").await;

    let rows = report(store.as_ref(), "prod", before, Timestamp::now().unix_ms() + 1).await;
    assert_eq!(rows.iter().map(|r| r.operation).collect::<Vec<_>>(), [cancelled, failed, fine]);
    let column = |name: &str| ACTIVITY_COLUMNS.iter().position(|c| *c == name).unwrap();

    let cells = rows[0].cells();
    assert_eq!(rows[0].cancelled_by.as_deref(), Some("ops-bob"));
    assert_eq!(rows[0].cancel_reason.as_deref(), Some("wrong version"));
    assert_eq!(cells[column("cancelled by")], "ops-bob");
    assert_eq!(cells[column("cancel reason")], "wrong version");
    assert_eq!(cells[column("status")], "rolled back");

    let cells = rows[1].cells();
    assert_eq!(rows[1].failure.as_deref(), Some("restart broke"));
    assert_eq!(cells[column("failed step")], "restart");
    assert_eq!(cells[column("failure")], "restart broke");
    assert_eq!(cells[column("cancelled by")], "");
    assert_eq!(cells[column("cancel reason")], "");

    let cells = rows[2].cells();
    assert_eq!(executor.wait(fine).await.unwrap(), Outcome::Succeeded);
    for name in [
        "failed step",
        "failure",
        "cancelled by",
        "cancel reason",
        "abandoned by",
        "abandon reason",
        "cancels refused",
        "problem",
    ] {
        assert_eq!(cells[column(name)], "", "{name}");
    }
    // Nobody abandoned the cancelled or the failed one either.
    for row in &rows[..2] {
        let cells = row.cells();
        assert_eq!((row.abandoned_by.as_deref(), row.abandon_reason.as_deref()), (None, None));
        assert_eq!(cells[column("abandoned by")], "");
        assert_eq!(cells[column("abandon reason")], "");
    }
}

/// On tokio's paused clock, as above.
#[tokio::test(start_paused = true)]
async fn the_csv_parses_back_with_damaged_rows_and_every_hostile_cell_neutralised() {
    let world = World::default();
    let saga = Saga::builder("deploy", 1)
        .step("a", TestStep::new("a", &world))
        .step("long", TestStep::new("long", &world).slow(Duration::from_secs(30)))
        .build()
        .unwrap();
    let store = Arc::new(DamagedStore::default());
    let executor = crate::executor(store.clone(), vec![saga]);
    let before = Timestamp::now().unix_ms();
    let hostile = [
        "\u{FEFF}=HYPERLINK(\"http://x\",\"y\")",
        " =1+1",
        "\u{FF1D}1+1",
        "\u{200B}+1",
        "\u{00A0}\u{FF20}SUM(A1)",
        "\n-1",
        "\0@x",
        "\u{FE66}1",
        "\u{2060}\u{FE62}1",
    ];
    let mut ids = Vec::new();
    for (i, name) in hostile.iter().enumerate() {
        let id = executor.start(in_prod("deploy", name, name)).await.unwrap();
        poll_status(&executor, id, &format!("step long of {name:?} starts"), |s| {
            s.step("long").is_some()
        })
        .await;
        // Cancelled by the hostile name, for a hostile reason.
        executor.cancel(id, name, hostile[(i + 1) % hostile.len()]).await.unwrap();
        executor.wait(id).await.unwrap();
        ids.push(id);
    }
    store.corrupt(ids[2]);
    store.damaged_entries.lock().unwrap().push("=cmd|' /C calc'!A0".into());

    let rows = report(store.as_ref(), "prod", before, Timestamp::now().unix_ms() + 1).await;
    assert_eq!(rows.len(), hostile.len() + 1);
    let mut bytes = Vec::new();
    write_activity_csv(&rows, &mut bytes).unwrap();
    let mut reader = csv::Reader::from_reader(bytes.as_slice());
    assert_eq!(reader.headers().unwrap().iter().collect::<Vec<_>>(), ACTIVITY_COLUMNS);
    let parsed: Vec<Vec<String>> =
        reader.records().map(|r| r.unwrap().iter().map(str::to_owned).collect()).collect();
    assert_eq!(parsed.len(), rows.len());
    for (row, cells) in rows.iter().zip(&parsed) {
        let expected: Vec<String> =
            row.cells().iter().map(|c| neutralise_cell(c).into_owned()).collect();
        assert_eq!(cells, &expected);
    }
    let column = |name: &str| ACTIVITY_COLUMNS.iter().position(|c| *c == name).unwrap();
    for (i, name) in hostile.iter().enumerate() {
        let cells = &parsed[i];
        if i == 2 {
            assert_eq!(cells[column("status")], "damaged");
            assert!(cells[column("problem")].contains("bad checksum"));
            continue;
        }
        for col in ["resource", "actor", "cancelled by"] {
            assert_eq!(cells[column(col)], format!("'{name}"), "{col} of {name:?}");
        }
        let reason = hostile[(i + 1) % hostile.len()];
        assert_eq!(cells[column("cancel reason")], format!("'{reason}"));
    }
    let last = parsed.last().unwrap();
    assert_eq!(last[column("operation id")], "");
    assert_eq!(last[column("status")], "damaged");
    assert!(last[column("problem")].starts_with("corrupt data in by_environment: ="));
    // No cell starts with a sign once its trimmable prefix is gone, unless quoted by `'`.
    for cells in &parsed {
        for cell in cells {
            let visible = cell.trim_start_matches(|c: char| {
                c.is_whitespace() || c.is_control() || "\u{FEFF}\u{200B}\u{2060}".contains(c)
            });
            let first = visible.chars().next();
            assert!(
                !matches!(
                    first,
                    Some('=' | '+' | '-' | '@' | '＝' | '＋' | '－' | '＠' | '﹦' | '﹢')
                ),
                "{cell:?}"
            );
        }
    }
}
