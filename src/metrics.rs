//! A deploy's figures for Prometheus (`--metrics-file`): OpenMetrics text in the form
//! node_exporter's textfile collector reads, rewritten as the deploy goes.
//!
//! One file may serve many services and environments: each write keeps the other pairs' series,
//! under a lock beside the file, and replaces the file by renaming a finished temporary one, so
//! a scrape never sees half a file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::event::{Event, HostState, Outcome, Stamped};

/// Where the metrics file goes when no flag or config names one.
pub const METRICS_FILE_ENV: &str = "WAVEDECK_METRICS_FILE";

/// The metric families, in the order written, with their help.
const FAMILIES: &[(&str, &str)] = &[
    ("wavedeck_deploy_info", "The last deploy of this service and environment (value 1)."),
    ("wavedeck_deploy_state", "Where the last deploy stands: 1 for its state, 0 for the others."),
    ("wavedeck_deploy_duration_seconds", "How long the last deploy ran (so far, while it runs)."),
    ("wavedeck_deploy_hosts", "Hosts of the last deploy by state."),
    ("wavedeck_wave_duration_seconds", "How long each wave of the last deploy ran."),
    ("wavedeck_last_success_timestamp_seconds", "When a deploy of this service and environment last succeeded."),
];

/// The states `wavedeck_deploy_state` reports.
const STATES: &[&str] = &["running", "paused", "waiting_promote", "aborting", "succeeded", "failed", "aborted"];

/// What the file says of one deploy, kept up to date from its events.
#[derive(Debug, Clone, Default)]
pub struct DeployFigures {
    service: String,
    env: String,
    release: String,
    session: String,
    state: &'static str,
    started: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    hosts: BTreeMap<&'static str, usize>,
    waves: BTreeMap<usize, (DateTime<Utc>, Option<DateTime<Utc>>)>,
    succeeded_at: Option<DateTime<Utc>>,
}

impl DeployFigures {
    pub fn new(session: &str) -> DeployFigures {
        DeployFigures { session: session.to_string(), state: "running", ..DeployFigures::default() }
    }

    /// Folds one event in; whether the file should be written now.
    pub fn fold(&mut self, stamped: &Stamped) -> bool {
        self.last = Some(stamped.at);
        match &stamped.event {
            Event::DeployStarted { service, env, release, waves, .. } => {
                self.service = service.clone();
                self.env = env.clone();
                self.release = release.clone();
                self.started = Some(stamped.at);
                self.hosts.insert("not_started", waves.iter().map(|w| w.hosts.len()).sum());
            }
            Event::WaveStarted { wave, .. } => {
                self.waves.insert(*wave, (stamped.at, None));
            }
            Event::WaveFinished { wave, .. } => {
                if let Some((_, end)) = self.waves.get_mut(wave) {
                    *end = Some(stamped.at);
                }
            }
            Event::Paused { .. } => self.state = "paused",
            Event::Resumed | Event::Promoted { .. } => self.state = "running",
            Event::AwaitingPromote { .. } => self.state = "waiting_promote",
            Event::Aborted { .. } => self.state = "aborting",
            Event::DeployFinished { outcome, hosts, .. } => {
                self.state = match outcome {
                    Outcome::Succeeded => "succeeded",
                    Outcome::Failed => "failed",
                    Outcome::Aborted => "aborted",
                };
                self.hosts.clear();
                for host in hosts {
                    *self.hosts.entry(state_name(host.state)).or_default() += 1;
                }
                if *outcome == Outcome::Succeeded {
                    self.succeeded_at = Some(stamped.at);
                }
            }
            _ => return false,
        }
        true
    }

