//! The local transport: each "host" is a working directory on this machine and each step a
//! `sh -c` subprocess in it.
//!
//! Every command runs in its own process group so that a timeout or an abort can signal the
//! whole tree it started (SIGTERM, then SIGKILL after [`KILL_GRACE`]), leaving no orphans.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::{
    BoxFuture, ExecRequest, HostSession, KILL_GRACE, MAX_LINE_BYTES, OutputSink, Target, Transport,
    TransportError,
};
use crate::event::{StepResult, Stream};

/// After the shell exits, how long to keep reading output that a leftover background process
/// may still hold open before giving up on it.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// Runs hosts as directories under `root/<env>/<host>`.
#[derive(Debug, Clone)]
pub struct LocalTransport {
    root: PathBuf,
}

impl LocalTransport {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn host_dir(&self, target: &Target) -> PathBuf {
        // Environment and host names are validated to be plain names, so this stays inside root.
        self.root.join(&target.env).join(&target.host.name)
    }
}

impl Transport for LocalTransport {
    fn open<'a>(
        &'a self,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<Box<dyn HostSession>, TransportError>> {
        Box::pin(async move {
            let dir = self.host_dir(target);
            tokio::fs::create_dir_all(&dir).await.map_err(|e| {
                TransportError::Unreachable(format!("cannot create {}: {e}", dir.display()))
            })?;
            Ok(Box::new(LocalSession {
                dir,
                host: target.host.name.clone(),
                env: target.env.clone(),
            }) as Box<dyn HostSession>)
        })
    }
}

struct LocalSession {
    dir: PathBuf,
    host: String,
    env: String,
}

impl HostSession for LocalSession {
    fn exec<'a>(
        &'a self,
        request: ExecRequest<'a>,
        output: &'a dyn OutputSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, StepResult> {
        Box::pin(async move {
            let child = Command::new("sh")
                .arg("-c")
                .arg(request.command)
                .current_dir(&self.dir)
                .env("WAVEDECK_HOST", &self.host)
                .env("WAVEDECK_ENV", &self.env)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true)
                .spawn();
            match child {
                Ok(child) => supervise(child, request.timeout, output, cancel).await,
                Err(e) => StepResult::Error {
                    message: format!("cannot start sh: {e}"),
                },
            }
        })
    }
}

async fn supervise(
    mut child: Child,
    timeout: Duration,
    output: &dyn OutputSink,
    cancel: &CancellationToken,
) -> StepResult {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    // Output is read while waiting, so a chatty command never blocks on a full pipe.
    let readers = async {
        tokio::join!(
            pump(stdout, Stream::Stdout, output),
            pump(stderr, Stream::Stderr, output)
        );
    };
    let stop = async {
        tokio::select! {
            _ = tokio::time::sleep(timeout) => StepResult::TimedOut,
            _ = cancel.cancelled() => StepResult::Cancelled,
        }
    };
    tokio::pin!(readers, stop);
    let mut output_closed = false;
    let result = loop {
        tokio::select! {
            status = child.wait() => break match status {
                Ok(status) => exit_result(status),
                Err(e) => StepResult::Error { message: format!("waiting for the command failed: {e}") },
            },
            stopped = &mut stop => {
                terminate(&mut child, pgid).await;
                break stopped;
            }
            _ = &mut readers, if !output_closed => output_closed = true,
        }
    };
    if !output_closed {
        let _ = tokio::time::timeout(OUTPUT_DRAIN, readers).await;
    }
    result
}

/// SIGTERM to the whole group, then SIGKILL if it has not gone after the grace period.
async fn terminate(child: &mut Child, pgid: Option<Pid>) {
    let Some(pgid) = pgid else { return };
    let _ = killpg(pgid, Signal::SIGTERM);
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = child.wait().await;
    } else {
        // The shell is gone; make sure nothing it started in its group lingers.
        let _ = killpg(pgid, Signal::SIGKILL);
    }
}

fn exit_result(status: std::process::ExitStatus) -> StepResult {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => StepResult::Exited { code },
        (None, Some(signal)) => StepResult::Signalled { signal },
        (None, None) => StepResult::Error {
            message: "exited without a status".into(),
        },
    }
}

/// Forwards a pipe line by line; long lines are split at [`MAX_LINE_BYTES`].
async fn pump(pipe: Option<impl AsyncRead + Unpin>, stream: Stream, output: &dyn OutputSink) {
    let Some(pipe) = pipe else { return };
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk,
        };
        let (used, complete) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        line.extend_from_slice(&chunk[..used]);
        reader.consume(used);
        if complete || line.len() >= MAX_LINE_BYTES {
            emit(&mut line, stream, output);
        }
    }
    if !line.is_empty() {
        emit(&mut line, stream, output);
    }
}

fn emit(line: &mut Vec<u8>, stream: Stream, output: &dyn OutputSink) {
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    output.line(stream, String::from_utf8_lossy(line).into_owned());
    line.clear();
}
