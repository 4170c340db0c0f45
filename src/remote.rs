//! A running deploy's control socket: how another terminal finds it (`wavedeck ps`) and watches
//! it (`wavedeck attach --observe`), and the protocol the detached runner will speak to every
//! front end.
//!
//! Each deploy listens on `<runtime dir>/<session>.sock`. The directory is the operator's alone
//! (`0700`, checked, never followed through a link) and the socket `0600`; a peer of another uid
//! is refused by its credentials before it can say anything. The protocol is newline-framed
//! JSON, versioned in the greeting: the client says [`Hello`] with the sequence number to replay
//! from, the deploy answers [`Welcome`], then every event from that number on, the live ones as
//! they happen, and closes when the deploy has ended. Commands are part of the protocol but are
//! refused for now: a deploy has one controller, the console or CLI that started it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

use crate::event::{Command, Stamped};

/// The protocol's version; a client and a deploy of different versions refuse each other.
pub const PROTOCOL: u32 = 1;
/// Environment variable choosing the directory of control sockets (tests, unusual setups).
pub const RUNTIME_DIR_ENV: &str = "WAVEDECK_RUNTIME_DIR";
/// Longest line either side may send: anything longer is not this protocol.
const MAX_LINE: usize = 1024 * 1024;
/// How long a new client has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Output bytes of past events kept for replay to a client that attaches late; older events are
/// in the audit file, and the welcome says from which sequence number replay starts.
const REPLAY_BYTES: usize = 64 * 1024 * 1024;
/// Live events a slow client may fall behind by before it is told so and dropped (it can
/// reconnect from the last number it saw).
const LIVE_BACKLOG: usize = 8192;

/// What a client says first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    /// Who is attaching, for the deploy's records ("ann@laptop pid 4242").
    pub client: String,
    /// Replay events from this sequence number on (1 is the first); `u64::MAX` for none, just
    /// the welcome (what `wavedeck ps` does).
    pub from_seq: u64,
}

/// What the deploy answers a hello with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub version: u32,
    #[serde(flatten)]
    pub about: About,
    /// The oldest event still held for replay, and the newest so far.
    pub first_seq: u64,
    pub last_seq: u64,
    /// How many clients are attached now, this one included.
    pub clients: usize,
}

/// One message on the wire, either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    Hello(Hello),
    Welcome(Welcome),
    /// An event of the deploy, numbered from 1 in the order the deploy saw them.
    Event {
        seq: u64,
        #[serde(flatten)]
        event: Stamped,
    },
    /// A command for the deploy, with the client's id for the answer.
    Command {
        id: u64,
        command: Command,
    },
    Ack {
        id: u64,
    },
    /// A command, or the client itself, refused, and why.
    Refused {
        id: Option<u64>,
        reason: String,
    },
}

/// The directory control sockets live in: `$WAVEDECK_RUNTIME_DIR`, else
/// `$XDG_RUNTIME_DIR/wavedeck`, else `/tmp/wavedeck-<uid>`. Created `0700`; refused if it is a
/// link or belongs to someone else, since a socket there is trusted with commands.
pub fn runtime_dir() -> Result<PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let uid = nix::unistd::getuid().as_raw();
    let dir = match (std::env::var_os(RUNTIME_DIR_ENV), std::env::var_os("XDG_RUNTIME_DIR")) {
        (Some(dir), _) if !dir.is_empty() => PathBuf::from(dir),
        (_, Some(dir)) if !dir.is_empty() => PathBuf::from(dir).join("wavedeck"),
        _ => std::env::temp_dir().join(format!("wavedeck-{uid}")),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is not a directory of yours that only you can open (it must be 0700 and owned by uid {uid})",
            dir.display()
        ));
    }
    Ok(dir)
}

/// The events of one deploy, numbered, with the recent past kept for replay.
pub struct Journal {
    inner: Mutex<JournalState>,
}

struct JournalState {
    past: VecDeque<(u64, Arc<Stamped>)>,
    past_bytes: usize,
    last_seq: u64,
    live: broadcast::Sender<(u64, Arc<Stamped>)>,
}

fn weight(event: &Stamped) -> usize {
    match &event.event {
        crate::event::Event::Output { line, .. } => line.len() + 64,
        _ => 256,
    }
}

