//! Bounded per-host scrollback.
//!
//! Lines are cleaned once, on arrival (terminal escape sequences and control characters removed,
//! tabs expanded), so drawing never has to look at them again and a hostile or colourful command
//! cannot move the cursor or change colours on the operator's screen.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::event::Stream;

/// Default lines kept per host; `--scrollback` changes it.
pub const DEFAULT_SCROLLBACK: usize = 10_000;

/// Default bytes all scrollback together may hold (`--scrollback-memory`, config
/// `scrollback_memory`): hosts share it fairly, the interleaved view has a quarter of it.
pub const DEFAULT_SCROLLBACK_MEMORY: usize = 256 * 1024 * 1024;

/// What a line costs beyond its text: the line itself, its slot and the text's allocation header.
const LINE_OVERHEAD: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Set in the interleaved all-hosts view (shared: one name per host, not per line).
    pub host: Option<Arc<str>>,
    pub stream: Stream,
    /// Shared between the host's own log and the interleaved one: each line is stored once.
    pub text: Arc<str>,
    /// When the engine said it, for timestamps on a key (`t`).
    pub at: DateTime<Utc>,
    /// wavedeck's own words in the log (a step's start and end, a health verdict), not the host's.
    pub note: bool,
}

/// A ring buffer of lines that also counts what it has dropped, so scroll positions stay valid
/// as old lines fall off the front.
#[derive(Debug, Clone)]
pub struct LogBuffer {
    lines: VecDeque<LogLine>,
    capacity: usize,
    /// Lines ever pushed; a line's absolute number is stable even after older ones are dropped.
    total: u64,
    /// What the lines held cost in memory (see [`LogLine::cost`]).
    bytes: usize,
    /// Host output lines (not wavedeck's notes) dropped from the front: the audit log has them.
    dropped_output: u64,
}

impl LogLine {
    /// Bytes this line holds in memory, for the scrollback budget.
    pub fn cost(&self) -> usize {
        self.text.len() + LINE_OVERHEAD
    }
}

impl LogBuffer {
    pub fn new(capacity: usize) -> Self {
        Self { lines: VecDeque::new(), capacity: capacity.max(1), total: 0, bytes: 0, dropped_output: 0 }
    }

    /// Adds a line, dropping the oldest past the line limit.
    pub fn push(&mut self, line: LogLine) {
        if self.lines.len() == self.capacity {
            self.pop_front();
        }
        self.bytes += line.cost();
        self.lines.push_back(line);
        self.total += 1;
    }

    /// Drops the oldest line; returns the bytes that freed.
    pub fn pop_front(&mut self) -> usize {
        match self.lines.pop_front() {
            Some(line) => {
                if !line.note {
                    self.dropped_output += 1;
                }
                self.bytes -= line.cost();
                line.cost()
            }
            None => 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Lines dropped from the front (older than the first one held).
    pub fn dropped(&self) -> u64 {
        self.total - self.lines.len() as u64
    }

    /// Host output lines among them.
    pub fn dropped_output(&self) -> u64 {
        self.dropped_output
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn get(&self, index: usize) -> Option<&LogLine> {
        self.lines.get(index)
    }

    /// The lines `[start, start + count)`, clamped to what exists.
    pub fn slice(&self, start: usize, count: usize) -> impl Iterator<Item = &LogLine> {
        self.lines.iter().skip(start).take(count)
    }

    /// Index of the last line at or before `before` containing `needle` (case-insensitive).
    pub fn find_back(&self, needle: &str, before: usize) -> Option<usize> {
        let needle = needle.to_lowercase();
        let end = before.min(self.lines.len().saturating_sub(1));
        (0..=end).rev().find(|&i| self.lines[i].text.to_lowercase().contains(&needle))
    }

    /// Index of the first line at or after `from` containing `needle` (case-insensitive).
    pub fn find_forward(&self, needle: &str, from: usize) -> Option<usize> {
        let needle = needle.to_lowercase();
        (from..self.lines.len()).find(|&i| self.lines[i].text.to_lowercase().contains(&needle))
    }
}

pub use crate::text::clean;

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> LogLine {
        LogLine { host: None, stream: Stream::Stdout, text: text.into(), at: DateTime::UNIX_EPOCH, note: false }
    }

    #[test]
    fn keeps_only_the_newest_lines() {
        let mut b = LogBuffer::new(3);
        for i in 0..5 {
            b.push(line(&i.to_string()));
        }
        let kept: Vec<&str> = b.slice(0, 10).map(|l| &*l.text).collect();
        assert_eq!(kept, ["2", "3", "4"]);
        assert_eq!(b.total(), 5);
    }

    #[test]
    fn search_is_case_insensitive_both_ways() {
        let mut b = LogBuffer::new(10);
        for t in ["start", "ERROR one", "ok", "error two"] {
            b.push(line(t));
        }
        assert_eq!(b.find_back("error", 3), Some(3));
        assert_eq!(b.find_back("error", 2), Some(1));
        assert_eq!(b.find_forward("error", 2), Some(3));
        assert_eq!(b.find_forward("nothing", 0), None);
    }
}
