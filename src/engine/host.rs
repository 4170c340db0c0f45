//! One host's pipeline: connect, then each step through the control gate, with retries.

use std::time::Instant;

use crate::event::{Event, HostState, HostSummary, StepResult, Stream};

use crate::plan::{HostPlan, PlannedAction, StepKind};
use crate::transport::{ExecRequest, HostSession, OutputSink, Target, UploadRequest};

use super::*;

pub(super) fn not_started(wave: usize, host: &HostPlan) -> HostSummary {
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
pub(super) async fn run_host(
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
        Ok(mut session) => (run_steps(shared, wave, &plan, &mut session, &mut summary).await, Some(session)),
        Err(state) => (state, None),
    };
    summary.state = state;
    control.host_finished(&name, state);
    control.events.emit(Event::HostFinished { wave, host: name, state });
    (summary, session.filter(|_| state == HostState::Done))
}

/// Runs the plan's run-once steps on their designated host before any wave; returns whether
/// the waves may start.
pub(super) async fn run_once(shared: &Shared, once: HostPlan) -> bool {
    let control = &shared.control;
    let host = once.host.name.clone();
    let steps = once.steps.iter().map(|s| s.name.clone()).collect();
    if control.admit(Event::OnceStarted { host: host.clone(), steps }, None).await == Gate::Stop {
        return false;
    }
    let mut summary = not_started(0, &once);
    let state = match connect(shared, &once, &mut summary).await {
        Ok(mut session) => run_steps(shared, 0, &once, &mut session, &mut summary).await,
        Err(state) => state,
    };
    let ok = state == HostState::Done;
    control.events.emit(Event::OnceFinished { host, ok, stopped_at: summary.stopped_at, result: summary.last_result });
    ok
}

