//! Resuming an interrupted deploy: what its audit log (a write-ahead journal: a step's start is
//! on disk before the step runs) says each host had done when its runner died, and where a new
//! runner picks each host up.
//!
//! For every host the journal tells one of: not started; done; failed (at which step); skipped;
//! between two steps (the first K finished); or interrupted in step K: its start is on file and
//! its end is not, so it may have run partly, wholly, or not at all. The operator decides those:
//! run the step again, skip the host, or call it failed. Steps that finished never run again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::audit::{Record, SessionStart as SessionStartRef, read_lines};
use crate::event::{Event, HostState, TriageAction};
use crate::plan::{Carried, Resume};

/// What the journal says about one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    NotStarted,
    Done,
    Failed {
        step: String,
    },
    Skipped,
    /// Started; its first `steps_done` steps finished and nothing else is in flight.
    Between {
        steps_done: usize,
    },
    /// Step number `index` (1-based), its `attempt`, had started and not ended.
    Interrupted {
        index: usize,
        step: String,
        steps_done: usize,
        attempt: u32,
    },
}

/// What to do with a host interrupted mid-step (`--interrupted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Run the interrupted step again from its start.
    Rerun,
    Skip,
    Fail,
}

impl std::str::FromStr for Choice {
    type Err = String;
    fn from_str(s: &str) -> Result<Choice, String> {
        match s {
            "rerun" => Ok(Choice::Rerun),
            "skip" => Ok(Choice::Skip),
            "fail" => Ok(Choice::Fail),
            other => Err(format!("`{other}`: expected rerun, skip or fail")),
        }
    }
}

/// The operator's choices for hosts interrupted mid-step: one for all, and per host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Choices {
    pub all: Option<Choice>,
    pub hosts: BTreeMap<String, Choice>,
}

impl Choices {
    /// From `--interrupted` values: `rerun`, `skip` or `fail` for every interrupted host, or
    /// `HOST=rerun|skip|fail` for one.
    pub fn parse(values: &[String]) -> Result<Choices, String> {
        let mut choices = Choices::default();
        for value in values {
            match value.split_once('=') {
                Some((host, choice)) => {
                    choices.hosts.insert(host.to_string(), choice.parse()?);
                }
                None => choices.all = Some(value.parse()?),
            }
        }
        Ok(choices)
    }

    /// In words, for the audit log: `rerun`, `web-3=skip`, ….
    pub fn words(&self) -> String {
        let mut words: Vec<String> = self.all.iter().map(|c| c.word().to_string()).collect();
        words.extend(self.hosts.iter().map(|(h, c)| format!("{h}={}", c.word())));
        if words.is_empty() { "none".into() } else { words.join(", ") }
    }
}

impl Choice {
    pub fn word(self) -> &'static str {
        match self {
            Choice::Rerun => "rerun",
            Choice::Skip => "skip",
            Choice::Fail => "fail",
        }
    }
}

/// An interrupted deploy, as its journal tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interrupted {
    pub session: String,
    pub path: PathBuf,
    pub operator: String,
    pub mode: String,
    pub profile: PathBuf,
    pub profile_sha256: String,
    pub env: String,
    pub release: String,
    /// Hosts in plan order, with their wave.
    pub hosts: Vec<(String, usize, Progress)>,
    /// Run-once steps: how many finished, and the one in flight, if any.
    pub once_steps_done: usize,
    pub once_interrupted: Option<String>,
    /// The session this one resumed, if it was itself a resume.
    pub resumed_from: Option<String>,
}

/// The audit file of session `session` in `dir`.
pub fn journal_of(dir: &Path, session: &str) -> Result<PathBuf, String> {
    if session.is_empty() || !session.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) {
        return Err(format!("`{session}` is not a session id (see wavedeck ps)"));
    }
    let path = dir.join(format!("wavedeck-{session}.jsonl"));
    if path.exists() { Ok(path) } else { Err(format!("no audit log for session {session} in {}", dir.display())) }
}

