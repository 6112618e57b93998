//! `PostgresStore` against a real PostgreSQL server: the conformance suite of saga-testkit (each
//! check in a fresh schema), then what only a shared database shows: fencing and claims on the
//! database's clock, group commit, damaged rows, concurrent migrations, a newer schema, and
//! connections terminated under the store's feet; TLS against a server that takes nothing else;
//! multi-host URLs, and a failover of a primary to its synchronous standby (`failover`).
//!
//! `scripts/services/postgres.sh start` starts a server and writes `SAGA_TEST_POSTGRES_URL` to
//! `target/services/postgres.env` (and the TLS server's `SAGA_TEST_POSTGRES_TLS_*`);
//! `scripts/test.sh` does both. Without it a test prints why it
//! skips; under CI (`saga_testkit::ci::under_ci`: `CI` set to anything but empty, `0` or
//! `false`) it fails instead.

mod cancels;
mod executors;
mod failover;
mod log_lines;
mod support;
mod tls;
mod wake_ups;

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use saga_core::store::{CancelRecorded, CancelRequest, Lease, Problem, Store, StoreError};
use saga_core::OperationId;
use saga_store_postgres::{PostgresError, PostgresStore};
use saga_testkit::conformance;
use support::{admin, created, db_now_ms, finished, started, terminate, url, Schema, LONG};

saga_testkit::conformance_tests!(match support::conformance_store("conformance") {
    Some(fresh) => fresh,
    None => return,
});

/// The whole suite in one call, each check in a schema of its own, kept until the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_run_all() {
    let Some(url) = url("conformance_run_all") else { return };
    let schemas = std::sync::Mutex::new(Vec::new());
    conformance::run_all(|| {
        let schema = Schema::new(&url);
        let schemas = &schemas;
        async move {
            let store = schema.store().await;
            schemas.lock().unwrap_or_else(|e| e.into_inner()).push(schema);
            store
        }
    })
    .await;
}

/// saga-testkit's fencing check on PostgreSQL: a second executor's claim carries a higher token,
/// and the first executor's late write is refused by a fenced resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_executors_write_is_refused_by_a_fenced_resource() {
    let Some(url) = url("a_stale_executors_write_is_refused_by_a_fenced_resource") else {
        return;
    };
    let schema = Schema::new(&url);
    let store: Arc<dyn Store> = schema.store().await;
    saga_testkit::fencing::stale_write_is_refused(store).await.expect("the stale write is refused");
}

/// A lease expires by the database's clock (its row), whatever the lease the executor holds
/// says; a stale executor's append after a takeover writes nothing and is `Fenced`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_executor_is_fenced_on_the_database_clock() {
    let Some(url) = url("stale_executor_is_fenced_on_the_database_clock") else { return };
    let schema = Schema::new(&url);
    let store = schema.store().await;
    let admin = admin(&url).await;

    let id = OperationId::new();
    let before = db_now_ms(&admin).await;
    let lease = store
        .create(&created(id, "prod", 1), "a", Duration::from_millis(300))
        .await
        .expect("creates");
    let after = db_now_ms(&admin).await;
    assert!(
        lease.expires_ms >= before + 300 && lease.expires_ms <= after + 300,
        "the expiry {} is not the database's clock ({before}..{after}) + 300 ms",
        lease.expires_ms
    );

    // The row says the lease runs for an hour more: another owner cannot claim, although the
    // lease `a` holds says it expires in 300 ms.
    let table = format!("{}.operations", schema.name);
    admin
        .execute(
            &format!(
                "UPDATE {table} SET lease_expires_ms = \
                 (floor(extract(epoch FROM clock_timestamp()) * 1000))::bigint + 3600000"
            ),
            &[],
        )
        .await
        .expect("moving the expiry");
    // The event, not a guess: the lease `a` holds has expired by the database's clock.
    support::db_clock_past(&admin, lease.expires_ms).await;
    match store.claim(id, "b", LONG).await {
        Err(StoreError::Owned { holder, .. }) if holder == "a" => {}
        other => panic!("claiming a lease the database says runs: {other:?}"),
    }
    // The row says it expired a millisecond ago: `b` takes it at once.
    admin
        .execute(
            &format!(
                "UPDATE {table} SET lease_expires_ms = \
                 (floor(extract(epoch FROM clock_timestamp()) * 1000))::bigint - 1"
            ),
            &[],
        )
        .await
        .expect("moving the expiry");
    let taken = store.claim(id, "b", LONG).await.expect("claims an expired lease");
    assert_eq!((taken.epoch, taken.owner.as_str()), (2, "b"));

    match store.append(&lease, &[started(id, 1)]).await {
        Err(StoreError::Fenced { epoch: 1, holder, .. }) if holder == "b" => {}
        other => panic!("a stale executor's append: {other:?}"),
    }
    match store.renew(&lease, LONG).await {
        Err(StoreError::Fenced { holder, .. }) if holder == "b" => {}
        other => panic!("a stale executor's renew: {other:?}"),
    }
    assert_eq!(store.read(id).await.expect("reads").len(), 1, "the stale append wrote");
    store.append(&taken, &[started(id, 1)]).await.expect("the new owner appends");
    assert_eq!(store.read(id).await.expect("reads").len(), 2);
}

