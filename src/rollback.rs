//! Rolling back: which hosts the last deploy changed (from the audit log), and where each will
//! return to (the profile's `rollback_target` command, run on the host).
//!
//! The rollback itself is an ordinary deploy of the profile's `[[rollback]]` steps, planned in
//! reverse wave order by [`Plan::build_rollback`](crate::plan::Plan::build_rollback), so it
//! gets the same lock, gates, health checks, controls and audit trail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::event::StepResult;
use crate::plan::Plan;
use crate::profile::{Environment, Profile};
use crate::secrets::Secrets;
use crate::session::{self, Session, SessionOptions, SetupError};
use crate::transport::{NoObserver, Target, Transport, run_captured};

/// A rollback ready to start: its session (audit open, plan made) and what it will do.
pub struct Prepared {
    pub session: Session,
    pub last: LastDeploy,
    /// Per host, in rollback order: the release it returns to, or why that is not known.
    pub targets: Vec<(String, Result<String, String>)>,
}

impl Prepared {
    /// The preview shown before the operator confirms.
    pub fn describe(&self) -> String {
        let plan = &self.session.plan;
        let mut out = format!(
            "Rollback of {} {} on {} (deploy session {}): {} hosts in {} waves, last deployed first",
            plan.service,
            self.last.release,
            plan.env,
            self.last.session,
            plan.host_count(),
            plan.waves.len()
        );
        for (host, target) in &self.targets {
            match target {
                Ok(release) => out.push_str(&format!("\n  {host:<16} {} -> {release}", self.last.release)),
                Err(why) => out.push_str(&format!("\n  {host:<16} {} -> ? ({why})", self.last.release)),
            }
        }
        out
    }
}

/// Finds the last deploy of `env`, asks each changed host where it would return to, plans the
/// rollback and opens its audit session (which records the preview).
pub async fn prepare(
    profile: &Profile,
    env: &str,
    audit_dir: Option<&Path>,
    local_root: Option<&Path>,
) -> Result<Prepared, SetupError> {
    let environment = session::environment(profile, env)?;
    let dir = crate::audit::audit_dir(audit_dir)
        .ok_or_else(|| SetupError::CannotStart("no audit directory to find the last deploy in".into()))?;
    let last = last_deploy(&dir, &profile.service, env).map_err(SetupError::CannotStart)?.ok_or_else(|| {
        SetupError::Invalid(format!(
            "no deploy of {} to {env} in the audit log at {}: nothing to roll back",
            profile.service,
            dir.display()
        ))
    })?;
    if let Some(session) = &last.rolled_back_by {
        return Err(SetupError::Invalid(format!(
            "the last deploy of {} to {env} ({} in session {}) was already rolled back in session {session}",
            profile.service, last.release, last.session
        )));
    }
    let mut waves = last.waves.clone();
    waves.reverse();
    let hosts: Vec<String> = waves.iter().flatten().cloned().collect();
    let transport = session::transport_for(environment, local_root)?;
    let secrets = Secrets::from_env(profile).map_err(SetupError::Invalid)?;
    let targets = preview(transport.as_ref(), profile, environment, &hosts, &last.release, &secrets).await;
    // A host with no earlier release (its first deploy) has nothing to roll back to.
    let stay: Vec<&String> =
        targets.iter().filter(|(_, t)| t.as_ref().err().map(String::as_str) == Some(NOTHING)).map(|(h, _)| h).collect();
    for wave in &mut waves {
        wave.retain(|h| !stay.contains(&h));
    }
    waves.retain(|w| !w.is_empty());
    if waves.is_empty() {
        return Err(SetupError::Invalid(format!("no host of {env} has an earlier release to return to")));
    }
    let known: BTreeMap<String, String> =
        targets.iter().filter_map(|(h, t)| t.as_ref().ok().map(|t| (h.clone(), t.clone()))).collect();
    let options =
        SessionOptions { profile: &profile.path, env, release: &last.release, audit_dir, local_root, mode: "rollback" };
    let mut session = session::prepare_with(&options, profile.clone(), |p, secrets| {
        Plan::build_rollback(p, env, &last.release, &waves, &known, secrets)
    })?;
    let planned: Vec<serde_json::Value> = targets
        .iter()
        .map(|(h, t)| serde_json::json!({ "host": h, "target": t.as_ref().ok(), "problem": t.as_ref().err() }))
        .collect();
    session.audit.note(
        "rollback_planned",
        serde_json::json!({ "from_session": last.session, "release": last.release, "targets": planned }),
    );
    Ok(Prepared { session, last, targets })
}

/// What the preview says of a host with no earlier release: it is left out of the rollback.
pub const NOTHING: &str = "nothing to return to; left as it is";

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

