//! `plan --diff`: for every `template` step, what each host has now against what the deploy
//! would write there, as a unified diff with secrets masked. It only reads (`cat` on the host).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::plan::{Plan, PlannedAction};
use crate::secrets::Redactor;
use crate::transport::{MAX_CAPTURED_BYTES, NoObserver, Target, Transport, run_captured};

/// Hosts read at once.
const AT_ONCE: usize = 16;
/// How long reading one file may take.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// What a host has at one template's destination, against what would be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    /// Nothing there yet: the whole new file.
    New(String),
    /// A unified diff, old then new.
    Changed(String),
    /// It could not be read (or compared): why.
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    pub step: String,
    pub to: String,
    pub change: Change,
}

/// Per host of the plan (in plan order), its templates' changes, or why it could not be read.
pub async fn template_changes(
    plan: &Plan,
    transport: Arc<dyn Transport>,
    redactor: &Redactor,
) -> Vec<(String, Result<Vec<FileChange>, String>)> {
    // Each read owns what it needs, so the whole can run as a task of its own.
    let reads: Vec<_> = plan
        .waves
        .iter()
        .flat_map(|w| w.hosts.iter())
        .enumerate()
        .map(|(at, host)| {
            let templates: Vec<Planned> = host
                .steps
                .iter()
                .filter_map(|s| match &s.action {
                    PlannedAction::Template { content, shown, to, .. } => Some(Planned {
                        step: s.name.clone(),
                        to: to.clone(),
                        content: content.0.clone(),
                        shown: shown.clone(),
                    }),
                    _ => None,
                })
                .collect();
            let target = Target { env: plan.env.clone(), host: host.host.clone() };
            read_host(at, target, templates, transport.clone(), redactor.clone())
        })
        .collect();
    let mut done: Vec<(usize, String, Result<Vec<FileChange>, String>)> =
        futures_util::stream::iter(reads).buffer_unordered(AT_ONCE).collect().await;
    done.sort_by_key(|(at, _, _)| *at);
    done.into_iter().map(|(_, host, changes)| (host, changes)).collect()
}

/// A template step as it would write on one host.
struct Planned {
    step: String,
    to: String,
    /// With its secrets: compared, never shown.
    content: String,
    shown: String,
}

/// One host's templates against what it has; `at` keeps the plan's order.
async fn read_host(
    at: usize,
    target: Target,
    templates: Vec<Planned>,
    transport: Arc<dyn Transport>,
    redactor: Redactor,
) -> (usize, String, Result<Vec<FileChange>, String>) {
    let name = target.host.name.clone();
    if templates.is_empty() {
        return (at, name, Ok(Vec::new()));
    }
    let session = match transport.open(&target, &NoObserver).await {
        Ok(session) => session,
        Err(e) => return (at, name, Err(redactor.redact(&e.to_string()).into_owned())),
    };
    let mut changes = Vec::new();
    for Planned { step, to, content, shown } in templates {
        let read = format!("cat -- {}", crate::shell::quote(&to));
        let (result, said) = run_captured(session.as_ref(), &read, READ_TIMEOUT).await;
        let change = match result.exit_code() {
            Some(0) if said.stdout.len() >= MAX_CAPTURED_BYTES => {
                Change::Unknown(format!("larger than {} KiB: not compared", MAX_CAPTURED_BYTES / 1024))
            }
            // Equal is decided on the real text; what is shown has the secrets masked (what is on
            // the host may hold one too).
            Some(0) if said.stdout == content => Change::Unchanged,
            Some(0) => match compare(&redactor.redact(&said.stdout), &shown, &to) {
                Change::Unchanged => Change::Changed("(only secret values differ)\n".into()),
                other => other,
            },
            _ if said.stderr.contains("No such file") => Change::New(shown),
            _ => Change::Unknown(redactor.redact(said.all().trim()).into_owned()),
        };
        changes.push(FileChange { step, to, change });
    }
    (at, name, Ok(changes))
}

fn compare(old: &str, new: &str, to: &str) -> Change {
    if old == new {
        return Change::Unchanged;
    }
    let diff = similar::TextDiff::from_lines(old, new);
    let unified = diff
        .unified_diff()
        .context_radius(3)
        .header(&format!("{to} (on the host)"), &format!("{to} (new)"))
        .to_string();
    Change::Changed(unified)
}

/// The changes as `plan --diff` prints them.
pub fn report(changes: &[(String, Result<Vec<FileChange>, String>)]) -> String {
    let mut out = String::from("\ntemplates, against what each host has (secrets masked):\n");
    let mut unchanged = Vec::new();
    for (host, result) in changes {
        match result {
            Err(why) => out.push_str(&format!("\n== {host}: cannot read ({why})\n")),
            Ok(files) => {
                for file in files {
                    match &file.change {
                        Change::Unchanged => unchanged.push(format!("{host}:{}", file.to)),
                        Change::New(text) => {
                            out.push_str(&format!("\n== {host}: {} ({}) is new\n", file.to, file.step));
                            for line in text.lines() {
                                out.push_str(&format!("+{line}\n"));
                            }
                        }
                        Change::Changed(diff) => {
                            out.push_str(&format!("\n== {host}: {} ({}) changes\n", file.to, file.step));
                            out.push_str(diff);
                        }
                        Change::Unknown(why) => {
                            out.push_str(&format!("\n== {host}: {} ({}): {why}\n", file.to, file.step));
                        }
                    }
                }
            }
        }
    }
    if !unchanged.is_empty() {
        out.push_str(&format!("\nunchanged (the step will skip them): {}\n", unchanged.join(", ")));
    }
    crate::text::visible(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_a_unified_diff_and_an_equal_one_is_unchanged() {
        assert_eq!(compare("a\nb\n", "a\nb\n", "x.conf"), Change::Unchanged);
        let Change::Changed(diff) = compare("port = 80\nworkers = 4\n", "port = 8080\nworkers = 4\n", "x.conf") else {
            panic!()
        };
        assert!(diff.contains("--- x.conf (on the host)\n+++ x.conf (new)\n"), "{diff}");
        assert!(diff.contains("-port = 80\n+port = 8080\n workers = 4\n"), "{diff}");
    }
}
