//! The SSH transport, on russh: one authenticated connection per host, and on it one persistent
//! remote shell ([`agent`]) that runs the host's steps and uploads one after another.
//!
//! What operators rely on from OpenSSH is kept: known_hosts verification (hashed and
//! `[host]:port` entries), ~/.ssh/config (`Host` patterns, HostName, User, Port, IdentityFile,
//! IdentitiesOnly, ProxyJump, ConnectTimeout, ServerAliveInterval), agent and identity-file
//! keys. Every step runs in a process group only it (and the agent) is in, so a timeout or abort
//! can kill everything the step started. Where the agent cannot run, a step gets a channel of its
//! own, under `setsid`, and reports its group first.

mod agent;
mod endpoint;
mod hostkeys;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{Algorithm, EcdsaCurve, HashAlg, PrivateKeyWithHashAlg};
use russh::{ChannelMsg, Sig};
use tokio_util::sync::CancellationToken;

pub use self::endpoint::{ConfigFile, Endpoint, expand_home};
use self::hostkeys::Verifier;
use super::{
    BoxFuture, ConnectObserver, Earlier, ExecRequest, HostSession, KILL_GRACE, LineSplitter, MAX_CAPTURED_BYTES,
    OutputSink, StepRecord, Sweep, Target, Transport, TransportError, UploadRequest, stdin_script, upload,
};
use crate::event::{StepResult, Stream};
use crate::profile::SshSettings;
use crate::shell::quote;

/// Longest and first pause between connection attempts (doubled each time, with ±25% jitter).
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Unanswered keepalives after which a connection counts as dead.
const KEEPALIVE_MAX: usize = 3;
/// Host key algorithms accepted, in order of preference: OpenSSH 9's defaults that russh
/// implements. `ssh-rsa` (RSA with SHA-1 signatures) is not among them, as in OpenSSH since 8.8;
/// an RSA host key still works through rsa-sha2-512/256. russh's key exchanges, ciphers and MACs
/// are already limited to ones OpenSSH also offers by default (no SHA-1 MACs, no group1/group14-sha1).
const HOST_KEY_ALGORITHMS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa { curve: EcdsaCurve::NistP256 },
    Algorithm::Ecdsa { curve: EcdsaCurve::NistP384 },
    Algorithm::Ecdsa { curve: EcdsaCurve::NistP521 },
    Algorithm::Rsa { hash: Some(HashAlg::Sha512) },
    Algorithm::Rsa { hash: Some(HashAlg::Sha256) },
];

/// How the step's process group is announced on the first line of stdout.
const PGID_MARKER: &str = "WAVEDECK-PGID ";

pub struct SshTransport {
    settings: SshSettings,
    config: ConfigFile,
    client: Arc<client::Config>,
    /// The same, also asking for host certificates: for hosts an `@cert-authority` line covers.
    client_asking_certificates: Arc<client::Config>,
    /// Per step record: the bytes of its stdout and stderr that reached this runner, so that
    /// after a dropped connection only what it missed is fetched from the host.
    seen: Seen,
}

/// Bytes of a step's stdout and stderr received over the channel, by record directory.
type Seen = Arc<std::sync::Mutex<std::collections::HashMap<String, (u64, u64)>>>;

impl SshTransport {
    /// Reads ssh_config once for the whole deploy.
    pub fn new(settings: &SshSettings) -> Result<SshTransport, TransportError> {
        let config = ConfigFile::load(settings)?;
        let client_config = |certificates: &'static [Algorithm]| client::Config {
            keepalive_interval: Some(settings.keepalive_interval),
            keepalive_max: KEEPALIVE_MAX,
            nodelay: true,
            preferred: russh::Preferred {
                key: Cow::Borrowed(HOST_KEY_ALGORITHMS),
                host_key_certificates: Cow::Borrowed(certificates),
                ..russh::Preferred::DEFAULT
            },
            ..Default::default()
        };
        let client = Arc::new(client_config(&[]));
        let client_asking_certificates = Arc::new(client_config(HOST_KEY_ALGORITHMS));
        Ok(SshTransport {
            settings: settings.clone(),
            config,
            client,
            client_asking_certificates,
            seen: Seen::default(),
        })
    }

    /// Resolves where a host's steps will go (for `check` and messages).
    pub fn endpoint(&self, target: &Target) -> Result<Endpoint, TransportError> {
        self.config.endpoint(&target.host, &self.settings)
    }

    async fn connect_once(&self, endpoint: &Endpoint) -> Result<Connection, TransportError> {
        let mut hops: Vec<Handle<Verifier>> = Vec::new();
        for hop in &endpoint.jumps {
            let handle = self.handshake(hop, hops.last()).await?;
            hops.push(handle);
        }
        let handle = self.handshake(endpoint, hops.last()).await?;
        Ok(Connection { handle, _hops: hops })
    }

    /// Connects to `endpoint` (directly, or through `via`), verifies its key, authenticates.
    async fn handshake(
        &self,
        endpoint: &Endpoint,
        via: Option<&Handle<Verifier>>,
    ) -> Result<Handle<Verifier>, TransportError> {
        let verifier =
            Verifier::new(&endpoint.hostname, endpoint.port, &self.settings.known_hosts, self.settings.host_key_policy);
        let refusal = verifier.refusal.clone();
        let place = format!("{}:{}", endpoint.hostname, endpoint.port);
        // Host certificates are asked for only where known_hosts trusts an authority for the host.
        let config =
            if verifier.trusts_an_authority() { self.client_asking_certificates.clone() } else { self.client.clone() };
        tracing::debug!(host = %endpoint.alias, %place, user = %endpoint.user, jump = via.is_some(), "connecting");
        let connecting = async {
            match via {
                None => {
                    let tcp = tokio::net::TcpStream::connect((endpoint.hostname.as_str(), endpoint.port))
                        .await
                        .map_err(|e| TransportError::Unreachable(format!("cannot connect to {place}: {e}")))?;
                    let _ = tcp.set_nodelay(true);
                    client::connect_stream(config, tcp, verifier).await
                }
                Some(jump) => {
                    let channel = jump
                        .channel_open_direct_tcpip(endpoint.hostname.clone(), u32::from(endpoint.port), "127.0.0.1", 0)
                        .await
                        .map_err(|e| TransportError::Unreachable(format!("jump host cannot reach {place}: {e}")))?;
                    client::connect_stream(config, channel.into_stream(), verifier).await
                }
            }
            .map_err(|e| {
                refusal
                    .lock()
                    .ok()
                    .and_then(|mut r| r.take())
                    .unwrap_or_else(|| TransportError::Unreachable(format!("SSH handshake with {place} failed: {e}")))
            })
        };
        let mut handle = tokio::time::timeout(endpoint.connect_timeout, connecting).await.map_err(|_| {
            TransportError::Unreachable(format!(
                "no SSH connection to {place} within {}",
                humantime::format_duration(endpoint.connect_timeout)
            ))
        })??;
        tracing::debug!(%place, "host key accepted; authenticating");
        authenticate(&mut handle, endpoint)
            .await
            .inspect_err(|e| tracing::debug!(%place, error = %e, "authentication failed"))?;
        tracing::debug!(%place, "authenticated");
        Ok(handle)
    }
}

impl Transport for SshTransport {
    fn open<'a>(
        &'a self,
        target: &'a Target,
        observer: &'a dyn ConnectObserver,
    ) -> BoxFuture<'a, Result<Box<dyn HostSession>, TransportError>> {
        Box::pin(async move {
            let endpoint = self.endpoint(target)?;
            let attempts = self.settings.connect_attempts.max(1);
            let mut delay = BACKOFF_FIRST;
            for attempt in 1..=attempts {
                match self.connect_once(&endpoint).await {
                    Ok(connection) => {
                        return Ok(Box::new(SshSession {
                            connection,
                            host: target.host.name.clone(),
                            env: target.env.clone(),
                            deploy_path: self.settings.deploy_path.clone(),
                            helper_timeout: self.settings.helper_timeout,
                            seen: self.seen.clone(),
                            keep_output: self.settings.keep_step_output,
                            spare: tokio::sync::Mutex::new(None),
                            agent: tokio::sync::Mutex::new(AgentSlot::NotStarted),
                            no_agent: std::sync::atomic::AtomicBool::new(false),
                        }) as Box<dyn HostSession>);
                    }
                    Err(error) => {
                        tracing::debug!(host = %target.host.name, attempt, of = attempts, kind = error.kind(), %error, "connection attempt failed");
                        // Only a missing connection can get better by trying again.
                        let retry = matches!(error, TransportError::Unreachable(_)) && attempt < attempts;
                        let wait = retry.then(|| jitter(delay));
                        observer.attempt_failed(attempt, attempts, &error, wait);
                        match wait {
                            Some(wait) => {
                                tokio::time::sleep(wait).await;
                                delay = (delay * 2).min(BACKOFF_MAX);
                            }
                            None => return Err(error),
                        }
                    }
                }
            }
            Err(TransportError::Unreachable(format!("{} is unreachable", endpoint.alias)))
        })
    }
}

