//! A persistent remote shell per host that runs the host's steps as its children.
//!
//! A step on its own channel costs the host an sshd session, a login shell and `sh -s` before
//! the step's first command; most of a short step's CPU on the host is that. The agent is one
//! `sh` started once on one channel; each step then costs it a `fork` (a subshell), the same
//! thing OpenSSH one-shot scripts do with `( … )`.
//!
//! What a step sees stays as on its own channel:
//! - The script arrives on the agent's standard input, never as an argument, and runs inside the
//!   same `{ exec </dev/null … }` group ([`super::super::stdin_script`]), parsed whole before
//!   its first command, in a subshell of `sh` started in the deploy directory with
//!   `WAVEDECK_HOST`/`WAVEDECK_ENV` exported. Nothing of the agent (its variables, its function)
//!   is left for the step to see.
//! - stdout and stderr stay the channel's two streams. After the step the agent writes an end
//!   marker to each; a step's output on a stream ends where its marker is. Markers carry a
//!   per-connection nonce of 128 random bits, so output cannot end a step by accident.
//! - The exit status is the subshell's, as `sh -s` would have ended with.
//! - sshd made the agent the leader of its own process group, and its steps are in that group,
//!   so a timeout or abort kills the group as before (the agent with it: the next step starts a
//!   new one). Where sshd does not make sessions group leaders, there is no agent: steps get
//!   channels of their own, under `setsid`.
//! - A step's record (`pgid`, then `status`) is written by the agent around the subshell, as the
//!   wrapper does on a channel of its own.
//!
//! What differs: a process a step leaves running that keeps writing to the step's stdout no
//! longer holds the step open until its timeout (on a channel of its own, sshd waits for every
//! writer); what it writes later shows up in a later step's output. And `$$` in a step is the
//! agent's process id, which is the step's process group, not its shell's own id.

use super::super::stdin_script;

/// Names the agent uses for itself, unset before a step runs; a prefix no profile uses.
const OWN: &str = "__wd_g __wd_n __wd_nl __wd_s __wd_w __wd_l __wd_st __wd_f __wd_d __wd_dir";

/// The agent's program, run by `sh -c` on the agent's channel, started in the deploy directory
/// with the path it was reached by as `$1`.
/// It defines its functions (with the caller's `functions`, named `extra_names`), reads the
/// nonce, announces its process id, then loops: a step's script up to `<nonce>.s`, the code that
/// runs it up to `<nonce>.w`; changes into the deploy directory again, by the path it was started
/// with (a step may have pointed a symlink on that path elsewhere, or replaced the directory, and
/// a step on a channel of its own would `cd` there afresh too); runs it; writes the end markers.
/// End of input ends it.
///
/// What the agent does around a step is in functions here because this text is an argument,
/// parsed at once, while what comes on stdin is read a byte at a time (a shell must not read
/// past a line): a request only names a function.
pub fn program(functions: &str, extra_names: &str) -> String {
    // One line, so that `ps` on the host shows it whole; the newline each script line gets back
    // is `$(printf)`'s, kept from being stripped by the dot after it.
    format!(
        "__wd_dir=${{1:-$PWD}}; IFS= read -r __wd_n || exit 0; __wd_nl=$(printf '\\n.'); __wd_nl=${{__wd_nl%.}}; \
         __wd_run() {{ eval \"unset -f __wd_run __wd_go __wd_rec {extra_names}; unset {OWN}; $__wd_s\"; }}; \
         __wd_go() {{ ( __wd_run ); __wd_st=$?; }}; \
         __wd_rec() {{ __wd_f=$1; __wd_d=${{__wd_f%/*}}; \
         if {{ [ -d \"$__wd_d\" ] || mkdir -p \"$__wd_d\"; }} && echo \"pgid $$\" > \"$__wd_f\"; then \
         ( __wd_run ); __wd_st=$?; echo \"status $__wd_st\" >> \"$__wd_f\"; else __wd_st=125; fi; }}; \
         {functions} \
         printf '%s:pid:%s\\n' \"$__wd_n\" \"$$\"; \
         while :; do __wd_s=; __wd_w=; \
         while :; do IFS= read -r __wd_l || exit 0; [ \"$__wd_l\" = \"$__wd_n.s\" ] && break; __wd_s=\"$__wd_s$__wd_l$__wd_nl\"; done; \
         while :; do IFS= read -r __wd_l || exit 0; [ \"$__wd_l\" = \"$__wd_n.w\" ] && break; __wd_w=\"$__wd_w$__wd_l$__wd_nl\"; done; \
         if cd -- \"$__wd_dir\"; then __wd_st=0; eval \"$__wd_w\"; else __wd_st=1; fi; \
         printf '%s:end:%s\\n' \"$__wd_n\" \"$__wd_st\"; printf '%s:end\\n' \"$__wd_n\" >&2; \
         done"
    )
}

