//! Cancel requests decided against the point of no return on a real server: `request_cancel`
//! racing a barrier append, many times over; and both, and the append that answers a request,
//! with their connections killed or their commit answers lost.
//!
//! Every round ends in one of the legal histories, whichever it is: the test fails only on an
//! illegal one (a barrier written past a pending request, a request dropped, an answer that
//! says otherwise than the database).

use std::sync::Arc;
use std::time::Duration;

use saga_core::log::{Record, RecordKind};
use saga_core::store::{CancelRecorded, CancelRequest, Lease, Store, StoreError};
use saga_core::OperationId;
use saga_store_postgres::PostgresStore;

use crate::support::{
    admin, blocked_backend, cancelled, created, finished, passed, refused, request, terminate_pid,
    url, Gate, Proxy, Schema, LONG,
};

/// How many rounds of the race, and how many run at once.
const ROUNDS: usize = 300;
const BATCH: usize = 25;

/// The barrier of round `round`: passing the point of no return, or (every third round)
/// finishing as succeeded.
fn barrier(id: OperationId, round: usize) -> Record {
    if round % 3 == 2 {
        finished(id, 1)
    } else {
        passed(id, 1)
    }
}

/// What one round ended as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum History {
    /// The request was recorded first: the barrier was refused and is not in the log.
    RequestFirst,
    /// The barrier was written first: the request was recorded after it (or, after a finish,
    /// refused as `Finished`).
    BarrierFirst,
}

/// Checks that a round ended in a legal history, given what both calls answered and what the
/// database holds now; panics naming the round otherwise.
async fn judge(
    store: &PostgresStore,
    round: &str,
    created: &Record,
    barrier: &Record,
    request: &CancelRequest,
    appended: Result<(), StoreError>,
    requested: Result<CancelRecorded, StoreError>,
) -> History {
    let id = created.operation;
    let log = store.read(id).await.expect("reads");
    let pending = store.pending_cancel(id).await.expect("reads the pending request");
    let finishing = matches!(barrier.kind, RecordKind::OperationFinished { .. });
    let state = format!(
        "round {round}: append {appended:?}, request {requested:?}, log {:?}, pending {pending:?}",
        log.iter().map(|r| r.kind.name()).collect::<Vec<_>>()
    );
    match (&appended, &requested) {
        (
            Err(StoreError::CancelPending { operation, request: named }),
            Ok(CancelRecorded::Recorded),
        ) if *operation == id && **named == *request => {
            assert_eq!(log, vec![created.clone()], "a refused barrier wrote: {state}");
            assert_eq!(pending.as_ref(), Some(request), "the request is not pending: {state}");
            History::RequestFirst
        }
        (Ok(()), Ok(CancelRecorded::Recorded)) if !finishing => {
            assert_eq!(log, vec![created.clone(), barrier.clone()], "{state}");
            assert_eq!(pending.as_ref(), Some(request), "the late request is lost: {state}");
            History::BarrierFirst
        }
        (Ok(()), Ok(CancelRecorded::Finished)) if finishing => {
            assert_eq!(log, vec![created.clone(), barrier.clone()], "{state}");
            assert_eq!(pending, None, "a finished Operation has a request: {state}");
            History::BarrierFirst
        }
        _ => panic!("an illegal history: {state}"),
    }
}

