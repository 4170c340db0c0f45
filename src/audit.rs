//! The session audit log: one JSON object per line, one file per session.
//!
//! Records who ran what, when, where and with what result: the session start (operator,
//! machine, version, argv, profile and its sha256), every operator command, every engine event
//! and the session end. Lines go to a writer thread of the log's own, which writes whatever has
//! queued in one go and, when someone waits for a line to be durable (a step's start, an
//! operator's command: write-ahead), fsyncs once for all of them (group commit) and then tells
//! them. A full queue makes `record` wait rather than drop a line. Closing the log (also on
//! drop, so on every unwinding exit path) waits for the writer to drain and then syncs
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
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::event::CommandSource;
use crate::event::{Command, DetachAction, Event, Stamped};
use crate::lock::LockInfo;
use crate::remote::Role;
use crate::secrets::Redactor;

/// Environment variable that chooses the audit directory (below `--audit-dir`).
pub const AUDIT_DIR_ENV: &str = "WAVEDECK_AUDIT_DIR";

/// Lines the writer may hold before `record` waits: bounded so that closing the log (which
/// waits about a second at most for the writer) always has little left to write.
const BUFFERED_LINES: usize = 8192;

/// Who and what started a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The interrupted session this one carries on (`wavedeck resume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<String>,
}

#[cfg(test)]
impl SessionStart {
    /// A session start for tests: `ann` on `box`, the given mode, environment and release.
    pub(crate) fn for_tests(mode: &str, env: &str, release: &str) -> SessionStart {
        SessionStart {
            operator: "ann".into(),
            machine: "box".into(),
            version: "0".into(),
            argv: vec![],
            mode: mode.into(),
            profile: "p.toml".into(),
            profile_sha256: "00".into(),
            env: env.into(),
            release: release.into(),
            resumed_from: None,
        }
    }
}

/// Where a host goes in a planned rollback, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedTarget {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Why the host stays as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_alone: Option<String>,
    /// Why its target is not known (it is rolled back by the profile's steps anyway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Every kind of line an audit file holds. The writer writes only these and readers (rollback,
/// the console's release history) read them back through the same type, so the two cannot
/// drift apart. The README's record table is checked against [`Record::KINDS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    SessionStart(SessionStart),
    /// The console's operator confirmed the start, and how.
    DeployConfirmed {
        operator: String,
        protected: bool,
        confirmation: String,
    },
    RollbackPlanned {
        from_session: String,
        release: String,
        targets: Vec<PlannedTarget>,
    },
    /// A command, recorded before the engine sees it.
    OperatorCommand {
        operator: String,
        source: CommandSource,
        /// The runner's client it came from (`ann@laptop pid 4242 console`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        #[serde(flatten)]
        command: Command,
    },
    LockAcquired {
        host: String,
        path: String,
    },
    LockRefused {
        host: String,
        path: String,
        holder: Option<LockInfo>,
        message: String,
    },
    LockReleased {
        host: String,
        path: String,
    },
    LockReleaseFailed {
        message: String,
    },
    LockBreakRequested {
        host: String,
        path: String,
        holder: Option<LockInfo>,
    },
    LockBroken {
        host: String,
        path: String,
        holder: Option<LockInfo>,
    },
    /// This session carries on an interrupted one: what the operator chose for the hosts that
    /// were interrupted mid-step (`rerun`, `skip`, `fail`), and which they were.
    ResumeDecided {
        from_session: String,
        interrupted: Vec<String>,
        choice: String,
    },
    /// A console or CLI attached to the deploy's runner, with the role it got.
    ClientAttached {
        client: String,
        role: Role,
    },
    /// A client went away: on purpose (`deliberate`), or not (a closed terminal). When the
    /// controller went without detaching, `on_detach` says what the runner did about it.
    ClientDetached {
        client: String,
        deliberate: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_detach: Option<DetachAction>,
    },
    /// Control of the deploy passed from one client to another (`from` is `None` when nobody
    /// had it).
    ControlTaken {
        from: Option<String>,
        to: String,
    },
    /// The controller gave up control and went on watching (headless mode waiting for a human).
    ControlReleased {
        client: String,
    },
    /// A `[[notify]]` webhook took a message (`url` masked).
    NotifySent {
        target: String,
        url: String,
        on: crate::profile::NotifyOn,
        attempts: u32,
    },
    /// A message was not delivered, after `attempts` tries (0: dropped, the queue was full).
    NotifyFailed {
        target: String,
        url: String,
        on: crate::profile::NotifyOn,
        attempts: u32,
        error: String,
    },
    Event(Event),
    SessionEnd {
        outcome: String,
        exit_code: i32,
        /// Lines before this one, and the SHA-256 of all of them, byte for byte: with each line's
        /// `prev` they let `wavedeck audit verify` tell an intact file from an edited one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        records: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chain: Option<String>,
    },
}

