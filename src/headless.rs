//! Headless mode: the engine's events as plain lines for CI logs and pipes.
//!
//! The printer is a pure function from an event to the lines it prints, so it is tested
//! without a terminal and is easy to keep in step with the console.

use std::fmt::Write as _;
use std::io::Write as _;

use tokio::signal::unix::{Signal, SignalKind, signal};

use std::time::Duration;

use crate::describe::{Tone, describe, seconds};
use crate::event::{
    Command, CommandSource, Event, HostState, HostSummary, Outcome, PauseCause, StepResult, threshold_text,
};
use crate::exit;
use crate::profile::FailureAction;
use crate::remote::Role;
use crate::runner::{self, Client, Refused, Spec};

/// Renders one event as zero or more lines (without trailing newline): host output as
/// `[host] line`, the final table, and everything else as [`describe`] tells it (`[host] …` for
/// a host, `== …` for the deploy).
pub fn render(event: &Event, operator: &str) -> Option<String> {
    match event {
        Event::Output { host, line, .. } => Some(format!("[{host}] {line}")),
        Event::DeployFinished { outcome, duration_ms, hosts } => Some(summary_table(*outcome, *duration_ms, hosts)),
        other => describe(other, operator).map(|told| match (told.host, told.tone) {
            // `!!` marks a host's trouble for whoever greps a CI log.
            (Some(host), Tone::Warn | Tone::Bad) => format!("[{host}] !! {}", told.text),
            (Some(host), _) => format!("[{host}] {}", told.text),
            (None, _) => format!("== {}", told.text),
        }),
    }
}

/// The final table: one row per host, then the verdict.
pub fn summary_table(outcome: Outcome, duration_ms: u64, hosts: &[HostSummary]) -> String {
    let width = hosts.iter().map(|h| h.host.len()).max().unwrap_or(4).max(4);
    let mut out = format!("\n{:<width$}  WAVE  STATE        STEPS  LAST\n", "HOST");
    for h in hosts {
        let last = match (&h.last_result, &h.stopped_at) {
            (Some(result), Some(step)) => format!("{step}: {result}"),
            (Some(StepResult::Exited { code: 0 }), None) => "ok".into(),
            (Some(result), None) => result.to_string(),
            (None, _) => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:>4}  {:<11}  {:>2}/{:<2}  {last}",
            h.host,
            h.wave,
            state_word(h.state),
            h.steps_done,
            h.steps_total
        );
    }
    let count = |s: HostState| hosts.iter().filter(|h| h.state == s).count();
    let _ = write!(
        out,
        "\n{}: {} done, {} failed, {} cancelled, {} not started in {}",
        match outcome {
            Outcome::Succeeded => "SUCCEEDED",
            Outcome::Failed => "FAILED",
            Outcome::Aborted => "ABORTED",
        },
        count(HostState::Done),
        count(HostState::Failed),
        count(HostState::Cancelled),
        count(HostState::NotStarted),
        seconds(duration_ms)
    );
    out
}

pub fn state_word(state: HostState) -> &'static str {
    match state {
        HostState::Done => "done",
        HostState::Failed => "FAILED",
        HostState::Cancelled => "cancelled",
        HostState::NotStarted => "not started",
        HostState::Skipped => "skipped",
    }
}

/// How a headless deploy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// The process exit code.
    pub code: i32,
    /// The profile's `on_failure = "rollback"` fired: the caller should roll back now.
    pub rollback: bool,
}

/// What headless mode does where an operator would decide.
#[derive(Debug, Clone, Default)]
pub struct Orders {
    /// Hosts to leave out (`--exclude`).
    pub exclude: Vec<String>,
    /// Promote waves at manual gates (`--promote`); without it a manual gate fails the deploy.
    pub promote: bool,
    /// `--on-threshold wait=DURATION`: at a failure-threshold pause, hand control to whoever
    /// attaches and wait this long for them to decide, instead of aborting.
    pub wait_on_threshold: Option<Duration>,
    /// `--output json`: every event as a JSON line on stdout, as the audit log has it.
    pub json: bool,
}

/// Starts a runner for `spec` and follows it to the end, printing as it goes.
///
/// SIGINT, SIGTERM and SIGHUP abort the deploy (audited as operator commands) and the function
/// still waits for the runner to settle, so the final states and the session end are recorded
/// and no runner is left behind. A failure-threshold pause becomes an abort (nobody here can
/// resume it) unless `--on-threshold wait` hands it to a person.
pub async fn drive(spec: Spec, orders: &Orders) -> Ended {
    let mut spec = spec;
    // Applied before any host starts.
    spec.first.extend(orders.exclude.iter().map(|h| (Command::Exclude { host: h.clone() }, CommandSource::Flag)));
    follow(runner::spawn(&spec).await, orders).await
}

