//! The indexes: unfinished Operations, environments by creation time, resource queues, and
//! deleting an environment.

use saga_core::log::{LogLine, Record, RecordKind};
use saga_core::store::{Lease, StoreError};
use saga_core::{OperationId, Resource};

use super::LONG;
use std::sync::Arc;

use saga_core::store::Store;

use super::support::*;

/// `resource_queue` lists a resource's unfinished Operations in creation order; a finish (at the
/// end of a batch too) and `delete_environment` remove them; resources whose kind and name
/// concatenate alike (`ab`/`c` and `a`/`bc`) never share a queue.
pub async fn resource_queues<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("resource_queues", store)
        .run(|cx| async move {
            let on = |id: OperationId, kind: &str, name: &str, env: &str| {
                let mut record = created(id, env, saga_core::Timestamp::now().unix_ms());
                if let RecordKind::OperationCreated { resource, .. } = &mut record.kind {
                    *resource = Resource::new(kind, name);
                }
                record
            };
            let queue = |kind: &str, name: &str| {
                let resource = Resource::new(kind, name);
                let store = cx.store.clone();
                async move { store.resource_queue(&resource).await }
            };
            let empty = cx.ok("reading an empty queue", queue("app", "web").await);
            if !empty.is_empty() {
                cx.fail(format!("an empty store has a queue: {empty:?}"));
            }
            let ids: Vec<OperationId> = (0..4).map(|_| OperationId::new()).collect();
            let mut leases = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                let env = if i == 3 { "gone" } else { "prod" };
                let what = format!("creating Operation {i} on ab/c");
                leases
                    .push(cx.ok(&what, cx.store.create(&on(*id, "ab", "c", env), "x", LONG).await));
            }
            let other = OperationId::new();
            cx.ok(
                "creating on a/bc",
                cx.store.create(&on(other, "a", "bc", "prod"), "x", LONG).await,
            );
            let got = cx.ok("reading the queue of ab/c", queue("ab", "c").await);
            if got != ids {
                cx.fail(format!("expected {ids:?} in creation order, got {got:?}"));
            }
            let got = cx.ok("reading the queue of a/bc", queue("a", "bc").await);
            if got != vec![other] {
                cx.fail(format!("a/bc shares a queue with ab/c: {got:?}"));
            }
            let batch = [started(ids[1], 1), finished(ids[1], 2)];
            cx.ok("finishing the second in a batch", cx.store.append(&leases[1], &batch).await);
            cx.ok("finishing the first", cx.store.append(&leases[0], &[finished(ids[0], 1)]).await);
            cx.ok(
                "deleting the environment of the fourth",
                cx.store.delete_environment("gone").await,
            );
            let got = cx.ok("reading the queue of ab/c", queue("ab", "c").await);
            if got != vec![ids[2]] {
                cx.fail(format!(
                    "after two finishes and a deletion expected [{}], got {got:?}",
                    ids[2]
                ));
            }
        })
        .await;
}

/// `list_unfinished` lists the Operations without `OperationFinished`, in id order whatever the
/// order of creation, with nothing damaged; an append holding `OperationFinished` (alone or at
/// the end of a batch) removes the Operation, whose records stay.
pub async fn unfinished_list<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("unfinished_list", store)
        .run(|cx| async move {
            cx.assert_unfinished(&[], "on an empty store").await;
            let ids: Vec<OperationId> = (0..5).map(|_| OperationId::new()).collect();
            let mut leases = std::collections::HashMap::new();
            for (n, i) in [3, 0, 4, 2, 1].into_iter().enumerate() {
                let env = if i % 2 == 0 { "prod" } else { "staging" };
                let r = created(ids[i], env, 100 + n as u64);
                let lease = cx.ok("creating", cx.store.create(&r, "me", LONG).await);
                leases.insert(ids[i], lease);
            }
            cx.assert_unfinished(&ids, "after creating 5 Operations out of id order").await;

            let batch = [started(ids[1], 1), finished(ids[1], 2)];
            cx.ok(
                "appending [StepStarted, OperationFinished]",
                cx.store.append(&leases[&ids[1]], &batch).await,
            );
            let left = [ids[0], ids[2], ids[3], ids[4]];
            cx.assert_unfinished(&left, "after finishing the second in a batch").await;
            cx.ok(
                "appending StepStarted",
                cx.store.append(&leases[&ids[3]], &[started(ids[3], 1)]).await,
            );
            cx.assert_unfinished(&left, "after appending StepStarted to the fourth").await;
            cx.ok(
                "appending OperationFinished",
                cx.store.append(&leases[&ids[3]], &[finished(ids[3], 2)]).await,
            );
            cx.assert_unfinished(&[ids[0], ids[2], ids[4]], "after finishing the fourth").await;
            cx.ok(
                "appending OperationFinished",
                cx.store.append(&leases[&ids[0]], &[finished(ids[0], 1)]).await,
            );
            cx.assert_unfinished(&[ids[2], ids[4]], "after finishing the first").await;
            for i in [0, 1, 3] {
                let records = cx.read(ids[i], "after it finished").await;
                if !matches!(
                    records.last().map(|r| &r.kind),
                    Some(RecordKind::OperationFinished { .. })
                ) {
                    cx.fail(format!(
                        "a finished Operation's records end with {:?}",
                        records.last()
                    ));
                }
            }
            cx.assert_env(
                "prod",
                0,
                u64::MAX,
                &[ids[0], ids[4], ids[2]],
                "in creation order, finished or not",
            )
            .await;
        })
        .await;
}

