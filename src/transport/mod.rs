//! How the engine reaches a host: one small interface, implemented by the local transport
//! (this machine, used by the demo and tests) and later by SSH.
//!
//! The engine opens one [`HostSession`] per host and runs every step of that host through it,
//! which is what lets SSH reuse one connection per host. A transport owns everything about
//! *how* a command runs, including enforcing its timeout and killing it on cancel; the engine
//! only learns the [`StepResult`].

pub mod local;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::event::{StepResult, Stream};
use crate::profile::Host;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long a cancelled or timed-out command gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

/// Longest output line kept whole; longer lines are split so a binary blob cannot exhaust
/// memory.
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
    /// Shell command line, secrets included: never log it.
    pub command: &'a str,
    pub timeout: Duration,
}

/// Receives output lines as they are produced, without the trailing newline.
pub trait OutputSink: Send + Sync {
    fn line(&self, stream: Stream, line: String);
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0}")]
    Unreachable(String),
}

pub trait Transport: Send + Sync {
    /// Prepares to run commands on a host (for SSH: connects and authenticates).
    fn open<'a>(
        &'a self,
        target: &'a Target,
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
}