/// Of 40 claims at once from 4 stores (4 pools, so many server connections), exactly one wins;
/// every other is `Owned` by the winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claim_race_among_many_claimers_has_one_winner() {
    let Some(url) = url("claim_race_among_many_claimers_has_one_winner") else { return };
    let schema = Schema::new(&url);
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(schema.store().await);
    }
    for round in 0..3 {
        let id = OperationId::new();
        let lease =
            stores[0].create(&created(id, "prod", 1), "creator", LONG).await.expect("creates");
        stores[0].release(&lease).await.expect("releases");
        let barrier = Arc::new(tokio::sync::Barrier::new(40));
        let mut tasks = Vec::new();
        for i in 0..40 {
            let (store, barrier) = (stores[i % 4].clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                let owner = format!("claimer-{i}");
                barrier.wait().await;
                (owner.clone(), store.claim(id, &owner, LONG).await)
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.expect("a claim task"));
        }
        let winners: Vec<&Lease> = results.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let winner = winners[0].clone();
        assert_eq!(winner.epoch, 2);
        for (owner, result) in &results {
            match result {
                Ok(l) => assert_eq!(&l.owner, owner),
                Err(StoreError::Owned { holder, .. }) => assert_eq!(holder, &winner.owner),
                Err(e) => panic!("round {round}: {owner} got {e:?}"),
            }
        }
    }
}

/// Appends waiting together share one transaction; the one whose lease was taken over is
/// `Fenced` and writes nothing, the one whose statement fails (a damaged Operation) fails
/// alone, and the others in the transaction are acknowledged and read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_fails_a_fenced_append_alone() {
    let Some(url) = url("group_commit_fails_a_fenced_append_alone") else { return };
    let schema = Schema::new(&url);
    let store = schema.store().await;
    let admin = admin(&url).await;

    let mut leases = Vec::new();
    for _ in 0..25 {
        let id = OperationId::new();
        leases.push(store.create(&created(id, "prod", 1), "me", LONG).await.expect("creates"));
    }
    // The tenth is taken over: its lease is stale.
    let stale = leases[9].clone();
    store.release(&stale).await.expect("releases");
    store.claim(stale.operation, "thief", LONG).await.expect("the thief claims");

    // The fifteenth is damaged: a record already sits where its next one goes, so its
    // statement fails (a unique violation) inside the group.
    let damaged = leases[14].operation;
    admin
        .execute(
            &format!(
                "INSERT INTO {}.records (operation, seq, bytes) VALUES ($1, 1, '\\x01')",
                schema.name
            ),
            &[&damaged.as_u128().to_be_bytes().to_vec()],
        )
        .await
        .expect("damages the fifteenth");

    // Hold the first Operation's row, so that the writer's first group (its append alone)
    // waits, and every other append gathers behind it.
    let mut admin = admin;
    let tx = admin.transaction().await.expect("begins");
    tx.execute(
        &format!("SELECT 1 FROM {}.operations WHERE id = $1 FOR UPDATE", schema.name),
        &[&leases[0].operation.as_u128().to_be_bytes().to_vec()],
    )
    .await
    .expect("locks the first row");
    let before = store.group_commit_stats();
    let first = {
        let (store, lease) = (store.clone(), leases[0].clone());
        tokio::spawn(async move { store.append(&lease, &[started(lease.operation, 1)]).await })
    };
    // The events, not guesses of how long they take: the writer's first group waits on the
    // row lock; then the other 24 appends wait in its queue.
    let watcher = support::admin(&url).await;
    support::blocked_backend(&watcher, &schema.name, false).await;
    let mut rest = Vec::new();
    for lease in leases[1..].iter().cloned() {
        let store = store.clone();
        rest.push(tokio::spawn(async move {
            let r = store
                .append(&lease, &[started(lease.operation, 1), started(lease.operation, 2)])
                .await;
            (lease, r)
        }));
    }
    let deadline = Instant::now() + support::EVENT;
    while saga_store_postgres::testing::appends_queued(&store) < 24 {
        assert!(Instant::now() < deadline, "the 24 appends did not reach the writer's queue");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tx.commit().await.expect("releases the row");

    first.await.expect("joins").expect("the first append");
    for task in rest {
        let (lease, result) = task.await.expect("joins");
        if lease.operation == stale.operation {
            match result {
                Err(StoreError::Fenced { holder, .. }) if holder == "thief" => {}
                other => panic!("the stale lease's append in a group: {other:?}"),
            }
            assert_eq!(store.read(lease.operation).await.expect("reads").len(), 1);
        } else if lease.operation == damaged {
            match result {
                Err(e @ StoreError::Backend { .. }) => {
                    assert!(e.to_string().contains("23505"), "{e}")
                }
                other => panic!("the damaged Operation's append in a group: {other:?}"),
            }
        } else {
            result.unwrap_or_else(|e| panic!("an append sharing the group: {e:?}"));
            assert_eq!(store.read(lease.operation).await.expect("reads").len(), 3);
        }
    }
    let stats = store.group_commit_stats();
    assert!(
        stats.largest >= 24 && stats.groups - before.groups <= 3,
        "the 24 gathered appends should have shared a transaction: {before:?} then {stats:?}"
    );
    let report = store.check(false).await.expect("checks");
    assert!(
        report.findings.iter().all(|f| f.operation == Some(damaged)),
        "only the damaged Operation has findings: {:?}",
        report.findings
    );
}

