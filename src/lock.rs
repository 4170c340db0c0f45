//! The deploy lock: one deploy per environment at a time, whoever starts it and from wherever.
//!
//! The lock is a directory on the environment's first host (or at the profile's `lock_path`),
//! created with `mkdir`, which is atomic on every POSIX filesystem: of two consoles racing,
//! exactly one succeeds. Inside, `owner.json` says who holds it. It is made and removed through
//! the same transport as the deploy, so it works for local and SSH hosts alike, and it survives a
//! crashed console on purpose: the next one is told who held it and since when, and breaking it
//! is an explicit, audited act (`wavedeck unlock`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::StepResult;
use crate::profile::Environment;
use crate::shell::quote as shell_quote;
use crate::transport::{Captured, HostSession, NoObserver, Target, Transport, run_captured};

/// How long taking, releasing or breaking the lock may take.
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// Exit code of the lock command when the lock is already held.
const HELD: i32 = 75;

/// Who holds the lock; written to `owner.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub session: String,
    pub operator: String,
    pub machine: String,
    pub pid: u32,
    pub env: String,
    pub release: String,
    pub started_at: DateTime<Utc>,
    /// The lease: refreshed every [`HEARTBEAT`] while the deploy's runner lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// The step the deploy last started, as of the heartbeat ("restart on web-3").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_step: Option<String>,
}

/// How often a running deploy refreshes its lock's heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(30);
/// A heartbeat older than this marks the lock stale: its runner is most likely gone.
pub const STALE_AFTER: Duration = Duration::from_secs(120);

impl LockInfo {
    /// "alice on box (session …), release 2.4.1, since 14:02 UTC (12m ago)", and whether its
    /// lease is alive or stale. The fields come from a file on a host, so they are shown with
    /// their control characters escaped.
    pub fn describe(&self, now: DateTime<Utc>) -> String {
        let ago = |at: DateTime<Utc>| {
            let age = (now - at).to_std().unwrap_or_default();
            humantime::format_duration(Duration::from_secs(age.as_secs())).to_string()
        };
        let mut text = format!(
            "{} on {} (pid {}, session {}), release {}, since {} ({} ago)",
            self.operator,
            self.machine,
            self.pid,
            self.session,
            self.release,
            self.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            ago(self.started_at)
        );
        let beat = self.heartbeat_at.unwrap_or(self.started_at);
        if self.is_stale(now) {
            text.push_str(&format!("; STALE: no heartbeat for {} (its runner is probably gone", ago(beat)));
            if let Some(step) = &self.last_step {
                text.push_str(&format!("; last step: {step}"));
            }
            text.push(')');
        } else if self.heartbeat_at.is_some() {
            text.push_str(&format!("; alive (heartbeat {} ago)", ago(beat)));
        }
        crate::text::visible(&shorten(&text))
    }

    /// No heartbeat (or start, for a lock taken without one) within [`STALE_AFTER`].
    pub fn is_stale(&self, now: DateTime<Utc>) -> bool {
        let beat = self.heartbeat_at.unwrap_or(self.started_at);
        (now - beat).to_std().unwrap_or_default() > STALE_AFTER
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{env} is locked by another deploy: {}", holder_text(.holder, .raw))]
    Held { env: String, holder: Option<LockInfo>, raw: String },
    #[error("cannot take the deploy lock on {host}: {message}")]
    Failed { host: String, message: String },
}

fn holder_text(holder: &Option<LockInfo>, raw: &str) -> String {
    match holder {
        Some(info) => info.describe(Utc::now()),
        None if raw.trim().is_empty() => "owner unknown (the lock has no owner file)".into(),
        None => format!("owner file unreadable: {}", crate::text::visible(&shorten(raw.trim()))),
    }
}

/// Most of an owner file shown in a message: it is a host's to fill, with anything.
const SHOWN_OWNER_CHARS: usize = 300;

fn shorten(text: &str) -> String {
    match text.char_indices().nth(SHOWN_OWNER_CHARS) {
        Some((at, _)) => format!("{}… ({} bytes in all)", &text[..at], text.len()),
        None => text.to_string(),
    }
}

/// Where the lock lives: the first host of the plan, at `path` relative to its working
/// directory unless absolute.
#[derive(Debug, Clone)]
pub struct LockPlace {
    pub target: Target,
    pub path: String,
}

impl LockPlace {
    pub fn new(target: Target, lock_path: Option<&str>) -> LockPlace {
        let path = lock_path.map_or_else(|| format!(".wavedeck/lock-{}", target.env), str::to_string);
        LockPlace { target, path }
    }

