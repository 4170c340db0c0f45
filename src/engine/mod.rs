//! The wave engine: runs a [`Plan`] through a [`Transport`], steered by [`Command`]s, reporting
//! everything as [`Event`]s.
//!
//! It knows nothing about terminals, printing or files. Consumers read the event queue
//! (`events`): control events never wait, and output waits at its source (the host) when a
//! consumer falls behind.
//!
//! The parts: this module runs the waves (and retries, soak and gates between them);
//! `control` decides what may start; `host` runs one host's pipeline; `output` turns a
//! step's output into events; `monitor` watches finished hosts and holds a wave's soak.
//!
//! Every "may this start?" decision and every control change goes through one lock, and the
//! corresponding event is emitted while holding it. That makes the event stream itself the
//! proof of the control semantics: after `Paused` no `HostStarted`/`StepStarted`/`WaveStarted`
//! appears until `Resumed`, and after `Aborted` none appears at all.

mod compare;
mod control;
mod events;
mod host;
mod monitor;
mod output;
mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::event::{AbortedBy, Command, Event, HostState, HostSummary, Outcome, StepResult, WaveOutline};
use crate::plan::{HostPlan, Plan, PlannedStep};
use crate::profile::Promotion;
use crate::secrets::Redactor;
use crate::transport::Transport;

use self::control::*;
pub use self::events::{Durable, EventSink, EventStream, OUTPUT_BACKLOG_BYTES, event_channel};
use self::host::*;
use self::monitor::*;
use self::output::*;
pub use self::output::{CHANGED_MARKER, SKIP_MARKER, STEP_OUTPUT_HEAD_BYTES, STEP_OUTPUT_TAIL_BYTES, parse_changed};
use self::watch::*;

/// Runs the plan to its end (success, failure or abort) and returns every host's summary. The
/// last event emitted is always `DeployFinished`.
pub async fn run(
    plan: Plan,
    transport: Arc<dyn Transport>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: EventSink,
    redactor: Redactor,
) -> (Outcome, Vec<HostSummary>) {
    run_with_prober(plan, transport, Arc::new(crate::health::NetProber), commands, events, redactor).await
}