/// A record row that does not decode is a typed error naming the table, the Operation and the
/// position; so are a damaged log line and a damaged id in a listing, and `check` names them;
/// other Operations read on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_rows_are_typed_errors_naming_where() {
    let Some(url) = url("undecodable_rows_are_typed_errors_naming_where") else { return };
    let schema = Schema::new(&url);
    let store = schema.store().await;
    let admin = admin(&url).await;
    let (bad, good) = (OperationId::new(), OperationId::new());
    let lease = store.create(&created(bad, "prod", 1), "me", LONG).await.expect("creates");
    store.append(&lease, &[started(bad, 1), started(bad, 2)]).await.expect("appends");
    store.create(&created(good, "prod", 2), "me", LONG).await.expect("creates");
    let bad_key = bad.as_u128().to_be_bytes().to_vec();

    admin
        .execute(
            &format!(
                "UPDATE {}.records SET bytes = '\\x01ffffff' WHERE operation = $1 AND seq = 1",
                schema.name
            ),
            &[&bad_key],
        )
        .await
        .expect("damages a record");
    match store.read(bad).await {
        Err(StoreError::CorruptRecord { operation, position: 1, problem }) => {
            assert_eq!(operation, bad);
            assert!(problem.contains("table records") && problem.contains("seq 1"), "{problem}");
        }
        other => panic!("reading a damaged record: {other:?}"),
    }
    assert_eq!(store.read(good).await.expect("the other reads").len(), 1);

    // A log line that does not decode.
    store.append_log(&lease, &[line(bad, 0)]).await.expect("logs");
    admin
        .execute(
            &format!("UPDATE {}.log_lines SET bytes = '\\x0102' WHERE operation = $1", schema.name),
            &[&bad_key],
        )
        .await
        .expect("damages a line");
    match store.read_log(bad).await {
        Err(StoreError::Corrupt { place, .. }) => {
            assert!(place.contains("log_lines") && place.contains(&bad.to_string()), "{place}")
        }
        other => panic!("reading a damaged log line: {other:?}"),
    }

    // An id that is not 16 bytes, in the unfinished index.
    admin
        .execute(
            &format!(
                "INSERT INTO {s}.operations (id, environment, created_ms, resource_kind, resource_name, \
                 queue_position, next_seq, lease_owner, lease_epoch, lease_expires_ms) \
                 VALUES ('\\x0102', '\\x', 0, '\\x', '\\x', nextval('{s}.saga_queue_position'), 0, '\\x', 1, 0)",
                s = schema.name
            ),
            &[],
        )
        .await
        .expect("inserts a bad row");
    let listing = store.list_unfinished().await.expect("lists");
    assert_eq!(listing.ids.len(), 2, "{listing:?}");
    match listing.damaged.as_slice() {
        [StoreError::Corrupt { place, .. }] => {
            assert!(place.contains("operations") && place.contains("\\x0102"), "{place}")
        }
        other => panic!("the damaged id: {other:?}"),
    }

    let report = store.check(false).await.expect("checks");
    let damaged_records = report
        .findings
        .iter()
        .any(|f| f.operation == Some(bad) && matches!(f.problem, Problem::DamagedRecords(_)));
    let damaged_line = report.findings.iter().any(|f| {
        f.operation == Some(bad)
            && matches!(&f.problem, Problem::DamagedEntry { index, .. } if index == "logs")
    });
    let damaged_id = report.findings.iter().any(|f| {
        f.operation.is_none()
            && matches!(&f.problem, Problem::DamagedEntry { index, .. } if index == "operations")
    });
    assert!(damaged_records && damaged_line && damaged_id, "{:?}", report.findings);
    // Repair removes the line, never a record.
    let repaired = store.check(true).await.expect("repairs");
    assert!(!repaired.is_healthy(), "damaged records cannot be repaired: {:?}", repaired.findings);
    let count: i64 = admin
        .query_one(
            &format!("SELECT count(*) FROM {}.records WHERE operation = $1", schema.name),
            &[&bad_key],
        )
        .await
        .expect("counts")
        .get(0);
    assert_eq!(count, 3, "a repair changed records");
    assert!(store.read_log(bad).await.expect("reads the log").is_empty());
}