    /// The one place every mode (deploy, rollback, unlock) locks an environment: its first host
    /// as the profile lists it, whatever order a plan visits the hosts in.
    pub fn for_environment(env: &Environment) -> Option<LockPlace> {
        let first = env.hosts.first()?;
        Some(LockPlace::new(Target { env: env.name.clone(), host: first.clone() }, env.lock_path.as_deref()))
    }
}

/// Shell that removes the lock at `dir` only if it is a lock wavedeck made: its owner file, then
/// the directory, which `rmdir` refuses to remove if anything else is in it.
fn remove_lock_command(dir: &str) -> String {
    format!(
        "rm -f -- {dir}/owner.json && rmdir -- {dir} 2>/dev/null || \
         {{ echo 'not a lock wavedeck made (it holds other files): left alone' >&2; exit 1; }}"
    )
}

/// A held lock. Release it with [`DeployLock::release`]; dropping it leaves the lock in place,
/// as a crash would.
pub struct DeployLock {
    place: LockPlace,
    session: Box<dyn HostSession>,
    pub info: LockInfo,
}

impl DeployLock {
    pub fn place(&self) -> &LockPlace {
        &self.place
    }

    /// Renews the lease: rewrites the owner file with a fresh heartbeat and `last_step`, only
    /// if the lock is still ours.
    pub async fn heartbeat(&mut self, last_step: Option<String>) -> Result<(), String> {
        self.info.heartbeat_at = Some(Utc::now());
        self.info.last_step = last_step;
        let json = serde_json::to_string(&self.info).map_err(|e| e.to_string())?;
        let dir = shell_quote(&self.place.path);
        let owner = shell_quote(&format!("\"session\":\"{}\"", self.info.session));
        let command = format!(
            "if grep -qF {owner} {dir}/owner.json 2>/dev/null; then printf '%s\\n' {json} > {dir}/owner.json.new && \
             mv -f -- {dir}/owner.json.new {dir}/owner.json; \
             else echo 'the lock now belongs to someone else' >&2; exit 1; fi",
            json = shell_quote(&json),
        );
        let (result, output) = run(self.session.as_ref(), &command).await;
        if result.succeeded() { Ok(()) } else { Err(format!("{}: {}", result, output.all())) }
    }

