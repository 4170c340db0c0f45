//! Pause, resume, abort, gates and triage: every "may this start?" decision, made under one
//! lock with its event emitted while holding it.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::event::{AbortedBy, Command, Event, HostState, PauseCause, TriageAction, threshold_text};
use crate::profile::FailureAction;

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    Go,
    Stop,
    /// The operator excluded or skipped this host.
    Skipped,
    /// Hosts are queued for a retry: run them before going on.
    Retries,
}

pub(super) fn triage_word(t: Triage) -> &'static str {
    match t {
        Triage::Pending => "waiting",
        Triage::Running => "running",
        Triage::Done => "done",
        Triage::Failed => "failed",
        Triage::Skipped => "skipped",
    }
}

/// Pause, resume and abort, and the bookkeeping that makes them exact.
pub(super) struct Control {
    pub(super) state: Mutex<ControlState>,
    /// Bumped on every change so that waiting hosts re-check.
    pub(super) changed: watch::Sender<u64>,
    /// Fired by abort; every running command selects on it.
    pub(super) abort: CancellationToken,
    pub(super) events: EventSink,
}

#[derive(Default)]
pub(super) struct ControlState {
    pub(super) paused: Option<PauseCause>,
    pub(super) aborted: Option<(String, AbortedBy)>,
    /// Host → step now running, to tell the operator what a pause is still waiting for.
    pub(super) running: BTreeMap<String, String>,
    /// Where each host stands, for validating triage commands.
    pub(super) hosts: BTreeMap<String, Triage>,
    /// Hosts whose health verdict is now unhealthy.
    pub(super) unhealthy: std::collections::BTreeSet<String>,
    /// Hosts that went unhealthy since their wave's soak began.
    pub(super) went_unhealthy: std::collections::BTreeSet<String>,
    /// The wave whose soak is under way: the new-against-old analysis judges it meanwhile.
    pub(super) soaking: Option<usize>,
    /// The wave waiting at a manual gate.
    pub(super) awaiting_promotion: Option<usize>,
    /// Hosts the operator asked to retry, in the order asked.
    pub(super) retry: Vec<String>,
}

/// A host's standing as far as triage is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Triage {
    Pending,
    Running,
    Done,
    Failed,
    /// Failed and skipped, or excluded before it started: not deployed by this run.
    Skipped,
}

