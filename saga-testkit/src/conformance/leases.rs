//! Leases: granted at create, claimed by one of many, epochs that grow, fencing, expiry, release.

use std::time::{Duration, Instant};

use saga_core::store::{Lease, StoreError};
use saga_core::OperationId;

use super::{LONG, SHORT};
use std::sync::Arc;

use saga_core::store::Store;

use super::support::*;

/// `create` grants the creator the first lease: epoch 1, its owner name, expiring after the
/// ttl; another owner's claim is then [`StoreError::Owned`] naming the creator, and the
/// creator's lease appends.
pub async fn lease_on_create<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("lease_on_create", store)
        .run(|cx| async move {
            let before = saga_core::Timestamp::now().unix_ms();
            let (id, lease, _) = cx.create("prod", before, "creator").await;
            let expected = Lease {
                operation: id,
                owner: "creator".into(),
                epoch: 1,
                expires_ms: lease.expires_ms,
            };
            if lease != expected {
                cx.fail(format!("create granted {lease:?}, expected {expected:?}"));
            }
            // Allow for a store whose clock is not this process's (a database's), by minutes.
            let ttl = LONG.as_millis() as u64;
            if lease.expires_ms < before + ttl - 120_000
                || lease.expires_ms > saga_core::Timestamp::now().unix_ms() + ttl + 120_000
            {
                cx.fail(format!(
                    "create with a ttl of {ttl} ms at {before} granted a lease expiring at {}",
                    lease.expires_ms
                ));
            }
            let other = cx.store.claim(id, "other", LONG).await;
            cx.owned(&other, "creator", "claiming a just-created Operation by another owner");
            let r = started(id, 1);
            cx.ok("appending with the creator's lease", cx.store.append(&lease, &[r]).await);
            let renewed = cx.ok("renewing the creator's lease", cx.store.renew(&lease, LONG).await);
            if renewed.epoch != 1 || renewed.owner != "creator" || renewed.operation != id {
                cx.fail(format!(
                    "renewing {lease:?} gave {renewed:?}: same epoch and owner expected"
                ));
            }
            let r = started(id, 2);
            cx.ok("appending with the renewed lease", cx.store.append(&renewed, &[r]).await);
            let other = cx.store.claim(id, "other", LONG).await;
            cx.owned(&other, "creator", "claiming a renewed lease by another owner");
        })
        .await;
}

/// How many owners race in [`claim_race`].
const RACERS: usize = 16;

/// Of 16 concurrent claims of one Operation by distinct owners with a long ttl, exactly one
/// wins (with a higher epoch) and the others are [`StoreError::Owned`] by the winner; twice,
/// after a release and after an expiry.
pub async fn claim_race<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("claim_race", store)
        .run(|cx| async move {
            let (id, lease, _) =
                cx.create("prod", saga_core::Timestamp::now().unix_ms(), "creator").await;
            cx.ok("releasing the creator's lease", cx.store.release(&lease).await);
            let first = race(cx, id, "round1", "after a release").await;
            if first.epoch <= lease.epoch {
                cx.fail(format!(
                    "the winner got epoch {}, after epoch {}",
                    first.epoch, lease.epoch
                ));
            }
            cx.ok(
                "appending with the winner's lease",
                cx.store.append(&first, &[started(id, 1)]).await,
            );

            let zero = cx.ok(
                "renewing the winner's lease for 0 ms",
                cx.store.renew(&first, Duration::ZERO).await,
            );
            sleep_past(zero.expires_ms, Duration::from_millis(5)).await;
            let second = race(cx, id, "round2", "after an expiry").await;
            if second.epoch <= first.epoch {
                cx.fail(format!(
                    "the second winner got epoch {}, after epoch {}",
                    second.epoch, first.epoch
                ));
            }
            let stale = cx.store.append(&first, &[started(id, 2)]).await;
            cx.fenced(&stale, &first, &second.owner, "appending with the first winner's lease");
            let r = started(id, 2);
            cx.ok("appending with the second winner's lease", cx.store.append(&second, &[r]).await);
        })
        .await;
}