/// What the agent is sent for one step: the script, then the call that runs it in a subshell
/// (with its record around it when it has one) and leaves its status in `__wd_st`.
///
/// `record` and `sweep` are relative to the deploy directory and of safe characters only (the
/// caller makes sure), as on a channel of its own.
pub fn request(nonce: &str, command: &str, record: Option<&str>, sweep: &str) -> String {
    let run = match record {
        Some(file) => format!("{sweep}__wd_rec {file}"),
        None => format!("{sweep}__wd_go"),
    };
    format!("{script}{nonce}.s\n{run}\n{nonce}.w\n", script = stdin_script(command))
}

/// A request with no step script: `run` is the agent's own code (an upload).
pub fn raw_request(nonce: &str, run: &str) -> String {
    format!("{nonce}.s\n{run}\n{nonce}.w\n")
}

/// 128 random bits as hex: what marks the agent's own lines in its output.
pub fn nonce() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        // No /dev/urandom: the standard library's per-process random keys, hashed.
        use std::hash::{BuildHasher, Hasher};
        for half in bytes.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
            );
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("WDK{hex}")
}

/// A line of the agent's own in one of its output streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// The agent is running, with this process id (its process group's).
    Pid(u32),
    /// The step has ended: with this exit status on stdout; on stderr, no status.
    End(Option<i32>),
}

/// What [`MarkerScan::feed`] finds in a stream: the step's bytes, and the agent's markers.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    Output(std::borrow::Cow<'a, [u8]>),
    Marker(Marker),
}

/// Longest marker after its nonce (`:pid:4294967295`): more without a newline is not a marker.
const MARKER_TAIL: usize = 24;

/// Finds the agent's markers in one of its streams, wherever they fall: a marker may arrive
/// split over two reads, and after a step's last line that had no newline.
pub struct MarkerScan {
    nonce: Vec<u8>,
    /// The end of the last read that may be the start of a marker.
    held: Vec<u8>,
}

impl MarkerScan {
    pub fn new(nonce: &str) -> MarkerScan {
        MarkerScan { nonce: nonce.as_bytes().to_vec(), held: Vec::new() }
    }

