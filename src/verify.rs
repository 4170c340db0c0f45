//! `wavedeck audit verify`: whether an audit file is the one wavedeck wrote.
//!
//! Every line carries `prev`, the SHA-256 of the line before it (the first: of its session id),
//! and the session's last line carries the count of lines before it and the SHA-256 of all of
//! them. Editing a byte breaks the next line's `prev`; deleting, swapping or adding lines breaks
//! the order of `seq`; cutting the end leaves no session end. A file is read line by line, so a
//! large one is never held whole.

use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::Value;
use sha2::Digest as _;

use crate::audit::{chain_start, sha256_hex};

/// What is wrong with a file, at the first place it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The line with this `seq` is not what was written (its bytes, or the `prev` after it).
    Edited { seq: u64 },
    /// Lines are out of order: `seq` `found` stands where `expected` should.
    Reordered { expected: u64, found: u64 },
    /// Lines with these `seq`s are gone.
    Missing { from: u64, to: u64 },
    /// The file ends after this `seq` without a session end (cut off, or its writer died).
    Truncated { after: u64 },
    /// The session end's count or hash of the lines before it does not match them.
    EndMismatch,
    /// Written before wavedeck chained its audit lines: nothing to check it against.
    Unchained,
    /// Not an audit file (a line that is not a record).
    Unreadable { line: u64, why: String },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Edited { seq } => write!(f, "edited at seq {seq}"),
            Problem::Reordered { expected, found } => {
                write!(f, "reordered at seq {expected} (seq {found} stands there)")
            }
            Problem::Missing { from, to } if from == to => write!(f, "seq {from} is missing (deleted)"),
            Problem::Missing { from, to } => write!(f, "seq {from} to {to} are missing (deleted)"),
            Problem::Truncated { after } => write!(f, "truncated after seq {after} (no session end)"),
            Problem::EndMismatch => write!(f, "its session end does not match the lines before it"),
            Problem::Unchained => write!(f, "written without a hash chain (an older wavedeck): cannot be verified"),
            Problem::Unreadable { line, why } => write!(f, "line {line} is not an audit record: {why}"),
        }
    }
}

/// A file's verdict: the records it holds, and its problems (none: intact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub records: u64,
    pub session: Option<String>,
    /// The interrupted session this one carries on (`wavedeck resume`), as its first line says.
    pub resumed_from: Option<String>,
    pub problems: Vec<Problem>,
}

impl Verdict {
    pub fn intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the audit file at `path` line by line.
pub fn verify(path: &Path) -> std::io::Result<Verdict> {
    let mut reader = BufReader::new(std::fs::File::open(path)?);
    let mut verdict = Verdict { records: 0, session: None, resumed_from: None, problems: Vec::new() };
    let mut prev_hash: Option<String> = None;
    let mut chain = sha2::Sha256::new();
    let mut expected_seq = 1u64;
    let mut last_seq = 0u64;
    let mut ended = false;
    let mut raw = Vec::new();
    let mut number = 0u64;
    loop {
        raw.clear();
        if reader.read_until(b'\n', &mut raw)? == 0 {
            break;
        }
        number += 1;
        let complete = raw.last() == Some(&b'\n');
        let bytes = if complete { &raw[..raw.len() - 1] } else { &raw[..] };
        if bytes.is_empty() {
            continue;
        }
        let value: Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            // A torn last line is a cut-off file; a broken line before others is an edit.
            Err(_) if !complete => break,
            Err(e) => {
                let problem = if verdict.records == 0 {
                    Problem::Unreadable { line: number, why: e.to_string() }
                } else {
                    Problem::Edited { seq: expected_seq }
                };
                verdict.problems.push(problem);
                return Ok(verdict);
            }
        };
        let seq = value["seq"].as_u64();
        let session = value["session"].as_str().map(str::to_string);
        let Some(seq) = seq.filter(|_| session.is_some()) else {
            verdict.problems.push(Problem::Unreadable { line: number, why: "no seq or session".into() });
            return Ok(verdict);
        };
        if verdict.session.is_none() {
            verdict.session = session.clone();
            verdict.resumed_from = value["resumed_from"].as_str().map(str::to_string);
        }
        let Some(prev) = value["prev"].as_str() else {
            verdict.problems.push(Problem::Unchained);
            return Ok(verdict);
        };
        let expected_prev = match &prev_hash {
            Some(hash) => hash.clone(),
            None => sha256_hex(chain_start(verdict.session.as_deref().unwrap_or_default()).as_bytes()),
        };
        if seq != expected_seq {
            // Later in the file after all (lines swapped), or nowhere (deleted)?
            let later = seq < expected_seq || seq_appears(&mut reader, expected_seq)?;
            verdict.problems.push(if later {
                Problem::Reordered { expected: expected_seq, found: seq }
            } else {
                Problem::Missing { from: expected_seq, to: seq - 1 }
            });
            return Ok(verdict);
        }
        if prev != expected_prev {
            // This line's `prev` is not the hash of the line before: that line was changed (or,
            // for the first line, this one was).
            verdict.problems.push(Problem::Edited { seq: seq.saturating_sub(1).max(1) });
            return Ok(verdict);
        }
        if value["record"] == "session_end" {
            let records = value["records"].as_u64();
            let digest = crate::sys::hex(&chain.clone().finalize());
            if records != Some(seq - 1) || value["chain"].as_str() != Some(digest.as_str()) {
                verdict.problems.push(Problem::EndMismatch);
                return Ok(verdict);
            }
            ended = true;
        } else if ended {
            // Lines after the end were added.
            verdict.problems.push(Problem::Edited { seq });
            return Ok(verdict);
        }
        chain.update(bytes);
        chain.update(b"\n");
        prev_hash = Some(sha256_hex(bytes));
        verdict.records += 1;
        last_seq = seq;
        expected_seq = seq + 1;
    }
    if !ended && verdict.records > 0 {
        verdict.problems.push(Problem::Truncated { after: last_seq });
    }
    if verdict.records == 0 && verdict.problems.is_empty() {
        verdict.problems.push(Problem::Unreadable { line: 1, why: "the file is empty".into() });
    }
    Ok(verdict)
}

