//! What the console knows about a running deploy, built only from engine events.
//!
//! `apply` is the single place where deploy state changes; the console never guesses (it shows
//! "PAUSED" only after the engine's `Paused`). Everything held here is bounded: scrollback per
//! host, the interleaved log, health history and the timeline.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};

use super::logs::{LogBuffer, LogLine, clean};
pub use crate::describe::Tone;
use crate::describe::describe;
use crate::event::{Event, Figures, HostState, Outcome, PauseCause, Stamped, StepResult, Stream, TriageAction};
use crate::insight::{OutputGroups, Shaper};
use crate::profile::DEFAULT_OUTLIER_PERCENT;

/// Health samples kept per host for the sparkline.
pub const HEALTH_HISTORY: usize = 120;
/// Timeline entries kept.
pub const TIMELINE_LEN: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPhase {
    Waiting,
    Running,
    Done,
    Failed,
    Cancelled,
    /// Left out by the operator (a failure skipped, or excluded before it started).
    Skipped,
    /// The deploy ended (aborted, or stopped before its wave) without starting it.
    NotStarted,
}

#[derive(Debug, Clone)]
pub struct HostView {
    pub name: String,
    pub wave: usize,
    pub phase: HostPhase,
    pub step: Option<String>,
    /// 1-based index of the current or last step, of `total_steps`.
    pub step_index: usize,
    pub total_steps: usize,
    pub attempt: u32,
    /// A step of this host is running now; false between a step's end and the next one's start
    /// (where a pause holds a host).
    pub step_running: bool,
    /// When the host last stopped running a step without being finished, for a clock that
    /// stands still while a pause holds it.
    pub idle_since: Option<DateTime<Utc>>,
    pub started: Option<DateTime<Utc>>,
    pub finished: Option<DateTime<Utc>>,
    pub last_result: Option<StepResult>,
    /// Bytes sent and total of the upload in progress.
    pub upload: Option<(u64, u64)>,
    /// The last health sample's result.
    pub healthy: Option<bool>,
    /// The monitoring verdict once the host is done (after the streak thresholds); a host that
    /// went unhealthy counts against its wave.
    pub went_unhealthy: bool,
    /// Latency in ms of recent health samples; `None` for a failed sample.
    pub health: VecDeque<Option<u64>>,
    pub logs: LogBuffer,
    /// The current (or last) step's command as the engine ran it, secrets masked.
    pub command: Option<String>,
    /// When the current (or last) step started, for its clock.
    pub step_started: Option<DateTime<Utc>>,
    /// Its current step has run far longer than on the hosts of its wave that finished it.
    pub slow: bool,
    /// Why it went unhealthy while watched, for banners: "went unhealthy during soak (healthz:
    /// 500 memory leak)".
    pub unhealthy_cause: Option<String>,
    /// The name once, shared by every line of it in the interleaved view.
    tag: std::sync::Arc<str>,
    /// Listed among the hosts holding more than their share of the scrollback budget.
    over_share: bool,
}

impl HostView {
    /// wavedeck's own line in this host's log; it may quote the host, so it is cleaned.
    fn note(&mut self, at: DateTime<Utc>, stream: Stream, text: String) {
        self.logs.push(LogLine { host: None, stream, text: clean(&text).into(), at, note: true });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WavePhase {
    Pending,
    Running,
    Finished,
}

#[derive(Debug, Clone)]
pub struct WaveView {
    pub number: usize,
    /// Indices into `DeployModel::hosts`.
    pub hosts: Vec<usize>,
    pub max_failures: usize,
    pub phase: WavePhase,
    pub started: Option<DateTime<Utc>>,
    pub finished: Option<DateTime<Utc>>,
}

/// The engine's control state, as last reported by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlView {
    Running,
    Paused {
        cause: PauseCause,
        running: Vec<String>,
    },
    Aborted {
        reason: String,
    },
    /// A manual gate: the next wave waits for the operator.
    AwaitingPromote {
        wave: usize,
    },
    Finished(Outcome),
}

/// New against old for one check, as the engine last compared them, with their p95 over time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub check: String,
    pub new: Figures,
    pub old: Figures,
    pub new_p95: VecDeque<Option<u64>>,
    pub old_p95: VecDeque<Option<u64>>,
}

