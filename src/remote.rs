//! A running deploy's control socket and the protocol every front end speaks to its runner.
//!
//! Each deploy's runner listens on `<runtime dir>/<session>.sock`. The directory is the
//! operator's alone (`0700`, checked, never followed through a link) and the socket `0600`; a
//! peer of another uid is refused by its credentials before it can say anything. The protocol is
//! newline-framed JSON, versioned in the greeting: the client says [`Hello`] with the sequence
//! number to replay from and the role it wants, the runner answers [`Welcome`] (with the role it
//! got: one client controls a deploy, the others observe), then every event from that number on
//! and the live ones as they happen. Commands, takeover, release and detach are asked for with an
//! id and answered [`Message::Ack`] or [`Message::Refused`] with the reason. When the deploy has
//! settled (lock released, audit log closed) the runner sends [`Message::Ended`] and closes.
//!
//! This module is the wire: what the runner decides about a request is the session owner's
//! business ([`Request`] goes to it and its answer comes back).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::event::{Command, CommandSource, Event, Outcome, Stamped};

/// The protocol's version; a client and a runner of different versions refuse each other.
pub const PROTOCOL: u32 = 2;
/// Environment variable choosing the directory of control sockets (tests, unusual setups).
pub const RUNTIME_DIR_ENV: &str = "WAVEDECK_RUNTIME_DIR";
/// Longest line either side may send: anything longer is not this protocol.
const MAX_LINE: usize = 1024 * 1024;
/// How long a new client has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Output bytes of past events kept for replay to a client that attaches late or falls
/// behind; older events are in the audit file, and the welcome says from which sequence
/// number replay starts.
const REPLAY_BYTES: usize = 64 * 1024 * 1024;
/// Live events queued for clients before a slow one is moved back onto replay.
const LIVE_BACKLOG: usize = 8192;

/// What a client may do with a deploy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sends commands. One client at a time.
    Control,
    /// Watches.
    #[default]
    Observe,
}

/// What a client says first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    /// Who is attaching, for the deploy's records ("ann@laptop pid 4242 console").
    pub client: String,
    /// Replay events from this sequence number on (1 is the first); `u64::MAX` for none, just
    /// the welcome (what `wavedeck ps` does).
    pub from_seq: u64,
    /// The role wanted. Asking for control while another client has it gets `observe`.
    #[serde(default)]
    pub role: Role,
}

/// What the runner answers a hello with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub version: u32,
    #[serde(flatten)]
    pub about: About,
    #[serde(flatten)]
    pub status: Status,
    /// The oldest event still held for replay, and the newest so far.
    pub first_seq: u64,
    pub last_seq: u64,
    /// The role this client got.
    pub role: Role,
}

/// A deploy's state as `wavedeck ps` and a new client see it; the session owner keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `starting`, `running`, `paused`, `at gate`, `aborting`, `finishing` or `ended`.
    pub state: String,
    /// The wave running (0 before the first), of `waves`.
    pub wave: usize,
    pub waves: usize,
    pub started_at: Option<DateTime<Utc>>,
    /// The client that controls the deploy, if one does.
    pub controller: Option<String>,
    /// Clients attached now (controller and observers).
    pub clients: usize,
    /// The runner's process id.
    pub pid: u32,
}

/// How a deploy session ended, once its lock is released and its audit log closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    /// `None` when the engine stopped without finishing (then the lock is left in place).
    pub outcome: Option<Outcome>,
    /// The process exit code this ending means.
    pub code: i32,
    /// Things the operator should know (a lock that could not be released, an audit write error).
    pub problems: Vec<String>,
    pub audit_path: PathBuf,
    /// fsyncs the write-ahead journal (the audit log) cost this deploy.
    #[serde(default)]
    pub journal_syncs: u64,
}