/// Follows a runner this process started (or says why it did not start) to its end.
pub async fn follow(started: Result<Client, Refused>, orders: &Orders) -> Ended {
    // With --output json, stdout carries only the event stream; what is said besides goes to
    // stderr.
    let json = orders.json;
    let note = |text: &str| if json { eprintln!("{text}") } else { say(text) };
    let mut client = match started {
        Ok(client) => client,
        Err(refused) => {
            eprintln!("error: {}", refused.message);
            if let Some(path) = &refused.audit_path {
                note(&format!("audit log: {}", path.display()));
            }
            return Ended { code: refused.code, rollback: false };
        }
    };
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            note(&format!("error: cannot listen for signals: {e}; aborting"));
            client.send(Command::Abort { reason: format!("cannot listen for signals: {e}") }, CommandSource::Policy);
            let _ = client.ended().await;
            return Ended { code: exit::CANNOT_START, rollback: false };
        }
    };
    let session = client.session().to_string();
    if let Some(preview) = &client.preview {
        note(preview);
    }
    note(&format!("audit log: {}", client.welcome.about.audit_path.display()));
    note(&format!("watch from another terminal: wavedeck attach {session} --observe"));
    let operator = crate::sys::operator_name();
    let mut rollback = false;
    let mut stopped_by_policy = false;
    // While a person has been handed a threshold pause: until when they have to decide.
    let mut handed_over: Option<tokio::time::Instant> = None;
    loop {
        let deadline = handed_over;
        tokio::select! {
            event = client.events.recv() => {
                let Some(event) = event else { break };
                let text = match &event.event {
                    // Headless mode stopped it on its standing orders: a failed deploy, as the
                    // exit code says, not an operator's abort.
                    Event::DeployFinished { outcome: Outcome::Aborted, duration_ms, hosts } if stopped_by_policy => {
                        Some(summary_table(Outcome::Failed, *duration_ms, hosts))
                    }
                    other => render(other, &operator),
                };
                if json {
                    say(&crate::audit::event_json(&session, &event));
                } else if let Some(text) = text {
                    // Host output and messages may carry terminal escapes: shown, never obeyed.
                    say(&crate::text::visible(&text));
                }
                // Decisions are the controller's: once a person took over, they make them.
                let in_control = client.role == Role::Control;
                match &event.event {
                    Event::ThresholdExceeded { action: FailureAction::Rollback, .. }
                    | Event::AnalysisFailed { action: FailureAction::Rollback, .. } => rollback = true,
                    Event::Paused { cause: cause @ (PauseCause::FailureThreshold { .. } | PauseCause::Analysis { .. }), .. }
                        if in_control =>
                    {
                        if let Some(wait) = orders.wait_on_threshold {
                            note(&format!(
                                "== waiting up to {} for someone to decide: wavedeck attach {session}",
                                humantime::format_duration(wait)
                            ));
                            client.release();
                            handed_over = Some(tokio::time::Instant::now() + wait);
                        } else {
                            let why = match cause {
                                PauseCause::FailureThreshold { wave, failures, limit } => {
                                    threshold_text(*wave, *failures, *limit)
                                }
                                PauseCause::Analysis { wave, reason } => format!("wave {wave}: {reason}"),
                                PauseCause::Operator => "paused".into(),
                            };
                            let reason = format!("{why}; headless mode has no operator to resume");
                            client.send(Command::Abort { reason }, CommandSource::Policy);
                            stopped_by_policy = true;
                        }
                    }
                    Event::Resumed | Event::Aborted { .. } => handed_over = None,
                    Event::AwaitingPromote { wave } if in_control => {
                        let command = if orders.promote {
                            Command::Promote
                        } else {
                            stopped_by_policy = true;
                            Command::Abort {
                                reason: format!("wave {wave} has a manual gate and headless mode runs without --promote"),
                            }
                        };
                        client.send(command, CommandSource::Policy);
                    }
                    _ => {}
                }
            }
            Some(notice) = client.notices.recv() => {
                client.note(&notice);
                note(&crate::text::visible(&format!("== {notice}")));
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                handed_over = None;
                note("== nobody decided in time: taking control back and aborting");
                client.take_over();
                let reason = "nobody decided at the failure threshold within --on-threshold wait".to_string();
                client.send(Command::Abort { reason }, CommandSource::Policy);
                stopped_by_policy = true;
            }
            name = signals.next() => {
                note(&format!("== {name} received: aborting (running steps get {}s to stop)", crate::transport::KILL_GRACE.as_secs()));
                if client.role != Role::Control {
                    client.take_over();
                }
                client.send(Command::Abort { reason: format!("{name} received") }, CommandSource::Signal);
            }
        }
    }
    let ended = client.ended().await;
    for problem in &ended.problems {
        note(&format!("error: {problem}"));
    }
    note(&format!("audit log: {}", ended.audit_path.display()));
    Ended { code: ended.code, rollback }
}

/// Prints a line; a closed stdout (a pipe whose reader went away) must not stop the deploy.
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// The signals that mean "abort" to a deploy.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Stream;

    #[test]
    fn output_lines_carry_the_host() {
        let e = Event::Output { host: "web-1".into(), step: "s".into(), stream: Stream::Stderr, line: "hi".into() };
        assert_eq!(render(&e, "ann").unwrap(), "[web-1] hi");
    }

    #[test]
    fn table_names_where_each_host_stopped() {
        let hosts = vec![
            HostSummary {
                host: "a".into(),
                wave: 1,
                state: HostState::Done,
                steps_done: 3,
                steps_total: 3,
                stopped_at: None,
                last_result: Some(StepResult::Exited { code: 0 }),
            },
            HostSummary {
                host: "bb".into(),
                wave: 2,
                state: HostState::Failed,
                steps_done: 1,
                steps_total: 3,
                stopped_at: Some("restart".into()),
                last_result: Some(StepResult::Exited { code: 7 }),
            },
        ];
        let table = summary_table(Outcome::Failed, 1500, &hosts);
        assert!(table.contains("bb       2  FAILED        1/3   restart: exit 7"), "{table}");
        assert!(table.ends_with("FAILED: 1 done, 1 failed, 0 cancelled, 0 not started in 1.5s"), "{table}");
    }
}