    /// Splits `data` into the step's output and the agent's markers, in order.
    pub fn feed(&mut self, data: &[u8], mut found: impl FnMut(Piece<'_>)) {
        let joined;
        let mut rest: &[u8] = if self.held.is_empty() {
            data
        } else {
            let mut held = std::mem::take(&mut self.held);
            held.extend_from_slice(data);
            joined = held;
            &joined
        };
        loop {
            match find(rest, &self.nonce) {
                Some(at) => {
                    if at > 0 {
                        found(Piece::Output(rest[..at].into()));
                    }
                    let after = &rest[at + self.nonce.len()..];
                    match after.iter().position(|&b| b == b'\n') {
                        Some(end) if end <= MARKER_TAIL => {
                            match parse(&after[..end]) {
                                Some(marker) => found(Piece::Marker(marker)),
                                None => found(Piece::Output(rest[at..at + self.nonce.len() + end + 1].into())),
                            }
                            rest = &after[end + 1..];
                        }
                        None if after.len() <= MARKER_TAIL => {
                            self.held = rest[at..].to_vec();
                            return;
                        }
                        // The nonce with no marker after it: it is output.
                        _ => {
                            found(Piece::Output(rest[at..at + self.nonce.len()].into()));
                            rest = after;
                        }
                    }
                }
                None => {
                    // Keep back the longest tail that could begin the nonce.
                    let keep = (1..self.nonce.len().min(rest.len() + 1))
                        .rev()
                        .find(|&n| rest.ends_with(&self.nonce[..n]))
                        .unwrap_or(0);
                    let (out, tail) = rest.split_at(rest.len() - keep);
                    if !out.is_empty() {
                        found(Piece::Output(out.into()));
                    }
                    self.held = tail.to_vec();
                    return;
                }
            }
        }
    }

    /// Bytes held back in case they began a marker, given up as output (the stream ended).
    pub fn finish(&mut self, mut found: impl FnMut(Piece<'_>)) {
        if !self.held.is_empty() {
            found(Piece::Output(std::mem::take(&mut self.held).into()));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse(tail: &[u8]) -> Option<Marker> {
    let text = std::str::from_utf8(tail).ok()?.strip_prefix(':')?;
    let (kind, value) = match text.split_once(':') {
        Some((kind, value)) => (kind, Some(value)),
        None => (text, None),
    };
    match (kind, value) {
        ("pid", Some(pid)) => pid.parse().ok().map(Marker::Pid),
        ("end", Some(status)) => status.parse().ok().map(|s| Marker::End(Some(s))),
        ("end", None) => Some(Marker::End(None)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(nonce: &str, chunks: &[&[u8]]) -> (Vec<u8>, Vec<Marker>) {
        let mut scanner = MarkerScan::new(nonce);
        let (mut out, mut markers) = (Vec::new(), Vec::new());
        for chunk in chunks {
            scanner.feed(chunk, |piece| match piece {
                Piece::Output(bytes) => out.extend_from_slice(&bytes),
                Piece::Marker(m) => markers.push(m),
            });
        }
        scanner.finish(|piece| {
            if let Piece::Output(bytes) = piece {
                out.extend_from_slice(&bytes)
            }
        });
        (out, markers)
    }

    #[test]
    fn markers_are_found_wherever_a_read_cuts_them() {
        let stream = b"WDKab:pid:42\nhello\nno newline at the endWDKab:end:3\n";
        for cut in 0..stream.len() {
            let (first, second) = stream.split_at(cut);
            let (out, markers) = scan("WDKab", &[first, second]);
            assert_eq!(out, b"hello\nno newline at the end", "cut at {cut}");
            assert_eq!(markers, vec![Marker::Pid(42), Marker::End(Some(3))], "cut at {cut}");
        }
    }

    #[test]
    fn output_that_only_looks_like_a_marker_is_output() {
        let text: &[u8] = b"WDK WDKa WDKab:pid:x\nWDKab:weird:1\nWDKab";
        let (out, markers) = scan("WDKab", &[text]);
        assert_eq!(out, text);
        assert!(markers.is_empty());
        let long = [b"WDKab".as_slice(), &[b'z'; 100]].concat();
        assert_eq!(scan("WDKab", &[&long]).0, long);
    }

    #[test]
    fn the_stderr_marker_has_no_status() {
        let (out, markers) = scan("WDKab", &[b"oops\nWDKab:end\n"]);
        assert_eq!(out, b"oops\n");
        assert_eq!(markers, vec![Marker::End(None)]);
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce(), nonce());
        assert_eq!(nonce().len(), 35);
    }

    /// Runs the agent's program as the login shell leaves it (started in `dir`, with `PWD` the
    /// path it changed into) on `input`; returns its stdout with the markers taken out, the
    /// markers, and its stderr.
    fn run_agent(dir: &std::path::Path, input: &str) -> (String, Vec<Marker>, Vec<u8>) {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(program("", ""))
            .current_dir(dir)
            .env("PWD", dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let done = child.wait_with_output().unwrap();
        let (out, markers) = scan("WDKtest", &[&done.stdout]);
        (String::from_utf8(out).unwrap(), markers, done.stderr)
    }

    #[test]
    fn each_step_starts_in_the_deploy_directory_found_afresh_by_its_path() {
        let root = tempfile::tempdir().unwrap();
        for dir in ["a", "b"] {
            std::fs::create_dir(root.path().join(dir)).unwrap();
        }
        std::os::unix::fs::symlink("a", root.path().join("cur")).unwrap();
        let n = "WDKtest";
        let input = format!("{n}\n")
            + &request(n, "pwd -P", None, "")
            + &request(n, "cd .. && ln -sfn b cur.new && mv -T cur.new cur", None, "")
            + &request(n, "pwd -P", None, "");
        let (out, markers, _) = run_agent(&root.path().join("cur"), &input);
        let real = root.path().canonicalize().unwrap();
        assert_eq!(out, format!("{}\n{}\n", real.join("a").display(), real.join("b").display()));
        assert_eq!(markers.iter().filter(|m| **m == Marker::End(Some(0))).count(), 3, "{markers:?}");

        // The directory gone: the step fails as `cd` on a channel of its own would, and the
        // agent goes on.
        let input = format!("{n}\n")
            + &request(n, "cd .. && rm cur", None, "")
            + &request(n, "echo never", None, "")
            + &request(n, "echo", None, "");
        let (out, markers, _) = run_agent(&root.path().join("cur"), &input);
        assert!(!out.contains("never"), "{out}");
        assert_eq!(markers[1..], [Marker::End(Some(0)), Marker::End(Some(1)), Marker::End(Some(1))]);
    }

    /// The program and a request, run by this machine's `sh` as sshd would run them: the
    /// script's output, its status, and nothing of the agent's names left for the step.
    #[test]
    fn the_agent_runs_steps_in_subshells_and_marks_their_ends() {
        let dir = tempfile::tempdir().unwrap();
        let n = "WDKtest";
        let mut input = format!("{n}\n");
        input.push_str(&request(n, "echo out; echo err >&2; x=1; cd /; exit 7", None, ""));
        input.push_str(&request(n, "echo \"x=${x-unset} pwd=$(basename \"$PWD\") own=${__wd_s-gone}\"", None, ""));
        input.push_str(&request(n, "echo recorded", Some("rec/a/1"), "rm -rf -- rec/old; "));
        input.push_str(&request(n, "if then", None, ""));
        let (out, markers, stderr) = run_agent(dir.path(), &input);
        let name = dir.path().file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(out, format!("out\nx=unset pwd={name} own=gone\nrecorded\n"));
        assert!(matches!(markers[0], Marker::Pid(_)));
        assert_eq!(
            markers[1..],
            [Marker::End(Some(7)), Marker::End(Some(0)), Marker::End(Some(0)), Marker::End(Some(2))]
        );
        let (err, markers) = scan(n, &[&stderr]);
        assert!(String::from_utf8_lossy(&err).starts_with("err\n"), "{}", String::from_utf8_lossy(&err));
        assert_eq!(markers.len(), 4);
        let record = std::fs::read_to_string(dir.path().join("rec/a/1")).unwrap();
        assert!(record.starts_with("pgid ") && record.ends_with("status 0\n"), "{record}");
    }
}