#[derive(Debug, Clone)]
pub struct TimelineEntry {
    pub at: DateTime<Utc>,
    pub severity: Tone,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct DeployModel {
    pub service: String,
    pub env: String,
    pub release: String,
    pub operator: String,
    pub steps: Vec<String>,
    pub hosts: Vec<HostView>,
    index: HashMap<String, usize>,
    pub waves: Vec<WaveView>,
    pub control: ControlView,
    /// The engine said aborted but has not finished yet (running steps being killed).
    pub aborting: bool,
    /// Why it was aborted, for the final banner.
    pub abort_reason: Option<String>,
    /// The soak under way: its wave, when it began and how long it lasts.
    pub soak: Option<(usize, DateTime<Utc>, chrono::Duration)>,
    /// How long a wave's soak lasts, once one has started (for the time-left guess).
    pub soak_length: Option<chrono::Duration>,
    /// When the last wave, its soak or its gate was over: the wait for the next wave starts there.
    pub last_settled: Option<DateTime<Utc>>,
    /// The wave waiting at a manual gate, whatever else the control shows meanwhile (a pause
    /// at the gate, once resumed, is still at the gate).
    pub at_gate: Option<usize>,
    pub started: Option<DateTime<Utc>>,
    pub finished: Option<DateTime<Utc>>,
    /// Since when the control is what it is now (paused, at a gate), for a clock that shows
    /// waiting is not a hang.
    pub control_since: Option<DateTime<Utc>>,
    /// This deploy is a rollback of that release (its plan names it `rollback-of-<release>`).
    pub rollback_of: Option<String>,
    /// Every host's output interleaved, each line tagged with its host.
    pub combined: LogBuffer,
    /// Per wave, its hosts' output grouped by shape (live; the engine reports the outliers again
    /// when the wave ends).
    pub groups: std::collections::BTreeMap<usize, OutputGroups>,
    shaper: Shaper,
    /// The deploy's `[analysis] outlier_percent`, as its start said.
    outlier_percent: u8,
    /// New against old, per check (`[analysis]` compare).
    pub compared: Vec<Comparison>,
    pub timeline: VecDeque<TimelineEntry>,
    scrollback: usize,
    /// Bytes the hosts' scrollback may hold together, and what it holds now.
    host_memory: usize,
    host_used: usize,
    /// Hosts that may hold more than their share, to take lines from when over budget.
    over: VecDeque<usize>,
}

impl DeployModel {
    pub fn new(operator: &str, scrollback: usize) -> Self {
        Self::with_memory(operator, scrollback, super::logs::DEFAULT_SCROLLBACK_MEMORY)
    }

    /// A model whose scrollback holds at most `memory` bytes: three quarters shared fairly by
    /// the hosts, a quarter for the interleaved view.
    pub fn with_memory(operator: &str, scrollback: usize, memory: usize) -> Self {
        Self {
            service: String::new(),
            env: String::new(),
            release: String::new(),
            operator: operator.to_string(),
            steps: Vec::new(),
            hosts: Vec::new(),
            index: HashMap::new(),
            waves: Vec::new(),
            control: ControlView::Running,
            aborting: false,
            abort_reason: None,
            soak: None,
            soak_length: None,
            last_settled: None,
            at_gate: None,
            started: None,
            finished: None,
            control_since: None,
            rollback_of: None,
            combined: LogBuffer::new(scrollback),
            groups: std::collections::BTreeMap::new(),
            shaper: Shaper::default(),
            outlier_percent: DEFAULT_OUTLIER_PERCENT,
            compared: Vec::new(),
            timeline: VecDeque::new(),
            scrollback,
            host_memory: memory - memory / 4,
            host_used: 0,
            over: VecDeque::new(),
        }
    }

    fn wave_groups(&mut self, wave: usize) -> &mut OutputGroups {
        let shaper = &self.shaper;
        let outlier_percent = self.outlier_percent;
        self.groups.entry(wave).or_insert_with(|| OutputGroups::new(shaper.clone(), outlier_percent))
    }

    fn combined_memory(&self) -> usize {
        self.host_memory / 3
    }

    /// A host's fair share of the budget: it may hold more while others hold less.
    fn share(&self) -> usize {
        self.host_memory / self.hosts.len().max(1)
    }

    /// After host `i`'s log changed from `before` bytes: counts it, and while the hosts hold more
    /// than their budget, drops the oldest lines of hosts above their share. A quiet host keeps
    /// its lines; the chatty ones give theirs up.
    fn account(&mut self, i: usize, before: usize) {
        let now = self.hosts[i].logs.bytes();
        self.host_used = (self.host_used + now).saturating_sub(before);
        let share = self.share();
        if now > share && !self.hosts[i].over_share {
            self.hosts[i].over_share = true;
            self.over.push_back(i);
        }
        while self.host_used > self.host_memory {
            let Some(&j) = self.over.front() else {
                // Every host within its share yet over budget: only rounding; take from this one.
                let freed = self.hosts[i].logs.pop_front();
                if freed == 0 {
                    break;
                }
                self.host_used -= freed;
                continue;
            };
            if self.hosts[j].logs.bytes() <= share {
                self.hosts[j].over_share = false;
                self.over.pop_front();
                continue;
            }
            self.host_used -= self.hosts[j].logs.pop_front();
        }
    }

    /// Memory the scrollback holds now: the hosts' and the interleaved view's (text shared
    /// between them counts twice, so this is an upper bound).
    pub fn scrollback_bytes(&self) -> usize {
        self.host_used + self.combined.bytes()
    }

    fn push_combined(&mut self, line: LogLine) {
        self.combined.push(line);
        while self.combined.bytes() > self.combined_memory() && self.combined.pop_front() > 0 {}
    }

    pub fn host(&self, name: &str) -> Option<&HostView> {
        self.index.get(name).map(|&i| &self.hosts[i])
    }