    /// Removes the lock if it is still ours.
    pub async fn release(self) -> Result<(), String> {
        let dir = shell_quote(&self.place.path);
        let owner = shell_quote(&format!("\"session\":\"{}\"", self.info.session));
        let command = format!(
            "if grep -qF {owner} {dir}/owner.json 2>/dev/null; then {remove}; \
             else echo 'the lock now belongs to someone else; left in place' >&2; exit 1; fi",
            remove = remove_lock_command(&dir)
        );
        let (result, output) = run(self.session.as_ref(), &command).await;
        if result.succeeded() { Ok(()) } else { Err(format!("{}: {}", result, output.all())) }
    }
}

/// Takes the lock for `info.env`.
pub async fn acquire(transport: &dyn Transport, place: &LockPlace, info: LockInfo) -> Result<DeployLock, LockError> {
    let session = open(transport, place).await?;
    let mut info = info;
    info.heartbeat_at = Some(info.started_at);
    let json = serde_json::to_string(&info).map_err(|e| failed(place, e.to_string()))?;
    let dir = shell_quote(&place.path);
    let command = format!(
        "mkdir -p \"$(dirname {dir})\" && if mkdir {dir} 2>/dev/null; then printf '%s\\n' {json} > {dir}/owner.json; \
         else cat {dir}/owner.json 2>/dev/null; exit {HELD}; fi",
        json = shell_quote(&json),
    );
    let (result, output) = run(session.as_ref(), &command).await;
    match result {
        StepResult::Exited { code: 0 } => Ok(DeployLock { place: place.clone(), session, info }),
        StepResult::Exited { code: HELD } => Err(LockError::Held {
            env: info.env,
            holder: serde_json::from_str(output.stdout.trim()).ok(),
            raw: output.all(),
        }),
        other => Err(failed(place, format!("{other}: {}", output.all()))),
    }
}

/// Who holds the lock now, if anyone.
pub async fn inspect(transport: &dyn Transport, place: &LockPlace) -> Result<Option<Option<LockInfo>>, LockError> {
    let session = open(transport, place).await?;
    let dir = shell_quote(&place.path);
    let (result, output) =
        run(session.as_ref(), &format!("test -d {dir} || exit 3; cat {dir}/owner.json 2>/dev/null; true")).await;
    match result {
        StepResult::Exited { code: 3 } => Ok(None),
        StepResult::Exited { code: 0 } => Ok(Some(serde_json::from_str(output.stdout.trim()).ok())),
        other => Err(failed(place, format!("{other}: {}", output.all()))),
    }
}

/// Removes the lock whoever holds it; returns who did.
pub async fn break_lock(transport: &dyn Transport, place: &LockPlace) -> Result<Option<LockInfo>, LockError> {
    let session = open(transport, place).await?;
    let dir = shell_quote(&place.path);
    let command = format!("cat {dir}/owner.json 2>/dev/null; {}", remove_lock_command(&dir));
    let (result, output) = run(session.as_ref(), &command).await;
    if result.succeeded() {
        Ok(serde_json::from_str(output.stdout.trim()).ok())
    } else {
        Err(failed(place, format!("{result}: {}", output.all())))
    }
}

fn failed(place: &LockPlace, message: String) -> LockError {
    LockError::Failed { host: place.target.host.name.clone(), message }
}

async fn open(transport: &dyn Transport, place: &LockPlace) -> Result<Box<dyn HostSession>, LockError> {
    transport.open(&place.target, &NoObserver).await.map_err(|e| failed(place, e.to_string()))
}

async fn run(session: &dyn HostSession, command: &str) -> (StepResult, Captured) {
    run_captured(session, command, LOCK_TIMEOUT).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Host;
    use crate::transport::local::LocalTransport;

    fn info(session: &str) -> LockInfo {
        LockInfo {
            session: session.into(),
            operator: "ann".into(),
            machine: "box".into(),
            pid: 7,
            env: "prod".into(),
            release: "2.4.1".into(),
            started_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            heartbeat_at: DateTime::from_timestamp(1_800_000_000, 0),
            last_step: None,
        }
    }

    fn place(root: &std::path::Path) -> (LocalTransport, LockPlace) {
        let host = Host {
            name: "web-1".into(),
            address: "web-1".into(),
            user: None,
            port: None,
            labels: vec![],
            vars: Default::default(),
            from: None,
        };
        (LocalTransport::new(root), LockPlace::new(Target { env: "prod".into(), host }, None))
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_release_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let (transport, place) = place(dir.path());
        let first = acquire(&transport, &place, info("s1")).await.unwrap();
        match acquire(&transport, &place, info("s2")).await {
            Err(LockError::Held { holder: Some(holder), .. }) => assert_eq!(holder.session, "s1"),
            other => panic!("expected Held, got {:?}", other.map(|l| l.info)),
        }
        first.release().await.unwrap();
        let again = acquire(&transport, &place, info("s3")).await.unwrap();
        assert_eq!(inspect(&transport, &place).await.unwrap(), Some(Some(info("s3"))));
        assert_eq!(break_lock(&transport, &place).await.unwrap(), Some(info("s3")));
        assert_eq!(inspect(&transport, &place).await.unwrap(), None);
        // A lock broken under its holder is not removed by the holder's release.
        let taken = acquire(&transport, &place, info("s4")).await.unwrap();
        assert!(again.release().await.is_err());
        taken.release().await.unwrap();
    }

    #[tokio::test]
    async fn unlock_never_removes_a_directory_wavedeck_did_not_make() {
        let dir = tempfile::tempdir().unwrap();
        let (transport, place) = place(dir.path());
        let existing = dir.path().join("prod/web-1/data");
        std::fs::create_dir_all(&existing).unwrap();
        std::fs::write(existing.join("precious"), b"keep me").unwrap();
        let place = LockPlace { path: "data".into(), ..place };
        assert!(matches!(acquire(&transport, &place, info("s1")).await, Err(LockError::Held { holder: None, .. })));
        let err = break_lock(&transport, &place).await.unwrap_err().to_string();
        assert!(err.contains("not a lock wavedeck made"), "{err}");
        assert!(existing.join("precious").exists(), "unlock deleted a directory it did not make");
    }

    #[test]
    fn a_hostile_owner_file_is_shown_escaped_and_short() {
        let mut hostile = info("s");
        hostile.operator = "\u{1b}[2J\u{1b}]0;pwned\u{7}eve".into();
        let text = hostile.describe(Utc::now());
        assert!(!text.contains('\u{1b}') && text.starts_with("\\x1b[2J\\x1b]0;pwned\\x07eve on box"), "{text}");
        let raw = "x".repeat(10_000);
        let shown = holder_text(&None, &raw);
        assert!(shown.len() < 400 && shown.ends_with("(10000 bytes in all)"), "{shown}");
    }

    #[test]
    fn the_holder_is_described_with_its_age_and_a_stale_lease_says_so() {
        let start = 1_800_000_000;
        let mut lease = info("s");
        lease.heartbeat_at = DateTime::from_timestamp(start + 740, 0);
        let text = lease.describe(DateTime::from_timestamp(start + 754, 0).unwrap());
        assert_eq!(
            text,
            "ann on box (pid 7, session s), release 2.4.1, since 2027-01-15 08:00:00 UTC (12m 34s ago); \
             alive (heartbeat 14s ago)"
        );
        lease.last_step = Some("restart on web-3".into());
        let later = DateTime::from_timestamp(start + 740 + 421, 0).unwrap();
        assert!(lease.is_stale(later));
        assert!(
            lease
                .describe(later)
                .ends_with("STALE: no heartbeat for 7m 1s (its runner is probably gone; last step: restart on web-3)"),
            "{}",
            lease.describe(later)
        );
    }

    #[tokio::test]
    async fn a_heartbeat_renews_only_a_lease_that_is_still_ours() {
        let dir = tempfile::tempdir().unwrap();
        let (transport, place) = place(dir.path());
        let mut held = acquire(&transport, &place, info("s1")).await.unwrap();
        held.heartbeat(Some("switch on web-2".into())).await.unwrap();
        let Some(Some(now)) = inspect(&transport, &place).await.unwrap() else { panic!("no owner") };
        assert_eq!(now.last_step.as_deref(), Some("switch on web-2"));
        assert!(!now.is_stale(Utc::now()));
        break_lock(&transport, &place).await.unwrap();
        let _other = acquire(&transport, &place, info("s2")).await.unwrap();
        assert!(held.heartbeat(None).await.is_err(), "another deploy's lock is not renewed");
        let Some(Some(owner)) = inspect(&transport, &place).await.unwrap() else { panic!("no owner") };
        assert_eq!(owner.session, "s2");
    }
}