/// `d` ±25%, so a fleet that lost its network does not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(d.as_nanos() as u64);
    let spread = (h.finish() % 501) as f64 / 1000.0; // 0.0..=0.5
    d.mul_f64(0.75 + spread)
}

/// Passphrases of encrypted identity files the operator typed for this deploy (the console asks
/// before it starts one; the runner, a process per deploy, holds them in memory only).
static PASSPHRASES: std::sync::Mutex<Vec<(std::path::PathBuf, String)>> = std::sync::Mutex::new(Vec::new());

/// Keeps the passphrases the operator typed, for the keys of this process's deploy.
pub fn remember_passphrases(given: Vec<(std::path::PathBuf, String)>) {
    if let Ok(mut kept) = PASSPHRASES.lock() {
        kept.extend(given);
    }
}

fn passphrase_for(path: &std::path::Path) -> Option<String> {
    PASSPHRASES.lock().ok()?.iter().find(|(p, _)| p == path).map(|(_, pass)| pass.clone())
}

/// The identity files the hosts of `hosts` would be offered that are encrypted, that no
/// running ssh-agent holds and that no passphrase was given for: what a console must ask
/// about before starting a deploy (headless mode refuses them with the `ssh-add` hint).
pub async fn locked_identities(settings: &SshSettings, hosts: &[crate::profile::Host]) -> Vec<std::path::PathBuf> {
    let Ok(config) = ConfigFile::load(settings) else { return Vec::new() };
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for host in hosts {
        if let Ok(endpoint) = config.endpoint(host, settings) {
            for file in endpoint.jumps.iter().flat_map(|j| &j.identities).chain(&endpoint.identities) {
                if !files.contains(file) {
                    files.push(file.clone());
                }
            }
        }
    }
    let encrypted: Vec<std::path::PathBuf> = files
        .into_iter()
        .filter(|p| p.exists() && passphrase_for(p).is_none())
        .filter(|p| matches!(russh::keys::load_secret_key(p, None), Err(russh::keys::Error::KeyIsEncrypted)))
        .collect();
    if encrypted.is_empty() {
        return encrypted;
    }
    let held: Vec<russh::keys::PublicKey> = match russh::keys::agent::client::AgentClient::connect_env().await {
        Ok(mut agent) => agent
            .request_identities()
            .await
            .map(|ids| ids.into_iter().map(|i| i.public_key().into_owned()).collect())
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    encrypted
        .into_iter()
        .filter(|p| {
            let public = std::fs::read_to_string(p.with_extension("pub")).ok();
            let public = public.and_then(|t| russh::keys::PublicKey::from_openssh(t.trim()).ok());
            !public.is_some_and(|k| held.iter().any(|h| h.key_data() == k.key_data()))
        })
        .collect()
}

/// Agent keys first (unless IdentitiesOnly), then identity files, like OpenSSH.
async fn authenticate(handle: &mut Handle<Verifier>, endpoint: &Endpoint) -> Result<(), TransportError> {
    let user = endpoint.user.clone();
    let rsa_hash = handle.best_supported_rsa_hash().await.ok().flatten().flatten();
    let mut tried = Vec::new();
    let wanted: Vec<russh::keys::PublicKey> = endpoint
        .identities
        .iter()
        .filter_map(|p| std::fs::read_to_string(p.with_extension("pub")).ok())
        .filter_map(|text| russh::keys::PublicKey::from_openssh(text.trim()).ok())
        .collect();
    if let Ok(mut agent) = russh::keys::agent::client::AgentClient::connect_env().await
        && let Ok(identities) = agent.request_identities().await
    {
        for identity in identities {
            let key = identity.public_key().into_owned();
            if endpoint.identities_only && !wanted.iter().any(|w| w.key_data() == key.key_data()) {
                continue;
            }
            tried.push(format!("agent key {}", key.fingerprint(HashAlg::Sha256)));
            let hash = if key.algorithm().is_rsa() { rsa_hash } else { None };
            if let Ok(result) = handle.authenticate_publickey_with(user.clone(), key, hash, &mut agent).await
                && result.success()
            {
                return Ok(());
            }
        }
    }
    let mut encrypted = Vec::new();
    for path in &endpoint.identities {
        if !path.exists() {
            continue;
        }
        let passphrase = passphrase_for(path);
        let key = match russh::keys::load_secret_key(path, passphrase.as_deref()) {
            Ok(key) => key,
            Err(russh::keys::Error::KeyIsEncrypted) => {
                encrypted.push(path.display().to_string());
                continue;
            }
            Err(_) if passphrase.is_some() => {
                return Err(TransportError::Config(format!(
                    "the passphrase given for {} does not open it",
                    path.display()
                )));
            }
            Err(e) => return Err(TransportError::Config(format!("cannot use identity file {}: {e}", path.display()))),
        };
        // A certificate for this key (signed by a CA the host trusts) first, as OpenSSH does.
        let mut beside = path.clone().into_os_string();
        beside.push("-cert.pub");
        let key = Arc::new(key);
        for cert_path in std::iter::once(std::path::PathBuf::from(beside)).chain(endpoint.certificates.iter().cloned())
        {
            let Ok(cert) = russh::keys::load_openssh_certificate(&cert_path) else { continue };
            if cert.public_key() != key.public_key().key_data() {
                continue;
            }
            tried.push(format!("certificate {}", cert_path.display()));
            tracing::debug!(certificate = %cert_path.display(), "offering a user certificate");
            let result = handle
                .authenticate_openssh_cert(user.clone(), key.clone(), cert)
                .await
                .map_err(|e| TransportError::Unreachable(format!("connection lost while authenticating: {e}")))?;
            if result.success() {
                return Ok(());
            }
        }
        tried.push(path.display().to_string());
        let hash = if key.algorithm().is_rsa() { rsa_hash } else { None };
        let result = handle
            .authenticate_publickey(user.clone(), PrivateKeyWithHashAlg::new(key, hash))
            .await
            .map_err(|e| TransportError::Unreachable(format!("connection lost while authenticating: {e}")))?;
        if result.success() {
            return Ok(());
        }
    }
    let place = format!("{}@{}:{}", endpoint.user, endpoint.hostname, endpoint.port);
    if tried.is_empty() && !encrypted.is_empty() {
        return Err(TransportError::Config(format!(
            "identity file {} is encrypted and no ssh-agent holds it: run `ssh-add {}` first",
            encrypted.join(", "),
            encrypted[0]
        )));
    }
    let offered = if tried.is_empty() {
        "no keys: none found (set identity_files or start ssh-agent)".to_string()
    } else {
        tried.join(", ")
    };
    let skipped = if encrypted.is_empty() {
        String::new()
    } else {
        format!("; encrypted and not in the agent: {}", encrypted.join(", "))
    };
    Err(TransportError::AuthFailed(format!("{place} refused every key offered ({offered}{skipped})")))
}

/// How often a waiting runner looks whether an earlier attempt of a step has ended.
const EARLIER_POLL: Duration = Duration::from_secs(1);

/// What a step's record on the host says about an earlier attempt.
enum EarlierAttempt {
    None,
    Running(u32),
    Ended(i32),
    /// It started and is gone without a status (killed with its host, say).
    Vanished,
}

/// An authenticated connection, and the jump-host connections it runs through.
struct Connection {
    handle: Handle<Verifier>,
    _hops: Vec<Handle<Verifier>>,
}

struct SshSession {
    connection: Connection,
    host: String,
    env: String,
    deploy_path: String,
    helper_timeout: Duration,
    seen: Seen,
    /// Steps keep their output beside their record (`[ssh] keep_step_output`).
    keep_output: bool,
    /// A session channel opened while the previous step ran, for the next one: opening a channel
    /// is a round trip (the host must confirm it before anything is sent on it), and sshd starts
    /// nothing for a channel until it is given a command.
    spare: tokio::sync::Mutex<Option<russh::Channel<client::Msg>>>,
    /// The host's persistent shell for steps ([`agent`]); a step that finds it busy (a health
    /// monitor's sample beside a step) gets a channel of its own.
    agent: tokio::sync::Mutex<AgentSlot>,
    /// The host cannot run an agent, so steps take channels and a spare is worth keeping (read
    /// without waiting for the agent's lock, which a step holds).
    no_agent: std::sync::atomic::AtomicBool,
}

enum AgentSlot {
    /// Started with the first step that can use it (and again after a step's timeout or abort
    /// killed it with the step).
    NotStarted,
    Running(Agent),
    /// It could not start on this host (sshd does not make sessions group leaders, or the deploy
    /// directory is missing): steps get channels of their own.
    Unavailable,
}

/// A running agent: its channel, the nonce of its markers, its process id (and group).
struct Agent {
    read: russh::ChannelReadHalf,
    write: russh::ChannelWriteHalf<client::Msg>,
    nonce: String,
    pid: Option<u32>,
    /// A request was sent and its end not seen: its caller gave up on it (a dropped future), so
    /// the agent's next markers are not the next request's. Such an agent is not used again.
    in_flight: bool,
    /// The agent said its `dd` is not GNU's (it may read past the file): uploads take a
    /// channel of their own.
    dd_not_gnu: bool,
}

/// How long a dropped session's agent gets to end on its own.
const AGENT_GOODBYE: Duration = Duration::from_secs(2);

impl Drop for SshSession {
    /// Ends the agent by ending its input, and keeps the connection up until it has gone (a
    /// channel holds it open), so that sshd sees its session end as after any command: it reaps
    /// the agent rather than leaving it to outlive the connection.
    fn drop(&mut self) {
        let slot = std::mem::replace(self.agent.get_mut(), AgentSlot::NotStarted);
        if let AgentSlot::Running(mut agent) = slot
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = agent.write.eof().await;
                let _ = tokio::time::timeout(AGENT_GOODBYE, async { while agent.read.wait().await.is_some() {} }).await;
            });
        }
    }
}