    fn host_mut(&mut self, name: &str) -> Option<&mut HostView> {
        self.index.get(name).map(|&i| &mut self.hosts[i])
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.control, ControlView::Finished(_))
    }

    pub fn count(&self, phase: HostPhase) -> usize {
        self.hosts.iter().filter(|h| h.phase == phase).count()
    }

    /// Hosts of `wave` that count against its failure limit now: failed, or gone unhealthy, and
    /// not since retried or skipped by the operator.
    pub fn wave_failures(&self, wave: usize) -> usize {
        self.hosts
            .iter()
            .filter(|h| h.wave == wave)
            .filter(|h| h.phase == HostPhase::Failed || (h.phase == HostPhase::Done && h.went_unhealthy))
            .count()
    }

    /// Hosts a successful deploy did not leave healthy on the new release: skipped, or DOWN.
    pub fn exceptions(&self) -> Vec<String> {
        self.hosts
            .iter()
            .filter_map(|h| match (h.phase, h.healthy) {
                (HostPhase::Skipped, _) => Some(format!("{} skipped", h.name)),
                (_, Some(false)) => Some(format!("{} DOWN", h.name)),
                _ => None,
            })
            .collect()
    }

    /// Some hosts are on the new release and others not: the environment runs mixed releases.
    pub fn mixed_releases(&self) -> bool {
        let done = self.count(HostPhase::Done);
        done > 0 && done < self.hosts.len()
    }

