//! SSH rolling-deploy benchmark: wavedeck's engine against the OpenSSH client doing the same
//! work, on the same loopback sshd fleet in one run.
//!
//! Starts a loopback sshd fleet (4 listeners; N simulated hosts spread over them, each with its
//! own directory), then deploys a 1 MiB artifact to every host in waves (1 canary, then 10%):
//! upload + sha256 verify, unpack, switch the `current` symlink, restart (0.2 s), health check.
//! Contenders, one after another on the same fleet:
//! - the handshake floor: one `ssh host true` per host, `xargs -P`;
//! - OpenSSH one-shot: one `ssh` per host, the tarball on stdin, every step in one remote shell;
//! - OpenSSH ControlMaster: one master connection per host, then `scp` and one `ssh` per step;
//! - one-shot again with the upload checked as wavedeck checks it (the hash compared, the file
//!   renamed into place), the like-for-like script;
//! - wavedeck's engine in this process (and again through its runner, with its audit log).
//!
//! Every OpenSSH client uses the key exchange russh picks (curve25519-sha256), so key exchange
//! cost is not what is measured. For each: wall time, controller CPU (this process, or the ssh
//! clients), sshd-side CPU per host (the listeners' reaped children: sshd sessions, shells,
//! commands), and wavedeck's peak RSS.
//!
//! Run: `cargo run --release --example ssh_bench [hosts] [--latency-ms N] [--no-work]
//! [--wavedeck-only | --one-shot-only]` (default 200 hosts; needs sshd and ssh). `--no-work`: steps that run `true`
//! and no upload, for every contender. `BENCH_TIMELINE=1`: each wave's steps, when they began and
//! ended.
#![allow(clippy::unwrap_used)] // A benchmark: any failure should stop it loudly.

#[path = "../tests/common/sshd.rs"]
#[allow(dead_code)] // Shared with the tests, which use more of it.
mod sshd;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use wavedeck::engine;
use wavedeck::event::Outcome;
use wavedeck::plan::{Plan, wave_sizes};
use wavedeck::profile::Profile;
use wavedeck::secrets::Secrets;
use wavedeck::transport::ssh::SshTransport;

const LISTENERS: usize = 4;
const PARALLEL: usize = 50;
const RELEASE: &str = "2.0.0";
/// The key exchange every client uses, russh's first choice.
const KEX: &str = "curve25519-sha256";

/// Each contender's wave times, in seconds: wavedeck, floor, one-shot, ControlMaster, one-shot
/// checked.
/// `--no-work`: every step runs `true` and nothing is uploaded, for every contender: what the way
/// of running steps costs by itself (for wavedeck, the agent), beside the handshake.
static NO_WORK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn no_work() -> bool {
    NO_WORK.get().copied().unwrap_or(false)
}

/// The steps after the upload, as `(name, command)`.
fn steps() -> Vec<(&'static str, &'static str)> {
    if no_work() { STEPS.iter().map(|(name, _)| (*name, "true")).collect() } else { STEPS.to_vec() }
}

static WAVES: std::sync::Mutex<[Vec<f64>; 5]> =
    std::sync::Mutex::new([Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()]);

/// A proxy per listener that delays every chunk by `delay` in each direction (netem does not work
/// on these machines), on a runtime of its own; returns it and the proxies' ports.
fn start_proxies(servers: &[sshd::Sshd], delay: Duration) -> (tokio::runtime::Runtime, Vec<u16>) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut ports = Vec::new();
    for server in servers {
        let target = server.port;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        ports.push(listener.local_addr().unwrap().port());
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(upstream) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (ur, uw) = upstream.into_split();
                    tokio::spawn(delayed_copy(cr, uw, delay));
                    tokio::spawn(delayed_copy(ur, cw, delay));
                });
            }
        });
    }
    (runtime, ports)
}

