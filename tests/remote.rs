//! Watching a running deploy from another terminal through its control socket: `wavedeck ps`,
//! `wavedeck attach --observe`, and a peer of another uid refused.
#![allow(clippy::unwrap_used)] // Tests panic on unexpected errors by design.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles/demo.toml");

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::DirBuilder::new().mode(0o700).create(dir.path().join("run")).unwrap();
        Sandbox { dir }
    }

    fn runtime(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wavedeck"));
        cmd.args(args)
            .env("WAVEDECK_AUDIT_DIR", self.dir.path().join("audit"))
            .env("WAVEDECK_LOCAL_ROOT", self.dir.path().join("hosts"))
            .env("WAVEDECK_RUNTIME_DIR", self.runtime());
        cmd
    }

    /// Control sockets in the runtime directory (beside it: the runners' own log).
    fn sockets(&self) -> usize {
        std::fs::read_dir(self.runtime())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "sock"))
            .count()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Starts a demo deploy headless and returns it with its session id, once it has begun.
    fn busy_deploy(
        &self,
        profile: &str,
        env: &str,
    ) -> (std::process::Child, std::io::Lines<BufReader<std::process::ChildStdout>>, String) {
        self.deploy_until(&["deploy", profile, "--env", env, "--release", "2.4.1"], "fetched app.bin")
    }

    /// Starts `wavedeck ARGS` (a headless deploy) and reads its output up to a line containing
    /// `until`; returns it with the rest of its output and its session id.
    fn deploy_until(
        &self,
        args: &[&str],
        until: &str,
    ) -> (std::process::Child, std::io::Lines<BufReader<std::process::ChildStdout>>, String) {
        let mut child = self.command(args).stdout(Stdio::piped()).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut session = None;
        let mut seen = String::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            seen.push_str(&line);
            seen.push('\n');
            if let Some(rest) = line.strip_prefix("watch from another terminal: wavedeck attach ") {
                session = rest.split_whitespace().next().map(str::to_string);
            }
            if line.contains(until) {
                return (child, lines, session.expect("the deploy names its session"));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("no {until:?} in:\n{seen}");
    }
}

use std::os::unix::fs::DirBuilderExt;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn another_terminal_lists_the_deploy_and_watches_it_from_the_start_to_the_end() {
    let s = Sandbox::new();
    let (mut deploy, rest, session) = s.busy_deploy(DEMO, "staging");

    let ps = s.run(&["ps"]);
    let listed = text(&ps.stdout);
    assert_eq!(ps.status.code(), Some(0), "{listed}");
    assert!(listed.contains(&session) && listed.contains("shopfront") && listed.contains("staging"), "{listed}");

    let watched = s.run(&["attach", &session, "--plain"]);
    let stdout = text(&watched.stdout);
    assert_eq!(watched.status.code(), Some(0), "{stdout}\n{}", text(&watched.stderr));
    // What happened before it attached, then what happened after, to the end.
    assert!(stdout.contains("== run-once steps on stg-web-1: migrate"), "{stdout}");
    assert!(stdout.contains("[stg-web-1]   fetched app.bin"), "{stdout}");
    assert!(stdout.contains("[stg-web-4] !! FAILED"), "{stdout}");
    assert!(stdout.trim_end().ends_with("== the deploy has ended"), "{stdout}");

    let _: Vec<_> = rest.collect();
    assert_eq!(deploy.wait().unwrap().code(), Some(1));
    // The socket goes with the deploy.
    assert_eq!(s.sockets(), 0);
    assert_eq!(text(&s.run(&["ps"]).stdout).trim(), "no deploys running");
}