/// One message on the wire, either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    Hello(Hello),
    Welcome(Welcome),
    /// An event of the deploy, numbered from 1 in the order the runner saw them.
    Event {
        seq: u64,
        #[serde(flatten)]
        event: Stamped,
    },
    /// Events the runner no longer holds (this client fell too far behind): they are in the
    /// audit log.
    Gap {
        from_seq: u64,
        to_seq: u64,
    },
    /// A command for the deploy (controller only).
    Command {
        id: u64,
        command: Command,
        #[serde(default = "keyboard")]
        source: CommandSource,
    },
    /// Take control from whoever has it (audited; they are told).
    TakeOver {
        id: u64,
    },
    /// Give up control and go on observing; the deploy carries on as it is.
    Release {
        id: u64,
    },
    /// Leave on purpose: the deploy carries on as it is (no `on_detach`).
    Detach {
        id: u64,
    },
    Ack {
        id: u64,
    },
    /// A request, or the client itself, refused, and why.
    Refused {
        id: Option<u64>,
        reason: String,
    },
    /// This client's role changed, and why (someone took over).
    Role {
        role: Role,
        reason: String,
    },
    /// The deploy has settled; the runner closes the connection after this.
    Ended(Ended),
}

fn keyboard() -> CommandSource {
    CommandSource::Keyboard
}

/// A client of one runner, numbered in the order they attached.
pub type ClientId = u64;

