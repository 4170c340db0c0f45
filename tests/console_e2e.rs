//! End-to-end: the real binary's console inside tmux, driven with send-keys and read with
//! capture-pane, on the demo profile. Each test uses its own tmux server socket, so nothing
//! touches the operator's tmux.
//!
//! Waiting is on what the screen shows (polled, with a deadline), never on fixed sleeps.
#![allow(clippy::unwrap_used)] // Tests panic on unexpected errors by design.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles/demo.toml");
const DEADLINE: Duration = Duration::from_secs(60);

/// A console running in a private tmux server.
struct Console {
    socket: String,
    dir: tempfile::TempDir,
    exit_file: PathBuf,
}

fn tmux_available() -> bool {
    let found = Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var("CI").is_err(), "tmux is required in CI (.ci/run installs it)");
        eprintln!("skipping: tmux is not installed");
    }
    found
}

impl Console {
    fn start() -> Console {
        Self::start_with(Path::new(DEMO), None)
    }

    /// A console on `profile`; `prepare` may fill the console's directory (its audit log)
    /// before it starts.
    fn start_with(profile: &Path, prepare: Option<&dyn Fn(&Path)>) -> Console {
        let dir = tempfile::tempdir().unwrap();
        if let Some(prepare) = prepare {
            prepare(dir.path());
        }
        let root = dir.path().to_path_buf();
        let console = Self::run_in(dir, &root, &[&profile.display().to_string()], "e2e-operator");
        console.wait_for("Environments");
        console
    }

    /// `wavedeck ARGS` as `user` in a new tmux server, with `dir` for its audit log, hosts and
    /// control sockets (so a second console given the same directory sees the same deploys).
    fn run_in(dir: tempfile::TempDir, shared: &Path, args: &[&str], user: &str) -> Console {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let socket = format!("wavedeck-test-{}-{}", std::process::id(), COUNT.fetch_add(1, Ordering::SeqCst));
        let exit_file = dir.path().join(format!("exit-code-{socket}"));
        let args: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        // The shell stays after wavedeck exits so the test can read the restored screen.
        let script = format!(
            "cd '{root}' && WAVEDECK_AUDIT_DIR='{audit}' WAVEDECK_LOCAL_ROOT='{hosts}' WAVEDECK_RUNTIME_DIR='{run}' \
             USER={user} sh -c 'echo $$ > wavedeck.pid; exec \"$0\" \"$@\"' '{bin}' {args}; \
             echo $? > '{exit}'; echo WAVEDECK-EXITED; exec sleep 600",
            root = dir.path().display(),
            audit = shared.join("audit").display(),
            hosts = shared.join("hosts").display(),
            run = shared.join("run").display(),
            bin = env!("CARGO_BIN_EXE_wavedeck"),
            args = args.join(" "),
            exit = exit_file.display(),
        );
        let status = Command::new("tmux")
            .args(["-L", &socket, "-f", "/dev/null", "new-session", "-d", "-x", "120", "-y", "40", "sh", "-c", &script])
            .env_remove("TMUX")
            .status()
            .unwrap();
        assert!(status.success());
        Console { socket, dir, exit_file }
    }

    /// A console attached to deploy `session`, sharing this console's directory.
    fn attach(&self, session: &str, user: &str) -> Console {
        Self::run_in(tempfile::TempDir::new().unwrap(), self.dir.path(), &["attach", session], user)
    }

