//! The engine's vocabulary: commands in, events out. A leaf: it imports nothing of the crate,
//! so every layer can speak it.
//!
//! Events are past-tense facts; commands are requests. The console, the headless printer and
//! the audit writer all consume the same [`Stamped`] events, so what is shown, printed and
//! recorded cannot drift apart. Nothing here holds a secret: commands are carried in their
//! masked form and output lines are redacted before they become events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What kind of step a pipeline entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Command,
    /// A health check: each attempt is also reported as a health sample.
    Health,
}

/// What a wave over its failure limit makes the deploy do (a profile's `on_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    Pause,
    Abort,
    /// Abort, then roll back the hosts this deploy changed.
    Rollback,
}

/// Where a command came from, recorded with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandSource {
    Keyboard,
    Mouse,
    Signal,
    /// Issued by wavedeck itself on the operator's standing orders (e.g. headless mode
    /// stopping at a failure threshold because nobody is there to resume).
    Policy,
    /// Given on the command line (`--exclude`).
    Flag,
    /// The runner's own decision when the controlling client went away (`on_detach`), or when
    /// nobody attached to a waiting deploy for `detached_timeout`.
    Detach,
}

/// What a deploy's runner does when its controlling client goes away without saying so (a
/// closed terminal, a lost SSH session, a killed console): a profile's `on_detach`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetachAction {
    /// Running steps finish; nothing new starts until someone attaches and resumes.
    Pause,
    Continue,
    Abort,
}

impl DetachAction {
    pub fn name(self) -> &'static str {
        match self {
            DetachAction::Pause => "pause",
            DetachAction::Continue => "continue",
            DetachAction::Abort => "abort",
        }
    }
}

/// A request from the operator (or a signal) to the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Start nothing new; let running steps finish.
    Pause,
    Resume,
    /// Start nothing new and cancel running steps.
    Abort {
        reason: String,
    },
    /// Run a failed host again, from the step it failed at, before the next wave.
    Retry {
        host: String,
    },
    /// Accept a failed host's failure and go on without it.
    Skip {
        host: String,
    },
    /// Leave a host that has not started out of this deploy.
    Exclude {
        host: String,
    },
    /// Let the next wave start after a manual gate.
    Promote,
}

impl Command {
    /// The command's name as the operator knows it.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Abort { .. } => "abort",
            Command::Retry { .. } => "retry",
            Command::Skip { .. } => "skip",
            Command::Exclude { .. } => "exclude",
            Command::Promote => "promote",
        }
    }
}

/// What the operator did to one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriageAction {
    Retry,
    Skip,
    Exclude,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Where a host ended up. Every host of the plan gets exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    Done,
    Failed,
    /// Started, then stopped by an abort.
    Cancelled,
    /// Never started (abort, or a wave that was never reached).
    NotStarted,
    /// Left out by the operator (a failure skipped, or excluded before it started).
    Skipped,
}

/// How one attempt at a step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum StepResult {
    Exited {
        code: i32,
    },
    Signalled {
        signal: i32,
    },
    TimedOut,
    Cancelled,
    /// Nothing needed doing (the host already had it).
    Skipped {
        reason: String,
    },
    /// The transport could not run it at all (spawn failed, connection lost).
    Error {
        message: String,
    },
}

impl StepResult {
    pub fn succeeded(&self) -> bool {
        matches!(self, StepResult::Exited { code: 0 } | StepResult::Skipped { .. })
    }

    pub fn exit_code(&self) -> Option<i32> {
        match self {
            StepResult::Exited { code } => Some(*code),
            _ => None,
        }
    }
}

impl std::fmt::Display for StepResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepResult::Exited { code } => write!(f, "exit {code}"),
            StepResult::Signalled { signal } => write!(f, "killed by signal {signal}"),
            StepResult::TimedOut => f.write_str("timed out"),
            StepResult::Cancelled => f.write_str("cancelled"),
            StepResult::Skipped { reason } => write!(f, "skipped: {reason}"),
            StepResult::Error { message } => write!(f, "error: {message}"),
        }
    }
}