#[test]
fn an_observer_cannot_steer_and_a_stranger_is_refused() {
    let s = Sandbox::new();
    // Held between its waves for an hour: the deploy stays up while the test talks to it.
    let held = s.dir.path().join("held.toml");
    let demo =
        std::fs::read_to_string(DEMO).unwrap().replace("pause_between_waves = \"1s\"", "pause_between_waves = \"1h\"");
    std::fs::write(&held, demo).unwrap();
    let (mut deploy, rest, session) = s.busy_deploy(held.to_str().unwrap(), "dev");
    let socket = s.runtime().join(format!("{session}.sock"));
    let answer =
        talk_as_myself(&socket, &[r#"{"hello":{"version":2,"client":"test","from_seq":18446744073709551615}}"#], 1);
    assert!(answer.contains(r#""welcome""#) && answer.contains(r#""state":"#), "{answer}");
    // Asking for control while the headless deploy has it: the client observes, and its command
    // is refused with the reason. (From far in the future: nothing to replay.)
    let answer = talk_as_myself(
        &socket,
        &[
            r#"{"hello":{"version":2,"client":"test","from_seq":1000000000,"role":"control"}}"#,
            r#"{"command":{"id":7,"command":{"command":"pause"}}}"#,
        ],
        2,
    );
    assert!(answer.contains(r#""role":"observe""#), "{answer}");
    assert!(answer.contains(r#"{"refused":{"id":7,"reason":""#) && answer.contains("take over"), "{answer}");

    if nix::unistd::getuid().is_root() {
        // Open the way to the socket for everyone: the deploy must still refuse a stranger by
        // the peer's credentials alone.
        use std::os::unix::fs::PermissionsExt;
        let open = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        for dir in s.runtime().ancestors().take(2) {
            open(dir, 0o711);
        }
        open(&socket, 0o666);
        // CI creates a user for this (.ci/run); elsewhere `nobody` stands in.
        let stranger = if Command::new("id").arg("wavedeck-stranger").output().is_ok_and(|o| o.status.success()) {
            "wavedeck-stranger"
        } else {
            "nobody"
        };
        let answer = talk_as(stranger, &socket, &[r#"{"hello":{"version":2,"client":"x","from_seq":1}}"#]);
        assert!(answer.contains("may not attach to it") && !answer.contains("welcome"), "{answer}");
    } else {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root to test a stranger's refusal");
        eprintln!("skipping the other-uid check: it needs root to act as another user");
    }
    // A cancelled CI job: the deploy aborts, exits 3, and leaves no runner behind (headless
    // mode waits for its runner to end).
    let runner = children(deploy.id());
    assert_eq!(runner.len(), 1);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(deploy.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let _: Vec<_> = rest.collect();
    assert_eq!(deploy.wait().unwrap().code(), Some(3));
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(runner[0]), None).is_err(), "the runner is gone");
    assert_eq!(s.sockets(), 0);
}

/// The processes `pid` started (a headless deploy's runner).
fn children(pid: u32) -> Vec<i32> {
    let list = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    list.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

#[test]
fn a_ci_deploy_waits_at_the_threshold_for_a_person_who_skips_and_resumes() {
    let s = Sandbox::new();
    // staging's stg-web-4 fails its health check: wave 2 goes over its limit and pauses.
    let (mut deploy, rest, session) = s.deploy_until(
        &["deploy", DEMO, "--env", "staging", "--release", "2.5.0", "--on-threshold", "wait=10m"],
        "you released control",
    );
    let socket = s.runtime().join(format!("{session}.sock"));
    let answer = talk_as_myself(
        &socket,
        &[
            r#"{"hello":{"version":2,"client":"a person","from_seq":1000000000,"role":"control"}}"#,
            r#"{"command":{"id":1,"command":{"command":"skip","host":"stg-web-4"}}}"#,
            r#"{"command":{"id":2,"command":{"command":"resume"}}}"#,
            // Leaving on purpose: the deploy goes on (a client that just vanished would get the
            // deploy's on_detach, which for a headless deploy is abort).
            r#"{"detach":{"id":3}}"#,
        ],
        4,
    );
    assert!(answer.contains(r#""role":"control""#), "{answer}");
    for id in 1..=3 {
        assert!(answer.contains(&format!(r#"{{"ack":{{"id":{id}}}}}"#)), "{answer}");
    }
    let rest: Vec<String> = rest.map(|l| l.unwrap()).collect();
    let printed = rest.join("\n");
    assert_eq!(deploy.wait().unwrap().code(), Some(0), "{printed}");
    assert!(printed.contains("SUCCEEDED"), "{printed}");
    let audit = audit_of(&s);
    let released = audit.iter().position(|r| r["record"] == "control_released").expect("audited");
    let skip = audit.iter().position(|r| r["record"] == "operator_command" && r["command"] == "skip").unwrap();
    assert!(released < skip);
    assert_eq!(audit[skip]["client"], "a person");
}

#[test]
fn a_waiting_deploy_nobody_attaches_to_aborts_itself_at_detached_timeout() {
    let s = Sandbox::new();
    let short = s.dir.path().join("short.toml");
    let demo = std::fs::read_to_string(DEMO).unwrap().replacen("[plan]", "[plan]\ndetached_timeout = \"1s\"", 1);
    std::fs::write(&short, demo).unwrap();
    let (mut deploy, _rest, session) = s.deploy_until(
        &["deploy", short.to_str().unwrap(), "--env", "staging", "--release", "2.5.1", "--on-threshold", "wait=1h"],
        "you released control",
    );
    // The CI job dies after handing over, and nobody comes.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(deploy.id() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    deploy.wait().unwrap();
    // The runner is no child of this test: its socket going is the sign it has settled.
    let socket = s.runtime().join(format!("{session}.sock"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while socket.exists() {
        assert!(std::time::Instant::now() < deadline, "the runner still waits");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let audit = audit_of(&s);
    let abort = audit.iter().find(|r| r["record"] == "operator_command" && r["command"] == "abort").unwrap();
    assert_eq!(abort["source"], "detach");
    assert!(abort["reason"].as_str().unwrap().contains("detached_timeout"), "{abort}");
    assert!(audit.iter().any(|r| r["record"] == "lock_released"));
    assert_eq!(audit.last().unwrap()["outcome"], "aborted");
}

/// The records of the sandbox's one audit file.
fn audit_of(s: &Sandbox) -> Vec<serde_json::Value> {
    let files: Vec<PathBuf> = std::fs::read_dir(s.dir.path().join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    std::fs::read_to_string(&files[0]).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_killed_deploy_leaves_a_socket_that_ps_reports_and_removes() {
    let s = Sandbox::new();
    let held = s.dir.path().join("held.toml");
    let demo =
        std::fs::read_to_string(DEMO).unwrap().replace("pause_between_waves = \"1s\"", "pause_between_waves = \"1h\"");
    std::fs::write(&held, demo).unwrap();
    let (mut deploy, _rest, session) = s.busy_deploy(held.to_str().unwrap(), "dev");
    // The runner, which owns the socket, dies without a word; its headless client then ends.
    let runner = children(deploy.id());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(runner[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
    deploy.wait().unwrap();
    let listed = text(&s.run(&["ps"]).stdout);
    assert!(
        listed.contains(&session) && listed.contains("gone") && listed.contains("the socket was removed"),
        "{listed}"
    );
    assert_eq!(s.sockets(), 0);
    // What remains is an interrupted deploy, to carry on.
    let again = text(&s.run(&["ps"]).stdout);
    assert!(!again.contains("gone") && again.contains("INTERRUPTED: 0/3 hosts done"), "{again}");
    assert!(again.contains(&format!("wavedeck resume {session}")), "{again}");
}

/// Sends `lines` to the socket and returns the first `answers` lines the deploy sends back.
fn talk_as_myself(socket: &Path, lines: &[&str], answers: usize) -> String {
    use std::io::Write;
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    for line in lines {
        writeln!(stream, "{line}").unwrap();
    }
    let mut reader = BufReader::new(stream);
    let mut out = String::new();
    for _ in 0..answers {
        if reader.read_line(&mut out).unwrap_or(0) == 0 {
            break;
        }
    }
    out
}

/// Sends `lines` to the socket as another `user` (through runuser and perl) and returns what
/// the deploy answered before it closed the connection.
fn talk_as(user: &str, socket: &Path, lines: &[&str]) -> String {
    let script = r#"
        use IO::Socket::UNIX;
        # A refused peer may find the socket closed before its hello is out: read the reason.
        $SIG{PIPE} = 'IGNORE';
        my $s = IO::Socket::UNIX->new(Peer => shift) or die "connect: $!";
        print $s "$_\n" for @ARGV; $s->flush;
        while (my $l = <$s>) { print $l; }
    "#;
    let out = Command::new("runuser")
        .args(["-u", user, "--", "perl", "-e", script])
        .arg(socket)
        .args(lines)
        .output()
        .unwrap();
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}