    /// The session id of the deploy this console started first.
    fn session(&self) -> String {
        let mut files = self.audit_files();
        files.sort();
        read_audit(&files[0])[0]["session"].as_str().unwrap().to_string()
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").args(["-L", &self.socket]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "0"])
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.tmux(&["send-keys", "-t", "0", k]);
        }
    }

    fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "0", "-l", text]);
    }

    /// Polls the screen until it contains `text`; fails with the screen after the deadline.
    fn wait_for(&self, text: &str) -> String {
        self.wait_until(text, |screen| screen.contains(text))
    }

    /// Polls the screen until `ready` says so; fails with the screen after the deadline.
    fn wait_until(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if ready(&screen) {
                return screen;
            }
            assert!(start.elapsed() < DEADLINE, "no {what:?} on screen within {DEADLINE:?}:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn exit_code(&self) -> i32 {
        self.wait_for("WAVEDECK-EXITED");
        std::fs::read_to_string(&self.exit_file).unwrap().trim().parse().unwrap()
    }

    fn pid(&self) -> i32 {
        std::fs::read_to_string(self.dir.path().join("wavedeck.pid")).unwrap().trim().parse().unwrap()
    }

    fn audit_files(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.dir.path().join("audit")) {
            Ok(entries) => {
                entries.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "jsonl")).collect()
            }
            Err(_) => Vec::new(),
        }
    }

    /// Polls the audit log until it holds a `record` of this kind; fails after the deadline.
    fn wait_for_record(&self, record: &str) {
        let start = Instant::now();
        // The runner may be writing the last line: a line that does not parse yet is not it.
        let holds = |f: &PathBuf| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .any(|l| serde_json::from_str::<Value>(l).is_ok_and(|r| r["record"] == record))
        };
        while !self.audit_files().iter().any(holds) {
            assert!(start.elapsed() < DEADLINE, "no {record:?} in the audit log within {DEADLINE:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn audit(&self) -> Vec<Value> {
        let files = self.audit_files();
        assert_eq!(files.len(), 1, "{files:?}");
        read_audit(&files[0])
    }

    /// Starts a deploy of `release` to the environment `downs` rows below the first.
    fn start_deploy(&self, downs: usize, release: &str) {
        for _ in 0..downs {
            self.keys(&["Down"]);
        }
        self.keys(&["Enter"]);
        self.wait_for("Release:");
        self.type_text(release);
        self.keys(&["Enter"]);
        self.wait_for("Enter start");
        self.keys(&["Enter"]);
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
        // A test that failed mid-deploy leaves its runner waiting (that is what runners do when
        // their console goes): stop the runners working in this test's directory.
        for pid in runners_in(self.dir.path()) {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

/// wavedeck processes whose working directory is `dir`.
fn runners_in(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.contains("wavedeck")))
        .collect()
}

/// The demo with a manual gate after each wave: a deploy waits there for as long as a test
/// needs. Keep the directory alive while the profile is used.
fn gated_demo() -> (tempfile::TempDir, PathBuf) {
    let profiles = tempfile::tempdir().unwrap();
    let profile = profiles.path().join("gated.toml");
    let demo = std::fs::read_to_string(DEMO).unwrap().replacen("parallel = 10", "parallel = 10\ngate = \"manual\"", 1);
    std::fs::write(&profile, demo).unwrap();
    (profiles, profile)
}

fn read_audit(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn is_start(r: &Value) -> bool {
    r["record"] == "event" && matches!(r["event"].as_str(), Some("wave_started" | "host_started" | "step_started"))
}

fn position(records: &[Value], pred: impl Fn(&Value) -> bool) -> usize {
    records.iter().position(pred).unwrap_or_else(|| panic!("not in audit log: {records:#?}"))
}

#[test]
fn pause_after_the_first_wave_then_resume_to_the_end() {
    if !tmux_available() {
        return;
    }
    // A manual gate after wave 1 holds the deploy there for as long as the test needs, so the
    // pause lands between the waves without racing a clock.
    let (_profiles, profile) = gated_demo();
    let c = Console::start_with(&profile, None);
    c.start_deploy(0, "3.0.0");
    c.wait_for("WAITING FOR PROMOTE");
    // Waiting for a person rings the terminal's bell (tmux flags the window).
    assert_eq!(c.tmux(&["display-message", "-p", "-t", "0", "#{window_bell_flag}"]).trim(), "1");
    c.keys(&["p"]);
    let paused = c.wait_for("PAUSED by e2e-operator");
    assert!(paused.contains("PAUSED"), "{paused}");
    c.keys(&["r"]);
    c.wait_for("WAITING FOR PROMOTE");
    c.keys(&["P"]);
    let done = c.wait_for("SUCCEEDED:");
    assert!(done.contains("3 done"), "{done}");
    c.keys(&["q"]);
    assert_eq!(c.exit_code(), 0);
    assert_eq!(c.tmux(&["display-message", "-p", "-t", "0", "#{alternate_on}"]).trim(), "0", "terminal restored");

    let records = c.audit();
    let commands: Vec<(&str, &str, &str)> = records
        .iter()
        .filter(|r| r["record"] == "operator_command")
        .map(|r| (r["command"].as_str().unwrap(), r["source"].as_str().unwrap(), r["operator"].as_str().unwrap()))
        .collect();
    assert_eq!(
        commands,
        [
            ("pause", "keyboard", "e2e-operator"),
            ("resume", "keyboard", "e2e-operator"),
            ("promote", "keyboard", "e2e-operator")
        ]
    );
    let paused_at = position(&records, |r| r["event"] == "paused");
    let resumed_at = position(&records, |r| r["event"] == "resumed");
    let started: Vec<&Value> = records[paused_at..resumed_at].iter().filter(|r| is_start(r)).collect();
    assert!(started.is_empty(), "started while paused: {started:#?}");
    assert!(
        records[resumed_at..].iter().any(|r| r["event"] == "wave_started" && r["wave"] == 2),
        "wave 2 ran after resume"
    );
    assert_eq!(records.last().unwrap()["outcome"], "succeeded");
}

#[test]
fn a_step_that_ends_while_paused_shows_as_ended_with_nothing_running() {
    if !tmux_available() {
        return;
    }
    let c = Console::start();
    c.start_deploy(0, "3.0.2");
    c.wait_for("run 1/5");
    c.keys(&["p"]);
    c.wait_for("PAUSED by e2e-operator");
    // The step the pause caught finishes; the screen must say so, not keep a clock running.
    let screen = c.wait_until("held host, nothing running", |s| s.contains("held ") && s.contains("nothing running"));
    assert!(!screen.contains("finishing:"), "{screen}");
    assert!(!screen.contains(" run "), "no host may look like it is running: {screen}");
    c.keys(&["a"]);
    c.wait_for("Reason:");
    c.type_text("checked the pause");
    c.keys(&["Enter"]);
    c.wait_for("ABORTED:");
    c.keys(&["q"]);
    assert_eq!(c.exit_code(), 3);
    let records = c.audit();
    let paused_at = position(&records, |r| r["event"] == "paused");
    assert!(records[paused_at..].iter().any(|r| r["event"] == "step_finished"), "a step ended while paused");
}

#[test]
fn abort_with_a_reason_is_audited() {
    if !tmux_available() {
        return;
    }
    let c = Console::start();
    c.start_deploy(1, "3.0.1");
    c.wait_for("run 1/5");
    c.keys(&["a"]);
    c.wait_for("Reason:");
    c.keys(&["Enter"]);
    c.wait_for("a reason is required");
    c.type_text("canary looks wrong");
    c.keys(&["Enter"]);
    let screen = c.wait_for("ABORTED:");
    assert!(screen.contains("5 not started"), "hosts never reached are not started, not skipped: {screen}");
    c.keys(&["q"]);
    assert_eq!(c.exit_code(), 3);

    let records = c.audit();
    let abort = &records[position(&records, |r| r["record"] == "operator_command")];
    assert_eq!((abort["command"].as_str(), abort["reason"].as_str()), (Some("abort"), Some("canary looks wrong")));
    let aborted_at = position(&records, |r| r["event"] == "aborted");
    assert!(!records[aborted_at..].iter().any(is_start));
    assert_eq!(records.last().unwrap()["outcome"], "aborted");
}

#[test]
fn protected_environment_needs_its_name_and_quitting_mid_deploy_can_abort() {
    if !tmux_available() {
        return;
    }
    let c = Console::start();
    c.start_deploy(2, "3.1.0");
    c.wait_for("Type production:");
    c.type_text("prod");
    c.keys(&["Enter"]);
    c.wait_for("that is not \"production\": nothing was started");
    assert!(c.audit_files().is_empty(), "a wrong name must not start anything");
    c.keys(&["Escape"]);
    c.start_deploy(0, "3.1.0");
    c.wait_for("Type production:");
    c.type_text("production");
    c.keys(&["Enter"]);
    c.wait_for("run 1/5");
    c.keys(&["q"]);
    c.wait_for("a  abort it");
    c.keys(&["a"]);
    assert_eq!(c.exit_code(), 3);
    let screen = c.screen();
    assert!(screen.contains("audit log:"), "the audit path is printed after the console closes:\n{screen}");
    assert_eq!(c.tmux(&["display-message", "-p", "-t", "0", "#{alternate_on}"]).trim(), "0");

    let records = c.audit();
    let confirmed = &records[position(&records, |r| r["record"] == "deploy_confirmed")];
    assert_eq!(confirmed["protected"], true);
    let abort = &records[position(&records, |r| r["record"] == "operator_command")];
    assert!(abort["reason"].as_str().unwrap().contains("quit the console"), "{abort}");
    assert_eq!(records.last().unwrap()["record"], "session_end");
    assert_eq!(records.last().unwrap()["outcome"], "aborted");
}

#[test]
fn sigterm_leaves_the_deploy_to_its_runner_and_restores_the_terminal() {
    if !tmux_available() {
        return;
    }
    let c = Console::start();
    c.start_deploy(1, "3.2.0");
    c.wait_for("run 1/5");
    let pid = nix::unistd::Pid::from_raw(c.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(c.exit_code(), 0);
    assert_eq!(c.tmux(&["display-message", "-p", "-t", "0", "#{alternate_on}"]).trim(), "0");
    // The runner applies on_detach (pause, the default); an observer follows it from here.
    let watcher = c.attach(&c.session(), "e2e-operator");
    watcher.wait_for("PAUSED");
    watcher.keys(&["a"]);
    watcher.wait_for("Reason:");
    watcher.type_text("done testing");
    watcher.keys(&["Enter"]);
    watcher.wait_for("ABORTED:");
    watcher.keys(&["q"]);
    assert_eq!(watcher.exit_code(), 3, "the console that saw the deploy end says how it ended");
    let records = c.audit();
    let left = &records[position(&records, |r| r["record"] == "client_detached")];
    assert_eq!((left["deliberate"].as_bool(), left["on_detach"].as_str()), (Some(false), Some("pause")));
    let pause = &records[position(&records, |r| r["record"] == "operator_command")];
    assert_eq!((pause["command"].as_str(), pause["source"].as_str()), (Some("pause"), Some("detach")));
}

#[test]
fn closing_the_terminal_pauses_the_deploy_and_attach_resumes_it_to_the_end() {
    if !tmux_available() {
        return;
    }
    let c = Console::start();
    c.start_deploy(0, "3.3.0");
    c.wait_for("fetched app.bin");
    // The terminal goes away with everything in it, as when an SSH session to a bastion dies.
    c.tmux(&["kill-server"]);
    // Coming back before the runner has seen the console go would find it still in control (and
    // attach as an observer): the operator comes back after.
    c.wait_for_record("client_detached");
    let back = c.attach(&c.session(), "e2e-operator");
    let screen = back.wait_for("PAUSED");
    // The history is there: the log lines from before the terminal closed.
    assert!(screen.contains("fetched app.bin"), "{screen}");
    assert!(screen.contains("you control it"), "{screen}");
    back.keys(&["r"]);
    let done = back.wait_for("SUCCEEDED:");
    assert!(done.contains("3 done"), "{done}");
    back.keys(&["q"]);
    assert_eq!(back.exit_code(), 0);
    let records = c.audit();
    let commands: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["record"] == "operator_command")
        .map(|r| (r["command"].as_str().unwrap(), r["source"].as_str().unwrap()))
        .collect();
    assert_eq!(commands, [("pause", "detach"), ("resume", "keyboard")]);
    let resume = records.iter().rfind(|r| r["record"] == "operator_command").unwrap();
    assert!(resume["client"].as_str().unwrap().ends_with("console"), "{resume}");
    assert_eq!(records.last().unwrap()["outcome"], "succeeded");
}

#[test]
fn an_observer_cannot_steer_until_it_takes_over_and_the_takeover_is_audited() {
    if !tmux_available() {
        return;
    }
    let (_profiles, profile) = gated_demo();
    let first = Console::start_with(&profile, None);
    first.start_deploy(0, "5.0.0");
    first.wait_for("WAITING FOR PROMOTE");
    let second = first.attach(&first.session(), "e2e-second");
    second.wait_for("observing:");
    second.keys(&["P"]);
    second.wait_for("T takes over");
    second.keys(&["T"]);
    second.wait_for("Take control");
    second.type_text("dev");
    second.keys(&["Enter"]);
    second.wait_for("you control the deploy now");
    first.wait_for("took over control; you are observing");
    second.keys(&["P"]);
    second.wait_for("SUCCEEDED:");
    first.wait_for("SUCCEEDED:");
    let records = first.audit();
    let taken = &records[position(&records, |r| r["record"] == "control_taken")];
    assert!(taken["from"].as_str().unwrap().contains("e2e-operator"), "{taken}");
    assert!(taken["to"].as_str().unwrap().contains("e2e-second"), "{taken}");
    let promote = &records[position(&records, |r| r["record"] == "operator_command")];
    assert!(promote["client"].as_str().unwrap().contains("e2e-second"), "{promote}");
}

#[test]
fn rolling_back_from_the_console_shows_targets_then_goes_back() {
    if !tmux_available() {
        return;
    }
    let c = Console::start();
    c.start_deploy(0, "1.0");
    c.wait_for("SUCCEEDED:");
    c.keys(&["o"]);
    c.wait_for("Environments");
    c.start_deploy(0, "2.0");
    c.wait_for("SUCCEEDED:");
    c.keys(&["B"]);
    let preview = c.wait_for("Enter roll back");
    assert!(preview.contains("dev-web-1") && preview.contains("2.0 -> 1.0"), "{preview}");
    c.keys(&["Enter"]);
    c.wait_for("rollback-of-2.0");
    c.wait_for("SUCCEEDED:");
    c.keys(&["q"]);
    assert_eq!(c.exit_code(), 0);
    for host in ["dev-web-1", "dev-web-2", "dev-worker-1"] {
        let current = std::fs::read_link(c.dir.path().join(format!("hosts/dev/{host}/current"))).unwrap();
        assert_eq!(current, Path::new("releases/1.0"), "{host}");
    }
    let modes: Vec<String> = {
        let mut files = c.audit_files();
        files.sort();
        files.iter().map(|f| read_audit(f)[0]["mode"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(modes, ["console", "console", "rollback"]);
}

#[test]
fn the_overview_shows_last_releases_and_checks_hosts_on_request() {
    if !tmux_available() {
        return;
    }
    let c = Console::start();
    c.start_deploy(0, "4.2.0");
    c.wait_for("SUCCEEDED:");
    c.keys(&["o"]);
    c.wait_for("Environments");
    let overview = c.wait_for("4.2.0");
    let rows = overview.lines().filter(|l| l.contains("4.2.0") && l.contains("c: check")).count();
    assert_eq!(rows, 3, "each dev host shows its release:\n{overview}");
    assert!(overview.contains("last: 4.2.0 by e2e-operator, just now · succeeded"), "{overview}");
    c.keys(&["c"]);
    let checked = c.wait_until("three hosts ok", |screen| screen.matches(" ok ").count() == 3);
    assert!(!checked.contains("checking…"), "{checked}");
    c.keys(&["q"]);
    assert_eq!(c.exit_code(), 0);
}

/// A TCP port that accepts connections and never says a word: an SSH host that hangs.
fn silent_listener() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    port
}

#[test]
fn a_rollback_preview_of_hanging_hosts_keeps_the_console_responsive_and_esc_stops_it() {
    if !tmux_available() {
        return;
    }
    use wavedeck::audit::{Record, SessionStart};
    use wavedeck::event::{Event, WaveOutline};
    let port = silent_listener();
    let hosts: Vec<String> = (0..10).map(|i| format!("h{i}")).collect();
    let table: Vec<String> =
        hosts.iter().map(|h| format!("{{ name = \"{h}\", address = \"127.0.0.1\", port = {port} }}")).collect();
    let profiles = tempfile::tempdir().unwrap();
    let profile = profiles.path().join("hanging.toml");
    std::fs::write(
        &profile,
        format!(
            "rollback_target = \"cat previous\"\n[service]\nname = \"hang\"\n\
             [ssh]\nconfig = \"none\"\nknown_hosts = [\"known_hosts\"]\nconnect_timeout = \"60s\"\nconnect_attempts = 1\n\
             [[environments]]\nname = \"far\"\ntransport = \"ssh\"\nhosts = [{}]\n\
             [[steps]]\nname = \"work\"\nrun = \"true\"\n[[rollback]]\nname = \"back\"\nrun = \"true\"\n",
            table.join(", ")
        ),
    )
    .unwrap();
    // The audit log remembers a deploy to `far` that reached all ten hosts.
    let remember = |dir: &Path| {
        let audit = dir.join("audit");
        std::fs::create_dir_all(&audit).unwrap();
        let start = SessionStart {
            operator: "e2e".into(),
            machine: "box".into(),
            version: "0".into(),
            argv: vec![],
            mode: "headless".into(),
            profile: "hanging.toml".into(),
            profile_sha256: "00".into(),
            env: "far".into(),
            release: "2.0".into(),
            resumed_from: None,
        };
        let mut records = vec![
            Record::SessionStart(start),
            Record::Event(Event::DeployStarted {
                outlier_percent: wavedeck::profile::DEFAULT_OUTLIER_PERCENT,
                service: "hang".into(),
                env: "far".into(),
                release: "2.0".into(),
                waves: vec![WaveOutline { wave: 1, hosts: vec![], max_failures: 0 }],
                steps: vec![],
            }),
        ];
        records.extend(hosts.iter().map(|h| Record::Event(Event::HostStarted { wave: 1, host: h.clone() })));
        let lines: Vec<String> = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut line =
                    serde_json::json!({ "ts": "2026-01-01T00:00:00.000+00:00", "session": "old", "seq": i + 1 });
                if let (Some(line), Value::Object(fields)) = (line.as_object_mut(), serde_json::to_value(r).unwrap()) {
                    line.extend(fields);
                }
                line.to_string()
            })
            .collect();
        std::fs::write(audit.join("wavedeck-20260101T000000.000Z-1.jsonl"), lines.join("\n")).unwrap();
    };
    let c = Console::start_with(&profile, Some(&remember));
    c.keys(&["B"]);
    c.wait_for("planning the rollback");
    // The screen still answers: help opens and closes while the hosts hang.
    c.keys(&["?"]);
    c.wait_for("Keys");
    c.keys(&["Escape"]);
    c.wait_until("help closed", |s| !s.contains("Keys") && s.contains("planning the rollback"));
    let pressed = Instant::now();
    c.keys(&["Escape"]);
    c.wait_for("cancelled");
    // Far below the 60 s the hosts would hang for: the preview was stopped, not waited out.
    assert!(pressed.elapsed() < Duration::from_secs(5), "Esc took {:?}", pressed.elapsed());
    c.keys(&["q"]);
    assert_eq!(c.exit_code(), 0);
}

#[test]
fn a_deploy_whose_runner_died_is_listed_on_the_overview_and_resumed_from_there() {
    if !tmux_available() {
        return;
    }
    let (_profiles, profile) = gated_demo();
    let c = Console::start_with(&profile, None);
    c.start_deploy(0, "6.0.0");
    c.wait_for("WAITING FOR PROMOTE");
    // The runner is the console's child: kill it as an OOM killer would.
    // (Started from one of the console's threads: look through all of them.)
    let pid = c.pid();
    let children: String = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("children")).ok())
        .collect();
    let runner: i32 = children.split_whitespace().next().expect("the console started a runner").parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(runner), nix::sys::signal::Signal::SIGKILL).unwrap();
    c.wait_for("INTERRUPTED");
    c.keys(&["u"]);
    let dialog = c.wait_for("Resume the interrupted deploy");
    assert!(dialog.contains("dev-web-1") && dialog.contains("done"), "{dialog}");
    c.keys(&["Enter"]);
    let done = c.wait_for("SUCCEEDED:");
    assert!(done.contains("3 done"), "{done}");
    c.keys(&["q"]);
    assert_eq!(c.exit_code(), 0);
    let mut files = c.audit_files();
    files.sort();
    assert_eq!(files.len(), 2, "the interrupted session and the one that carried it on");
    let resumed = read_audit(&files[1]);
    assert_eq!(resumed[0]["resumed_from"], read_audit(&files[0])[0]["session"]);
    assert_eq!(resumed.last().unwrap()["outcome"], "succeeded");
}