/// Opens the host's session; a failure is recorded in `summary` and becomes the host's state.
pub(super) async fn connect(
    shared: &Shared,
    plan: &HostPlan,
    summary: &mut HostSummary,
) -> Result<Box<dyn HostSession>, HostState> {
    let control = &shared.control;
    let name = &plan.host.name;
    let target = Target { env: shared.env.clone(), host: plan.host.clone() };
    let observer = ConnectEvents { shared, host: name };
    // A connection opened ahead is used if it is still up; one that failed for a reason
    // trying again cannot fix (a host key, auth) fails the host now, as dialling it would.
    let prepared = shared.ahead.lock().ok().and_then(|mut ahead| ahead.remove(name)).map(|ahead| ahead.take());
    let prepared = match prepared {
        Some(opening) => tokio::select! {
            opened = opening => match opened {
                Ok(Ok(session)) if !session.lost() => Some(Ok(session)),
                Ok(Err(e)) if !matches!(e, crate::transport::TransportError::Unreachable(_)) => Some(Err(e)),
                _ => None,
            },
            _ = control.abort.cancelled() => return Err(HostState::Cancelled),
        },
        None => None,
    };
    let opening = async {
        match prepared {
            Some(opened) => opened,
            None => shared.transport.open(&target, &observer).await,
        }
    };
    tokio::select! {
        opened = opening => opened.map_err(|e| {
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

/// A rendered template on this machine while it is uploaded: mode 0600, removed when dropped.
struct Rendered {
    path: std::path::PathBuf,
}

impl Rendered {
    fn write(content: &str) -> Result<Rendered, String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // In this user's private (0700) runtime directory: a runner killed mid-upload leaves the
        // file (and its secrets) where only this user can read it.
        let dir =
            crate::remote::runtime_dir().map_err(|e| format!("no private directory for the rendered template: {e}"))?;
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(|| sweep_orphaned_templates(&dir));
        let path = dir.join(format!("{TEMPLATE_PREFIX}{}-{n}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(content.as_bytes()));
        let rendered = Rendered { path };
        written.map_err(|e| format!("cannot write the rendered template to {}: {e}", rendered.path.display()))?;
        Ok(rendered)
    }
}

impl Drop for Rendered {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a rendered template's name starts with, before the process id that wrote it.
const TEMPLATE_PREFIX: &str = "template-";

/// Removes the rendered templates of processes that no longer run (a runner killed mid-upload
/// never dropped its [`Rendered`]): each holds a host's secrets, and nothing else would ever
/// remove it. A process id taken again by a living process keeps its file until that one ends.
fn sweep_orphaned_templates(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMPLATE_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
            .filter(|&pid| pid > 1);
        let Some(pid) = pid else { continue };
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH);
        if gone {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Runs a host's steps in order, each through the pause/abort gate, with retries; returns the
/// host's final state and fills in `summary`.
pub(super) async fn run_steps(
    shared: &Shared,
    wave: usize,
    plan: &HostPlan,
    session: &mut Box<dyn HostSession>,
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
            let sink = StepOutput::new(shared, wave, name, &step.name);
            let began = Instant::now();
            let cancel = shared.watch.step_began(&control.abort, wave, name, index, &step.name);
            let guard = match &step.skip_if {
                Some(check) => {
                    let request = ExecRequest { command: &check.0, timeout: step.timeout, record: None };
                    session.exec(request, &Discard, &cancel).await.succeeded()
                }
                None => false,
            };
            let result = match &step.action {
                _ if guard => StepResult::Skipped { reason: "its skip_if check succeeded: already done".into() },
                PlannedAction::Run(command) => {
                    let record = shared.step_record(name, index, attempt, wave, false);
                    let request = ExecRequest { command: &command.0, timeout: step.timeout, record };
                    let result = session.exec(request, &sink, &cancel).await;
                    // A dropped connection does not end a step that left a record: find it again.
                    match shared.step_record(name, index, attempt, wave, true) {
                        Some(record) if matches!(result, StepResult::Error { .. }) && session.lost() => {
                            sink.line(
                                Stream::Stdout,
                                "wavedeck: the connection dropped during this step: reconnecting to find it on the host"
                                    .into(),
                            );
                            match connect(shared, plan, summary).await {
                                Ok(again) => {
                                    *session = again;
                                    let request = ExecRequest {
                                        command: &command.0,
                                        timeout: step.timeout,
                                        record: Some(record),
                                    };
                                    session.exec(request, &sink, &cancel).await
                                }
                                Err(_) => result,
                            }
                        }
                        _ => result,
                    }
                }
                PlannedAction::Upload { from, to } => {
                    let request = UploadRequest { from, to, timeout: step.timeout, mode: None };
                    session.upload(request, &sink, &cancel).await
                }
                PlannedAction::Template { content, to, mode, .. } => {
                    // Rendered with its secrets into a file only this user can read, uploaded
                    // like any file, and removed.
                    match Rendered::write(&content.0) {
                        Ok(file) => {
                            let request = UploadRequest { from: &file.path, to, timeout: step.timeout, mode: *mode };
                            session.upload(request, &sink, &cancel).await
                        }
                        Err(message) => StepResult::Error { message },
                    }
                }
                PlannedAction::Probe(probe) => tokio::select! {
                    result = shared.prober.probe(probe, step.timeout) => result,
                    _ = cancel.cancelled() => StepResult::Cancelled,
                },
            };
            sink.finish();
            // A step stopped for its slowness failed; one stopped by an abort was cancelled.
            let result = match shared.watch.step_ended(name, result.succeeded()) {
                Some(why) if result == StepResult::Cancelled && !control.abort.is_cancelled() => {
                    StepResult::Error { message: why }
                }
                _ => result,
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_template_left_by_a_process_that_is_gone_is_removed_and_a_living_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let files = [
            format!("{TEMPLATE_PREFIX}{dead}-0"),
            format!("{TEMPLATE_PREFIX}{}-3", std::process::id()),
            "runner.log".to_string(),
            format!("{TEMPLATE_PREFIX}not-a-pid"),
        ];
        for name in &files {
            std::fs::write(dir.path().join(name), "secret").unwrap();
        }
        sweep_orphaned_templates(dir.path());
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        let mut kept = files[1..].to_vec();
        kept.sort();
        assert_eq!(left, kept);
    }
}
