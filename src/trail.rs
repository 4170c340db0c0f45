//! The audit trail read for people: `wavedeck audit ls` lists sessions, `wavedeck audit show`
//! tells one session as a timeline (who started it and how it was confirmed, waves, failures
//! with their last output lines, operator commands with their reasons, the outcome).
//!
//! Events are told by [`crate::describe`], in the words headless output and the console's
//! timeline use. Files are read line by line; `ls` reads only each file's first lines and last
//! bytes.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::audit::{Line, Record};
use crate::describe::describe;
use crate::event::{Event, Stream};

/// One session, as `audit ls` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub path: PathBuf,
    pub id: String,
    pub started: Option<DateTime<Utc>>,
    pub operator: String,
    pub mode: String,
    pub env: String,
    pub release: String,
    /// From the deploy's start, when it got that far.
    pub service: Option<String>,
    /// `succeeded`, `failed`, …; `None` without a session end (running, or its runner died).
    pub outcome: Option<String>,
    pub ended: Option<DateTime<Utc>>,
}

/// Lines read from the top of a file to find its deploy's start (service), at most.
const HEAD_LINES: usize = 64;
/// Bytes read from the end of a file to find its session end.
const TAIL_BYTES: u64 = 4096;

/// Every session in `dir`, oldest first: ended ones from the directory's index, the others
/// (running, interrupted, or older than the index) from their files.
pub fn list(dir: &Path) -> Result<Vec<Session>, String> {
    let mut sessions: Vec<Session> = crate::audit::read_index(dir)
        .into_iter()
        .map(|e| Session {
            path: dir.join(format!("wavedeck-{}.jsonl", e.session)),
            started: parse_ts(&e.started),
            ended: parse_ts(&e.ended),
            id: e.session,
            operator: e.operator,
            mode: e.mode,
            env: e.env,
            release: e.release.unwrap_or_default(),
            service: e.service,
            outcome: Some(e.outcome),
        })
        .collect();
    let indexed: std::collections::BTreeSet<String> = sessions.iter().map(|s| s.id.clone()).collect();
    for path in crate::audit::session_files(dir)? {
        let id = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.strip_prefix("wavedeck-"));
        if id.is_some_and(|id| indexed.contains(id)) {
            continue;
        }
        sessions.extend(summary(&path));
    }
    sessions.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(sessions)
}

/// A session's start (and service) from its first lines, its end from its last bytes.
pub fn summary(path: &Path) -> Option<Session> {
    let file = std::fs::File::open(path).ok()?;
    let mut reader = BufReader::new(file);
    let mut session: Option<Session> = None;
    let mut text = String::new();
    for _ in 0..HEAD_LINES {
        text.clear();
        if reader.read_line(&mut text).ok()? == 0 {
            break;
        }
        let Some(line) = crate::audit::read_lines(&text).next() else { continue };
        match (line.record, &mut session) {
            (Record::SessionStart(start), None) => {
                session = Some(Session {
                    path: path.to_path_buf(),
                    id: line.session,
                    started: parse_ts(&line.ts),
                    operator: start.operator,
                    mode: start.mode,
                    env: start.env,
                    release: start.release,
                    service: None,
                    outcome: None,
                    ended: None,
                });
            }
            (Record::Event(Event::DeployStarted { service, .. }), Some(s)) => {
                s.service = Some(service);
                break;
            }
            (_, None) => return None,
            _ => {}
        }
    }
    let mut session = session?;
    if let Some(end) = last_line(path) {
        if let Record::SessionEnd { outcome, .. } = end.record {
            session.outcome = Some(outcome);
        }
        session.ended = parse_ts(&end.ts);
    }
    Some(session)
}

/// The file's last whole record, from its last few KiB.
fn last_line(path: &Path) -> Option<Line> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES))).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    text.lines().rev().find_map(|l| crate::audit::read_lines(l).next())
}

fn parse_ts(ts: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(ts).ok().map(|t| t.with_timezone(&Utc))
}

/// What `audit show` keeps.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only lines about this host (and the session's start and end).
    pub host: Option<String>,
    /// Only lines at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only lines containing this, ignoring case.
    pub grep: Option<String>,
}

/// Output lines kept per host, to show with a failure.
const LAST_WORDS: usize = 5;