/// Five executors connecting at once to a fresh schema: the migration runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migration_from_five_concurrent_connects_runs_once() {
    let Some(url) = url("migration_from_five_concurrent_connects_runs_once") else { return };
    let schema = Schema::new(&url);
    let connects = (0..5).map(|_| PostgresStore::connect(&url, schema.options()));
    let stores = futures::future::join_all(connects).await;
    for store in &stores {
        if let Err(e) = store {
            panic!("a concurrent connect failed: {e:?}");
        }
    }
    let admin = admin(&url).await;
    let rows = admin
        .query(
            &format!("SELECT version FROM {}.saga_schema_version ORDER BY version", schema.name),
            &[],
        )
        .await
        .expect("reads the versions");
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, (1..=PostgresStore::schema_version()).collect::<Vec<_>>());
    // And each store works.
    for store in stores.into_iter().flatten() {
        let id = OperationId::new();
        store.create(&created(id, "prod", 1), "me", LONG).await.expect("creates");
    }
}

/// A database migrated by a newer release is refused, with an error that says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_schema_version_is_refused() {
    let Some(url) = url("newer_schema_version_is_refused") else { return };
    let schema = Schema::new(&url);
    drop(schema.store().await);
    let admin = admin(&url).await;
    admin
        .execute(&format!("INSERT INTO {}.saga_schema_version VALUES (999, 0)", schema.name), &[])
        .await
        .expect("pretends a newer release migrated");
    let e = PostgresStore::connect(&url, schema.options()).await.expect_err("refused");
    assert!(!e.is_transient());
    let source = e.source().and_then(|s| s.downcast_ref::<PostgresError>());
    match source {
        Some(PostgresError::NewerSchema { found: 999, supported }) => {
            assert_eq!(*supported, PostgresStore::schema_version())
        }
        other => panic!("expected NewerSchema, got {other:?} from {e}"),
    }
    assert!(e.to_string().contains("upgrade saga-store-postgres"), "{e}");
}