    /// The hosts counted against `wave`'s limit, each with why: "stg-web-4 (healthz: exit 1)",
    /// "prod-web-03 (went unhealthy while watched)".
    pub fn wave_trouble(&self, wave: usize) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|h| h.wave == wave)
            .filter_map(|h| match (h.phase, &h.step, &h.last_result) {
                (HostPhase::Failed, Some(step), Some(result)) => Some(format!("{} ({step}: {result})", h.name)),
                (HostPhase::Failed, _, _) => Some(format!("{} (failed)", h.name)),
                (HostPhase::Done, _, _) if h.went_unhealthy => Some(format!(
                    "{} {}",
                    h.name,
                    h.unhealthy_cause.as_deref().unwrap_or("went unhealthy while watched")
                )),
                _ => None,
            })
            .collect()
    }

    /// Forgets a host's entries in a pause's "finishing" list once the engine says they ended.
    fn finished_running(&mut self, host: &str, step: Option<&str>) {
        if let ControlView::Paused { running, .. } = &mut self.control {
            let prefix = format!("{host}: ");
            running.retain(|entry| match (entry.strip_prefix(&prefix), step) {
                (Some(s), Some(step)) => s != step,
                (Some(_), None) => false,
                (None, _) => true,
            });
        }
    }

    /// Between two waves, with nothing running, no soak and no gate: the next wave's number and
    /// since when the last one (its soak, its gate) was over.
    pub fn between_waves(&self) -> Option<(usize, DateTime<Utc>)> {
        if self.soak.is_some() || self.at_gate.is_some() || self.control != ControlView::Running {
            return None;
        }
        if self.waves.iter().any(|w| w.phase == WavePhase::Running) {
            return None;
        }
        let next = self.waves.iter().find(|w| w.phase == WavePhase::Pending)?;
        Some((next.number, self.last_settled?))
    }

    /// Hosts that reached a final state, for the overall gauge.
    pub fn settled(&self) -> usize {
        self.hosts.iter().filter(|h| !matches!(h.phase, HostPhase::Waiting | HostPhase::Running)).count()
    }

    fn note(&mut self, at: DateTime<Utc>, severity: Tone, text: String) {
        if self.timeline.len() == TIMELINE_LEN {
            self.timeline.pop_front();
        }
        // Messages carry host-supplied text (errors, check output): cleaned like output lines.
        self.timeline.push_back(TimelineEntry { at, severity, text: clean(&text) });
    }

    /// Folds one engine event into the model.
    pub fn apply(&mut self, stamped: &Stamped) {
        // The host whose log this event may add to, and what its log held before.
        let touched = match &stamped.event {
            Event::Output { host, .. }
            | Event::StepStarted { host, .. }
            | Event::StepFinished { host, .. }
            | Event::OutputElided { host, .. }
            | Event::ConnectFailed { host, .. }
            | Event::HealthChanged { host, .. } => self.index.get(host).map(|&i| (i, self.hosts[i].logs.bytes())),
            _ => None,
        };
        self.fold(stamped);
        if let Some((i, before)) = touched {
            self.account(i, before);
        }
    }

    fn fold(&mut self, stamped: &Stamped) {
        let at = stamped.at;
        match &stamped.event {
            Event::DeployStarted { service, env, release, waves, steps, outlier_percent } => {
                self.outlier_percent = *outlier_percent;
                self.service = service.clone();
                self.env = env.clone();
                self.release = release.clone();
                self.rollback_of = release.strip_prefix(crate::plan::ROLLBACK_PREFIX).map(str::to_string);
                self.steps = steps.clone();
                self.started = Some(at);
                self.hosts.clear();
                self.index.clear();
                self.waves.clear();
                self.over.clear();
                self.host_used = 0;
                self.groups.clear();
                self.compared.clear();
                self.shaper = Shaper::new(waves.iter().flat_map(|w| w.hosts.iter().map(String::as_str)));
                for wave in waves {
                    let mut members = Vec::new();
                    for name in &wave.hosts {
                        members.push(self.hosts.len());
                        self.index.insert(name.clone(), self.hosts.len());
                        self.hosts.push(HostView {
                            name: name.clone(),
                            wave: wave.wave,
                            phase: HostPhase::Waiting,
                            step: None,
                            step_index: 0,
                            total_steps: steps.len(),
                            attempt: 0,
                            step_running: false,
                            idle_since: None,
                            started: None,
                            finished: None,
                            last_result: None,
                            upload: None,
                            healthy: None,
                            went_unhealthy: false,
                            health: VecDeque::new(),
                            logs: LogBuffer::new(self.scrollback),
                            command: None,
                            step_started: None,
                            unhealthy_cause: None,
                            tag: name.as_str().into(),
                            over_share: false,
                            slow: false,
                        });
                    }
                    self.waves.push(WaveView {
                        number: wave.wave,
                        hosts: members,
                        max_failures: wave.max_failures,
                        phase: WavePhase::Pending,
                        started: None,
                        finished: None,
                    });
                }
            }
            Event::OnceFinished { host, .. } => {
                // The host's own wave has not started: it waits like the others.
                if let Some(h) = self.host_mut(host) {
                    h.phase = HostPhase::Waiting;
                    h.step = None;
                }
            }
            Event::WaveStarted { wave, .. } => {
                if let Some(w) = self.waves.iter_mut().find(|w| w.number == *wave) {
                    w.phase = WavePhase::Running;
                    w.started = Some(at);
                }
            }
            Event::HostStarted { host, .. } => {
                if let Some(h) = self.host_mut(host) {
                    h.phase = HostPhase::Running;
                    h.started = Some(at);
                }
            }
            Event::StepStarted { host, step, index, total, attempt, command, .. } => {
                if let Some(wave) = self.host(host).map(|h| h.wave) {
                    self.wave_groups(wave).step_started(host, step);
                }
                if let Some(h) = self.host_mut(host) {
                    h.phase = HostPhase::Running;
                    h.step = Some(step.clone());
                    h.step_index = *index;
                    h.total_steps = *total;
                    h.attempt = *attempt;
                    h.step_running = true;
                    h.idle_since = None;
                    h.command = Some(command.clone());
                    h.step_started = Some(at);
                    h.slow = false;
                    // Each step and attempt opens with a rule, so the log reads as steps.
                    let again = if *attempt > 1 { format!(" · attempt {attempt}") } else { String::new() };
                    h.note(at, Stream::Stdout, format!("── {index}/{total} {step}{again} ──"));
                }
            }
            Event::Output { host, step, stream, line } => {
                if let Some(wave) = self.host(host).map(|h| h.wave) {
                    self.wave_groups(wave).line(host, step, *stream, line);
                }
                let text: std::sync::Arc<str> = clean(line).into();
                let line = LogLine { host: None, stream: *stream, text, at, note: false };
                if let Some(h) = self.host_mut(host) {
                    let tagged = LogLine { host: Some(h.tag.clone()), ..line.clone() };
                    h.logs.push(line);
                    self.push_combined(tagged);
                }
            }
            Event::StepFinished { host, step, result, duration_ms, will_retry, .. } => {
                if let Some(h) = self.host_mut(host) {
                    h.last_result = Some(result.clone());
                    h.step_running = false;
                    h.idle_since = Some(at);
                    let then = if *will_retry { " · retrying" } else { "" };
                    let stream = if result.succeeded() { Stream::Stdout } else { Stream::Stderr };
                    let took = crate::describe::seconds(*duration_ms);
                    let how = match result {
                        StepResult::Skipped { .. } => result.to_string(),
                        _ if result.succeeded() => "ok".to_string(),
                        _ => format!("failed: {result}"),
                    };
                    h.note(at, stream, format!("── {step} {how} in {took}{then}"));
                }
                self.finished_running(host, Some(step));
            }
            Event::HostChanged { .. } => {}
            Event::HealthCompared { check, new, old } => {
                let at = match self.compared.iter().position(|c| &c.check == check) {
                    Some(at) => at,
                    None => {
                        self.compared.push(Comparison {
                            check: check.clone(),
                            new: Figures::default(),
                            old: Figures::default(),
                            new_p95: VecDeque::new(),
                            old_p95: VecDeque::new(),
                        });
                        self.compared.len() - 1
                    }
                };
                let c = &mut self.compared[at];
                c.new = new.clone();
                c.old = old.clone();
                for (series, figures) in [(&mut c.new_p95, new), (&mut c.old_p95, old)] {
                    // A group without answers in the window has no point to draw.
                    if figures.samples > 0 {
                        if series.len() == HEALTH_HISTORY {
                            series.pop_front();
                        }
                        series.push_back(Some(figures.p95_ms));
                    }
                }
            }
            Event::AnalysisFailed { .. } => {}
            Event::StepSlow { host, .. } => {
                if let Some(h) = self.host_mut(host) {
                    h.slow = true;
                }
            }
            Event::OutputElided { host, step, lines, bytes } => {
                let text: std::sync::Arc<str> =
                    format!("… {lines} lines ({bytes} bytes) of {step}'s output left out; its last part follows")
                        .into();
                let line = LogLine { host: None, stream: Stream::Stderr, text, at, note: true };
                if let Some(h) = self.host_mut(host) {
                    let tagged = LogLine { host: Some(h.tag.clone()), ..line.clone() };
                    h.logs.push(line);
                    self.push_combined(tagged);
                }
            }
            Event::UploadProgress { host, sent, total, .. } => {
                if let Some(h) = self.host_mut(host) {
                    h.upload = (sent < total).then_some((*sent, *total));
                }
            }
            Event::ConnectFailed { host, attempt, of, kind, message, .. } => {
                let text = format!("connection attempt {attempt}/{of} failed ({kind}): {message}");
                if let Some(h) = self.host_mut(host) {
                    h.note(at, Stream::Stderr, text);
                }
            }
            Event::HealthSample { host, healthy, latency_ms, .. } => {
                if let Some(h) = self.host_mut(host) {
                    h.healthy = Some(*healthy);
                    if h.health.len() == HEALTH_HISTORY {
                        h.health.pop_front();
                    }
                    h.health.push_back(healthy.then_some(*latency_ms));
                }
            }
            Event::HostFinished { host, state, .. } => {
                let phase = match state {
                    HostState::Done => HostPhase::Done,
                    HostState::Failed => HostPhase::Failed,
                    HostState::Cancelled => HostPhase::Cancelled,
                    HostState::NotStarted => HostPhase::NotStarted,
                    HostState::Skipped => HostPhase::Skipped,
                };
                self.finished_running(host, None);
                if let Some(h) = self.host_mut(host) {
                    h.phase = phase;
                    h.finished = Some(at);
                    h.step_running = false;
                }
            }
            Event::WaveFinished { wave, .. } => {
                if let Some(w) = self.waves.iter_mut().find(|w| w.number == *wave) {
                    w.phase = WavePhase::Finished;
                    w.finished = Some(at);
                }
                self.last_settled = Some(at);
            }
            Event::Paused { cause, running } => {
                self.control = ControlView::Paused { cause: cause.clone(), running: running.clone() };
                self.control_since = Some(at);
            }
            Event::HostTriaged { host, action } => {
                let phase = match action {
                    TriageAction::Retry => HostPhase::Waiting,
                    TriageAction::Skip | TriageAction::Exclude => HostPhase::Skipped,
                };
                if let Some(h) = self.host_mut(host) {
                    h.phase = phase;
                }
            }
            Event::HealthChanged { host, check, healthy, why } => {
                let soaking = self.soak.map(|(wave, ..)| wave);
                if let Some(h) = self.host_mut(host) {
                    h.healthy = Some(*healthy);
                    h.went_unhealthy = !*healthy;
                    if !*healthy {
                        let when = if soaking == Some(h.wave) { "during soak" } else { "while watched" };
                        let why = why.as_ref().map_or_else(String::new, |w| format!(": {w}"));
                        h.unhealthy_cause = Some(format!("went unhealthy {when} ({check}{why})"));
                    }
                    // The host's log is where the operator looks: say it there too.
                    let (stream, text) = if *healthy {
                        (Stream::Stdout, format!("health check {check}: healthy again"))
                    } else {
                        (Stream::Stderr, format!("health check {check}: UNHEALTHY (failing while monitored)"))
                    };
                    h.note(at, stream, text);
                }
            }
            Event::AwaitingPromote { wave } => {
                self.at_gate = Some(*wave);
                self.control_since = Some(at);
                if !matches!(self.control, ControlView::Paused { .. } | ControlView::Aborted { .. }) {
                    self.control = ControlView::AwaitingPromote { wave: *wave };
                }
            }
            Event::Promoted { .. } => {
                self.at_gate = None;
                self.last_settled = Some(at);
                if matches!(self.control, ControlView::AwaitingPromote { .. }) {
                    self.control = ControlView::Running;
                }
            }
            // Resumed at a manual gate, the deploy still waits there for a promotion.
            Event::Resumed => {
                self.control_since = Some(at);
                self.control = match self.at_gate {
                    Some(wave) => ControlView::AwaitingPromote { wave },
                    None => ControlView::Running,
                }
            }
            Event::Aborted { reason, .. } => {
                self.control = ControlView::Aborted { reason: reason.clone() };
                self.aborting = true;
                self.abort_reason = Some(reason.clone());
            }
            Event::DeployFinished { outcome, hosts, .. } => {
                // Hosts the engine never finished (never started, or stopped before starting) are
                // settled here, so nothing is left looking like it is still in progress.
                for h in &mut self.hosts {
                    if matches!(h.phase, HostPhase::Waiting | HostPhase::Running) {
                        let state = hosts.iter().find(|s| s.host == h.name).map(|s| s.state);
                        h.phase = match state {
                            Some(HostState::Done) => HostPhase::Done,
                            Some(HostState::Failed) => HostPhase::Failed,
                            Some(HostState::Cancelled) => HostPhase::Cancelled,
                            Some(HostState::Skipped) => HostPhase::Skipped,
                            Some(HostState::NotStarted) | None => HostPhase::NotStarted,
                        };
                    }
                }
                self.control = ControlView::Finished(*outcome);
                self.aborting = false;
                self.finished = Some(at);
            }
            Event::SoakStarted { wave, duration_ms } => {
                let length = chrono::Duration::milliseconds(*duration_ms as i64);
                self.soak = Some((*wave, at, length));
                self.soak_length = Some(length);
            }
            Event::SoakFinished { .. } => {
                self.soak = None;
                self.last_settled = Some(at);
            }
            Event::OnceStarted { .. }
            | Event::ThresholdExceeded { .. }
            | Event::CommandIgnored { .. }
            | Event::OutputOutliers { .. } => {}
        }
        // The timeline tells the deploy's story as every front end tells it, plus each host's
        // trouble.
        if let Some(told) = describe(&stamped.event, &self.operator)
            && (told.host.is_none() || matches!(told.tone, Tone::Warn | Tone::Bad))
        {
            let text = match told.host {
                Some(host) => format!("{host}: {}", told.text),
                None => told.text,
            };
            self.note(at, told.tone, text);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_success_with_skipped_or_down_hosts_has_exceptions_and_a_partial_deploy_mixed_releases() {
        let mut m = DeployModel::new("ann", 100);
        m.apply(&stamp(
            0,
            Event::DeployStarted {
                outlier_percent: crate::profile::DEFAULT_OUTLIER_PERCENT,
                service: "s".into(),
                env: "prod".into(),
                release: "2".into(),
                waves: vec![crate::event::WaveOutline {
                    wave: 1,
                    hosts: vec!["a".into(), "b".into(), "c".into()],
                    max_failures: 0,
                }],
                steps: vec!["x".into()],
            },
        ));
        assert!(!m.mixed_releases(), "nothing done yet");
        m.apply(&stamp(1, Event::HostFinished { wave: 1, host: "a".into(), state: HostState::Done }));
        assert!(m.mixed_releases(), "a runs the new release, b and c the old");
        m.apply(&stamp(2, Event::HostFinished { wave: 1, host: "b".into(), state: HostState::Skipped }));
        m.apply(&stamp(3, Event::HealthSample { host: "c".into(), check: "h".into(), healthy: false, latency_ms: 1 }));
        assert_eq!(m.exceptions(), ["b skipped", "c DOWN"]);
    }
    use crate::event::{Stream, WaveOutline};

    pub(crate) fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    pub(crate) fn stamp(secs: i64, event: Event) -> Stamped {
        Stamped { at: at(secs), event }
    }

    pub(crate) fn started() -> Stamped {
        stamp(
            0,
            Event::DeployStarted {
                outlier_percent: crate::profile::DEFAULT_OUTLIER_PERCENT,
                service: "shop".into(),
                env: "staging".into(),
                release: "2.4.1".into(),
                waves: vec![
                    WaveOutline { wave: 1, hosts: vec!["a".into()], max_failures: 0 },
                    WaveOutline { wave: 2, hosts: vec!["b".into(), "c".into()], max_failures: 0 },
                ],
                steps: vec!["stage".into(), "health".into()],
            },
        )
    }

    #[test]
    fn the_scrollback_budget_holds_under_500_chatty_hosts_and_a_quiet_one_keeps_its_lines() {
        let memory = 8 << 20;
        let mut m = DeployModel::with_memory("ann", 1_000_000, memory);
        let hosts: Vec<String> = (0..501).map(|i| format!("h{i:03}")).collect();
        m.apply(&stamp(
            0,
            Event::DeployStarted {
                outlier_percent: crate::profile::DEFAULT_OUTLIER_PERCENT,
                service: "s".into(),
                env: "e".into(),
                release: "1".into(),
                waves: vec![WaveOutline { wave: 1, hosts: hosts.clone(), max_failures: 0 }],
                steps: vec!["run".into()],
            },
        ));
        let line = |host: &str, i: usize| {
            stamp(
                1,
                Event::Output {
                    host: host.into(),
                    step: "run".into(),
                    stream: Stream::Stdout,
                    line: format!("{i:>6} {}", "x".repeat(100)),
                },
            )
        };
        // The quiet host says a little, then 500 hosts say 40 MB.
        for i in 0..10 {
            m.apply(&line("h500", i));
        }
        for i in 0..240_000 {
            m.apply(&line(&hosts[i % 500], i));
            assert!(m.scrollback_bytes() <= memory, "over budget after {i} lines: {}", m.scrollback_bytes());
        }
        assert_eq!(m.host("h500").unwrap().logs.len(), 10, "the quiet host lost nothing");
        let chatty = m.host("h007").unwrap();
        assert!(chatty.logs.dropped_output() > 0 && chatty.logs.len() > 10, "chatty hosts keep their share");
        assert!(m.host_used > memory / 2, "the budget is used, not left idle: {}", m.host_used);
    }

    #[test]
    fn the_console_marks_odd_output_by_the_profiles_outlier_percent_as_the_engine_does() {
        let odd_at = |outlier_percent: u8| {
            let mut m = DeployModel::new("ann", 100);
            let hosts: Vec<String> = (1..=5).map(|i| format!("h{i}")).collect();
            m.apply(&stamp(
                0,
                Event::DeployStarted {
                    outlier_percent,
                    service: "s".into(),
                    env: "e".into(),
                    release: "1".into(),
                    waves: vec![WaveOutline { wave: 1, hosts: hosts.clone(), max_failures: 0 }],
                    steps: vec!["x".into()],
                },
            ));
            for (i, host) in hosts.iter().enumerate() {
                m.apply(&step_started(1, host, "x", 1));
                let line = if i < 2 { "cache miss" } else { "ready" };
                m.apply(&stamp(
                    2,
                    Event::Output { host: host.clone(), step: "x".into(), stream: Stream::Stdout, line: line.into() },
                ));
            }
            m.groups[&1].outliers().into_iter().map(|g| g.shape).collect::<Vec<_>>()
        };
        // Two hosts of five: odd where the profile allows 40 %, not at the default 10 %.
        assert_eq!(odd_at(40), ["cache miss"]);
        assert!(odd_at(crate::profile::DEFAULT_OUTLIER_PERCENT).is_empty());
    }

    #[test]
    fn deploy_started_lays_out_waves_and_hosts() {
        let mut m = DeployModel::new("ann", 100);
        m.apply(&started());
        assert_eq!(m.hosts.len(), 3);
        assert_eq!(m.waves[1].hosts, [1, 2]);
        assert_eq!(m.host("c").unwrap().wave, 2);
        assert!(m.hosts.iter().all(|h| h.phase == HostPhase::Waiting));
    }

    #[test]
    fn host_progress_follows_step_events() {
        let mut m = DeployModel::new("ann", 100);
        m.apply(&started());
        m.apply(&stamp(1, Event::HostStarted { wave: 1, host: "a".into() }));
        m.apply(&stamp(
            2,
            Event::StepStarted {
                wave: 1,
                host: "a".into(),
                step: "health".into(),
                kind: crate::plan::StepKind::Health,
                index: 2,
                total: 2,
                attempt: 1,
                command: "x".into(),
            },
        ));
        m.apply(&stamp(
            3,
            Event::Output {
                host: "a".into(),
                step: "health".into(),
                stream: Stream::Stderr,
                line: "\u{1b}[31m503\u{1b}[0m".into(),
            },
        ));
        m.apply(&stamp(
            4,
            Event::HealthSample { host: "a".into(), check: "health".into(), healthy: false, latency_ms: 9 },
        ));
        let a = m.host("a").unwrap();
        assert_eq!((a.phase, a.step.as_deref(), a.step_index), (HostPhase::Running, Some("health"), 2));
        assert_eq!(&*a.logs.get(0).unwrap().text, "── 2/2 health ──", "a step opens with a rule");
        assert_eq!(&*a.logs.get(1).unwrap().text, "503");
        assert_eq!(m.combined.get(0).unwrap().host.as_deref(), Some("a"));
        assert_eq!((a.healthy, a.health.back()), (Some(false), Some(&None)));
    }

    #[test]
    fn paused_only_when_the_engine_says_so_and_timeline_records_who() {
        let mut m = DeployModel::new("ann", 100);
        m.apply(&started());
        assert_eq!(m.control, ControlView::Running);
        m.apply(&stamp(5, Event::Paused { cause: PauseCause::Operator, running: vec!["a: stage".into()] }));
        assert!(matches!(&m.control, ControlView::Paused { running, .. } if running == &["a: stage"]));
        assert_eq!(m.timeline.back().unwrap().text, "PAUSED by ann; still running: a: stage");
        m.apply(&stamp(6, Event::Resumed));
        assert_eq!(m.control, ControlView::Running);
    }

    #[test]
    fn failures_and_the_end_are_on_the_timeline() {
        let mut m = DeployModel::new("ann", 100);
        m.apply(&started());
        m.apply(&stamp(1, Event::HostStarted { wave: 1, host: "a".into() }));
        m.apply(&stamp(
            2,
            Event::StepFinished {
                wave: 1,
                host: "a".into(),
                step: "stage".into(),
                index: 1,
                attempt: 1,
                result: StepResult::Exited { code: 2 },
                duration_ms: 5,
                will_retry: false,
            },
        ));
        m.apply(&stamp(3, Event::HostFinished { wave: 1, host: "a".into(), state: HostState::Failed }));
        m.apply(&stamp(4, Event::Aborted { reason: "bad".into(), by: crate::event::AbortedBy::Command }));
        assert!(m.aborting);
        m.apply(&stamp(5, Event::DeployFinished { outcome: Outcome::Aborted, duration_ms: 5000, hosts: vec![] }));
        assert_eq!(m.host("a").unwrap().phase, HostPhase::Failed);
        assert_eq!(m.host("b").unwrap().phase, HostPhase::NotStarted);
        assert!(!m.aborting);
        let texts: Vec<&str> = m.timeline.iter().map(|t| t.text.as_str()).collect();
        assert!(texts.contains(&"a: stage failed: exit 2 after 0.0s") && texts.contains(&"a: FAILED"), "{texts:?}");
        assert_eq!(texts.last(), Some(&"deploy ABORTED"));
    }

    fn step_started(secs: i64, host: &str, step: &str, index: usize) -> Stamped {
        stamp(
            secs,
            Event::StepStarted {
                wave: 1,
                host: host.into(),
                step: step.into(),
                kind: crate::plan::StepKind::Command,
                index,
                total: 2,
                attempt: 1,
                command: "x".into(),
            },
        )
    }

    fn step_finished(secs: i64, host: &str, step: &str, code: i32) -> Stamped {
        stamp(
            secs,
            Event::StepFinished {
                wave: 1,
                host: host.into(),
                step: step.into(),
                index: 1,
                attempt: 1,
                result: StepResult::Exited { code },
                duration_ms: 900,
                will_retry: false,
            },
        )
    }

    #[test]
    fn while_paused_every_event_still_applies_and_a_finished_step_leaves_the_finishing_list() {
        let mut m = DeployModel::new("ann", 100);
        m.apply(&started());
        m.apply(&stamp(1, Event::HostStarted { wave: 1, host: "a".into() }));
        m.apply(&step_started(1, "a", "stage", 1));
        m.apply(&stamp(2, Event::Paused { cause: PauseCause::Operator, running: vec!["a: stage".into()] }));
        let a = m.host("a").unwrap();
        assert!(a.step_running && a.idle_since.is_none());
        m.apply(&step_finished(3, "a", "stage", 0));
        assert!(matches!(&m.control, ControlView::Paused { running, .. } if running.is_empty()), "{:?}", m.control);
        let a = m.host("a").unwrap();
        assert!(!a.step_running, "nothing of a runs while the pause holds it");
        assert_eq!((a.idle_since, a.last_result.clone()), (Some(at(3)), Some(StepResult::Exited { code: 0 })));
    }

    #[test]
    fn a_threshold_pause_counts_the_waves_failures_as_they_are_now() {
        let mut m = DeployModel::new("ann", 100);
        m.apply(&started());
        for (i, host) in ["b", "c"].into_iter().enumerate() {
            m.apply(&stamp(1, Event::HostStarted { wave: 2, host: host.into() }));
            m.apply(&step_finished(2, host, "stage", 1));
            m.apply(&stamp(3 + i as i64, Event::HostFinished { wave: 2, host: host.into(), state: HostState::Failed }));
            if i == 0 {
                let cause = PauseCause::FailureThreshold { wave: 2, failures: 1, limit: 0 };
                m.apply(&stamp(3, Event::Paused { cause, running: vec!["c: stage".into()] }));
            }
        }
        // The pause said 1; the engine's facts since say 2, and the "finishing" list is empty.
        assert_eq!(m.wave_failures(2), 2);
        assert!(matches!(&m.control, ControlView::Paused { running, .. } if running.is_empty()));
        m.apply(&stamp(6, Event::HostTriaged { host: "b".into(), action: TriageAction::Retry }));
        m.apply(&stamp(7, Event::HostTriaged { host: "c".into(), action: TriageAction::Skip }));
        assert_eq!(m.wave_failures(2), 0, "retried and skipped hosts no longer count");
    }

    #[test]
    fn a_pause_at_a_manual_gate_resumes_to_the_gate_not_to_running() {
        let mut m = DeployModel::new("ann", 100);
        m.apply(&started());
        m.apply(&stamp(1, Event::AwaitingPromote { wave: 1 }));
        m.apply(&stamp(2, Event::Paused { cause: PauseCause::Operator, running: vec![] }));
        m.apply(&stamp(3, Event::Resumed));
        assert_eq!(m.control, ControlView::AwaitingPromote { wave: 1 });
        m.apply(&stamp(4, Event::Promoted { wave: 1 }));
        assert_eq!(m.control, ControlView::Running);
    }

    #[test]
    fn host_text_in_messages_reaches_the_timeline_and_log_cleaned() {
        let mut m = DeployModel::new("ann", 100);
        m.apply(&started());
        let failed = Event::ConnectFailed {
            host: "a".into(),
            attempt: 1,
            of: 1,
            kind: "unreachable".into(),
            message: "banner \u{1b}[2J\u{1b}]0;pwned\u{7}gone".into(),
            retry_in_ms: None,
        };
        m.apply(&stamp(1, failed));
        let note = &m.timeline.back().unwrap().text;
        assert!(!note.contains('\u{1b}') && note.ends_with("banner gone"), "{note}");
        let logged = &m.host("a").unwrap().logs.get(0).unwrap().text;
        assert!(!logged.contains('\u{1b}'), "{logged}");
    }
}