/// Why the engine paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum PauseCause {
    Operator,
    FailureThreshold {
        wave: usize,
        failures: usize,
        limit: usize,
    },
    /// The wave's new hosts crossed an `[analysis]` limit against the old ones.
    Analysis {
        wave: usize,
        reason: String,
    },
}

/// Who stopped a deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortedBy {
    /// An `abort` command: from the operator, or from a signal.
    Command,
    /// The profile's `on_failure` policy, with no person involved.
    Policy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    /// Some hosts failed, or the profile's `on_failure` policy stopped the deploy.
    Failed,
    Aborted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveOutline {
    pub wave: usize,
    pub hosts: Vec<String>,
    pub max_failures: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSummary {
    pub host: String,
    pub wave: usize,
    pub state: HostState,
    pub steps_done: usize,
    pub steps_total: usize,
    /// The step it failed or was cancelled in.
    pub stopped_at: Option<String>,
    pub last_result: Option<StepResult>,
}

/// Lines that only a few of a wave's hosts printed in a step, grouped by shape (numbers, ids
/// and host names folded out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutlierGroup {
    pub step: String,
    /// The line with what varies by nature replaced: `WARN disk <n>% full on <host>`.
    pub shape: String,
    /// The first such line, masked and cut short.
    pub example: String,
    pub hosts: Vec<String>,
    /// Hosts of the wave that ran the step.
    pub of: usize,
    /// Every line of it went to stderr.
    pub stderr_only: bool,
}

/// One group of hosts' answers to a check over a window: how many hosts and samples, latency
/// of the answered ones, and the share that failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    pub hosts: usize,
    pub samples: usize,
    pub p50_ms: u64,
    pub p95_ms: u64,
    /// Failed samples per thousand.
    pub errors_per_mille: u32,
}

