//! Rolling back: which hosts the last deploy changed, and where each returns to, both from the
//! audit log. A step that switches a host's release says so (`WAVEDECK-CHANGED from -> to`, as
//! the built-in `activate` does), and the deploy's audit log keeps it as a `host_changed` event:
//! a host returns to the `from` of its first change in that deploy, the release the deploy found
//! it on, and a host the deploy never changed is left alone. Only a profile whose steps never
//! report changes (no `[releases]`, no markers) falls back to asking each host its
//! `rollback_target`.
//!
//! The rollback itself is an ordinary deploy of the profile's `[[rollback]]` steps, planned in
//! reverse wave order by [`Plan::build_rollback`](crate::plan::Plan::build_rollback), so it
//! gets the same lock, gates, health checks, controls and audit trail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::event::StepResult;
use crate::lock::{self, LockError, LockPlace};
use crate::plan::Plan;
use crate::profile::{Environment, Profile, is_safe_name};
use crate::secrets::Secrets;
use crate::session::{self, Session, SessionOptions, SetupError};
use crate::transport::{NoObserver, Target, Transport, run_captured};

/// Where one host goes in a rollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// From the release the deploy left it on back to the one the deploy found it on.
    Return { current: String, target: String },
    /// Left out of the rollback, and why.
    Stay(String),
    /// Rolled back by the profile's own `[[rollback]]` steps; where to is theirs to know.
    Unknown(String),
}

/// A rollback ready to start: its session (audit open, plan made) and what it will do.
pub struct Prepared {
    pub session: Session,
    pub last: LastDeploy,
    /// Per host, in rollback order: where it goes, or why it stays.
    pub targets: Vec<(String, Destination)>,
}

impl Prepared {
    /// The preview shown before the operator confirms. Targets may come from hosts, so the text
    /// is masked and its control characters escaped.
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
        for (host, destination) in &self.targets {
            match destination {
                Destination::Return { current, target } => {
                    out.push_str(&format!("\n  {host:<16} {current} -> {target}"))
                }
                Destination::Stay(why) => out.push_str(&format!("\n  {host:<16} left alone: {why}")),
                Destination::Unknown(why) => {
                    out.push_str(&format!("\n  {host:<16} {} -> ? ({why})", self.last.release))
                }
            }
        }
        crate::text::visible(&self.session.redactor.redact(&out))
    }
}

/// Finds the last deploy of `env`, works out where each host it reached goes back to, plans the
/// rollback and opens its audit session (which records the preview).
pub async fn prepare(
    profile: &Profile,
    env: &str,
    audit_dir: Option<&Path>,
    local_root: Option<&Path>,
) -> Result<Prepared, SetupError> {
    let environment = session::environment(profile, env)?;
    let transport = session::transport_for(environment, local_root)?;
    // A deploy in flight is still writing the log this reads: say it is running, rather than
    // plan from half of it. (The rollback takes the lock itself when it starts.)
    if let Some(place) = LockPlace::for_environment(environment) {
        match lock::inspect(transport.as_ref(), &place).await {
            Ok(None) => {}
            Ok(Some(holder)) => {
                let held = LockError::Held { env: env.to_string(), holder, raw: String::new() };
                return Err(SetupError::Locked(format!("{held}; roll back once it has ended")));
            }
            Err(e) => return Err(SetupError::CannotStart(e.to_string())),
        }
    }
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
    let secrets = Secrets::from_env(profile).map_err(SetupError::Invalid)?;
    let targets = if profile.releases.is_some() || !last.changes.is_empty() {
        from_records(&hosts, &last)
    } else if profile.rollback_target.is_some() {
        preview(transport.as_ref(), profile, environment, &hosts, &last.release, &secrets).await
    } else {
        let why = "no recorded change and no rollback_target: the [[rollback]] steps decide";
        hosts.iter().map(|h| (h.clone(), Destination::Unknown(why.into()))).collect()
    };
    let moving: Vec<&String> =
        targets.iter().filter(|(_, d)| !matches!(d, Destination::Stay(_))).map(|(h, _)| h).collect();
    for wave in &mut waves {
        wave.retain(|h| moving.contains(&h));
    }
    waves.retain(|w| !w.is_empty());
    if waves.is_empty() {
        let mut why = format!(
            "the last deploy of {} to {env} ({}, session {}) changed no host that can be returned: nothing to roll back",
            profile.service, last.release, last.session
        );
        for (host, destination) in &targets {
            if let Destination::Stay(reason) = destination {
                why.push_str(&format!("\n  {host:<16} left alone: {reason}"));
            }
        }
        return Err(SetupError::Invalid(crate::text::visible(&secrets.redactor().redact(&why))));
    }
    let known: BTreeMap<String, String> = targets
        .iter()
        .filter_map(|(h, d)| match d {
            Destination::Return { target, .. } => Some((h.clone(), target.clone())),
            _ => None,
        })
        .collect();
    let options =
        SessionOptions { profile: &profile.path, env, release: &last.release, audit_dir, local_root, mode: "rollback" };
    let mut session = session::prepare_with(&options, profile.clone(), |p, secrets| {
        Plan::build_rollback(p, env, &last.release, &waves, &known, secrets)
    })?;
    let planned: Vec<serde_json::Value> = targets
        .iter()
        .map(|(h, d)| match d {
            Destination::Return { current, target } => {
                serde_json::json!({ "host": h, "current": current, "target": target })
            }
            Destination::Stay(why) => serde_json::json!({ "host": h, "left_alone": why }),
            Destination::Unknown(why) => serde_json::json!({ "host": h, "problem": why }),
        })
        .collect();
    session.audit.note(
        "rollback_planned",
        serde_json::json!({ "from_session": last.session, "release": last.release, "targets": planned }),
    );
    Ok(Prepared { session, last, targets })
}