/// How one request to the agent went.
enum Exchange {
    /// It ended with this status.
    Ended(i32),
    /// It was stopped (timeout, cancel, an upload's local error): the agent was killed with it.
    Stopped(StepResult),
    /// The agent never started: nothing ran.
    NotRun,
    /// The agent died or the connection dropped during the request.
    Lost(StepResult),
}

/// An upload's file, sent on the agent's stdin once the host asks for it.
struct AgentUpload<'a> {
    from: &'a std::path::Path,
    size: u64,
    asked: tokio::sync::oneshot::Receiver<()>,
}

impl SshSession {
    /// A session channel: the spare if there is one, else a new one.
    async fn open_channel(&self) -> Result<russh::Channel<client::Msg>, russh::Error> {
        // A spare being opened right now is not waited for (a host slow to answer would hold
        // this step up): a channel of its own then.
        if let Ok(mut spare) = self.spare.try_lock()
            && let Some(channel) = spare.take()
        {
            return Ok(channel);
        }
        self.connection.handle.channel_open_session().await
    }

    /// `work` with a spare channel opened beside it; the spare is given up if `work` ends first,
    /// so it never makes a step wait.
    async fn with_refill<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        let refill = self.refill_spare();
        tokio::pin!(work, refill);
        let mut refilled = false;
        loop {
            // `work` first: it takes the spare before the refill looks whether there is one.
            tokio::select! {
                biased;
                result = &mut work => return result,
                () = &mut refill, if !refilled => refilled = true,
            }
        }
    }

    /// Opens the next spare channel if there is none; run beside a step, it costs it nothing.
    /// Only where steps take channels (no agent on this host, or steps keep their output):
    /// otherwise the agent, or the first step's start of it, needs none, and an unused channel
    /// is still an sshd session to set up and tear down.
    async fn refill_spare(&self) {
        if !self.keep_output && !self.no_agent.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut spare = self.spare.lock().await;
        if spare.is_none() && !self.connection.handle.is_closed() {
            *spare = self.connection.handle.channel_open_session().await.ok();
        }
    }

    /// The shell line that starts a step in the deploy directory, in a new session whose
    /// process group id is printed first. It holds no part of the step: the script follows on
    /// the channel's stdin, so nothing secret is in any process's arguments on the host.
    ///
    /// With a `record`, the group also notes its id in `<record>/pgid` before the step starts and
    /// its exit status in `<record>/status` after it ends, so a runner that lost the step (it was
    /// killed, or the connection dropped) can find it again.
    fn wrap(&self, record: Option<&str>, sweep: &str) -> String {
        // The record is one file written with shell builtins only (no process beyond the
        // deploy's first `mkdir`): `pgid N` before the step, `status N` after it. With
        // `keep_step_output`, GNU tee's -p also copies the output to `<record>.out`/`.err`, so a
        // dropped connection stops only the copy to it and breaks no pipe: the step goes on.
        let body = match record {
            Some(file) if self.keep_output => format!(
                "{sweep}f={file}; d=${{f%/*}}; [ -d \"$d\" ] || mkdir -p \"$d\" || exit 125; \
                 echo \"pgid $$\" > \"$f\" || exit 125; echo \"{PGID_MARKER}$$\"; \
                 if tee -p -a /dev/null </dev/null >/dev/null 2>&1 && rm -f \"$f.o\" \"$f.e\" && mkfifo \"$f.o\" \"$f.e\"; then \
                 tee -p -a \"$f.out\" <\"$f.o\" & tee -p -a \"$f.err\" <\"$f.e\" >&2 & \
                 sh -s >\"$f.o\" 2>\"$f.e\"; s=$?; wait; rm -f \"$f.o\" \"$f.e\"; else sh -s; s=$?; fi; \
                 echo \"status $s\" >> \"$f\"; exit $s"
            ),
            Some(file) => format!(
                "{sweep}f={file}; d=${{f%/*}}; [ -d \"$d\" ] || mkdir -p \"$d\" || exit 125; \
                 echo \"pgid $$\" > \"$f\" || exit 125; echo \"{PGID_MARKER}$$\"; \
                 sh -s; s=$?; echo \"status $s\" >> \"$f\"; exit $s"
            ),
            None => format!("echo \"{PGID_MARKER}$$\"; exec sh -s"),
        };
        // OpenSSH's sshd starts every session's shell in a session of its own, so the shell is
        // already its process group's leader and becomes `sh` for the body (the same process,
        // so the same group). Only where it is not (read from /proc with a builtin, so nothing
        // is spawned to find out) does the body go under `setsid`: one process more per step.
        format!(
            "cd {dir} && export WAVEDECK_HOST={host} WAVEDECK_ENV={env} && \
             {{ read -r _ _ _ _ g _ </proc/$$/stat; }} 2>/dev/null; \
             if [ \"$g\" = \"$$\" ]; then exec {run}; else exec setsid -w {run}; fi",
            dir = quote(&self.deploy_path),
            host = quote(&self.host),
            env = quote(&self.env),
            run = format!("sh -c {}", quote(&body)),
        )
    }

    /// Shows what a step wrote while no connection carried its output: the part of its `out`
    /// and `err` files past what reached this runner (all of it for a runner that never saw the
    /// step), at most the last [`MAX_CAPTURED_BYTES`] of each.
    async fn missed_output(&self, dir: &str, output: &dyn OutputSink) {
        let (out_seen, err_seen) = self.seen.lock().ok().and_then(|s| s.get(dir).copied()).unwrap_or((0, 0));
        let path = self.remote_path(dir);
        for (file, seen, stream) in [("out", out_seen, Stream::Stdout), ("err", err_seen, Stream::Stderr)] {
            let command = format!(
                "tail -c +{from} {file} 2>/dev/null | tail -c {MAX_CAPTURED_BYTES}",
                from = seen + 1,
                file = quote(&format!("{path}.{file}"))
            );
            if let Ok((_, mut text)) = self.capture(&command).await
                && !text.is_empty()
            {
                // Cut at the front to its last bytes: the first line is a piece, and a piece may
                // hold part of a secret that masking cannot recognise. It is left out.
                if text.len() >= MAX_CAPTURED_BYTES {
                    text = text.split_once('\n').map_or_else(String::new, |(_, rest)| rest.to_string());
                }
                output.line(
                    Stream::Stdout,
                    format!("wavedeck: what the step wrote to its {file} while no runner watched:"),
                );
                for line in text.lines() {
                    output.line(stream, line.to_string());
                }
            }
        }
    }

    /// An earlier attempt of a step, as its record on the host tells it.
    async fn earlier_attempt(&self, file: &str) -> Result<EarlierAttempt, String> {
        let check = format!(
            "f={file}; [ -f \"$f\" ] || {{ echo none; exit 0; }}; p=; s=; \
             while read -r k v; do case $k in pgid) p=$v;; status) s=$v;; esac; done < \"$f\"; \
             if [ -n \"$s\" ]; then echo \"status $s\"; \
             elif [ -n \"$p\" ] && {alive}; then echo \"alive $p\"; else echo dead; fi",
            file = quote(file),
            alive = group_alive("p"),
        );
        let (_, out) = self.capture(&check).await?;
        let mut words = out.split_whitespace();
        Ok(match (words.next(), words.next().and_then(|w| w.parse::<i64>().ok())) {
            (Some("alive"), Some(pgid)) if pgid > 0 => EarlierAttempt::Running(pgid as u32),
            (Some("status"), Some(code)) => EarlierAttempt::Ended(code as i32),
            (Some("dead"), _) => EarlierAttempt::Vanished,
            _ => EarlierAttempt::None,
        })
    }

    /// Before a step starts again: waits for an earlier attempt still running on the host, and
    /// with [`Earlier::Adopt`] takes the exit status it ends (or ended) with. Returns the result
    /// to report instead of running the step, or `None` to run it.
    async fn settle_earlier(
        &self,
        record: &StepRecord,
        timeout: Duration,
        output: &dyn OutputSink,
        cancel: &CancellationToken,
    ) -> Option<StepResult> {
        let say = |text: String| output.line(Stream::Stdout, format!("wavedeck: {text}"));
        let deadline = tokio::time::Instant::now() + timeout;
        let mut told = false;
        loop {
            let found = match self.earlier_attempt(&self.remote_path(&record.earlier_dir)).await {
                Ok(found) => found,
                Err(e) => {
                    return Some(StepResult::Error { message: format!("cannot look for an earlier attempt: {e}") });
                }
            };
            match found {
                EarlierAttempt::Running(pgid) => {
                    if !told {
                        say(format!(
                            "an earlier attempt of this step (process group {pgid}) is still running on the host: \
                             waiting for it instead of starting another"
                        ));
                        told = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(EARLIER_POLL) => {}
                        _ = cancel.cancelled() => {
                            say(format!("stopping the earlier attempt (process group {pgid})"));
                            self.stop_group(pgid).await;
                            return Some(StepResult::Cancelled);
                        }
                    }
                    if tokio::time::Instant::now() >= deadline {
                        self.stop_group(pgid).await;
                        return Some(StepResult::TimedOut);
                    }
                }
                EarlierAttempt::Ended(code) if matches!(record.earlier, Earlier::Adopt | Earlier::Reattach) => {
                    self.missed_output(&record.earlier_dir, output).await;
                    say(format!(
                        "the earlier attempt of this step ended with exit {code}: taking that, not running it again"
                    ));
                    return Some(StepResult::Exited { code });
                }
                EarlierAttempt::Vanished if record.earlier == Earlier::Adopt => {
                    say("the earlier attempt of this step died without an exit status: running it again".into());
                    return None;
                }
                EarlierAttempt::Vanished if record.earlier == Earlier::Reattach => {
                    return Some(StepResult::Error {
                        message: "the step's processes on the host are gone without an exit status \
                                  (killed while the connection was down?); not running it again here"
                            .into(),
                    });
                }
                _ => return None,
            }
        }
    }

    /// Runs a short helper command (`sha256sum`, `mv`, `df`, `kill`) and returns its exit code
    /// and stdout, at most [`MAX_CAPTURED_BYTES`] of it. A helper that hangs (`df` on a stale NFS
    /// mount) is given up on after the profile's `helper_timeout`.
    async fn capture(&self, command: &str) -> Result<(u32, String), String> {
        let run = async {
            let mut channel = self
                .connection
                .handle
                .channel_open_session()
                .await
                .map_err(|e| format!("cannot open a channel: {e}"))?;
            channel.exec(true, under_sh(command)).await.map_err(|e| e.to_string())?;
            let (mut code, mut out) = (None, Vec::new());
            while let Some(msg) = channel.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        let room = MAX_CAPTURED_BYTES.saturating_sub(out.len());
                        out.extend_from_slice(&data[..data.len().min(room)]);
                    }
                    ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
                    _ => {}
                }
            }
            let code = code.ok_or_else(|| "connection lost while running a helper command".to_string())?;
            Ok((code, String::from_utf8_lossy(&out).into_owned()))
        };
        let verb = command.split_whitespace().next().unwrap_or(command);
        tokio::time::timeout(self.helper_timeout, run).await.map_err(|_| {
            format!("`{verb}` on the host did not finish within {}", humantime::format_duration(self.helper_timeout))
        })?
    }

    /// SIGTERM to a process group this session has no channel to, then SIGKILL if it is still
    /// there after the grace period.
    async fn stop_group(&self, pgid: u32) {
        self.kill_group(pgid, "TERM").await;
        let gone = format!("p={pgid}; {alive} && exit 1; exit 0", alive = group_alive("p"));
        let deadline = tokio::time::Instant::now() + KILL_GRACE;
        while tokio::time::Instant::now() < deadline {
            if matches!(self.capture(&gone).await, Ok((0, _))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill_group(pgid, "KILL").await;
    }

    async fn kill_group(&self, pgid: u32, signal: &str) {
        let _ = self.capture(&format!("{} 2>/dev/null", signal_group(signal, &pgid.to_string()))).await;
    }

    fn remote_path(&self, to: &str) -> String {
        if to.starts_with('/') || self.deploy_path == "." {
            to.to_string()
        } else {
            format!("{}/{to}", self.deploy_path.trim_end_matches('/'))
        }
    }

    /// An upload in one exec channel and one remote shell: the host hashes what it has at
    /// `dest` and says whether it wants the file; if so the file streams on the channel's stdin
    /// into `temp`, which the host hashes again and renames into place. One channel open, one
    /// round trip for the question, then only data: it replaced SFTP plus four helper channels
    /// (see the README's round-trip table). Returns why nothing was sent, or `None` when it was.
    async fn stream_upload(
        &self,
        request: &UploadRequest<'_>,
        dest: &str,
        temp: &str,
        want: &str,
        output: &dyn OutputSink,
    ) -> Result<Option<String>, String> {
        let script = format!("{}\n__wd_up {}", upload_function(), upload_args(request.mode, dest, temp, want, "all"));
        let channel = self.open_channel().await.map_err(|e| format!("cannot open a channel: {e}"))?;
        channel.exec(true, under_sh(&script)).await.map_err(|e| format!("cannot start the upload: {e}"))?;
        let (mut read, write) = channel.split();
        let (go, asked) = tokio::sync::oneshot::channel::<()>();
        // What the host says, line by line (as on the agent); it asks for the file with SEND.
        let said = SaidLines { lines: Default::default(), go: std::sync::Mutex::new(Some(go)), output };
        let listen = async {
            let (mut lines, mut code) = (LineSplitter::default(), None);
            while let Some(msg) = read.wait().await {
                match msg {
                    ChannelMsg::Data { data } => lines.push(&data, Stream::Stdout, &said),
                    ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
                    _ => {}
                }
            }
            lines.finish(Stream::Stdout, &said);
            code
        };
        let send = async move {
            if asked.await.is_err() {
                return Ok(false);
            }
            let sent = async {
                let size = tokio::fs::metadata(request.from)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", request.from.display()))?
                    .len();
                send_file(&write, request.from, size, output).await?;
                write.eof().await.map_err(|e| format!("sending {temp}: {e}"))
            }
            .await;
            if sent.is_err() {
                // The host's `cat` must not wait for the rest: end the channel.
                let _ = write.close().await;
            }
            sent.map(|()| true)
        };
        let (code, sent) = tokio::join!(listen, send);
        let sent = sent?;
        upload_verdict(code, &said.lines.into_inner().unwrap_or_default(), sent, dest, want)
    }
}

/// Streams `size` bytes of a file on a channel (see [`upload::copy`]).
async fn send_file(
    write: &russh::ChannelWriteHalf<client::Msg>,
    from: &std::path::Path,
    size: u64,
    output: &dyn OutputSink,
) -> Result<(), String> {
    // The writer only sends data: ending the channel's input is the caller's to decide (the
    // agent's input goes on after the file).
    let mut channel = write.make_writer();
    upload::copy(from, size, &mut channel, output).await.map_err(|e| match e {
        upload::CopyError::Read(e) => format!("cannot read {}: {e}", from.display()),
        upload::CopyError::Write(e) => format!("sending {}: {e}", from.display()),
    })
}

/// `script` as the host's login shell is given it: that shell only becomes `sh`, which runs it.
/// What wavedeck sends is written for `sh`; a login shell of another kind (zsh, where an
/// unmatched glob is an error and unquoted expansions are not split) would read it otherwise.
fn under_sh(script: &str) -> String {
    format!("exec sh -c {}", quote(script))
}

/// A shell condition, true while the process group whose id is in `$var` has a member that is not
/// a zombie. `kill -0` alone counts zombies (a killed step's, until something reaps them), and a
/// retry would wait on processes that are already dead. Where `/proc` can be read, the members
/// are looked up there with builtins only, zombies left out; without `/proc`, `kill -0` alone
/// decides, so a zombie can only make a retry wait, never let a living step be run again. The
/// fields of `/proc/N/stat` are cut with parameter expansions, not word splitting (which zsh, a
/// login shell too, does not do), after the command name's last `)`.
fn group_alive(var: &str) -> String {
    format!(
        "{{ {kill_0} 2>/dev/null && {{ [ ! -r /proc/$$/stat ] || {{ __l=; \
         for __s in /proc/[0-9]*/stat; do IFS= read -r __r <\"$__s\" 2>/dev/null || continue; \
         __r=${{__r##*\")\"}}; __r=${{__r# }}; __t=${{__r%% *}}; __r=${{__r#* }}; __r=${{__r#* }}; \
         [ \"${{__r%% *}}\" = \"${var}\" ] || continue; case $__t in Z|X) ;; *) __l=1; break;; esac; done; \
         [ -n \"$__l\" ]; }}; }}; }}",
        kill_0 = signal_group("0", &format!("\"${var}\""))
    )
}

/// The command that sends `signal` (a name, or `0` to only ask) to process group `pgid` (a
/// number, or a quoted expansion of one), in the one form every login shell's `kill` reads:
/// dash refuses `kill -TERM -- -N` ("Illegal number: -") and `-s TERM -N`, BusyBox ash refuses
/// `-s TERM -- -N` ("invalid number '--'"); bash, zsh, dash and BusyBox all read `kill -TERM -N`.
/// With the `--` form, on a host whose login shell is dash a timed-out or aborted step's group
/// was never signalled, and a group still running looked gone.
fn signal_group(signal: &str, pgid: &str) -> String {
    format!("kill -{signal} -{pgid}")
}

/// An upload on the host, as a shell function of one line:
/// `__wd_up DEST TEMP SHA256 HOW MODE PARENT`. It hashes what is at DEST (if anything); if that
/// is not the file it asks for it (`SEND`), takes it into TEMP, hashes that, sets
/// MODE (octal, or `-` to leave it to the umask) and renames it into place. HOW is `all` to read
/// stdin to its end (a channel of its own), or the file's size: GNU `dd` takes exactly that many
/// bytes from the agent's input, which must then go on with `<nonce>.u`; if it does not (the file
/// could not be taken in whole) the function exits [`DESYNC`], and the agent ends rather than read
/// file data as steps.
fn upload_function() -> String {
    // The host's `sha256sum` prints the hash it got and the shell compares it: it is never told
    // the hash it should find, so one that does not hash cannot pass a file. The file comes on
    // stdin, so no name is printed back, and only a 64-character hash is passed on (a host whose
    // `sha256sum` floods says nothing more than a hash's length to this runner; its own shell
    // holds what it printed, until the step's timeout at most). Nothing is hashed where there
    // is no file yet (a new release's path). `dd` reads in 64 KiB blocks where `head -c` would
    // read 8 KiB at a time. The mode is set on the temporary file before it is renamed, so the
    // file is never in place with looser permissions; a file that already has the content gets
    // it too.
    let hash_64 = "?".repeat(64);
    format!(
        "__wd_up() {{ ( f=$1; t=$2; w=$3; n=$4; m=$5; p=$6; \
         if [ -e \"$f\" ]; then h=$(sha256sum <\"$f\" 2>/dev/null); if [ \"${{h%% *}}\" = \"$w\" ]; then \
         [ \"$m\" = - ] || chmod \"$m\" \"$f\" || {{ echo \"{NO} cannot set mode $m on $f\"; exit 1; }}; echo {HAVE}; exit 0; fi; fi; \
         [ -d \"$p\" ] || mkdir -p -- \"$p\" || {{ echo \"{NO} cannot create $p\"; exit 1; }}; \
         echo {SEND}; \
         if [ \"$n\" = all ]; then cat > \"$t\" || {{ rm -f -- \"$t\"; echo \"{NO} cannot write $t\"; exit 1; }}; \
         else dd bs=64k count=\"$n\" iflag=count_bytes,fullblock status=none > \"$t\" || {{ rm -f -- \"$t\"; echo \"{NO} cannot write $t\"; exit {DESYNC}; }}; \
         IFS= read -r l; [ \"$l\" = \"$__wd_n.u\" ] || {{ rm -f -- \"$t\"; exit {DESYNC}; }}; fi; \
         h=$(sha256sum <\"$t\" 2>/dev/null); h=${{h%% *}}; \
         [ \"$h\" = \"$w\" ] || {{ rm -f -- \"$t\"; case $h in {hash_64}) echo \"{BAD} $h\";; *) echo {BAD};; esac; exit 1; }}; \
         [ \"$m\" = - ] || chmod \"$m\" \"$t\" || {{ echo \"{NO} cannot set mode $m on $t\"; exit 1; }}; \
         mv -f -- \"$t\" \"$f\" || {{ rm -f -- \"$t\"; echo \"{NO} cannot rename $t to $f\"; exit 1; }}; \
         echo {DONE} ); }};"
    )
}

/// The agent's own upload: through `__wd_up` where `dd` is GNU's (checked once per agent), else
/// [`NO_GNU_DD`], and the upload takes a channel of its own.
fn agent_upload_function() -> String {
    format!(
        "__wd_ag() {{ case ${{__wd_g=$(dd --version 2>/dev/null)}} in \
         *GNU*) __wd_up \"$@\"; __wd_st=$?; [ \"$__wd_st\" = {DESYNC} ] && exit {DESYNC};; \
         *) echo {NO_GNU_DD};; esac; }};"
    )
}

/// The arguments of `__wd_up` for an upload (see [`upload_function`]).
fn upload_args(mode: Option<u32>, dest: &str, temp: &str, want: &str, how: &str) -> String {
    let parent = dest.rsplit_once('/').map_or(".", |(p, _)| if p.is_empty() { "/" } else { p });
    let mode = mode.map_or_else(|| "-".to_string(), |m| format!("{m:o}"));
    [dest, temp, want, how, &mode, parent].map(quote).join(" ")
}

/// What an upload's script said, as its result: why nothing was sent, `None` when it was, or
/// the error.
fn upload_verdict(
    code: Option<u32>,
    said: &[String],
    sent: bool,
    dest: &str,
    want: &str,
) -> Result<Option<String>, String> {
    let last = said.last().map(String::as_str).unwrap_or_default();
    match (code, last) {
        (Some(0), HAVE) => Ok(Some(format!("{dest} already has sha256 {want}"))),
        (Some(0), DONE) if sent => Ok(None),
        (_, line) if line.starts_with(BAD) => {
            let got = line[BAD.len()..].trim();
            // Anything but 64 hex digits is not a sha256, whatever the host printed.
            let got = if got.len() == 64 && got.bytes().all(|b| b.is_ascii_hexdigit()) { got } else { "nothing" };
            Err(format!("sha256 mismatch on the host: expected {want}, got {got}"))
        }
        (_, line) if line.starts_with(NO) => Err(line[NO.len()..].trim().to_string()),
        (None, _) => Err("connection lost during the upload (no exit status)".into()),
        (Some(code), _) => Err(format!("the upload's shell on the host ended with exit {code}")),
    }
}

/// Collects what an upload's script says on stdout, and tells the sender when it asks for the
/// file; progress goes on to the step's sink.
struct SaidLines<'a> {
    lines: std::sync::Mutex<Vec<String>>,
    go: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    output: &'a dyn OutputSink,
}