/// One session told as lines of text, filtered; `json` gives the records themselves instead
/// (every record the filter keeps, output lines included), one JSON line each.
pub fn show(path: &Path, filter: &Filter, json: bool) -> std::io::Result<Vec<String>> {
    let reader = BufReader::new(std::fs::File::open(path)?);
    let needle = filter.grep.as_ref().map(|g| g.to_lowercase());
    let mut operator = String::new();
    let mut last_words: BTreeMap<String, VecDeque<(Stream, String)>> = BTreeMap::new();
    let mut out = Vec::new();
    for text in reader.lines() {
        let text = text?;
        let Some(line) = crate::audit::read_lines(&text).next() else { continue };
        let at = parse_ts(&line.ts);
        if let Record::SessionStart(start) = &line.record {
            operator = start.operator.clone();
        }
        let host = host_of(&line.record);
        let framing = matches!(line.record, Record::SessionStart(_) | Record::SessionEnd { .. });
        if let (Some(wanted), false) = (&filter.host, framing)
            && host.as_deref() != Some(wanted.as_str())
        {
            continue;
        }
        if let (Some(since), Some(at)) = (filter.since, at)
            && at < since
        {
            continue;
        }
        if json {
            if needle.as_ref().is_none_or(|n| text.to_lowercase().contains(n)) {
                out.push(text);
            }
            continue;
        }
        // Output is kept to be shown when a step fails; otherwise it is not the story.
        if let Record::Event(Event::Output { host, stream, line: said, .. }) = &line.record {
            let kept = last_words.entry(host.clone()).or_default();
            if kept.len() == LAST_WORDS {
                kept.pop_front();
            }
            kept.push_back((*stream, said.clone()));
            continue;
        }
        let Some(told) = tell(&line.record, &operator) else { continue };
        let time = at.map_or_else(|| line.ts.clone(), |t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string());
        let mut lines = vec![format!("{time}  {told}")];
        // A failed step: what its host said last.
        if let Record::Event(Event::StepFinished { host, result, .. }) = &line.record
            && !result.succeeded()
            && let Some(words) = last_words.remove(host)
        {
            for (stream, said) in words {
                let mark = if stream == Stream::Stderr { "!" } else { "|" };
                lines.push(format!("{:>23}  {mark} {said}", ""));
            }
        }
        if let Record::Event(Event::StepStarted { host, .. }) = &line.record {
            last_words.remove(host);
        }
        if needle.as_ref().is_none_or(|n| lines.iter().any(|l| l.to_lowercase().contains(n))) {
            // Host text is shown, never obeyed: control characters are written out.
            out.extend(lines.iter().map(|l| crate::text::visible(l)));
        }
    }
    Ok(out)
}

/// The host a record is about, if it is about one.
fn host_of(record: &Record) -> Option<String> {
    let event = match record {
        Record::Event(event) => event,
        Record::OperatorCommand { command, .. } => {
            return match command {
                crate::event::Command::Retry { host }
                | crate::event::Command::Skip { host }
                | crate::event::Command::Exclude { host } => Some(host.clone()),
                _ => None,
            };
        }
        _ => return None,
    };
    let value = serde_json::to_value(event).ok()?;
    value["host"].as_str().map(str::to_string)
}

/// A record in words, or `None` for data (output, samples) that is not part of the story.
fn tell(record: &Record, operator: &str) -> Option<String> {
    let said = match record {
        Record::SessionStart(s) => {
            let carries = s.resumed_from.as_ref().map(|f| format!(", carrying on session {f}")).unwrap_or_default();
            format!(
                "session started by {}@{}: {} of release {} to {} ({}){carries}",
                s.operator,
                s.machine,
                s.mode,
                s.release,
                s.env,
                s.profile.display()
            )
        }
        Record::DeployConfirmed { operator, protected, confirmation } => {
            let protected = if *protected { " (protected environment)" } else { "" };
            format!("{operator} confirmed it: {confirmation}{protected}")
        }
        Record::RollbackPlanned { from_session, release, targets } => {
            let back = targets.iter().filter(|t| t.target.is_some()).count();
            format!("rollback of {release} (session {from_session}) planned: {back} of {} hosts go back", targets.len())
        }
        Record::OperatorCommand { operator, source, client, command } => {
            let by = client.as_deref().map(|c| format!(" via {c}")).unwrap_or_default();
            let what = match command {
                crate::event::Command::Abort { reason } => format!("abort, because: {reason}"),
                crate::event::Command::Retry { host }
                | crate::event::Command::Skip { host }
                | crate::event::Command::Exclude { host } => format!("{} {host}", command.name()),
                other => other.name().to_string(),
            };
            format!("{operator} ({}{by}): {what}", serde_json::to_value(source).ok()?.as_str()?)
        }
        Record::ResumeDecided { from_session, interrupted, choice } => format!(
            "carrying on session {from_session}: hosts caught mid-step ({}) {choice}",
            if interrupted.is_empty() { "none".to_string() } else { interrupted.join(", ") }
        ),
        Record::ClientAttached { client, role } => {
            format!("{client} attached ({})", serde_json::to_value(role).ok()?.as_str()?)
        }
        Record::ClientDetached { client, deliberate, on_detach } => {
            let how = if *deliberate { "detached" } else { "went away" };
            let then = on_detach
                .and_then(|a| serde_json::to_value(a).ok())
                .and_then(|v| v.as_str().map(|a| format!("; the runner did: {a}")))
                .unwrap_or_default();
            format!("{client} {how}{then}")
        }
        Record::ControlTaken { from, to } => match from {
            Some(from) => format!("{to} took control from {from}"),
            None => format!("{to} took control"),
        },
        Record::ControlReleased { client } => format!("{client} released control"),
        Record::LockAcquired { host, path } => format!("lock taken on {host} ({path})"),
        Record::LockRefused { host, message, .. } => format!("lock refused on {host}: {message}"),
        Record::LockReleased { host, .. } => format!("lock released on {host}"),
        Record::LockReleaseFailed { message } => format!("lock NOT released: {message}"),
        Record::LockBreakRequested { host, .. } => format!("breaking the lock on {host} requested"),
        Record::LockBroken { host, .. } => format!("lock on {host} broken"),
        Record::NotifySent { target, on, attempts, .. } => {
            let tries = if *attempts > 1 { format!(" after {attempts} tries") } else { String::new() };
            format!("told {target} ({}){tries}", on.name())
        }
        Record::NotifyFailed { target, on, attempts, error, .. } => {
            format!("could NOT tell {target} ({}) after {attempts} tries: {error}", on.name())
        }
        Record::Event(event) => {
            let told = describe(event, operator)?;
            match told.host {
                Some(host) => format!("[{host}] {}", told.text),
                None => told.text,
            }
        }
        Record::SessionEnd { outcome, exit_code, .. } => format!("session ended: {outcome} (exit {exit_code})"),
    };
    Some(said)
}