/// [`run`], with HTTP and TCP checks made by `prober`.
pub async fn run_with_prober(
    plan: Plan,
    transport: Arc<dyn Transport>,
    prober: Arc<dyn crate::health::Prober>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: EventSink,
    redactor: Redactor,
) -> (Outcome, Vec<HostSummary>) {
    let started = Instant::now();
    let control = Arc::new(Control::new(events.clone()));
    events.emit(Event::DeployStarted {
        outlier_percent: plan.analysis.outlier_percent,
        service: plan.service.clone(),
        env: plan.env.clone(),
        release: plan.release.clone(),
        waves: plan
            .waves
            .iter()
            .map(|w| WaveOutline {
                wave: w.number,
                hosts: w.hosts.iter().map(|h| h.host.name.clone()).collect(),
                max_failures: w.max_failures,
            })
            .collect(),
        steps: plan
            .waves
            .first()
            .and_then(|w| w.hosts.first())
            .map_or_else(Vec::new, |h| h.steps.iter().map(|s| s.name.clone()).collect()),
    });

    let mut book = Book::new(&plan.waves, &plan.resume);
    // A resumed deploy starts by saying what it carries over: hosts that ended before.
    for summary in book.summaries.iter().filter(|s| s.state != HostState::NotStarted) {
        events.emit(Event::HostFinished { wave: summary.wave, host: summary.host.clone(), state: summary.state });
    }
    control.register(book.summaries.iter().map(|s| s.host.clone()));
    // Commands queued before the start (headless `--exclude`) apply before anything runs.
    while let Ok(command) = commands.try_recv() {
        control.apply(command);
    }
    let commands_task = {
        let control = control.clone();
        tokio::spawn(async move {
            while let Some(command) = commands.recv().await {
                control.apply(command);
            }
        })
    };
    let shared = Arc::new(Shared {
        control: control.clone(),
        transport,
        prober,
        redactor,
        env: plan.env.clone(),
        monitors: CancellationToken::new(),
        deploy_id: plan.deploy_id.clone(),
        adopt: plan
            .resume
            .hosts
            .iter()
            .filter_map(|(host, carried)| match carried {
                crate::plan::Carried::From { steps_done, attempt } => {
                    Some((host.clone(), (steps_done + 1, (*attempt).max(1))))
                }
                _ => None,
            })
            .collect(),
        ahead: std::sync::Mutex::new(BTreeMap::new()),
        ahead_slots: Arc::new(Semaphore::new(CONNECT_AHEAD)),
        watch: Watch::new(
            &plan.waves.iter().flat_map(|w| w.hosts.iter().map(|h| h.host.clone())).collect::<Vec<_>>(),
            plan.analysis.clone(),
        ),
    });
    if shared.watch.slow_steps_watched() {
        tokio::spawn(watch_pace(shared.clone()));
    }
    let planned = plan.waves.iter().flat_map(|w| w.hosts.iter());
    if let (Some(settings), Some(checks)) = (plan.analysis.compare.clone(), compare::comparable(planned)) {
        let (told, baseline) = tokio::sync::oneshot::channel();
        let wait = compare::baseline_wait(&checks);
        tokio::spawn(compare::compare(shared.clone(), settings, checks, plan.policy.on_failure, told));
        // The fleet as the deploy found it, before the first host is touched.
        let _ = tokio::time::timeout(wait, baseline).await;
    }
    // A failed run-once step (a migration, say) stops the deploy before any host is touched.
    let mut waves_allowed = true;
    if let Some(mut once) = plan.once {
        // On resume, run-once steps that finished before do not run again.
        once.steps.drain(..plan.resume.once_steps_done.min(once.steps.len()));
        if !once.steps.is_empty() {
            waves_allowed = run_once(&shared, once).await;
        }
    }
    let wave_count = plan.waves.len();
    // Each wave's hosts, for connecting to them while the wave before runs.
    let next_hosts: Vec<Vec<crate::profile::Host>> =
        plan.waves.iter().map(|w| w.hosts.iter().map(|h| h.host.clone()).collect()).collect();
    for (position, wave) in plan.waves.into_iter().enumerate() {
        let number = wave.number;
        if !waves_allowed {
            continue;
        }
        let names: Vec<String> = wave.hosts.iter().map(|h| h.host.name.clone()).collect();
        // Hosts a resumed deploy carries over as ended do not run; a wave of nothing else is over.
        let carried_failed: Vec<String> = wave
            .hosts
            .iter()
            .map(|h| book.summary(&h.host.name))
            .filter(|s| s.state == HostState::Failed)
            .map(|s| s.host)
            .collect();
        let wave_hosts: Vec<HostPlan> =
            wave.hosts.into_iter().filter(|h| book.summary(&h.host.name).state == HostState::NotStarted).collect();
        if wave_hosts.is_empty() && !names.is_empty() {
            continue;
        }
        let started = loop {
            match control.admit_wave(Event::WaveStarted { wave: number, hosts: names.clone() }).await {
                Gate::Go => break true,
                Gate::Retries => book.run_retries(&shared, &plan.policy).await,
                Gate::Stop | Gate::Skipped => break false,
            }
        };
        if !started {
            continue;
        }
        if let Some(next) = next_hosts.get(position + 1) {
            let waiting = next.iter().filter(|h| book.summary(&h.name).state == HostState::NotStarted).cloned();
            connect_ahead(&shared, waiting.collect());
        }
        let hosts = wave_hosts.into_iter().map(|h| (book.summary(&h.host.name), h)).collect();
        let results = run_wave(&shared, number, hosts, wave.max_failures, &carried_failed, &plan.policy).await;
        let count = |s: HostState| results.iter().filter(|r| r.state == s).count();
        events.emit(Event::WaveFinished {
            wave: number,
            done: count(HostState::Done),
            failed: count(HostState::Failed),
            cancelled: count(HostState::Cancelled),
            not_started: count(HostState::NotStarted) + count(HostState::Skipped),
        });
        let outliers = shared.watch.take_outliers(number);
        if !outliers.is_empty() {
            events.emit(Event::OutputOutliers { wave: number, groups: outliers });
        }
        let failed: Vec<String> =
            results.iter().filter(|r| r.state == HostState::Failed).map(|r| r.host.clone()).collect();
        book.record(results);
        if !plan.policy.soak.is_zero() {
            soak(&shared, number, &names, &failed, wave.max_failures, &plan.policy).await;
        }
        if number < wave_count && plan.policy.gate == Promotion::Manual {
            control.await_promotion(number).await;
        }
        if number < wave_count && !plan.policy.pause_between_waves.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(plan.policy.pause_between_waves) => {}
                _ = control.abort.cancelled() => {}
            }
        }
    }
    // A pause at the end (the last wave went bad) still lets the operator retry or skip hosts
    // before the deploy is declared finished.
    while waves_allowed && control.settle().await == Gate::Retries {
        book.run_retries(&shared, &plan.policy).await;
    }

    commands_task.abort();
    shared.monitors.cancel();
    // Connections made ahead for waves that never came (an abort, a stop) are closed.
    if let Ok(mut ahead) = shared.ahead.lock() {
        for (_, ahead) in std::mem::take(&mut *ahead) {
            ahead.opening.abort();
        }
    }
    let summaries = book.finish(&control);
    let aborted_by = control.lock().aborted.as_ref().map(|(_, by)| *by);
    let outcome = if aborted_by == Some(AbortedBy::Command) {
        Outcome::Aborted
    } else if aborted_by == Some(AbortedBy::Policy) {
        // The profile's own limit stopped it: a failed deploy, not an operator's abort.
        Outcome::Failed
    } else if summaries.iter().all(|s| matches!(s.state, HostState::Done | HostState::Skipped)) {
        Outcome::Succeeded
    } else {
        Outcome::Failed
    };
    events.emit(Event::DeployFinished {
        outcome,
        duration_ms: started.elapsed().as_millis() as u64,
        hosts: summaries.clone(),
    });
    (outcome, summaries)
}

