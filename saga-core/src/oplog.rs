//! Operation log lines: what the engine and the steps said while an Operation ran.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::OperationId;
use crate::timestamp::Timestamp;

/// How important a log line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LogLevel {
    /// Detail.
    Debug,
    /// Progress.
    Info,
    /// Something went wrong and was handled (a retry, a rollback).
    Warn,
    /// Something went wrong and stays wrong.
    Error,
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warn => "WARN",
            LogLevel::Error => "ERROR",
        })
    }
}

/// Who wrote a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogSource {
    /// The engine, about a transition.
    Engine,
    /// A step, through a `tracing` event inside its `execute` or `compensate`.
    Step,
}

/// One line of an Operation's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The Operation.
    pub operation: OperationId,
    /// Position in the Operation's log lines, from 0.
    pub seq: u64,
    /// When it was written (Unix ms).
    pub at_ms: u64,
    /// Importance.
    pub level: LogLevel,
    /// Who wrote it.
    pub source: LogSource,
    /// The step it is about, if any.
    pub step: Option<String>,
    /// The text.
    pub message: String,
}

impl LogLine {
    /// When it was written, typed: [`LogLine::at_ms`] is the stored form.
    pub fn at(&self) -> crate::Timestamp {
        crate::Timestamp::from_unix_ms(self.at_ms)
    }
}

impl fmt::Display for LogLine {
    /// `<RFC 3339 time> <LEVEL> [step] message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:5} ", Timestamp::from_unix_ms(self.at_ms), self.level)?;
        if let Some(step) = &self.step {
            write!(f, "[{step}] ")?;
        }
        f.write_str(&self.message)
    }
}

/// Where one Operation's log lines go while it runs: a buffer flushed to the store with every
/// commit, and a broadcast channel that followers read live.
///
/// At most `limit` lines are kept per Operation: the line that reaches the limit is replaced by a
/// visible truncation marker, and later lines are dropped, except the engine's final outcome line.
#[derive(Debug)]
pub(crate) struct LogSink {
    operation: OperationId,
    limit: u64,
    inner: std::sync::Mutex<SinkInner>,
}

#[derive(Debug)]
struct SinkInner {
    next_seq: u64,
    truncated: bool,
    pending: Vec<LogLine>,
    /// Created by the first follower, so that an Operation nobody follows costs no buffer.
    live: Option<tokio::sync::broadcast::Sender<LogLine>>,
}

/// How many lines a follower may fall behind before it misses some (and is told how many).
const FOLLOW_BUFFER: usize = 1024;

/// The default bound on the lines kept per Operation.
pub(crate) const DEFAULT_MAX_LINES: u64 = 10_000;

/// The text of the truncation marker.
pub(crate) const TRUNCATED: &str = "log truncated: later lines of this operation were dropped";

impl LogSink {
    pub(crate) fn new(operation: OperationId, next_seq: u64, limit: u64) -> Self {
        let limit = limit.max(2);
        LogSink {
            operation,
            limit,
            inner: std::sync::Mutex::new(SinkInner {
                next_seq,
                truncated: next_seq >= limit - 1,
                pending: Vec::new(),
                live: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkInner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds an engine line.
    pub(crate) fn line(&self, level: LogLevel, step: Option<&str>, message: String) {
        self.push(level, LogSource::Engine, step.map(str::to_owned), message);
    }

    /// Adds the engine's final line, which the bound never drops.
    pub(crate) fn final_line(&self, level: LogLevel, message: String) {
        let mut inner = self.lock();
        self.write(&mut inner, level, LogSource::Engine, None, message);
    }

    /// Adds a line, sends it to live followers and queues it for the store.
    pub(crate) fn push(
        &self,
        level: LogLevel,
        source: LogSource,
        step: Option<String>,
        message: String,
    ) {
        let mut inner = self.lock();
        if inner.truncated {
            return;
        }
        if inner.next_seq + 1 >= self.limit {
            inner.truncated = true;
            self.write(&mut inner, LogLevel::Warn, LogSource::Engine, None, TRUNCATED.into());
            return;
        }
        self.write(&mut inner, level, source, step, message);
    }

    fn write(
        &self,
        inner: &mut SinkInner,
        level: LogLevel,
        source: LogSource,
        step: Option<String>,
        message: String,
    ) {
        let line = LogLine {
            operation: self.operation,
            seq: inner.next_seq,
            at_ms: crate::id::now_ms(),
            level,
            source,
            step,
            message,
        };
        inner.next_seq += 1;
        if let Some(live) = &inner.live {
            // No follower left is not an error.
            let _ = live.send(line.clone());
        }
        inner.pending.push(line);
    }

    /// Writes the queued lines to the store, under `lease` (the store refuses them once the
    /// lease is not current).
    pub(crate) async fn flush(
        &self,
        store: &dyn crate::store::Store,
        lease: &crate::store::Lease,
    ) -> Result<(), crate::store::StoreError> {
        let lines = std::mem::take(&mut self.lock().pending);
        if lines.is_empty() {
            return Ok(());
        }
        let result = store.append_log(lease, &lines).await;
        if result.is_err() {
            // Keep them for the next flush, ahead of the lines written meanwhile.
            let mut inner = self.lock();
            let newer = std::mem::replace(&mut inner.pending, lines);
            inner.pending.extend(newer);
        }
        result
    }

    /// Drops the lines not stored yet and returns them (the Operation lost its lease: another
    /// executor writes its log now).
    pub(crate) fn discard(&self) -> Vec<LogLine> {
        std::mem::take(&mut self.lock().pending)
    }

    /// A receiver of the lines written from now on, and the lines written but not yet flushed.
    pub(crate) fn subscribe(&self) -> (tokio::sync::broadcast::Receiver<LogLine>, Vec<LogLine>) {
        let mut inner = self.lock();
        let live = inner
            .live
            .get_or_insert_with(|| tokio::sync::broadcast::channel(FOLLOW_BUFFER).0)
            .subscribe();
        (live, inner.pending.clone())
    }
}

/// Renders log lines as text, one per line, as [`LogLine`]'s `Display` writes them.
pub fn render_log(lines: &[LogLine]) -> String {
    let mut out = String::new();
    for line in lines {
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}