impl Record {
    /// Every record's name, as it appears in the `record` field.
    pub const KINDS: &[&str] = &[
        "session_start",
        "deploy_confirmed",
        "rollback_planned",
        "operator_command",
        "lock_acquired",
        "lock_refused",
        "lock_released",
        "lock_release_failed",
        "lock_break_requested",
        "lock_broken",
        "resume_decided",
        "client_attached",
        "client_detached",
        "control_taken",
        "control_released",
        "notify_sent",
        "notify_failed",
        "event",
        "session_end",
    ];

    /// This record's name (a match, so a new variant cannot be forgotten in [`Record::KINDS`]'s
    /// test).
    pub fn kind(&self) -> &'static str {
        match self {
            Record::SessionStart(_) => "session_start",
            Record::DeployConfirmed { .. } => "deploy_confirmed",
            Record::RollbackPlanned { .. } => "rollback_planned",
            Record::OperatorCommand { .. } => "operator_command",
            Record::ResumeDecided { .. } => "resume_decided",
            Record::ClientAttached { .. } => "client_attached",
            Record::ClientDetached { .. } => "client_detached",
            Record::ControlTaken { .. } => "control_taken",
            Record::ControlReleased { .. } => "control_released",
            Record::LockAcquired { .. } => "lock_acquired",
            Record::LockRefused { .. } => "lock_refused",
            Record::LockReleased { .. } => "lock_released",
            Record::LockReleaseFailed { .. } => "lock_release_failed",
            Record::LockBreakRequested { .. } => "lock_break_requested",
            Record::LockBroken { .. } => "lock_broken",
            Record::NotifySent { .. } => "notify_sent",
            Record::NotifyFailed { .. } => "notify_failed",
            Record::Event(_) => "event",
            Record::SessionEnd { .. } => "session_end",
        }
    }
}

/// One line of an audit file as read back: its place in the session, and the record.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Line {
    pub ts: String,
    pub session: String,
    pub seq: u64,
    /// SHA-256 of the previous line's exact bytes (for the first, of [`chain_start`]).
    #[serde(default)]
    pub prev: Option<String>,
    #[serde(flatten)]
    pub record: Record,
}

/// The records of an audit file's text, in order; lines that are not records this version
/// knows (another version's, a torn last line after a crash) are skipped.
pub fn read_lines(text: &str) -> impl Iterator<Item = Line> + '_ {
    text.lines().filter_map(|l| serde_json::from_str::<Line>(l).ok())
}

