//! Reading the fleet's step journal (its format is in `fleet/saga.rs`), as it grows and once it
//! is complete, and checking that no execution of a step ran beside another: needs only the
//! file.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use saga_core::OperationId;

/// One line of the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Line {
    /// Its position in the file, from 0: the order in which the writes happened.
    pub(crate) index: usize,
    /// Unix µs, read just before the write.
    pub(crate) at_us: u64,
    /// `start` or `end`.
    pub(crate) start: bool,
    /// `execute` (else `compensate`).
    pub(crate) execute: bool,
    pub(crate) op: OperationId,
    pub(crate) step: String,
    pub(crate) by: String,
    pub(crate) epoch: u64,
    pub(crate) attempt: u32,
    /// `ok` or `cancelled`, for an `end`.
    pub(crate) result: Option<String>,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "#{} {} {} {} {} {} by={} epoch={} attempt={}{}",
            self.index,
            self.at_us,
            if self.start { "start" } else { "end" },
            if self.execute { "execute" } else { "compensate" },
            self.op,
            self.step,
            self.by,
            self.epoch,
            self.attempt,
            self.result.as_deref().map(|r| format!(" result={r}")).unwrap_or_default()
        )
    }
}

/// Parses one whole line (without its newline); panics on anything else, such as half a line.
fn parse(index: usize, text: &str) -> Line {
    let bad = || -> ! { panic!("journal line {index} does not parse: {text:?}") };
    let fields: Vec<&str> = text.split(' ').collect();
    let value = |i: usize, key: &str| -> &str {
        fields.get(i).and_then(|f| f.strip_prefix(key)).unwrap_or_else(|| bad())
    };
    let start = match fields.get(1) {
        Some(&"start") => true,
        Some(&"end") => false,
        _ => bad(),
    };
    let execute = match fields.get(2) {
        Some(&"execute") => true,
        Some(&"compensate") => false,
        _ => bad(),
    };
    let result = match (start, fields.len()) {
        (true, 8) => None,
        (false, 9) => Some(value(8, "result=").to_owned()),
        _ => bad(),
    };
    Line {
        index,
        at_us: fields[0].parse().unwrap_or_else(|_| bad()),
        start,
        execute,
        op: fields[3].parse().unwrap_or_else(|_| bad()),
        step: fields[4].to_owned(),
        by: value(5, "by=").to_owned(),
        epoch: value(6, "epoch=").parse().unwrap_or_else(|_| bad()),
        attempt: value(7, "attempt=").parse().unwrap_or_else(|_| bad()),
        result,
    }
}

/// Every line of the journal at `path` (none if it does not exist); panics on a line that does
/// not parse or on a last line without its newline.
pub(crate) fn read(path: &Path) -> Vec<Line> {
    let mut tail = Tail::new(path);
    let lines = tail.poll();
    assert!(tail.partial.is_empty(), "the journal ends in half a line: {:?}", tail.partial);
    lines
}

/// Reads the lines appended to the journal since the last call.
#[derive(Debug)]
pub(crate) struct Tail {
    path: PathBuf,
    offset: u64,
    partial: String,
    next_index: usize,
}

impl Tail {
    pub(crate) fn new(path: &Path) -> Tail {
        Tail { path: path.to_owned(), offset: 0, partial: String::new(), next_index: 0 }
    }

    /// The whole lines written since the last call.
    pub(crate) fn poll(&mut self) -> Vec<Line> {
        let Ok(mut file) = std::fs::File::open(&self.path) else { return Vec::new() };
        file.seek(SeekFrom::Start(self.offset)).unwrap();
        let mut text = String::new();
        let read = file.read_to_string(&mut text).unwrap();
        self.offset += read as u64;
        self.partial.push_str(&text);
        let mut lines = Vec::new();
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            lines.push(parse(self.next_index, line.trim_end_matches('\n')));
            self.next_index += 1;
        }
        lines
    }
}