/// Every host's plan and latest summary, in plan order, so retries can pick a host up again.
struct Book {
    plans: BTreeMap<String, (usize, HostPlan)>,
    max_failures: BTreeMap<usize, usize>,
    summaries: Vec<HostSummary>,
}

impl Book {
    fn new(waves: &[crate::plan::Wave], resume: &crate::plan::Resume) -> Book {
        use crate::plan::Carried;
        let mut book = Book { plans: BTreeMap::new(), max_failures: BTreeMap::new(), summaries: Vec::new() };
        for wave in waves {
            book.max_failures.insert(wave.number, wave.max_failures);
            for host in &wave.hosts {
                let mut summary = not_started(wave.number, host);
                match resume.hosts.get(&host.host.name) {
                    None => {}
                    Some(Carried::Done) => {
                        summary.state = HostState::Done;
                        summary.steps_done = summary.steps_total;
                    }
                    Some(Carried::Skipped) => summary.state = HostState::Skipped,
                    Some(Carried::Failed { step }) => {
                        summary.state = HostState::Failed;
                        summary.stopped_at = Some(step.clone());
                    }
                    Some(Carried::From { steps_done, .. }) => {
                        summary.steps_done = (*steps_done).min(summary.steps_total)
                    }
                }
                book.summaries.push(summary);
                book.plans.insert(host.host.name.clone(), (wave.number, host.clone()));
            }
        }
        book
    }

    fn summary(&self, host: &str) -> HostSummary {
        self.summaries.iter().find(|s| s.host == host).cloned().unwrap_or_else(|| HostSummary {
            host: host.to_string(),
            wave: 0,
            state: HostState::NotStarted,
            steps_done: 0,
            steps_total: 0,
            stopped_at: None,
            last_result: None,
        })
    }

    fn record(&mut self, results: Vec<HostSummary>) {
        for result in results {
            if let Some(slot) = self.summaries.iter_mut().find(|s| s.host == result.host) {
                *slot = result;
            }
        }
    }

    /// Runs the hosts the operator asked to retry, each from the step it failed at, wave by
    /// wave, counting its wave's other failures against the wave's limit.
    async fn run_retries(&mut self, shared: &Arc<Shared>, policy: &crate::profile::RolloutPolicy) {
        let queued = shared.control.take_retries();
        let mut by_wave: BTreeMap<usize, Vec<(HostSummary, HostPlan)>> = BTreeMap::new();
        for host in queued {
            if let Some((wave, plan)) = self.plans.get(&host) {
                let mut summary = self.summary(&host);
                summary.state = HostState::NotStarted;
                summary.stopped_at = None;
                by_wave.entry(*wave).or_default().push((summary, plan.clone()));
            }
        }
        for (wave, hosts) in by_wave {
            let retried: Vec<&str> = hosts.iter().map(|(s, _)| s.host.as_str()).collect();
            let still_failed: Vec<String> = self
                .summaries
                .iter()
                .filter(|s| s.wave == wave && s.state == HostState::Failed && !retried.contains(&s.host.as_str()))
                .map(|s| s.host.clone())
                .collect();
            let limit = self.max_failures.get(&wave).copied().unwrap_or(0);
            let results = run_wave(shared, wave, hosts, limit, &still_failed, policy).await;
            self.record(results);
        }
    }