/// Races [`RACERS`] claims of `id` and returns the one winner's lease.
async fn race<S: Store + ?Sized>(cx: &Ctx<S>, id: OperationId, round: &str, when: &str) -> Lease {
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let mut tasks = Vec::new();
    for i in 0..RACERS {
        let (store, barrier, owner) = (cx.store.clone(), barrier.clone(), format!("{round}-{i}"));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let result = store.claim(id, &owner, LONG).await;
            (owner, result)
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        match task.await {
            Ok(r) => results.push(r),
            Err(e) => cx.fail(format!("a claiming task {when} failed: {e}")),
        }
    }
    let winners: Vec<&Lease> = results.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    let [winner] = winners[..] else {
        cx.fail(format!(
            "{RACERS} concurrent claims {when}: expected exactly one winner, got {}: {}",
            winners.len(),
            results
                .iter()
                .map(|(o, r)| format!("{o}: {}", brief(r)))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    };
    let winner = winner.clone();
    for (owner, result) in &results {
        match result {
            Ok(l) if *owner == winner.owner && l.operation == id => {}
            Err(StoreError::Owned { operation, holder })
                if *operation == id && *holder == winner.owner => {}
            other => cx.fail(format!(
                "{RACERS} concurrent claims {when}, won by {}: {owner} got {}, expected \
                 Owned {{ holder: {:?} }}",
                winner.owner,
                brief(other),
                winner.owner
            )),
        }
    }
    winner
}

/// Epochs only grow: a claim by the holder itself (while it holds), after a release and after
/// an expiry each grants a higher epoch than any before; only the newest lease appends, every
/// older one is [`StoreError::Fenced`].
pub async fn epochs_grow<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("epochs_grow", store)
        .run(|cx| async move {
            let (id, l1, _) = cx.create("prod", saga_core::Timestamp::now().unix_ms(), "a").await;
            let mut leases = vec![l1.clone()];
            let l2 = cx.ok("claiming by the holder itself", cx.store.claim(id, "a", LONG).await);
            leases.push(l2.clone());
            cx.ok("releasing", cx.store.release(&l2).await);
            let l3 = cx.ok("claiming by b after a release", cx.store.claim(id, "b", LONG).await);
            leases.push(l3.clone());
            cx.ok("releasing", cx.store.release(&l3).await);
            cx.ok("releasing again", cx.store.release(&l3).await);
            let l4 = cx.ok("claiming by a after b's release", cx.store.claim(id, "a", LONG).await);
            leases.push(l4.clone());
            let zero = cx.ok("renewing for 0 ms", cx.store.renew(&l4, Duration::ZERO).await);
            sleep_past(zero.expires_ms, Duration::from_millis(5)).await;
            let l5 = cx.ok("claiming by c after an expiry", cx.store.claim(id, "c", LONG).await);
            leases.push(l5.clone());
            let l6 = cx.ok("claiming by c, the holder, again", cx.store.claim(id, "c", LONG).await);
            leases.push(l6.clone());

            let steps = [
                "create by a",
                "claim by a, the holder",
                "claim by b after a release",
                "claim by a after a release",
                "claim by c after an expiry",
                "claim by c, the holder",
            ];
            for (i, pair) in leases.windows(2).enumerate() {
                if pair[1].epoch <= pair[0].epoch || pair[1].operation != id {
                    cx.fail(format!(
                        "epochs must grow: {} granted {:?} after {} granted {:?}",
                        steps[i + 1],
                        pair[1],
                        steps[i],
                        pair[0]
                    ));
                }
            }
            for (i, old) in leases[..leases.len() - 1].iter().enumerate() {
                let what =
                    format!("appending with the lease of the {} (epoch {})", steps[i], old.epoch);
                let stale = cx.store.append(old, &[started(id, 1)]).await;
                cx.fenced(&stale, old, "c", &what);
            }
            cx.ok("appending with the newest lease", cx.store.append(&l6, &[started(id, 1)]).await);
            let first = cx.read(id, "at the end").await;
            if first.len() != 2 {
                cx.fail(format!(
                    "expected 2 records after the stale appends, read {}",
                    first.len()
                ));
            }
        })
        .await;
}

/// A lease that is not current cannot write: `append` and `renew` with a stale lease (a lower
/// epoch of the same owner, or of an owner that lost it), a forged one (the current epoch with
/// another owner) or one from the future (a higher epoch) are [`StoreError::Fenced`] naming the
/// epoch presented and the current holder, and the append wrote nothing (a stale
/// `OperationFinished` does not unlist the Operation); the current lease goes on at the same
/// sequence number.
pub async fn leases_fencing<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("leases_fencing", store)
        .run(|cx| async move {
            let (id, l1, first) =
                cx.create("prod", saga_core::Timestamp::now().unix_ms(), "first").await;
            let l2 = cx.ok("claiming by the holder", cx.store.claim(id, "first", LONG).await);
            let forged = Lease { owner: "intruder".into(), ..l2.clone() };
            let future = Lease { epoch: l2.epoch + 1, ..l2.clone() };
            let cases = [
                (&l1, "the holder's older lease"),
                (&forged, "a forged lease (current epoch, another owner)"),
                (&future, "a lease of a higher epoch than the current one"),
            ];
            for (lease, which) in cases {
                let r = cx.store.append(lease, &[started(id, 1)]).await;
                cx.fenced(&r, lease, "first", &format!("appending with {which}"));
                let r = cx.store.append(lease, &[finished(id, 1)]).await;
                cx.fenced(&r, lease, "first", &format!("appending OperationFinished with {which}"));
                let r = cx.store.renew(lease, LONG).await;
                cx.fenced(&r, lease, "first", &format!("renewing {which}"));
                cx.ok(&format!("releasing {which}"), cx.store.release(lease).await);
                let what = format!("after appending with {which}");
                cx.assert_records(id, std::slice::from_ref(&first), &what).await;
                cx.assert_unfinished(&[id], &what).await;
                let other = cx.store.claim(id, "other", LONG).await;
                cx.owned(
                    &other,
                    "first",
                    &format!("claiming by another owner after releasing {which}"),
                );
            }
            let r = started(id, 1);
            cx.ok(
                "appending record 1 with the current lease",
                cx.store.append(&l2, std::slice::from_ref(&r)).await,
            );

            // A lease taken over by another owner.
            cx.ok("releasing", cx.store.release(&l2).await);
            let l3 = cx.ok("claiming by second", cx.store.claim(id, "second", LONG).await);
            let stale = cx.store.append(&l2, &[started(id, 2)]).await;
            cx.fenced(&stale, &l2, "second", "appending with a lease that another owner took over");
            let stale = cx.store.renew(&l2, LONG).await;
            cx.fenced(&stale, &l2, "second", "renewing a lease that another owner took over");
            cx.assert_records(id, &[first, r], "after the taken-over lease's append").await;
            cx.ok(
                "appending record 2 with the new lease",
                cx.store.append(&l3, &[started(id, 2)]).await,
            );
        })
        .await;
}

