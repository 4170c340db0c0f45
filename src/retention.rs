//! `wavedeck audit prune`: keeping the audit directory to a size, by count or age.
//!
//! Only whole sessions go (the file and its signature), and only ended ones the index holds:
//! a running or interrupted session is never touched. Each is verified first; one that is not
//! intact is kept and named, since it is evidence. The newest deploy of every environment is
//! kept whatever its age (a rollback needs it), and so is every session another carries on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{DateTime, Utc};

use crate::audit::IndexEntry;

/// Which sessions may go: beyond the newest `keep`, or older than `older_than` (either).
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    pub keep: Option<usize>,
    pub older_than: Option<chrono::Duration>,
}

/// What a prune did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub deleted: Vec<String>,
    /// Sessions that were due to go but did not verify: kept, with why.
    pub kept_not_intact: Vec<(String, String)>,
    pub kept: usize,
}

pub fn prune(dir: &Path, policy: Policy, now: DateTime<Utc>, dry_run: bool) -> Result<Pruned, String> {
    let pruning = || -> std::io::Result<Pruned> {
        let mut entries = crate::audit::read_index(dir);
        entries.sort_by(|a, b| a.session.cmp(&b.session));
        let protected = protected(&entries);
        let cutoff = policy.older_than.map(|age| now - age);
        let total = entries.len();
        let mut pruned = Pruned::default();
        let mut kept: Vec<IndexEntry> = Vec::new();
        for (i, entry) in entries.into_iter().enumerate() {
            let beyond_count = policy.keep.is_some_and(|keep| i + keep < total);
            let too_old = cutoff.is_some_and(|cutoff| {
                DateTime::parse_from_rfc3339(&entry.started).is_ok_and(|t| t.with_timezone(&Utc) < cutoff)
            });
            if !(beyond_count || too_old) || protected.contains(&entry.session) {
                kept.push(entry);
                continue;
            }
            let file = dir.join(format!("wavedeck-{}.jsonl", entry.session));
            if file.exists() {
                let verdict = crate::verify::verify(&file)?;
                let signed = crate::signature::check(&file);
                let bad_signature = matches!(signed, crate::signature::Signed::Bad { .. });
                if !verdict.intact() || bad_signature {
                    let why = verdict.problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                    let why = if bad_signature { format!("{why} (signature BAD)") } else { why };
                    pruned.kept_not_intact.push((entry.session.clone(), why));
                    kept.push(entry);
                    continue;
                }
                if !dry_run {
                    std::fs::remove_file(&file)?;
                    let _ = std::fs::remove_file(crate::signature::signature_path(&file));
                }
            }
            pruned.deleted.push(entry.session);
        }
        pruned.kept = kept.len();
        if !dry_run && !pruned.deleted.is_empty() {
            crate::audit::rewrite_index(dir, &kept)?;
        }
        Ok(pruned)
    };
    crate::audit::with_index_lock(dir, pruning).map_err(|e| format!("cannot prune {}: {e}", dir.display()))
}

/// Sessions kept whatever the policy: the newest deploy or rollback of each environment, and
/// every session some other carries on (`resumed_from`), the index's or an unindexed file's.
fn protected(entries: &[IndexEntry]) -> BTreeSet<String> {
    let mut newest: BTreeMap<(String, String), &str> = BTreeMap::new();
    for entry in entries {
        if let Some(service) = &entry.service {
            newest.insert((service.clone(), entry.env.clone()), &entry.session);
        }
    }
    let mut protected: BTreeSet<String> = newest.into_values().map(str::to_string).collect();
    protected.extend(entries.iter().filter_map(|e| e.resumed_from.clone()));
    protected
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, Record, SessionStart};
    use crate::event::{Event, WaveOutline};

    fn session(dir: &Path, env: &str, release: &str) -> String {
        let start = SessionStart::for_tests("headless", env, release);
        let mut log = AuditLog::open(dir, &start, Default::default()).unwrap();
        log.note(Record::Event(Event::DeployStarted {
            outlier_percent: crate::profile::DEFAULT_OUTLIER_PERCENT,
            service: "shop".into(),
            env: env.into(),
            release: release.into(),
            waves: vec![WaveOutline { wave: 1, hosts: vec!["a".into()], max_failures: 0 }],
            steps: vec![],
        }));
        let id = log.session_id().to_string();
        log.close("succeeded", 0).unwrap();
        // Session ids carry milliseconds: the next one must start later to sort after.
        std::thread::sleep(std::time::Duration::from_millis(2));
        id
    }

    #[test]
    fn only_whole_verified_sessions_go_and_each_environments_newest_deploy_stays() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let prod_old = session(d, "prod", "1");
        let dev: Vec<String> = (2..6).map(|r| session(d, "dev", &r.to_string())).collect();
        // Someone edited an old dev session: it is evidence, so it stays.
        let edited = d.join(format!("wavedeck-{}.jsonl", dev[0]));
        let text = std::fs::read_to_string(&edited).unwrap().replacen("\"ann\"", "\"eve\"", 1);
        std::fs::write(&edited, text).unwrap();

        let policy = Policy { keep: Some(2), older_than: None };
        let dry = prune(d, policy, Utc::now(), true).unwrap();
        assert!(d.join(format!("wavedeck-{}.jsonl", dev[1])).exists(), "a dry run deletes nothing");
        let done = prune(d, policy, Utc::now(), false).unwrap();
        assert_eq!(dry, done);
        assert_eq!(done.deleted, [dev[1].clone()], "{done:?}");
        assert_eq!(done.kept_not_intact.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(), [dev[0].clone()]);
        assert!(done.kept_not_intact[0].1.contains("edited at seq"), "{done:?}");
        // prod's only deploy is old but the newest of its environment: kept.
        assert!(d.join(format!("wavedeck-{prod_old}.jsonl")).exists());
        assert!(!d.join(format!("wavedeck-{}.jsonl", dev[1])).exists());
        let left: Vec<String> = crate::audit::read_index(d).into_iter().map(|e| e.session).collect();
        assert_eq!(left, [prod_old, dev[0].clone(), dev[2].clone(), dev[3].clone()]);
    }
}
