//! Log lines: appended, read and purged, and fenced like records.

use std::sync::Arc;

use saga_core::log::{LogLevel, LogLine, LogSource};
use saga_core::store::Store;
use saga_core::OperationId;

use super::{line, started, Ctx, LONG};

/// Log lines round-trip in order with `append_log` and `read_log` (an unknown or empty log reads
/// empty); `purge_logs(before)` removes exactly the lines written before `before`, of every
/// Operation, returns how many, and never a record or an Operation.
pub async fn log_lines<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("log_lines", store)
        .run(|cx| async move {
            let (a, lease_a, _) = cx.create("prod", 10, "me").await;
            let (b, lease_b, _) = cx.create("prod", 20, "me").await;
            cx.ok("appending a record", cx.store.append(&lease_a, &[started(a, 1)]).await);
            cx.assert_log(a, &[], "before any line").await;
            cx.ok("appending no log lines", cx.store.append_log(&lease_a, &[]).await);
            cx.assert_log(a, &[], "after appending no lines").await;

            let mut lines_a: Vec<LogLine> =
                (0..6).map(|seq| line(a, seq, 100 * (seq + 1))).collect();
            lines_a[2].step = None;
            lines_a[2].source = LogSource::Step;
            lines_a[2].level = LogLevel::Error;
            lines_a[3].message =
                "non-ASCII: \u{fc}\u{65e5}\u{1f680}, a newline\nand a tab\t".into();
            cx.ok("appending lines 0-1", cx.store.append_log(&lease_a, &lines_a[0..2]).await);
            cx.ok("appending line 2", cx.store.append_log(&lease_a, &lines_a[2..3]).await);
            cx.ok("appending lines 3-5", cx.store.append_log(&lease_a, &lines_a[3..6]).await);
            let lines_b = vec![line(b, 0, 150), line(b, 1, 250)];
            cx.ok("appending lines of b", cx.store.append_log(&lease_b, &lines_b).await);
            cx.assert_log(a, &lines_a, "after three appends").await;
            cx.assert_log(b, &lines_b, "after one append").await;
            cx.assert_log(OperationId::new(), &[], "of an unknown Operation").await;

            let records_a = cx.read(a, "before purging").await;
            let records_b = cx.read(b, "before purging").await;
            let purged = cx.ok("purging before 0", cx.store.purge_logs(0).await);
            cx.equal(purged, 0, "lines purged before 0");
            let purged = cx.ok("purging before 100", cx.store.purge_logs(100).await);
            cx.equal(purged, 0, "lines purged before 100 (the oldest line is at 100)");
            let purged = cx.ok("purging before 200", cx.store.purge_logs(200).await);
            cx.equal(purged, 2, "lines purged before 200 (one of a at 100, one of b at 150)");
            cx.assert_log(a, &lines_a[1..], "after purging before 200").await;
            cx.assert_log(b, &lines_b[1..], "after purging before 200").await;
            let purged = cx.ok("purging before 200 again", cx.store.purge_logs(200).await);
            cx.equal(purged, 0, "lines purged before 200 a second time");
            let purged = cx.ok("purging before 301", cx.store.purge_logs(301).await);
            cx.equal(purged, 3, "lines purged before 301 (a's at 200 and 300, b's at 250)");
            cx.assert_log(a, &lines_a[3..], "after purging before 301").await;
            cx.assert_log(b, &[], "after purging before 301").await;
            cx.assert_records(a, &records_a, "after purging logs").await;
            cx.assert_records(b, &records_b, "after purging logs").await;

            // Lines go on after a purge; then a purge of everything.
            let more = line(a, 6, 700);
            cx.ok(
                "appending after a purge",
                cx.store.append_log(&lease_a, std::slice::from_ref(&more)).await,
            );
            let mut expected = lines_a[3..].to_vec();
            expected.push(more);
            cx.assert_log(a, &expected, "after appending after a purge").await;
            let purged = cx.ok("purging everything", cx.store.purge_logs(u64::MAX).await);
            cx.equal(purged, 4, "lines purged before u64::MAX");
            cx.assert_log(a, &[], "after purging everything").await;
            cx.assert_records(a, &records_a, "after purging everything").await;
            cx.assert_records(b, &records_b, "after purging everything").await;
            cx.assert_unfinished(&[a, b], "after purging everything").await;
            cx.assert_env("prod", 0, u64::MAX, &[a, b], "after purging everything").await;
        })
        .await;
}

/// `append_log` is fenced like `append`: once another owner claimed the Operation, the old
/// lease's lines are [`StoreError::Fenced`](saga_core::store::StoreError::Fenced) and write
/// nothing (they would take the new owner's line numbers); the new owner's lines go in; a line
/// whose number is already stored is dropped, never replacing the stored one; and lines of
/// another Operation are refused.
pub async fn log_lines_fenced<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("log_lines_fenced", store)
        .run(|cx| async move {
            let (a, old, _) = cx.create("prod", 10, "old").await;
            let first = vec![line(a, 0, 100), line(a, 1, 110)];
            cx.ok("appending lines 0-1", cx.store.append_log(&old, &first).await);
            cx.ok("releasing", cx.store.release(&old).await);
            let new = cx.ok("claiming for new", cx.store.claim(a, "new", LONG).await);
            let stale = vec![line(a, 2, 120)];
            let refused = cx.store.append_log(&old, &stale).await;
            cx.fenced(&refused, &old, "new", "appending a line with the released lease");
            cx.assert_log(a, &first, "after the fenced append").await;
            let mut theirs = line(a, 2, 130);
            theirs.message = "the new owner's line 2".into();
            cx.ok(
                "appending the new owner's line 2",
                cx.store.append_log(&new, &[theirs.clone()]).await,
            );
            let mut again = line(a, 1, 140);
            again.message = "a second line 1".into();
            cx.ok(
                "appending a line whose number is stored",
                cx.store.append_log(&new, &[again, line(a, 3, 150)]).await,
            );
            let expected = vec![first[0].clone(), first[1].clone(), theirs, line(a, 3, 150)];
            cx.assert_log(a, &expected, "after the new owner's lines").await;
            let (b, _, _) = cx.create("prod", 20, "new").await;
            let foreign = cx.store.append_log(&new, &[line(b, 0, 160)]).await;
            cx.refused(&foreign, "appending another Operation's line with this lease");
            cx.assert_log(b, &[], "after a refused foreign line").await;
            // A line needs the lease even when nothing else was written.
            let forged = saga_core::store::Lease { epoch: new.epoch + 5, ..new.clone() };
            let refused = cx.store.append_log(&forged, &[line(a, 4, 170)]).await;
            cx.fenced(&refused, &forged, "new", "appending a line with a forged epoch");
            cx.assert_log(a, &expected, "after the forged append").await;
            cx.ok("appending a record", cx.store.append(&new, &[started(a, 1)]).await);
        })
        .await;
}