/// A lease expires: created or renewed with a 50 ms ttl, it is [`StoreError::Owned`] for
/// another owner until then (when the check is quick enough to tell) and claimable by one after
/// it, at a higher epoch, which fences the expired lease.
pub async fn lease_expiry<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("lease_expiry", store)
        .run(|cx| async move {
            // Created with a short lease.
            let start = Instant::now();
            let record = created(OperationId::new(), "prod", saga_core::Timestamp::now().unix_ms());
            let id = record.operation;
            let short =
                cx.ok("creating with a 50 ms lease", cx.store.create(&record, "a", SHORT).await);
            expire_and_take(cx, id, &short, start, "b", "a 50 ms lease from create").await;

            // Renewed to a short lease.
            let (id, lease, _) =
                cx.create("prod", saga_core::Timestamp::now().unix_ms(), "a").await;
            let start = Instant::now();
            let short = cx.ok("renewing for 50 ms", cx.store.renew(&lease, SHORT).await);
            expire_and_take(cx, id, &short, start, "b", "a lease renewed for 50 ms").await;
        })
        .await;
}

/// Checks that `short` (a [`SHORT`] lease granted after `start`) holds off `taker` while it
/// surely runs, and lets it claim once it passed.
async fn expire_and_take<S: Store + ?Sized>(
    cx: &Ctx<S>,
    id: OperationId,
    short: &Lease,
    start: Instant,
    taker: &str,
    which: &str,
) {
    let early = cx.store.claim(id, taker, LONG).await;
    // The lease was granted after `start`: a claim answered within 25 ms of it came before
    // the expiry. A slower answer proves nothing either way.
    if start.elapsed() < SHORT / 2 {
        cx.owned(&early, &short.owner, &format!("claiming {which} by {taker} before it expired"));
    }
    tokio::time::sleep_until((start + SHORT + Duration::from_millis(20)).into()).await;
    sleep_past(short.expires_ms, Duration::from_millis(5)).await;
    let taken = match early {
        Ok(l) => l,
        Err(_) => cx.ok(
            &format!("claiming {which} by {taker} after it expired"),
            cx.store.claim(id, taker, LONG).await,
        ),
    };
    if taken.epoch <= short.epoch || taken.owner != taker {
        cx.fail(format!("claiming {which} after it expired granted {taken:?} after {short:?}"));
    }
    let seq = cx.read(id, "after the expiry").await.len() as u64;
    let stale = cx.store.append(short, &[started(id, seq)]).await;
    cx.fenced(&stale, short, taker, &format!("appending with {which} after it was taken over"));
    cx.ok("appending with the new lease", cx.store.append(&taken, &[started(id, seq)]).await);
}

