//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod fake;
pub mod sshd;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wavedeck::engine;
use wavedeck::event::{Command, Event, HostSummary, Outcome};
use wavedeck::plan::Plan;
use wavedeck::profile::Profile;
use wavedeck::secrets::Secrets;
use wavedeck::transport::Transport;
use wavedeck::transport::local::LocalTransport;

/// Upper bound on any single wait, so a broken engine fails the test instead of hanging it.
/// Waits end as soon as the awaited event arrives; this is never a sleep.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A running engine with its event log.
pub struct Deploy {
    pub events: Vec<Event>,
    rx: engine::EventStream,
    pub commands: mpsc::UnboundedSender<Command>,
    handle: Option<JoinHandle<(Outcome, Vec<HostSummary>)>>,
    /// The longest a single wait may take (see [`PATIENCE`]).
    patience: Duration,
}

impl Deploy {
    pub fn start(source: &str, root: &Path) -> Deploy {
        Self::start_with_secrets(source, root, &[])
    }

    pub fn start_with_secrets(source: &str, root: &Path, secrets: &[(&str, &str)]) -> Deploy {
        Self::start_full(source, Arc::new(LocalTransport::new(root)), secrets)
    }

    /// Runs the profile's `test` environment through `transport`.
    pub fn start_on(source: &str, transport: Arc<dyn Transport>) -> Deploy {
        Self::start_full(source, transport, &[])
    }

    /// Runs the profile's `test` environment through `transport`, with secrets from `secrets`.
    pub fn start_on_with_secrets(source: &str, transport: Arc<dyn Transport>, secrets: &[(&str, &str)]) -> Deploy {
        Self::start_full(source, transport, secrets)
    }

    /// Runs the profile's `test` environment through `transport`, with HTTP/TCP checks made by
    /// `prober`.
    pub fn start_with_prober(
        source: &str,
        transport: Arc<dyn Transport>,
        prober: Arc<dyn wavedeck::health::Prober>,
    ) -> Deploy {
        Self::start_full_with(source, transport, prober, &[])
    }

    fn start_full(source: &str, transport: Arc<dyn Transport>, secrets: &[(&str, &str)]) -> Deploy {
        Self::start_full_with(source, transport, Arc::new(wavedeck::health::NetProber), secrets)
    }

    fn start_full_with(
        source: &str,
        transport: Arc<dyn Transport>,
        prober: Arc<dyn wavedeck::health::Prober>,
        secrets: &[(&str, &str)],
    ) -> Deploy {
        let profile = Profile::parse(Path::new("test.toml"), source).unwrap_or_else(|e| panic!("{e}"));
        let secrets =
            Secrets::from_lookup(&profile, |var| secrets.iter().find(|(k, _)| *k == var).map(|(_, v)| v.to_string()))
                .unwrap();
        let mut plan = Plan::build(&profile, "test", "r1", &secrets).unwrap();
        // As a session does: steps leave records on the hosts under this deploy's id.
        plan.deploy_id = format!("test-{}", std::process::id());
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (tx, rx) = engine::event_channel();
        let handle = tokio::spawn(engine::run_with_prober(plan, transport, prober, command_rx, tx, secrets.redactor()));
        Deploy { events: Vec::new(), rx, commands, handle: Some(handle), patience: PATIENCE }
    }

    /// For tests on a paused clock, where hours pass in an instant: waits as long as `patience`
    /// of virtual time (which still ends a wait for something that never comes).
    pub fn with_patience(mut self, patience: Duration) -> Deploy {
        self.patience = patience;
        self
    }

    /// Waits for the first event (from now on) matching `pred`, and returns it.
    pub async fn until(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        loop {
            let next = tokio::time::timeout(self.patience, self.rx.recv()).await;
            match next {
                Ok(Some(stamped)) => {
                    self.events.push(stamped.event.clone());
                    if pred(&stamped.event) {
                        return stamped.event;
                    }
                }
                Ok(None) => panic!("engine stopped before {what}; events:\n{:#?}", self.events),
                Err(_) => panic!("no {what} within {:?}; events:\n{:#?}", self.patience, self.events),
            }
        }
    }

    pub fn send(&self, command: Command) {
        self.commands.send(command).unwrap();
    }

    /// Runs to the end; returns the outcome and summaries.
    pub async fn finish(&mut self) -> (Outcome, Vec<HostSummary>) {
        self.until("DeployFinished", |e| matches!(e, Event::DeployFinished { .. })).await;
        let handle = self.handle.take().unwrap();
        tokio::time::timeout(self.patience, handle).await.unwrap().unwrap()
    }

    /// Index of the first recorded event matching `pred`.
    pub fn position(&self, pred: impl Fn(&Event) -> bool) -> Option<usize> {
        self.events.iter().position(pred)
    }
}

pub fn is_start(e: &Event) -> bool {
    matches!(e, Event::WaveStarted { .. } | Event::HostStarted { .. } | Event::StepStarted { .. })
}

/// Shell snippet that blocks until `file` exists in the host's directory: the test's way to
/// hold a step open until it has checked what it needs to.
pub fn wait_for_file(file: &str) -> String {
    format!("while [ ! -e ../{file} ]; do sleep 0.02; done")
}

/// Every process on this machine whose arguments contain `needle`, as "pid: argv".
pub fn processes_with_argument(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let argv = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if argv.contains(needle) {
                found.push(format!("{pid}: {argv}"));
            }
        }
    }
    found
}