impl Journal {
    fn new() -> Journal {
        let (live, _) = broadcast::channel(LIVE_BACKLOG);
        Journal { inner: Mutex::new(JournalState { past: VecDeque::new(), past_bytes: 0, last_seq: 0, live }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JournalState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Numbers an event, keeps it for replay and hands it to attached clients.
    pub fn record(&self, event: &Stamped) {
        let mut state = self.lock();
        state.last_seq += 1;
        let entry = (state.last_seq, Arc::new(event.clone()));
        state.past_bytes += weight(&entry.1);
        state.past.push_back(entry.clone());
        while state.past_bytes > REPLAY_BYTES
            && let Some((_, old)) = state.past.pop_front()
        {
            state.past_bytes -= weight(&old);
        }
        let _ = state.live.send(entry);
    }

    /// The events from `from_seq` on that are still held, and the live ones after them, with no
    /// gap and no repeat between the two (both are taken under the same lock as `record`).
    #[allow(clippy::type_complexity)]
    fn follow(&self, from_seq: u64) -> (Vec<(u64, Arc<Stamped>)>, broadcast::Receiver<(u64, Arc<Stamped>)>) {
        let state = self.lock();
        let replay = state.past.iter().filter(|(seq, _)| *seq >= from_seq).cloned().collect();
        (replay, state.live.subscribe())
    }

    fn span(&self) -> (u64, u64) {
        let state = self.lock();
        (state.past.front().map_or(state.last_seq + 1, |(seq, _)| *seq), state.last_seq)
    }
}

/// What a deploy tells attaching clients about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct About {
    pub session: String,
    pub service: String,
    pub env: String,
    pub release: String,
    pub operator: String,
    pub audit_path: PathBuf,
}

/// A deploy's control socket, listening. Dropping it stops accepting and removes the socket.
pub struct Server {
    pub path: PathBuf,
    pub journal: Arc<Journal>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Server {
    /// Listens on `<runtime dir>/<session>.sock`.
    pub fn listen(about: About) -> Result<Server, String> {
        use std::os::unix::fs::PermissionsExt;
        let path = runtime_dir()?.join(format!("{}.sock", about.session));
        let listener = UnixListener::bind(&path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
        let journal = Arc::new(Journal::new());
        let clients = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accept = {
            let journal = journal.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (journal, about, clients) = (journal.clone(), about.clone(), clients.clone());
                    tokio::spawn(async move {
                        clients.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let _ = serve(stream, &journal, &about, &clients).await;
                        clients.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    });
                }
            })
        };
        Ok(Server { path, journal, accept })
    }
}

async fn send(stream: &mut (impl AsyncWriteExt + Unpin), message: &Message) -> std::io::Result<()> {
    let mut line = serde_json::to_string(message).map_err(std::io::Error::other)?;
    line.push('\n');
    stream.write_all(line.as_bytes()).await
}

/// Reads one protocol line; `None` at the end of the stream.
async fn receive(reader: &mut (impl AsyncBufRead + Unpin)) -> std::io::Result<Option<Message>> {
    let mut line = Vec::new();
    let read = (&mut *reader).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line).await?;
    if read == 0 {
        return Ok(None);
    }
    if line.len() > MAX_LINE {
        return Err(std::io::Error::other("a line longer than the protocol allows"));
    }
    serde_json::from_slice(&line).map(Some).map_err(std::io::Error::other)
}