/// Writes `host`'s whole log from the audit file at `audit` to `out`: every output line with its
/// time and stream, each step's start and result between them. Reads line by line, so a large
/// file is never held whole. Returns the lines written.
pub fn write_host_log(audit: &Path, host: &str, out: &mut impl Write) -> std::io::Result<usize> {
    use std::io::BufRead as _;
    let mut written = 0;
    for text in std::io::BufReader::new(File::open(audit)?).lines() {
        let Ok(line) = serde_json::from_str::<Line>(&text?) else { continue };
        let Record::Event(event) = line.record else { continue };
        let said = match event {
            Event::Output { host: h, stream, line: text, .. } if h == host => {
                let tag = if stream == crate::event::Stream::Stderr { "stderr" } else { "stdout" };
                format!("{tag}  {text}")
            }
            Event::StepStarted { host: h, step, index, total, attempt, .. } if h == host => {
                format!("----  step {index}/{total} {step}, attempt {attempt}")
            }
            Event::StepFinished { host: h, step, result, duration_ms, .. } if h == host => {
                format!("----  {step}: {result} in {duration_ms} ms")
            }
            Event::OutputElided { host: h, step, lines, bytes } if h == host => {
                format!("----  {lines} lines ({bytes} bytes) of {step}'s output were not kept")
            }
            _ => continue,
        };
        // Output was masked on its way into the audit log; control characters are shown, not obeyed.
        writeln!(out, "{}  {}", line.ts, crate::text::visible(&said))?;
        written += 1;
    }
    out.flush()?;
    Ok(written)
}

/// `host`'s output lines numbered `range` (counting its output lines from the first, as the
/// console does), read line by line from the audit file at `audit`: for a console scrolling past
/// what it keeps in memory. Each comes with its time, stream and text (masked on its way in).
pub fn host_output(
    audit: &Path,
    host: &str,
    range: std::ops::Range<u64>,
) -> std::io::Result<Vec<(DateTime<Utc>, crate::event::Stream, String)>> {
    use std::io::BufRead as _;
    let mut found = Vec::new();
    let mut number = 0u64;
    for text in std::io::BufReader::new(File::open(audit)?).lines() {
        let text = text?;
        // Most lines are other hosts' output or events: skip them before parsing.
        if !text.contains("\"output\"") {
            continue;
        }
        let Ok(line) = serde_json::from_str::<Line>(&text) else { continue };
        let Record::Event(Event::Output { host: h, stream, line: said, .. }) = line.record else { continue };
        if h != host {
            continue;
        }
        if range.contains(&number) {
            let at = DateTime::parse_from_rfc3339(&line.ts).map(|t| t.with_timezone(&Utc)).unwrap_or_default();
            found.push((at, stream, said));
        }
        number += 1;
        if number >= range.end {
            break;
        }
    }
    Ok(found)
}

/// A line for the writer thread, and whoever waits for it to be on disk.
struct Queued {
    text: Vec<u8>,
    durable: Option<crate::engine::Durable>,
}

/// The log's writer thread: it owns the file.
struct Writer {
    lines: std::sync::mpsc::SyncSender<Queued>,
    thread: std::thread::JoinHandle<()>,
}

/// fsyncs the writer has done, for the write-ahead journal's benchmark.
pub static SYNCS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Writes lines as they come, each batch in one write; fsyncs once per batch that someone waits
/// on, then tells them all. A failed write or sync is remembered in `failed`.
fn write_lines(file: File, lines: std::sync::mpsc::Receiver<Queued>, failed: std::sync::Arc<AtomicBool>) {
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
    let mut waiting = Vec::new();
    while let Ok(first) = lines.recv() {
        let mut next = Some(first);
        while let Some(line) = next {
            if out.write_all(&line.text).is_err() {
                failed.store(true, Ordering::SeqCst);
            }
            waiting.extend(line.durable);
            next = lines.try_recv().ok();
        }
        // Into the kernel at once: a killed process loses nothing it handed over.
        if out.flush().is_err() {
            failed.store(true, Ordering::SeqCst);
        }
        if !waiting.is_empty() {
            if out.get_ref().sync_data().is_err() {
                failed.store(true, Ordering::SeqCst);
            }
            SYNCS.fetch_add(1, Ordering::Relaxed);
            // Told only when it is on disk; a failed sync tells them nothing (they go on when
            // the promise drops), and the log reports the failure at its close.
            waiting.drain(..).for_each(crate::engine::Durable::done);
        }
    }
    if out.flush().and_then(|()| out.get_ref().sync_all()).is_err() {
        failed.store(true, Ordering::SeqCst);
    }
}

