//! Events in words: the one place that says what happened, so the CI log, the console's
//! timeline and (later) any other reader tell the same story in the same terms.

use crate::event::{AbortedBy, Event, Outcome, PauseCause, StepResult, TriageAction, threshold_text};

/// How much an event should catch the eye.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Info,
    Good,
    Warn,
    Bad,
}

/// One event told as a line: about the deploy as a whole (`host` is `None`) or one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Told {
    pub host: Option<String>,
    pub tone: Tone,
    pub text: String,
}

impl Told {
    fn deploy(tone: Tone, text: String) -> Option<Told> {
        Some(Told { host: None, tone, text })
    }

    fn host(host: &str, tone: Tone, text: String) -> Option<Told> {
        Some(Told { host: Some(host.to_string()), tone, text })
    }
}

/// `12.3s`
pub fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// Outlier groups named in one line; the rest are counted.
const OUTLIERS_TOLD: usize = 3;
/// Hosts named per outlier group; the rest are counted.
const HOSTS_TOLD: usize = 5;

/// `"WARN disk 94% full" in migrate (stderr): 2 of 20 hosts, web-05, web-12`
pub fn outlier_text(group: &crate::event::OutlierGroup) -> String {
    let mut hosts = group.hosts.iter().take(HOSTS_TOLD).cloned().collect::<Vec<_>>().join(", ");
    if group.hosts.len() > HOSTS_TOLD {
        hosts.push_str(&format!(" +{}", group.hosts.len() - HOSTS_TOLD));
    }
    let stream = if group.stderr_only { " (stderr)" } else { "" };
    format!(
        "\"{}\" in {}{stream}: {} of {} hosts, {hosts}",
        crate::text::shorten_middle(&group.example, 80),
        group.step,
        group.hosts.len(),
        group.of
    )
}