/// The deploy `session` belongs to: the first session of its chain of resumes.
pub fn deploy_of(dir: &Path, session: &str) -> String {
    use std::io::BufRead;
    let mut current = session.to_string();
    // Bounded: no chain of resumes made by hand is this long.
    for _ in 0..100 {
        let Ok(file) = std::fs::File::open(dir.join(format!("wavedeck-{current}.jsonl"))) else { break };
        let mut first = String::new();
        if std::io::BufReader::new(file).read_line(&mut first).is_err() {
            break;
        }
        match read_lines(&first).next().map(|l| l.record) {
            Some(Record::SessionStart(SessionStartRef { resumed_from: Some(earlier), .. })) => current = earlier,
            _ => break,
        }
    }
    current
}

/// The session in `dir` that resumed `session`, if one did (a deploy is carried on once).
pub fn resumed_by(dir: &Path, session: &str) -> Option<String> {
    use std::io::BufRead;
    let entries = std::fs::read_dir(dir).ok()?;
    entries.filter_map(|e| e.ok()).find_map(|entry| {
        let file = std::fs::File::open(entry.path()).ok()?;
        let mut first = String::new();
        std::io::BufReader::new(file).read_line(&mut first).ok()?;
        let line = read_lines(&first).next()?;
        match line.record {
            Record::SessionStart(start) if start.resumed_from.as_deref() == Some(session) => Some(line.session),
            _ => None,
        }
    })
}

/// Deploys in `dir` whose runner died before their end (no `session_end`), not running now
/// (`running`) and not resumed since: the newest 100 audit files are looked at. Each is opened
/// for its first line and its last bytes only; just the interrupted ones are read whole.
pub fn interrupted_sessions(dir: &Path, running: &[String]) -> Vec<Interrupted> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let recent = &files[files.len().saturating_sub(100)..];
    let starts: Vec<(PathBuf, String, SessionStartRef)> =
        recent.iter().filter_map(|path| first_record(path).map(|(id, start)| (path.clone(), id, start))).collect();
    let resumed: Vec<&str> = starts.iter().filter_map(|(_, _, start)| start.resumed_from.as_deref()).collect();
    starts
        .iter()
        .filter(|(path, session, start)| {
            matches!(start.mode.as_str(), "headless" | "console")
                && !running.contains(session)
                && !resumed.contains(&session.as_str())
                && !ends_with_session_end(path)
        })
        .filter_map(|(path, _, _)| read(path).ok())
        .collect()
}

/// An audit file's session id and start record, from its first line.
fn first_record(path: &Path) -> Option<(String, SessionStartRef)> {
    use std::io::BufRead;
    let mut first = String::new();
    std::io::BufReader::new(std::fs::File::open(path).ok()?).read_line(&mut first).ok()?;
    let line = read_lines(&first).next()?;
    match line.record {
        Record::SessionStart(start) => Some((line.session, start)),
        _ => None,
    }
}

/// Whether an audit file's last line is its session end (the log closed it), reading only its
/// last few KiB: audit files hold every output line and can be large.
fn ends_with_session_end(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else { return false };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(4096)));
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return false;
    }
    // The seek may land inside a character: only the last line matters.
    String::from_utf8_lossy(&bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.contains("\"record\":\"session_end\""))
}

/// [`interrupted_sessions`], leaving out those whose runner answers on its control socket.
pub fn interrupted_here(dir: &Path) -> Vec<Interrupted> {
    let mut found = interrupted_sessions(dir, &[]);
    found.retain(|j| {
        crate::remote::socket_of(&j.session)
            .map(|socket| std::os::unix::net::UnixStream::connect(socket).is_err())
            .unwrap_or(true)
    });
    found
}