/// `release` lets another owner claim at once; releasing twice is harmless; releasing a lease
/// that is not current (taken over, or released and claimed since) does nothing: the current
/// holder keeps it.
pub async fn release<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("release", store)
        .run(|cx| async move {
            let (id, l1, _) = cx.create("prod", saga_core::Timestamp::now().unix_ms(), "a").await;
            cx.ok("releasing", cx.store.release(&l1).await);
            cx.ok("releasing twice", cx.store.release(&l1).await);
            let l2 =
                cx.ok("claiming by b at once after a release", cx.store.claim(id, "b", LONG).await);
            cx.ok("releasing a's lease a third time, now b's", cx.store.release(&l1).await);
            let c = cx.store.claim(id, "c", LONG).await;
            cx.owned(&c, "b", "claiming by c after a's stale lease was released");
            cx.ok("appending with b's lease", cx.store.append(&l2, &[started(id, 1)]).await);

            // The holder reclaims; releasing its older lease leaves the newer one.
            let l3 = cx.ok("claiming by b, the holder", cx.store.claim(id, "b", LONG).await);
            cx.ok("releasing b's older lease", cx.store.release(&l2).await);
            let c = cx.store.claim(id, "c", LONG).await;
            cx.owned(&c, "b", "claiming by c after b's older lease was released");
            cx.ok("appending with b's newer lease", cx.store.append(&l3, &[started(id, 2)]).await);

            cx.ok("releasing b's lease", cx.store.release(&l3).await);
            cx.ok("releasing b's lease twice", cx.store.release(&l3).await);
            let l4 = cx.ok("claiming by c after b released", cx.store.claim(id, "c", LONG).await);
            if l4.epoch <= l3.epoch {
                cx.fail(format!("claiming after a release granted {l4:?} after {l3:?}"));
            }
            let stale = cx.store.append(&l3, &[started(id, 3)]).await;
            cx.fenced(&stale, &l3, "c", "appending with a released lease claimed since");
            cx.ok("appending with c's lease", cx.store.append(&l4, &[started(id, 3)]).await);
        })
        .await;
}