/// What a client asks of the deploy, for the session owner to decide. Every request but `Left`
/// carries the channel its answer goes back on.
#[derive(Debug)]
pub enum Request {
    Join {
        client: ClientId,
        name: String,
        role: Role,
        reply: oneshot::Sender<Role>,
    },
    Command {
        client: ClientId,
        command: Command,
        source: CommandSource,
        reply: oneshot::Sender<Result<(), String>>,
    },
    TakeOver {
        client: ClientId,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Release {
        client: ClientId,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Detach {
        client: ClientId,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// The connection closed (on purpose after `Detach`, or not: a killed console).
    Left {
        client: ClientId,
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

type Numbered = (u64, Arc<Stamped>);

struct JournalState {
    past: VecDeque<Numbered>,
    past_bytes: usize,
    last_seq: u64,
    live: broadcast::Sender<Numbered>,
}

fn weight(event: &Stamped) -> usize {
    match &event.event {
        Event::Output { line, .. } => line.len() + 64,
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
    fn follow(&self, from_seq: u64) -> (Vec<Numbered>, broadcast::Receiver<Numbered>) {
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
    /// The profile the deploy runs (a console attaching loads it to draw the deploy).
    pub profile: PathBuf,
    pub audit_path: PathBuf,
}

/// The connections of a runner's clients: a way to tell each one something of its own.
#[derive(Default)]
struct Clients {
    next: ClientId,
    open: HashMap<ClientId, mpsc::UnboundedSender<Message>>,
}

/// State shared by the accept loop, every connection and the session owner.
struct Shared {
    about: About,
    journal: Journal,
    status: Mutex<Status>,
    clients: Mutex<Clients>,
    requests: mpsc::UnboundedSender<Request>,
    /// Set once the deploy has settled: every connection sends it and closes.
    ended: watch::Sender<Option<Ended>>,
    /// Connections still open (for the runner to wait until they have the end).
    open: watch::Sender<usize>,
}

impl Shared {
    fn clients(&self) -> std::sync::MutexGuard<'_, Clients> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A deploy's control socket, listening. Dropping it stops accepting and removes the socket.
pub struct Server {
    pub path: PathBuf,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Server {
    /// Listens on `<runtime dir>/<session>.sock`; what clients ask for arrives on the returned
    /// receiver, for the session owner to answer.
    pub fn listen(about: About) -> Result<(Server, mpsc::UnboundedReceiver<Request>), String> {
        use std::os::unix::fs::PermissionsExt;
        let path = runtime_dir()?.join(format!("{}.sock", about.session));
        let listener = UnixListener::bind(&path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
        let (requests, request_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            about,
            journal: Journal::new(),
            status: Mutex::new(Status { state: "starting".into(), pid: std::process::id(), ..Status::default() }),
            clients: Mutex::new(Clients::default()),
            requests,
            ended: watch::Sender::new(None),
            open: watch::Sender::new(0),
        });
        let accept = {
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let shared = shared.clone();
                    shared.open.send_modify(|n| *n += 1);
                    tokio::spawn(async move {
                        let _ = serve(stream, &shared).await;
                        shared.open.send_modify(|n| *n -= 1);
                    });
                }
            })
        };
        Ok((Server { path, shared, accept }, request_rx))
    }

    /// Numbers an event, keeps it for replay and sends it to every client.
    pub fn record(&self, event: &Stamped) {
        self.shared.journal.record(event);
    }

    /// Changes the status new clients and `wavedeck ps` see.
    pub fn set_status(&self, change: impl FnOnce(&mut Status)) {
        change(&mut self.shared.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Sends one client a message of its own (its role changed).
    pub fn tell(&self, id: ClientId, message: Message) {
        if let Some(tx) = self.shared.clients().open.get(&id) {
            let _ = tx.send(message);
        }
    }

    /// Tells every client how the deploy ended, then waits (at most `patience`) until they have
    /// all had it and closed.
    pub async fn end(&self, ended: Ended, patience: Duration) {
        self.shared.ended.send_replace(Some(ended));
        // Nobody new: a client connecting now would be cut off when the runner exits.
        self.accept.abort();
        let _ = std::fs::remove_file(&self.path);
        let mut open = self.shared.open.subscribe();
        let _ = tokio::time::timeout(patience, open.wait_for(|n| *n == 0)).await;
    }
}

async fn send(stream: &mut (impl AsyncWriteExt + Unpin), message: &Message) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

/// [`Message::Event`] as it goes out, borrowing the journal's event instead of copying it: replay
/// sends hundreds of thousands of them.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum Outgoing<'a> {
    Event {
        seq: u64,
        #[serde(flatten)]
        event: &'a Stamped,
    },
}

/// An output event in the same shape, as a plain struct: serde writes it several times faster
/// than the flattened, tagged general form.
#[derive(Serialize)]
struct OutgoingOutput<'a> {
    event: OutputFields<'a>,
}

#[derive(Serialize)]
struct OutputFields<'a> {
    seq: u64,
    at: &'a DateTime<Utc>,
    event: &'static str,
    host: &'a str,
    step: &'a str,
    stream: crate::event::Stream,
    line: &'a str,
}

async fn send_event(stream: &mut (impl AsyncWriteExt + Unpin), seq: u64, event: &Stamped) -> std::io::Result<()> {
    let encoded = match &event.event {
        Event::Output { host, step, stream, line } => serde_json::to_vec(&OutgoingOutput {
            event: OutputFields { seq, at: &event.at, event: "output", host, step, stream: *stream, line },
        }),
        _ => serde_json::to_vec(&Outgoing::Event { seq, event }),
    };
    let mut line = encoded.map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

/// A client's outgoing side: buffered, so a replay is a few large writes rather than one per
/// event, and flushed whenever nothing more is waiting to go.
type Out = tokio::io::BufWriter<OwnedWriteHalf>;

/// Bytes gathered before they are written to a client.
const OUT_BUFFER: usize = 256 * 1024;

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
    if let Ok(output) = serde_json::from_slice::<WireOutput>(&line) {
        return Ok(Some(output.into()));
    }
    serde_json::from_slice(&line).map(Some).map_err(std::io::Error::other)
}

/// An output event as it comes over the wire. Nearly every message is one, and reading it into
/// a plain struct skips the buffering serde needs for a tagged, flattened [`Message`] (several
/// times faster); anything else falls back to the general path.
#[derive(Deserialize)]
struct WireOutput {
    event: WireOutputFields,
}

#[derive(Deserialize)]
struct WireOutputFields {
    seq: u64,
    at: DateTime<Utc>,
    event: OutputTag,
    host: String,
    step: String,
    stream: crate::event::Stream,
    line: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum OutputTag {
    Output,
}

impl From<WireOutput> for Message {
    fn from(wire: WireOutput) -> Message {
        let WireOutputFields { seq, at, event: OutputTag::Output, host, step, stream, line } = wire.event;
        Message::Event { seq, event: Stamped { at, event: Event::Output { host, step, stream, line } } }
    }
}

/// Refuses a client before it has joined.
async fn turn_away(write: &mut Out, reason: String) -> std::io::Result<()> {
    send(write, &Message::Refused { id: None, reason }).await?;
    write.flush().await
}

/// One client's connection, from its hello to its end.
async fn serve(stream: UnixStream, shared: &Shared) -> std::io::Result<()> {
    let peer = stream.peer_cred()?;
    let (read, write) = stream.into_split();
    let mut write = Out::with_capacity(OUT_BUFFER, write);
    let mut reader = BufReader::new(read);
    let own = nix::unistd::getuid().as_raw();
    if peer.uid() != own {
        let reason = format!("this deploy belongs to uid {own}; uid {} may not attach to it", peer.uid());
        return turn_away(&mut write, reason).await;
    }
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, receive(&mut reader)).await {
        Ok(Ok(Some(Message::Hello(hello)))) => hello,
        _ => return turn_away(&mut write, "say hello first".into()).await,
    };
    if hello.version != PROTOCOL {
        let reason =
            format!("protocol version {} is not {PROTOCOL}: use the same wavedeck as the deploy", hello.version);
        return turn_away(&mut write, reason).await;
    }
    let welcome = |role| {
        let (first_seq, last_seq) = shared.journal.span();
        Welcome { version: PROTOCOL, about: shared.about.clone(), status: shared.status(), first_seq, last_seq, role }
    };
    if hello.from_seq == u64::MAX {
        send(&mut write, &Message::Welcome(welcome(Role::Observe))).await?;
        return write.flush().await;
    }
    let (tell_tx, tell) = mpsc::unbounded_channel();
    let id = {
        let mut clients = shared.clients();
        clients.next += 1;
        let id = clients.next;
        clients.open.insert(id, tell_tx);
        id
    };
    let result = follow(id, hello, reader, &mut write, tell, shared, welcome).await;
    shared.clients().open.remove(&id);
    if shared.ended.borrow().is_none() {
        let _ = shared.requests.send(Request::Left { client: id });
    }
    result
}

/// Joins client `id`, then sends it the deploy's events and answers its requests until the
/// deploy has ended or the client goes.
async fn follow(
    id: ClientId,
    hello: Hello,
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    write: &mut Out,
    mut tell: mpsc::UnboundedReceiver<Message>,
    shared: &Shared,
    welcome: impl Fn(Role) -> Welcome,
) -> std::io::Result<()> {
    let (reply, role) = oneshot::channel();
    let join = Request::Join { client: id, name: hello.client.clone(), role: hello.role, reply };
    let role = if shared.requests.send(join).is_ok() { role.await.unwrap_or(Role::Observe) } else { Role::Observe };
    let (mut replay, mut live) = shared.journal.follow(hello.from_seq);
    send(write, &Message::Welcome(welcome(role))).await?;
    // Reading runs on its own, so a half-read line is never dropped when an event goes out.
    let (incoming_tx, mut incoming) = mpsc::channel::<Message>(16);
    tokio::spawn(async move {
        while let Ok(Some(message)) = receive(&mut reader).await {
            if incoming_tx.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut ended = shared.ended.subscribe();
    // A deploy that ended before this client came: look once at the start.
    ended.mark_changed();
    let mut next = hello.from_seq.max(1);
    loop {
        for (seq, event) in replay.drain(..) {
            if seq > next {
                send(write, &Message::Gap { from_seq: next, to_seq: seq - 1 }).await?;
            }
            send_event(write, seq, &event).await?;
            next = seq + 1;
        }
        if live.is_empty() {
            write.flush().await?;
        }
        tokio::select! {
            // Events before the end, so a client has them all when `Ended` comes.
            biased;
            live_event = live.recv() => match live_event {
                Ok((seq, event)) if seq >= next => {
                    if seq > next {
                        send(write, &Message::Gap { from_seq: next, to_seq: seq - 1 }).await?;
                    }
                    send_event(write, seq, &event).await?;
                    next = seq + 1;
                }
                Ok(_) => {}
                // Too slow for the live stream: catch up from what the journal holds.
                Err(broadcast::error::RecvError::Lagged(_)) => (replay, live) = shared.journal.follow(next),
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            Some(message) = tell.recv() => send(write, &message).await?,
            message = incoming.recv() => {
                let Some(message) = message else { return Ok(()) };
                if let Some((request, id_of, answer)) = request_for(id, message) {
                    if shared.requests.send(request).is_err() {
                        send(write, &Message::Refused { id: Some(id_of), reason: "the deploy is ending".into() }).await?;
                        continue;
                    }
                    let reply = match answer.await {
                        Ok(Ok(())) => Message::Ack { id: id_of },
                        Ok(Err(reason)) => Message::Refused { id: Some(id_of), reason },
                        Err(_) => Message::Refused { id: Some(id_of), reason: "the deploy is ending".into() },
                    };
                    send(write, &reply).await?;
                    // What the owner told this client while deciding (its new role) follows the answer.
                    while let Ok(message) = tell.try_recv() {
                        send(write, &message).await?;
                    }
                }
            },
            changed = ended.changed() => {
                let end = shared.ended.borrow().clone();
                match end {
                    Some(end) => {
                        send(write, &Message::Ended(end)).await?;
                        return write.flush().await;
                    }
                    None if changed.is_err() => return Ok(()),
                    None => {}
                }
            },
        }
    }
}

/// The owner's request for a client's message, the message's id and where the answer arrives.
type Asked = (Request, u64, oneshot::Receiver<Result<(), String>>);

fn request_for(client: ClientId, message: Message) -> Option<Asked> {
    let (reply, answer) = oneshot::channel();
    let (request, id) = match message {
        Message::Command { id, command, source } => (Request::Command { client, command, source, reply }, id),
        Message::TakeOver { id } => (Request::TakeOver { client, reply }, id),
        Message::Release { id } => (Request::Release { client, reply }, id),
        Message::Detach { id } => (Request::Detach { client, reply }, id),
        _ => return None,
    };
    Some((request, id, answer))
}

/// A deploy found in the runtime directory, as `wavedeck ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    Running(Box<Welcome>),
    /// A socket nobody answers on: the runner is gone (killed, or it crashed). `removed` when
    /// nothing listens on it any more, so it was cleaned up.
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
        let asked = Hello { version: PROTOCOL, client: client_name("ps"), from_seq: u64::MAX, role: Role::Observe };
        match tokio::time::timeout(HELLO_TIMEOUT, Connection::open(&path, asked)).await {
            Ok(Ok((welcome, _))) => out.push(Listing::Running(Box::new(welcome))),
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

/// How this process names itself to a runner: who, where, which process, as what.
pub fn client_name(what: &str) -> String {
    format!("{}@{} pid {} {what}", crate::sys::operator_name(), crate::sys::machine_name(), std::process::id())
}

/// The socket of deploy `session` (a session id as `wavedeck ps` prints it).
pub fn socket_of(session: &str) -> Result<PathBuf, String> {
    if session.is_empty() || !session.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) {
        return Err(format!("`{session}` is not a session id (see `wavedeck ps`)"));
    }
    Ok(runtime_dir()?.join(format!("{session}.sock")))
}

/// A client's open connection to a runner, after the welcome.
pub struct Connection {
    pub reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl Connection {
    /// Connects to a runner's socket and says hello; returns its welcome and the connection.
    pub async fn open(path: &Path, hello: Hello) -> Result<(Welcome, Connection), String> {
        let stream = UnixStream::connect(path).await.map_err(|e| {
            format!("cannot connect to {}: {e} (is the deploy still running? see wavedeck ps)", path.display())
        })?;
        // A runner that is just ending closes connections it never accepted: the same as
        // finding no runner, not a puzzle about resets.
        let gone = |e: std::io::Error| {
            format!(
                "cannot connect to {}: the deploy ended as this client arrived ({e}); see wavedeck ps",
                path.display()
            )
        };
        let (read, mut writer) = stream.into_split();
        send(&mut writer, &Message::Hello(hello)).await.map_err(gone)?;
        let mut reader = BufReader::new(read);
        match receive(&mut reader).await.map_err(gone)? {
            Some(Message::Welcome(welcome)) => Ok((welcome, Connection { reader, writer })),
            Some(Message::Refused { reason, .. }) => Err(reason),
            None => Err(gone(std::io::ErrorKind::UnexpectedEof.into())),
            Some(_) => Err("the deploy did not answer as wavedeck does".into()),
        }
    }

    pub async fn send(&mut self, message: &Message) -> std::io::Result<()> {
        send(&mut self.writer, message).await
    }

    /// The next message; `None` when the runner closed the connection.
    pub async fn receive(&mut self) -> std::io::Result<Option<Message>> {
        receive(&mut self.reader).await
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
        let hello = Message::Hello(Hello { version: PROTOCOL, client: "ann".into(), from_seq: 1, role: Role::Control });
        let text = serde_json::to_string(&hello).unwrap();
        assert_eq!(text, r#"{"hello":{"version":2,"client":"ann","from_seq":1,"role":"control"}}"#);
        // A client that names no role observes.
        let bare: Message = serde_json::from_str(r#"{"hello":{"version":2,"client":"x","from_seq":1}}"#).unwrap();
        assert!(matches!(bare, Message::Hello(Hello { role: Role::Observe, .. })));
        let command: Message =
            serde_json::from_str(r#"{"command":{"id":3,"command":{"command":"skip","host":"web-2"}}}"#).unwrap();
        assert!(matches!(
            command,
            Message::Command { id: 3, source: CommandSource::Keyboard, command: Command::Skip { .. } }
        ));
        let event = Message::Event { seq: 7, event: stamped(Event::Resumed) };
        let back: Message = serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
        assert_eq!(back, event);
        // An output event takes the fast way in and arrives the same.
        let output = Message::Event {
            seq: 8,
            event: stamped(Event::Output {
                host: "h".into(),
                step: "s".into(),
                stream: crate::event::Stream::Stderr,
                line: "x".into(),
            }),
        };
        let text = serde_json::to_vec(&output).unwrap();
        let Message::Event { event: ref inner, .. } = output else { unreachable!() };
        let Event::Output { host, step, stream, line } = &inner.event else { unreachable!() };
        let fields = OutputFields { seq: 8, at: &inner.at, event: "output", host, step, stream: *stream, line };
        assert_eq!(
            serde_json::to_vec(&OutgoingOutput { event: fields }).unwrap(),
            text,
            "the fast way out writes the same"
        );
        let fast: WireOutput = serde_json::from_slice(&text).unwrap();
        assert_eq!(Message::from(fast), output);
        assert!(serde_json::from_str::<WireOutput>(&serde_json::to_string(&event).unwrap()).is_err());
        // What the runner sends without copying reads back as the same message.
        let Message::Event { event: ref inner, .. } = event else { unreachable!() };
        let borrowed = serde_json::to_string(&Outgoing::Event { seq: 7, event: inner }).unwrap();
        assert_eq!(borrowed, serde_json::to_string(&event).unwrap());
    }
}