impl OutputSink for SaidLines<'_> {
    fn line(&self, stream: Stream, line: String) {
        if stream != Stream::Stdout {
            return;
        }
        if line == SEND
            && let Some(go) = self.go.lock().ok().and_then(|mut g| g.take())
        {
            let _ = go.send(());
        }
        // The verdict is the last line; a few before it are plenty.
        if let Ok(mut lines) = self.lines.lock() {
            if lines.len() == 16 {
                lines.remove(0);
            }
            lines.push(line);
        }
    }

    fn fragment(&self, _: Stream, _: String) {}

    fn progress(&self, sent: u64, total: u64) {
        self.output.progress(sent, total);
    }
}

/// What the upload's remote shell says: it has the file, send it, done, or why not.
const HAVE: &str = "WAVEDECK-HAVE";
const SEND: &str = "WAVEDECK-SEND";
const DONE: &str = "WAVEDECK-DONE";
const BAD: &str = "WAVEDECK-BAD";
const NO: &str = "WAVEDECK-NO";
/// The agent's `dd` is not GNU's (it may not stop exactly at the file's end): the upload takes a
/// channel of its own.
const NO_GNU_DD: &str = "WAVEDECK-DD-NOT-GNU";
/// What an upload through the agent exits with when the agent's input is no longer in step
/// (the file could not be taken in whole): the agent ends rather than read file data as steps.
const DESYNC: i32 = 86;

