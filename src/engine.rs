//! The wave engine: runs a [`Plan`] through a [`Transport`], steered by [`Command`]s, reporting
//! everything as [`Event`]s.
//!
//! It knows nothing about terminals, printing or files. Consumers read the event channel; the
//! channel is unbounded so that a slow consumer (a busy screen) never stalls a deploy.
//!
//! Every "may this start?" decision and every control change goes through one lock, and the
//! corresponding event is emitted while holding it. That makes the event stream itself the
//! proof of the control semantics: after `Paused` no `HostStarted`/`StepStarted`/`WaveStarted`
//! appears until `Resumed`, and after `Aborted` none appears at all.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::event::{
    AbortedBy, Command, Event, HostState, HostSummary, Outcome, PauseCause, Stamped, StepResult, Stream, TriageAction,
    WaveOutline, threshold_text,
};
use crate::health::{self, Streak};
use crate::plan::{HostPlan, Plan, PlannedAction, PlannedStep, StepKind};
use crate::profile::FailureAction;
use crate::profile::Promotion;
use crate::secrets::Redactor;
use crate::transport::{
    ConnectObserver, ExecRequest, HostSession, OutputSink, Target, Transport, TransportError, UploadRequest,
};

/// Output bytes that may wait in the event queue for a slow consumer (a busy screen, an audit
/// disk that cannot keep up). Past it, steps' output is no longer read until the queue drains, so
/// the host's writes wait: nothing is dropped and this machine's memory stays bounded.
pub const OUTPUT_BACKLOG_BYTES: usize = 8 * 1024 * 1024;

/// The output bytes queued between the engine and its consumer.
#[derive(Default)]
struct Backlog {
    bytes: AtomicUsize,
    drained: Notify,
    /// The consumer went away: nobody will drain, so nobody may wait.
    closed: AtomicBool,
}

/// Where events go. Sending itself never blocks (control events are few and must not wait
/// behind output); output is held back at its source instead, through [`EventSink::room`]. A
/// consumer that went away is not an error for the deploy, which must still finish.
#[derive(Clone)]
pub struct EventSink {
    sender: mpsc::UnboundedSender<Stamped>,
    backlog: Arc<Backlog>,
}

/// The consumer's end of the event queue.
pub struct EventStream {
    receiver: mpsc::UnboundedReceiver<Stamped>,
    backlog: Arc<Backlog>,
}

/// A new event queue: the engine's end and the consumer's.
pub fn event_channel() -> (EventSink, EventStream) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let backlog = Arc::new(Backlog::default());
    (EventSink { sender, backlog: backlog.clone() }, EventStream { receiver, backlog })
}

fn output_bytes(event: &Event) -> usize {
    match event {
        Event::Output { line, .. } => line.len(),
        _ => 0,
    }
}

impl EventSink {
    fn emit(&self, event: Event) {
        let bytes = output_bytes(&event);
        self.backlog.bytes.fetch_add(bytes, Ordering::SeqCst);
        if self.sender.send(Stamped { at: Utc::now(), event }).is_err() {
            self.backlog.bytes.fetch_sub(bytes, Ordering::SeqCst);
        }
    }

    /// Passes on an event read from another queue, keeping its time.
    pub fn forward(&self, stamped: Stamped) {
        let bytes = output_bytes(&stamped.event);
        self.backlog.bytes.fetch_add(bytes, Ordering::SeqCst);
        if self.sender.send(stamped).is_err() {
            self.backlog.bytes.fetch_sub(bytes, Ordering::SeqCst);
        }
    }

    /// Waits while more than [`OUTPUT_BACKLOG_BYTES`] of output are queued.
    pub async fn room(&self) {
        loop {
            let drained = self.backlog.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.backlog.closed.load(Ordering::SeqCst)
                || self.backlog.bytes.load(Ordering::SeqCst) < OUTPUT_BACKLOG_BYTES
            {
                return;
            }
            drained.await;
        }
    }
}