impl Control {
    pub(super) fn new(events: EventSink) -> Self {
        Self {
            state: Mutex::new(ControlState::default()),
            changed: watch::Sender::new(0),
            abort: CancellationToken::new(),
            events,
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, ControlState> {
        // A poisoned lock means a panic elsewhere while holding it; the state itself is still
        // consistent (every change is a single assignment), so keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The one way anything in the engine waits on control: `decide` looks at the state each
    /// time it changes (under the lock, so what it emits is ordered with every other control
    /// change) and ends the wait by returning `Some`. `gone` is the answer if the control itself
    /// is dropped.
    pub(super) async fn wait_until<T>(&self, gone: T, mut decide: impl FnMut(&mut ControlState) -> Option<T>) -> T {
        let mut changes = self.changed.subscribe();
        loop {
            {
                let mut state = self.lock();
                if let Some(answer) = decide(&mut state) {
                    return answer;
                }
                changes.mark_unchanged();
            }
            if changes.changed().await.is_err() {
                return gone;
            }
        }
    }

    /// Waits until starting is allowed, then emits `event` as the start. `running` registers a
    /// step as in flight; its start is write-ahead: this returns once the consumer has made it
    /// durable (the audit log's fsync), so no step runs without its record on disk.
    pub(super) async fn admit(&self, event: Event, running: Option<(&str, &str)>) -> Gate {
        let mut event = Some(event);
        let mut durable = None;
        let gate = self
            .wait_until(Gate::Stop, |state| {
                if state.aborted.is_some() {
                    return Some(Gate::Stop);
                }
                state.paused.is_none().then(|| {
                    if let Some((host, step)) = running {
                        state.running.insert(host.to_string(), step.to_string());
                    }
                    if let Some(event) = event.take() {
                        if running.is_some() {
                            durable = Some(self.events.emit_durable(event));
                        } else {
                            self.events.emit(event);
                        }
                    }
                    Gate::Go
                })
            })
            .await;
        if let Some(durable) = durable {
            // A consumer that keeps no record answers at once (by dropping the promise).
            let _ = durable.await;
        }
        gate
    }

    /// Like `admit` for a host's start: also refuses a host the operator excluded, atomically
    /// with the exclusion.
    pub(super) async fn admit_host(&self, wave: usize, host: &str) -> Gate {
        self.wait_until(Gate::Stop, |state| {
            if state.aborted.is_some() {
                return Some(Gate::Stop);
            }
            if state.hosts.get(host) == Some(&Triage::Skipped) {
                return Some(Gate::Skipped);
            }
            state.paused.is_none().then(|| {
                state.hosts.insert(host.to_string(), Triage::Running);
                self.events.emit(Event::HostStarted { wave, host: host.to_string() });
                Gate::Go
            })
        })
        .await
    }

    /// Like `admit` for a wave's start, but returns early when retries are queued, so they run
    /// before the next wave.
    pub(super) async fn admit_wave(&self, event: Event) -> Gate {
        let mut event = Some(event);
        self.wait_until(Gate::Stop, |state| {
            if state.aborted.is_some() {
                return Some(Gate::Stop);
            }
            if !state.retry.is_empty() {
                return Some(Gate::Retries);
            }
            state.paused.is_none().then(|| {
                if let Some(event) = event.take() {
                    self.events.emit(event);
                }
                Gate::Go
            })
        })
        .await
    }

    /// After the last wave: `Retries` while the operator queues retries, `Go` once the deploy
    /// may finish (not paused, or aborted).
    pub(super) async fn settle(&self) -> Gate {
        self.wait_until(Gate::Go, |state| {
            if state.aborted.is_some() {
                return Some(Gate::Go);
            }
            if !state.retry.is_empty() {
                return Some(Gate::Retries);
            }
            state.paused.is_none().then_some(Gate::Go)
        })
        .await
    }

    pub(super) fn register(&self, hosts: impl Iterator<Item = String>) {
        let mut state = self.lock();
        for host in hosts {
            state.hosts.insert(host, Triage::Pending);
        }
    }

    pub(super) fn host_finished(&self, host: &str, outcome: HostState) {
        let triage = match outcome {
            HostState::Done => Triage::Done,
            HostState::Failed | HostState::Cancelled => Triage::Failed,
            HostState::NotStarted => Triage::Pending,
            HostState::Skipped => Triage::Skipped,
        };
        self.lock().hosts.insert(host.to_string(), triage);
    }

    pub(super) fn health_changed(&self, host: &str, check: &str, healthy: bool, why: Option<String>) {
        let mut state = self.lock();
        if healthy {
            state.unhealthy.remove(host);
        } else {
            state.unhealthy.insert(host.to_string());
            state.went_unhealthy.insert(host.to_string());
        }
        self.events.emit(Event::HealthChanged { host: host.to_string(), check: check.to_string(), healthy, why });
    }

    pub(super) fn end_soak(&self) {
        self.lock().soaking = None;
    }

    pub(super) fn start_soak(&self, wave: usize, hosts: &[String]) {
        let mut state = self.lock();
        state.soaking = Some(wave);
        for host in hosts {
            state.went_unhealthy.remove(host);
        }
    }

    pub(super) fn unhealthy_during_soak(&self, hosts: &[String]) -> Vec<String> {
        let state = self.lock();
        hosts.iter().filter(|h| state.went_unhealthy.contains(*h) || state.unhealthy.contains(*h)).cloned().collect()
    }

    /// Waits at a manual gate until the operator promotes the wave (or aborts).
    pub(super) async fn await_promotion(&self, wave: usize) {
        let mut announced = false;
        self.wait_until((), |state| {
            if state.aborted.is_some() {
                return Some(());
            }
            if !announced {
                announced = true;
                state.awaiting_promotion = Some(wave);
                self.events.emit(Event::AwaitingPromote { wave });
                return None;
            }
            state.awaiting_promotion.is_none().then_some(())
        })
        .await
    }

    pub(super) fn promote(&self) {
        let mut state = self.lock();
        match state.awaiting_promotion.take() {
            Some(wave) => {
                self.events.emit(Event::Promoted { wave });
                drop(state);
                self.bump();
            }
            None => self.events.emit(Event::CommandIgnored {
                command: Command::Promote,
                why: "no wave is waiting to be promoted".into(),
            }),
        }
    }

    pub(super) fn take_retries(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().retry)
    }

    pub(super) fn skipped(&self) -> Vec<String> {
        self.lock().hosts.iter().filter(|(_, t)| **t == Triage::Skipped).map(|(h, _)| h.clone()).collect()
    }

    /// Retry, skip or exclude one host, if its standing allows it.
    pub(super) fn triage(&self, command: Command, host: &str, action: TriageAction) {
        let mut state = self.lock();
        let standing = state.hosts.get(host).copied();
        let why = match (state.aborted.is_some(), standing, action) {
            (true, _, _) => Some("the deploy was aborted".to_string()),
            (_, None, _) => Some(format!("no host `{host}` in this deploy")),
            (_, Some(Triage::Failed), TriageAction::Retry | TriageAction::Skip) => None,
            (_, Some(Triage::Pending), TriageAction::Exclude) => None,
            (_, Some(t), TriageAction::Retry | TriageAction::Skip) => {
                Some(format!("{host} has not failed (it is {})", triage_word(t)))
            }
            (_, Some(t), TriageAction::Exclude) => {
                Some(format!("{host} has already started (it is {})", triage_word(t)))
            }
        };
        if let Some(why) = why {
            self.events.emit(Event::CommandIgnored { command, why });
            return;
        }
        match action {
            TriageAction::Retry => {
                state.hosts.insert(host.to_string(), Triage::Pending);
                state.retry.push(host.to_string());
            }
            TriageAction::Skip | TriageAction::Exclude => {
                state.hosts.insert(host.to_string(), Triage::Skipped);
            }
        }
        self.events.emit(Event::HostTriaged { host: host.to_string(), action });
        drop(state);
        self.bump();
    }

    pub(super) fn step_finished(&self, host: &str, event: Event) {
        let mut state = self.lock();
        state.running.remove(host);
        self.events.emit(event);
    }

    pub(super) fn apply(&self, command: Command) {
        match &command {
            Command::Pause => self.pause(PauseCause::Operator, Some(command.clone())),
            Command::Resume => {
                let mut state = self.lock();
                let why = if state.aborted.is_some() {
                    Some("the deploy was aborted")
                } else if state.paused.is_none() {
                    Some("not paused")
                } else {
                    None
                };
                match why {
                    Some(why) => self.events.emit(Event::CommandIgnored { command, why: why.into() }),
                    None => {
                        state.paused = None;
                        self.events.emit(Event::Resumed);
                        drop(state);
                        self.bump();
                    }
                }
            }
            Command::Abort { reason } => self.abort(reason.clone(), AbortedBy::Command, Some(command.clone())),
            Command::Retry { host } => self.triage(command.clone(), host, TriageAction::Retry),
            Command::Skip { host } => self.triage(command.clone(), host, TriageAction::Skip),
            Command::Exclude { host } => self.triage(command.clone(), host, TriageAction::Exclude),
            Command::Promote => self.promote(),
        }
    }

    pub(super) fn pause(&self, cause: PauseCause, command: Option<Command>) {
        let mut state = self.lock();
        let why = if state.aborted.is_some() {
            Some("the deploy was aborted")
        } else if state.paused.is_some() {
            Some("already paused")
        } else {
            None
        };
        if let Some(why) = why {
            if let Some(command) = command {
                self.events.emit(Event::CommandIgnored { command, why: why.into() });
            }
            return;
        }
        state.paused = Some(cause.clone());
        let running = state.running.iter().map(|(h, s)| format!("{h}: {s}")).collect();
        self.events.emit(Event::Paused { cause, running });
        drop(state);
        self.bump();
    }

    pub(super) fn abort(&self, reason: String, by: AbortedBy, command: Option<Command>) {
        let mut state = self.lock();
        if state.aborted.is_some() {
            if let Some(command) = command {
                self.events.emit(Event::CommandIgnored { command, why: "already aborted".into() });
            }
            return;
        }
        state.aborted = Some((reason.clone(), by));
        self.events.emit(Event::Aborted { reason, by });
        drop(state);
        self.abort.cancel();
        self.bump();
    }

    /// The new-against-old analysis found the soaking wave worse than the old release.
    pub(super) fn analysis_failed(&self, wave: usize, check: &str, reason: String, action: FailureAction) {
        self.events.emit(Event::AnalysisFailed { wave, check: check.to_string(), reason: reason.clone(), action });
        match action {
            FailureAction::Pause => self.pause(PauseCause::Analysis { wave, reason }, None),
            FailureAction::Abort | FailureAction::Rollback => self.abort(
                format!(
                    "wave {wave} worse than the old release: {reason}{}",
                    if action == FailureAction::Rollback { "; rolling back" } else { "" }
                ),
                AbortedBy::Policy,
                None,
            ),
        }
    }

    pub(super) fn threshold_exceeded(&self, wave: usize, failed_hosts: &[String], limit: usize, action: FailureAction) {
        let failures = failed_hosts.len();
        self.events.emit(Event::ThresholdExceeded {
            wave,
            failures,
            limit,
            failed_hosts: failed_hosts.to_vec(),
            action,
        });
        match action {
            FailureAction::Pause => self.pause(PauseCause::FailureThreshold { wave, failures, limit }, None),
            FailureAction::Abort | FailureAction::Rollback => self.abort(
                format!(
                    "{} ({}){}",
                    threshold_text(wave, failures, limit),
                    failed_hosts.join(", "),
                    if action == FailureAction::Rollback { "; rolling back" } else { "" }
                ),
                AbortedBy::Policy,
                None,
            ),
        }
    }
}