    /// This deploy's series, by family.
    fn series(&self) -> BTreeMap<&'static str, Vec<String>> {
        let pair = format!("service=\"{}\",env=\"{}\"", escape(&self.service), escape(&self.env));
        let mut out: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        let mut add = |family: &'static str, labels: String, value: String| {
            out.entry(family).or_default().push(format!("{family}{{{labels}}} {value}"));
        };
        add(
            "wavedeck_deploy_info",
            format!("{pair},release=\"{}\",session=\"{}\"", escape(&self.release), escape(&self.session)),
            "1".into(),
        );
        for state in STATES {
            add(
                "wavedeck_deploy_state",
                format!("{pair},state=\"{state}\""),
                u8::from(*state == self.state).to_string(),
            );
        }
        if let (Some(start), Some(last)) = (self.started, self.last) {
            add("wavedeck_deploy_duration_seconds", pair.clone(), seconds(last - start));
        }
        for (state, count) in &self.hosts {
            add("wavedeck_deploy_hosts", format!("{pair},state=\"{state}\""), count.to_string());
        }
        for (wave, (start, end)) in &self.waves {
            if let Some(end) = end {
                add("wavedeck_wave_duration_seconds", format!("{pair},wave=\"{wave}\""), seconds(*end - *start));
            }
        }
        if let Some(at) = self.succeeded_at {
            add(
                "wavedeck_last_success_timestamp_seconds",
                pair,
                format!("{:.3}", at.timestamp_millis() as f64 / 1000.0),
            );
        }
        out
    }

    /// Writes the file: this deploy's series, the others' as they were.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(lock_path(path))?;
        // Held until this write is done: another deploy's write waits for it.
        let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| std::io::Error::from(errno))?;
        let existing = std::fs::read_to_string(path).unwrap_or_default();
        let mine = self.series();
        let ours = format!("service=\"{}\",env=\"{}\"", escape(&self.service), escape(&self.env));
        let mut text = String::new();
        for (family, help) in FAMILIES {
            text.push_str(&format!("# HELP {family} {help}\n# TYPE {family} gauge\n"));
            // A success recorded by an earlier deploy stays until this one succeeds.
            let keep_earlier_success =
                *family == "wavedeck_last_success_timestamp_seconds" && self.succeeded_at.is_none();
            for line in existing.lines().filter(|l| !l.starts_with('#')) {
                let named = line.split(['{', ' ']).next() == Some(family);
                if named && (!line.contains(&ours) || keep_earlier_success) {
                    text.push_str(line);
                    text.push('\n');
                }
            }
            for line in mine.get(family).into_iter().flatten() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text.push_str("# EOF\n");
        let temp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".lock");
    path.with_file_name(name)
}

fn state_name(state: HostState) -> &'static str {
    match state {
        HostState::Done => "done",
        HostState::Failed => "failed",
        HostState::Cancelled => "cancelled",
        HostState::NotStarted => "not_started",
        HostState::Skipped => "skipped",
    }
}

fn seconds(d: chrono::Duration) -> String {
    format!("{:.3}", d.num_milliseconds().max(0) as f64 / 1000.0)
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes the file in the background as events come (at most one write queued: a later one
/// holds everything an earlier one would have said).
pub struct MetricsFile {
    figures: DeployFigures,
    updates: Option<mpsc::Sender<DeployFigures>>,
    writer: Option<tokio::task::JoinHandle<Option<String>>>,
}

impl MetricsFile {
    pub fn start(path: PathBuf, session: &str) -> MetricsFile {
        let (updates, mut queue) = mpsc::channel::<DeployFigures>(1);
        let writer = tokio::spawn(async move {
            let mut problem = None;
            while let Some(figures) = queue.recv().await {
                let target = path.clone();
                let written = tokio::task::spawn_blocking(move || figures.write(&target)).await;
                if let Ok(Err(e)) = written {
                    problem = Some(format!("cannot write the metrics file {}: {e}", path.display()));
                }
            }
            problem
        });
        MetricsFile { figures: DeployFigures::new(session), updates: Some(updates), writer: Some(writer) }
    }

    pub fn observe(&mut self, event: &Stamped) {
        if self.figures.fold(event)
            && let Some(updates) = &self.updates
        {
            // Full: a write is waiting that this event's own write will follow; the last event
            // (the deploy's end) is sent by `finish`, which waits.
            let _ = updates.try_send(self.figures.clone());
        }
    }

    /// Writes the final figures, the deploy's end as its session tells it (`succeeded`,
    /// `failed`, `aborted`, …), and waits for the writer; says what went wrong, if anything.
    pub async fn finish(&mut self, ended: &str) -> Option<String> {
        if let Some(state) = STATES.iter().find(|s| **s == ended) {
            self.figures.state = state;
        }
        if let Some(updates) = self.updates.take() {
            let _ = updates.send(self.figures.clone()).await;
        }
        match self.writer.take() {
            Some(writer) => writer.await.ok().flatten(),
            None => None,
        }
    }
}