    /// The final summaries, with the operator's skips and exclusions applied.
    fn finish(mut self, control: &Control) -> Vec<HostSummary> {
        let skipped = control.skipped();
        for summary in &mut self.summaries {
            if skipped.contains(&summary.host) && summary.state != HostState::Done {
                summary.state = HostState::Skipped;
            }
        }
        self.summaries
    }
}

/// What every host task of a deploy shares.
struct Shared {
    control: Arc<Control>,
    transport: Arc<dyn Transport>,
    prober: Arc<dyn crate::health::Prober>,
    redactor: Redactor,
    env: String,
    /// Stops the health monitors when the deploy ends.
    monitors: CancellationToken,
    /// The deploy's id (its first session), naming step records on hosts; empty for none.
    deploy_id: String,
    /// Per host resumed mid-way: the step it continues with and the attempt of it that was
    /// interrupted, which it adopts.
    adopt: BTreeMap<String, (usize, u32)>,
    /// Connections of the next wave's hosts, opened while this wave runs (see [`connect_ahead`]).
    ahead: std::sync::Mutex<BTreeMap<String, Ahead>>,
    /// How many of those handshakes run at once, beside the wave's own work.
    ahead_slots: Arc<Semaphore>,
    /// Output grouped across hosts, and the pace of steps (see [`watch`]).
    watch: Watch,
}

/// A connection opened ahead of its host's wave, or why it could not be.
type Opened = Result<Box<dyn crate::transport::HostSession>, crate::transport::TransportError>;

/// A connection being opened ahead of its host's wave.
struct Ahead {
    opening: tokio::task::JoinHandle<Opened>,
    /// Cancelled when the host's wave has come: the handshake starts then without waiting for
    /// one of the [`CONNECT_AHEAD`] slots.
    wanted: tokio_util::sync::CancellationToken,
}

impl Ahead {
    /// The connection, now: a handshake still waiting for a slot starts at once.
    pub(super) fn take(self) -> tokio::task::JoinHandle<Opened> {
        self.wanted.cancel();
        self.opening
    }
}

/// Handshakes of the next wave at once while a wave runs. A handshake costs CPU at both ends,
/// and the running wave's hosts come first: a few at a time use the wave's quiet moments (a
/// restart, a health check), and whatever is not connected when its wave comes is dialled then,
/// with the wave's own parallelism. Measured in `ssh_bench` (README): 16 at once made each wave
/// wait on sshd's CPU.
pub const CONNECT_AHEAD: usize = 4;

/// Opens the connections of `hosts` (the next wave's) in the background, at most
/// [`CONNECT_AHEAD`] handshakes at a time, so that a wave starts on connections already made. A
/// host key or auth failure found this way is an event at once (`connect_failed`); the host
/// still fails only when its wave comes, like any connection failure.
fn connect_ahead(shared: &Arc<Shared>, hosts: Vec<crate::profile::Host>) {
    let Ok(mut ahead) = shared.ahead.lock() else { return };
    for host in hosts {
        if ahead.contains_key(&host.name) {
            continue;
        }
        let name = host.name.clone();
        let task = shared.clone();
        let wanted = tokio_util::sync::CancellationToken::new();
        let now = wanted.clone();
        let opening = tokio::spawn(async move {
            let stopped = || Err(crate::transport::TransportError::Unreachable("the deploy was stopped".into()));
            let slot = tokio::select! {
                slot = task.ahead_slots.clone().acquire_owned() => slot.ok(),
                _ = now.cancelled() => None,
                _ = task.control.abort.cancelled() => return stopped(),
            };
            let target = crate::transport::Target { env: task.env.clone(), host };
            let observer = ConnectEvents { shared: &task, host: &target.host.name };
            let connecting = async {
                let session = task.transport.open(&target, &observer).await?;
                // The slot is for handshakes; getting ready after one takes none.
                drop(slot);
                session.prepare().await;
                Ok(session)
            };
            tokio::select! {
                opened = connecting => opened,
                _ = task.control.abort.cancelled() => stopped(),
            }
        });
        ahead.insert(name, Ahead { opening, wanted });
    }
}