/// A connection terminated by the server mid-call is a transient error with PostgreSQL's
/// error as its source (seen with retries off); with retries on, the store goes on by itself:
/// appends whose connections are terminated around them, again and again, are all acknowledged
/// and all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminated_connections_are_transient_and_appends_go_on() {
    let Some(url) = url("terminated_connections_are_transient_and_appends_go_on") else { return };
    let schema = Schema::new(&url);
    let admin = support::admin(&url).await;

    // Retries off: an append blocked on a row lock, whose connection is then terminated.
    let plain = schema.store_with(schema.options().retries(0)).await;
    let id = OperationId::new();
    let lease = plain.create(&created(id, "prod", 1), "me", LONG).await.expect("creates");
    let mut locker = support::admin(&url).await;
    let tx = locker.transaction().await.expect("begins");
    tx.execute(
        &format!("SELECT 1 FROM {}.operations WHERE id = $1 FOR UPDATE", schema.name),
        &[&id.as_u128().to_be_bytes().to_vec()],
    )
    .await
    .expect("locks");
    let append = {
        let (plain, lease) = (plain.clone(), lease.clone());
        tokio::spawn(async move { plain.append(&lease, &[started(lease.operation, 1)]).await })
    };
    // The event, not a guess: the append waits on the row lock.
    support::blocked_backend(&admin, &schema.name, false).await;
    assert!(terminate(&admin, &schema.name).await >= 1);
    let e = append.await.expect("joins").expect_err("the append's connection was terminated");
    assert!(e.is_transient(), "{e:?}");
    let pg = e.source().and_then(|s| s.downcast_ref::<tokio_postgres::Error>());
    assert!(pg.is_some(), "the source is PostgreSQL's error: {e:?}");
    tx.rollback().await.expect("unlocks");
    // (The pool's other connections were terminated too: without retries, the next calls may
    // meet them.)
    drop(plain);

    // Retries on: nothing of the failed append was written, and it can be made again.
    let store = schema.store().await;
    assert_eq!(store.read(id).await.expect("reads").len(), 1, "nothing was written");
    store.append(&lease, &[started(id, 1)]).await.expect("appends on a new connection");

    // Four appenders while every connection of the store is terminated, five times.
    let mut leases = Vec::new();
    for _ in 0..4 {
        let id = OperationId::new();
        leases.push(store.create(&created(id, "prod", 1), "me", LONG).await.expect("creates"));
    }
    let mut tasks = Vec::new();
    for lease in leases.clone() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 1..=40 {
                store.append(&lease, &[started(lease.operation, seq)]).await?;
                store.read(lease.operation).await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<_, StoreError>(())
        }));
    }
    let mut terminated = 0;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        terminated += terminate(&admin, &schema.name).await;
    }
    for task in tasks {
        task.await.expect("joins").unwrap_or_else(|e| panic!("an append did not go on: {e:?}"));
    }
    assert!(terminated >= 5, "terminated only {terminated} connections");
    for lease in &leases {
        let records = store.read(lease.operation).await.expect("reads");
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (0..=40).collect::<Vec<_>>());
    }
    let finish = finished(leases[0].operation, 41);
    store.append(&leases[0], &[finish]).await.expect("finishes");
    assert!(store.check(false).await.expect("checks").findings.is_empty());
}

/// A cancel request made through one store reaches another store's notifications at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requests_are_notified() {
    let Some(url) = url("cancel_requests_are_notified") else { return };
    let schema = Schema::new(&url);
    let owner = schema.store().await;
    let other = schema.store().await;
    let mut notices = owner.cancel_notifications();
    let id = OperationId::new();
    owner.create(&created(id, "prod", 1), "me", LONG).await.expect("creates");
    // The listener connects in the background: wait until it listens (the event, not a guess of
    // how long it takes), since a notice comes only with the first request.
    let admin = admin(&url).await;
    support::listening(&admin, &schema.name, 1).await;
    let request =
        CancelRequest { operation: id, actor: "amy".into(), reason: "stop".into(), at_ms: 1 };
    let start = Instant::now();
    let recorded = other.request_cancel(&request).await.expect("requests");
    assert_eq!(recorded, CancelRecorded::Recorded);
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match notices.recv().await {
                Ok(n) if n == id => return n,
                Ok(_) => continue,
                Err(e) => panic!("notifications: {e}"),
            }
        }
    })
    .await
    .expect("a notification within 5 s");
    assert_eq!(got, id);
    eprintln!("cancel notified after {:?}", start.elapsed());
    assert_eq!(owner.cancel_requests().await.expect("lists")[0].actor, "amy");
}

/// Appends per second from 64 concurrent appenders, with and without group commit.
/// `cargo test -p saga-store-postgres --release -- --ignored --nocapture group_commit_throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement, not a check"]
async fn group_commit_throughput() {
    let Some(url) = url("group_commit_throughput") else { return };
    for group in [false, true, false, true] {
        let schema = Schema::new(&url);
        let store = schema.store_with(schema.options().group_commit(group).pool_size(32)).await;
        let mut leases = Vec::new();
        for _ in 0..64 {
            let id = OperationId::new();
            leases.push(store.create(&created(id, "prod", 1), "me", LONG).await.expect("creates"));
        }
        let start = Instant::now();
        let mut tasks = Vec::new();
        for lease in leases {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for seq in 1..=50 {
                    store.append(&lease, &[started(lease.operation, seq)]).await.expect("appends");
                }
            }));
        }
        for task in tasks {
            task.await.expect("joins");
        }
        let elapsed = start.elapsed();
        let stats = store.group_commit_stats();
        eprintln!(
            "group commit {group}: {} appends in {elapsed:?}: {:.0} appends/s ({stats:?})",
            64 * 50,
            (64 * 50) as f64 / elapsed.as_secs_f64()
        );
    }
}

fn line(id: OperationId, seq: u64) -> saga_core::log::LogLine {
    saga_core::log::LogLine {
        operation: id,
        seq,
        at_ms: 10,
        level: saga_core::log::LogLevel::Info,
        source: saga_core::log::LogSource::Engine,
        step: None,
        message: "hello".into(),
    }
}
