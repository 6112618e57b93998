//! Multi-host URLs and a failover, against real servers: a host that is down is passed over, a
//! standby named first is passed over for the primary (the store asks for read-write sessions
//! itself), read-only sessions are refused in a sentence, and a store that writes through the
//! primary's SIGKILL and its synchronous standby's promotion keeps every write it acknowledged,
//! its pool and its listener reaching the promoted standby on their own.
//!
//! The pair comes from `scripts/services/postgres.sh` (`SAGA_TEST_POSTGRES_FAILOVER_URL`); a test
//! that needs it fresh runs `postgres.sh start-pair` first (fast when it is; a new pair, about 3
//! s, after a failover used it up). One such test at a time.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use saga_core::log::Record;
use saga_core::store::{Lease, Store, StoreError, WakeUp};
use saga_core::OperationId;
use saga_store_postgres::testing::{failover_pair, FailoverPair};
use saga_store_postgres::{PostgresError, PostgresStore};

use crate::support::{admin, created, key, started, url, Schema, EVENT, LONG};

/// One test of the pair at a time: a failover uses it up. (Each test has a runtime of its own:
/// tokio's mutex works across them.)
static PAIR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `url` with its host and port replaced by `hosts` (`h1:p1,h2:p2`), and `query` after it.
fn with_hosts(url: &str, hosts: &str, query: &str) -> String {
    let at = url.rfind('@').map_or(url.find("://").map_or(0, |i| i + 3), |i| i + 1);
    let path = url[at..].find('/').map_or(url.len(), |i| at + i);
    let end = url[path..].find('?').map_or(url.len(), |i| path + i);
    format!("{}{hosts}{}{query}", &url[..at], &url[path..end])
}