impl Shared {
    /// Where step `index` of `host` records itself, and what to do about an earlier attempt.
    /// `reattach`: the connection dropped during this very attempt and is back.
    fn step_record(
        &self,
        host: &str,
        index: usize,
        attempt: u32,
        wave: usize,
        reattach: bool,
    ) -> Option<crate::transport::StepRecord> {
        use crate::transport::{Earlier, StepRecord, Sweep};
        if self.deploy_id.is_empty() {
            return None;
        }
        // Host names are the profile's to choose: in hex they make a safe file name.
        let at = |attempt: u32| {
            format!(".wavedeck/steps/{}/{}-{index}-{attempt}", self.deploy_id, crate::sys::hex(host.as_bytes()))
        };
        // (The record is this file; with kept output, `.out` and `.err` beside it.)
        let (earlier, earlier_attempt) = match (attempt, self.adopt.get(host)) {
            _ if reattach => (Earlier::Reattach, attempt),
            (1, Some(&(first, interrupted))) if first == index && wave > 0 => (Earlier::Adopt, interrupted),
            (1, _) => (Earlier::Ignore, 1),
            _ => (Earlier::Wait, attempt - 1),
        };
        let resumed = self.adopt.contains_key(host);
        let sweep = match (earlier, index) {
            // The first step of a fresh deploy on this host: older deploys' records go.
            (Earlier::Ignore, 1) if !resumed => Some(Sweep::AllBut {
                parent: ".wavedeck/steps".into(),
                keep: format!(".wavedeck/steps/{}", self.deploy_id),
            }),
            // The previous step ended with its status in hand: its records (and kept output,
            // which can be large) have served.
            (Earlier::Ignore, index) if index > 1 => Some(Sweep::Matching(format!(
                ".wavedeck/steps/{}/{}-{}-*",
                self.deploy_id,
                crate::sys::hex(host.as_bytes()),
                index - 1
            ))),
            _ => None,
        };
        Some(StepRecord { dir: at(attempt), earlier, earlier_dir: at(earlier_attempt), sweep })
    }
}

/// Runs hosts of one wave concurrently (at most `parallel`), each continuing from its summary's
/// `steps_done`; `failed_before` are this wave's hosts that already failed and still count.
async fn run_wave(
    shared: &Arc<Shared>,
    wave: usize,
    hosts: Vec<(HostSummary, HostPlan)>,
    max_failures: usize,
    failed_before: &[String],
    policy: &crate::profile::RolloutPolicy,
) -> Vec<HostSummary> {
    let slots = Arc::new(Semaphore::new(policy.parallel.max(1)));
    let mut tasks = JoinSet::new();
    // A host task that panicked has no summary of its own but must still be accounted for.
    let mut summaries: Vec<HostSummary> = hosts
        .iter()
        .map(|(summary, _)| HostSummary {
            state: HostState::Failed,
            last_result: Some(StepResult::Error { message: "internal error in wavedeck".into() }),
            ..summary.clone()
        })
        .collect();
    for (summary, host) in hosts {
        let shared = shared.clone();
        let slots = slots.clone();
        tasks.spawn(async move {
            // The semaphore is FIFO, so hosts start in plan order.
            let Ok(_slot) = slots.acquire_owned().await else { return summary };
            let checks: Vec<PlannedStep> = host.steps.iter().filter(|s| s.monitor.is_some()).cloned().collect();
            let name = host.host.name.clone();
            let (summary, session) = run_host(&shared, wave, host, summary).await;
            // A host that is done keeps being watched, on its own connection, until the deploy ends.
            if let Some(session) = session
                && !checks.is_empty()
            {
                tokio::spawn(monitor(shared.clone(), name, checks, Arc::from(session)));
            }
            summary
        });
    }

    let mut done: BTreeMap<String, HostSummary> = BTreeMap::new();
    let mut failed_hosts = failed_before.to_vec();
    while let Some(joined) = tasks.join_next().await {
        let Ok(summary) = joined else { continue };
        if summary.state == HostState::Failed {
            failed_hosts.push(summary.host.clone());
            if failed_hosts.len() > max_failures {
                shared.control.threshold_exceeded(wave, &failed_hosts, max_failures, policy.on_failure);
            }
        }
        done.insert(summary.host.clone(), summary);
    }
    for summary in &mut summaries {
        if let Some(finished) = done.remove(&summary.host) {
            *summary = finished;
        }
    }
    summaries
}
