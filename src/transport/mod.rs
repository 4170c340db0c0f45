//! How the engine reaches a host: one small interface, implemented by the local transport
//! (this machine, used by the demo and tests) and by SSH ([`ssh`]).
//!
//! The engine opens one [`HostSession`] per host and runs every step of that host through it,
//! which is what lets SSH reuse one connection per host. A transport owns everything about
//! *how* a command runs, including enforcing its timeout and killing it on cancel; the engine
//! only learns the [`StepResult`].

pub mod local;
pub mod local_http;
pub mod ssh;
pub mod upload;

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::event::{StepResult, Stream};
use crate::profile::Host;

pub use crate::sys::BoxFuture;

/// How long a cancelled or timed-out command gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

/// Longest piece of an output line a transport hands on at once; a longer line arrives as
/// [`OutputSink::fragment`]s, so a binary blob without newlines cannot exhaust memory.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// What to connect to.
#[derive(Debug, Clone)]
pub struct Target {
    pub env: String,
    pub host: Host,
}

/// One command to run.
#[derive(Debug, Clone)]
pub struct ExecRequest<'a> {
    /// A POSIX shell script, secrets included: never log it. Transports hand it to `sh -s` on
    /// standard input (see [`stdin_script`]), never as an argument, so no secret in it shows up
    /// in a process list on either end.
    pub command: &'a str,
    pub timeout: Duration,
    /// Where the step leaves a record of itself on the host (its process group, then its exit
    /// status), so that a runner that lost it (a killed runner, a dropped connection) can find
    /// it again; `None` for checks and helpers.
    pub record: Option<StepRecord>,
}

/// A step's record on its host: a file (relative to the deploy directory) that says `pgid N`
/// when the step starts and `status N` when it has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    /// Where this attempt records itself.
    pub dir: String,
    /// What to do about an earlier attempt of the step before starting this one.
    pub earlier: Earlier,
    /// Where that earlier attempt's record is.
    pub earlier_dir: String,
    /// Records no longer needed, removed before the step starts (relative to the deploy
    /// directory, of safe characters only).
    pub sweep: Option<Sweep>,
}

/// Step records that have served their purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sweep {
    /// Every record matching this glob (the host's previous step, which ended normally); only
    /// where records keep output, since bare records are a few bytes.
    Matching(String),
    /// Every deploy's records under `parent` but `keep`'s (a new deploy's first step: an
    /// older deploy on this host can no longer be resumed once this one holds the lock).
    AllBut { parent: String, keep: String },
}

/// An earlier attempt of a step, found on the host before it starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Earlier {
    /// None can exist (the step's first attempt in a new deploy): nothing is checked.
    Ignore,
    /// A retry: if an earlier attempt is still running, wait for it to end first.
    Wait,
    /// A resumed deploy's interrupted step: wait for an earlier attempt that still runs and
    /// take its exit status, or take the status it recorded; run again only if it left none.
    Adopt,
    /// The connection dropped mid-step and is back: wait for the attempt if it still runs and
    /// take its exit status, or the status it recorded; if it never started, start it; if it
    /// died without a status, fail (the step's retries, if any, decide what happens next).
    Reattach,
}

/// What a transport writes to `sh -s`: the script inside one `{ … }` group, so the shell has read
/// all of it before the first command runs, and with standard input then switched to
/// `/dev/null`, so a command that reads its input cannot swallow the rest of the script.
pub fn stdin_script(command: &str) -> String {
    format!("{{ exec </dev/null\n{command}\n}}\n")
}

/// A file to copy to a host.
#[derive(Debug, Clone)]
pub struct UploadRequest<'a> {
    pub from: &'a Path,
    /// Destination on the host; relative to its deploy directory unless absolute.
    pub to: &'a str,
    pub timeout: Duration,
    /// Permission bits the file ends with (`0640`), set before it is renamed into place, and on
    /// a file that already had the content; `None` leaves them to the host's umask.
    pub mode: Option<u32>,
}

/// Receives what a running step produces: output lines as they are produced (without the
/// trailing newline) and upload progress.
pub trait OutputSink: Send + Sync {
    /// The end of a line (all of it, unless [`fragment`](Self::fragment)s came first).
    fn line(&self, stream: Stream, line: String);

    /// The next piece of a line longer than [`MAX_LINE_BYTES`]; more follows, ending with
    /// [`line`](Self::line). A sink that masks secrets must mask across pieces.
    fn fragment(&self, stream: Stream, piece: String);

    /// Bytes of an upload sent so far, of `total`.
    fn progress(&self, _sent: u64, _total: u64) {}