/// `request_cancel` and a barrier append (passing the point of no return, or finishing as
/// succeeded) of a fresh Operation, started together from two stores (two pools, so two server
/// connections), `ROUNDS` times, `BATCH` rounds at once (so the appends also share group
/// commits). Each round is one of the two legal histories; how many of each is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_requests_race_barriers() {
    let Some(url) = url("cancel_requests_race_barriers") else { return };
    let schema = Schema::new(&url);
    let owner = schema.store().await;
    let asker = schema.store().await;
    let mut histories = Vec::new();
    for batch in 0..ROUNDS / BATCH {
        let start = Arc::new(tokio::sync::Barrier::new(2 * BATCH));
        let mut rounds = Vec::new();
        for i in 0..BATCH {
            let round = batch * BATCH + i;
            let id = OperationId::new();
            let first = created(id, "prod", 1);
            let lease = owner.create(&first, "owner", LONG).await.expect("creates");
            let wall = barrier(id, round);
            let ask = request(id, &format!("asker-{round}"));
            let append = {
                let (owner, start, wall) = (owner.clone(), start.clone(), wall.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    owner.append(&lease, &[wall]).await
                })
            };
            let requested = {
                let (asker, start, ask) = (asker.clone(), start.clone(), ask.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    asker.request_cancel(&ask).await
                })
            };
            rounds.push((round, first, wall, ask, append, requested));
        }
        for (round, first, wall, ask, append, requested) in rounds {
            let appended = append.await.expect("joins the append");
            let requested = requested.await.expect("joins the request");
            let name = round.to_string();
            histories.push(judge(&owner, &name, &first, &wall, &ask, appended, requested).await);
        }
    }
    let first = histories.iter().filter(|h| **h == History::RequestFirst).count();
    println!(
        "{ROUNDS} rounds: the request first in {first}, the barrier first in {}",
        ROUNDS - first
    );
    assert!(owner.check(false).await.expect("checks").findings.is_empty());
}

/// A store whose sessions wait for locks as long as a test does.
async fn patient(schema: &Schema, name: &str, url: Option<&str>) -> Arc<PostgresStore> {
    let options = schema
        .options()
        .application_name(name)
        .lock_timeout(Duration::from_secs(120))
        .idle_in_transaction_timeout(Duration::from_secs(120))
        .retries(12);
    match url {
        None => schema.store_with(options).await,
        Some(url) => match PostgresStore::connect(url, options).await {
            Ok(store) => Arc::new(store),
            Err(e) => panic!("connecting through the proxy: {e:?}"),
        },
    }
}

/// How the barrier append's commit fails in [`barrier_append_failing_at_commit`].
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Its backend is terminated while the commit waits: it did not commit.
    Killed,
    /// Its connection is cut while the commit waits, which then goes on: it committed, and the
    /// answer is lost.
    AnswerLost,
}

