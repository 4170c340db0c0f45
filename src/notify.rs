//! Telling a chat channel or any webhook what a deploy does (`[[notify]]`): started, paused and
//! why, over its failure limit, waiting at a gate, aborted, rolling back, finished.
//!
//! Sending is off the deploy's path: the session offers each event, a task sends what is
//! subscribed to with retries and backoff, and reports each result back for the audit log
//! (`notify_sent`, `notify_failed`). A webhook that is down never holds up or fails a deploy.
//! URLs may hold secrets (a Slack hook's token): they are used as given and shown masked.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::describe::describe;
use crate::event::{Event, FailureAction, Outcome, Stamped};
use crate::profile::{NotifyKind, NotifyOn, Profile};
use crate::secrets::{Redactor, Secrets};

/// Attempts per message, and the wait before the second (doubled for each after).
pub const ATTEMPTS: u32 = 4;
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How long one attempt may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages waiting to be sent; past it a message is given up on (and that is audited).
pub const QUEUE: usize = 256;
/// How long the end of a deploy waits for the last messages (its outcome among them).
pub const DRAIN: Duration = Duration::from_secs(20);

/// One `[[notify]]` entry, ready to send.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub kind: NotifyKind,
    /// With its secrets: never shown.
    url: String,
    /// The URL with secrets masked, for the audit log.
    pub shown_url: String,
    pub on: Vec<NotifyOn>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("name", &self.name).field("url", &self.shown_url).finish()
    }
}

/// The profile's `[[notify]]` entries with their URLs rendered for environment `env`.
pub fn targets(profile: &Profile, env: &str, secrets: &Secrets) -> Result<Vec<Target>, String> {
    let redactor = secrets.redactor();
    let mut vars: BTreeMap<String, String> = profile.vars.clone();
    vars.extend(secrets.values().map(|(k, v)| (k.clone(), v.clone())));
    vars.insert("service".into(), profile.service.clone());
    vars.insert("env".into(), env.to_string());
    profile
        .notify
        .iter()
        .map(|n| {
            let url = crate::template::render(&n.url, &vars).map_err(|e| format!("notify `{}`: {e}", n.name))?;
            let shown_url = redactor.redact(&url).into_owned();
            Ok(Target { name: n.name.clone(), kind: n.kind, url, shown_url, on: n.on.clone() })
        })
        .collect()
}

/// Which subscription an event falls under, if any.
pub fn occasion(event: &Event) -> Option<NotifyOn> {
    Some(match event {
        Event::DeployStarted { release, .. } if release.starts_with(crate::plan::ROLLBACK_PREFIX) => NotifyOn::Rollback,
        Event::DeployStarted { .. } => NotifyOn::Started,
        Event::Paused { .. } => NotifyOn::Paused,
        Event::ThresholdExceeded { .. } | Event::AnalysisFailed { .. } => NotifyOn::Threshold,
        Event::AwaitingPromote { .. } => NotifyOn::PromoteWait,
        Event::Aborted { .. } => NotifyOn::Aborted,
        Event::DeployFinished { .. } => NotifyOn::Finished,
        _ => return None,
    })
}

/// What the deploy is, for every message.
#[derive(Debug, Clone, Default)]
pub struct About {
    pub service: String,
    pub env: String,
    pub release: String,
    pub session: String,
    pub operator: String,
}

/// A message's fate, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub target: String,
    /// The target's URL, secrets masked.
    pub url: String,
    /// The occasion: `started`, `paused`, … .
    pub on: NotifyOn,
    pub attempts: u32,
    /// Why it was not delivered; `None` when it was.
    pub error: Option<String>,
}

struct Job {
    id: u64,
    target: Target,
    on: NotifyOn,
    body: String,
}

/// Messages queued and not yet settled, so that those the deploy's end cuts off are still
/// recorded (as not delivered).
type Outstanding = std::sync::Arc<std::sync::Mutex<Vec<(u64, Sent)>>>;