/// Whether a line with `seq` comes in the rest of the file.
fn seq_appears(reader: &mut impl BufRead, seq: u64) -> std::io::Result<bool> {
    let mut raw = Vec::new();
    loop {
        raw.clear();
        if reader.read_until(b'\n', &mut raw)? == 0 {
            return Ok(false);
        }
        if serde_json::from_slice::<Value>(&raw).is_ok_and(|v| v["seq"].as_u64() == Some(seq)) {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, Record, SessionStart};
    use crate::event::{Event, Stream};

    /// A closed session of a start, `n` output lines and an end; returns its path.
    fn session(dir: &Path, n: usize) -> std::path::PathBuf {
        let start = SessionStart::for_tests("test", "dev", "1");
        let mut log = AuditLog::open(dir, &start, Default::default()).unwrap();
        for i in 0..n {
            let line = format!("line {i}");
            log.note(Record::Event(Event::Output { host: "a".into(), step: "s".into(), stream: Stream::Stdout, line }));
        }
        let path = log.path().to_path_buf();
        log.close("succeeded", 0).unwrap();
        path
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap().lines().map(str::to_string).collect()
    }

    fn rewrite(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    }

    #[test]
    fn an_untouched_file_is_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = session(dir.path(), 5);
        let verdict = verify(&path).unwrap();
        assert!(verdict.intact(), "{verdict:?}");
        assert_eq!(verdict.records, 7, "start, 5 lines, end");
    }

    #[test]
    fn a_flipped_byte_is_an_edit_at_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = session(dir.path(), 5);
        let mut all = lines(&path);
        // seq 4 is "line 2": one character changed.
        all[3] = all[3].replace("line 2", "line 7");
        rewrite(&path, &all);
        assert_eq!(verify(&path).unwrap().problems, [Problem::Edited { seq: 4 }]);
    }

    #[test]
    fn a_deleted_line_is_missing_and_swapped_lines_are_reordered() {
        let dir = tempfile::tempdir().unwrap();
        let path = session(dir.path(), 5);
        let all = lines(&path);
        let mut deleted = all.clone();
        deleted.remove(2);
        rewrite(&path, &deleted);
        assert_eq!(verify(&path).unwrap().problems, [Problem::Missing { from: 3, to: 3 }]);
        let mut swapped = all;
        swapped.swap(2, 3);
        rewrite(&path, &swapped);
        assert_eq!(verify(&path).unwrap().problems, [Problem::Reordered { expected: 3, found: 4 }]);
    }

    #[test]
    fn a_cut_file_is_truncated_after_its_last_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = session(dir.path(), 5);
        let all = lines(&path);
        rewrite(&path, &all[..4]);
        assert_eq!(verify(&path).unwrap().problems, [Problem::Truncated { after: 4 }]);
        // Half a line at the end, as a crash mid-write leaves it.
        let mut text = all[..4].iter().map(|l| format!("{l}\n")).collect::<String>();
        text.push_str(&all[4][..10]);
        std::fs::write(&path, text).unwrap();
        assert_eq!(verify(&path).unwrap().problems, [Problem::Truncated { after: 4 }]);
    }

    #[test]
    fn a_recomputed_chain_does_not_hide_a_forged_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = session(dir.path(), 2);
        let mut all = lines(&path);
        // The end claims a different count: caught even though its own `prev` is right.
        let end = all.len() - 1;
        all[end] = all[end].replace("\"records\":3", "\"records\":9");
        rewrite(&path, &all);
        assert_eq!(verify(&path).unwrap().problems, [Problem::EndMismatch]);
    }
}