/// A barrier append whose commit is held (with the Operation's row locked by it), while a
/// cancel request waits for that row; then the append's commit fails. Killed: the append did
/// not commit; the request usually goes in first (it waited first), and then the append must
/// answer `CancelPending` (the store's check after the failed commit must not send the barrier
/// again past the request); if the append's retry takes the row first, the barrier goes in and
/// the request after it. Answer lost: the append committed, so it answers `Ok`, and the request
/// is recorded after it.
async fn barrier_append_failing_at_commit(test: &str, fault: Fault) {
    let Some(url) = url(test) else { return };
    let schema = Schema::new(&url);
    let admin = admin(&url).await;
    let proxy = Proxy::start(&url).await;
    let owner_name = format!("{}_owner", schema.name);
    let through = proxy.url(&url);
    let owner = match fault {
        Fault::Killed => patient(&schema, &owner_name, None).await,
        Fault::AnswerLost => patient(&schema, &owner_name, Some(&through)).await,
    };
    let asker_name = format!("{}_asker", schema.name);
    let asker = patient(&schema, &asker_name, None).await;
    let gate = Gate::close(&url, &schema.name).await;

    let id = OperationId::new();
    let first = created(id, "prod", 1);
    let lease = owner.create(&first, "owner", LONG).await.expect("creates");
    gate.on_records(id).await;
    let wall = passed(id, 1);
    let append = {
        let (owner, lease, wall) = (owner.clone(), lease.clone(), wall.clone());
        tokio::spawn(async move { owner.append(&lease, &[wall]).await })
    };
    let held = blocked_backend(&admin, &owner_name, true).await;
    let ask = request(id, "amy");
    let requested = {
        let (asker, ask) = (asker.clone(), ask.clone());
        tokio::spawn(async move { asker.request_cancel(&ask).await })
    };
    blocked_backend(&admin, &asker_name, false).await;
    match fault {
        Fault::Killed => terminate_pid(&admin, held).await,
        Fault::AnswerLost => {
            assert!(proxy.cut() >= 1, "no connection to cut");
        }
    }
    // After a kill the request goes on at once; after a cut, the commit waits for the gate
    // (and so do the request and the store's check of the append).
    gate.open().await;
    let appended = append.await.expect("joins the append");
    let requested = requested.await.expect("joins the request");
    let history = judge(&owner, test, &first, &wall, &ask, appended, requested).await;
    if let Fault::AnswerLost = fault {
        // The server does not look at a client's socket while a commit waits for a lock
        // (`client_connection_check_interval` is off): the held commit went through, so the
        // store's check after the lost answer found the barrier there.
        assert_eq!(history, History::BarrierFirst, "{fault:?}");
    }
    println!("{fault:?}: {history:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_barrier_whose_backend_is_killed_at_commit_never_passes_a_request() {
    barrier_append_failing_at_commit(
        "a_barrier_whose_backend_is_killed_at_commit_never_passes_a_request",
        Fault::Killed,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_barrier_whose_commit_answer_is_lost_is_acknowledged_once() {
    barrier_append_failing_at_commit(
        "a_barrier_whose_commit_answer_is_lost_is_acknowledged_once",
        Fault::AnswerLost,
    )
    .await;
}

/// `request_cancel` with its connection dropped, three ways, retried by the store: killed while
/// it waits for the Operation's row (nothing written), killed while its commit waits (nothing
/// written), cut while its commit waits, which then goes on (written, answer lost). Each time
/// the answer is `Recorded` and the request is pending, once: the retry that finds its own
/// request pending says so, never `AlreadyPending` with it. Another request then is
/// `AlreadyPending` with the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_cancel_with_dropped_connections_answers_truthfully() {
    let test = "request_cancel_with_dropped_connections_answers_truthfully";
    let Some(url) = url(test) else { return };
    let schema = Schema::new(&url);
    let admin = admin(&url).await;
    let proxy = Proxy::start(&url).await;
    let owner = schema.store().await;
    let asker_name = format!("{}_asker", schema.name);
    let asker = patient(&schema, &asker_name, Some(&proxy.url(&url))).await;
    let gate = Gate::close(&url, &schema.name).await;

    for way in ["killed waiting for the row", "killed at commit", "cut at commit"] {
        let id = OperationId::new();
        owner.create(&created(id, "prod", 1), "owner", LONG).await.expect("creates");
        let ask = request(id, "amy");
        let mut locker = crate::support::admin(&url).await;
        let row_lock = if way == "killed waiting for the row" {
            let tx = locker.transaction().await.expect("begins");
            tx.execute(
                &format!("SELECT 1 FROM {}.operations WHERE id = $1 FOR UPDATE", schema.name),
                &[&crate::support::key(id)],
            )
            .await
            .expect("locks the row");
            Some(tx)
        } else {
            gate.on_cancel(id).await;
            None
        };
        let requested = {
            let (asker, ask) = (asker.clone(), ask.clone());
            tokio::spawn(async move { asker.request_cancel(&ask).await })
        };
        let advisory = row_lock.is_none();
        let pid = blocked_backend(&admin, &asker_name, advisory).await;
        if way == "cut at commit" {
            assert!(proxy.cut() >= 1, "{way}: no connection to cut");
            // The retry waits for the row, which the held commit locks.
            blocked_backend(&admin, &asker_name, false).await;
        } else {
            terminate_pid(&admin, pid).await;
        }
        if let Some(tx) = row_lock {
            // The retry waits for the row again before it is let go.
            blocked_backend(&admin, &asker_name, false).await;
            tx.rollback().await.expect("unlocks");
        } else {
            gate.open().await;
        }
        let answer = requested.await.expect("joins").expect("the request is recorded");
        if advisory {
            // Closed again for the next way, once the retry went through.
            gate.reclose().await;
        }
        assert_eq!(answer, CancelRecorded::Recorded, "{way}");
        let pending = asker.pending_cancel(id).await.expect("reads");
        assert_eq!(pending, Some(ask.clone()), "{way}");
        let later = request(id, "bob");
        let answer = asker.request_cancel(&later).await.expect("a later request");
        assert_eq!(answer, CancelRecorded::AlreadyPending(ask.clone()), "{way}");
        // The same request again (as a retry sends it) is this one: Recorded.
        let again = asker.request_cancel(&ask).await.expect("the same request again");
        assert_eq!(again, CancelRecorded::Recorded, "{way}");
    }
    drop(proxy);
}

/// The append that answers a pending request (`CancelRequested` or `CancelRefused`), with its
/// connection dropped the same three ways: once it is acknowledged, its record is in the log
/// once and the request is gone; a new request is then recorded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_answering_append_with_dropped_connections_takes_the_request_away_once() {
    let test = "the_answering_append_with_dropped_connections_takes_the_request_away_once";
    let Some(url) = url(test) else { return };
    let schema = Schema::new(&url);
    let admin = admin(&url).await;
    let proxy = Proxy::start(&url).await;
    let owner_name = format!("{}_owner", schema.name);
    let owner = patient(&schema, &owner_name, Some(&proxy.url(&url))).await;
    let asker = schema.store().await;
    let gate = Gate::close(&url, &schema.name).await;

    let ways = ["killed waiting for the row", "killed at commit", "cut at commit"];
    for (n, way) in ways.iter().enumerate() {
        let id = OperationId::new();
        let first = created(id, "prod", 1);
        let lease: Lease = owner.create(&first, "owner", LONG).await.expect("creates");
        let ask = request(id, "amy");
        let recorded = asker.request_cancel(&ask).await.expect("requests");
        assert_eq!(recorded, CancelRecorded::Recorded);
        let answer = if n % 2 == 0 { cancelled(id, 1, "amy") } else { refused(id, 1, "amy") };
        let mut locker = crate::support::admin(&url).await;
        let row_lock = if *way == "killed waiting for the row" {
            let tx = locker.transaction().await.expect("begins");
            tx.execute(
                &format!("SELECT 1 FROM {}.operations WHERE id = $1 FOR UPDATE", schema.name),
                &[&crate::support::key(id)],
            )
            .await
            .expect("locks the row");
            Some(tx)
        } else {
            gate.on_records(id).await;
            None
        };
        let appended = {
            let (owner, lease, answer) = (owner.clone(), lease.clone(), answer.clone());
            tokio::spawn(async move { owner.append(&lease, &[answer]).await })
        };
        let advisory = row_lock.is_none();
        let pid = blocked_backend(&admin, &owner_name, advisory).await;
        if *way == "cut at commit" {
            assert!(proxy.cut() >= 1, "{way}: no connection to cut");
            // The store's check of what landed waits for the row, which the held commit locks.
            blocked_backend(&admin, &owner_name, false).await;
        } else {
            terminate_pid(&admin, pid).await;
        }
        if let Some(tx) = row_lock {
            blocked_backend(&admin, &owner_name, false).await;
            tx.rollback().await.expect("unlocks");
        } else {
            gate.open().await;
        }
        appended.await.expect("joins").unwrap_or_else(|e| panic!("{way}: the answer: {e:?}"));
        if advisory {
            gate.reclose().await;
        }
        let log = owner.read(id).await.expect("reads");
        assert_eq!(log, vec![first, answer], "{way}");
        assert_eq!(owner.pending_cancel(id).await.expect("reads"), None, "{way}");
        let again = request(id, "bob");
        let recorded = asker.request_cancel(&again).await.expect("requests again");
        assert_eq!(recorded, CancelRecorded::Recorded, "{way}: a request after the answer");
    }
    assert!(owner.check(false).await.expect("checks").findings.is_empty());
}