#[test]
fn f_finds_the_failed_host_and_leaving_a_host_out_asks_first() {
    if !tmux_available() {
        return;
    }
    let c = Console::start();
    c.start_deploy(1, "3.1.0");
    c.wait_for("allowed: stg-web-4");
    // From the top of the table, f lands on the failed host: its log is the one shown.
    c.keys(&["Home"]);
    c.wait_for("Log — stg-web-1");
    c.keys(&["f"]);
    c.wait_for("Log — stg-web-4");
    // W writes its whole log, read back from the audit log, next to where the console runs.
    c.keys(&["W"]);
    c.wait_for("log (");
    let written = c.dir.path().join(format!("wavedeck-{}-stg-web-4.log", c.session()));
    let log =
        std::fs::read_to_string(&written).unwrap_or_else(|e| panic!("{}: {e}\n{}", written.display(), c.screen()));
    assert!(log.contains("step 1/5 stage") && log.contains("healthz: exit 1"), "{log}");
    // The next host waits; x asks, naming it, and Esc leaves it in.
    c.keys(&["Down"]);
    c.wait_for("Log — stg-worker-1");
    c.keys(&["x"]);
    c.wait_for("Exclude stg-worker-1?");
    c.keys(&["Escape"]);
    c.wait_until("the dialog closed", |s| !s.contains("Exclude stg-worker-1?"));
    assert!(!c.audit().iter().any(|r| r["command"] == "exclude"), "nothing is left out before the operator says yes");
    c.keys(&["x"]);
    c.wait_for("Exclude stg-worker-1?");
    c.keys(&["y"]);
    c.wait_until("stg-worker-1 skipped", |s| s.lines().any(|l| l.contains("stg-worker-1") && l.contains("skipped")));
    c.keys(&["a"]);
    c.wait_for("Reason:");
    c.type_text("done looking");
    c.keys(&["Enter"]);
    c.wait_for("ABORTED:");
    c.keys(&["q"]);
    assert_eq!(c.exit_code(), 3);
    let records = c.audit();
    let excluded = &records[position(&records, |r| r["command"] == "exclude")];
    assert_eq!(excluded["host"], "stg-worker-1");
}