/// The audit files in `dir`, oldest first (session ids start with their UTC start time).
pub fn session_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    files.sort();
    Ok(files)
}

/// The audit directory's index of ended sessions, one JSON line each, appended as each closes:
/// the console's history and `audit ls` read it instead of every file.
pub const INDEX_FILE: &str = "sessions.index";

/// A session as the index keeps it: enough for history (who, what, how it ended, where each host
/// was left) without opening its file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub session: String,
    pub started: String,
    pub ended: String,
    pub operator: String,
    pub mode: String,
    pub env: String,
    /// The deploy's service and release, once it started (absent for a refused one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// The session end's outcome (`succeeded`, `failed`, `aborted`, `refused`, …).
    pub outcome: String,
    /// The deploy's own outcome, as the engine reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_outcome: Option<String>,
    /// Why it was aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The release each host finished with in this session.
    #[serde(default)]
    pub hosts: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<String>,
}

impl IndexEntry {
    /// Folds one record into the summary.
    fn note(&mut self, ts: &str, record: &Record, targets: &mut std::collections::BTreeMap<String, String>) {
        match record {
            Record::SessionStart(start) => {
                self.started = ts.to_string();
                self.operator = start.operator.clone();
                self.mode = start.mode.clone();
                self.env = start.env.clone();
                self.resumed_from = start.resumed_from.clone();
            }
            Record::RollbackPlanned { targets: planned, .. } => {
                targets.extend(planned.iter().filter_map(|t| Some((t.host.clone(), t.target.clone()?))));
            }
            Record::Event(Event::DeployStarted { service, release, .. }) => {
                self.service = Some(service.clone());
                self.release = Some(release.clone());
            }
            Record::Event(Event::HostFinished { host, state: crate::event::HostState::Done, .. }) => {
                if let Some(release) = &self.release {
                    let got = targets.get(host).unwrap_or(release).clone();
                    self.hosts.insert(host.clone(), got);
                }
            }
            Record::Event(Event::Aborted { reason, .. }) => self.reason = Some(reason.clone()),
            Record::Event(Event::DeployFinished { outcome, .. }) => {
                self.deploy_outcome = Some(format!("{outcome:?}").to_lowercase());
            }
            Record::SessionEnd { outcome, .. } => {
                self.ended = ts.to_string();
                self.outcome = outcome.clone();
            }
            _ => {}
        }
    }
}

/// A session's summary read from its file (for sessions the index does not hold: running, or
/// whose runner died, or written before the index existed).
pub fn summarize(path: &Path) -> Option<IndexEntry> {
    use std::io::BufRead as _;
    let reader = std::io::BufReader::new(File::open(path).ok()?);
    let mut entry = IndexEntry::default();
    let mut targets = std::collections::BTreeMap::new();
    for text in reader.lines() {
        let Ok(text) = text else { break };
        let Some(line) = read_lines(&text).next() else { continue };
        if entry.session.is_empty() {
            entry.session = line.session.clone();
        }
        entry.note(&line.ts, &line.record, &mut targets);
    }
    (!entry.session.is_empty()).then_some(entry)
}

/// Every entry of the index in `dir`, oldest first; lines that do not read are skipped.
pub fn read_index(dir: &Path) -> Vec<IndexEntry> {
    std::fs::read_to_string(dir.join(INDEX_FILE))
        .map(|text| text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default()
}

/// Runs `f` holding the index's lock (`sessions.index.lock`), so an append and a rewrite
/// (`audit prune`) never cross.
pub fn with_index_lock<T>(dir: &Path, f: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new().create(true).write(true).truncate(false).mode(0o600).open(dir.join(INDEX_LOCK))?;
    let _held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| std::io::Error::from_raw_os_error(e as i32))?;
    f()
}

