//! Following an Operation's log: history first, then live lines.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::error::Result;
use crate::id::OperationId;
use crate::oplog::{LogLine, LogSink};
use crate::store::Store;

/// What a follower gets next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowEvent {
    /// A log line.
    Line(LogLine),
    /// The follower fell behind and missed this many lines (they are in the stored log).
    Missed(u64),
}

/// A live view of one Operation's log; see [`Executor::follow`](crate::Executor::follow).
#[derive(Debug)]
pub struct LogFollower {
    history: VecDeque<LogLine>,
    live: Option<broadcast::Receiver<LogLine>>,
    last_seq: Option<u64>,
}

pub(super) async fn follow(
    store: &dyn Store,
    id: OperationId,
    sink: Option<Arc<LogSink>>,
) -> Result<LogFollower> {
    // Subscribe before reading the history so that no line falls between the two; lines in both
    // are dropped by sequence number.
    let (live, unflushed) = match sink {
        Some(sink) => {
            let (live, unflushed) = sink.subscribe();
            (Some(live), unflushed)
        }
        None => (None, Vec::new()),
    };
    let mut history = store.read_log(id).await?;
    history.extend(unflushed);
    history.sort_by_key(|l| l.seq);
    history.dedup_by_key(|l| l.seq);
    Ok(LogFollower { history: history.into(), live, last_seq: None })
}

impl LogFollower {
    /// The next event, or `None` once the Operation stopped running and every line was given.
    pub async fn next(&mut self) -> Option<FollowEvent> {
        if let Some(line) = self.history.pop_front() {
            self.last_seq = Some(line.seq);
            return Some(FollowEvent::Line(line));
        }
        let live = self.live.as_mut()?;
        loop {
            match live.recv().await {
                Ok(line) => {
                    if self.last_seq.is_some_and(|last| line.seq <= last) {
                        continue;
                    }
                    self.last_seq = Some(line.seq);
                    return Some(FollowEvent::Line(line));
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Some(FollowEvent::Missed(missed));
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.live = None;
                    return None;
                }
            }
        }
    }
}