#[test]
fn the_insight_demo_pauses_on_the_slow_host_and_o_leads_to_the_odd_one() {
    if !tmux_available() {
        return;
    }
    let pricing = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/profiles/pricing.toml"));
    let c = Console::start_with(pricing, None);
    c.start_deploy(0, "2.0");
    // The new-against-old analysis stops wave 2's soak, with the figures in the banner.
    c.wait_for("wave 2 worse than old: new hosts' p95");
    // O: the wave's output by shape, the line only eu-web-03 printed first.
    c.keys(&["O"]);
    c.wait_for("Output by shape · wave 2");
    let screen = c.screen();
    let first = screen.lines().find(|l| l.contains("ODD")).unwrap_or_default();
    assert!(first.contains("1/3") && first.contains("WARN /var is 91% full"), "{screen}");
    // Enter: the table lists only the host that printed it, and its log shows the line.
    c.keys(&["Enter"]);
    c.wait_for("Hosts 1/12");
    c.wait_for("Log — eu-web-03");
    assert!(c.screen().contains("!WARN /var is 91% full"), "{}", c.screen());
    c.keys(&["Escape"]);
    c.wait_for("Hosts 12/12");
    c.keys(&["a"]);
    c.wait_for("Reason:");
    c.type_text("slower than the old release");
    c.keys(&["Enter"]);
    c.wait_for("ABORTED:");
    c.keys(&["q"]);
    assert_eq!(c.exit_code(), 3);
    let records = c.audit();
    assert!(records.iter().any(|r| r["event"] == "analysis_failed" && r["wave"] == 2));
}

#[test]
fn d_on_the_plan_shows_how_a_template_would_change_each_host_with_secrets_masked() {
    if !tmux_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.conf.j2"), "listen {{ port }}\nname {{ host }}\n").unwrap();
    let profile = dir.path().join("conf.toml");
    std::fs::write(
        &profile,
        "[service]\nname = \"conf\"\n[vars]\nport = \"8080\"\n[[environments]]\nname = \"dev\"\n\
         hosts = [{ name = \"c1\" }, { name = \"c2\" }]\n[[steps]]\nname = \"config\"\n\
         template = { from = \"app.conf.j2\", to = \"app.conf\" }\n",
    )
    .unwrap();
    let c = Console::start_with(&profile, None);
    c.keys(&["Enter"]);
    c.wait_for("Release:");
    c.type_text("1.0");
    c.keys(&["Enter"]);
    c.wait_for("D template diffs");
    c.keys(&["D"]);
    c.wait_for("Template changes");
    let screen = c.screen();
    assert!(screen.contains("== c1: app.conf (config) is new") && screen.contains("+listen 8080"), "{screen}");
    assert!(c.audit_files().is_empty(), "looking changed nothing and started nothing");
}