/// `list_environment` returns one environment's Operations created in `[since_ms, until_ms)`
/// (since inclusive, until exclusive; an empty or inverted range lists nothing) in creation
/// order, with nothing damaged.
pub async fn environment_bounds<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("environment_bounds", store)
        .run(|cx| async move {
            let p10 = cx.create("prod", 10, "me").await.0;
            let s15 = cx.create("staging", 15, "me").await.0;
            let p20 = cx.create("prod", 20, "me").await.0;
            let p30 = cx.create("prod", 30, "me").await.0;
            let s25 = cx.create("staging", 25, "me").await.0;
            let p1000 = cx.create("prod", 1_000, "me").await.0;
            let cases: [(u64, u64, Vec<OperationId>); 17] = [
                (0, u64::MAX, vec![p10, p20, p30, p1000]),
                (10, 30, vec![p10, p20]),
                (11, 31, vec![p20, p30]),
                (10, 11, vec![p10]),
                (9, 10, vec![]),
                (0, 10, vec![]),
                (0, 11, vec![p10]),
                (20, 21, vec![p20]),
                (20, 20, vec![]),
                (30, 10, vec![]),
                (u64::MAX, 0, vec![]),
                (31, 1_000, vec![]),
                (31, 1_001, vec![p1000]),
                (30, u64::MAX, vec![p30, p1000]),
                (1_001, u64::MAX, vec![]),
                (u64::MAX, u64::MAX, vec![]),
                (0, 0, vec![]),
            ];
            for (since, until, expected) in cases {
                cx.assert_env("prod", since, until, &expected, "").await;
            }
            cx.assert_env("staging", 0, u64::MAX, &[s15, s25], "").await;
            cx.assert_env("staging", 15, 25, &[s15], "").await;
            cx.assert_env("staging", 16, 26, &[s25], "").await;
            cx.assert_env("nowhere", 0, u64::MAX, &[], "").await;
        })
        .await;
}

/// Environments are apart whatever their names: names that are prefixes of each other
/// (`"a"`, `"a\0"`, `"a\0\0\0\0\0\0\0"`, `"ab"`), that differ in case, that hold SQL
/// wildcards or path separators, the empty name, a 10 KiB name and a non-ASCII one each list
/// their own Operations only.
pub async fn environment_names<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("environment_names", store)
        .run(|cx| async move {
            let names = env_names();
            let mut by_name: Vec<Vec<OperationId>> = vec![Vec::new(); names.len()];
            // Interleaved: every name at 10.., then again at 100.. and 200.
            for round in 0..2u64 {
                for (i, name) in names.iter().enumerate() {
                    let (id, _, _) = cx.create(name, 10 + round * 100 + i as u64, "me").await;
                    by_name[i].push(id);
                }
            }
            for (i, name) in names.iter().enumerate() {
                let shown = show_name(name);
                cx.assert_env(name, 0, u64::MAX, &by_name[i], &format!("of {shown}")).await;
                cx.assert_env(
                    name,
                    100,
                    u64::MAX,
                    &by_name[i][1..],
                    &format!("of {shown} from 100"),
                )
                .await;
            }
            for unused in ["a\0\0", "b", "a%b", "a\u{e4}", " a", "a "] {
                let shown = show_name(unused);
                cx.assert_env(unused, 0, u64::MAX, &[], &format!("of unused {shown}")).await;
            }
            let all: Vec<OperationId> = {
                let mut all: Vec<OperationId> = by_name.concat();
                all.sort();
                all
            };
            cx.assert_unfinished(&all, "of every environment").await;
            for (i, name) in names.iter().enumerate() {
                let records = cx.read(by_name[i][0], "its first Operation").await;
                match records.first().map(|r| &r.kind) {
                    Some(RecordKind::OperationCreated { environment, .. })
                        if environment == name => {}
                    other => cx.fail(format!(
                        "the OperationCreated record of an Operation of {} reads back as {other:?}",
                        show_name(name)
                    )),
                }
            }
        })
        .await;
}

/// The awkward environment names of [`environment_names`] and [`delete_environment`].
fn env_names() -> Vec<String> {
    vec![
        "a".into(),
        "a\0".into(),
        "a\0\0\0\0\0\0\0".into(),
        "ab".into(),
        "A".into(),
        "".into(),
        "a_".into(),
        "a%".into(),
        "a/b".into(),
        "prod-\u{fc}mlaut-\u{65e5}\u{672c}-\u{1f680}".into(),
        "x".repeat(10 * 1024),
        format!("{}y", "x".repeat(10 * 1024)),
    ]
}