    /// Resolves when the sink can take more. A transport awaits it between reads, so a consumer
    /// that falls behind slows the host's output down instead of filling this machine's memory.
    fn ready(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Told about each connection attempt, so that retries are visible while they happen.
pub trait ConnectObserver: Send + Sync {
    fn attempt_failed(&self, attempt: u32, of: u32, error: &TransportError, retry_in: Option<Duration>);
}

/// For short helper connections (locks, previews, preflight) whose failure is reported by the
/// caller as a whole.
pub struct NoObserver;

impl ConnectObserver for NoObserver {
    fn attempt_failed(&self, _: u32, _: u32, _: &TransportError, _: Option<Duration>) {}
}

/// What a helper command printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    pub stdout: String,
    pub stderr: String,
}

impl Captured {
    /// Both streams, for error messages.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr).trim().to_string()
    }
}

/// Most of a helper command's output kept per stream: helpers print a hash, a path or a small
/// JSON file, and a host that prints more must not be able to fill this machine's memory.
pub const MAX_CAPTURED_BYTES: usize = 64 * 1024;

#[derive(Default)]
struct CaptureSink(std::sync::Mutex<Captured>);

impl CaptureSink {
    fn append(&self, stream: Stream, text: &str, newline: bool) {
        if let Ok(mut out) = self.0.lock() {
            let buf = if stream == Stream::Stdout { &mut out.stdout } else { &mut out.stderr };
            let room = MAX_CAPTURED_BYTES.saturating_sub(buf.len());
            let mut take = text.len().min(room);
            while !text.is_char_boundary(take) {
                take -= 1;
            }
            buf.push_str(&text[..take]);
            if newline && buf.len() < MAX_CAPTURED_BYTES {
                buf.push('\n');
            }
        }
    }
}

impl OutputSink for CaptureSink {
    fn line(&self, stream: Stream, line: String) {
        self.append(stream, &line, true);
    }

    fn fragment(&self, stream: Stream, piece: String) {
        self.append(stream, &piece, false);
    }
}

/// Splits a byte stream into lines for an [`OutputSink`]: a line longer than
/// [`MAX_LINE_BYTES`] goes out in fragments cut at a character boundary, and a trailing `\r` is
/// dropped. Both transports use it, so output is cut the same way whatever carried it.
#[derive(Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, mut data: &[u8], stream: Stream, sink: &dyn OutputSink) {
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&data[..i]);
            sink.line(stream, self.take_line());
            data = &data[i + 1..];
        }
        self.partial.extend_from_slice(data);
        while self.partial.len() >= MAX_LINE_BYTES {
            let cut = char_boundary(&self.partial, MAX_LINE_BYTES);
            let rest = self.partial.split_off(cut);
            let piece = String::from_utf8_lossy(&self.partial).into_owned();
            self.partial = rest;
            sink.fragment(stream, piece);
        }
    }

    /// Hands on what is left once the stream has ended.
    pub fn finish(&mut self, stream: Stream, sink: &dyn OutputSink) {
        if !self.partial.is_empty() {
            sink.line(stream, self.take_line());
        }
    }

    fn take_line(&mut self) -> String {
        if self.partial.last() == Some(&b'\r') {
            self.partial.pop();
        }
        let line = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        line
    }
}

/// The largest cut at or below `at` that does not split a UTF-8 sequence (or `at` itself, when
/// the bytes there are not UTF-8 anyway).
fn char_boundary(bytes: &[u8], at: usize) -> usize {
    let mut cut = at;
    // A continuation byte is 10xxxxxx; a character is at most 4 bytes long.
    while cut > at.saturating_sub(3) && cut < bytes.len() && bytes[cut] & 0xC0 == 0x80 {
        cut -= 1;
    }
    if cut == 0 { at } else { cut }
}

/// Runs a helper command (not a deploy step) on an open session and collects its output. It is
/// not cancellable: helpers are short and bounded by `timeout`.
pub async fn run_captured(session: &dyn HostSession, command: &str, timeout: Duration) -> (StepResult, Captured) {
    let sink = CaptureSink::default();
    let never = CancellationToken::new();
    let result = session.exec(ExecRequest { command, timeout, record: None }, &sink, &never).await;
    let captured = sink.0.lock().map(|c| c.clone()).unwrap_or_default();
    (result, captured)
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// No connection (refused, timed out, name not resolved, dropped): worth retrying.
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    HostKeyUnknown(String),
    /// The host presented a different key than the one on record: refused, never retried.
    #[error("{0}")]
    HostKeyChanged(String),
    #[error("{0}")]
    AuthFailed(String),
    /// Local configuration that cannot work (unreadable or encrypted key, bad ssh_config).
    #[error("{0}")]
    Config(String),
}