/// The newest session of `env` in `dir` that ran a deploy or rollback.
pub fn last_of(dir: &Path, env: &str) -> Result<Option<PathBuf>, String> {
    let files = crate::audit::session_files(dir)?;
    Ok(files
        .into_iter()
        .rev()
        .filter_map(|p| summary(&p))
        .find(|s| s.env == env && s.service.is_some())
        .map(|s| s.path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, SessionStart};
    use crate::event::{Command, CommandSource, StepResult};

    fn start() -> SessionStart {
        SessionStart::for_tests("headless", "staging", "2.4.1")
    }

    fn output(host: &str, line: &str) -> Record {
        Record::Event(Event::Output {
            host: host.into(),
            step: "healthz".into(),
            stream: Stream::Stderr,
            line: line.into(),
        })
    }

    /// A session where b fails its health check and ann aborts with a reason.
    fn session(dir: &Path) -> PathBuf {
        let mut log = AuditLog::open(dir, &start(), Default::default()).unwrap();
        log.note(Record::Event(Event::DeployStarted {
            outlier_percent: crate::profile::DEFAULT_OUTLIER_PERCENT,
            service: "shop".into(),
            env: "staging".into(),
            release: "2.4.1".into(),
            waves: vec![crate::event::WaveOutline { wave: 1, hosts: vec!["a".into(), "b".into()], max_failures: 0 }],
            steps: vec!["healthz".into()],
        }));
        log.note(output("a", "fine"));
        log.note(output("b", "GET /healthz -> 503"));
        log.note(output("b", "\u{1b}[2Jpool exhausted"));
        log.note(Record::Event(Event::StepFinished {
            wave: 1,
            host: "b".into(),
            step: "healthz".into(),
            index: 1,
            attempt: 1,
            result: StepResult::Exited { code: 1 },
            duration_ms: 300,
            will_retry: false,
        }));
        log.command(
            &Command::Abort { reason: "db pool".into() },
            CommandSource::Keyboard,
            Some("ann@box pid 1 console"),
        );
        let path = log.path().to_path_buf();
        log.close("aborted", 3).unwrap();
        path
    }

    #[test]
    fn ls_lists_a_session_with_its_service_operator_and_outcome() {
        let dir = tempfile::tempdir().unwrap();
        session(dir.path());
        let sessions = list(dir.path()).unwrap();
        assert_eq!(sessions.len(), 1);
        let s = &sessions[0];
        assert_eq!(
            (s.service.as_deref(), s.operator.as_str(), s.outcome.as_deref()),
            (Some("shop"), "ann", Some("aborted"))
        );
        assert!(s.ended >= s.started && s.started.is_some());
    }

    #[test]
    fn show_tells_failures_with_their_last_words_and_commands_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let path = session(dir.path());
        let told = show(&path, &Filter::default(), false).unwrap().join("\n");
        assert!(told.contains("session started by ann@box: headless of release 2.4.1 to staging"), "{told}");
        assert!(told.contains("[b] healthz failed: exit 1"), "{told}");
        assert!(told.contains("! GET /healthz -> 503") && told.contains("! \\x1b[2Jpool exhausted"), "{told}");
        assert!(!told.contains("fine"), "a's output is not part of the story: {told}");
        assert!(told.contains("ann (keyboard via ann@box pid 1 console): abort, because: db pool"), "{told}");
        assert!(told.contains("session ended: aborted (exit 3)"), "{told}");
        let only_a = show(&path, &Filter { host: Some("a".into()), ..Filter::default() }, false).unwrap().join("\n");
        assert!(!only_a.contains("[b]") && only_a.contains("session ended"), "{only_a}");
        let grep = show(&path, &Filter { grep: Some("POOL".into()), ..Filter::default() }, false).unwrap();
        // A failure that matches comes with its last words; lines that do not match are left out.
        assert!(grep.iter().any(|l| l.contains("abort, because: db pool")), "{grep:?}");
        assert!(!grep.iter().any(|l| l.contains("session started")), "{grep:?}");
        let json = show(&path, &Filter { host: Some("b".into()), ..Filter::default() }, true).unwrap();
        assert!(json.iter().any(|l| l.contains("\"event\":\"output\"")), "JSON keeps output too: {json:?}");
    }
}