impl HostSession for SshSession {
    fn exec<'a>(
        &'a self,
        request: ExecRequest<'a>,
        output: &'a dyn OutputSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, StepResult> {
        Box::pin(async move { self.with_refill(self.run_step(request, output, cancel)).await })
    }

    fn lost(&self) -> bool {
        self.connection.handle.is_closed()
    }

    fn prepare(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Ok(mut slot) = self.agent.try_lock() {
                let _ = self.ready_agent(&mut slot).await;
            }
        })
    }

    fn upload<'a>(
        &'a self,
        request: UploadRequest<'a>,
        output: &'a dyn OutputSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, StepResult> {
        Box::pin(async move { self.with_refill(self.run_upload(request, output, cancel)).await })
    }

    fn free_space<'a>(&'a self) -> BoxFuture<'a, Result<u64, String>> {
        Box::pin(self.df())
    }
}

impl SshSession {
    async fn run_step(
        &self,
        request: ExecRequest<'_>,
        output: &dyn OutputSink,
        cancel: &CancellationToken,
    ) -> StepResult {
        {
            if let Some(record) = request.record.as_ref().filter(|r| r.earlier != Earlier::Ignore)
                && let Some(result) = self.settle_earlier(record, request.timeout, output, cancel).await
            {
                return result;
            }
            let (record, sweep) = record_and_sweep(request.record.as_ref(), self.keep_output);
            // Steps keeping their output on the host tee it through fifos: channels of their own.
            if (record.is_none() || !self.keep_output)
                && let Ok(mut agent) = self.agent.try_lock()
                && let Some(result) = self.run_on_agent(&mut agent, &request, record, &sweep, output, cancel).await
            {
                return result;
            }
            let mut channel = match tokio::time::timeout(request.timeout, self.open_channel()).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    return StepResult::Error { message: format!("cannot open a channel (connection lost?): {e}") };
                }
                Err(_) => return StepResult::TimedOut,
            };
            if let Err(e) = channel.exec(true, self.wrap(record, &sweep)).await {
                return StepResult::Error { message: format!("cannot start the command: {e}") };
            }
            let script = stdin_script(request.command);
            if let Err(e) = async {
                channel.data(script.as_bytes()).await?;
                channel.eof().await
            }
            .await
            {
                return StepResult::Error { message: format!("cannot send the script: {e}") };
            }
            let mut stdout = LineSplitter::default();
            let mut stderr = LineSplitter::default();
            let marker = PgidMarker { pgid: std::sync::Mutex::new(None), output };
            // Bytes that reached this runner, to fetch only the rest after a dropped connection.
            let (mut out_bytes, mut err_bytes) = (0u64, 0u64);
            let mut status: Option<StepResult> = None;
            let deadline = tokio::time::sleep(request.timeout);
            tokio::pin!(deadline);
            let stopped = loop {
                tokio::select! {
                    msg = channel.wait() => match msg {
                        Some(ChannelMsg::Data { data }) => {
                            out_bytes += data.len() as u64;
                            stdout.push(&data, Stream::Stdout, &marker)
                        }
                        Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                            err_bytes += data.len() as u64;
                            stderr.push(&data, Stream::Stderr, output)
                        }
                        Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(StepResult::Exited { code: exit_status as i32 }),
                        Some(ChannelMsg::ExitSignal { signal_name, .. }) => status = Some(StepResult::Signalled { signal: signal_number(&signal_name) }),
                        Some(_) => {}
                        None => break None,
                    },
                    _ = &mut deadline => break Some(StepResult::TimedOut),
                    _ = cancel.cancelled() => break Some(StepResult::Cancelled),
                }
                // Not reading while the consumer catches up makes the host's writes wait in the
                // channel's window.
                tokio::select! {
                    _ = output.ready() => {}
                    _ = &mut deadline => break Some(StepResult::TimedOut),
                    _ = cancel.cancelled() => break Some(StepResult::Cancelled),
                }
            };
            stdout.finish(Stream::Stdout, &marker);
            stderr.finish(Stream::Stderr, output);
            if let (Some(dir), Ok(mut seen)) = (record, self.seen.lock()) {
                // The wrapper's own first line is not the step's output.
                let marker_line = marker.pgid().map_or(0, |p| format!("{PGID_MARKER}{p}\n").len() as u64);
                seen.insert(dir.to_string(), (out_bytes.saturating_sub(marker_line), err_bytes));
            }
            if let Some(stopped) = stopped {
                if let Some(pgid) = marker.pgid() {
                    self.kill_group(pgid, "TERM").await;
                    // Give it the grace period to exit; then make sure.
                    let ended =
                        tokio::time::timeout(KILL_GRACE, async { while channel.wait().await.is_some() {} }).await;
                    if ended.is_err() {
                        self.kill_group(pgid, "KILL").await;
                    }
                }
                let _ = channel.close().await;
                return stopped;
            }
            status.unwrap_or_else(|| StepResult::Error {
                message: "connection lost before the command finished (no exit status)".into(),
            })
        }
    }

    /// Starts the host's agent on a channel of its own: the login shell changes into the deploy
    /// directory and, if sshd made it its process group's leader, becomes `sh` running the
    /// agent's program. Nothing is waited for: the first step follows at once, and the agent's
    /// first line (its pid) arrives with that step's output.
    async fn start_agent(&self) -> Result<Agent, String> {
        let channel = self.open_channel().await.map_err(|e| e.to_string())?;
        let command = format!(
            "cd {dir} && export WAVEDECK_HOST={host} WAVEDECK_ENV={env} && \
             {{ read -r _ _ _ _ g _ </proc/$$/stat; }} 2>/dev/null; [ \"$g\" = \"$$\" ] && exec sh -c {program} sh \"$PWD\"",
            dir = quote(&self.deploy_path),
            host = quote(&self.host),
            env = quote(&self.env),
            program = quote(&agent::program(&(upload_function() + &agent_upload_function()), "__wd_up __wd_ag")),
        );
        channel.exec(true, command).await.map_err(|e| e.to_string())?;
        let nonce = agent::nonce();
        channel.data(format!("{nonce}\n").as_bytes()).await.map_err(|e| e.to_string())?;
        let (read, write) = channel.split();
        Ok(Agent { read, write, nonce, pid: None, in_flight: false, dd_not_gnu: false })
    }

    /// The running agent, started if need be; `None` where there is none to be had.
    async fn ready_agent<'s>(&self, slot: &'s mut AgentSlot) -> Option<&'s mut Agent> {
        if let AgentSlot::Running(agent) = slot
            && agent.in_flight
        {
            let _ = agent.write.close().await;
            *slot = AgentSlot::NotStarted;
        }
        if matches!(slot, AgentSlot::NotStarted) {
            // A host that never confirms the channel must not hold the step (or the connection
            // made ahead, which its wave waits for) for ever.
            let started = tokio::time::timeout(self.helper_timeout, self.start_agent()).await;
            *slot = match started.unwrap_or_else(|_| Err("the host did not open a channel in time".into())) {
                Ok(agent) => AgentSlot::Running(agent),
                Err(e) => {
                    tracing::debug!(host = %self.host, error = %e, "no agent: steps get channels of their own");
                    AgentSlot::Unavailable
                }
            };
        }
        self.no_agent.store(matches!(slot, AgentSlot::Unavailable), std::sync::atomic::Ordering::Relaxed);
        match slot {
            AgentSlot::Running(agent) => Some(agent),
            _ => None,
        }
    }

    /// Runs a step on the host's agent. `None` when there is no agent to run it on (it could not
    /// start: nothing ran), so the step takes a channel of its own instead.
    async fn run_on_agent(
        &self,
        slot: &mut AgentSlot,
        request: &ExecRequest<'_>,
        record: Option<&str>,
        sweep: &str,
        output: &dyn OutputSink,
        cancel: &CancellationToken,
    ) -> Option<StepResult> {
        let agent = self.ready_agent(slot).await?;
        let text = agent::request(&agent.nonce, request.command, record, sweep);
        let (exchange, bytes) = self.exchange(agent, &text, output, request.timeout, cancel, None).await;
        if let (Some(dir), Ok(mut seen)) = (record, self.seen.lock()) {
            seen.insert(dir.to_string(), bytes);
        }
        self.settle(slot, exchange)
    }

    /// What an exchange means for the step, and for the agent: one that was stopped or lost is
    /// started again for the next step, one that never started is not tried again.
    fn settle(&self, slot: &mut AgentSlot, exchange: Exchange) -> Option<StepResult> {
        match exchange {
            Exchange::Ended(code) => Some(StepResult::Exited { code }),
            Exchange::Stopped(result) | Exchange::Lost(result) => {
                *slot = AgentSlot::NotStarted;
                Some(result)
            }
            Exchange::NotRun => {
                // It never said it runs: the deploy directory is missing, or the login shell is
                // not a group leader here. The channel way says why.
                tracing::debug!(host = %self.host, "the agent did not start: steps get channels of their own");
                *slot = AgentSlot::Unavailable;
                self.no_agent.store(true, std::sync::atomic::Ordering::Relaxed);
                None
            }
        }
    }

    /// Sends one request to the agent and reads its output up to the request's end markers,
    /// sending `upload`'s file when the host asks for it. Returns how it went, and the bytes of
    /// stdout and stderr that were the request's.
    async fn exchange(
        &self,
        agent: &mut Agent,
        text: &str,
        output: &dyn OutputSink,
        timeout: Duration,
        cancel: &CancellationToken,
        upload: Option<AgentUpload<'_>>,
    ) -> (Exchange, (u64, u64)) {
        let Agent { read, write, nonce, pid, in_flight, .. } = agent;
        if write.data(text.as_bytes()).await.is_err() {
            // The agent is gone (with the connection, say), between two requests.
            return (Exchange::NotRun, (0, 0));
        }
        *in_flight = true;
        let (mut out_scan, mut err_scan) = (agent::MarkerScan::new(nonce), agent::MarkerScan::new(nonce));
        let (mut stdout, mut stderr) = (LineSplitter::default(), LineSplitter::default());
        let (mut out_bytes, mut err_bytes) = (0u64, 0u64);
        let (mut out_end, mut err_end): (Option<i32>, bool) = (None, false);
        // How the agent itself ended, if it did: a step that killed it (`kill $$`), say.
        let mut agent_exit: Option<StepResult> = None;
        let sender = async {
            let Some(upload) = upload else { return std::future::pending().await };
            if upload.asked.await.is_err() {
                return std::future::pending().await;
            }
            // Exactly the file (the host's `dd` stops there), then the line that gives
            // the agent its input back.
            send_file(write, upload.from, upload.size, output).await?;
            write
                .data(format!("{nonce}.u\n").as_bytes())
                .await
                .map_err(|e| format!("sending {}: {e}", upload.from.display()))
        };
        tokio::pin!(sender);
        let mut sent = false;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let stopped = loop {
            tokio::select! {
                msg = read.wait() => match msg {
                    Some(ChannelMsg::Data { data }) => out_scan.feed(&data, |piece| match piece {
                        // Before its pid, output is the login shell's (a chatty profile), not the step's.
                        agent::Piece::Output(bytes) if out_end.is_none() && pid.is_some() => {
                            out_bytes += bytes.len() as u64;
                            stdout.push(&bytes, Stream::Stdout, output);
                        }
                        agent::Piece::Marker(agent::Marker::Pid(id)) => *pid = Some(id),
                        agent::Piece::Marker(agent::Marker::End(Some(code))) => out_end = Some(code),
                        _ => {}
                    }),
                    Some(ChannelMsg::ExtendedData { data, ext: 1 }) => err_scan.feed(&data, |piece| match piece {
                        agent::Piece::Output(bytes) if !err_end && pid.is_some() => {
                            err_bytes += bytes.len() as u64;
                            stderr.push(&bytes, Stream::Stderr, output);
                        }
                        agent::Piece::Marker(agent::Marker::End(None)) => err_end = true,
                        _ => {}
                    }),
                    Some(ChannelMsg::ExitStatus { exit_status }) => agent_exit = Some(StepResult::Exited { code: exit_status as i32 }),
                    Some(ChannelMsg::ExitSignal { signal_name, .. }) => agent_exit = Some(StepResult::Signalled { signal: signal_number(&signal_name) }),
                    Some(_) => {}
                    None => break None,
                },
                result = &mut sender, if !sent => {
                    sent = true;
                    if let Err(message) = result {
                        break Some(StepResult::Error { message });
                    }
                }
                _ = &mut deadline => break Some(StepResult::TimedOut),
                _ = cancel.cancelled() => break Some(StepResult::Cancelled),
            }
            if let (Some(code), true) = (out_end, err_end) {
                *in_flight = false;
                break Some(StepResult::Exited { code });
            }
            tokio::select! {
                _ = output.ready() => {}
                _ = &mut deadline => break Some(StepResult::TimedOut),
                _ = cancel.cancelled() => break Some(StepResult::Cancelled),
            }
        };
        for (scan, splitter, stream, ended) in [
            (&mut out_scan, &mut stdout, Stream::Stdout, out_end.is_some()),
            (&mut err_scan, &mut stderr, Stream::Stderr, err_end),
        ] {
            if !ended {
                scan.finish(|piece| {
                    if let agent::Piece::Output(bytes) = piece {
                        splitter.push(&bytes, stream, output);
                    }
                });
            }
            splitter.finish(stream, output);
        }
        let bytes = (out_bytes, err_bytes);
        let exchange = match stopped {
            Some(StepResult::Exited { code }) => Exchange::Ended(code),
            Some(stopped) => {
                // The step's group is the agent's: both go, and the next step starts a new agent.
                match *pid {
                    Some(id) => {
                        self.kill_group(id, "TERM").await;
                        let ended =
                            tokio::time::timeout(KILL_GRACE, async { while read.wait().await.is_some() {} }).await;
                        if ended.is_err() {
                            self.kill_group(id, "KILL").await;
                        }
                    }
                    None => {
                        let _ = write.signal(Sig::TERM).await;
                    }
                }
                let _ = write.close().await;
                Exchange::Stopped(stopped)
            }
            None if pid.is_none() => Exchange::NotRun,
            None => Exchange::Lost(agent_exit.unwrap_or_else(|| StepResult::Error {
                message: "connection lost before the command finished (no exit status)".into(),
            })),
        };
        (exchange, bytes)
    }

    /// An upload through the host's agent: the same script as on a channel of its own, with the
    /// file read from the agent's stdin by `dd`. `None` when there is no agent, or its `dd`
    /// might read past the file (not GNU): then the upload takes a channel of its own.
    async fn upload_on_agent(
        &self,
        request: &UploadRequest<'_>,
        dest: &str,
        temp: &str,
        want: &str,
        output: &dyn OutputSink,
        cancel: &CancellationToken,
    ) -> Option<Result<Option<String>, StepResult>> {
        let mut slot = self.agent.try_lock().ok()?;
        let agent = self.ready_agent(&mut slot).await?;
        if agent.dd_not_gnu {
            return None;
        }
        let size = tokio::fs::metadata(request.from).await.ok()?.len();
        let run = format!("__wd_ag {}", upload_args(request.mode, dest, temp, want, &size.to_string()));
        let (go, asked) = tokio::sync::oneshot::channel();
        let said = SaidLines { lines: Default::default(), go: std::sync::Mutex::new(Some(go)), output };
        let text = agent::raw_request(&agent.nonce, &run);
        let upload = AgentUpload { from: request.from, size, asked };
        let (exchange, _) = self.exchange(agent, &text, &said, request.timeout, cancel, Some(upload)).await;
        let said = said.lines.into_inner().unwrap_or_default();
        if said.last().map(String::as_str) == Some(NO_GNU_DD) {
            agent.dd_not_gnu = true;
            return None;
        }
        let verdict = match &exchange {
            Exchange::Ended(code) => Some(
                upload_verdict(Some(*code as u32), &said, true, dest, want)
                    .map_err(|message| StepResult::Error { message }),
            ),
            Exchange::Stopped(result) => Some(Err(result.clone())),
            Exchange::Lost(result) => Some(Err(match said.last().and_then(|l| l.strip_prefix(NO)) {
                Some(why) => StepResult::Error { message: why.trim().to_string() },
                None if *result == (StepResult::Exited { code: DESYNC }) => {
                    StepResult::Error { message: "the host's agent could not take the file in whole and ended".into() }
                }
                None => result.clone(),
            })),
            // Nothing ran: the upload takes a channel of its own.
            Exchange::NotRun => None,
        };
        self.settle(&mut slot, exchange);
        verdict
    }

    async fn run_upload(
        &self,
        request: UploadRequest<'_>,
        output: &dyn OutputSink,
        cancel: &CancellationToken,
    ) -> StepResult {
        let dest = self.remote_path(request.to);
        let temp = upload::temporary_name(&dest);
        let want = match upload::sha256_source(request.from).await {
            Ok(want) => want,
            Err(message) => return StepResult::Error { message },
        };
        let outcome = match self.upload_on_agent(&request, &dest, &temp, &want, output, cancel).await {
            Some(outcome) => outcome,
            None => tokio::select! {
                r = self.stream_upload(&request, &dest, &temp, &want, output) => r.map_err(|message| StepResult::Error { message }),
                _ = tokio::time::sleep(request.timeout) => Err(StepResult::TimedOut),
                _ = cancel.cancelled() => Err(StepResult::Cancelled),
            },
        };
        match outcome {
            Ok(Some(reason)) => StepResult::Skipped { reason },
            Ok(None) => {
                output.line(Stream::Stdout, format!("uploaded {dest} (sha256 {want})"));
                StepResult::Exited { code: 0 }
            }
            Err(result) => {
                let _ = self.capture(&format!("rm -f -- {}", quote(&temp))).await;
                result
            }
        }
    }

    async fn df(&self) -> Result<u64, String> {
        {
            let (code, out) = self.capture(&format!("df -Pk -- {}", quote(&self.deploy_path))).await?;
            let kib = out.lines().nth(1).and_then(|l| l.split_whitespace().nth(3)).and_then(|v| v.parse::<u64>().ok());
            match (code, kib) {
                (0, Some(kib)) => Ok(kib * 1024),
                _ => {
                    // One line of what the host said is enough to tell why, and all a message holds.
                    let said: String = out.trim().lines().next().unwrap_or_default().chars().take(200).collect();
                    Err(format!("df failed for {}: {said}", self.deploy_path))
                }
            }
        }
    }
}