impl TransportError {
    /// A short machine-readable name, for events and the audit log.
    pub fn kind(&self) -> &'static str {
        match self {
            TransportError::Unreachable(_) => "unreachable",
            TransportError::HostKeyUnknown(_) => "host_key_unknown",
            TransportError::HostKeyChanged(_) => "host_key_changed",
            TransportError::AuthFailed(_) => "auth_failed",
            TransportError::Config(_) => "config",
        }
    }
}

pub trait Transport: Send + Sync {
    /// Prepares to run commands on a host (for SSH: connects and authenticates).
    fn open<'a>(
        &'a self,
        target: &'a Target,
        observer: &'a dyn ConnectObserver,
    ) -> BoxFuture<'a, Result<Box<dyn HostSession>, TransportError>>;
}

pub trait HostSession: Send + Sync {
    /// Runs one command to completion, timeout or cancellation, streaming its output.
    fn exec<'a>(
        &'a self,
        request: ExecRequest<'a>,
        output: &'a dyn OutputSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, StepResult>;

    /// Copies a file to the host: sha256-verified, atomically renamed into place, skipped
    /// when the host already has identical content.
    fn upload<'a>(
        &'a self,
        request: UploadRequest<'a>,
        output: &'a dyn OutputSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, StepResult>;

    /// Free space in the host's deploy directory, in bytes, for preflight checks.
    fn free_space<'a>(&'a self) -> BoxFuture<'a, Result<u64, String>>;

    /// The connection is gone (a network blip, a restarted sshd): a new session is needed.
    fn lost(&self) -> bool {
        false
    }

    /// Gets ready to run steps, so that the first one need not wait for it (SSH: starts the
    /// host's agent). Called on connections made ahead of their wave; doing nothing is fine.
    fn prepare(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Host;

    /// A session on host `h` of environment `e`, kept under `root` by the local transport.
    async fn local_session(root: &std::path::Path) -> Box<dyn HostSession> {
        let host = Host {
            name: "h".into(),
            address: "h".into(),
            user: None,
            port: None,
            labels: vec![],
            vars: Default::default(),
            from: None,
        };
        local::LocalTransport::new(root).open(&Target { env: "e".into(), host }, &NoObserver).await.unwrap()
    }

    #[tokio::test]
    async fn a_helper_that_floods_is_kept_to_its_first_64_kib() {
        let dir = tempfile::tempdir().unwrap();
        let session = local_session(dir.path()).await;
        let command = "head -c 10000000 /dev/zero | tr '\\0' a; echo; yes | head -n 100000";
        let (result, captured) = run_captured(session.as_ref(), command, Duration::from_secs(60)).await;
        assert_eq!(result, StepResult::Exited { code: 0 });
        assert_eq!(captured.stdout.len(), MAX_CAPTURED_BYTES);
    }

    #[derive(Default)]
    struct Progressed(std::sync::Mutex<Vec<(u64, u64)>>);

    impl OutputSink for Progressed {
        fn line(&self, _: Stream, _: String) {}
        fn fragment(&self, _: Stream, _: String) {}
        fn progress(&self, sent: u64, total: u64) {
            self.0.lock().unwrap().push((sent, total));
        }
    }

    #[tokio::test]
    async fn a_local_upload_arrives_whole_with_its_mode_and_progress_and_is_skipped_when_there() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("app.bin");
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&from, &content).unwrap();
        let root = dir.path().join("hosts");
        let session = local_session(&root).await;
        let upload = || UploadRequest {
            from: &from,
            to: "releases/app.bin",
            timeout: Duration::from_secs(60),
            mode: Some(0o640),
        };
        let sink = Progressed::default();
        let result = session.upload(upload(), &sink, &CancellationToken::new()).await;
        assert_eq!(result, StepResult::Exited { code: 0 });
        let placed = root.join("e/h/releases/app.bin");
        assert!(std::fs::read(&placed).unwrap() == content, "the file, whole");
        assert_eq!(std::fs::metadata(&placed).unwrap().permissions().mode() & 0o777, 0o640);
        let progress = sink.0.lock().unwrap().clone();
        assert_eq!((progress.first(), progress.last()), (Some(&(0, 300_000)), Some(&(300_000, 300_000))));
        let left: Vec<_> = std::fs::read_dir(placed.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left");

        let again = session.upload(upload(), &Progressed::default(), &CancellationToken::new()).await;
        assert!(matches!(again, StepResult::Skipped { .. }), "{again:?}");
    }
}