async fn serve(
    stream: UnixStream,
    journal: &Journal,
    about: &About,
    clients: &std::sync::atomic::AtomicUsize,
) -> std::io::Result<()> {
    let peer = stream.peer_cred()?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let own = nix::unistd::getuid().as_raw();
    if peer.uid() != own {
        let reason = format!("this deploy belongs to uid {own}; uid {} may not attach to it", peer.uid());
        return send(&mut write, &Message::Refused { id: None, reason }).await;
    }
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, receive(&mut reader)).await {
        Ok(Ok(Some(Message::Hello(hello)))) => hello,
        _ => {
            let reason = "say hello first".to_string();
            return send(&mut write, &Message::Refused { id: None, reason }).await;
        }
    };
    if hello.version != PROTOCOL {
        let reason =
            format!("protocol version {} is not {PROTOCOL}: use the same wavedeck as the deploy", hello.version);
        return send(&mut write, &Message::Refused { id: None, reason }).await;
    }
    let (replay, mut live) = journal.follow(hello.from_seq);
    let (first_seq, last_seq) = journal.span();
    let welcome = Welcome {
        version: PROTOCOL,
        about: about.clone(),
        first_seq,
        last_seq,
        clients: clients.load(std::sync::atomic::Ordering::SeqCst),
    };
    send(&mut write, &Message::Welcome(welcome)).await?;
    if hello.from_seq == u64::MAX {
        return Ok(());
    }
    // Reading runs on its own, so a half-read line is never dropped when an event goes out.
    let (incoming_tx, mut incoming) = tokio::sync::mpsc::channel::<Message>(16);
    tokio::spawn(async move {
        while let Ok(Some(message)) = receive(&mut reader).await {
            if incoming_tx.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut next = hello.from_seq;
    for (seq, event) in replay {
        send(&mut write, &Message::Event { seq, event: (*event).clone() }).await?;
        next = seq + 1;
    }
    loop {
        tokio::select! {
            live_event = live.recv() => match live_event {
                Ok((seq, event)) if seq >= next => {
                    send(&mut write, &Message::Event { seq, event: (*event).clone() }).await?;
                    next = seq + 1;
                    if matches!(event.event, crate::event::Event::DeployFinished { .. }) {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let reason = format!("fell behind the deploy; attach again from seq {next}");
                    return send(&mut write, &Message::Refused { id: None, reason }).await;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            message = incoming.recv() => match message {
                None => return Ok(()),
                Some(Message::Command { id, .. }) => {
                    let reason = "this deploy is controlled by the console or CLI that started it; \
                                  attached clients observe"
                        .to_string();
                    send(&mut write, &Message::Refused { id: Some(id), reason }).await?;
                }
                Some(_) => {}
            },
        }
    }
}

/// A deploy found in the runtime directory, as `wavedeck ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    Running(Welcome),
    /// A socket nobody answers on: the process that ran the deploy is gone (killed, or it
    /// crashed). `removed` when nothing listens on it any more, so it was cleaned up.
    Gone {
        session: String,
        path: PathBuf,
        removed: bool,
    },
}

/// Every deploy with a control socket in the runtime directory.
pub async fn list() -> Result<Vec<Listing>, String> {
    let dir = runtime_dir()?;
    let mut sockets: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    sockets.sort();
    let mut out = Vec::new();
    for path in sockets {
        let session = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        match tokio::time::timeout(HELLO_TIMEOUT, greet(&path, u64::MAX)).await {
            Ok(Ok((welcome, _))) => out.push(Listing::Running(welcome)),
            _ => {
                // Refused means no process listens there: the socket is a leftover (kill -9).
                let refused = std::os::unix::net::UnixStream::connect(&path)
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
                let removed = refused && std::fs::remove_file(&path).is_ok();
                out.push(Listing::Gone { session, path, removed });
            }
        }
    }
    Ok(out)
}

/// Connects to a deploy's socket and says hello; returns its welcome and the open connection.
async fn greet(path: &Path, from_seq: u64) -> Result<(Welcome, BufReader<UnixStream>), String> {
    let mut stream =
        UnixStream::connect(path).await.map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
    let client = format!("{}@{} pid {}", crate::sys::operator_name(), crate::sys::machine_name(), std::process::id());
    send(&mut stream, &Message::Hello(Hello { version: PROTOCOL, client, from_seq }))
        .await
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    match receive(&mut reader).await.map_err(|e| e.to_string())? {
        Some(Message::Welcome(welcome)) => Ok((welcome, reader)),
        Some(Message::Refused { reason, .. }) => Err(reason),
        _ => Err("the deploy did not answer as wavedeck does".into()),
    }
}

/// The socket of deploy `session` (a session id as `wavedeck ps` prints it).
pub fn socket_of(session: &str) -> Result<PathBuf, String> {
    if session.is_empty() || !session.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) {
        return Err(format!("`{session}` is not a session id (see `wavedeck ps`)"));
    }
    Ok(runtime_dir()?.join(format!("{session}.sock")))
}

/// Attaches to a deploy as an observer from `from_seq`: its welcome, then each event as
/// `on_event` gets it, until the deploy ends or the connection drops. Returns why it stopped.
pub async fn observe(
    path: &Path,
    from_seq: u64,
    mut on_welcome: impl FnMut(&Welcome),
    mut on_event: impl FnMut(u64, &Stamped),
) -> Result<String, String> {
    let (welcome, mut reader) = greet(path, from_seq).await?;
    on_welcome(&welcome);
    loop {
        match receive(&mut reader).await.map_err(|e| e.to_string())? {
            Some(Message::Event { seq, event }) => {
                on_event(seq, &event);
                if matches!(event.event, crate::event::Event::DeployFinished { .. }) {
                    return Ok("the deploy has ended".into());
                }
            }
            Some(Message::Refused { reason, .. }) => return Err(reason),
            Some(_) => {}
            None => return Ok("the deploy closed the connection".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use chrono::Utc;

    fn stamped(event: Event) -> Stamped {
        Stamped { at: Utc::now(), event }
    }

    #[test]
    fn replay_and_live_meet_without_a_gap_or_a_repeat() {
        let journal = Journal::new();
        journal.record(&stamped(Event::Resumed));
        journal.record(&stamped(Event::Resumed));
        let (replay, mut live) = journal.follow(2);
        journal.record(&stamped(Event::Resumed));
        let seqs: Vec<u64> = replay.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [2]);
        assert_eq!(live.try_recv().unwrap().0, 3);
        assert_eq!(journal.span(), (1, 3));
    }

    #[test]
    fn messages_are_one_json_line_each_way() {
        let hello = Message::Hello(Hello { version: PROTOCOL, client: "ann".into(), from_seq: 1 });
        let text = serde_json::to_string(&hello).unwrap();
        assert_eq!(text, r#"{"hello":{"version":1,"client":"ann","from_seq":1}}"#);
        let event = Message::Event { seq: 7, event: stamped(Event::Resumed) };
        let back: Message = serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
        assert_eq!(back, event);
    }
}