impl EventStream {
    pub async fn recv(&mut self) -> Option<Stamped> {
        let event = self.receiver.recv().await?;
        self.taken(output_bytes(&event.event));
        Some(event)
    }

    /// Up to `limit` events at once (at least one, unless the engine is gone), appended to `buffer`.
    pub async fn recv_many(&mut self, buffer: &mut Vec<Stamped>, limit: usize) -> usize {
        let start = buffer.len();
        let received = self.receiver.recv_many(buffer, limit).await;
        self.taken(buffer[start..].iter().map(|e| output_bytes(&e.event)).sum());
        received
    }

    fn taken(&self, bytes: usize) {
        if bytes > 0 {
            self.backlog.bytes.fetch_sub(bytes, Ordering::SeqCst);
            self.backlog.drained.notify_waiters();
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.backlog.closed.store(true, Ordering::SeqCst);
        self.backlog.drained.notify_waiters();
    }
}

/// Runs the plan to its end (success, failure or abort) and returns every host's summary. The
/// last event emitted is always `DeployFinished`.
pub async fn run(
    plan: Plan,
    transport: Arc<dyn Transport>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: EventSink,
    redactor: Redactor,
) -> (Outcome, Vec<HostSummary>) {
    let started = Instant::now();
    let control = Arc::new(Control::new(events.clone()));
    events.emit(Event::DeployStarted {
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

    let mut book = Book::new(&plan.waves);
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
        redactor,
        env: plan.env.clone(),
        monitors: CancellationToken::new(),
    });
    // A failed run-once step (a migration, say) stops the deploy before any host is touched.
    let mut waves_allowed = true;
    if let Some(once) = plan.once {
        waves_allowed = run_once(&shared, once).await;
    }
    let wave_count = plan.waves.len();
    for wave in plan.waves {
        let number = wave.number;
        if !waves_allowed {
            continue;
        }
        let names: Vec<String> = wave.hosts.iter().map(|h| h.host.name.clone()).collect();
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
        let hosts = wave.hosts.into_iter().map(|h| (book.summary(&h.host.name), h)).collect();
        let results = run_wave(&shared, number, hosts, wave.max_failures, &[], &plan.policy).await;
        let count = |s: HostState| results.iter().filter(|r| r.state == s).count();
        events.emit(Event::WaveFinished {
            wave: number,
            done: count(HostState::Done),
            failed: count(HostState::Failed),
            cancelled: count(HostState::Cancelled),
            not_started: count(HostState::NotStarted) + count(HostState::Skipped),
        });
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
    fn new(waves: &[crate::plan::Wave]) -> Book {
        let mut book = Book { plans: BTreeMap::new(), max_failures: BTreeMap::new(), summaries: Vec::new() };
        for wave in waves {
            book.max_failures.insert(wave.number, wave.max_failures);
            for host in &wave.hosts {
                book.summaries.push(not_started(wave.number, host));
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
    redactor: Redactor,
    env: String,
    /// Stops the health monitors when the deploy ends.
    monitors: CancellationToken,
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

fn not_started(wave: usize, host: &HostPlan) -> HostSummary {
    HostSummary {
        host: host.host.name.clone(),
        wave,
        state: HostState::NotStarted,
        steps_done: 0,
        steps_total: host.steps.len(),
        stopped_at: None,
        last_result: None,
    }
}

/// Runs one host's pipeline; returns its summary and, when it is done, its still-open session
/// (for health monitoring, so it needs no second connection).
async fn run_host(
    shared: &Shared,
    wave: usize,
    plan: HostPlan,
    mut summary: HostSummary,
) -> (HostSummary, Option<Box<dyn HostSession>>) {
    let control = &shared.control;
    let name = plan.host.name.clone();
    match control.admit_host(wave, &name).await {
        Gate::Go => {}
        Gate::Skipped => {
            summary.state = HostState::Skipped;
            return (summary, None);
        }
        Gate::Stop | Gate::Retries => return (summary, None),
    }
    let (state, session) = match connect(shared, &plan, &mut summary).await {
        Ok(session) => (run_steps(shared, wave, &plan, session.as_ref(), &mut summary).await, Some(session)),
        Err(state) => (state, None),
    };
    summary.state = state;
    control.host_finished(&name, state);
    control.events.emit(Event::HostFinished { wave, host: name, state });
    (summary, session.filter(|_| state == HostState::Done))
}

/// Runs the plan's run-once steps on their designated host before any wave; returns whether
/// the waves may start.
async fn run_once(shared: &Shared, once: HostPlan) -> bool {
    let control = &shared.control;
    let host = once.host.name.clone();
    let steps = once.steps.iter().map(|s| s.name.clone()).collect();
    if control.admit(Event::OnceStarted { host: host.clone(), steps }, None).await == Gate::Stop {
        return false;
    }
    let mut summary = not_started(0, &once);
    let state = match connect(shared, &once, &mut summary).await {
        Ok(session) => run_steps(shared, 0, &once, session.as_ref(), &mut summary).await,
        Err(state) => state,
    };
    let ok = state == HostState::Done;
    control.events.emit(Event::OnceFinished { host, ok, stopped_at: summary.stopped_at, result: summary.last_result });
    ok
}

/// Opens the host's session; a failure is recorded in `summary` and becomes the host's state.
async fn connect(
    shared: &Shared,
    plan: &HostPlan,
    summary: &mut HostSummary,
) -> Result<Box<dyn HostSession>, HostState> {
    let control = &shared.control;
    let name = &plan.host.name;
    let target = Target { env: shared.env.clone(), host: plan.host.clone() };
    let observer = ConnectEvents { shared, host: name };
    tokio::select! {
        opened = shared.transport.open(&target, &observer) => opened.map_err(|e| {
            let message = shared.redactor.redact(&e.to_string()).into_owned();
            control.events.emit(Event::Output {
                host: name.clone(),
                step: "connect".into(),
                stream: Stream::Stderr,
                line: message.clone(),
            });
            summary.stopped_at = Some("connect".into());
            summary.last_result = Some(StepResult::Error { message });
            HostState::Failed
        }),
        _ = control.abort.cancelled() => Err(HostState::Cancelled),
    }
}

/// Runs a host's steps in order, each through the pause/abort gate, with retries; returns the
/// host's final state and fills in `summary`.
async fn run_steps(
    shared: &Shared,
    wave: usize,
    plan: &HostPlan,
    session: &dyn HostSession,
    summary: &mut HostSummary,
) -> HostState {
    let control = &shared.control;
    let name = &plan.host.name;
    let total = plan.steps.len();
    // A retried host picks up at the step it failed at.
    for (i, step) in plan.steps.iter().enumerate().skip(summary.steps_done) {
        let index = i + 1;
        let mut attempt = 1;
        loop {
            let started_event = Event::StepStarted {
                wave,
                host: name.clone(),
                step: step.name.clone(),
                kind: step.kind,
                index,
                total,
                attempt,
                command: step.shown.clone(),
            };
            if control.admit(started_event, Some((name, &step.name))).await == Gate::Stop {
                summary.stopped_at = Some(step.name.clone());
                return HostState::Cancelled;
            }
            let sink = StepOutput::new(shared, name, &step.name);
            let began = Instant::now();
            let guard = match &step.skip_if {
                Some(check) => {
                    let request = ExecRequest { command: &check.0, timeout: step.timeout };
                    session.exec(request, &Discard, &control.abort).await.succeeded()
                }
                None => false,
            };
            let result = match &step.action {
                _ if guard => StepResult::Skipped { reason: "its skip_if check succeeded: already done".into() },
                PlannedAction::Run(command) => {
                    let request = ExecRequest { command: &command.0, timeout: step.timeout };
                    session.exec(request, &sink, &control.abort).await
                }
                PlannedAction::Upload { from, to } => {
                    let request = UploadRequest { from, to, timeout: step.timeout };
                    session.upload(request, &sink, &control.abort).await
                }
                PlannedAction::Probe(probe) => tokio::select! {
                    result = health::probe(probe, step.timeout) => result,
                    _ = control.abort.cancelled() => StepResult::Cancelled,
                },
            };
            sink.finish();
            // A step may report itself as having had nothing to do.
            let result = match (result, sink.skip_reason()) {
                (StepResult::Exited { code: 0 }, Some(reason)) => StepResult::Skipped { reason },
                (result, _) => result,
            };
            // A transport's or probe's message is shown and logged like output: masked the same.
            let result = match result {
                StepResult::Error { message } => {
                    StepResult::Error { message: shared.redactor.redact(&message).into_owned() }
                }
                other => other,
            };
            let elapsed = began.elapsed();
            if step.kind == StepKind::Health {
                control.events.emit(Event::HealthSample {
                    host: name.clone(),
                    check: step.name.clone(),
                    healthy: result.succeeded(),
                    latency_ms: elapsed.as_millis() as u64,
                });
            }
            let ok = result.succeeded();
            let will_retry = !ok && attempt <= step.retries && result != StepResult::Cancelled;
            control.step_finished(
                name,
                Event::StepFinished {
                    wave,
                    host: name.clone(),
                    step: step.name.clone(),
                    index,
                    attempt,
                    result: result.clone(),
                    duration_ms: elapsed.as_millis() as u64,
                    will_retry,
                },
            );
            summary.last_result = Some(result.clone());
            if ok {
                summary.steps_done = index;
                break;
            }
            if !will_retry {
                summary.stopped_at = Some(step.name.clone());
                return if result == StepResult::Cancelled { HostState::Cancelled } else { HostState::Failed };
            }
            attempt += 1;
            tokio::select! {
                _ = tokio::time::sleep(step.retry_delay) => {}
                _ = control.abort.cancelled() => {}
            }
        }
    }
    HostState::Done
}

/// Watches a finished host's health checks until the deploy ends, turning samples into
/// `HealthSample` events and streaks into `HealthChanged` verdicts.
async fn monitor(shared: Arc<Shared>, host: String, checks: Vec<PlannedStep>, session: Arc<dyn HostSession>) {
    let mut watchers = JoinSet::new();
    for check in checks {
        let (shared, session, name) = (shared.clone(), session.clone(), host.clone());
        watchers.spawn(async move {
            let Some(thresholds) = check.monitor else { return };
            let mut streak = Streak::new(thresholds.healthy_after, thresholds.unhealthy_after);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(check.retry_delay) => {}
                    _ = shared.monitors.cancelled() => return,
                }
                let began = Instant::now();
                let result = match &check.action {
                    PlannedAction::Probe(probe) => health::probe(probe, check.timeout).await,
                    PlannedAction::Run(command) => {
                        let request = ExecRequest { command: &command.0, timeout: check.timeout };
                        session.exec(request, &Discard, &shared.monitors).await
                    }
                    PlannedAction::Upload { .. } => StepResult::Error { message: "an upload is not a check".into() },
                };
                if shared.monitors.is_cancelled() {
                    return;
                }
                let healthy = result.succeeded();
                shared.control.events.emit(Event::HealthSample {
                    host: name.clone(),
                    check: check.name.clone(),
                    healthy,
                    latency_ms: began.elapsed().as_millis() as u64,
                });
                if let Some(verdict) = streak.sample(healthy) {
                    shared.control.health_changed(&name, &check.name, verdict);
                }
            }
        });
    }
    while watchers.join_next().await.is_some() {}
}

/// Output of monitoring commands is not shown: a sample every few seconds per host would bury
/// the deploy's own output. The verdicts are what matter.
struct Discard;

impl OutputSink for Discard {
    fn line(&self, _stream: Stream, _line: String) {}
    fn fragment(&self, _stream: Stream, _piece: String) {}
}

/// Holds the finished wave for `policy.soak` while its hosts are watched; hosts that go
/// unhealthy count as failures against the wave's limit.
async fn soak(
    shared: &Shared,
    wave: usize,
    hosts: &[String],
    failed: &[String],
    max_failures: usize,
    policy: &crate::profile::RolloutPolicy,
) {
    let control = &shared.control;
    control.start_soak(hosts);
    control.events.emit(Event::SoakStarted { wave, duration_ms: policy.soak.as_millis() as u64 });
    tokio::select! {
        _ = tokio::time::sleep(policy.soak) => {}
        _ = control.abort.cancelled() => return,
    }
    let unhealthy = control.unhealthy_during_soak(hosts);
    control.events.emit(Event::SoakFinished { wave, unhealthy: unhealthy.clone() });
    if unhealthy.is_empty() {
        return;
    }
    let mut bad: Vec<String> = failed.to_vec();
    bad.extend(unhealthy.into_iter().filter(|h| !failed.contains(h)));
    if bad.len() > max_failures {
        control.threshold_exceeded(wave, &bad, max_failures, policy.on_failure);
    }
}

/// Turns a step's output into events, masking secrets first.
struct StepOutput<'a> {
    shared: &'a Shared,
    host: &'a str,
    step: &'a str,
    /// The reason from a `WAVEDECK-SKIP reason` line, while it is the last stdout line.
    skipped: Mutex<Option<String>>,
    /// The start of a line that arrives in fragments, per stream (stdout, stderr), held back only
    /// as far as needed to never let a secret out in two halves.
    pending: Mutex<[String; 2]>,
    /// What of the step's output is kept: its first and last part.
    kept: Mutex<Kept>,
}

/// Output of one step kept in full: the first part. After it only the last part is kept, and
/// what lies between is counted and left out, so a step printing without end (`yes`) cannot
/// fill the audit disk or the screen's memory.
pub const STEP_OUTPUT_HEAD_BYTES: usize = 4 * 1024 * 1024;
/// Output of one step kept from its end, once the first part is used up.
pub const STEP_OUTPUT_TAIL_BYTES: usize = 1024 * 1024;

#[derive(Default)]
struct Kept {
    head: usize,
    past_head: bool,
    tail: std::collections::VecDeque<(Stream, String)>,
    tail_bytes: usize,
    elided_lines: u64,
    elided_bytes: u64,
}

/// A line a step prints to say it had nothing to do: honoured only as the step's last line on
/// stdout, with exit 0, so a stray line in the middle of a migration's output cannot make it
/// look skipped. The line itself is shown and audited like any other.
pub const SKIP_MARKER: &str = "WAVEDECK-SKIP ";

/// A line a step prints right after it changed which release a host runs:
/// `WAVEDECK-CHANGED <from> -> <to>`, `from` being `-` when there was none. Both must be valid
/// release names; anything else is shown as output and not recorded as a change.
pub const CHANGED_MARKER: &str = "WAVEDECK-CHANGED ";

/// The (from, to) of a change marker line, if it is one with usable release names.
pub fn parse_changed(line: &str) -> Option<(Option<String>, String)> {
    let (from, to) = line.strip_prefix(CHANGED_MARKER)?.trim().split_once(" -> ")?;
    let (from, to) = (from.trim(), to.trim());
    let from = if from == "-" { None } else { Some(from) };
    let usable = crate::profile::is_safe_name(to) && from.is_none_or(crate::profile::is_safe_name);
    usable.then(|| (from.map(str::to_string), to.to_string()))
}

impl<'a> StepOutput<'a> {
    fn new(shared: &'a Shared, host: &'a str, step: &'a str) -> Self {
        Self {
            shared,
            host,
            step,
            skipped: Mutex::new(None),
            pending: Mutex::new([String::new(), String::new()]),
            kept: Mutex::new(Kept::default()),
        }
    }

    /// Emits a line while the step's first part lasts; after that keeps it as part of the last.
    fn emit(&self, stream: Stream, text: &str) {
        let line = self.shared.redactor.redact(text).into_owned();
        let Ok(mut kept) = self.kept.lock() else { return self.send(stream, line) };
        if !kept.past_head && kept.head + line.len() <= STEP_OUTPUT_HEAD_BYTES {
            kept.head += line.len();
            drop(kept);
            return self.send(stream, line);
        }
        kept.past_head = true;
        kept.tail_bytes += line.len();
        kept.tail.push_back((stream, line));
        while kept.tail_bytes > STEP_OUTPUT_TAIL_BYTES
            && let Some((_, old)) = kept.tail.pop_front()
        {
            kept.tail_bytes -= old.len();
            kept.elided_lines += 1;
            kept.elided_bytes += old.len() as u64;
        }
    }

    fn send(&self, stream: Stream, line: String) {
        self.shared.control.events.emit(Event::Output {
            host: self.host.to_string(),
            step: self.step.to_string(),
            stream,
            line,
        });
    }

    /// Emits what is still held back (a command that ended mid-line), then the count of what
    /// was left out and the last part.
    fn finish(&self) {
        let held = self.pending.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
        for (stream, text) in [(Stream::Stdout, &held[0]), (Stream::Stderr, &held[1])] {
            if !text.is_empty() {
                self.emit(stream, text);
            }
        }
        let kept = self.kept.lock().map(|mut k| std::mem::take(&mut *k)).unwrap_or_default();
        if kept.elided_lines > 0 {
            self.shared.control.events.emit(Event::OutputElided {
                host: self.host.to_string(),
                step: self.step.to_string(),
                lines: kept.elided_lines,
                bytes: kept.elided_bytes,
            });
        }
        for (stream, line) in kept.tail {
            self.send(stream, line);
        }
    }

    /// The skip reason, if the step's last stdout line was the marker.
    fn skip_reason(&self) -> Option<String> {
        self.skipped.lock().ok().and_then(|mut s| s.take())
    }
}

fn slot(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl OutputSink for StepOutput<'_> {
    fn line(&self, stream: Stream, line: String) {
        let held = self.pending.lock().map(|mut p| std::mem::take(&mut p[slot(stream)])).unwrap_or_default();
        let line = if held.is_empty() { line } else { held + &line };
        if stream == Stream::Stdout
            && let Ok(mut skipped) = self.skipped.lock()
        {
            *skipped = line.strip_prefix(SKIP_MARKER).map(|reason| self.shared.redactor.redact(reason).into_owned());
        }
        self.emit(stream, &line);
        if stream == Stream::Stdout
            && let Some((from, to)) = parse_changed(&line)
        {
            self.shared.control.events.emit(Event::HostChanged {
                host: self.host.to_string(),
                step: self.step.to_string(),
                from,
                to,
            });
        }
    }

    fn fragment(&self, stream: Stream, piece: String) {
        let ready = {
            let Ok(mut pending) = self.pending.lock() else { return };
            let held = &mut pending[slot(stream)];
            held.push_str(&piece);
            if held.len() < crate::transport::MAX_LINE_BYTES {
                return;
            }
            let cut = self.shared.redactor.safe_cut(held);
            let rest = held.split_off(cut);
            std::mem::replace(held, rest)
        };
        if !ready.is_empty() {
            self.emit(stream, &ready);
        }
    }

    fn ready(&self) -> crate::transport::BoxFuture<'_, ()> {
        Box::pin(self.shared.control.events.room())
    }

    fn progress(&self, sent: u64, total: u64) {
        self.shared.control.events.emit(Event::UploadProgress {
            host: self.host.to_string(),
            step: self.step.to_string(),
            sent,
            total,
        });
    }
}

/// Reports a host's failed connection attempts as events (retries included), so a flaky host
/// is visible while it is being retried, and a changed host key reaches the audit log.
struct ConnectEvents<'a> {
    shared: &'a Shared,
    host: &'a str,
}

impl ConnectObserver for ConnectEvents<'_> {
    fn attempt_failed(&self, attempt: u32, of: u32, error: &TransportError, retry_in: Option<Duration>) {
        self.shared.control.events.emit(Event::ConnectFailed {
            host: self.host.to_string(),
            attempt,
            of,
            kind: error.kind().to_string(),
            message: self.shared.redactor.redact(&error.to_string()).into_owned(),
            retry_in_ms: retry_in.map(|d| d.as_millis() as u64),
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Go,
    Stop,
    /// The operator excluded or skipped this host.
    Skipped,
    /// Hosts are queued for a retry: run them before going on.
    Retries,
}

fn triage_word(t: Triage) -> &'static str {
    match t {
        Triage::Pending => "waiting",
        Triage::Running => "running",
        Triage::Done => "done",
        Triage::Failed => "failed",
        Triage::Skipped => "skipped",
    }
}

/// Pause, resume and abort, and the bookkeeping that makes them exact.
struct Control {
    state: Mutex<ControlState>,
    /// Bumped on every change so that waiting hosts re-check.
    changed: watch::Sender<u64>,
    /// Fired by abort; every running command selects on it.
    abort: CancellationToken,
    events: EventSink,
}

#[derive(Default)]
struct ControlState {
    paused: Option<PauseCause>,
    aborted: Option<(String, AbortedBy)>,
    /// Host → step now running, to tell the operator what a pause is still waiting for.
    running: BTreeMap<String, String>,
    /// Where each host stands, for validating triage commands.
    hosts: BTreeMap<String, Triage>,
    /// Hosts whose health verdict is now unhealthy.
    unhealthy: std::collections::BTreeSet<String>,
    /// Hosts that went unhealthy since their wave's soak began.
    went_unhealthy: std::collections::BTreeSet<String>,
    /// The wave waiting at a manual gate.
    awaiting_promotion: Option<usize>,
    /// Hosts the operator asked to retry, in the order asked.
    retry: Vec<String>,
}

/// A host's standing as far as triage is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Triage {
    Pending,
    Running,
    Done,
    Failed,
    /// Failed and skipped, or excluded before it started: not deployed by this run.
    Skipped,
}

impl Control {
    fn new(events: EventSink) -> Self {
        Self {
            state: Mutex::new(ControlState::default()),
            changed: watch::Sender::new(0),
            abort: CancellationToken::new(),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, ControlState> {
        // A poisoned lock means a panic elsewhere while holding it; the state itself is still
        // consistent (every change is a single assignment), so keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The one way anything in the engine waits on control: `decide` looks at the state each
    /// time it changes (under the lock, so what it emits is ordered with every other control
    /// change) and ends the wait by returning `Some`. `gone` is the answer if the control itself
    /// is dropped.
    async fn wait_until<T>(&self, gone: T, mut decide: impl FnMut(&mut ControlState) -> Option<T>) -> T {
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
    /// step as in flight.
    async fn admit(&self, event: Event, running: Option<(&str, &str)>) -> Gate {
        let mut event = Some(event);
        self.wait_until(Gate::Stop, |state| {
            if state.aborted.is_some() {
                return Some(Gate::Stop);
            }
            state.paused.is_none().then(|| {
                if let Some((host, step)) = running {
                    state.running.insert(host.to_string(), step.to_string());
                }
                if let Some(event) = event.take() {
                    self.events.emit(event);
                }
                Gate::Go
            })
        })
        .await
    }

    /// Like `admit` for a host's start: also refuses a host the operator excluded, atomically
    /// with the exclusion.
    async fn admit_host(&self, wave: usize, host: &str) -> Gate {
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
    async fn admit_wave(&self, event: Event) -> Gate {
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
    async fn settle(&self) -> Gate {
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

    fn register(&self, hosts: impl Iterator<Item = String>) {
        let mut state = self.lock();
        for host in hosts {
            state.hosts.insert(host, Triage::Pending);
        }
    }

    fn host_finished(&self, host: &str, outcome: HostState) {
        let triage = match outcome {
            HostState::Done => Triage::Done,
            HostState::Failed | HostState::Cancelled => Triage::Failed,
            HostState::NotStarted => Triage::Pending,
            HostState::Skipped => Triage::Skipped,
        };
        self.lock().hosts.insert(host.to_string(), triage);
    }

    fn health_changed(&self, host: &str, check: &str, healthy: bool) {
        let mut state = self.lock();
        if healthy {
            state.unhealthy.remove(host);
        } else {
            state.unhealthy.insert(host.to_string());
            state.went_unhealthy.insert(host.to_string());
        }
        self.events.emit(Event::HealthChanged { host: host.to_string(), check: check.to_string(), healthy });
    }

    fn start_soak(&self, hosts: &[String]) {
        let mut state = self.lock();
        for host in hosts {
            state.went_unhealthy.remove(host);
        }
    }

    fn unhealthy_during_soak(&self, hosts: &[String]) -> Vec<String> {
        let state = self.lock();
        hosts.iter().filter(|h| state.went_unhealthy.contains(*h) || state.unhealthy.contains(*h)).cloned().collect()
    }

    /// Waits at a manual gate until the operator promotes the wave (or aborts).
    async fn await_promotion(&self, wave: usize) {
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

    fn promote(&self) {
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

    fn take_retries(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().retry)
    }

    fn skipped(&self) -> Vec<String> {
        self.lock().hosts.iter().filter(|(_, t)| **t == Triage::Skipped).map(|(h, _)| h.clone()).collect()
    }

    /// Retry, skip or exclude one host, if its standing allows it.
    fn triage(&self, command: Command, host: &str, action: TriageAction) {
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

    fn step_finished(&self, host: &str, event: Event) {
        let mut state = self.lock();
        state.running.remove(host);
        self.events.emit(event);
    }

    fn apply(&self, command: Command) {
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

    fn pause(&self, cause: PauseCause, command: Option<Command>) {
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

    fn abort(&self, reason: String, by: AbortedBy, command: Option<Command>) {
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

    fn threshold_exceeded(&self, wave: usize, failed_hosts: &[String], limit: usize, action: FailureAction) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn output(bytes: usize) -> Event {
        Event::Output { host: "h".into(), step: "s".into(), stream: Stream::Stdout, line: "x".repeat(bytes) }
    }

    #[tokio::test]
    async fn output_waits_for_room_while_the_consumer_is_behind() {
        let (sink, mut stream) = event_channel();
        let line = 64 * 1024;
        for _ in 0..OUTPUT_BACKLOG_BYTES / line - 1 {
            sink.emit(output(line));
        }
        assert!(sink.room().now_or_never().is_some(), "below the limit there is room");
        sink.emit(output(line));
        assert!(sink.room().now_or_never().is_none(), "at the limit a step's output must wait");
        // Control events never wait and never count.
        sink.emit(Event::Resumed);
        let waiting = tokio::spawn({
            let sink = sink.clone();
            async move { sink.room().await }
        });
        stream.recv().await.unwrap();
        waiting.await.unwrap();
        drop(stream);
        for _ in 0..4 {
            sink.emit(output(line));
        }
        assert!(sink.room().now_or_never().is_some(), "with no consumer left, nobody waits");
    }
}