/// Where a step records itself and which old records go first, as shell text; only names of
/// safe characters (the engine makes them so) are used, since they sit inside the wrapper's
/// quotes; relative to the deploy directory the wrapper changes into.
fn record_and_sweep(record: Option<&StepRecord>, keep_output: bool) -> (Option<&str>, String) {
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/');
    let dir = record.map(|r| r.dir.as_str()).filter(|d| d.chars().all(safe));
    let sweep = match record.and_then(|r| r.sweep.as_ref()) {
        Some(Sweep::Matching(glob)) if keep_output && glob.chars().all(|c| safe(c) || c == '*') => {
            format!("rm -rf -- {glob}; ")
        }
        Some(Sweep::AllBut { parent, keep }) if parent.chars().chain(keep.chars()).all(safe) => {
            // `rm` runs only when an older deploy left records. The loop's name is the agent's
            // own, so no step after it on the same agent sees it.
            format!(
                "for __wd_d in {parent}/*; do [ -e \"$__wd_d\" ] && [ \"$__wd_d\" != {keep} ] && rm -rf -- \"$__wd_d\"; done; "
            )
        }
        _ => String::new(),
    };
    (dir, sweep)
}

fn signal_number(sig: &Sig) -> i32 {
    match sig {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        Sig::Custom(_) => 0,
    }
}

