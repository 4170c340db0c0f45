//! A step's output on its way to events: masked across pieces, markers read, first and last
//! part kept.

use std::sync::Mutex;
use std::time::Duration;

use crate::event::{Event, Stream};
use crate::transport::{ConnectObserver, OutputSink, TransportError};

use super::*;

/// Turns a step's output into events, masking secrets first.
pub(super) struct StepOutput<'a> {
    pub(super) shared: &'a Shared,
    pub(super) wave: usize,
    pub(super) host: &'a str,
    pub(super) step: &'a str,
    /// The reason from a `WAVEDECK-SKIP reason` line, while it is the last stdout line.
    pub(super) skipped: Mutex<Option<String>>,
    /// The start of a line that arrives in fragments, per stream (stdout, stderr), held back only
    /// as far as needed to never let a secret out in two halves.
    pub(super) pending: Mutex<[String; 2]>,
    /// What of the step's output is kept: its first and last part.
    pub(super) kept: Mutex<Kept>,
}

/// Output of one step kept in full: the first part. After it only the last part is kept, and
/// what lies between is counted and left out, so a step printing without end (`yes`) cannot
/// fill the audit disk or the screen's memory.
pub const STEP_OUTPUT_HEAD_BYTES: usize = 4 * 1024 * 1024;
/// Output of one step kept from its end, once the first part is used up.
pub const STEP_OUTPUT_TAIL_BYTES: usize = 1024 * 1024;

#[derive(Default)]
pub(super) struct Kept {
    pub(super) head: usize,
    pub(super) past_head: bool,
    pub(super) tail: std::collections::VecDeque<(Stream, String)>,
    pub(super) tail_bytes: usize,
    pub(super) elided_lines: u64,
    pub(super) elided_bytes: u64,
}

/// A line a step prints to say it had nothing to do: honoured only as the step's last line on
/// stdout, with exit 0, so a stray line in the middle of a migration's output cannot make it
/// look skipped. The line itself is shown and audited like any other.
pub const SKIP_MARKER: &str = "WAVEDECK-SKIP ";

/// A line a step prints right after it changed which release a host runs:
/// `WAVEDECK-CHANGED <from> -> <to>`, `from` being `-` when there was none. Both must be valid
/// release names; anything else is shown as output and not recorded as a change.
pub const CHANGED_MARKER: &str = "WAVEDECK-CHANGED ";

/// The (from, to) of a change marker line, if it is one with usable release names.
pub fn parse_changed(line: &str) -> Option<(Option<String>, String)> {
    let (from, to) = line.strip_prefix(CHANGED_MARKER)?.trim().split_once(" -> ")?;
    let (from, to) = (from.trim(), to.trim());
    let from = if from == "-" { None } else { Some(from) };
    let usable = crate::profile::is_safe_name(to) && from.is_none_or(crate::profile::is_safe_name);
    usable.then(|| (from.map(str::to_string), to.to_string()))
}

impl<'a> StepOutput<'a> {
    pub(super) fn new(shared: &'a Shared, wave: usize, host: &'a str, step: &'a str) -> Self {
        Self {
            shared,
            wave,
            host,
            step,
            skipped: Mutex::new(None),
            pending: Mutex::new([String::new(), String::new()]),
            kept: Mutex::new(Kept::default()),
        }
    }

    /// Emits a line while the step's first part lasts; after that keeps it as part of the last.
    pub(super) fn emit(&self, stream: Stream, text: &str) {
        let line = self.shared.redactor.redact(text).into_owned();
        let Ok(mut kept) = self.kept.lock() else { return self.send(stream, line) };
        if !kept.past_head && kept.head + line.len() <= STEP_OUTPUT_HEAD_BYTES {
            kept.head += line.len();
            drop(kept);
            return self.send(stream, line);
        }
        kept.past_head = true;
        kept.tail_bytes += line.len();
        kept.tail.push_back((stream, line));
        while kept.tail_bytes > STEP_OUTPUT_TAIL_BYTES
            && let Some((_, old)) = kept.tail.pop_front()
        {
            kept.tail_bytes -= old.len();
            kept.elided_lines += 1;
            kept.elided_bytes += old.len() as u64;
        }
    }