/// What [`check`] found in a journal.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// Lines that show a step running beside another, each with why.
    pub(crate) overlaps: Vec<String>,
    /// Lines of an older epoch after a newer one's, that `in_flight` excused, each with why.
    pub(crate) excused: Vec<String>,
    /// Executions that started and never ended because a newer epoch took over (their executor
    /// dropped them, or was stopped for good).
    pub(crate) abandoned: usize,
    /// Operations whose lines come from more than one epoch.
    pub(crate) taken_over: usize,
    /// The epochs that ran steps, per Operation, in order.
    pub(crate) epochs: HashMap<OperationId, Vec<u64>>,
}

/// Checks that no execution of a step ran beside another, Operation by Operation, in the order
/// of the file:
///
/// - no line of an older epoch comes after a line of a newer one (an executor that lost the
///   Operation wrote after its successor started), unless `in_flight(line, newer)` excuses it
///   (a write that the paused process had begun before it was paused);
/// - no execution (or compensation) of a step starts while another of the same step, of the
///   same epoch, is open (started, not ended); an open one of an older epoch is abandoned when
///   a newer epoch writes, and anything it writes after that is caught by the rule above;
/// - every `end` ends an open execution of its step, epoch, attempt and executor; one epoch is
///   one executor's.
pub(crate) fn check(
    lines: &[Line],
    in_flight: impl Fn(&Line, &Line) -> Option<String>,
) -> Findings {
    let mut findings = Findings::default();
    let mut by_op: BTreeMap<OperationId, Vec<&Line>> = BTreeMap::new();
    for line in lines {
        by_op.entry(line.op).or_default().push(line);
    }
    for (op, lines) in by_op {
        // The newest epoch seen so far, and its first line.
        let mut newest: Option<&Line> = None;
        // Open executions by step: (epoch, attempt, executor, execute?).
        let mut open: HashMap<&str, Vec<&Line>> = HashMap::new();
        let mut owners: HashMap<u64, &str> = HashMap::new();
        let mut epochs = Vec::new();
        for line in lines {
            if let Some(owner) = owners.insert(line.epoch, &line.by) {
                if owner != line.by {
                    findings.overlaps.push(format!("{line}: epoch {} was {owner}'s", line.epoch));
                }
            }
            match newest {
                Some(n) if line.epoch < n.epoch => {
                    match in_flight(line, n) {
                        Some(why) => findings.excused.push(format!("{line} after {n}: {why}")),
                        None => findings
                            .overlaps
                            .push(format!("{line} written after a newer epoch's line {n}")),
                    }
                    // Its execution is over either way.
                    if let Some(list) = open.get_mut(line.step.as_str()) {
                        list.retain(|o| !same_execution(o, line));
                    }
                    continue;
                }
                Some(n) if line.epoch == n.epoch => {}
                _ => {
                    newest = Some(line);
                    epochs.push(line.epoch);
                    // Every execution open so far is abandoned.
                    for list in open.values_mut() {
                        findings.abandoned += list.len();
                        list.clear();
                    }
                }
            }
            let list = open.entry(line.step.as_str()).or_default();
            if line.start {
                if let Some(other) = list.first() {
                    findings.overlaps.push(format!("{line} while {other} is open"));
                }
                list.push(line);
            } else {
                let before = list.len();
                list.retain(|o| !same_execution(o, line));
                if list.len() == before {
                    findings.overlaps.push(format!("{line} ends nothing that is open"));
                }
            }
        }
        if epochs.len() > 1 {
            findings.taken_over += 1;
        }
        findings.epochs.insert(op, epochs);
    }
    findings
}

fn same_execution(start: &Line, end: &Line) -> bool {
    start.epoch == end.epoch
        && start.attempt == end.attempt
        && start.execute == end.execute
        && start.by == end.by
}

/// The steps of `op` whose `execute` ended `ok`, in the order they did.
pub(crate) fn succeeded_steps(lines: &[Line], op: OperationId) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.op == op && l.execute && l.result.as_deref() == Some("ok"))
        .map(|l| l.step.clone())
        .collect()
}
