//! The session audit log: one JSON object per line, one file per session.
//!
//! Records who ran what, when, where and with what result: the session start (operator,
//! machine, version, argv, profile and its sha256), every operator command, every engine event
//! and the session end. Lines go through tracing-appender's non-blocking writer in its
//! *lossless* mode: a full buffer makes the writer wait rather than drop a line. Closing the log
//! (also on drop, so on every unwinding exit path) waits for the writer to drain and then syncs
//! the file to disk.
//!
//! Nothing secret reaches here: every string of every record passes through the session's
//! [`Redactor`] on the way in (engine events are redacted before they are emitted, but notes,
//! argv and host-supplied values are not, so the log does not rely on that).
//!
//! The directory is created `0700` and each file `0600`: they hold every output line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

use crate::event::{Command, Stamped};
use crate::secrets::Redactor;

/// Environment variable that chooses the audit directory (below `--audit-dir`).
pub const AUDIT_DIR_ENV: &str = "WAVEDECK_AUDIT_DIR";

/// Lines the writer may hold before `record` waits: bounded so that closing the log (which
/// waits about a second at most for the writer) always has little left to write.
const BUFFERED_LINES: usize = 8192;

/// Who and what started a session.
#[derive(Debug, Clone, Serialize)]
pub struct SessionStart {
    pub operator: String,
    pub machine: String,
    pub version: String,
    pub argv: Vec<String>,
    pub mode: String,
    pub profile: PathBuf,
    pub profile_sha256: String,
    pub env: String,
    pub release: String,
}

/// Where the operator's command came from, recorded with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandSource {
    Keyboard,
    Mouse,
    Signal,
    /// Issued by wavedeck itself on the operator's standing orders (e.g. headless mode
    /// stopping at a failure threshold because nobody is there to resume).
    Policy,
    /// Given on the command line (`--exclude`).
    Flag,
}

pub struct AuditLog {
    writer: Option<NonBlocking>,
    guard: Option<WorkerGuard>,
    path: PathBuf,
    session: String,
    operator: String,
    seq: u64,
    redactor: Redactor,
    write_failed: bool,
}

impl AuditLog {
    /// Creates a new session file in `dir` and writes the session-start record.
    pub fn open(dir: &Path, start: &SessionStart, redactor: Redactor) -> std::io::Result<AuditLog> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let now = Utc::now();
        let session = format!("{}-{}", now.format("%Y%m%dT%H%M%S%.3fZ"), std::process::id());
        let path = dir.join(format!("wavedeck-{session}.jsonl"));
        let file = OpenOptions::new().create_new(true).append(true).mode(0o600).open(&path)?;
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(false)
            .buffered_lines_limit(BUFFERED_LINES)
            .thread_name("wavedeck-audit")
            .finish(file);
        let mut log = AuditLog {
            writer: Some(writer),
            guard: Some(guard),
            path,
            session,
            operator: start.operator.clone(),
            seq: 0,
            redactor,
            write_failed: false,
        };
        log.record(now, "session_start", start);
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn session_id(&self) -> &str {
        &self.session
    }

    /// Records an engine event.
    pub fn event(&mut self, event: &Stamped) {
        self.record(event.at, "event", &event.event);
    }

    /// Records what the operator asked for, before it is sent to the engine, so it is on file
    /// even if the engine never gets to act on it.
    pub fn command(&mut self, command: &Command, source: CommandSource) {
        #[derive(Serialize)]
        struct OperatorCommand<'a> {
            operator: &'a str,
            source: CommandSource,
            #[serde(flatten)]
            command: &'a Command,
        }
        let operator = self.operator.clone();
        self.record(Utc::now(), "operator_command", &OperatorCommand { operator: &operator, source, command });
    }

    /// Records a free-form note with fields (refusals, warnings).
    pub fn note(&mut self, kind: &str, fields: Value) {
        self.record(Utc::now(), kind, &fields);
    }

    /// Writes the session-end record and closes the log, waiting for every line to be written.
    pub fn close(mut self, outcome: &str, exit_code: i32) -> std::io::Result<()> {
        self.end(outcome, exit_code);
        if self.write_failed {
            return Err(std::io::Error::other(format!(
                "some audit records could not be written to {}",
                self.path.display()
            )));
        }
        Ok(())
    }

    fn end(&mut self, outcome: &str, exit_code: i32) {
        if self.writer.is_none() {
            return;
        }
        self.record(Utc::now(), "session_end", &json!({ "outcome": outcome, "exit_code": exit_code }));
        // Dropping the writer then the guard makes the worker drain its queue and stop.
        self.writer = None;
        drop(self.guard.take());
        match File::open(&self.path).and_then(|f| f.sync_all()) {
            Ok(()) => {}
            Err(_) => self.write_failed = true,
        }
    }

    fn record<T: Serialize + ?Sized>(&mut self, at: DateTime<Utc>, kind: &str, body: &T) {
        let Some(writer) = self.writer.as_mut() else {
            return;
        };
        self.seq += 1;
        let mut line = Map::new();
        line.insert("ts".into(), Value::String(at.to_rfc3339_opts(SecondsFormat::Millis, false)));
        line.insert("session".into(), Value::String(self.session.clone()));
        line.insert("seq".into(), Value::from(self.seq));
        line.insert("record".into(), Value::String(kind.to_string()));
        match serde_json::to_value(body) {
            Ok(Value::Object(fields)) => {
                for (k, v) in fields {
                    // An event's own timestamp field is already `ts`.
                    if k != "at" {
                        line.insert(k, v);
                    }
                }
            }
            Ok(other) => {
                line.insert("value".into(), other);
            }
            Err(e) => {
                line.insert("serialize_error".into(), Value::String(e.to_string()));
            }
        }
        let mut line = Value::Object(line);
        redact_strings(&mut line, &self.redactor);
        let mut text = line.to_string();
        text.push('\n');
        if writer.write_all(text.as_bytes()).is_err() {
            self.write_failed = true;
        }
    }
}