    pub(super) fn send(&self, stream: Stream, line: String) {
        self.shared.watch.line(self.wave, self.host, self.step, stream, &line);
        self.shared.control.events.emit(Event::Output {
            host: self.host.to_string(),
            step: self.step.to_string(),
            stream,
            line,
        });
    }

    /// Emits what is still held back (a command that ended mid-line), then the count of what
    /// was left out and the last part.
    pub(super) fn finish(&self) {
        let held = self.pending.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
        for (stream, text) in [(Stream::Stdout, &held[0]), (Stream::Stderr, &held[1])] {
            if !text.is_empty() {
                self.emit(stream, text);
            }
        }
        let kept = self.kept.lock().map(|mut k| std::mem::take(&mut *k)).unwrap_or_default();
        if kept.elided_lines > 0 {
            self.shared.control.events.emit(Event::OutputElided {
                host: self.host.to_string(),
                step: self.step.to_string(),
                lines: kept.elided_lines,
                bytes: kept.elided_bytes,
            });
        }
        for (stream, line) in kept.tail {
            self.send(stream, line);
        }
    }

    /// The skip reason, if the step's last stdout line was the marker.
    pub(super) fn skip_reason(&self) -> Option<String> {
        self.skipped.lock().ok().and_then(|mut s| s.take())
    }
}

pub(super) fn slot(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl OutputSink for StepOutput<'_> {
    fn line(&self, stream: Stream, line: String) {
        let held = self.pending.lock().map(|mut p| std::mem::take(&mut p[slot(stream)])).unwrap_or_default();
        let line = if held.is_empty() { line } else { held + &line };
        if stream == Stream::Stdout
            && let Ok(mut skipped) = self.skipped.lock()
        {
            *skipped = line.strip_prefix(SKIP_MARKER).map(|reason| self.shared.redactor.redact(reason).into_owned());
        }
        self.emit(stream, &line);
        if stream == Stream::Stdout
            && let Some((from, to)) = parse_changed(&line)
        {
            self.shared.control.events.emit(Event::HostChanged {
                host: self.host.to_string(),
                step: self.step.to_string(),
                from,
                to,
            });
        }
    }

    fn fragment(&self, stream: Stream, piece: String) {
        let ready = {
            let Ok(mut pending) = self.pending.lock() else { return };
            let held = &mut pending[slot(stream)];
            held.push_str(&piece);
            if held.len() < crate::transport::MAX_LINE_BYTES {
                return;
            }
            let cut = self.shared.redactor.safe_cut(held);
            let rest = held.split_off(cut);
            std::mem::replace(held, rest)
        };
        if !ready.is_empty() {
            self.emit(stream, &ready);
        }
    }

    fn ready(&self) -> crate::transport::BoxFuture<'_, ()> {
        Box::pin(self.shared.control.events.room())
    }

    fn progress(&self, sent: u64, total: u64) {
        self.shared.control.events.emit(Event::UploadProgress {
            host: self.host.to_string(),
            step: self.step.to_string(),
            sent,
            total,
        });
    }
}

/// Reports a host's failed connection attempts as events (retries included), so a flaky host
/// is visible while it is being retried, and a changed host key reaches the audit log.
pub(super) struct ConnectEvents<'a> {
    pub(super) shared: &'a Shared,
    pub(super) host: &'a str,
}

impl ConnectObserver for ConnectEvents<'_> {
    fn attempt_failed(&self, attempt: u32, of: u32, error: &TransportError, retry_in: Option<Duration>) {
        self.shared.control.events.emit(Event::ConnectFailed {
            host: self.host.to_string(),
            attempt,
            of,
            kind: error.kind().to_string(),
            message: self.shared.redactor.redact(&error.to_string()).into_owned(),
            retry_in_ms: retry_in.map(|d| d.as_millis() as u64),
        });
    }
}
