//! The real `wavedeck` binary, headless, on the demo profile: exit codes, output and the audit
//! file it leaves.
#![allow(clippy::unwrap_used)] // Tests panic on unexpected errors by design.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles/demo.toml");
/// The insight demo; the only test here that deploys it, since its hosts answer HTTP on a fixed
/// port.
const PRICING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles/pricing.toml");

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        Sandbox { dir: tempfile::tempdir().unwrap() }
    }

    fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wavedeck"));
        cmd.args(args)
            .env("WAVEDECK_AUDIT_DIR", self.audit_dir())
            .env("WAVEDECK_LOCAL_ROOT", self.dir.path().join("hosts"))
            .env("USER", "test-operator");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// The records of the single audit file this sandbox produced.
    fn audit(&self) -> Vec<Value> {
        let files: Vec<PathBuf> = std::fs::read_dir(self.audit_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        audit_records(&files[0])
    }
}

fn audit_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {} is not JSON ({e}): {line}", i + 1))
        })
        .collect()
}

fn events<'a>(records: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    records.iter().filter(move |r| r["record"] == "event" && r["event"] == kind)
}

/// The demo profile without its pauses for effect (sleeps in steps, the gap between waves), for
/// tests that deploy many times and look at the outcome, not at the timing.
fn fast_demo(s: &Sandbox, edit: impl Fn(String) -> String) -> PathBuf {
    let demo = std::fs::read_to_string(DEMO)
        .unwrap()
        .replace("sleep 0.5", "true")
        .replace("sleep 0.3", "true")
        .replace("sleep 0.4", "true")
        .replace("pause_between_waves = \"1s\"", "pause_between_waves = \"0s\"");
    let path = s.dir.path().join("fast-demo.toml");
    std::fs::write(&path, edit(demo)).unwrap();
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn plan_is_printed_and_deterministic() {
    let s = Sandbox::new();
    let a = s.run(&["plan", DEMO, "--env", "staging", "--release", "2.4.1"]);
    let b = s.run(&["plan", DEMO, "--env", "staging", "--release", "2.4.1"]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    assert_eq!(a.stdout, b.stdout);
    let out = text(&a.stdout);
    assert!(out.contains("wave 1 (1 host, tolerates 0 failures): stg-web-1"), "{out}");
    assert!(out.contains("wave 2 (3 hosts, tolerates 0 failures): stg-web-2, stg-web-3, stg-web-4"), "{out}");
    assert!(!s.audit_dir().exists(), "a dry run must not start an audited session");
}

#[test]
fn a_clean_deploy_succeeds_and_every_host_and_step_is_audited() {
    let s = Sandbox::new();
    let out = s.run(&["deploy", DEMO, "--env", "dev", "--release", "2.4.1"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("[dev-web-1] GET /healthz -> 200 OK, serving 2.4.1"), "{stdout}");
    assert!(stdout.contains("SUCCEEDED: 3 done, 0 failed"), "{stdout}");

    let records = s.audit();
    let first = &records[0];
    assert_eq!(first["record"], "session_start");
    assert_eq!(first["operator"], "test-operator");
    assert_eq!(first["env"], "dev");
    assert_eq!(first["profile_sha256"].as_str().unwrap().len(), 64);
    let last = records.last().unwrap();
    assert_eq!(
        (last["record"].as_str(), last["outcome"].as_str(), last["exit_code"].as_i64()),
        (Some("session_end"), Some("succeeded"), Some(0))
    );

    let steps = ["stage", "switch", "restart", "healthz", "prune"];
    for host in ["dev-web-1", "dev-web-2", "dev-worker-1"] {
        assert_eq!(events(&records, "host_started").filter(|r| r["host"] == host).count(), 1, "{host}");
        assert!(events(&records, "host_finished").any(|r| r["host"] == host && r["state"] == "done"), "{host}");
        for step in steps {
            let started = events(&records, "step_started").filter(|r| r["host"] == host && r["step"] == step).count();
            let finished = events(&records, "step_finished")
                .filter(|r| r["host"] == host && r["step"] == step && r["result"] == "exited" && r["code"] == 0)
                .count();
            assert_eq!((started, finished), (1, 1), "{host} {step}");
        }
    }
    // Timestamps carry an offset and sequence numbers have no gaps.
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["seq"].as_u64(), Some(i as u64 + 1));
        chrono::DateTime::parse_from_rfc3339(r["ts"].as_str().unwrap()).unwrap();
    }
    // The host really got the release.
    let current = s.dir.path().join("hosts/dev/dev-web-1/current");
    assert_eq!(std::fs::read_link(current).unwrap(), Path::new("releases/2.4.1"));
}

#[test]
fn the_staging_demo_stops_at_the_failure_threshold() {
    let s = Sandbox::new();
    let out = s.run(&["deploy", DEMO, "--env", "staging", "--release", "2.4.1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("stg-web-4        2  FAILED"), "{stdout}");
    assert!(stdout.contains("stg-worker-1     3  not started"), "{stdout}");

    let records = s.audit();
    assert!(events(&records, "threshold_exceeded").any(|r| r["wave"] == 2 && r["failed_hosts"][0] == "stg-web-4"));
    let policy = records.iter().find(|r| r["record"] == "operator_command").unwrap();
    assert_eq!(policy["source"], "policy");
    assert_eq!(policy["command"], "abort");
    assert!(events(&records, "health_sample").any(|r| r["host"] == "stg-web-4" && r["healthy"] == false));
    assert!(!events(&records, "wave_started").any(|r| r["wave"] == 3));
    assert_eq!(records.last().unwrap()["outcome"], "failed");
}

#[test]
fn every_on_failure_policy_stop_exits_1_and_the_audit_says_policy_decided() {
    std::thread::scope(|scope| {
        for action in ["pause", "abort", "rollback"] {
            scope.spawn(move || {
                let s = Sandbox::new();
                let profile =
                    fast_demo(&s, |demo| demo.replace("on_failure = \"pause\"", &format!("on_failure = \"{action}\"")));
                let out = s.run(&["deploy", profile.to_str().unwrap(), "--env", "staging", "--release", "2.4.1"]);
                let stdout = text(&out.stdout);
                assert_eq!(out.status.code(), Some(1), "on_failure = {action}: {stdout}");
                assert!(stdout.contains("\nFAILED: "), "the final table says what the exit code says: {stdout}");
                let files = audit_files(&s);
                let records = audit_records(&files[0]);
                assert_eq!(records.last().unwrap()["outcome"], "failed", "{action}");
                // Who stopped it: the engine itself (abort, rollback) or headless mode's standing
                // order for a pause nobody can resume; never an operator or a signal.
                let commands: Vec<&Value> = records.iter().filter(|r| r["record"] == "operator_command").collect();
                let decided_by_policy = events(&records, "aborted")
                    .all(|r| r["by"] == "policy" || (r["by"] == "command" && !commands.is_empty()))
                    && commands.iter().all(|r| r["source"] == "policy");
                assert!(decided_by_policy, "{action}: {records:#?}");
                assert_eq!(events(&records, "aborted").count(), 1, "{action}");
            });
        }
    });
}

#[test]
fn ctrl_c_aborts_and_the_audit_log_still_ends_the_session() {
    for (signal, name) in [(nix::sys::signal::Signal::SIGINT, "SIGINT"), (nix::sys::signal::Signal::SIGTERM, "SIGTERM")]
    {
        let s = Sandbox::new();
        let mut child = s
            .command(&["deploy", DEMO, "--env", "staging", "--release", "2.4.1"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Wait until the first host is busy, then interrupt.
        for line in lines.by_ref() {
            if line.unwrap().contains("fetched app.bin") {
                break;
            }
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(3), "{name}: {rest:#?}");
        assert!(rest.iter().any(|l| l.contains(&format!("ABORTED: {name} received"))), "{rest:#?}");

        let records = s.audit();
        let command = records.iter().find(|r| r["record"] == "operator_command").unwrap();
        assert_eq!((command["source"].as_str(), command["operator"].as_str()), (Some("signal"), Some("test-operator")));
        assert!(events(&records, "host_finished").any(|r| r["host"] == "stg-web-1" && r["state"] == "cancelled"));
        let finished = events(&records, "deploy_finished").next().unwrap();
        assert_eq!(finished["hosts"].as_array().unwrap().len(), 6);
        let last = records.last().unwrap();
        assert_eq!((last["record"].as_str(), last["outcome"].as_str()), (Some("session_end"), Some("aborted")));
    }
}

#[test]
fn a_protected_environment_needs_yes() {
    let s = Sandbox::new();
    let out = s.run(&["deploy", DEMO, "--env", "production", "--release", "2.4.1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("environment `production` is protected: add --yes"), "{}", text(&out.stderr));
    assert!(!s.audit_dir().exists());
}

#[test]
fn bad_input_is_refused_with_a_location_and_exit_2() {
    let s = Sandbox::new();
    let bad = s.dir.path().join("bad.toml");
    std::fs::write(&bad, "[service]\nname = \"x\"\n\n[plan]\nbatch = \"0%\"\n").unwrap();
    let out = s.run(&["deploy", bad.to_str().unwrap(), "--env", "dev", "--release", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("{}:5:9: batch must be at least 1 host or 1%", bad.display())), "{err}");
    assert!(err.contains("no environments"), "all problems at once: {err}");

    let out = s.run(&["deploy", DEMO, "--env", "qa", "--release", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no environment `qa` in this profile (environments: dev, staging, production)"));

    let out = s.run(&["deploy", DEMO, "--env", "dev", "--release", "1;reboot"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!s.audit_dir().exists(), "nothing starts on bad input");
}

#[test]
fn the_console_without_a_terminal_points_to_headless_mode() {
    let s = Sandbox::new();
    let out = s.run(&[DEMO]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("wavedeck deploy PROFILE --env ENV --release RELEASE"), "{}", text(&out.stderr));
}

/// Starts a headless deploy and returns it once its first host is busy (holding the lock).
fn start_busy_deploy(
    s: &Sandbox,
    env: &str,
) -> (std::process::Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut child =
        s.command(&["deploy", DEMO, "--env", env, "--release", "2.4.1"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("fetched app.bin") {
            break;
        }
    }
    (child, lines)
}

fn audit_files(s: &Sandbox) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(s.audit_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_second_deploy_of_the_same_environment_is_refused_by_the_lock() {
    let s = Sandbox::new();
    let (mut first, rest) = start_busy_deploy(&s, "dev");
    let second = s.run(&["deploy", DEMO, "--env", "dev", "--release", "2.4.2"]);
    assert_eq!(second.status.code(), Some(5), "{}", text(&second.stdout));
    let err = text(&second.stderr);
    assert!(
        err.contains("dev is locked by another deploy: test-operator on") && err.contains("release 2.4.1"),
        "{err}"
    );
    let _: Vec<_> = rest.collect();
    assert_eq!(first.wait().unwrap().code(), Some(0));
    // Released at the end: the next deploy goes through.
    let third = s.run(&["deploy", DEMO, "--env", "dev", "--release", "2.4.3"]);
    assert_eq!(third.status.code(), Some(0), "{}", text(&third.stderr));
    let refused: Vec<Value> = audit_files(&s)
        .iter()
        .flat_map(|f| audit_records(f))
        .filter(|r| r["record"] == "lock_refused" || r["record"] == "lock_released")
        .collect();
    assert_eq!(refused.iter().filter(|r| r["record"] == "lock_refused").count(), 1, "{refused:#?}");
    assert_eq!(refused.iter().filter(|r| r["record"] == "lock_released").count(), 2, "{refused:#?}");
}

#[test]
fn a_rollback_takes_the_same_lock_as_the_deploy_it_would_race() {
    let s = Sandbox::new();
    let fast = fast_demo(&s, |demo| demo);
    let fast = fast.to_str().unwrap();
    assert_eq!(s.run(&["deploy", fast, "--env", "dev", "--release", "1.0"]).status.code(), Some(0));
    assert_eq!(s.run(&["deploy", fast, "--env", "dev", "--release", "2.0"]).status.code(), Some(0));
    // A rollback's first wave is the deploy's last, but the lock is the environment's.
    let (mut busy, rest) = start_busy_deploy(&s, "dev");
    let rollback = s.run(&["rollback", DEMO, "--env", "dev", "--yes"]);
    assert_eq!(rollback.status.code(), Some(5), "{}\n{}", text(&rollback.stdout), text(&rollback.stderr));
    assert!(text(&rollback.stderr).contains("dev is locked by another deploy"), "{}", text(&rollback.stderr));
    let _: Vec<_> = rest.collect();
    assert_eq!(busy.wait().unwrap().code(), Some(0));
}

/// Writes a one-environment (`dev`, one host `h`) local profile with the given steps.
fn one_host_profile(s: &Sandbox, steps: &str) -> PathBuf {
    let path = s.dir.path().join("one-host.toml");
    let head = "[service]\nname = \"svc\"\n[[environments]]\nname = \"dev\"\nhosts = [{ name = \"h\" }]\n";
    std::fs::write(&path, format!("{head}{steps}")).unwrap();
    path
}

#[test]
fn headless_output_shows_terminal_escapes_from_hosts_instead_of_obeying_them() {
    let s = Sandbox::new();
    let steps = r#"[[steps]]
name = "hostile"
run = '''
printf '\033]52;c;aGVsbG8=\007clipboard\n'
printf '\033[2Jcleared\n'
printf '\033]0;title\007titled\n'
printf 'progress 50%%\roverwritten\n'
'''
"#;
    let profile = one_host_profile(&s, steps);
    let out = s.run(&["deploy", profile.to_str().unwrap(), "--env", "dev", "--release", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!out.stdout.contains(&0x1b), "a raw ESC reached the terminal");
    assert!(!out.stdout.contains(&b'\r'), "a raw carriage return reached the terminal");
    let stdout = text(&out.stdout);
    for shown in [
        r"[h] \x1b]52;c;aGVsbG8=\x07clipboard",
        r"[h] \x1b[2Jcleared",
        r"[h] \x1b]0;title\x07titled",
        r"[h] progress 50%\roverwritten",
    ] {
        assert!(stdout.contains(shown), "missing {shown} in:\n{stdout}");
    }
    // The audit log keeps what the host sent, as JSON strings.
    let records = s.audit();
    assert!(events(&records, "output").any(|r| r["line"] == "\u{1b}[2Jcleared"), "{records:#?}");
}

#[test]
fn local_steps_see_an_allowlisted_environment_not_the_operators() {
    let s = Sandbox::new();
    let profile = one_host_profile(&s, "[[steps]]\nname = \"show\"\nrun = \"env | sort\"\n");
    let out = s
        .command(&["deploy", profile.to_str().unwrap(), "--env", "dev", "--release", "1"])
        .env("AWS_SECRET_ACCESS_KEY", "do-not-pass")
        .env("SSH_AUTH_SOCK", "/tmp/agent.sock")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(!stdout.contains("AWS_SECRET_ACCESS_KEY") && !stdout.contains("SSH_AUTH_SOCK"), "{stdout}");
    assert!(stdout.contains("[h] PATH=") && stdout.contains("[h] WAVEDECK_HOST=h"), "{stdout}");
}

/// The processes `pid` started (a headless deploy's runner).
fn children(pid: u32) -> Vec<i32> {
    let list = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    list.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

fn kill_9(pid: i32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
}

#[test]
fn a_killed_headless_deploy_takes_its_runner_down_cleanly() {
    let s = Sandbox::new();
    let (mut first, _) = start_busy_deploy(&s, "dev");
    let runner = children(first.id());
    assert_eq!(runner.len(), 1, "one runner under the headless process");
    kill_9(first.id() as i32);
    first.wait().unwrap();
    // Headless mode's contract: when it goes, the deploy stops; the runner aborts, settles and
    // releases the lock, so the next deploy may start. Attaching follows it to its end (or
    // finds it already gone).
    let session = audit_records(&audit_files(&s)[0])[0]["session"].as_str().unwrap().to_string();
    let watched = s.run(&["attach", &session, "--plain"]);
    let (out, err) = (text(&watched.stdout), text(&watched.stderr));
    assert!(out.contains("== the deploy has ended") || err.contains("cannot connect"), "{out}\n{err}");
    let records: Vec<serde_json::Value> = audit_records(&audit_files(&s)[0]);
    let detached = records.iter().find(|r| r["record"] == "client_detached").expect("the departure is audited");
    assert_eq!(detached["deliberate"], false);
    assert_eq!(detached["on_detach"], "abort");
    assert_eq!(records.last().unwrap()["outcome"], "aborted");
    assert!(records.iter().any(|r| r["record"] == "lock_released"), "{records:#?}");
    let after = s.run(&["deploy", DEMO, "--env", "dev", "--release", "2.4.2"]);
    assert_eq!(after.status.code(), Some(0), "{}", text(&after.stderr));
}

#[test]
fn a_lock_left_by_a_killed_deploy_is_reported_and_can_be_broken() {
    let s = Sandbox::new();
    let (mut first, _) = start_busy_deploy(&s, "dev");
    // The runner owns the lock: killed, it leaves it behind (and the headless front end ends).
    let runner = children(first.id());
    assert_eq!(runner.len(), 1);
    kill_9(runner[0]);
    first.wait().unwrap();

    let refused = s.run(&["deploy", DEMO, "--env", "dev", "--release", "2.4.2"]);
    assert_eq!(refused.status.code(), Some(5));
    let err = text(&refused.stderr);
    assert!(err.contains("ago)") && err.contains("wavedeck unlock"), "{err}");

    let without_yes = s.command(&["unlock", DEMO, "--env", "dev"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(without_yes.status.code(), Some(2), "no confirmation, no break");
    let unlocked = s.run(&["unlock", DEMO, "--env", "dev", "--yes"]);
    assert_eq!(unlocked.status.code(), Some(0), "{}", text(&unlocked.stderr));
    assert!(text(&unlocked.stdout).contains("dev is locked by test-operator on"), "{}", text(&unlocked.stdout));
    let broken = audit_files(&s).iter().flat_map(|f| audit_records(f)).find(|r| r["record"] == "lock_broken").unwrap();
    assert_eq!(broken["holder"]["operator"], "test-operator");
    assert_eq!(broken["holder"]["release"], "2.4.1");

    let after = s.run(&["deploy", DEMO, "--env", "dev", "--release", "2.4.2"]);
    assert_eq!(after.status.code(), Some(0), "{}", text(&after.stderr));
}

#[test]
fn excluded_hosts_are_left_alone_and_audited() {
    let s = Sandbox::new();
    let out = s.run(&["deploy", DEMO, "--env", "dev", "--release", "2.4.1", "--exclude", "dev-web-2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("dev-web-2        2  skipped"), "{stdout}");
    assert!(!s.dir.path().join("hosts/dev/dev-web-2/current").exists());
    let records = s.audit();
    let command = records.iter().find(|r| r["record"] == "operator_command").unwrap();
    assert_eq!(
        (command["command"].as_str(), command["source"].as_str(), command["host"].as_str()),
        (Some("exclude"), Some("flag"), Some("dev-web-2"))
    );

    let bad = s.run(&["deploy", DEMO, "--env", "dev", "--release", "2.4.1", "--exclude", "web-99"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("--exclude web-99: no such host"), "{}", text(&bad.stderr));
}

#[test]
fn headless_manual_gates_fail_unless_promote_is_given() {
    let s = Sandbox::new();
    let profile = s.dir.path().join("gated.toml");
    std::fs::write(
        &profile,
        "[service]\nname = \"gated\"\n[plan]\ncanary = 1\nbatch = 1\ngate = \"manual\"\n\
         [[environments]]\nname = \"qa\"\nhosts = [{ name = \"a\" }, { name = \"b\" }]\n\
         [[steps]]\nname = \"work\"\nrun = \"echo working\"\n",
    )
    .unwrap();
    let path = profile.to_str().unwrap();
    let stopped = s.run(&["deploy", path, "--env", "qa", "--release", "1"]);
    assert_eq!(stopped.status.code(), Some(1), "{}", text(&stopped.stdout));
    assert!(
        text(&stopped.stdout).contains("manual gate and headless mode runs without --promote"),
        "{}",
        text(&stopped.stdout)
    );
    let promoted = s.run(&["deploy", path, "--env", "qa", "--release", "2", "--promote"]);
    assert_eq!(promoted.status.code(), Some(0), "{}", text(&promoted.stdout));
    assert!(text(&promoted.stdout).contains("== wave 1 promoted"), "{}", text(&promoted.stdout));
}

#[test]
fn rollback_returns_the_hosts_the_last_deploy_changed_last_wave_first() {
    let s = Sandbox::new();
    let demo = fast_demo(&s, |d| d);
    let demo = demo.to_str().unwrap();
    assert_eq!(s.run(&["deploy", demo, "--env", "dev", "--release", "1.0"]).status.code(), Some(0));
    assert_eq!(
        s.run(&["deploy", demo, "--env", "dev", "--release", "2.0", "--exclude", "dev-worker-1"]).status.code(),
        Some(0)
    );

    let out = s.run(&["rollback", demo, "--env", "dev", "--yes"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("dev-web-1        2.0 -> 1.0") && stdout.contains("dev-web-2        2.0 -> 1.0"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("dev-worker-1     2.0")
            && stdout.contains("dev-worker-1     left alone: the deploy never started on it"),
        "an excluded host did not change, is not rolled back, and the preview says why: {stdout}"
    );
    for host in ["dev-web-1", "dev-web-2", "dev-worker-1"] {
        let current = std::fs::read_link(s.dir.path().join(format!("hosts/dev/{host}/current"))).unwrap();
        assert_eq!(current, Path::new("releases/1.0"), "{host}");
    }
    // Wave 2 (dev-web-2) went back before wave 1 (dev-web-1).
    let web2 = stdout.find("[dev-web-2] rolled back").unwrap();
    let web1 = stdout.find("[dev-web-1] rolled back").unwrap();
    assert!(web2 < web1, "{stdout}");

    let again = s.run(&["rollback", demo, "--env", "dev", "--yes"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("already rolled back"), "{}", text(&again.stderr));
}

#[test]
fn rollback_returns_each_host_to_where_the_deploy_found_it_and_leaves_unchanged_hosts_alone() {
    let s = Sandbox::new();
    // A check before `switch` fails on dev-web-2 for 3.0 (and everywhere for 4.0), so those
    // hosts are never activated; wave 2 tolerates one failure so dev-worker-1 finishes.
    let precheck = "[[steps]]\nname = \"precheck\"\n\
        run = \"[ '{{ host }}/{{ release }}' != 'dev-web-2/3.0' ] && [ '{{ release }}' != '4.0' ] || { echo 'disk full' >&2; exit 1; }\"\n\n\
        [[steps]]\nname = \"switch\"";
    let profile = fast_demo(&s, |demo| {
        demo.replacen("max_failures = 0", "max_failures = 1", 1).replace("[[steps]]\nname = \"switch\"", precheck)
    });
    let path = profile.to_str().unwrap();
    let current = |host: &str| std::fs::read_link(s.dir.path().join(format!("hosts/dev/{host}/current"))).unwrap();
    for release in ["1.0", "2.0"] {
        assert_eq!(s.run(&["deploy", path, "--env", "dev", "--release", release]).status.code(), Some(0));
    }
    let r3 = s.run(&["deploy", path, "--env", "dev", "--release", "3.0"]);
    assert_eq!(r3.status.code(), Some(1), "{}", text(&r3.stdout));
    assert_eq!(current("dev-web-2"), Path::new("releases/2.0"), "the failed host was never activated");

    let out = s.run(&["rollback", path, "--env", "dev", "--yes"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", text(&out.stderr));
    // The preview, before anything ran, says where each host really goes.
    let preview = &stdout[..stdout.find("== deploying").unwrap()];
    assert!(preview.contains("dev-web-1        3.0 -> 2.0"), "{preview}");
    assert!(preview.contains("dev-worker-1     3.0 -> 2.0"), "{preview}");
    assert!(preview.contains("dev-web-2        left alone: this deploy did not change it"), "{preview}");
    assert!(
        preview.contains("2 hosts go back in 2 waves, last deployed first; 1 left alone"),
        "the counts are the list's: {preview}"
    );
    for host in ["dev-web-1", "dev-web-2", "dev-worker-1"] {
        assert_eq!(current(host), Path::new("releases/2.0"), "{host}: {stdout}");
    }

    // A deploy that changed nothing: its rollback does nothing and says so.
    let r4 = s.run(&["deploy", path, "--env", "dev", "--release", "4.0"]);
    assert_eq!(r4.status.code(), Some(1));
    let nothing = s.run(&["rollback", path, "--env", "dev", "--yes"]);
    assert_eq!(nothing.status.code(), Some(2));
    let err = text(&nothing.stderr);
    assert!(err.contains("changed no host that can be returned: nothing to roll back"), "{err}");
    for host in ["dev-web-1", "dev-web-2", "dev-worker-1"] {
        assert_eq!(current(host), Path::new("releases/2.0"), "{host}");
    }
}

#[test]
fn a_hostile_rollback_target_is_refused_and_never_reaches_a_shell_or_the_log_unmasked() {
    let s = Sandbox::new();
    let profile = s.dir.path().join("hostile-target.toml");
    let source = "rollback_target = \"cat target.txt\"\n[service]\nname = \"svc\"\n[secrets]\ntok = { env = \"TOK\" }\n\
        [[environments]]\nname = \"dev\"\nhosts = [{ name = \"h\" }]\n\
        [[steps]]\nname = \"deploy\"\nrun = \"echo {{ release }} > deployed\"\n\
        [[rollback]]\nname = \"back\"\nrun = \"echo back to {{ release }}\"\n";
    std::fs::write(&profile, source).unwrap();
    let path = profile.to_str().unwrap();
    let run = |args: &[&str]| s.command(args).env("TOK", "s3cretTOKEN").output().unwrap();
    assert_eq!(run(&["deploy", path, "--env", "dev", "--release", "2.0"]).status.code(), Some(0));
    let host = s.dir.path().join("hosts/dev/h");
    std::fs::write(host.join("target.txt"), "1.0;touch INJECTED;echo s3cretTOKEN\u{1b}[2J\n").unwrap();

    let out = run(&["rollback", path, "--env", "dev", "--yes"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("unusable release name"), "{stderr}");
    assert!(!host.join("INJECTED").exists(), "the target ran as a command");
    assert!(!out.stderr.contains(&0x1b), "a raw escape reached the terminal: {stderr}");
    let everything = format!(
        "{stdout}{stderr}{}",
        audit_files(&s).iter().map(|f| std::fs::read_to_string(f).unwrap()).collect::<String>()
    );
    assert!(!everything.contains("s3cretTOKEN"), "the secret leaked: {everything}");
}

#[test]
fn redeploying_the_same_release_skips_what_is_done() {
    let s = Sandbox::new();
    let demo = fast_demo(&s, |d| d);
    let demo = demo.to_str().unwrap();
    assert_eq!(s.run(&["deploy", demo, "--env", "dev", "--release", "3.0"]).status.code(), Some(0));
    let again = s.run(&["deploy", demo, "--env", "dev", "--release", "3.0"]);
    let stdout = text(&again.stdout);
    assert_eq!(again.status.code(), Some(0), "{stdout}");
    for host in ["dev-web-1", "dev-web-2", "dev-worker-1"] {
        assert!(stdout.contains(&format!("[{host}] -- stage skipped")), "{stdout}");
        assert!(stdout.contains(&format!("[{host}] -- switch skipped: 3.0 is already current")), "{stdout}");
    }
    let files = audit_files(&s);
    let records = audit_records(files.last().unwrap());
    let skipped = records.iter().filter(|r| r["event"] == "step_finished" && r["result"] == "skipped").count();
    assert_eq!(skipped, 6, "stage and switch on three hosts");
}

#[test]
fn the_production_demo_stops_when_a_host_goes_unhealthy_during_soak() {
    let s = Sandbox::new();
    let out = s.run(&["deploy", DEMO, "--env", "production", "--release", "5.0", "--yes"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("== wave 2 went unhealthy during soak: prod-web-03"), "{stdout}");
    let records = s.audit();
    let soak = events(&records, "soak_finished").find(|r| r["wave"] == 2).unwrap();
    assert_eq!(soak["unhealthy"], serde_json::json!(["prod-web-03"]));
    assert!(events(&records, "health_changed").any(|r| r["host"] == "prod-web-03" && r["healthy"] == false));
    let threshold = events(&records, "threshold_exceeded").next().unwrap();
    assert_eq!((threshold["wave"].as_u64(), threshold["failed_hosts"][0].as_str()), (Some(2), Some("prod-web-03")));
    assert!(events(&records, "paused").any(|r| r["cause"] == "failure_threshold"), "the audit log says why it stopped");
    assert!(!events(&records, "wave_started").any(|r| r["wave"] == 3));
}

#[test]
fn a_failing_migration_in_the_demo_stops_before_any_host_is_touched() {
    let s = Sandbox::new();
    let profile = s.dir.path().join("demo-failing-migration.toml");
    let demo = std::fs::read_to_string(DEMO).unwrap().replace("migration = \"ok\"", "migration = \"fail\"");
    std::fs::write(&profile, demo).unwrap();
    let out = s.run(&["deploy", profile.to_str().unwrap(), "--env", "dev", "--release", "6.0"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("run-once step migrate FAILED on dev-web-1"), "{stdout}");
    assert!(stdout.contains("relation \"orders_v2\" already exists"), "{stdout}");
    let records = s.audit();
    assert!(!events(&records, "wave_started").any(|_| true));
    assert!(!events(&records, "host_started").any(|_| true));
    for host in ["dev-web-1", "dev-web-2", "dev-worker-1"] {
        assert!(!s.dir.path().join(format!("hosts/dev/{host}/current")).exists(), "{host} was touched");
    }
}

#[test]
fn on_failure_rollback_takes_the_changed_hosts_back() {
    let s = Sandbox::new();
    let profile = fast_demo(&s, |demo| {
        demo.replace("on_failure = \"pause\"", "on_failure = \"rollback\"").replace(
            "{ name = \"dev-web-2\", address = \"127.0.0.1\", labels = [\"web\"] }",
            "{ name = \"dev-web-2\", address = \"127.0.0.1\", labels = [\"web\"], vars = { fail_on = \"health\" } }",
        )
    });
    let path = profile.to_str().unwrap();
    assert_eq!(
        s.run(&["deploy", path, "--env", "dev", "--release", "1.0", "--exclude", "dev-web-2"]).status.code(),
        Some(0)
    );

    let out = s.run(&["deploy", path, "--env", "dev", "--release", "2.0"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("on_failure = \"rollback\": rolling back"), "{stdout}");
    assert!(stdout.contains("dev-web-1        2.0 -> 1.0"), "{stdout}");
    for host in ["dev-web-1", "dev-worker-1"] {
        let current = std::fs::read_link(s.dir.path().join(format!("hosts/dev/{host}/current"))).unwrap();
        assert_eq!(current, Path::new("releases/1.0"), "{host}: {stdout}");
    }
    let modes: Vec<String> =
        audit_files(&s).iter().map(|f| audit_records(f)[0]["mode"].as_str().unwrap().to_string()).collect();
    assert_eq!(modes, ["headless", "headless", "rollback"]);
}

#[test]
fn the_readme_profile_reference_is_a_valid_profile() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## Profile reference").unwrap()..];
    let start = section.find("```toml\n").unwrap() + "```toml\n".len();
    let example = &section[start..start + section[start..].find("```").unwrap()];
    let s = Sandbox::new();
    let path = s.dir.path().join("reference.toml");
    std::fs::write(&path, example).unwrap();
    // The template its `config` step renders.
    std::fs::write(s.dir.path().join("app.conf.j2"), "listen {{ listen }}\n").unwrap();
    let out = s
        .command(&["plan", path.to_str().unwrap(), "--env", "production"])
        .env("SHOPFRONT_TOKEN", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn audit_verify_says_intact_for_a_deploys_log_and_names_an_edit_with_its_seq() {
    let s = Sandbox::new();
    let demo = fast_demo(&s, |d| d);
    assert_eq!(s.run(&["deploy", demo.to_str().unwrap(), "--env", "dev", "--release", "1.0"]).status.code(), Some(0));
    let file = audit_files(&s).pop().unwrap();
    let out = s.run(&["audit", "verify", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains(": intact, "), "{}", text(&out.stdout));

    // One byte of one output line changed afterwards.
    let original = std::fs::read_to_string(&file).unwrap();
    let (n, line) = original.lines().enumerate().find(|(_, l)| l.contains("\"event\":\"output\"")).unwrap();
    let seq = serde_json::from_str::<Value>(line).unwrap()["seq"].as_u64().unwrap();
    let edited: String = original
        .lines()
        .enumerate()
        .map(
            |(i, l)| {
                if i == n { format!("{}\n", l.replacen("\"line\":\"", "\"line\":\"x", 1)) } else { format!("{l}\n") }
            },
        )
        .collect();
    std::fs::write(&file, edited).unwrap();
    let out = s.run(&["audit", "verify", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains(&format!("NOT INTACT: edited at seq {seq}")), "{}", text(&out.stdout));
}

/// `audit show` of a run, with what differs between runs (times, durations, the machine, the
/// profile's path) written as placeholders.
fn normalised_show(s: &Sandbox, args: &[&str]) -> String {
    let out = s.run(&[&["audit", "show"], args].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let machine = wavedeck::sys::machine_name();
    text(&out.stdout)
        .lines()
        .map(|l| {
            let l =
                if l.starts_with(|c: char| c.is_ascii_digit()) { format!("TIME{}", &l[23..]) } else { l.to_string() };
            let l = l.replace(&format!("test-operator@{machine}"), "test-operator@MACHINE");
            let l = l.replace(&s.dir.path().display().to_string(), "DIR");
            // "after 0.3s" → "after N.Ns"
            let mut out = String::new();
            let mut rest = l.as_str();
            while let Some(i) = rest.find("after ") {
                out.push_str(&rest[..i + 6]);
                rest = &rest[i + 6..];
                let end = rest.find('s').unwrap_or(0);
                if rest[..end].chars().all(|c| c.is_ascii_digit() || c == '.') && end > 0 {
                    out.push_str("N.N");
                    rest = &rest[end..];
                }
            }
            out.push_str(rest);
            out
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn audit_show_tells_the_staging_demo_as_a_timeline_matching_its_golden_file() {
    let s = Sandbox::new();
    let demo = fast_demo(&s, |d| d);
    let out = s.run(&["deploy", demo.to_str().unwrap(), "--env", "staging", "--release", "3.0"]);
    assert_eq!(out.status.code(), Some(1), "the threshold stops it");
    // The failing host's story is in a fixed order (the others interleave with it).
    let shown = normalised_show(&s, &["--env", "staging", "--host", "stg-web-4"]);
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/audit_show_staging_stg-web-4.txt");
    if std::env::var_os("GOLDEN_UPDATE").is_some() {
        std::fs::write(golden, format!("{shown}\n")).unwrap();
    }
    assert_eq!(shown.trim_end(), std::fs::read_to_string(golden).unwrap().trim_end(), "GOLDEN_UPDATE=1 rewrites it");
    // The whole session: the threshold, and the abort with its reason and who decided.
    let all = normalised_show(&s, &["--env", "staging"]);
    assert!(all.contains("wave 2: 1 host failed or went unhealthy, more than the 0 allowed: stg-web-4"), "{all}");
    assert!(all.contains("(policy via test-operator@MACHINE pid"), "{all}");
    assert!(all.contains("abort, because: wave 2"), "{all}");
    let listed = text(&s.run(&["audit", "ls"]).stdout);
    assert!(
        listed.lines().any(|l| l.contains("shopfront") && l.contains("staging") && l.contains("failed")),
        "{listed}"
    );
}

#[test]
fn completions_and_the_manual_page_come_from_the_commands_themselves() {
    let s = Sandbox::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = s.run(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = text(&out.stdout);
        assert!(
            script.contains("replay") && script.contains("audit") && script.contains("verify"),
            "{shell}: {script}"
        );
    }
    let man = s.run(&["man"]);
    assert_eq!(man.status.code(), Some(0));
    let page = text(&man.stdout);
    assert!(page.contains(".TH wavedeck 1") && page.contains("deploy"), "{page}");
    assert_eq!(s.run(&["completions", "tcsh"]).status.code(), Some(2), "an unknown shell is refused");
}

#[test]
fn the_pricing_demo_names_its_odd_host_and_stops_when_new_hosts_answer_slower_than_old_ones() {
    let s = Sandbox::new();
    let out = s.run(&["deploy", PRICING, "--env", "eu-west", "--release", "2.0"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "== wave 2: only some hosts printed \"WARN /var is 91% full: log rotation is behind\" in stage (stderr): \
             1 of 3 hosts, eu-web-03"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("== wave 2 worse than the old release (lb): new hosts' p95 2"), "{stdout}");
    let records = s.audit();
    let outliers = events(&records, "output_outliers").next().unwrap();
    assert_eq!(outliers["groups"][0]["hosts"], serde_json::json!(["eu-web-03"]));
    assert_eq!(outliers["groups"][0]["shape"], "WARN /var is <n>% full: log rotation is behind");
    let verdict = events(&records, "analysis_failed").next().unwrap();
    assert_eq!((verdict["wave"].as_u64(), verdict["check"].as_str()), (Some(2), Some("lb")));
    assert!(verdict["reason"].as_str().unwrap().ends_with("(4 new, 8 old hosts)"), "{verdict}");
    assert!(events(&records, "paused").any(|r| r["cause"] == "analysis"), "the audit log says why it stopped");
    // The baseline was there before any host was touched: all twelve answered as old.
    assert!(events(&records, "health_compared").any(|r| r["new"]["hosts"] == 0 && r["old"]["hosts"] == 12));
    assert!(!events(&records, "wave_started").any(|r| r["wave"] == 3));
}

/// Requests a test server received: (path, body).
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// A webhook receiver on loopback: answers 503 to its first request and 200 after, and keeps
/// each request's path and body.
fn webhook_receiver() -> (u16, Received) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = got.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0;
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header.trim().is_empty() {
                    break;
                }
                if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_string();
            kept.lock().unwrap().push((path, String::from_utf8_lossy(&body).into_owned()));
            let status = if n == 0 { "503 Service Unavailable" } else { "200 OK" };
            let _ = stream
                .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
        }
    });
    (port, got)
}

#[test]
fn webhooks_hear_the_deploy_with_retries_and_a_dead_one_fails_nothing_but_its_record() {
    let s = Sandbox::new();
    let (port, got) = webhook_receiver();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let profile = fast_demo(&s, |demo| {
        demo.replace(
            "[releases]",
            &format!(
                "[secrets]\nhook = {{ env = \"WAVEDECK_TEST_HOOK\" }}\n\n\
                 [[notify]]\nname = \"chat\"\nkind = \"slack\"\nurl = \"http://127.0.0.1:{port}/hooks/{{{{ hook }}}}\"\n\
                 on = [\"started\", \"finished\"]\n\n\
                 [[notify]]\nname = \"gone\"\nurl = \"http://127.0.0.1:{dead}/{{{{ env }}}}\"\non = [\"finished\"]\n\n\
                 [releases]"
            ),
        )
    });
    let out = s
        .command(&["deploy", profile.to_str().unwrap(), "--env", "dev", "--release", "7.0"])
        .env("WAVEDECK_TEST_HOOK", "t0psecret-hook")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "a webhook that is down fails nothing\n{}", text(&out.stdout));
    let got = got.lock().unwrap().clone();
    // The first message was refused once and sent again: three requests for two messages.
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(got.iter().all(|(path, _)| path == "/hooks/t0psecret-hook"), "the real URL is used: {got:#?}");
    let texts: Vec<String> = got
        .iter()
        .map(|(_, body)| serde_json::from_str::<Value>(body).unwrap()["text"].as_str().unwrap().to_string())
        .collect();
    assert!(
        texts[0].starts_with("*wavedeck* shopfront 7.0 → dev started: deploying shopfront 7.0 to dev"),
        "{texts:?}"
    );
    assert!(texts[2].starts_with("*wavedeck* shopfront 7.0 → dev finished: SUCCEEDED: 3/3 hosts done"), "{texts:?}");

    let file = std::fs::read_to_string(audit_files(&s).last().unwrap()).unwrap();
    assert!(!file.contains("t0psecret"), "the hook's secret stays out of the audit log");
    let records = audit_records(audit_files(&s).last().unwrap());
    let sent: Vec<&Value> = records.iter().filter(|r| r["record"] == "notify_sent").collect();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_eq!((sent[0]["on"].as_str(), sent[0]["attempts"].as_u64()), (Some("started"), Some(2)));
    assert_eq!(sent[0]["url"], format!("http://127.0.0.1:{port}/hooks/******"));
    let failed = records.iter().find(|r| r["record"] == "notify_failed").unwrap();
    assert_eq!((failed["target"].as_str(), failed["attempts"].as_u64()), (Some("gone"), Some(4)));
    // Audited before the session's end, which stays the last line.
    assert_eq!(records.last().unwrap()["record"], "session_end");
}

/// The samples of a metrics file in the text format: `name{labels}` → value; every family has
/// its HELP and TYPE before its samples, and the file ends with `# EOF`.
fn metrics(path: &Path) -> std::collections::BTreeMap<String, f64> {
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(text.lines().last(), Some("# EOF"), "{text}");
    let mut typed = std::collections::BTreeSet::new();
    let mut samples = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split(' ');
            typed.insert(words.next().unwrap().to_string());
            assert_eq!(words.next(), Some("gauge"), "{line}");
        } else if !line.starts_with('#') {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let family = series.split('{').next().unwrap();
            assert!(typed.contains(family), "{family} has no TYPE before its samples:\n{text}");
            assert!(samples.insert(series.to_string(), value.parse::<f64>().unwrap()).is_none(), "{series} twice");
        }
    }
    samples
}

#[test]
fn a_metrics_file_keeps_each_environments_last_deploy_for_prometheus() {
    let s = Sandbox::new();
    let profile = fast_demo(&s, |demo| demo);
    let file = s.dir.path().join("wavedeck.prom");
    let deploy = |env: &str| {
        let args = ["deploy", profile.to_str().unwrap(), "--env", env, "--release", "3.0", "--metrics-file"];
        s.command(&args).arg(&file).output().unwrap()
    };
    assert_eq!(deploy("dev").status.code(), Some(0));
    let m = metrics(&file);
    let dev = "service=\"shopfront\",env=\"dev\"";
    assert_eq!(m[&format!("wavedeck_deploy_state{{{dev},state=\"succeeded\"}}")], 1.0);
    assert_eq!(m[&format!("wavedeck_deploy_state{{{dev},state=\"running\"}}")], 0.0);
    assert_eq!(m[&format!("wavedeck_deploy_hosts{{{dev},state=\"done\"}}")], 3.0);
    assert!(m[&format!("wavedeck_deploy_duration_seconds{{{dev}}}")] > 0.0);
    assert!(m.contains_key(&format!("wavedeck_wave_duration_seconds{{{dev},wave=\"2\"}}")), "{m:#?}");
    let succeeded = m[&format!("wavedeck_last_success_timestamp_seconds{{{dev}}}")];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - succeeded).abs() < 120.0, "{succeeded} vs {now}");

    // Staging fails at its threshold: its own series say so, and dev's stay as they were.
    assert_eq!(deploy("staging").status.code(), Some(1));
    let m = metrics(&file);
    let staging = "service=\"shopfront\",env=\"staging\"";
    assert_eq!(m[&format!("wavedeck_deploy_state{{{staging},state=\"failed\"}}")], 1.0);
    assert_eq!(m[&format!("wavedeck_deploy_hosts{{{staging},state=\"failed\"}}")], 1.0);
    assert!(!m.contains_key(&format!("wavedeck_last_success_timestamp_seconds{{{staging}}}")));
    assert_eq!(m[&format!("wavedeck_last_success_timestamp_seconds{{{dev}}}")], succeeded);
    assert_eq!(m[&format!("wavedeck_deploy_state{{{dev},state=\"succeeded\"}}")], 1.0);
    // Written by rename: no temporary file is left beside it.
    let left: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn output_json_is_the_event_stream_in_the_audit_logs_schema_and_nothing_else_on_stdout() {
    let s = Sandbox::new();
    let profile = fast_demo(&s, |demo| demo);
    let out = s.run(&["deploy", profile.to_str().unwrap(), "--env", "staging", "--release", "4.0", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(lines.first().unwrap()["event"], "deploy_started");
    assert_eq!(lines.last().unwrap()["event"], "deploy_finished");
    assert!(text(&out.stderr).contains("audit log:"), "what is said besides goes to stderr");
    // The same events, in the same order and words, as the audit log's event records.
    let audited: Vec<Value> = audit_records(audit_files(&s).last().unwrap())
        .into_iter()
        .filter(|r| r["record"] == "event")
        .map(|mut r| {
            let r = r.as_object_mut().unwrap();
            r.remove("seq");
            r.remove("prev");
            Value::Object(r.clone())
        })
        .collect();
    assert_eq!(lines, audited);
}

/// The subcommands a `--help` lists.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn every_subcommands_help_ends_with_an_example_of_itself() {
    let s = Sandbox::new();
    let top = text(&s.run(&["--help"]).stdout);
    let mut commands: Vec<Vec<String>> = subcommands(&top).into_iter().map(|c| vec![c]).collect();
    assert!(commands.len() >= 12, "{top}");
    let audit = text(&s.run(&["audit", "--help"]).stdout);
    commands.extend(subcommands(&audit).into_iter().map(|c| vec!["audit".to_string(), c]));
    for command in commands {
        let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
        args.push("--help");
        let help = text(&s.run(&args).stdout);
        let example = format!("Examples:\n  wavedeck {}", command.join(" "));
        assert!(help.contains(&example), "`wavedeck {}` has no example:\n{help}", command.join(" "));
    }
}

#[test]
fn hosts_from_ansible_inventories_in_ini_and_yaml_plan_as_the_golden_files_say() {
    let s = Sandbox::new();
    let profile = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/inventory/web.toml");
    for (env, golden) in [("prod-ini", "plan_inventory_ini.txt"), ("prod-yaml", "plan_inventory_yaml.txt")] {
        let out = s.run(&["plan", profile, "--env", env, "--release", "1.0"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let shown = text(&out.stdout);
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(golden);
        if std::env::var_os("GOLDEN_UPDATE").is_some() {
            std::fs::write(&golden, &shown).unwrap();
        }
        assert_eq!(
            shown.trim_end(),
            std::fs::read_to_string(golden).unwrap().trim_end(),
            "GOLDEN_UPDATE=1 rewrites it"
        );
        // The list variable is named once, as a warning.
        let stderr = text(&out.stderr);
        assert_eq!(stderr.matches("left out: packages").count(), 2, "{stderr}");
    }
}
