//! The local transport: each "host" is a working directory on this machine and each step an
//! `sh -s` subprocess in it, reading its script on standard input.
//!
//! Every command runs in its own process group so that a timeout or an abort can signal the
//! whole tree it started (SIGTERM, then SIGKILL after [`KILL_GRACE`]), leaving no orphans.

use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::{
    BoxFuture, ConnectObserver, ExecRequest, HostSession, KILL_GRACE, LineSplitter, OutputSink, Target, Transport,
    TransportError, UploadRequest, stdin_script, upload,
};
use crate::event::{StepResult, Stream};

/// After the shell exits, how long to keep reading output that a leftover background process
/// may still hold open before giving up on it.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// The operator's environment variables a step inherits; everything else (`SSH_AUTH_SOCK`, cloud
/// credentials, tokens of unrelated tools) stays out of reach of what a profile runs.
pub const INHERITED_ENV: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR"];

/// `INHERITED_ENV` plus the locale's `LC_*` variables, as set for this process.
fn inherited_env() -> impl Iterator<Item = (String, std::ffi::OsString)> {
    std::env::vars_os().filter_map(|(key, value)| {
        let key = key.into_string().ok()?;
        (INHERITED_ENV.contains(&key.as_str()) || key.starts_with("LC_")).then_some((key, value))
    })
}

/// Runs hosts as directories under `root/<env>/<host>`.
#[derive(Debug, Clone)]
pub struct LocalTransport {
    root: PathBuf,
    /// Where the hosts answer HTTP (`local_http`), and that server once the first host is
    /// opened (inside the runtime), or why it could not start.
    http: Option<std::net::SocketAddr>,
    serving: std::sync::Arc<std::sync::Mutex<Option<Result<super::local_http::Serving, String>>>>,
}

impl LocalTransport {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), http: None, serving: Default::default() }
    }

    /// Hosts that also answer HTTP on `addr` (see [`super::local_http`]) while this transport
    /// is in use.
    pub fn answering_http(mut self, addr: Option<std::net::SocketAddr>) -> Self {
        self.http = addr;
        self
    }

    /// Starts the HTTP server on first use; an address already taken fails every host, saying so.
    fn ensure_http(&self) -> Result<(), TransportError> {
        let Some(addr) = self.http else { return Ok(()) };
        let mut serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        let started = serving.get_or_insert_with(|| super::local_http::serve(self.root.clone(), addr));
        started.as_ref().map(|_| ()).map_err(|e| TransportError::Config(e.clone()))
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
        _observer: &'a dyn ConnectObserver,
    ) -> BoxFuture<'a, Result<Box<dyn HostSession>, TransportError>> {
        Box::pin(async move {
            self.ensure_http()?;
            let dir = self.host_dir(target);
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| TransportError::Unreachable(format!("cannot create {}: {e}", dir.display())))?;
            Ok(Box::new(LocalSession { dir, host: target.host.name.clone(), env: target.env.clone() })
                as Box<dyn HostSession>)
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
                .arg("-s")
                .current_dir(&self.dir)
                .env_clear()
                .envs(inherited_env())
                .env("WAVEDECK_HOST", &self.host)
                .env("WAVEDECK_ENV", &self.env)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true)
                .spawn();
            match child {
                Ok(mut child) => {
                    // The script goes in on stdin, never in argv, where `ps` would show its secrets.
                    if let Some(mut stdin) = child.stdin.take() {
                        let script = stdin_script(request.command);
                        tokio::spawn(async move {
                            let _ = stdin.write_all(script.as_bytes()).await;
                        });
                    }
                    supervise(child, request.timeout, output, cancel).await
                }
                Err(e) => StepResult::Error { message: format!("cannot start sh: {e}") },
            }
        })
    }

    fn upload<'a>(
        &'a self,
        request: UploadRequest<'a>,
        output: &'a dyn OutputSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, StepResult> {
        Box::pin(async move {
            // The host is confined to its directory: no absolute targets, no way out with "..".
            let to = Path::new(request.to);
            if to.is_absolute() || to.components().any(|c| matches!(c, Component::ParentDir)) {
                return StepResult::Error {
                    message: format!("upload target {} must stay inside the host directory", request.to),
                };
            }
            let dest = self.dir.join(to);
            let work = copy_verified(request.from, &dest, request.mode, output);
            tokio::select! {
                result = work => result,
                _ = tokio::time::sleep(request.timeout) => StepResult::TimedOut,
                _ = cancel.cancelled() => StepResult::Cancelled,
            }
        })
    }

    fn free_space<'a>(&'a self) -> BoxFuture<'a, Result<u64, String>> {
        Box::pin(async move {
            let stat = nix::sys::statvfs::statvfs(&self.dir).map_err(|e| e.to_string())?;
            Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
        })
    }
}