/// `delete_environment` removes every Operation of one environment (records read
/// [`StoreError::NotFound`], gone from both listings, no log lines left, not claimable) and
/// returns how many; Operations of other environments, whose names are close to it, stay whole;
/// deleting again removes nothing; the environment can be used again.
pub async fn delete_environment<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("delete_environment", store)
        .run(|cx| async move {
            let names = env_names();
            let mut kept: Vec<(String, OperationId, Vec<Record>, Vec<LogLine>)> = Vec::new();
            let mut gone: Vec<(OperationId, Lease)> = Vec::new();
            for (i, name) in names.iter().enumerate() {
                let (id, lease, _) = cx.create(name, 10 + i as u64, "me").await;
                cx.ok("appending", cx.store.append(&lease, &[started(id, 1)]).await);
                let lines = vec![line(id, 0, 100 + i as u64)];
                cx.ok("appending a log line", cx.store.append_log(&lease, &lines).await);
                if name == "a" {
                    gone.push((id, lease));
                } else {
                    let records = cx.read(id, "before deleting").await;
                    kept.push((name.clone(), id, records, lines));
                }
            }
            // Another Operation of "a": finished, with log lines.
            let (finished_id, lease, _) = cx.create("a", 50, "me").await;
            cx.ok("finishing", cx.store.append(&lease, &[finished(finished_id, 1)]).await);
            let lines = [line(finished_id, 0, 60), line(finished_id, 1, 70)];
            cx.ok("appending log lines", cx.store.append_log(&lease, &lines).await);
            gone.push((finished_id, lease));

            let deleted =
                cx.ok("deleting environment \"a\"", cx.store.delete_environment("a").await);
            cx.equal(deleted, 2, "Operations deleted with environment \"a\"");
            for (id, lease) in &gone {
                match cx.store.read(*id).await {
                    Err(StoreError::NotFound(x)) if x == *id => {}
                    other => cx.fail(format!(
                        "reading a deleted Operation: expected NotFound({id}), got {}",
                        brief(&other)
                    )),
                }
                cx.assert_log(*id, &[], "of a deleted Operation").await;
                let claim = cx.store.claim(*id, "other", LONG).await;
                if !matches!(&claim, Err(StoreError::NotFound(x)) if x == id) {
                    cx.fail(format!(
                        "claiming a deleted Operation: expected NotFound({id}), got {}",
                        brief(&claim)
                    ));
                }
                // Both had two records: the next would be 2.
                let late = cx.store.append(lease, &[started(*id, 2)]).await;
                cx.refused(&late, "appending with the lease of a deleted Operation");
                cx.assert_absent(*id, "after a late append with its old lease").await;
            }
            cx.assert_env("a", 0, u64::MAX, &[], "after deleting it").await;
            let mut unfinished: Vec<OperationId> = kept.iter().map(|k| k.1).collect();
            unfinished.sort();
            cx.assert_unfinished(&unfinished, "after deleting \"a\"").await;
            for (name, id, records, lines) in &kept {
                let what = format!("of {} after deleting \"a\"", show_name(name));
                cx.assert_records(*id, records, &what).await;
                cx.assert_log(*id, lines, &what).await;
                cx.assert_env(name, 0, u64::MAX, &[*id], &what).await;
            }
            let again = cx.ok("deleting \"a\" again", cx.store.delete_environment("a").await);
            cx.equal(again, 0, "Operations deleted with \"a\" a second time");
            let none = cx.ok("deleting \"nowhere\"", cx.store.delete_environment("nowhere").await);
            cx.equal(none, 0, "Operations deleted with an unknown environment");
            let wild = cx.ok("deleting \"_\"", cx.store.delete_environment("_").await);
            cx.equal(wild, 0, "Operations deleted with environment \"_\"");
            let wild = cx.ok("deleting \"%\"", cx.store.delete_environment("%").await);
            cx.equal(wild, 0, "Operations deleted with environment \"%\"");

            // The log lines went with the Operations: a purge of everything finds only the kept.
            let purged = cx.ok("purging every log line", cx.store.purge_logs(u64::MAX).await);
            cx.equal(purged, kept.len() as u64, "log lines purged after deleting \"a\"");

            let (fresh, _, _) = cx.create("a", 10, "me").await;
            cx.assert_env("a", 0, u64::MAX, &[fresh], "created again after deleting it").await;

            let deleted = cx.ok("deleting the empty name", cx.store.delete_environment("").await);
            cx.equal(deleted, 1, "Operations deleted with the empty environment name");
            let empty = kept.iter().find(|k| k.0.is_empty()).map(|k| k.1);
            if let Some(id) = empty {
                cx.assert_absent(id, "after deleting the empty name").await;
            }
            for (name, id, records, _) in kept.iter().filter(|k| !k.0.is_empty()) {
                let what = format!("of {} after deleting \"\"", show_name(name));
                cx.assert_records(*id, records, &what).await;
            }
        })
        .await;
}