/// Takes the step's process group id from the first stdout line the wrapper prints, and passes
/// every other line on.
struct PgidMarker<'a> {
    pgid: std::sync::Mutex<Option<Option<u32>>>,
    output: &'a dyn OutputSink,
}

impl PgidMarker<'_> {
    fn pgid(&self) -> Option<u32> {
        self.pgid.lock().ok().and_then(|p| p.flatten())
    }
}

impl OutputSink for PgidMarker<'_> {
    fn line(&self, stream: Stream, line: String) {
        if let Ok(mut pgid) = self.pgid.lock()
            && pgid.is_none()
        {
            *pgid = Some(line.strip_prefix(PGID_MARKER).and_then(|id| id.trim().parse().ok()));
            if pgid.is_some_and(|p| p.is_some()) {
                return;
            }
        }
        self.output.line(stream, line);
    }

    fn fragment(&self, stream: Stream, piece: String) {
        self.output.fragment(stream, piece);
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        self.output.ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        assert_eq!(quote("it's"), "'it'\"'\"'s'");
        assert_eq!(quote("plain"), "plain");
        assert_eq!(quote("$(reboot) `x`"), "'$(reboot) `x`'");
        assert_eq!(quote(""), "''");
        // The shell gives back exactly what went in.
        let tricky = "a'b\"c$d`e\\f\ng";
        let out =
            std::process::Command::new("sh").arg("-c").arg(format!("printf %s {}", quote(tricky))).output().unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), tricky);
    }

    /// The login shells these commands meet, as the words that run a script with each: dash (as
    /// `sh`), bash, zsh and BusyBox ash (Alpine's). zsh and BusyBox are installed by `.ci/run`;
    /// elsewhere one may be missing, and is then left out with a word why.
    fn login_shells() -> Vec<Vec<&'static str>> {
        let shells = [vec!["sh", "-c"], vec!["bash", "-c"], vec!["zsh", "-c"], vec!["busybox", "sh", "-c"]];
        shells
            .into_iter()
            .filter(|words| {
                let there = std::process::Command::new(words[0])
                    .args(&words[1..])
                    .arg("true")
                    .status()
                    .is_ok_and(|s| s.success());
                if !there {
                    assert!(std::env::var_os("CI").is_none(), "{} is missing (.ci/run installs it)", words[0]);
                    eprintln!("{} is not installed: the process-group commands are not tried under it", words[0]);
                }
                there
            })
            .collect()
    }

    /// Runs `script` with the shell `words` and returns whether it succeeded.
    fn run_with(words: &[&str], script: &str) -> bool {
        std::process::Command::new(words[0]).args(&words[1..]).arg(script).status().unwrap().success()
    }

    #[test]
    fn a_process_group_is_signalled_whatever_the_login_shell_dash_bash_zsh_or_busybox() {
        use std::os::unix::process::CommandExt;
        for shell in login_shells() {
            let mut group = std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
            let pgid = group.id().to_string();
            assert!(run_with(&shell, &signal_group("0", &pgid)), "{shell:?}: kill -0 finds the group");
            assert!(run_with(&shell, &signal_group("TERM", &pgid)), "{shell:?}: kill -TERM");
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(group.wait().unwrap().signal(), Some(15), "{shell:?}: the group got SIGTERM");
        }
    }

    #[test]
    fn a_process_group_of_zombies_only_is_not_alive_though_kill_0_says_it_is() {
        use std::os::unix::process::CommandExt;
        // A command with a `)` and a space in its name, as /proc shows it: `(a) b`.
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("a) b");
        std::fs::copy("/bin/sleep", &odd).unwrap();
        let mut leader = std::process::Command::new(&odd).arg("30").process_group(0).spawn().unwrap();
        let pgid = leader.id();
        let ask = |shell: &[&str], condition: &str| {
            let script = format!("p={pgid}; if {condition}; then echo yes; else echo no; fi");
            let out = std::process::Command::new(shell[0]).args(&shell[1..]).arg(script).output().unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        let kill_0 = "kill -0 -$p 2>/dev/null";
        for shell in login_shells() {
            assert_eq!(ask(&shell, &group_alive("p")), "yes", "{shell:?}: a running leader");
        }
        // Killed and not yet reaped: a zombie, still its group's member for `kill -0`.
        leader.kill().unwrap();
        let zombie = loop {
            let stat = std::fs::read_to_string(format!("/proc/{pgid}/stat")).unwrap();
            if stat.rsplit_once(") ").unwrap().1.starts_with('Z') {
                break stat;
            }
            std::thread::yield_now();
        };
        assert!(zombie.contains("(a) b)"), "{zombie}");
        assert_eq!(ask(&["sh", "-c"], kill_0), "yes");
        for shell in login_shells() {
            assert_eq!(ask(&shell, &group_alive("p")), "no", "{shell:?}: only a zombie left");
        }
        leader.wait().unwrap();
        assert_eq!(ask(&["sh", "-c"], &group_alive("p")), "no", "gone");
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(4));
            assert!(d >= Duration::from_secs(3) && d <= Duration::from_secs(5), "{d:?}");
        }
    }
}
