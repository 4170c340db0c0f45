//! After a host is done: its health checks sampled until the deploy ends, and a wave's soak.

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;

use crate::event::{Event, StepResult, Stream};
use crate::health::Streak;
use crate::plan::{PlannedAction, PlannedStep};
use crate::transport::{ExecRequest, HostSession, OutputSink};

use super::*;

/// Watches a finished host's health checks until the deploy ends, turning samples into
/// `HealthSample` events and streaks into `HealthChanged` verdicts.
pub(super) async fn monitor(
    shared: Arc<Shared>,
    host: String,
    checks: Vec<PlannedStep>,
    session: Arc<dyn HostSession>,
) {
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
                let said = Tail::new(&shared.redactor);
                let result = match &check.action {
                    PlannedAction::Probe(probe) => shared.prober.probe(probe, check.timeout).await,
                    PlannedAction::Run(command) => {
                        let request = ExecRequest { command: &command.0, timeout: check.timeout, record: None };
                        session.exec(request, &said, &shared.monitors).await
                    }
                    PlannedAction::Upload { .. } | PlannedAction::Template { .. } => {
                        StepResult::Error { message: "an upload is not a check".into() }
                    }
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
                    let mut why = None;
                    if !verdict {
                        // Why, in the host's log: the check's last words and its result.
                        let mut lines = said.take();
                        let result = shared.redactor.redact(&result.to_string()).into_owned();
                        // For banners: its last words if it said any, else its result; short.
                        let last = lines.last().filter(|l| !l.trim().is_empty()).unwrap_or(&result);
                        why = Some(crate::text::shorten_middle(last.trim(), WHY_CHARS));
                        lines.push(format!("{} failed while watched: {result}", check.name));
                        for line in lines {
                            let (host, step) = (name.clone(), check.name.clone());
                            shared.control.events.emit(Event::Output { host, step, stream: Stream::Stderr, line });
                        }
                    }
                    shared.control.health_changed(&name, &check.name, verdict, why);
                }
            }
        });
    }
    while watchers.join_next().await.is_some() {}
}

/// The last lines a monitoring command printed, kept to say why a host went unhealthy (its output
/// is not shown otherwise: a sample every few seconds per host would bury the deploy's own).
struct Tail<'a> {
    redactor: &'a Redactor,
    lines: std::sync::Mutex<TailLines>,
}

#[derive(Default)]
struct TailLines {
    kept: std::collections::VecDeque<String>,
    /// The line now arriving came in pieces (longer than a transport passes whole).
    torn: bool,
}

/// Lines of a failing check's output shown, and characters of each.
const TAIL_LINES: usize = 5;
const TAIL_CHARS: usize = 500;
/// Characters of the reason a `health_changed` event gives, for one line of a banner.
const WHY_CHARS: usize = 80;

impl Tail<'_> {
    fn new(redactor: &Redactor) -> Tail<'_> {
        Tail { redactor, lines: std::sync::Mutex::new(TailLines::default()) }
    }

    fn take(&self) -> Vec<String> {
        self.lines.lock().map(|mut lines| lines.kept.drain(..).collect()).unwrap_or_default()
    }
}

impl OutputSink for Tail<'_> {
    fn line(&self, _stream: Stream, line: String) {
        let Ok(mut lines) = self.lines.lock() else { return };
        // A piece of a torn line could hold part of a secret that masking cannot recognise: such
        // a line is only mentioned. Whole lines are masked first and shortened after.
        let kept = if std::mem::take(&mut lines.torn) {
            "(a line too long to show here)".to_string()
        } else {
            self.redactor.redact(&line).chars().take(TAIL_CHARS).collect()
        };
        if lines.kept.len() == TAIL_LINES {
            lines.kept.pop_front();
        }
        lines.kept.push_back(kept);
    }
    fn fragment(&self, _stream: Stream, _piece: String) {
        if let Ok(mut lines) = self.lines.lock() {
            lines.torn = true;
        }
    }
}

/// Output of monitoring commands is not shown: a sample every few seconds per host would bury
/// the deploy's own output. The verdicts are what matter.
pub(super) struct Discard;

impl OutputSink for Discard {
    fn line(&self, _stream: Stream, _line: String) {}
    fn fragment(&self, _stream: Stream, _piece: String) {}
}

/// Holds the finished wave for `policy.soak` while its hosts are watched; hosts that go
/// unhealthy count as failures against the wave's limit.
pub(super) async fn soak(
    shared: &Shared,
    wave: usize,
    hosts: &[String],
    failed: &[String],
    max_failures: usize,
    policy: &crate::profile::RolloutPolicy,
) {
    let control = &shared.control;
    control.start_soak(wave, hosts);
    control.events.emit(Event::SoakStarted { wave, duration_ms: policy.soak.as_millis() as u64 });
    tokio::select! {
        _ = tokio::time::sleep(policy.soak) => {}
        _ = control.abort.cancelled() => {
            control.end_soak();
            return;
        }
    }
    control.end_soak();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor() -> Redactor {
        let profile = crate::profile::Profile::parse(
            std::path::Path::new("t.toml"),
            "[service]\nname = \"s\"\n[secrets]\ntok = { env = \"TOK\" }\n[[environments]]\nname = \"e\"\n\
             hosts = [{ name = \"h\" }]\n[[steps]]\nname = \"x\"\nrun = \"true\"\n",
        )
        .unwrap();
        crate::secrets::Secrets::from_lookup(&profile, |_| Some("s3cr3t-t0ken".into())).unwrap().redactor()
    }

    #[test]
    fn a_failing_checks_last_words_are_masked_before_they_are_shortened_and_torn_lines_left_out() {
        let redactor = redactor();
        let tail = Tail::new(&redactor);
        // The secret straddles the point where the line is shortened.
        let long = format!("{}s3cr3t-t0ken and more", "x".repeat(TAIL_CHARS - 4));
        tail.line(Stream::Stdout, long);
        // A line that came in pieces: its last piece may hold the end of a secret.
        tail.fragment(Stream::Stdout, "prefix s3cr3t-".into());
        tail.line(Stream::Stdout, "t0ken rest".into());
        tail.line(Stream::Stderr, "token s3cr3t-t0ken".into());
        let kept = tail.take();
        assert!(kept.iter().all(|l| !l.contains("s3cr") && !l.contains("t0ken")), "{kept:#?}");
        assert_eq!(kept[1], "(a line too long to show here)");
        assert!(kept[2].starts_with("token ") && kept[2] != "token s3cr3t-t0ken", "{kept:#?}");
    }
}
