//! Rolling back: which hosts the last deploy changed (from the audit log), and where each will
//! return to (the profile's `rollback_target` command, run on the host).
//!
//! The rollback itself is an ordinary deploy of the profile's `[[rollback]]` steps, planned in
//! reverse wave order by [`Plan::build_rollback`](crate::plan::Plan::build_rollback), so it
//! gets the same lock, gates, health checks, controls and audit trail.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::event::{StepResult, Stream};
use crate::plan::Plan;
use crate::profile::{Environment, Profile};
use crate::secrets::Secrets;
use crate::transport::{ConnectObserver, ExecRequest, OutputSink, Target, Transport, TransportError};

/// How long the preview may wait for one host.
const PREVIEW_TIMEOUT: Duration = Duration::from_secs(30);

/// The most recent deploy of a service to an environment, as the audit log recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastDeploy {
    pub session: String,
    pub release: String,
    /// Hosts that started (and so may have changed), per wave in deploy order.
    pub waves: Vec<Vec<String>>,
    /// A rollback session that already came after this deploy, if any.
    pub rolled_back_by: Option<String>,
}

/// Finds the newest deploy (not itself a rollback) of `service` to `env` in `dir`.
pub fn last_deploy(dir: &Path, service: &str, env: &str) -> Result<Option<LastDeploy>, String> {
    let mut files: Vec<_> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    // Session file names start with their UTC start time, so name order is time order.
    files.sort();
    let mut rolled_back_by = None;
    for file in files.iter().rev() {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        match parse_session(&text, service, env) {
            Some(Found::Rollback(session)) => {
                rolled_back_by.get_or_insert(session);
            }
            Some(Found::Deploy(mut found)) => {
                found.rolled_back_by = rolled_back_by;
                return Ok(Some(found));
            }
            None => {}
        }
    }
    Ok(None)
}

enum Found {
    Deploy(LastDeploy),
    Rollback(String),
}

fn parse_session(text: &str, service: &str, env: &str) -> Option<Found> {
    let mut records = text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok());
    let start = records.next()?;
    if start["record"] != "session_start" || start["env"] != env {
        return None;
    }
    let session = start["session"].as_str().unwrap_or_default().to_string();
    if start["mode"] == "rollback" {
        // Only a rollback that actually started counts.
        let started = records.any(|r| r["event"] == "deploy_started" && r["service"] == service);
        return started.then_some(Found::Rollback(session));
    }
    if start["mode"] != "headless" && start["mode"] != "console" {
        return None;
    }
    let mut release = None;
    let mut waves: Vec<(u64, Vec<String>)> = Vec::new();
    for r in records {
        match (r["record"].as_str(), r["event"].as_str()) {
            (Some("event"), Some("deploy_started")) if r["service"] == service => {
                release = r["release"].as_str().map(str::to_string);
            }
            (Some("event"), Some("host_started")) => {
                let (Some(wave), Some(host)) = (r["wave"].as_u64(), r["host"].as_str()) else { continue };
                match waves.iter_mut().find(|(w, _)| *w == wave) {
                    Some((_, hosts)) if !hosts.iter().any(|h| h == host) => hosts.push(host.to_string()),
                    Some(_) => {}
                    None => waves.push((wave, vec![host.to_string()])),
                }
            }
            _ => {}
        }
    }
    waves.sort_by_key(|(w, _)| *w);
    Some(Found::Deploy(LastDeploy {
        session,
        release: release?,
        waves: waves.into_iter().map(|(_, hosts)| hosts).collect(),
        rolled_back_by: None,
    }))
}

/// Per host (in the order given): the release it will return to, or why that is not known.
pub async fn preview(
    transport: &dyn Transport,
    profile: &Profile,
    env: &Environment,
    hosts: &[String],
    from_release: &str,
    secrets: &Secrets,
) -> Vec<(String, Result<String, String>)> {
    let mut out = Vec::new();
    for name in hosts {
        let Some(host) = env.hosts.iter().find(|h| &h.name == name) else {
            out.push((name.clone(), Err("no longer in the profile".to_string())));
            continue;
        };
        let target = match Plan::rollback_target(profile, env, host, from_release, secrets) {
            None => Err("not known: the profile has no rollback_target".to_string()),
            Some(Err(e)) => Err(e.to_string()),
            Some(Ok(command)) => ask(transport, &env.name, host, &command.0).await,
        };
        out.push((name.clone(), target));
    }
    out
}

struct Quiet;

impl ConnectObserver for Quiet {
    fn attempt_failed(&self, _: u32, _: u32, _: &TransportError, _: Option<Duration>) {}
}

#[derive(Default)]
struct FirstLine(std::sync::Mutex<Option<String>>);

impl OutputSink for FirstLine {
    fn line(&self, stream: Stream, line: String) {
        if stream == Stream::Stdout
            && let Ok(mut first) = self.0.lock()
            && first.is_none()
        {
            *first = Some(line);
        }
    }
}

async fn ask(
    transport: &dyn Transport,
    env: &str,
    host: &crate::profile::Host,
    command: &str,
) -> Result<String, String> {
    let target = Target { env: env.to_string(), host: host.clone() };
    let session = transport.open(&target, &Quiet).await.map_err(|e| e.to_string())?;
    let first = FirstLine::default();
    let never = CancellationToken::new();
    let result = session.exec(ExecRequest { command, timeout: PREVIEW_TIMEOUT }, &first, &never).await;
    let line = first.0.lock().ok().and_then(|l| l.clone()).unwrap_or_default();
    match result {
        StepResult::Exited { code: 0 } if !line.trim().is_empty() => Ok(line.trim().to_string()),
        StepResult::Exited { code: 0 } => Err("nothing to return to".into()),
        other => Err(format!("rollback_target {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_deploy_of_the_environment_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let session = |name: &str, mode: &str, env: &str, release: &str, hosts: &[(u64, &str)]| {
            let mut lines = vec![
                format!(r#"{{"record":"session_start","session":"{name}","mode":"{mode}","env":"{env}"}}"#),
                format!(r#"{{"record":"event","event":"deploy_started","service":"shop","release":"{release}"}}"#),
            ];
            for (wave, host) in hosts {
                lines.push(format!(r#"{{"record":"event","event":"host_started","wave":{wave},"host":"{host}"}}"#));
            }
            std::fs::write(dir.path().join(format!("wavedeck-{name}.jsonl")), lines.join("\n")).unwrap();
        };
        session("20260101T000000Z-1", "headless", "prod", "1.0", &[(1, "a")]);
        session("20260102T000000Z-1", "console", "prod", "2.0", &[(1, "a"), (2, "b"), (2, "c"), (1, "a")]);
        session("20260103T000000Z-1", "rollback", "prod", "2.0", &[(1, "c")]);
        session("20260104T000000Z-1", "headless", "staging", "3.0", &[(1, "x")]);
        let last = last_deploy(dir.path(), "shop", "prod").unwrap().unwrap();
        assert_eq!(last.release, "2.0");
        assert_eq!(last.rolled_back_by.as_deref(), Some("20260103T000000Z-1"));
        assert_eq!(last.waves, vec![vec!["a".to_string()], vec!["b".to_string(), "c".to_string()]]);
        assert_eq!(last_deploy(dir.path(), "shop", "qa").unwrap(), None);
    }
}