/// Reads an audit file as a journal. Refuses one that ended (nothing to resume) or that never
/// started a deploy.
pub fn read(path: &Path) -> Result<Interrupted, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut lines = read_lines(&text);
    let first = lines.next().ok_or_else(|| format!("{} holds no audit records", path.display()))?;
    let Record::SessionStart(start) = first.record else {
        return Err(format!("{} does not begin with a session start", path.display()));
    };
    if !matches!(start.mode.as_str(), "headless" | "console") {
        return Err(format!("session {} is a {} session, not a deploy", first.session, start.mode));
    }
    let mut journal = Interrupted {
        session: first.session,
        path: path.to_path_buf(),
        operator: start.operator,
        mode: start.mode,
        profile: start.profile,
        profile_sha256: start.profile_sha256,
        env: start.env,
        release: start.release,
        hosts: Vec::new(),
        once_steps_done: 0,
        once_interrupted: None,
        resumed_from: start.resumed_from,
    };
    // Per host: steps finished, the step in flight (index, name), final state.
    let mut done: BTreeMap<String, usize> = BTreeMap::new();
    let mut flight: BTreeMap<String, (usize, String, u32)> = BTreeMap::new();
    let mut ended: BTreeMap<String, Progress> = BTreeMap::new();
    for line in lines {
        let event = match line.record {
            Record::SessionEnd { outcome, .. } => {
                return Err(format!("session {} ended ({outcome}): there is nothing to resume", journal.session));
            }
            Record::Event(event) => event,
            _ => continue,
        };
        match event {
            Event::DeployStarted { waves, .. } => {
                journal.hosts = waves
                    .iter()
                    .flat_map(|w| w.hosts.iter().map(move |h| (h.clone(), w.wave, Progress::NotStarted)))
                    .collect();
            }
            Event::StepStarted { wave: 0, step, .. } => journal.once_interrupted = Some(step),
            Event::StepFinished { wave: 0, result, will_retry, .. } => {
                journal.once_interrupted = None;
                if result.succeeded() && !will_retry {
                    journal.once_steps_done += 1;
                }
            }
            Event::StepStarted { host, index, step, attempt, .. } => {
                flight.insert(host, (index, step, attempt));
            }
            Event::StepFinished { host, index, result, will_retry, step, .. } => {
                flight.remove(&host);
                if result.succeeded() {
                    done.insert(host, index);
                } else if !will_retry {
                    ended.insert(host, Progress::Failed { step });
                }
            }
            Event::HostStarted { host, .. } => {
                // A retried host starts again: what it failed at no longer stands.
                if matches!(ended.get(&host), Some(Progress::Failed { .. })) {
                    ended.remove(&host);
                }
                done.entry(host).or_insert(0);
            }
            Event::HostFinished { host, state, .. } => {
                let progress = match state {
                    HostState::Done => Some(Progress::Done),
                    HostState::Skipped => Some(Progress::Skipped),
                    HostState::Failed => ended.get(&host).cloned().or(Some(Progress::Failed { step: String::new() })),
                    // Cancelled by an abort: its steps tell where it is.
                    HostState::Cancelled | HostState::NotStarted => None,
                };
                if let Some(progress) = progress {
                    ended.insert(host, progress);
                }
            }
            Event::HostTriaged { host, action: TriageAction::Skip | TriageAction::Exclude } => {
                ended.insert(host, Progress::Skipped);
            }
            _ => {}
        }
    }
    // No deploy_started on disk: then no step's start is either (each step's start is fsynced,
    // and with it every line before it), so nothing ran: the resume starts every host afresh.
    for (host, _, progress) in &mut journal.hosts {
        let steps_done = done.get(host).copied();
        *progress = match (ended.get(host), flight.get(host), steps_done) {
            (Some(Progress::Skipped), _, _) => Progress::Skipped,
            (Some(Progress::Done), _, _) => Progress::Done,
            (_, Some((index, step, attempt)), _) => Progress::Interrupted {
                index: *index,
                step: step.clone(),
                steps_done: steps_done.unwrap_or(0),
                attempt: *attempt,
            },
            (Some(failed @ Progress::Failed { .. }), None, _) => failed.clone(),
            (_, None, Some(steps_done)) => Progress::Between { steps_done },
            (_, None, None) => Progress::NotStarted,
        };
    }
    Ok(journal)
}