/// A fact emitted by the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    DeployStarted {
        service: String,
        env: String,
        release: String,
        waves: Vec<WaveOutline>,
        steps: Vec<String>,
        /// `[analysis] outlier_percent`: a line shape printed by at most this share of a wave's
        /// hosts is odd, for every consumer alike (a log written before it had the default).
        #[serde(default = "default_outlier_percent")]
        outlier_percent: u8,
    },
    /// Run-once steps (a migration, …) start on their designated host, before any wave.
    /// Their step events carry wave 0.
    OnceStarted {
        host: String,
        steps: Vec<String>,
    },
    /// Run-once steps ended; when not `ok`, no wave starts.
    OnceFinished {
        host: String,
        ok: bool,
        stopped_at: Option<String>,
        result: Option<StepResult>,
    },
    WaveStarted {
        wave: usize,
        hosts: Vec<String>,
    },
    HostStarted {
        wave: usize,
        host: String,
    },
    StepStarted {
        wave: usize,
        host: String,
        step: String,
        kind: StepKind,
        /// 1-based position in the host's pipeline, of `total`.
        index: usize,
        total: usize,
        attempt: u32,
        /// The command with secrets masked.
        command: String,
    },
    Output {
        host: String,
        step: String,
        stream: Stream,
        line: String,
    },
    /// The middle of a step's output was not kept (see the README's limits): after the first
    /// part come this many lines and bytes left out, then the last part.
    OutputElided {
        host: String,
        step: String,
        lines: u64,
        bytes: u64,
    },
    StepFinished {
        wave: usize,
        host: String,
        step: String,
        index: usize,
        attempt: u32,
        #[serde(flatten)]
        result: StepResult,
        duration_ms: u64,
        /// Another attempt follows.
        will_retry: bool,
    },
    /// A step said it changed what the host runs (`WAVEDECK-CHANGED from -> to` on stdout, as
    /// the built-in `activate` prints): the record a rollback returns hosts by. `from` is `None`
    /// when the host had no release before.
    HostChanged {
        host: String,
        step: String,
        from: Option<String>,
        to: String,
    },
    /// An upload's progress; emitted at most every 256 KiB or so, and at the end.
    UploadProgress {
        host: String,
        step: String,
        sent: u64,
        total: u64,
    },
    /// A connection attempt failed; `retry_in_ms` says whether and when another follows.
    ConnectFailed {
        host: String,
        attempt: u32,
        of: u32,
        kind: String,
        message: String,
        retry_in_ms: Option<u64>,
    },
    /// A host's health verdict changed while it was being monitored.
    HealthChanged {
        host: String,
        check: String,
        healthy: bool,
        /// Why it went unhealthy, masked: the check's last output line, or its result.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        why: Option<String>,
    },
    /// The wave's hosts must now stay healthy for `duration_ms`.
    SoakStarted {
        wave: usize,
        duration_ms: u64,
    },
    /// Soak ended; `unhealthy` hosts went unhealthy during it and count as failures.
    SoakFinished {
        wave: usize,
        unhealthy: Vec<String>,
    },
    /// A manual gate: the next wave waits for the operator to promote.
    AwaitingPromote {
        wave: usize,
    },
    Promoted {
        wave: usize,
    },
    HealthSample {
        host: String,
        check: String,
        healthy: bool,
        latency_ms: u64,
    },
    HostFinished {
        wave: usize,
        host: String,
        state: HostState,
    },
    WaveFinished {
        wave: usize,
        done: usize,
        failed: usize,
        cancelled: usize,
        not_started: usize,
    },
    /// A host's step has run far longer than the same step took on the hosts of its wave that
    /// finished it (`[analysis] slow_factor` times their median, and at least `slow_min`).
    /// `stopped`: `slow_step = "fail"` stopped it, and it fails.
    StepSlow {
        wave: usize,
        host: String,
        step: String,
        running_ms: u64,
        median_ms: u64,
        stopped: bool,
    },
    /// New against old: the hosts this deploy finished (`new`) against those it has not touched
    /// yet (`old`), by one HTTP/TCP check over `[analysis] window`. Before any host is done,
    /// `new` is empty and `old` is the whole fleet: the baseline.
    HealthCompared {
        check: String,
        new: Figures,
        old: Figures,
    },
    /// During a wave's soak, the new hosts crossed an `[analysis]` limit against the old ones;
    /// `action` (the profile's `on_failure`) follows.
    AnalysisFailed {
        wave: usize,
        check: String,
        /// The figures that crossed it: "new p95 312ms > 1.5 x old p95 140ms".
        reason: String,
        action: FailureAction,
    },
    /// At a wave's end: output only a few of its hosts printed (see [`OutlierGroup`]); only
    /// emitted when there is some.
    OutputOutliers {
        wave: usize,
        groups: Vec<OutlierGroup>,
    },
    ThresholdExceeded {
        wave: usize,
        failures: usize,
        limit: usize,
        failed_hosts: Vec<String>,
        /// What the profile says happens now.
        action: FailureAction,
    },
    Paused {
        #[serde(flatten)]
        cause: PauseCause,
        /// Steps still running, which will finish: `host: step`.
        running: Vec<String>,
    },
    Resumed,
    /// The operator retried, skipped or excluded a host.
    HostTriaged {
        host: String,
        action: TriageAction,
    },
    Aborted {
        reason: String,
        /// Who decided: a command (the operator or a signal; its `operator_command` record says
        /// which) or the profile's `on_failure` policy.
        by: AbortedBy,
    },
    /// A command that could not apply (resume while not paused, …), so the operator learns it.
    CommandIgnored {
        #[serde(flatten)]
        command: Command,
        why: String,
    },
    DeployFinished {
        outcome: Outcome,
        duration_ms: u64,
        hosts: Vec<HostSummary>,
    },
}

/// How a wave over its failure limit is described everywhere (headless, timeline, abort
/// reasons), e.g. "wave 2: 1 host failed or went unhealthy, more than the 0 allowed".
pub fn threshold_text(wave: usize, failures: usize, limit: usize) -> String {
    let hosts = if failures == 1 { "host" } else { "hosts" };
    format!("wave {wave}: {failures} {hosts} failed or went unhealthy, more than the {limit} allowed")
}

/// An event with the time the engine emitted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped {
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub event: Event,
}

/// An output group printed by at most this share of a step's hosts is an outlier (what
/// `[analysis] outlier_percent` is when a profile does not say).
pub const DEFAULT_OUTLIER_PERCENT: u8 = 10;

fn default_outlier_percent() -> u8 {
    DEFAULT_OUTLIER_PERCENT
}