/// The session's side: offers events, and hears back what became of each message.
pub struct Notifier {
    targets: Vec<Target>,
    about: About,
    jobs: Option<mpsc::Sender<Job>>,
    results_tx: mpsc::UnboundedSender<Sent>,
    worker: Option<tokio::task::JoinHandle<()>>,
    redactor: Redactor,
    outstanding: Outstanding,
    next_id: u64,
}

impl Notifier {
    /// Starts the sending task (none when there are no targets); each message's fate comes out
    /// of the receiver.
    pub fn start(targets: Vec<Target>, about: About, redactor: Redactor) -> (Notifier, mpsc::UnboundedReceiver<Sent>) {
        let (results_tx, results) = mpsc::unbounded_channel();
        let outstanding = Outstanding::default();
        let (jobs, worker) = if targets.is_empty() {
            (None, None)
        } else {
            let (jobs, queue) = mpsc::channel(QUEUE);
            let worker = tokio::spawn(work(queue, results_tx.clone(), redactor.clone(), outstanding.clone()));
            (Some(jobs), Some(worker))
        };
        (Notifier { targets, about, jobs, results_tx, worker, redactor, outstanding, next_id: 0 }, results)
    }

    /// Queues the messages `event` calls for; never waits.
    pub fn offer(&mut self, event: &Stamped) {
        let Some(jobs) = &self.jobs else { return };
        let Some(on) = occasion(&event.event) else { return };
        if let Event::DeployStarted { release, .. } = &event.event {
            self.about.release = release.clone();
        }
        for target in self.targets.iter().filter(|t| t.on.contains(&on)) {
            let body = payload(target.kind, &self.about, on, event, &self.redactor);
            self.next_id += 1;
            let id = self.next_id;
            let unsettled =
                Sent { target: target.name.clone(), url: target.shown_url.clone(), on, attempts: 0, error: None };
            if let Ok(mut outstanding) = self.outstanding.lock() {
                outstanding.push((id, unsettled));
            }
            let job = Job { id, target: target.clone(), on, body };
            if jobs.try_send(job).is_err() {
                settle(&self.outstanding, id);
                let _ = self.results_tx.send(Sent {
                    target: target.name.clone(),
                    url: target.shown_url.clone(),
                    on,
                    attempts: 0,
                    error: Some(format!("more than {QUEUE} messages waiting: this one was dropped")),
                });
            }
        }
    }

    /// No more events: waits (at most `patience`) for the queued messages to be sent.
    pub async fn finish(&mut self, patience: Duration) {
        self.jobs = None;
        if let Some(worker) = self.worker.take() {
            let abort = worker.abort_handle();
            if tokio::time::timeout(patience, worker).await.is_err() {
                abort.abort();
            }
        }
        // Cut off by the end: recorded as not delivered, never left out.
        let cut_off = self.outstanding.lock().map(|mut o| std::mem::take(&mut *o)).unwrap_or_default();
        for (_, mut sent) in cut_off {
            sent.error =
                Some(format!("not delivered before the deploy ended (its last messages get {}s)", patience.as_secs()));
            let _ = self.results_tx.send(sent);
        }
    }
}

/// The message `id` has its result (or was never queued).
fn settle(outstanding: &Outstanding, id: u64) {
    if let Ok(mut outstanding) = outstanding.lock() {
        outstanding.retain(|(i, _)| *i != id);
    }
}

