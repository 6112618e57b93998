//! Log lines are fenced by the lease against a claim by another owner racing them on a real
//! server: the old owner's lines either commit before the claim (so the new owner, reading the
//! log right after its claim, sees them, and numbers its own lines after them) or are `Fenced`
//! and never written; never written after the claim.

use std::sync::Arc;

use saga_core::log::{LogLevel, LogLine, LogSource};
use saga_core::store::{Store, StoreError};
use saga_core::OperationId;

use crate::support::{admin, blocked_backend, created, url, Gate, Schema, LONG};

const ROUNDS: usize = 400;
const BATCH: usize = 40;

fn line(id: OperationId, seq: u64, who: &str) -> LogLine {
    LogLine {
        operation: id,
        seq,
        at_ms: 1_000 + seq,
        level: LogLevel::Info,
        source: LogSource::Engine,
        step: None,
        message: format!("{who}'s line {seq}"),
    }
}

/// `ROUNDS` rounds, `BATCH` at once: the old owner (its lease released, so that another may
/// claim at once, but still current until then) appends lines 1-2 while a new owner claims
/// from another store (another pool), reads the log and appends its own line after what it
/// read. Either the old lines are acknowledged and the new owner saw them, or they are
/// `Fenced` naming the new owner and are not in the log; nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_lines_racing_a_claim_commit_before_it_or_are_fenced() {
    let Some(url) = url("log_lines_racing_a_claim_commit_before_it_or_are_fenced") else { return };
    let schema = Schema::new(&url);
    let old = schema.store().await;
    let new = schema.store().await;
    let mut fenced = 0;
    for batch in 0..ROUNDS / BATCH {
        let start = Arc::new(tokio::sync::Barrier::new(2 * BATCH));
        let mut rounds = Vec::new();
        for i in 0..BATCH {
            let round = batch * BATCH + i;
            let id = OperationId::new();
            let lease = old.create(&created(id, "prod", 1), "old", LONG).await.expect("creates");
            let first = line(id, 0, "old");
            old.append_log(&lease, std::slice::from_ref(&first)).await.expect("line 0");
            old.release(&lease).await.expect("releases");
            let stale = vec![line(id, 1, "old"), line(id, 2, "old")];
            let written = {
                let (old, start, stale) = (old.clone(), start.clone(), stale.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    old.append_log(&lease, &stale).await
                })
            };
            let claimed = {
                let (new, start) = (new.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    let lease = new.claim(id, "new", LONG).await?;
                    let seen = new.read_log(id).await?;
                    let own = line(id, seen.len() as u64, "new");
                    new.append_log(&lease, std::slice::from_ref(&own)).await?;
                    Ok::<_, StoreError>((seen, own))
                })
            };
            rounds.push((round, id, first, stale, written, claimed));
        }
        for (round, id, first, stale, written, claimed) in rounds {
            let written = written.await.expect("joins the old owner");
            let (seen, own) = claimed
                .await
                .expect("joins the new owner")
                .unwrap_or_else(|e| panic!("round {round}: the new owner: {e:?}"));
            let log = new.read_log(id).await.expect("reads the log");
            let mut before = vec![first.clone()];
            match written {
                Ok(()) => {
                    before.extend(stale);
                    assert_eq!(
                        seen, before,
                        "round {round}: acknowledged lines were not there right after the claim"
                    );
                }
                Err(StoreError::Fenced { holder, epoch: 1, .. }) if holder == "new" => {
                    fenced += 1;
                    assert_eq!(seen, before, "round {round}: fenced lines were written");
                }
                Err(e) => panic!("round {round}: the old owner's lines: {e:?}"),
            }
            before.push(own);
            assert_eq!(log, before, "round {round}: the log");
        }
    }
    println!("{ROUNDS} rounds: fenced {fenced}, before the claim {}", ROUNDS - fenced);
}

/// The same race, decided: the old owner's lines are held at their commit (a gate), then the
/// new owner claims. The claim must wait for them (it waits on the Operation's row, which the
/// lines' lease check holds); once they commit, the claim goes on and the new owner sees them.
/// A lease check that a claim could slip past would let the claim through at once, and the
/// lines would commit after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_lines_held_at_commit_hold_a_claim_back() {
    let Some(url) = url("log_lines_held_at_commit_hold_a_claim_back") else { return };
    let schema = Schema::new(&url);
    let admin = admin(&url).await;
    let (old_name, new_name) = (format!("{}_old", schema.name), format!("{}_new", schema.name));
    let patient = |name: &str| {
        schema
            .options()
            .application_name(name)
            .lock_timeout(std::time::Duration::from_secs(120))
            .idle_in_transaction_timeout(std::time::Duration::from_secs(120))
    };
    let old = schema.store_with(patient(&old_name)).await;
    let new = schema.store_with(patient(&new_name)).await;
    let gate = Gate::close(&url, &schema.name).await;

    let id = OperationId::new();
    let lease = old.create(&created(id, "prod", 1), "old", LONG).await.expect("creates");
    let first = line(id, 0, "old");
    old.append_log(&lease, std::slice::from_ref(&first)).await.expect("line 0");
    old.release(&lease).await.expect("releases");
    gate.on_log_lines(id).await;
    let stale = vec![line(id, 1, "old"), line(id, 2, "old")];
    let written = {
        let (old, stale) = (old.clone(), stale.clone());
        tokio::spawn(async move { old.append_log(&lease, &stale).await })
    };
    blocked_backend(&admin, &old_name, true).await;
    let mut claimed = {
        let new = new.clone();
        tokio::spawn(async move {
            let lease = new.claim(id, "new", LONG).await?;
            Ok::<_, StoreError>((lease, new.read_log(id).await?))
        })
    };
    // Either the claim waits for the row (as it must), or it got through at once.
    let early = tokio::select! {
        _ = blocked_backend(&admin, &new_name, false) => None,
        done = &mut claimed => Some(done),
    };
    gate.open().await;
    let written = written.await.expect("joins the old owner");
    let (_, seen) = match early {
        Some(done) => done,
        None => claimed.await,
    }
    .expect("joins the new owner")
    .expect("the claim");
    let mut expected = vec![first];
    match written {
        Ok(()) => expected.extend(stale),
        Err(e) => panic!("lines whose lease check passed before the claim: {e:?}"),
    }
    assert_eq!(seen, expected, "lines acknowledged to the old owner came after the claim");
}