impl Interrupted {
    /// The hosts interrupted mid-step.
    pub fn interrupted(&self) -> impl Iterator<Item = (&str, &Progress)> {
        self.hosts.iter().filter(|(_, _, p)| matches!(p, Progress::Interrupted { .. })).map(|(h, _, p)| (h.as_str(), p))
    }

    /// Where the resumed deploy picks each host up, with `choices` for hosts interrupted
    /// mid-step; every such host needs one, and a choice may name only such a host. A run-once
    /// step that was in flight runs again (it comes before any host is touched, and a migration
    /// must be safe to run twice anyway).
    pub fn resume(&self, choices: &Choices) -> Result<Resume, String> {
        let stuck: Vec<&str> = self.interrupted().map(|(host, _)| host).collect();
        if let Some(other) = choices.hosts.keys().find(|h| !stuck.contains(&h.as_str())) {
            return Err(format!("--interrupted {other}=…: {other} was not interrupted mid-step"));
        }
        let undecided: Vec<&str> =
            stuck.iter().copied().filter(|h| choices.all.is_none() && !choices.hosts.contains_key(*h)).collect();
        if !undecided.is_empty() {
            return Err(format!(
                "{} host(s) were interrupted mid-step ({}): choose --interrupted rerun (run that step again), \
                 skip or fail, for all of them or per host (--interrupted HOST=skip)",
                undecided.len(),
                undecided.join(", ")
            ));
        }
        let hosts = self
            .hosts
            .iter()
            .filter_map(|(host, _, progress)| {
                let choice = choices.hosts.get(host).copied().or(choices.all).unwrap_or(Choice::Fail);
                let carried = match progress {
                    Progress::NotStarted => return None,
                    Progress::Done => Carried::Done,
                    Progress::Skipped => Carried::Skipped,
                    Progress::Failed { step } => Carried::Failed { step: step.clone() },
                    Progress::Between { steps_done } => Carried::From { steps_done: *steps_done, attempt: 0 },
                    Progress::Interrupted { steps_done, step, attempt, .. } => match choice {
                        Choice::Rerun => Carried::From { steps_done: *steps_done, attempt: *attempt },
                        Choice::Skip => Carried::Skipped,
                        Choice::Fail => Carried::Failed { step: step.clone() },
                    },
                };
                Some((host.clone(), carried))
            })
            .collect();
        Ok(Resume { hosts, once_steps_done: self.once_steps_done })
    }