/// Sends queued messages one after another, each with its retries.
async fn work(
    mut queue: mpsc::Receiver<Job>,
    results: mpsc::UnboundedSender<Sent>,
    redactor: Redactor,
    outstanding: Outstanding,
) {
    while let Some(job) = queue.recv().await {
        let mut attempts = 0;
        let mut backoff = FIRST_BACKOFF;
        let error = loop {
            attempts += 1;
            let (url, body) = (job.target.url.clone(), job.body.clone());
            let sent = tokio::task::spawn_blocking(move || post(&url, &body)).await;
            let why = match sent {
                Ok(Ok(())) => break None,
                Ok(Err(why)) => why,
                Err(e) => e.to_string(),
            };
            if attempts >= ATTEMPTS {
                // An error may quote the URL: masked like everything else shown.
                break Some(redactor.redact(&why).into_owned());
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        };
        settle(&outstanding, job.id);
        let _ = results.send(Sent {
            target: job.target.name.clone(),
            url: job.target.shown_url.clone(),
            on: job.on,
            attempts,
            error,
        });
    }
}

fn post(url: &str, body: &str) -> Result<(), String> {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(ATTEMPT_TIMEOUT)).http_status_as_error(false).build().into();
    let response = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body)
        .map_err(|e| format!("cannot deliver: {e}"))?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) { Ok(()) } else { Err(format!("the webhook answered HTTP {status}")) }
}

/// The message's body: a Slack-compatible `{"text": …}`, or for a generic webhook the deploy,
/// the occasion, the same words as the timeline, and the event itself.
fn payload(kind: NotifyKind, about: &About, on: NotifyOn, event: &Stamped, redactor: &Redactor) -> String {
    let told = describe(&event.event, &about.operator).map(|t| t.text).unwrap_or_else(|| on.name().to_string());
    let text = match &event.event {
        Event::DeployFinished { outcome, duration_ms, hosts } => {
            let done = hosts.iter().filter(|h| h.state == crate::event::HostState::Done).count();
            let word = match outcome {
                Outcome::Succeeded => "SUCCEEDED",
                Outcome::Failed => "FAILED",
                Outcome::Aborted => "ABORTED",
            };
            format!("{word}: {done}/{} hosts done in {}", hosts.len(), crate::describe::seconds(*duration_ms))
        }
        Event::ThresholdExceeded { action: FailureAction::Rollback, .. }
        | Event::AnalysisFailed { action: FailureAction::Rollback, .. } => format!("{told}; rolling back"),
        _ => told,
    };
    let text = redactor.redact(&text).into_owned();
    let headline = format!("{} {} → {} {}", about.service, about.release, about.env, on.name());
    let body = match kind {
        NotifyKind::Slack => serde_json::json!({ "text": format!("*wavedeck* {headline}: {text}") }),
        NotifyKind::Webhook => serde_json::json!({
            "service": about.service,
            "env": about.env,
            "release": about.release,
            "session": about.session,
            "operator": about.operator,
            "on": on,
            "at": event.at,
            "text": text,
            "event": event.event,
        }),
    };
    body.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_message_the_deploys_end_cuts_off_is_recorded_as_not_delivered() {
        // A webhook that takes the connection and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let target = Target {
            name: "silent".into(),
            kind: NotifyKind::Webhook,
            url: url.clone(),
            shown_url: url,
            on: vec![NotifyOn::Finished],
        };
        let (mut notifier, mut results) = Notifier::start(vec![target], About::default(), Redactor::default());
        let finished = Event::DeployFinished { outcome: Outcome::Succeeded, duration_ms: 1, hosts: vec![] };
        notifier.offer(&Stamped { at: chrono::Utc::now(), event: finished });
        notifier.finish(Duration::from_millis(200)).await;
        let sent = results.try_recv().unwrap();
        assert_eq!((sent.target.as_str(), sent.on), ("silent", NotifyOn::Finished));
        assert!(sent.error.unwrap().starts_with("not delivered before the deploy ended"));
        drop(listener);
    }

    #[test]
    fn every_occasion_comes_from_its_event_and_output_is_none() {
        let paused = Event::Paused { cause: crate::event::PauseCause::Operator, running: vec![] };
        assert_eq!(occasion(&paused), Some(NotifyOn::Paused));
        let output = Event::Output {
            host: "h".into(),
            step: "s".into(),
            stream: crate::event::Stream::Stdout,
            line: "x".into(),
        };
        assert_eq!(occasion(&output), None);
        assert_eq!(occasion(&Event::AwaitingPromote { wave: 2 }), Some(NotifyOn::PromoteWait));
    }
}