/// The audit session files in `dir`, oldest first (their names start with the UTC start time,
/// so name order is time order). A missing directory has none.
fn session_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    files.sort();
    Ok(files)
}

/// Finds the newest deploy (not itself a rollback) of `service` to `env` in `dir`.
pub fn last_deploy(dir: &Path, service: &str, env: &str) -> Result<Option<LastDeploy>, String> {
    let mut rolled_back_by = None;
    for file in session_files(dir)?.iter().rev() {
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

/// Audit sessions read to find hosts' last releases: enough for recent history, bounded so
/// the console starts fast however long the audit directory has grown.
const HISTORY_SESSIONS: usize = 100;

/// Per (service, environment): the release each host last finished a deploy or rollback with,
/// from one pass over the newest audit sessions.
pub fn release_history(dir: &Path) -> BTreeMap<(String, String), BTreeMap<String, String>> {
    let files = session_files(dir).unwrap_or_default();
    let start = files.len().saturating_sub(HISTORY_SESSIONS);
    let mut history: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
    for file in &files[start..] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        let mut records = text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok());
        let Some(first) = records.next() else { continue };
        let (Some("session_start"), Some(env)) = (first["record"].as_str(), first["env"].as_str()) else { continue };
        let mut deploy: Option<(String, String)> = None;
        let mut targets: BTreeMap<String, String> = BTreeMap::new();
        for r in records {
            match (r["record"].as_str(), r["event"].as_str()) {
                (Some("rollback_planned"), _) => {
                    for t in r["targets"].as_array().into_iter().flatten() {
                        if let (Some(h), Some(to)) = (t["host"].as_str(), t["target"].as_str()) {
                            targets.insert(h.to_string(), to.to_string());
                        }
                    }
                }
                (Some("event"), Some("deploy_started")) => {
                    if let (Some(service), Some(release)) = (r["service"].as_str(), r["release"].as_str()) {
                        deploy = Some((service.to_string(), release.to_string()));
                    }
                }
                (Some("event"), Some("host_finished")) if r["state"] == "done" => {
                    let (Some(host), Some((service, release))) = (r["host"].as_str(), &deploy) else { continue };
                    let got = targets.get(host).unwrap_or(release).clone();
                    history.entry((service.clone(), env.to_string())).or_default().insert(host.to_string(), got);
                }
                _ => {}
            }
        }
    }
    history
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

async fn ask(
    transport: &dyn Transport,
    env: &str,
    host: &crate::profile::Host,
    command: &str,
) -> Result<String, String> {
    let target = Target { env: env.to_string(), host: host.clone() };
    let session = transport.open(&target, &NoObserver).await.map_err(|e| e.to_string())?;
    let (result, output) = run_captured(session.as_ref(), command, PREVIEW_TIMEOUT).await;
    let line = output.stdout.lines().next().unwrap_or_default();
    match result {
        StepResult::Exited { code: 0 } if !line.trim().is_empty() => Ok(line.trim().to_string()),
        StepResult::Exited { code: 0 } => Err(NOTHING.into()),
        other => Err(format!("rollback_target {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_releases_follow_deploys_and_rollbacks() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, lines: &[&str]| std::fs::write(dir.path().join(name), lines.join("\n")).unwrap();
        write(
            "wavedeck-1.jsonl",
            &[
                r#"{"record":"session_start","mode":"headless","env":"prod"}"#,
                r#"{"record":"event","event":"deploy_started","service":"shop","release":"1.0"}"#,
                r#"{"record":"event","event":"host_finished","host":"a","state":"done"}"#,
                r#"{"record":"event","event":"host_finished","host":"b","state":"done"}"#,
            ],
        );
        write(
            "wavedeck-2.jsonl",
            &[
                r#"{"record":"session_start","mode":"headless","env":"prod"}"#,
                r#"{"record":"event","event":"deploy_started","service":"shop","release":"2.0"}"#,
                r#"{"record":"event","event":"host_finished","host":"a","state":"done"}"#,
                r#"{"record":"event","event":"host_finished","host":"b","state":"failed"}"#,
            ],
        );
        write(
            "wavedeck-3.jsonl",
            &[
                r#"{"record":"session_start","mode":"rollback","env":"prod"}"#,
                r#"{"record":"rollback_planned","targets":[{"host":"a","target":"1.0"}]}"#,
                r#"{"record":"event","event":"deploy_started","service":"shop","release":"rollback-of-2.0"}"#,
                r#"{"record":"event","event":"host_finished","host":"a","state":"done"}"#,
            ],
        );
        let history = release_history(dir.path());
        let releases = &history[&("shop".to_string(), "prod".to_string())];
        assert_eq!(releases.get("a").map(String::as_str), Some("1.0"));
        assert_eq!(releases.get("b").map(String::as_str), Some("1.0"), "b's 2.0 deploy failed");
    }

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