/// Masks secrets in every string of a record, keys included.
fn redact_strings(value: &mut Value, redactor: &Redactor) {
    match value {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(masked) = redactor.redact(s) {
                *s = masked;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_strings(v, redactor)),
        Value::Object(fields) => {
            let masked: Map<String, Value> = std::mem::take(fields)
                .into_iter()
                .map(|(k, mut v)| {
                    redact_strings(&mut v, redactor);
                    (redactor.redact(&k).into_owned(), v)
                })
                .collect();
            *fields = masked;
        }
        _ => {}
    }
}

impl Drop for AuditLog {
    /// A log dropped without `close` (an error path or a panic unwinding) still gets its end
    /// record and is flushed.
    fn drop(&mut self) {
        let outcome = if std::thread::panicking() { "crashed" } else { "interrupted" };
        self.end(outcome, -1);
    }
}

/// The audit directory: `--audit-dir`, else `$WAVEDECK_AUDIT_DIR`, else the platform data
/// directory (`~/.local/share/wavedeck/audit` on Linux).
pub fn audit_dir(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = flag {
        return Some(dir.to_path_buf());
    }
    if let Some(dir) = std::env::var_os(AUDIT_DIR_ENV).filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    directories::ProjectDirs::from("", "", "wavedeck").map(|d| d.data_dir().join("audit"))
}

pub use crate::sys::{machine_name, operator_name};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn start() -> SessionStart {
        SessionStart {
            operator: "alice".into(),
            machine: "box".into(),
            version: "0".into(),
            argv: vec!["wavedeck".into(), "--token=hunter2".into()],
            mode: "test".into(),
            profile: "p.toml".into(),
            profile_sha256: "00".into(),
            env: "dev".into(),
            release: "v1".into(),
        }
    }

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn notes_are_masked_and_the_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let audit_dir = dir.path().join("audit");
        let secrets = crate::secrets::Secrets::of(&[("t", "s3cretTOKEN")]);
        let mut log = AuditLog::open(&audit_dir, &start(), secrets.redactor()).unwrap();
        let path = log.path().to_path_buf();
        // A host-supplied value in a note: nothing upstream masked it.
        log.note("rollback_planned", json!({ "targets": [{ "host": "a", "problem": "1.0;echo s3cretTOKEN" }] }));
        log.close("ok", 0).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("s3cretTOKEN") && text.contains("1.0;echo ******"), "{text}");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&audit_dir), mode(&path)), (0o700, 0o600));
    }

    #[test]
    fn every_record_is_one_json_line_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = crate::secrets::Secrets::default();
        let mut log = AuditLog::open(dir.path(), &start(), secrets.redactor()).unwrap();
        let path = log.path().to_path_buf();
        log.command(&Command::Abort { reason: "db on fire".into() }, CommandSource::Keyboard);
        log.event(&Stamped { at: Utc::now(), event: Event::Resumed });
        log.close("aborted", 3).unwrap();
        let records = lines(&path);
        let kinds: Vec<&str> = records.iter().map(|r| r["record"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["session_start", "operator_command", "event", "session_end"]);
        assert_eq!(records[1]["operator"], "alice");
        assert_eq!(records[1]["reason"], "db on fire");
        assert_eq!(records[2]["event"], "resumed");
        assert_eq!(records[3]["exit_code"], 3);
        let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert!(DateTime::parse_from_rfc3339(records[0]["ts"].as_str().unwrap()).is_ok());
    }

    #[test]
    fn dropped_log_still_gets_its_end_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let log = AuditLog::open(dir.path(), &start(), Redactor::default()).unwrap();
            log.path().to_path_buf()
        };
        let records = lines(&path);
        assert_eq!(records.last().unwrap()["record"], "session_end");
        assert_eq!(records.last().unwrap()["outcome"], "interrupted");
    }
}
