//! A deploy's runner killed with SIGKILL at many points, then resumed: the journal always
//! parses, no step ran without its start on disk, resume finishes every host, and no step that
//! had finished runs again (each step counts its runs in a file on its host).
#![allow(clippy::unwrap_used)] // Tests panic on unexpected errors by design.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use wavedeck::resume::{self, Progress};

const HOSTS: [&str; 5] = ["h1", "h2", "h3", "h4", "h5"];
const STEPS: [&str; 3] = ["one", "two", "three"];

struct Sandbox {
    dir: tempfile::TempDir,
    profile: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        std::fs::DirBuilder::new().mode(0o700).create(dir.path().join("run")).unwrap();
        let hosts: Vec<String> = HOSTS.iter().map(|h| format!("{{ name = \"{h}\" }}")).collect();
        let mut text = format!(
            "[service]\nname = \"counted\"\n[plan]\ncanary = 1\nbatch = 2\nparallel = 2\n\
             [[environments]]\nname = \"test\"\nhosts = [{}]\n",
            hosts.join(", ")
        );
        // Each step notes that it ran, takes a moment, and notes that it finished.
        for step in STEPS {
            text.push_str(&format!(
                "[[steps]]\nname = \"{step}\"\nrun = \"echo {step} >> ran.log; sleep 0.05; echo {step} >> finished.log\"\n"
            ));
        }
        let profile = dir.path().join("counted.toml");
        std::fs::write(&profile, text).unwrap();
        Sandbox { dir, profile }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wavedeck"));
        cmd.args(args)
            .env("WAVEDECK_AUDIT_DIR", self.dir.path().join("audit"))
            .env("WAVEDECK_LOCAL_ROOT", self.dir.path().join("hosts"))
            .env("WAVEDECK_RUNTIME_DIR", self.dir.path().join("run"));
        cmd
    }

    /// Starts a headless deploy of release 1 and reads its output up to a line containing `until`.
    fn deploy_until(&self, until: &str) -> (std::process::Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
        let profile = self.profile.to_str().unwrap();
        let mut deploy = self
            .command(&["deploy", profile, "--env", "test", "--release", "1"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(deploy.stdout.take().unwrap()).lines();
        for line in out.by_ref() {
            if line.unwrap().contains(until) {
                break;
            }
        }
        (deploy, out)
    }

    fn host_file(&self, host: &str, name: &str) -> Vec<String> {
        let path = self.dir.path().join("hosts/test").join(host).join(name);
        std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
    }

    fn journals(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("audit"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        files.sort();
        files
    }
}

/// The processes `pid` started (a headless deploy's runner).
fn children(pid: u32) -> Vec<i32> {
    let list = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    list.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// `step_started` records per (host, step) in a journal.
fn starts(journal: &Path) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for line in std::fs::read_to_string(journal).unwrap().lines() {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if record["event"] == "step_started" && record["wave"] != 0 {
            let key = (record["host"].as_str().unwrap().to_string(), record["step"].as_str().unwrap().to_string());
            *out.entry(key).or_default() += 1;
        }
    }
    out
}

/// One trial: a deploy whose runner is killed after `lines` lines of its output, then resumed.
/// Returns how many hosts were caught mid-step, or `None` if the deploy ended first.
fn trial(lines: usize) -> Option<usize> {
    let s = Sandbox::new();
    let profile = s.profile.to_str().unwrap();
    let mut deploy = s
        .command(&["deploy", profile, "--env", "test", "--release", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(deploy.stdout.take().unwrap()).lines();
    let mut seen = 0;
    let mut finished = false;
    for line in out.by_ref() {
        let line = line.unwrap();
        finished |= line.starts_with("SUCCEEDED");
        seen += 1;
        if seen == lines {
            break;
        }
    }
    if finished {
        // The deploy ended before the chosen point: nothing to resume in this trial.
        let _ = deploy.wait();
        return None;
    }
    let runner = children(deploy.id());
    assert_eq!(runner.len(), 1, "one runner");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(runner[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _: Vec<_> = out.collect();
    deploy.wait().unwrap();

    let first = s.journals()[0].clone();
    let journal = resume::read(&first).unwrap_or_else(|e| panic!("after kill at line {lines}: {e}"));
    // Write-ahead: every step that ran on a host has its start on disk.
    let started = starts(&first);
    for host in HOSTS {
        for ran in s.host_file(host, "ran.log") {
            assert!(
                started.get(&(host.to_string(), ran.clone())).copied().unwrap_or(0) >= 1,
                "{host} ran {ran} with no step_started on disk (killed at line {lines})"
            );
        }
    }
    let interrupted: Vec<(String, String)> = journal
        .hosts
        .iter()
        .filter_map(|(h, _, p)| match p {
            Progress::Interrupted { step, .. } => Some((h.clone(), step.clone())),
            _ => None,
        })
        .collect();

    let resumed = s
        .command(&["resume", &journal.session, "--interrupted", "rerun"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&resumed.stdout).into_owned();
    assert_eq!(
        resumed.status.code(),
        Some(0),
        "killed at line {lines}:\n{printed}{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(printed.contains("SUCCEEDED: 5 done"), "{printed}");
    for host in HOSTS {
        let ran = s.host_file(host, "ran.log");
        for step in STEPS {
            let runs = ran.iter().filter(|r| *r == step).count();
            let was_interrupted = interrupted.contains(&(host.to_string(), step.to_string()));
            // A step whose start and end were both on file never runs again; only the one that
            // was in flight may have run twice, because `rerun` was chosen.
            let allowed = if was_interrupted { 1..=2 } else { 1..=1 };
            assert!(allowed.contains(&runs), "{host} ran {step} {runs} times (killed at line {lines}): {ran:?}");
        }
        let last = s.host_file(host, "finished.log").iter().filter(|r| *r == "three").count();
        let rerun = interrupted.contains(&(host.to_string(), "three".to_string()));
        assert!(last == 1 || (rerun && last == 2), "{host} finished its last step {last} times");
    }
    let linked = std::fs::read_to_string(&s.journals()[1]).unwrap();
    assert!(linked.contains(&format!("\"resumed_from\":\"{}\"", journal.session)), "the new session names the old");
    Some(interrupted.len())
}

#[test]
fn a_runner_killed_anywhere_resumes_without_running_a_finished_step_again() {
    // The headless output of this deploy is about 60 lines: kill points spread over it.
    let results: Vec<Option<usize>> = (0..20).map(|n| trial(3 + n * 2)).collect();
    let killed = results.iter().flatten().count();
    assert!(killed >= 18, "the kill points must fall inside the deploy: {results:?}");
    assert!(results.iter().flatten().any(|&mid_step| mid_step > 0), "some trial caught a step in flight: {results:?}");
}

#[test]
fn resume_refuses_a_profile_that_changed_and_needs_a_choice_for_interrupted_hosts() {
    let s = Sandbox::new();
    let (mut deploy, out) = s.deploy_until("-> two");
    let runner = children(deploy.id());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(runner[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _: Vec<_> = out.collect();
    deploy.wait().unwrap();
    let session = resume::read(&s.journals()[0]).unwrap().session;

    let listed = s.command(&["ps"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("INTERRUPTED") && listed.contains(&format!("wavedeck resume {session}")), "{listed}");

    let no_choice = s.command(&["resume", &session]).output().unwrap();
    assert_eq!(no_choice.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_choice.stderr).contains("--interrupted"), "{no_choice:?}");

    let original = std::fs::read_to_string(&s.profile).unwrap();
    std::fs::write(&s.profile, format!("{original}\n# edited\n")).unwrap();
    let changed = s.command(&["resume", &session, "--interrupted", "skip"]).output().unwrap();
    assert_eq!(changed.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&changed.stderr).contains("changed since"), "{changed:?}");

    std::fs::write(&s.profile, original).unwrap();
    let skipped = s.command(&["resume", &session, "--interrupted", "skip"]).output().unwrap();
    let printed = String::from_utf8_lossy(&skipped.stdout).into_owned();
    assert_eq!(skipped.status.code(), Some(0), "{printed}");
    assert!(printed.contains("1 skipped") || printed.contains("skipped"), "{printed}");
    // Once carried on, it is not resumed again.
    let again = s.command(&["resume", &session, "--interrupted", "skip"]).output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already resumed"), "{again:?}");
}

#[test]
fn a_dead_runners_lock_is_reported_stale_with_its_last_step_and_resume_adopts_it() {
    let s = Sandbox::new();
    let profile = s.profile.to_str().unwrap();
    let (mut deploy, out) = s.deploy_until("-> three");
    // The lease names the step the deploy last started once it has been renewed.
    let owner = s.dir.path().join("hosts/test/h1/.wavedeck/lock-test/owner.json");
    let read_owner = || serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&owner).unwrap()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while read_owner()["last_step"].is_null() {
        assert!(std::time::Instant::now() < deadline, "the lease was never renewed: {}", read_owner());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let runner = children(deploy.id());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(runner[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _: Vec<_> = out.collect();
    deploy.wait().unwrap();
    // Ten minutes pass without a heartbeat.
    let mut lease = read_owner();
    let old = (chrono::Utc::now() - chrono::Duration::minutes(10)).to_rfc3339();
    lease["heartbeat_at"] = serde_json::Value::String(old);
    std::fs::write(&owner, lease.to_string()).unwrap();
    let last_step = lease["last_step"].as_str().unwrap().to_string();

    let refused = s.command(&["deploy", profile, "--env", "test", "--release", "2"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(5), "another deploy still needs the lock broken");
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        said.contains("STALE: no heartbeat for 10m") && said.contains(&format!("last step: {last_step}")),
        "{said}"
    );

    let session = resume::read(&s.journals()[0]).unwrap().session;
    assert!(said.contains(&session), "the lock names the session: {said}");
    let resumed = s.command(&["resume", &session, "--interrupted", "rerun"]).output().unwrap();
    assert_eq!(resumed.status.code(), Some(0), "{}", String::from_utf8_lossy(&resumed.stderr));
}