const INDEX_LOCK: &str = "sessions.index.lock";

/// Appends `entry` to the index in `dir`.
fn append_index(dir: &Path, entry: &IndexEntry) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut line = serde_json::to_string(entry).map_err(std::io::Error::other)?;
    line.push('\n');
    with_index_lock(dir, || {
        let mut file = OpenOptions::new().create(true).append(true).mode(0o600).open(dir.join(INDEX_FILE))?;
        file.write_all(line.as_bytes())?;
        file.sync_data()
    })
}

/// Replaces the index in `dir` with `entries` (write beside it, then rename); call it holding
/// [`with_index_lock`].
pub fn rewrite_index(dir: &Path, entries: &[IndexEntry]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let temp = dir.join(format!("{INDEX_FILE}.new"));
    let mut file = OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&temp)?;
    for entry in entries {
        let mut line = serde_json::to_string(entry).map_err(std::io::Error::other)?;
        line.push('\n');
        file.write_all(line.as_bytes())?;
    }
    file.sync_all()?;
    std::fs::rename(&temp, dir.join(INDEX_FILE))
}

/// What the first line's `prev` is the SHA-256 of: a chain starts from its session's id.
pub fn chain_start(session: &str) -> String {
    format!("wavedeck audit session {session}")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    crate::sys::hex(&sha2::Sha256::digest(bytes))
}