    /// Each host's state in words, for the operator before resuming.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "Interrupted deploy {} of {} to {} (started by {}), journal {}:",
            self.session,
            self.release,
            self.env,
            self.operator,
            self.path.display()
        );
        if self.hosts.is_empty() {
            out.push_str("\n  it stopped before any step ran: every host starts from the beginning");
        }
        if let Some(step) = &self.once_interrupted {
            out.push_str(&format!("\n  run-once step {step} was interrupted: it runs again"));
        }
        let width = self.hosts.iter().map(|(h, _, _)| h.len()).max().unwrap_or(4);
        for (host, wave, progress) in &self.hosts {
            let what = match progress {
                Progress::NotStarted => "not started".to_string(),
                Progress::Done => "done".to_string(),
                Progress::Failed { step } => format!("failed at {step}"),
                Progress::Skipped => "skipped".to_string(),
                Progress::Between { steps_done } => format!("{steps_done} steps done, continues with the next"),
                Progress::Interrupted { index, step, .. } => {
                    format!("INTERRUPTED in step {index} ({step}): may have run partly")
                }
            };
            out.push_str(&format!("\n  {host:<width$}  wave {wave}  {what}"));
        }
        crate::text::visible(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(lines: &[&str]) -> Result<Interrupted, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wavedeck-s.jsonl");
        let mut text = String::from(
            r#"{"ts":"t","session":"s","seq":1,"record":"session_start","operator":"ann","machine":"m","version":"0","argv":[],"mode":"headless","profile":"p.toml","profile_sha256":"00","env":"prod","release":"2"}"#,
        );
        text.push('\n');
        text.push_str(
            r#"{"ts":"t","session":"s","seq":2,"record":"event","event":"deploy_started","service":"x","env":"prod","release":"2","waves":[{"wave":1,"hosts":["a"],"max_failures":0},{"wave":2,"hosts":["b","c","d","e"],"max_failures":0}],"steps":["one","two"]}"#,
        );
        for (i, l) in lines.iter().enumerate() {
            text.push_str(&format!("\n{{\"ts\":\"t\",\"session\":\"s\",\"seq\":{},\"record\":\"event\",{l}}}", i + 3));
        }
        std::fs::write(&path, text).unwrap();
        read(&path)
    }

    #[test]
    fn each_host_is_done_failed_skipped_between_or_interrupted() {
        let j = journal(&[
            r#""event":"host_started","wave":1,"host":"a""#,
            r#""event":"step_started","wave":1,"host":"a","step":"one","kind":"command","index":1,"total":2,"attempt":1,"command":"x""#,
            r#""event":"step_finished","wave":1,"host":"a","step":"one","index":1,"attempt":1,"result":"exited","code":0,"duration_ms":1,"will_retry":false"#,
            r#""event":"step_started","wave":1,"host":"a","step":"two","kind":"command","index":2,"total":2,"attempt":1,"command":"x""#,
            r#""event":"step_finished","wave":1,"host":"a","step":"two","index":2,"attempt":1,"result":"exited","code":0,"duration_ms":1,"will_retry":false"#,
            r#""event":"host_finished","wave":1,"host":"a","state":"done""#,
            r#""event":"host_started","wave":2,"host":"b""#,
            r#""event":"step_started","wave":2,"host":"b","step":"one","kind":"command","index":1,"total":2,"attempt":1,"command":"x""#,
            r#""event":"step_finished","wave":2,"host":"b","step":"one","index":1,"attempt":1,"result":"exited","code":0,"duration_ms":1,"will_retry":false"#,
            r#""event":"step_started","wave":2,"host":"b","step":"two","kind":"command","index":2,"total":2,"attempt":1,"command":"x""#,
            r#""event":"host_started","wave":2,"host":"c""#,
            r#""event":"step_started","wave":2,"host":"c","step":"one","kind":"command","index":1,"total":2,"attempt":1,"command":"x""#,
            r#""event":"step_finished","wave":2,"host":"c","step":"one","index":1,"attempt":1,"result":"exited","code":0,"duration_ms":1,"will_retry":false"#,
            r#""event":"host_started","wave":2,"host":"d""#,
            r#""event":"step_started","wave":2,"host":"d","step":"one","kind":"command","index":1,"total":2,"attempt":1,"command":"x""#,
            r#""event":"step_finished","wave":2,"host":"d","step":"one","index":1,"attempt":1,"result":"exited","code":3,"duration_ms":1,"will_retry":false"#,
            // A torn last line, as a power cut leaves it, is ignored.
            r#""event":"step_sta"#,
        ])
        .unwrap();
        let states: Vec<&Progress> = j.hosts.iter().map(|(_, _, p)| p).collect();
        assert_eq!(
            states,
            [
                &Progress::Done,
                &Progress::Interrupted { index: 2, step: "two".into(), steps_done: 1, attempt: 1 },
                &Progress::Between { steps_done: 1 },
                &Progress::Failed { step: "one".into() },
                &Progress::NotStarted,
            ]
        );
        let all = |choice| Choices { all: Some(choice), hosts: BTreeMap::new() };
        let rerun = j.resume(&all(Choice::Rerun)).unwrap();
        assert_eq!(rerun.hosts["a"], Carried::Done);
        assert_eq!(
            rerun.hosts["b"],
            Carried::From { steps_done: 1, attempt: 1 },
            "the interrupted step runs again, not the one before"
        );
        assert_eq!(rerun.hosts["c"], Carried::From { steps_done: 1, attempt: 0 });
        assert!(!rerun.hosts.contains_key("e"));
        assert_eq!(j.resume(&all(Choice::Skip)).unwrap().hosts["b"], Carried::Skipped);
        assert_eq!(j.resume(&all(Choice::Fail)).unwrap().hosts["b"], Carried::Failed { step: "two".into() });
        // Per host; a host that was not mid-step cannot be given a choice, and none may be left out.
        let per_host = Choices::parse(&["b=skip".to_string()]).unwrap();
        assert_eq!(j.resume(&per_host).unwrap().hosts["b"], Carried::Skipped);
        assert!(j.resume(&Choices::parse(&["c=rerun".to_string()]).unwrap()).unwrap_err().contains("c was not"));
        assert!(j.resume(&Choices::default()).unwrap_err().contains("(b)"));
        assert!(Choices::parse(&["b=maybe".to_string()]).is_err());
        assert!(j.describe().contains("INTERRUPTED in step 2 (two)"), "{}", j.describe());
    }

    #[test]
    fn a_journal_that_stops_before_the_deploy_started_resumes_every_host_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        std::fs::write(
            &path,
            r#"{"ts":"t","session":"s","seq":1,"record":"session_start","operator":"ann","machine":"m","version":"0","argv":[],"mode":"headless","profile":"p.toml","profile_sha256":"00","env":"prod","release":"2"}
{"ts":"t","session":"s","seq":2,"record":"lock_acquired","host":"a","path":"p"}"#,
        )
        .unwrap();
        let journal = read(&path).unwrap();
        assert!(journal.hosts.is_empty());
        assert_eq!(journal.resume(&Choices::default()).unwrap(), Resume::default());
        assert!(journal.describe().contains("before any step ran"));
    }

    #[test]
    fn interrupted_deploys_are_those_without_an_end_not_resumed_since() {
        let dir = tempfile::tempdir().unwrap();
        let start = |id: &str, from: Option<&str>| {
            let from = from.map_or(String::new(), |f| format!(",\"resumed_from\":\"{f}\""));
            format!(
                "{{\"ts\":\"t\",\"session\":\"{id}\",\"seq\":1,\"record\":\"session_start\",\"operator\":\"ann\",\
                 \"machine\":\"m\",\"version\":\"0\",\"argv\":[],\"mode\":\"headless\",\"profile\":\"p.toml\",\
                 \"profile_sha256\":\"00\",\"env\":\"prod\",\"release\":\"2\"{from}}}\n"
            )
        };
        let end = "{\"ts\":\"t\",\"session\":\"a\",\"seq\":2,\"record\":\"session_end\",\"outcome\":\"succeeded\",\"exit_code\":0}\n";
        std::fs::write(dir.path().join("wavedeck-a.jsonl"), start("a", None) + end).unwrap();
        std::fs::write(dir.path().join("wavedeck-b.jsonl"), start("b", None)).unwrap();
        std::fs::write(dir.path().join("wavedeck-c.jsonl"), start("c", Some("b"))).unwrap();
        let found: Vec<String> = interrupted_sessions(dir.path(), &[]).into_iter().map(|j| j.session).collect();
        assert_eq!(found, ["c"], "a ended; b was carried on by c, itself interrupted");
        assert!(interrupted_sessions(dir.path(), &["c".to_string()]).is_empty(), "c runs");
    }

    #[test]
    fn a_session_that_ended_cannot_be_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        std::fs::write(
            &path,
            r#"{"ts":"t","session":"s","seq":1,"record":"session_start","operator":"ann","machine":"m","version":"0","argv":[],"mode":"headless","profile":"p.toml","profile_sha256":"00","env":"prod","release":"2"}
{"ts":"t","session":"s","seq":2,"record":"session_end","outcome":"refused","exit_code":5}"#,
        )
        .unwrap();
        assert!(read(&path).unwrap_err().contains("nothing to resume"));
    }
}