/// Copies `from` to `to`, each chunk `delay` after it was read (reading goes on meanwhile, so the
/// delay is latency, not lost bandwidth).
async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at + delay).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || tx.send((tokio::time::Instant::now(), buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// What one contender cost.
struct Figures {
    wall: f64,
    /// CPU seconds on the controlling side: this process for wavedeck, the ssh clients otherwise.
    controller: f64,
    /// CPU seconds of sshd and everything it ran, for all hosts.
    sshd: f64,
}

impl Figures {
    /// One line of the figures, for the runs of one contender.
    fn summary(&self, hosts: usize) -> String {
        format!(
            "{:.2} s wall, {:.2} s controller CPU, {:.1} ms sshd-side CPU per host",
            self.wall,
            self.controller,
            self.sshd * 1000.0 / hosts as f64
        )
    }
}

fn main() {
    // The deploy's runner, when the benchmark starts one, is this program again.
    if std::env::args().nth(1).as_deref() == Some("runner") {
        std::process::exit(wavedeck::runner::main());
    }
    if !sshd::available() {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let _ = NO_WORK.set(args.iter().any(|a| a == "--no-work"));
    let hosts: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(200);
    // `--latency-ms N`: a proxy in front of each listener delays every chunk N ms each way.
    let latency_ms: u64 =
        args.iter().position(|a| a == "--latency-ms").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(0);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let key = root.join("client_ed25519");
    sshd::keygen(&key, "ed25519");
    std::fs::copy(key.with_extension("pub"), root.join("authorized_keys")).unwrap();
    let servers: Vec<sshd::Sshd> = (0..LISTENERS).map(|i| sshd::Sshd::start(root, &format!("sshd{i}"))).collect();
    let known: String = servers.iter().map(|s| s.known_hosts_line()).collect();
    std::fs::write(root.join("known_hosts"), known).unwrap();
    let artifact = make_artifact(root);
    let pids: Vec<u32> = servers.iter().map(|s| s.pid()).collect();
    // With latency, clients reach each listener through its proxy (same host key: known_hosts
    // lines are written for the proxies' ports too).
    let (_proxies, front): (Option<tokio::runtime::Runtime>, Vec<u16>) = if latency_ms > 0 {
        let (runtime, ports) = start_proxies(&servers, Duration::from_millis(latency_ms));
        let known: String = servers
            .iter()
            .zip(&ports)
            .map(|(s, p)| s.known_hosts_line().replace(&format!(":{} ", s.port), &format!(":{p} ")))
            .collect();
        std::fs::write(root.join("known_hosts"), known).unwrap();
        (Some(runtime), ports)
    } else {
        (None, servers.iter().map(|s| s.port).collect())
    };
    let ports: Vec<u16> = (0..hosts).map(|i| front[i % LISTENERS]).collect();

    println!(
        "ssh_bench: {hosts} hosts on {LISTENERS} loopback sshd listeners, {work}, waves: 1 canary then 10%, \
         parallel {PARALLEL}, kex {KEX}{}",
        if latency_ms > 0 { format!(", +{latency_ms} ms each way ({} ms RTT)", 2 * latency_ms) } else { String::new() },
        work = if no_work() { "no upload, every step `true`" } else { "1 MiB artifact" },
    );
    if args.iter().any(|a| a == "--one-shot-only") {
        for (name, contender) in
            [("OpenSSH one-shot", Contender::OneShot), ("one-shot, checked", Contender::OneShotChecked)]
        {
            let f = measure(&pids, || run_openssh(root, &ports, contender, &artifact));
            println!("{name} {}", f.summary(hosts));
        }
        return;
    }
    // wavedeck first: its peak RSS is then this process's.
    let ours = measure(&pids, || run_wavedeck(root, &artifact, &ports));
    let rss = peak_rss_mib();
    if args.iter().any(|a| a == "--wavedeck-only") {
        println!("wavedeck engine {}, {rss:.0} MiB peak RSS", ours.summary(hosts));
        return;
    }
    let (detached, syncs) = run_through_runner(root, &artifact, &ports);
    let (checked, ready) = run_check(root, &artifact, &ports);
    let floor = measure(&pids, || run_openssh(root, &ports, Contender::Floor, &artifact));
    let oneshot = measure(&pids, || run_openssh(root, &ports, Contender::OneShot, &artifact));
    let master = measure(&pids, || run_openssh(root, &ports, Contender::ControlMaster, &artifact));
    let like_for_like = measure(&pids, || run_openssh(root, &ports, Contender::OneShotChecked, &artifact));
    let per_host = |s: f64| s * 1000.0 / hosts as f64;
    let row = |name: &str, f: &Figures| {
        println!(
            "{name:<38} {:7.2} s wall  {:6.2} s controller CPU  {:6.1} ms sshd-side CPU per host",
            f.wall,
            f.controller,
            per_host(f.sshd)
        );
    };
    row("handshake floor (ssh host true)", &floor);
    row("OpenSSH one-shot (1 ssh per host)", &oneshot);
    row("OpenSSH ControlMaster + ssh/step", &master);
    row("one-shot, upload checked as wavedeck", &like_for_like);
    row("wavedeck engine", &ours);
    let per_wave = |waves: &[f64]| waves.iter().sum::<f64>() / waves.len().max(1) as f64;
    let waves = WAVES.lock().unwrap();
    println!(
        "mean wall per wave: wavedeck {:.2} s, one-shot {:.2} s, ControlMaster {:.2} s{}",
        per_wave(&waves[0]),
        per_wave(&waves[2]),
        per_wave(&waves[3]),
        if no_work() { "" } else { " (each wave runs a 0.2 s restart)" },
    );
    drop(waves);
    println!("wavedeck peak RSS: {rss:.0} MiB");
    println!("wavedeck check (connect, authenticate, free space) of all {hosts} hosts: {checked:.2} s, {ready} ready");
    println!(
        "wavedeck through its runner (+ write-ahead audit log, socket): {detached:6.2} s wall ({:+.1}% against \
         the engine alone), {syncs} fsyncs ({:.2} per host)",
        (detached / ours.wall - 1.0) * 100.0,
        syncs as f64 / hosts as f64
    );
    println!(
        "wavedeck / one-shot: {:.2}x wall, {:.2}x sshd-side CPU; wavedeck / ControlMaster: {:.2}x wall",
        ours.wall / oneshot.wall,
        ours.sshd / oneshot.sshd,
        ours.wall / master.wall
    );
    println!(
        "wavedeck / one-shot with its upload checked as wavedeck's: {:.2}x wall, {:.2}x sshd-side CPU",
        ours.wall / like_for_like.wall,
        ours.sshd / like_for_like.sshd
    );
}

/// Runs `contender` and measures it: wall time, this process's and its reaped children's CPU
/// (the ssh clients), and the sshd listeners' reaped children's CPU once every session is gone.
fn measure(listeners: &[u32], contender: impl FnOnce() -> f64) -> Figures {
    let (own, clients, sshd) = (self_cpu(), children_cpu(), sshd_cpu(listeners));
    let wall = contender();
    settle(listeners);
    let own = self_cpu() - own;
    let clients = children_cpu() - clients;
    Figures { wall, controller: own + clients, sshd: sshd_cpu(listeners) - sshd }
}

/// Waits until the listeners have reaped every session (their CPU is counted only then).
fn settle(listeners: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && listeners.iter().any(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).is_ok_and(|c| !c.trim().is_empty())
        })
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fields of /proc/PID/stat after the command name, as seconds of CPU (100 ticks a second).
fn stat_seconds(pid: &str, fields: &[usize]) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    // `rest[0]` is field 3 (state).
    fields.iter().map(|f| rest.get(f - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)).sum::<f64>() / 100.0
}

fn self_cpu() -> f64 {
    stat_seconds("self", &[14, 15])
}

fn children_cpu() -> f64 {
    stat_seconds("self", &[16, 17])
}

fn sshd_cpu(listeners: &[u32]) -> f64 {
    listeners.iter().map(|pid| stat_seconds(&pid.to_string(), &[14, 15, 16, 17])).sum()
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// A release tarball of about 1 MiB (incompressible) with a VERSION file.
fn make_artifact(root: &Path) -> std::path::PathBuf {
    let src = root.join("artifact");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("VERSION"), RELEASE).unwrap();
    let blob: Vec<u8> = (0..1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
    std::fs::write(src.join("app.bin"), blob).unwrap();
    let tarball = root.join("app.tar.gz");
    let status = Command::new("tar").arg("czf").arg(&tarball).arg("-C").arg(&src).arg(".").status().unwrap();
    assert!(status.success());
    tarball
}

const STEPS: [(&str, &str); 4] = [
    (
        "unpack",
        "cd hosts/{{ host }} && mkdir -p releases/{{ release }} && tar xzf incoming/app.tar.gz -C releases/{{ release }}",
    ),
    ("switch", "cd hosts/{{ host }} && ln -sfn releases/{{ release }} current.new && mv -T current.new current"),
    ("restart", "cd hosts/{{ host }} && sleep 0.2 && cp current/VERSION service.state"),
    ("health", "cd hosts/{{ host }} && test \"$(cat service.state)\" = {{ release }}"),
];

/// The benchmark's profile, deploying into `remote`.
fn profile_text(root: &Path, artifact: &Path, ports: &[u16], remote: &Path) -> String {
    std::fs::create_dir_all(remote).unwrap();
    let mut profile = format!(
        "[service]\nname = \"bench\"\n[plan]\ncanary = 1\nbatch = \"10%\"\nparallel = {PARALLEL}\n[ssh]\nuser = \"root\"\n\
         identity_files = [\"{key}\"]\nknown_hosts = [\"{known}\"]\nconfig = \"none\"\ndeploy_path = \"{remote}\"\n\
         [[environments]]\nname = \"bench\"\ntransport = \"ssh\"\nhosts = [",
        key = root.join("client_ed25519").display(),
        known = root.join("known_hosts").display(),
        remote = remote.display(),
    );
    for (i, port) in ports.iter().enumerate() {
        let _ = write!(profile, "{{ name = \"h{i:03}\", address = \"127.0.0.1\", port = {port} }},");
    }
    profile.push_str("]\n");
    if !no_work() {
        let _ = write!(
            profile,
            "[[steps]]\nname = \"upload\"\nupload = {{ from = \"{}\", to = \"hosts/{{{{ host }}}}/incoming/app.tar.gz\" }}\n",
            artifact.display()
        );
    }
    for (name, run) in steps() {
        let _ = write!(profile, "[[steps]]\nname = \"{name}\"\nrun = '{run}'\n");
    }
    profile
}

/// The same deploy the way `wavedeck deploy` runs it: a runner process that owns it (audit log,
/// lock, control socket), followed by this process as its client.
fn run_through_runner(root: &Path, artifact: &Path, ports: &[u16]) -> (f64, u64) {
    let text = profile_text(root, artifact, ports, &root.join("remote-runner"));
    let path = root.join("bench.toml");
    std::fs::write(&path, text).unwrap();
    let spec = wavedeck::runner::Spec {
        job: wavedeck::runner::Job::Deploy { release: RELEASE.into() },
        profile: path,
        env: "bench".into(),
        audit_dir: Some(root.join("audit")),
        local_root: None,
        mode: "headless".into(),
        confirmation: None,
        first: Vec::new(),
        on_detach: None,
        metrics_file: None,
        passphrases: Default::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let started = Instant::now();
    let ended = runtime.block_on(async {
        let mut client = wavedeck::runner::spawn(&spec).await.map_err(|r| r.message).unwrap();
        while client.events.recv().await.is_some() {}
        client.ended().await
    });
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(ended.outcome, Some(Outcome::Succeeded), "{ended:?}");
    (elapsed, ended.journal_syncs)
}

fn run_wavedeck(root: &Path, artifact: &Path, ports: &[u16]) -> f64 {
    let profile = profile_text(root, artifact, ports, &root.join("remote-wavedeck"));
    let profile = Profile::parse(Path::new("bench.toml"), &profile).unwrap_or_else(|e| panic!("{e}"));
    let plan = Plan::build(&profile, "bench", RELEASE, &Secrets::default()).unwrap();
    let transport = Arc::new(SshTransport::new(&profile.environments[0].ssh).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let started = Instant::now();
    let (outcome, summaries) = runtime.block_on(async {
        let (_commands, command_rx) = mpsc::unbounded_channel();
        let (tx, mut rx) = engine::event_channel();
        // `BENCH_TIMELINE=1`: each wave's steps, as offsets from the wave's start: when the first
        // host began the step and when the last one finished it.
        let timeline = std::env::var_os("BENCH_TIMELINE").is_some();
        let drain = tokio::spawn(async move {
            use wavedeck::event::Event;
            let mut began = std::collections::HashMap::new();
            let mut steps: Vec<(String, i64, i64)> = Vec::new();
            while let Some(stamped) = rx.recv().await {
                match stamped.event {
                    Event::WaveStarted { wave, .. } => {
                        began.insert(wave, stamped.at);
                        steps.clear();
                    }
                    Event::StepStarted { wave, step, .. } | Event::StepFinished { wave, step, .. } if timeline => {
                        let at = began.get(&wave).map_or(0, |b| (stamped.at - *b).num_milliseconds());
                        match steps.iter_mut().find(|(name, ..)| *name == step) {
                            Some(entry) => entry.2 = entry.2.max(at),
                            None => steps.push((step, at, at)),
                        }
                    }
                    Event::WaveFinished { wave, .. } => {
                        if let Some(at) = began.get(&wave) {
                            let took = (stamped.at - *at).num_milliseconds() as f64 / 1000.0;
                            WAVES.lock().unwrap()[0].push(took);
                            if timeline {
                                let shown: Vec<String> =
                                    steps.iter().map(|(name, first, last)| format!("{name} {first}-{last}")).collect();
                                println!("wave {wave}: {:.0} ms: {}", took * 1000.0, shown.join(", "));
                            }
                        }
                    }
                    _ => {}
                }
            }
        });
        let result = engine::run(plan, transport, command_rx, tx, Secrets::default().redactor()).await;
        let _ = drain.await;
        result
    });
    let elapsed = started.elapsed().as_secs_f64();
    let failed: Vec<_> = summaries.iter().filter(|s| s.state != wavedeck::event::HostState::Done).collect();
    assert_eq!(outcome, Outcome::Succeeded, "wavedeck deploy failed: {failed:#?}");
    elapsed
}

/// `wavedeck check` of every host (as the CLI and the console's `c` run it): wall time, and how
/// many came back ready.
fn run_check(root: &Path, artifact: &Path, ports: &[u16]) -> (f64, usize) {
    let profile = profile_text(root, artifact, ports, &root.join("remote-check"));
    let profile = Profile::parse(Path::new("bench.toml"), &profile).unwrap_or_else(|e| panic!("{e}"));
    let env = profile.environments[0].clone();
    let transport = Arc::new(SshTransport::new(&env.ssh).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let started = Instant::now();
    let results = runtime.block_on(wavedeck::check::check(&env, transport));
    let ready = results.iter().filter(|r| r.status == "ok").count();
    (started.elapsed().as_secs_f64(), ready)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Contender {
    Floor,
    OneShot,
    ControlMaster,
    /// One-shot with the upload checked as wavedeck checks it: the hash compared, the file
    /// renamed into place.
    OneShotChecked,
}

fn run_openssh(root: &Path, ports: &[u16], contender: Contender, artifact: &Path) -> f64 {
    let remote = root.join(match contender {
        Contender::Floor => "remote-floor",
        Contender::OneShot => "remote-oneshot",
        Contender::ControlMaster => "remote-master",
        Contender::OneShotChecked => "remote-checked",
    });
    std::fs::create_dir_all(&remote).unwrap();
    let opts = format!(
        "-i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes -o LogLevel=ERROR \
         -o KexAlgorithms={KEX}",
        root.join("client_ed25519").display(),
        root.join("known_hosts").display()
    );
    let steps = || {
        steps()
            .into_iter()
            .map(|(_, run)| run.replace("cd hosts/{{ host }}", "cd $d").replace("{{ release }}", RELEASE))
    };
    let (upload, artifact) = if no_work() {
        ("true".to_string(), Path::new("/dev/null"))
    } else if contender == Contender::OneShotChecked {
        // What wavedeck's upload guarantees, by hand: the hash compared, an atomic rename.
        let out = Command::new("sha256sum").arg(artifact).output().unwrap();
        let sum = String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string();
        (
            format!(
                "set -e; mkdir -p $d/incoming; t=$d/incoming/.app.tar.gz.tmp; cat > $t; h=$(sha256sum < $t); \
                 [ \"${{h%% *}}\" = {sum} ]; mv -f $t $d/incoming/app.tar.gz"
            ),
            artifact,
        )
    } else {
        (
            "set -e; mkdir -p $d/incoming; cat > $d/incoming/app.tar.gz; sha256sum $d/incoming/app.tar.gz >/dev/null"
                .to_string(),
            artifact,
        )
    };
    let per_host = match contender {
        Contender::Floor => format!("ssh {opts} -p $2 root@127.0.0.1 true\n"),
        // The tarball on stdin, every step in one remote shell.
        Contender::OneShot | Contender::OneShotChecked => {
            let mut remote_script = upload.clone();
            for command in steps() {
                let _ = write!(remote_script, "; ({command})");
            }
            let file = root.join("oneshot-remote.sh");
            std::fs::write(&file, remote_script).unwrap();
            format!(
                "set -e\nh=$1; p=$2; d={remote}/hosts/$h\n\
                 ssh {opts} -p $p root@127.0.0.1 \"d=$d; $(cat {file})\" < {artifact}\n",
                remote = remote.display(),
                file = file.display(),
                artifact = artifact.display(),
            )
        }
        // One master per host, then a command per step over it.
        Contender::ControlMaster => {
            let mut script = format!(
                "set -e\nh=$1; p=$2; d={remote}/hosts/$h; c={root}/cm-$h\n\
                 o=\"{opts} -o ControlPath=$c -p $p\"\n\
                 ssh $o -o ControlMaster=yes -o ControlPersist=60 -fN root@127.0.0.1\n",
                remote = remote.display(),
                root = root.display(),
            );
            if !no_work() {
                let _ = write!(
                    script,
                    "ssh $o root@127.0.0.1 \"mkdir -p $d/incoming\"\n\
                     scp -q {opts} -o ControlPath=$c -P $p {artifact} root@127.0.0.1:$d/incoming/app.tar.gz\n\
                     ssh $o root@127.0.0.1 \"sha256sum $d/incoming/app.tar.gz\" >/dev/null\n",
                    artifact = artifact.display(),
                );
            }
            for command in steps() {
                let _ = writeln!(script, "ssh $o root@127.0.0.1 '{}'", command.replace("$d", "'\"$d\"'"));
            }
            script.push_str("ssh $o -O exit root@127.0.0.1 2>/dev/null\n");
            script
        }
    };
    let script = root.join("per_host.sh");
    std::fs::write(&script, per_host).unwrap();
    let sizes = wave_sizes(
        ports.len(),
        &wavedeck::profile::RolloutPolicy {
            canary: 1,
            batch: wavedeck::profile::Amount::Percent(10),
            max_failures: wavedeck::profile::Amount::Count(0),
            on_failure: wavedeck::profile::FailureAction::Pause,
            pause_between_waves: std::time::Duration::ZERO,
            parallel: PARALLEL,
            soak: std::time::Duration::ZERO,
            gate: wavedeck::profile::Promotion::Auto,
            on_detach: wavedeck::profile::DetachAction::Pause,
            detached_timeout: wavedeck::profile::DEFAULT_DETACHED_TIMEOUT,
        },
    );
    let started = Instant::now();
    let mut next = 0;
    let slot = match contender {
        Contender::Floor => 1,
        Contender::OneShot => 2,
        Contender::ControlMaster => 3,
        Contender::OneShotChecked => 4,
    };
    for size in sizes {
        let wave_began = Instant::now();
        let list: String = (next..next + size).map(|i| format!("h{i:03} {}\n", ports[i])).collect();
        next += size;
        let mut child = Command::new("xargs")
            .args(["-P", &PARALLEL.to_string(), "-L", "1", "sh"])
            .arg(&script)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), list.as_bytes()).unwrap();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success(), "OpenSSH contender failed in a wave");
        WAVES.lock().unwrap()[slot].push(wave_began.elapsed().as_secs_f64());
    }
    started.elapsed().as_secs_f64()
}