pub struct AuditLog {
    writer: Option<Writer>,
    /// SHA-256 of the last line written (without its newline): the next line's `prev`.
    prev: String,
    /// SHA-256 over every line written so far, newlines included.
    chain: sha2::Sha256,
    /// The session's summary for the index, and rollback targets met so far.
    summary: IndexEntry,
    targets: std::collections::BTreeMap<String, String>,
    failed: std::sync::Arc<AtomicBool>,
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
        let (lines, queue) = std::sync::mpsc::sync_channel(BUFFERED_LINES);
        let failed = std::sync::Arc::new(AtomicBool::new(false));
        let thread = {
            let failed = failed.clone();
            std::thread::Builder::new().name("wavedeck-audit".into()).spawn(move || write_lines(file, queue, failed))?
        };
        let mut log = AuditLog {
            writer: Some(Writer { lines, thread }),
            prev: sha256_hex(chain_start(&session).as_bytes()),
            chain: <sha2::Sha256 as sha2::Digest>::new(),
            summary: IndexEntry { session: session.clone(), ..IndexEntry::default() },
            targets: std::collections::BTreeMap::new(),
            failed,
            path,
            session,
            operator: start.operator.clone(),
            seq: 0,
            redactor,
            write_failed: false,
        };
        log.record(now, &Record::SessionStart(start.clone()));
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
        self.record(event.at, &Record::Event(event.event.clone()));
    }

    /// Records an engine event and keeps `durable` until the record is on disk.
    pub fn event_durable(&mut self, event: &Stamped, durable: Option<crate::engine::Durable>) {
        self.write(event.at, &Record::Event(event.event.clone()), durable);
    }

    /// Records what the operator asked for, before it is sent to the engine, so it is on file
    /// even if the engine never gets to act on it.
    pub fn command(&mut self, command: &Command, source: CommandSource, client: Option<&str>) {
        self.command_durable(command, source, client, None);
    }

    /// [`AuditLog::command`], keeping `durable` until the record is on disk.
    pub fn command_durable(
        &mut self,
        command: &Command,
        source: CommandSource,
        client: Option<&str>,
        durable: Option<crate::engine::Durable>,
    ) {
        let record = Record::OperatorCommand {
            operator: self.operator.clone(),
            source,
            client: client.map(str::to_string),
            command: command.clone(),
        };
        self.write(Utc::now(), &record, durable);
    }

    /// Records a fact that is not an engine event (the lock, a confirmation, a rollback plan).
    pub fn note(&mut self, record: Record) {
        self.record(Utc::now(), &record);
    }

    /// Writes the session-end record and closes the log, waiting for every line to be written.
    pub fn close(mut self, outcome: &str, exit_code: i32) -> std::io::Result<()> {
        self.end(outcome, exit_code);
        if self.write_failed || self.failed.load(Ordering::SeqCst) {
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
        let chain = crate::sys::hex(&sha2::Digest::finalize(self.chain.clone()));
        let end =
            Record::SessionEnd { outcome: outcome.to_string(), exit_code, records: Some(self.seq), chain: Some(chain) };
        self.record(Utc::now(), &end);
        // Closing the queue makes the writer drain it, sync the file and stop.
        if let Some(Writer { lines, thread }) = self.writer.take() {
            drop(lines);
            if thread.join().is_err() {
                self.write_failed = true;
            }
        }
        // Indexed once on disk: the index never names a session whose file is not complete.
        if let Some(dir) = self.path.parent()
            && append_index(dir, &self.summary).is_err()
        {
            self.write_failed = true;
        }
    }

    fn record(&mut self, at: DateTime<Utc>, record: &Record) {
        self.write(at, record, None);
    }

    fn write(&mut self, at: DateTime<Utc>, record: &Record, durable: Option<crate::engine::Durable>) {
        let Some(writer) = self.writer.as_ref() else {
            return;
        };
        self.seq += 1;
        let ts = at.to_rfc3339_opts(SecondsFormat::Millis, false);
        let mut line = Map::new();
        line.insert("ts".into(), Value::String(ts.clone()));
        line.insert("session".into(), Value::String(self.session.clone()));
        line.insert("seq".into(), Value::from(self.seq));
        match serde_json::to_value(record) {
            Ok(Value::Object(fields)) => line.extend(fields),
            Ok(other) => {
                line.insert("value".into(), other);
            }
            Err(e) => {
                line.insert("record".into(), Value::String(record.kind().to_string()));
                line.insert("serialize_error".into(), Value::String(e.to_string()));
            }
        }
        let mut line = Value::Object(line);
        redact_strings(&mut line, &self.redactor);
        // The index gets the masked record, as the file does; output lines do not concern it.
        let indexed = matches!(
            record,
            Record::SessionStart(_)
                | Record::RollbackPlanned { .. }
                | Record::SessionEnd { .. }
                | Record::Event(
                    Event::DeployStarted { .. }
                        | Event::HostFinished { .. }
                        | Event::Aborted { .. }
                        | Event::DeployFinished { .. }
                )
        );
        if indexed && let Ok(masked) = serde_json::from_value::<Line>(line.clone()) {
            self.summary.note(&ts, &masked.record, &mut self.targets);
        }
        // After masking: a hash is no secret, and masking must not touch it.
        if let Value::Object(fields) = &mut line {
            fields.insert("prev".into(), Value::String(std::mem::take(&mut self.prev)));
        }
        let mut text = line.to_string();
        self.prev = sha256_hex(text.as_bytes());
        text.push('\n');
        sha2::Digest::update(&mut self.chain, text.as_bytes());
        if writer.lines.send(Queued { text: text.into_bytes(), durable }).is_err() {
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

/// An event as one JSON line in the audit log's schema (`ts`, `session`, `record`, the event's
/// fields), without the file's own `seq` and `prev`: for `deploy --output json`.
pub fn event_json(session: &str, event: &Stamped) -> String {
    let mut line = Map::new();
    line.insert("ts".into(), Value::String(event.at.to_rfc3339_opts(SecondsFormat::Millis, false)));
    line.insert("session".into(), Value::String(session.to_string()));
    if let Ok(Value::Object(fields)) = serde_json::to_value(Record::Event(event.event.clone())) {
        line.extend(fields);
    }
    Value::Object(line).to_string()
}

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
            resumed_from: None,
        }
    }

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn the_readme_table_names_every_record_and_no_other() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let section = &readme[readme.find("## Audit log").unwrap()..];
        let section = &section[..section[3..].find("\n## ").unwrap()];
        let mut listed: Vec<String> = section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .flat_map(|l| l.split('|').nth(1).unwrap().split(',').map(|k| k.trim().trim_matches('`').to_string()))
            .collect();
        listed.sort();
        let mut kinds: Vec<String> = Record::KINDS.iter().map(|k| k.to_string()).collect();
        kinds.sort();
        assert_eq!(listed, kinds);
    }

    #[test]
    fn records_read_back_as_they_were_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path(), &start(), Redactor::default()).unwrap();
        let path = log.path().to_path_buf();
        let info = LockInfo {
            session: "s".into(),
            operator: "ann".into(),
            machine: "box".into(),
            pid: 1,
            env: "dev".into(),
            release: "1".into(),
            started_at: Utc::now(),
            heartbeat_at: None,
            last_step: None,
        };
        let written = vec![
            Record::LockRefused { host: "a".into(), path: "p".into(), holder: Some(info), message: "m".into() },
            Record::OperatorCommand {
                operator: "alice".into(),
                source: CommandSource::Keyboard,
                client: Some("alice@box pid 7 console".into()),
                command: Command::Abort { reason: "r".into() },
            },
            Record::ClientAttached { client: "bob@box pid 8 console".into(), role: Role::Observe },
            Record::ClientDetached {
                client: "alice@box pid 7 console".into(),
                deliberate: false,
                on_detach: Some(DetachAction::Pause),
            },
            Record::ControlTaken { from: None, to: "bob@box pid 8 console".into() },
            Record::ControlReleased { client: "bob@box pid 8 console".into() },
            Record::Event(Event::StepFinished {
                wave: 1,
                host: "a".into(),
                step: "s".into(),
                index: 1,
                attempt: 1,
                result: crate::event::StepResult::Exited { code: 3 },
                duration_ms: 5,
                will_retry: false,
            }),
            Record::Event(Event::Paused { cause: crate::event::PauseCause::Operator, running: vec![] }),
        ];
        for record in &written {
            log.note(record.clone());
        }
        log.close("ok", 0).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let read: Vec<Record> = read_lines(&text).map(|l| l.record).collect();
        assert_eq!(read.len(), written.len() + 2, "every line reads back:\n{text}");
        assert_eq!(&read[1..=written.len()], &written[..]);
        for kind in read.iter().map(Record::kind) {
            assert!(Record::KINDS.contains(&kind));
        }
    }

    #[test]
    fn a_hosts_log_is_read_back_from_the_audit_file_alone_and_shown_not_obeyed() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path(), &start(), Redactor::default()).unwrap();
        let path = log.path().to_path_buf();
        let output = |host: &str, line: &str| {
            Record::Event(Event::Output {
                host: host.into(),
                step: "s".into(),
                stream: crate::event::Stream::Stdout,
                line: line.into(),
            })
        };
        log.note(output("a", "first"));
        log.note(output("b", "not a's"));
        log.note(output("a", "evil \u{1b}]0;title\u{7}"));
        log.close("ok", 0).unwrap();
        let mut out = Vec::new();
        assert_eq!(write_host_log(&path, "a", &mut out).unwrap(), 2);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("stdout  first") && !text.contains("not a's"), "{text}");
        assert!(!text.contains('\u{1b}') && text.contains("\\x1b"), "{text}");
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
        let target = PlannedTarget {
            host: "a".into(),
            current: None,
            target: None,
            left_alone: Some("1.0;echo s3cretTOKEN".into()),
            problem: None,
        };
        let plan = Record::RollbackPlanned { from_session: "s".into(), release: "2".into(), targets: vec![target] };
        log.note(plan);
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
        log.command(&Command::Abort { reason: "db on fire".into() }, CommandSource::Keyboard, None);
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
