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
use std::path::Path;
use std::time::Duration;

use crate::audit::{PlannedTarget, Record, read_lines};
use crate::event::{Event, StepResult};
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
        // The counts are of the list below: hosts that go back, and hosts left alone.
        let alone = self.targets.iter().filter(|(_, d)| matches!(d, Destination::Stay(_))).count();
        let back = self.targets.len() - alone;
        let mut out = format!(
            "Rollback of {} {} on {} (deploy session {}): {back} host{} go{} back in {} wave{}, last deployed \
             first{}",
            plan.service,
            self.last.release,
            plan.env,
            self.last.session,
            if back == 1 { "" } else { "s" },
            if back == 1 { "es" } else { "" },
            plan.waves.len(),
            if plan.waves.len() == 1 { "" } else { "s" },
            if alone == 0 { String::new() } else { format!("; {alone} left alone") },
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
    let mut targets = if profile.releases.is_some() || !last.changes.is_empty() {
        from_records(&hosts, &last)
    } else if profile.rollback_target.is_some() {
        preview(transport.as_ref(), profile, environment, &hosts, &last.release, &secrets).await
    } else {
        let why = "no recorded change and no rollback_target: the [[rollback]] steps decide";
        hosts.iter().map(|h| (h.clone(), Destination::Unknown(why.into()))).collect()
    };
    // Every host of the environment is accounted for in the preview, also those the deploy
    // never reached (excluded, or behind a wave that did not start).
    for host in environment.hosts.iter().filter(|h| !hosts.contains(&h.name)) {
        targets.push((host.name.clone(), Destination::Stay("the deploy never started on it".into())));
    }
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
    let options = SessionOptions {
        profile: &profile.path,
        env,
        release: &last.release,
        audit_dir,
        local_root,
        mode: "rollback",
        resumed_from: None,
    };
    let mut session = session::prepare_with(&options, profile.clone(), |p, secrets| {
        Plan::build_rollback(p, env, &last.release, &waves, &known, secrets)
    })?;
    let planned = targets
        .iter()
        .map(|(h, d)| {
            let mut t = PlannedTarget { host: h.clone(), current: None, target: None, left_alone: None, problem: None };
            match d {
                Destination::Return { current, target } => {
                    t.current = Some(current.clone());
                    t.target = Some(target.clone());
                }
                Destination::Stay(why) => t.left_alone = Some(why.clone()),
                Destination::Unknown(why) => t.problem = Some(why.clone()),
            }
            t
        })
        .collect();
    session.audit.note(Record::RollbackPlanned {
        from_session: last.session.clone(),
        release: last.release.clone(),
        targets: planned,
    });
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
    /// The interrupted session this one carried on (`wavedeck resume`): one deploy across both.
    pub resumed_from: Option<String>,
    /// `waves` with their numbers, to merge a resumed deploy's sessions by.
    numbered: Vec<(usize, Vec<String>)>,
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
/// Finds the newest deploy (not itself a rollback) of `service` to `env` in `dir`.
pub fn last_deploy(dir: &Path, service: &str, env: &str) -> Result<Option<LastDeploy>, String> {
    let mut rolled_back_by = None;
    for file in crate::audit::session_files(dir)?.iter().rev() {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        match parse_session(&text, service, env) {
            Some(Found::Rollback(session)) => {
                rolled_back_by.get_or_insert(session);
            }
            Some(Found::Deploy(mut found)) => {
                found.rolled_back_by = rolled_back_by;
                merge_resumed(dir, &mut found, service, env);
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

/// What the audit log says of recent deploys, per (service, environment).
#[derive(Debug, Default)]
pub struct History {
    /// The release each host last finished a deploy or rollback with.
    pub releases: BTreeMap<(String, String), BTreeMap<String, String>>,
    /// The newest deploy or rollback that started.
    pub last: BTreeMap<(String, String), LastRun>,
}

/// A deploy or rollback as the overview sums it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRun {
    pub operator: String,
    /// When it started, as the audit log wrote it (RFC 3339, UTC).
    pub at: String,
    pub release: String,
    /// `succeeded`, `failed`, `aborted`; `None` if it never finished (running, or its runner died).
    pub outcome: Option<String>,
    /// Why it was aborted, by a person or by the failure policy.
    pub reason: Option<String>,
}

/// The release history and last deploy of every environment: from the audit directory's index
/// of ended sessions, plus, read from their files, the newest sessions it does not hold (running,
/// interrupted, or written before the index existed).
pub fn history(dir: &Path) -> History {
    let mut entries = crate::audit::read_index(dir);
    let indexed: std::collections::BTreeSet<String> = entries.iter().map(|e| e.session.clone()).collect();
    let files = crate::audit::session_files(dir).unwrap_or_default();
    let start = files.len().saturating_sub(HISTORY_SESSIONS);
    for file in &files[start..] {
        let id = file.file_stem().and_then(|s| s.to_str()).and_then(|s| s.strip_prefix("wavedeck-"));
        if id.is_some_and(|id| indexed.contains(id)) {
            continue;
        }
        entries.extend(crate::audit::summarize(file));
    }
    // Session ids begin with their start time: in that order, later sessions win.
    entries.sort_by(|a, b| a.session.cmp(&b.session));
    let mut history = History::default();
    for entry in entries {
        let (Some(service), Some(release)) = (entry.service, entry.release) else { continue };
        let key = (service, entry.env);
        history.releases.entry(key.clone()).or_default().extend(entry.hosts);
        let run = LastRun {
            operator: entry.operator,
            at: entry.started,
            release,
            outcome: entry.deploy_outcome,
            reason: entry.reason,
        };
        history.last.insert(key, run);
    }
    history
}

/// A resumed deploy is one deploy across its sessions: a host returns to where the first of them
/// found it, and every host any of them started is the rollback's to consider.
fn merge_resumed(dir: &Path, deploy: &mut LastDeploy, service: &str, env: &str) {
    let mut earlier = deploy.resumed_from.clone();
    // Bounded: a chain of resumes longer than this is not one anybody made by hand.
    for _ in 0..100 {
        let Some(session) = earlier.take() else { return };
        let path = dir.join(format!("wavedeck-{session}.jsonl"));
        let Ok(text) = std::fs::read_to_string(&path) else { return };
        let Some(Found::Deploy(before)) = parse_session(&text, service, env) else { return };
        for (host, change) in before.changes {
            deploy.changes.entry(host).and_modify(|later| later.found = change.found.clone()).or_insert(change);
        }
        for (number, hosts) in before.numbered {
            match deploy.numbered.iter_mut().find(|(n, _)| *n == number) {
                Some((_, known)) => {
                    let new: Vec<String> = hosts.into_iter().filter(|h| !known.contains(h)).collect();
                    // The earlier session reached them first.
                    known.splice(0..0, new);
                }
                None => deploy.numbered.push((number, hosts)),
            }
        }
        deploy.numbered.sort_by_key(|(n, _)| *n);
        deploy.waves = deploy.numbered.iter().map(|(_, hosts)| hosts.clone()).collect();
        earlier = before.resumed_from;
    }
}

enum Found {
    Deploy(LastDeploy),
    Rollback(String),
}

fn parse_session(text: &str, service: &str, env: &str) -> Option<Found> {
    let mut lines = read_lines(text);
    let first = lines.next()?;
    let Record::SessionStart(start) = first.record else { return None };
    if start.env != env {
        return None;
    }
    let session = first.session;
    if start.mode == "rollback" {
        // Only a rollback that actually started counts.
        let started =
            lines.any(|l| matches!(&l.record, Record::Event(Event::DeployStarted { service: s, .. }) if s == service));
        return started.then_some(Found::Rollback(session));
    }
    if start.mode != "headless" && start.mode != "console" {
        return None;
    }
    let mut release = None;
    let mut waves: Vec<(usize, Vec<String>)> = Vec::new();
    let mut changes: BTreeMap<String, Change> = BTreeMap::new();
    for line in lines {
        let Record::Event(event) = line.record else { continue };
        match event {
            Event::HostChanged { host, from, to, .. } => {
                // The audit file is trusted no more than the host that wrote the marker.
                if !is_safe_name(&to) || from.as_deref().is_some_and(|f| !is_safe_name(f)) {
                    continue;
                }
                changes.entry(host).and_modify(|c| c.left = to.clone()).or_insert(Change { found: from, left: to });
            }
            Event::DeployStarted { service: s, release: r, .. } if s == service => release = Some(r),
            Event::HostStarted { wave, host } => match waves.iter_mut().find(|(w, _)| *w == wave) {
                Some((_, hosts)) if !hosts.contains(&host) => hosts.push(host),
                Some(_) => {}
                None => waves.push((wave, vec![host])),
            },
            _ => {}
        }
    }
    waves.sort_by_key(|(w, _)| *w);
    Some(Found::Deploy(LastDeploy {
        session,
        release: release?,
        waves: waves.iter().map(|(_, hosts)| hosts.clone()).collect(),
        numbered: waves,
        rolled_back_by: None,
        changes,
        resumed_from: start.resumed_from,
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
    use crate::audit::SessionStart;
    use crate::event::HostState;
    use crate::event::WaveOutline;

    fn start(session: &str, mode: &str, env: &str) -> Record {
        let _ = session;
        Record::SessionStart(SessionStart::for_tests(mode, env, ""))
    }

    fn deploy_started(release: &str) -> Record {
        Record::Event(Event::DeployStarted {
            outlier_percent: crate::profile::DEFAULT_OUTLIER_PERCENT,
            service: "shop".into(),
            env: "prod".into(),
            release: release.into(),
            waves: vec![WaveOutline { wave: 1, hosts: vec![], max_failures: 0 }],
            steps: vec![],
        })
    }

    fn finished(host: &str, state: HostState) -> Record {
        Record::Event(Event::HostFinished { wave: 1, host: host.into(), state })
    }

    fn started(wave: usize, host: &str) -> Record {
        Record::Event(Event::HostStarted { wave, host: host.into() })
    }

    /// Writes `records` as the audit file of `session`, the way the writer lays lines out.
    fn write(dir: &Path, session: &str, records: Vec<Record>) {
        let lines: Vec<String> = records
            .into_iter()
            .enumerate()
            .map(|(i, record)| {
                let mut line =
                    serde_json::json!({ "ts": "2026-01-01T00:00:00.000+00:00", "session": session, "seq": i + 1 });
                if let (Some(line), serde_json::Value::Object(fields)) =
                    (line.as_object_mut(), serde_json::to_value(&record).unwrap())
                {
                    line.extend(fields);
                }
                line.to_string()
            })
            .collect();
        std::fs::write(dir.join(format!("wavedeck-{session}.jsonl")), lines.join("\n")).unwrap();
    }

    #[test]
    fn last_releases_follow_deploys_and_rollbacks() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "1",
            vec![
                start("1", "headless", "prod"),
                deploy_started("1.0"),
                finished("a", HostState::Done),
                finished("b", HostState::Done),
            ],
        );
        write(
            d,
            "2",
            vec![
                start("2", "headless", "prod"),
                deploy_started("2.0"),
                finished("a", HostState::Done),
                finished("b", HostState::Failed),
            ],
        );
        let target = PlannedTarget {
            host: "a".into(),
            current: Some("2.0".into()),
            target: Some("1.0".into()),
            left_alone: None,
            problem: None,
        };
        let plan = Record::RollbackPlanned { from_session: "2".into(), release: "2.0".into(), targets: vec![target] };
        write(
            d,
            "3",
            vec![
                start("3", "rollback", "prod"),
                plan,
                deploy_started("rollback-of-2.0"),
                finished("a", HostState::Done),
            ],
        );
        let history = history(d);
        let releases = &history.releases[&("shop".to_string(), "prod".to_string())];
        let last = &history.last[&("shop".to_string(), "prod".to_string())];
        assert_eq!((last.release.as_str(), last.outcome.as_deref()), ("rollback-of-2.0", None));
        assert_eq!(releases.get("a").map(String::as_str), Some("1.0"));
        assert_eq!(releases.get("b").map(String::as_str), Some("1.0"), "b's 2.0 deploy failed");
    }

    #[test]
    fn the_last_run_of_an_environment_says_who_and_how_it_ended() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let aborted =
            Record::Event(Event::Aborted { reason: "db on fire".into(), by: crate::event::AbortedBy::Command });
        let ended = Record::Event(Event::DeployFinished {
            outcome: crate::event::Outcome::Aborted,
            duration_ms: 1,
            hosts: vec![],
        });
        write(d, "1", vec![start("1", "console", "prod"), deploy_started("2.0"), aborted, ended]);
        let last = &history(d).last[&("shop".to_string(), "prod".to_string())];
        assert_eq!(last.operator, "ann");
        assert_eq!((last.outcome.as_deref(), last.reason.as_deref()), (Some("aborted"), Some("db on fire")));
    }

    #[test]
    fn the_newest_deploy_of_the_environment_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let session = |name: &str, mode: &str, env: &str, release: &str, hosts: &[(usize, &str)]| {
            let mut records = vec![start(name, mode, env), deploy_started(release)];
            records.extend(hosts.iter().map(|(w, h)| started(*w, h)));
            write(d, name, records);
        };
        session("20260101T000000Z-1", "headless", "prod", "1.0", &[(1, "a")]);
        session("20260102T000000Z-1", "console", "prod", "2.0", &[(1, "a"), (2, "b"), (2, "c"), (1, "a")]);
        session("20260103T000000Z-1", "rollback", "prod", "2.0", &[(1, "c")]);
        session("20260104T000000Z-1", "headless", "staging", "3.0", &[(1, "x")]);
        let last = last_deploy(d, "shop", "prod").unwrap().unwrap();
        assert_eq!(last.release, "2.0");
        assert_eq!(last.rolled_back_by.as_deref(), Some("20260103T000000Z-1"));
        assert_eq!(last.waves, vec![vec!["a".to_string()], vec!["b".to_string(), "c".to_string()]]);
        assert_eq!(last_deploy(d, "shop", "qa").unwrap(), None);
    }
}