/// A port on 127.0.0.1 where nothing listens.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a port");
    listener.local_addr().expect("its address").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_is_down_is_passed_over_for_the_next_one() {
    let Some(url) = url("a_host_that_is_down_is_passed_over_for_the_next_one") else { return };
    let addr = saga_store_postgres::testing::server_addr(&url).expect("the server's address");
    let hosts = format!("127.0.0.1:{},127.0.0.1:{}", dead_port(), addr.port());
    let schema = Schema::new(&with_hosts(&url, &hosts, ""));
    let store = schema.store().await;
    let id = OperationId::new();
    let lease = store.create(&created(id, "prod", 1), "me", LONG).await.expect("creates");
    store.append(&lease, &[started(id, 1)]).await.expect("appends");
    assert_eq!(store.read(id).await.expect("reads").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_sessions_are_refused_in_a_sentence() {
    let Some(url) = url("read_only_sessions_are_refused_in_a_sentence") else { return };
    let sep = if url.contains('?') { '&' } else { '?' };
    let read_only = format!("{url}{sep}target_session_attrs=read-only");
    match PostgresStore::connect(&read_only, Default::default()).await {
        Err(e @ StoreError::Backend { .. }) => {
            let source = e.source().and_then(|s| s.downcast_ref::<PostgresError>());
            assert!(matches!(source, Some(PostgresError::ReadOnlySessions)), "{e:?}");
            assert!(e.to_string().contains("read-write"), "{e}");
        }
        other => panic!("read-only sessions: {other:?}"),
    }
}

/// The pair's URL with its hosts in the other order and no `target_session_attrs`: libpq's
/// default (`any`) would take the standby.
fn standby_first(pair: &FailoverPair) -> String {
    with_hosts(&pair.url, &format!("{},{}", pair.standby, pair.primary), "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_named_first_is_passed_over_for_the_primary() {
    let test = "a_standby_named_first_is_passed_over_for_the_primary";
    let _pair = PAIR.lock().await;
    let Some(pair) = failover_pair(test) else { return };
    // The schema is dropped through the pair's URL; the store connects through the other.
    let schema = Schema::new(&pair.url);
    let store = match PostgresStore::connect(&standby_first(&pair), schema.options()).await {
        Ok(store) => store,
        Err(e) => panic!("connecting with the standby named first: {e:?}"),
    };
    let id = OperationId::new();
    let lease = store.create(&created(id, "prod", 1), "me", LONG).await.expect("creates");
    store.append(&lease, &[started(id, 1)]).await.expect("appends");
    // On the primary, and (synchronously) on the standby.
    let standby = admin(&with_hosts(&pair.url, &pair.standby, "")).await;
    let rows = standby
        .query(
            &format!("SELECT count(*) FROM {}.records WHERE operation = $1", schema.name),
            &[&key(id)],
        )
        .await
        .expect("reading the standby");
    let on_standby: i64 = rows[0].get(0);
    // Synchronous commit waits for the standby's flush, not its replay: wait for the replay.
    let deadline = Instant::now() + EVENT;
    let mut seen = on_standby;
    while seen < 2 {
        assert!(Instant::now() < deadline, "the standby shows {seen} of 2 records");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let rows = standby
            .query(
                &format!("SELECT count(*) FROM {}.records WHERE operation = $1", schema.name),
                &[&key(id)],
            )
            .await
            .expect("reading the standby");
        seen = rows[0].get(0);
    }
    let in_recovery: bool =
        standby.query_one("SELECT pg_is_in_recovery()", &[]).await.expect("asks").get(0);
    assert!(in_recovery, "the standby is not one");
}

/// What one writer had acknowledged: each Operation's records, in order.
type Acknowledged = HashMap<OperationId, Vec<Record>>;

/// Creates Operations and appends to them until `stop`, noting every write acknowledged. A
/// failed write may have been written or not: the writer reads the Operation back and goes on
/// from what the store holds, noting nothing of the failed write.
async fn write_until(
    store: Arc<PostgresStore>,
    stop: Arc<AtomicBool>,
    failed: Arc<Mutex<Vec<(Instant, String)>>>,
) -> Acknowledged {
    let mut acked = Acknowledged::new();
    let mut current: Option<(Lease, u64)> = None;
    while !stop.load(Ordering::SeqCst) {
        match current.take() {
            None => {
                let id = OperationId::new();
                let record = created(id, "prod", 1);
                match store.create(&record, "writer", LONG).await {
                    Ok(lease) => {
                        acked.insert(id, vec![record]);
                        current = Some((lease, 1));
                    }
                    Err(e) => note(&failed, e),
                }
            }
            Some((lease, seq)) if seq >= 8 => drop(lease),
            Some((lease, seq)) => {
                let record = started(lease.operation, seq);
                match store.append(&lease, std::slice::from_ref(&record)).await {
                    Ok(()) => {
                        acked.entry(lease.operation).or_default().push(record);
                        current = Some((lease, seq + 1));
                    }
                    Err(e) => {
                        // Out of sequence: an earlier failed append was written after all.
                        if !matches!(e, StoreError::OutOfSequence { .. }) {
                            note(&failed, e);
                        }
                        // Whatever the store holds now decides the next number.
                        match store.read(lease.operation).await {
                            Ok(records) => current = Some((lease, records.len() as u64)),
                            Err(_) => current = Some((lease, seq)),
                        }
                    }
                }
            }
        }
    }
    acked
}

fn note(failed: &Mutex<Vec<(Instant, String)>>, e: StoreError) {
    assert!(e.is_transient(), "a write failed with an error that is not transient: {e:?}");
    failed.lock().unwrap_or_else(|p| p.into_inner()).push((Instant::now(), e.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_a_failover_to_the_synchronous_standby() {
    let test = "every_acknowledged_write_survives_a_failover_to_the_synchronous_standby";
    let _pair = PAIR.lock().await;
    let Some(pair) = failover_pair(test) else { return };
    let schema = Schema::new(&pair.url);
    // No retries inside the store: the writers see every failure, typed.
    let store = schema.store_with(schema.options().retries(0).pool_size(4)).await;
    let Some(mut wake_ups) = store.wake_ups() else { panic!("a PostgreSQL store has wake-ups") };
    assert_eq!(
        tokio::time::timeout(EVENT, wake_ups.recv()).await.ok().and_then(Result::ok),
        Some(WakeUp::Missed),
        "the listener's first connection is told"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..4)
        .map(|_| tokio::spawn(write_until(store.clone(), stop.clone(), failed.clone())))
        .collect();
    // Writes in flight, then the primary killed at a random instant and the standby promoted.
    tokio::time::sleep(Duration::from_millis(200 + fastrand::u64(0..300))).await;
    let script = pair.clone();
    let began = Instant::now();
    tokio::task::spawn_blocking(move || script.failover()).await.expect("the failover ran");
    // The listener reconnects to the promoted standby and says what it may have missed.
    let deadline = tokio::time::Instant::now() + EVENT;
    loop {
        match tokio::time::timeout_at(deadline, wake_ups.recv()).await {
            Ok(Ok(WakeUp::Missed)) => break,
            Ok(_) => {}
            Err(_) => panic!("the listener did not reconnect within {EVENT:?}"),
        }
    }
    // The writers go on against the promoted standby: a write acknowledged after the failover.
    let probe = OperationId::new();
    let deadline = Instant::now() + EVENT;
    loop {
        match store.create(&created(probe, "prod", 1), "probe", LONG).await {
            Ok(_) => break,
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no write acknowledged after the failover: {e:?}"),
        }
    }
    let recovered = began.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let mut acked = Acknowledged::new();
    for writer in writers {
        acked.extend(writer.await.expect("a writer"));
    }

    // Everything acknowledged, before and after, is on the promoted standby, read through a
    // store of its own.
    let reader = schema.store().await;
    let mut records = 0;
    for (id, written) in &acked {
        let stored = reader.read(*id).await.expect("reads");
        // By number: a write whose answer was lost may be there too, between acknowledged ones.
        for record in written {
            let at = usize::try_from(record.seq).expect("a small number");
            assert_eq!(
                stored.get(at),
                Some(record),
                "operation {id}: an acknowledged record is not on the promoted standby; it holds \
                 {stored:?}"
            );
        }
        records += written.len();
    }
    let failures = failed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let outage = match (failures.first(), failures.last()) {
        (Some((first, _)), Some((last, _))) => format!(
            "{} failed writes over {:.1} s, e.g. {:?}",
            failures.len(),
            last.duration_since(*first).as_secs_f64(),
            failures[0].1
        ),
        _ => "no failed write".into(),
    };
    let server = admin(&pair.url).await;
    let port: i32 = server.query_one("SELECT inet_server_port()", &[]).await.expect("asks").get(0);
    assert_eq!(format!("127.0.0.1:{port}"), pair.standby, "the store's server is not the standby");
    println!(
        "{test}: {} operations, {records} records acknowledged, each on the promoted standby; \
         writes acknowledged again {:.1} s after the failover began; {outage}",
        acked.len(),
        recovered.as_secs_f64()
    );
}
