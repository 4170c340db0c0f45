//! A real OpenSSH sshd for tests: its own host key, client keys, config, log and port on
//! loopback, all in a temporary directory. The system's sshd configuration is never read or
//! touched. Without sshd the tests skip with a reason, except in CI (`CI` set), where they fail.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SSHD: &str = "/usr/sbin/sshd";

/// Returns false (after printing why) when the SSH tests cannot run here.
pub fn available() -> bool {
    if Path::new(SSHD).exists() && which("ssh-keygen") {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "sshd and ssh-keygen are required in CI (.ci/run installs openssh-server)"
    );
    eprintln!("skipping: {SSHD} or ssh-keygen not found (apt-get install openssh-server)");
    false
}

/// Whether `tool` is installed for a test that needs it: where it is not, the test is skipped
/// with a word why, except in CI (`.ci/run` installs it), where that is a failure.
pub fn tool(tool: &str) -> bool {
    if which(tool) {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{tool} is required in CI (.ci/run installs it)");
    eprintln!("skipping: {tool} not found");
    false
}

fn which(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

pub fn keygen(path: &Path, kind: &str) {
    let _ = std::fs::remove_file(path);
    let bits: &[&str] = if kind == "rsa" { &["-b", "2048"] } else { &[] };
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-C", "wavedeck-test", "-f"])
        .arg(path)
        .args(bits)
        .status()
        .unwrap();
    assert!(status.success());
}

/// An ed25519 key at `path` encrypted with `passphrase`.
pub fn keygen_encrypted(path: &Path, passphrase: &str) {
    let _ = std::fs::remove_file(path);
    let status =
        Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", passphrase, "-f"]).arg(path).status().unwrap();
    assert!(status.success());
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Sshd {
    pub dir: PathBuf,
    pub port: u16,
    host_key: PathBuf,
    child: Child,
}

impl Sshd {
    /// Starts sshd in `dir` (which must hold `authorized_keys`), with a fresh host key.
    pub fn start(dir: &Path, name: &str) -> Sshd {
        Self::start_with(dir, name, "ed25519", "")
    }

    /// Starts sshd with a fresh host key of `kind` and `extra` lines in its config.
    pub fn start_with(dir: &Path, name: &str, kind: &str, extra: &str) -> Sshd {
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let host_key = dir.join(format!("host_{kind}"));
        keygen(&host_key, kind);
        // A free port can be taken by another test between the look and sshd's bind: then sshd
        // exits at once, and another port is tried.
        for _ in 0..10 {
            if let Some(sshd) = Self::listen(&dir, &host_key, extra) {
                return sshd;
            }
        }
        panic!(
            "sshd did not start on any of ten ports; log:\n{}",
            std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
        );
    }

    fn listen(dir: &Path, host_key: &Path, extra: &str) -> Option<Sshd> {
        let port = free_port();
        let config = dir.join("sshd_config");
        let authorized = dir.parent().unwrap().join("authorized_keys");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {auth}\nPidFile {pid}\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nAllowTcpForwarding yes\n\
                 MaxStartups 1000:30:1000\nMaxSessions 1000\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\n\
                 # bash skips ~/.bashrc when SHLVL is already >= 2, keeping command start-up quiet and fast.\n\
                 {set_env}{extra}\n",
                // sshd takes the first SetEnv it reads: a caller's own must carry SHLVL too.
                set_env = if extra.contains("SetEnv ") { "" } else { "SetEnv SHLVL=5\n" },
                host = host_key.display(),
                auth = authorized.display(),
                pid = dir.join("sshd.pid").display(),
            ),
        )
        .unwrap();
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(dir.join("sshd.log"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut sshd = Sshd { dir: dir.to_path_buf(), port, host_key: host_key.to_path_buf(), child };
        sshd.wait_listening().then_some(sshd)
    }

    /// Polls this sshd's own log until it says it is listening on its port (a connection test
    /// could reach another test's sshd that took the port first); false when sshd exited
    /// instead (its port was taken).
    fn wait_listening(&mut self) -> bool {
        let start = Instant::now();
        let listening = format!("Server listening on 127.0.0.1 port {}", self.port);
        while !self.log().contains(&listening) {
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "sshd did not start; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// The `known_hosts` line for this server.
    pub fn known_hosts_line(&self) -> String {
        let key = std::fs::read_to_string(self.host_key.with_extension("pub")).unwrap();
        let mut parts = key.split_whitespace();
        format!("[127.0.0.1]:{} {} {}\n", self.port, parts.next().unwrap(), parts.next().unwrap())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the per-connection sshd processes (the listener's children): every open
    /// connection drops as if the network had gone.
    pub fn cut_connections(&self) {
        let _ = Command::new("pkill").args(["-KILL", "-P", &self.pid().to_string()]).status();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client key pair plus an authorized_keys holding it, and known_hosts for the servers.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub servers: Vec<Sshd>,
    /// Stand-ins for host commands ([`Fleet::with_tools`]), kept as long as the fleet.
    tools: Option<tempfile::TempDir>,
}

impl Drop for Fleet {
    /// After every SSH test, nothing a step started may be left running on its "hosts": a
    /// process whose working directory is under this fleet's deploy directory fails the test
    /// (after a moment for processes that were just killed to go), and is killed.
    fn drop(&mut self) {
        let deploy = self.path("deploy");
        let leftovers = || -> Vec<(u32, String)> {
            let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
                .filter(|pid| {
                    std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&deploy))
                        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                            .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')))
                })
                .map(|pid| {
                    (
                        pid,
                        std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default().replace('\0', " "),
                    )
                })
                .collect()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut left = leftovers();
        while !left.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
            left = leftovers();
        }
        for (pid, _) in &left {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        if !std::thread::panicking() {
            assert!(left.is_empty(), "processes left running on the test's hosts: {left:?}");
        }
    }
}

impl Fleet {
    /// One host whose sessions find `tools` (name, script) first on their PATH: stand-ins for a
    /// host's own commands (a `df` that hangs, a `dd` that is not GNU's). The directory is kept
    /// with the fleet.
    pub fn with_tools(tools: &[(&str, &str)]) -> Fleet {
        use std::os::unix::fs::PermissionsExt;
        let bin = tempfile::tempdir().unwrap();
        for (name, script) in tools {
            let path = bin.path().join(name);
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut fleet =
            Fleet::start_with(1, "ed25519", &format!("SetEnv SHLVL=5 PATH={}:/usr/bin:/bin", bin.path().display()));
        fleet.tools = Some(bin);
        fleet
    }

    /// `count` sshd servers trusting one ed25519 client key (`client_ed25519`).
    pub fn start(count: usize) -> Fleet {
        Self::start_with(count, "ed25519", "")
    }

    /// Like `start`, with host keys of `kind` and `extra` sshd_config lines.
    pub fn start_with(count: usize, kind: &str, extra: &str) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("client_ed25519");
        keygen(&key, "ed25519");
        std::fs::copy(key.with_extension("pub"), dir.path().join("authorized_keys")).unwrap();
        std::fs::create_dir_all(dir.path().join("deploy")).unwrap();
        let servers: Vec<Sshd> =
            (0..count).map(|i| Sshd::start_with(dir.path(), &format!("sshd{i}"), kind, extra)).collect();
        let known: String = servers.iter().map(|s| s.known_hosts_line()).collect();
        std::fs::write(dir.path().join("known_hosts"), known).unwrap();
        Fleet { dir, servers, tools: None }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A profile with environment `test` whose hosts are this fleet's servers, running `steps`
    /// (TOML `[[steps]]` tables) with `extra` added to its `[ssh]` table. Failures do not trip
    /// the wave threshold: these tests look at one failure at a time.
    pub fn profile(&self, steps: &str, extra_ssh: &str) -> String {
        let hosts: Vec<String> = self
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{{ name = \"h{i}\", address = \"127.0.0.1\", port = {} }}", s.port))
            .collect();
        format!(
            "[service]\nname = \"svc\"\n\n[plan]\ncanary = 0\nbatch = \"100%\"\nmax_failures = \"100%\"\n\n[ssh]\nuser = \"root\"\n\
             identity_files = [\"{key}\"]\nknown_hosts = [\"{known}\"]\nconfig = \"none\"\ndeploy_path = \"{deploy}\"\n\
             connect_attempts = 1\nconnect_timeout = \"10s\"\n{extra_ssh}\n\n[[environments]]\nname = \"test\"\n\
             transport = \"ssh\"\nhosts = [{hosts}]\n\n{steps}",
            key = self.path("client_ed25519").display(),
            known = self.path("known_hosts").display(),
            deploy = self.path("deploy").display(),
            hosts = hosts.join(", "),
        )
    }
}