/// Destinations from the changes the deploy recorded: each host back to where the deploy found
/// it, never further.
fn from_records(hosts: &[String], last: &LastDeploy) -> Vec<(String, Destination)> {
    hosts
        .iter()
        .map(|host| {
            let destination = match last.changes.get(host) {
                None => Destination::Stay("this deploy did not change it".into()),
                Some(Change { found: None, .. }) => Destination::Stay(NOTHING.into()),
                Some(Change { found: Some(found), left }) if found == left => {
                    Destination::Stay(format!("already back on {found}"))
                }
                Some(Change { found: Some(found), left }) => {
                    Destination::Return { current: left.clone(), target: found.clone() }
                }
            };
            (host.clone(), destination)
        })
        .collect()
}

/// What the preview says of a host that had no release before the deploy.
pub const NOTHING: &str = "it had no release before this deploy: nothing to return to";

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
    /// Per host, what the deploy changed it from (first change) and to (last change).
    pub changes: BTreeMap<String, Change>,
}

/// How a deploy moved one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The release the deploy found the host on; `None` if it had none.
    pub found: Option<String>,
    /// The release the deploy left it on.
    pub left: String,
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
    let mut changes: BTreeMap<String, Change> = BTreeMap::new();
    for r in records {
        match (r["record"].as_str(), r["event"].as_str()) {
            (Some("event"), Some("host_changed")) => {
                let (Some(host), Some(to)) = (r["host"].as_str(), r["to"].as_str()) else { continue };
                // The audit file is trusted no more than the host that wrote the marker.
                let from = r["from"].as_str();
                if !is_safe_name(to) || from.is_some_and(|f| !is_safe_name(f)) {
                    continue;
                }
                changes
                    .entry(host.to_string())
                    .and_modify(|c| c.left = to.to_string())
                    .or_insert_with(|| Change { found: from.map(str::to_string), left: to.to_string() });
            }
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
        changes,
    }))
}

/// Per host (in the order given), from the profile's `rollback_target` command run on it: the
/// release it will return to, or why that is not known.
pub async fn preview(
    transport: &dyn Transport,
    profile: &Profile,
    env: &Environment,
    hosts: &[String],
    from_release: &str,
    secrets: &Secrets,
) -> Vec<(String, Destination)> {
    let mut out = Vec::new();
    for name in hosts {
        let Some(host) = env.hosts.iter().find(|h| &h.name == name) else {
            out.push((name.clone(), Destination::Stay("no longer in the profile".into())));
            continue;
        };
        let destination = match Plan::rollback_target(profile, env, host, from_release, secrets) {
            None => Destination::Unknown("the profile has no rollback_target".into()),
            Some(Err(e)) => Destination::Unknown(e.to_string()),
            Some(Ok(command)) => match ask(transport, &env.name, host, &command.0).await {
                Ok(Some(target)) => Destination::Return { current: from_release.to_string(), target },
                Ok(None) => Destination::Stay(NOTHING.into()),
                Err(why) => Destination::Stay(why),
            },
        };
        out.push((name.clone(), destination));
    }
    out
}

/// Most of a host's unusable answer quoted in a message.
const QUOTED_ANSWER: usize = 80;

async fn ask(
    transport: &dyn Transport,
    env: &str,
    host: &crate::profile::Host,
    command: &str,
) -> Result<Option<String>, String> {
    let target = Target { env: env.to_string(), host: host.clone() };
    let session = transport.open(&target, &NoObserver).await.map_err(|e| e.to_string())?;
    let (result, output) = run_captured(session.as_ref(), command, PREVIEW_TIMEOUT).await;
    let line = output.stdout.lines().next().unwrap_or_default().trim();
    match result {
        StepResult::Exited { code: 0 } if line.is_empty() => Ok(None),
        // It becomes `{{ release }}` in shell commands: only a valid release name may.
        StepResult::Exited { code: 0 } if is_safe_name(line) => Ok(Some(line.to_string())),
        StepResult::Exited { code: 0 } => {
            let quoted: String = line.chars().take(QUOTED_ANSWER).collect();
            Err(format!("rollback_target printed an unusable release name ({quoted:?}): refused"))
        }
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