/// Copies `from` to `dest` through a temporary file that is verified and then renamed, unless
/// `dest` already has the same content. A cancelled copy leaves only the temporary file behind,
/// never a half-written `dest`.
async fn copy_verified(from: &Path, dest: &Path, mode: Option<u32>, output: &dyn OutputSink) -> StepResult {
    use std::os::unix::fs::PermissionsExt;
    let chmod = |path: PathBuf| async move {
        match mode {
            Some(mode) => tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .await
                .map_err(|e| format!("cannot set mode {mode:o} on {}: {e}", path.display())),
            None => Ok(()),
        }
    };
    let fail = |message: String| StepResult::Error { message };
    let want = match upload::sha256_source(from).await {
        Ok(h) => h,
        Err(e) => return fail(e),
    };
    if dest.exists()
        && let Ok(have) = upload::sha256_file(dest).await
        && have == want
    {
        if let Err(e) = chmod(dest.to_path_buf()).await {
            return fail(e);
        }
        return StepResult::Skipped { reason: format!("{} already has sha256 {want}", dest.display()) };
    }
    if let Some(parent) = dest.parent()
        && let Err(e) = tokio::fs::create_dir_all(parent).await
    {
        return fail(format!("cannot create {}: {e}", parent.display()));
    }
    let temp = PathBuf::from(upload::temporary_name(&dest.to_string_lossy()));
    let copied = async {
        let total = tokio::fs::metadata(from).await.map_err(|e| format!("cannot read {}: {e}", from.display()))?.len();
        let mut dst =
            tokio::fs::File::create(&temp).await.map_err(|e| format!("cannot write {}: {e}", temp.display()))?;
        upload::copy(from, total, &mut dst, output).await.map_err(|e| match e {
            upload::CopyError::Read(e) => format!("cannot read {}: {e}", from.display()),
            upload::CopyError::Write(e) => format!("cannot write {}: {e}", temp.display()),
        })?;
        dst.sync_all().await.map_err(|e| e.to_string())?;
        let got = upload::sha256_file(&temp).await?;
        if got != want {
            return Err(format!("sha256 mismatch after copy: expected {want}, got {got}"));
        }
        chmod(temp.clone()).await?;
        tokio::fs::rename(&temp, dest).await.map_err(|e| format!("cannot rename into {}: {e}", dest.display()))
    };
    match copied.await {
        Ok(()) => {
            output.line(Stream::Stdout, format!("uploaded {} (sha256 {want})", dest.display()));
            StepResult::Exited { code: 0 }
        }
        Err(message) => {
            let _ = tokio::fs::remove_file(&temp).await;
            fail(message)
        }
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
        tokio::join!(pump(stdout, Stream::Stdout, output), pump(stderr, Stream::Stderr, output));
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
    if tokio::time::timeout(KILL_GRACE, child.wait()).await.is_err() {
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
        (None, None) => StepResult::Error { message: "exited without a status".into() },
    }
}

/// Forwards a pipe line by line, long lines in fragments.
async fn pump(pipe: Option<impl AsyncRead + Unpin>, stream: Stream, output: &dyn OutputSink) {
    let Some(mut pipe) = pipe else { return };
    let mut lines = LineSplitter::default();
    let mut buf = vec![0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => lines.push(&buf[..n], stream, output),
        }
        // Not reading while the consumer catches up makes the step's writes wait in the pipe.
        output.ready().await;
    }
    lines.finish(stream, output);
}
