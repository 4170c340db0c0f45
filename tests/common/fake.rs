//! A scripted transport for engine tests on tokio's paused clock: no processes, no network, and
//! every wait is a tokio timer, so minutes of soak, retries and timeouts pass in microseconds.
//!
//! A step's rendered script is read as a tiny language, one command per line (the secret
//! exports that lead every script are skipped):
//! - `sleep SECONDS`: waits on the tokio clock (a timeout or an abort cuts it short);
//! - `echo TEXT`: prints a line on stdout;
//! - `fail-first N`: this host's first N runs of this script exit 1, later ones go on;
//! - `healthy-for N`: this host's first N runs of this script go on, later ones exit 1;
//! - `exit CODE`: ends with that code (the end of the script is `exit 0`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wavedeck::event::{StepResult, Stream};
use wavedeck::transport::{
    BoxFuture, ConnectObserver, ExecRequest, HostSession, OutputSink, Target, Transport, TransportError, UploadRequest,
};

#[derive(Default, Clone)]
pub struct Scripted {
    /// How often each (host, script) ran.
    runs: Arc<Mutex<HashMap<(String, String), u32>>>,
}

impl Transport for Scripted {
    fn open<'a>(
        &'a self,
        target: &'a Target,
        _observer: &'a dyn ConnectObserver,
    ) -> BoxFuture<'a, Result<Box<dyn HostSession>, TransportError>> {
        let session = FakeHost { host: target.host.name.clone(), runs: self.runs.clone() };
        Box::pin(async move { Ok(Box::new(session) as Box<dyn HostSession>) })
    }
}

struct FakeHost {
    host: String,
    runs: Arc<Mutex<HashMap<(String, String), u32>>>,
}

impl FakeHost {
    async fn run(&self, script: &str, output: &dyn OutputSink) -> StepResult {
        let run = {
            let mut runs = self.runs.lock().unwrap();
            let count = runs.entry((self.host.clone(), script.to_string())).or_default();
            *count += 1;
            *count
        };
        for line in script.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("export ")) {
            let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
            match word {
                "sleep" => tokio::time::sleep(Duration::from_secs_f64(rest.parse().unwrap())).await,
                "echo" => output.line(Stream::Stdout, rest.to_string()),
                "fail-first" if run <= rest.parse().unwrap() => return StepResult::Exited { code: 1 },
                "healthy-for" if run > rest.parse().unwrap() => return StepResult::Exited { code: 1 },
                "fail-first" | "healthy-for" => {}
                "exit" => return StepResult::Exited { code: rest.parse().unwrap() },
                other => panic!("the scripted transport does not know `{other}`"),
            }
        }
        StepResult::Exited { code: 0 }
    }
}

impl HostSession for FakeHost {
    fn exec<'a>(
        &'a self,
        request: ExecRequest<'a>,
        output: &'a dyn OutputSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, StepResult> {
        Box::pin(async move {
            tokio::select! {
                result = self.run(request.command, output) => result,
                _ = tokio::time::sleep(request.timeout) => StepResult::TimedOut,
                _ = cancel.cancelled() => StepResult::Cancelled,
            }
        })
    }

    fn upload<'a>(
        &'a self,
        _request: UploadRequest<'a>,
        _output: &'a dyn OutputSink,
        _cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, StepResult> {
        Box::pin(async { StepResult::Error { message: "the scripted transport does not upload".into() } })
    }

    fn free_space<'a>(&'a self) -> BoxFuture<'a, Result<u64, String>> {
        Box::pin(async { Ok(u64::MAX) })
    }
}

/// HTTP and TCP checks answered without a network: healthy for the first `healthy_for` probes
/// (across hosts), failing after.
pub struct ScriptedProber {
    pub healthy_for: u32,
    pub probes: Arc<Mutex<u32>>,
}

impl wavedeck::health::Prober for ScriptedProber {
    fn probe<'a>(&'a self, _probe: &'a wavedeck::health::Probe, _timeout: Duration) -> BoxFuture<'a, StepResult> {
        Box::pin(async move {
            let mut probes = self.probes.lock().unwrap();
            *probes += 1;
            if *probes <= self.healthy_for {
                StepResult::Exited { code: 0 }
            } else {
                StepResult::Error { message: "GET http://a/health: status 503, expected 200".into() }
            }
        })
    }
}