/// The event as a line, or `None` for those that are data rather than news (output lines,
/// health samples, host starts, change records). `operator` is who sends this deploy its
/// commands: a pause, resume, promotion or triage is told as theirs.
pub fn describe(event: &Event, operator: &str) -> Option<Told> {
    use Tone::{Bad, Good, Info, Warn};
    match event {
        Event::DeployStarted { service, env, release, waves, .. } => {
            let hosts: usize = waves.iter().map(|w| w.hosts.len()).sum();
            Told::deploy(
                Info,
                format!("deploying {service} {release} to {env}: {hosts} hosts in {} waves", waves.len()),
            )
        }
        Event::OnceStarted { host, steps } => {
            Told::deploy(Info, format!("run-once steps on {host}: {}", steps.join(", ")))
        }
        Event::OnceFinished { host, ok: true, .. } => Told::deploy(Good, format!("run-once steps done on {host}")),
        Event::OnceFinished { host, stopped_at, result, .. } => Told::deploy(
            Bad,
            format!(
                "run-once step {} FAILED on {host} ({}): no wave will start",
                stopped_at.as_deref().unwrap_or("?"),
                result.as_ref().map_or_else(|| "no result".to_string(), |r| r.to_string())
            ),
        ),
        Event::WaveStarted { wave, hosts } => Told::deploy(Info, format!("wave {wave} started: {}", hosts.join(", "))),
        Event::StepStarted { host, step, index, total, attempt, .. } => {
            let retry = if *attempt > 1 { format!(", attempt {attempt}") } else { String::new() };
            Told::host(host, Info, format!("-> {step} ({index}/{total}{retry})"))
        }
        Event::StepFinished { host, step, result: StepResult::Skipped { reason }, .. } => {
            Told::host(host, Info, format!("-- {step} skipped: {reason}"))
        }
        Event::StepFinished { result, .. } if result.succeeded() => None,
        Event::StepFinished { host, step, result, duration_ms, will_retry, .. } => {
            let next = if *will_retry { ", will retry" } else { "" };
            Told::host(host, Warn, format!("{step} failed: {result} after {}{next}", seconds(*duration_ms)))
        }
        Event::OutputElided { host, step, lines, bytes } => Told::host(
            host,
            Warn,
            format!("… {lines} lines ({bytes} bytes) of {step}'s output left out; its last part follows"),
        ),
        Event::UploadProgress { host, sent, total, .. } if sent == total && *total > 0 => {
            Told::host(host, Info, format!("sent {total} bytes"))
        }
        Event::ConnectFailed { host, attempt, of, kind, message, retry_in_ms } => {
            let (tone, next) = match retry_in_ms {
                Some(ms) => (Warn, format!("; retrying in {}", seconds(*ms))),
                None => (Bad, String::new()),
            };
            Told::host(host, tone, format!("connection attempt {attempt}/{of} failed ({kind}): {message}{next}"))
        }
        Event::HostFinished { host, state, .. } => {
            use crate::event::HostState;
            let (tone, word) = match state {
                HostState::Done => (Info, "done"),
                HostState::Failed => (Bad, "FAILED"),
                HostState::Cancelled => (Warn, "cancelled"),
                HostState::NotStarted => (Info, "not started"),
                HostState::Skipped => (Warn, "skipped"),
            };
            Told::host(host, tone, word.to_string())
        }
        Event::WaveFinished { wave, done, failed, cancelled, not_started } => {
            let mut text = format!("wave {wave} finished: {done} done");
            for (n, word) in [(failed, "failed"), (cancelled, "cancelled"), (not_started, "not started")] {
                if *n > 0 {
                    text.push_str(&format!(", {n} {word}"));
                }
            }
            Told::deploy(if *failed + *cancelled > 0 { Warn } else { Good }, text)
        }
        Event::StepSlow { host, step, running_ms, median_ms, stopped, .. } => {
            let times = *running_ms as f64 / (*median_ms).max(1) as f64;
            let text = format!(
                "{step} SLOW: running {}, {times:.0}x its wave's median {}",
                seconds(*running_ms),
                seconds(*median_ms)
            );
            if *stopped { Told::host(host, Bad, format!("{text}: stopped")) } else { Told::host(host, Warn, text) }
        }
        Event::AnalysisFailed { wave, check, reason, .. } => {
            Told::deploy(Bad, format!("wave {wave} worse than the old release ({check}): {reason}"))
        }
        Event::OutputOutliers { wave, groups } => {
            let told: Vec<String> = groups.iter().take(OUTLIERS_TOLD).map(outlier_text).collect();
            let more = groups.len().saturating_sub(OUTLIERS_TOLD);
            let more = if more > 0 { format!("; and {more} more") } else { String::new() };
            Told::deploy(Warn, format!("wave {wave}: only some hosts printed {}{more}", told.join("; ")))
        }
        Event::ThresholdExceeded { wave, failures, limit, failed_hosts, .. } => {
            Told::deploy(Bad, format!("{}: {}", threshold_text(*wave, *failures, *limit), failed_hosts.join(", ")))
        }
        Event::Paused { cause, running } => {
            let why = match cause {
                PauseCause::Operator => format!("by {operator}"),
                PauseCause::FailureThreshold { wave, .. } => format!("by the failure threshold in wave {wave}"),
                PauseCause::Analysis { wave, .. } => format!("by the new-against-old analysis in wave {wave}"),
            };
            let still =
                if running.is_empty() { String::new() } else { format!("; still running: {}", running.join(", ")) };
            Told::deploy(Warn, format!("PAUSED {why}{still}"))
        }
        Event::Resumed => Told::deploy(Info, format!("resumed by {operator}")),
        Event::Aborted { reason, by: AbortedBy::Command } => Told::deploy(Bad, format!("ABORTED: {reason}")),
        Event::Aborted { reason, by: AbortedBy::Policy } => {
            Told::deploy(Bad, format!("STOPPED by the on_failure policy: {reason}"))
        }
        Event::CommandIgnored { command, why } => Told::deploy(Info, format!("{} ignored: {why}", command.name())),
        Event::HealthChanged { host, check, healthy: true, .. } => {
            Told::host(host, Good, format!("healthy again ({check})"))
        }
        Event::HealthChanged { host, check, healthy: false, why } => {
            let why = why.as_ref().map_or_else(String::new, |w| format!(": {w}"));
            Told::host(host, Bad, format!("UNHEALTHY ({check}{why})"))
        }
        Event::SoakStarted { wave, duration_ms } => Told::deploy(
            Info,
            format!("wave {wave} soaking for {}: its hosts must stay healthy", seconds(*duration_ms)),
        ),
        Event::SoakFinished { wave, unhealthy } if unhealthy.is_empty() => {
            // About the checks' verdicts only: an analysis verdict is told on its own.
            Told::deploy(Good, format!("wave {wave}'s hosts passed their health checks through the soak"))
        }
        Event::SoakFinished { wave, unhealthy } => {
            Told::deploy(Bad, format!("wave {wave} went unhealthy during soak: {}", unhealthy.join(", ")))
        }
        Event::AwaitingPromote { wave } => Told::deploy(Warn, format!("wave {wave} waits at a manual gate")),
        Event::Promoted { wave } => Told::deploy(Info, format!("wave {wave} promoted by {operator}")),
        Event::HostTriaged { host, action } => Told::deploy(
            Warn,
            match action {
                TriageAction::Retry => format!("retry of {host} queued by {operator}"),
                TriageAction::Skip => format!("{host} skipped by {operator}: its failure is accepted"),
                TriageAction::Exclude => format!("{host} excluded from this deploy by {operator}"),
            },
        ),
        Event::DeployFinished { outcome, .. } => match outcome {
            Outcome::Succeeded => Told::deploy(Good, "deploy SUCCEEDED".into()),
            Outcome::Failed => Told::deploy(Bad, "deploy FAILED".into()),
            Outcome::Aborted => Told::deploy(Bad, "deploy ABORTED".into()),
        },
        Event::HostStarted { .. }
        | Event::Output { .. }
        | Event::UploadProgress { .. }
        | Event::HealthSample { .. }
        | Event::HealthCompared { .. }
        | Event::HostChanged { .. } => None,
    }
}
