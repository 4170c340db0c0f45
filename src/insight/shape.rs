//! The shape of an output line: what is left when the parts that differ from host to host by
//! nature (numbers, durations, hex ids, addresses, host names) are replaced by placeholders, so
//! that `migrated 1234 rows in 0.8s` on one host and `migrated 998 rows in 1.1s` on another are
//! the same line.

use std::collections::HashSet;

/// Characters of a line that decide its shape. Two lines alike this far are alike enough, and
/// it bounds the work and memory a 200 KiB line costs.
pub const SHAPE_CHARS: usize = 400;

/// Replaces what varies between hosts by nature with placeholders; knows the deploy's host
/// names and addresses, so that `stg-web-4 ready` and `stg-web-5 ready` are one shape.
#[derive(Debug, Clone, Default)]
pub struct Shaper {
    hosts: HashSet<String>,
}

/// Units a number may carry to make it a duration (`0.8s`, `120ms`, `1m30s`).
const DURATION_UNITS: &[&str] = &["ns", "us", "µs", "ms", "s", "sec", "secs", "m", "min", "mins", "h"];

impl Shaper {
    /// `hosts`: names and addresses of the deploy's hosts.
    pub fn new<'a>(hosts: impl IntoIterator<Item = &'a str>) -> Shaper {
        Shaper { hosts: hosts.into_iter().filter(|h| !h.is_empty()).map(str::to_ascii_lowercase).collect() }
    }

    pub fn shape(&self, line: &str) -> String {
        let mut out = String::with_capacity(line.len().min(SHAPE_CHARS));
        let mut word = String::new();
        let mut seen = 0;
        let mut escape = false;
        for c in line.chars() {
            seen += 1;
            if seen > SHAPE_CHARS {
                break;
            }
            // Terminal escapes say nothing about what happened: `ESC[…m` colours are dropped.
            if escape {
                escape = !c.is_ascii_alphabetic();
                continue;
            }
            if c == '\u{1b}' {
                escape = true;
                continue;
            }
            if is_word_char(c) {
                word.push(c);
                continue;
            }
            self.push_word(&mut out, &word);
            word.clear();
            if c.is_whitespace() || c.is_control() {
                if !out.is_empty() && !out.ends_with(' ') {
                    out.push(' ');
                }
            } else {
                out.push(c);
            }
        }
        self.push_word(&mut out, &word);
        if seen > SHAPE_CHARS {
            out.push('…');
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out
    }

    fn push_word(&self, out: &mut String, word: &str) {
        if word.is_empty() {
            return;
        }
        // A sentence's full stop is not part of the word before it.
        let (word, stop) = match word.strip_suffix('.') {
            Some(w) if !w.is_empty() => (w, "."),
            _ => (word, ""),
        };
        // An address first: a host's own address and another's are both `<ip>`.
        if is_ipv4(word) {
            out.push_str("<ip>");
        } else if self.is_host(word) {
            out.push_str("<host>");
        } else if is_hex_id(word) {
            out.push_str("<hex>");
        } else {
            numbers_replaced(out, word);
        }
        out.push_str(stop);
    }

    fn is_host(&self, word: &str) -> bool {
        if self.hosts.is_empty() || !word.bytes().any(|b| b.is_ascii_alphabetic()) {
            return false;
        }
        // Every line passes here: no copy unless the word has capitals.
        let lower;
        let word = if word.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = word.to_ascii_lowercase();
            lower.as_str()
        } else {
            word
        };
        // `web-3.example.com` for a host named `web-3`.
        self.hosts.contains(word) || word.split_once('.').is_some_and(|(first, _)| self.hosts.contains(first))
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | 'µ')
}

fn is_ipv4(word: &str) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    parts.len() == 4 && parts.iter().all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// A commit, container, request or UUID id: six or more hex digits with both a digit and a
/// letter among them (so `deadline` and `123456` are not ids), dashes allowed between them.
fn is_hex_id(word: &str) -> bool {
    let hex = word.bytes().filter(|b| *b != b'-');
    let (mut len, mut digit, mut letter) = (0, false, false);
    for b in hex {
        match b {
            b'0'..=b'9' => digit = true,
            b'a'..=b'f' | b'A'..=b'F' => letter = true,
            _ => return false,
        }
        len += 1;
    }
    len >= 6 && digit && letter && !word.starts_with('-')
}

/// Appends `word` with each number in it as `<n>`, or `<dur>` when a time unit follows it.
/// A version's dots stay inside one number (`2.4.2` is `<n>`).
fn numbers_replaced(out: &mut String, word: &str) {
    let mut rest = word;
    let mut last_was_duration = false;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        out.push_str(&rest[..start]);
        let after_start = &rest[start..];
        let mut end = 0;
        let bytes = after_start.as_bytes();
        while end < bytes.len() {
            let decimal_point = bytes[end] == b'.' && bytes.get(end + 1).is_some_and(u8::is_ascii_digit);
            if !bytes[end].is_ascii_digit() && !decimal_point {
                break;
            }
            end += 1;
        }
        let after = &after_start[end..];
        let unit = duration_unit(after);
        match unit {
            Some(unit) => {
                // `1m30s` is one duration.
                let continues = start == 0 && last_was_duration;
                if !continues {
                    out.push_str("<dur>");
                }
                rest = &after[unit..];
                last_was_duration = true;
            }
            None => {
                out.push_str("<n>");
                rest = after;
                last_was_duration = false;
            }
        }
    }
    out.push_str(rest);
}

/// The length of the time unit `after` starts with, if it is one that ends there or before
/// another number.
fn duration_unit(after: &str) -> Option<usize> {
    DURATION_UNITS
        .iter()
        .filter(|unit| after.starts_with(**unit))
        .filter(|unit| after[unit.len()..].chars().next().is_none_or(|c| c.is_ascii_digit() || c == '.' || c == '-'))
        .map(|unit| unit.len())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shaper() -> Shaper {
        Shaper::new(["stg-web-4", "stg-web-5", "10.0.3.14"])
    }

    fn same(a: &str, b: &str) {
        let s = shaper();
        assert_eq!(s.shape(a), s.shape(b), "{a:?} and {b:?} should be one shape");
    }

    fn differ(a: &str, b: &str) {
        let s = shaper();
        assert_ne!(s.shape(a), s.shape(b), "{a:?} and {b:?} should not be one shape");
    }

    #[test]
    fn a_migration_tools_counts_and_times_are_one_shape() {
        same("migrated 1234 rows in 0.8s", "migrated 998 rows in 1.1s");
        same("applied migration 0042_add_index (120ms)", "applied migration 0043_add_index (1m30s)");
        assert_eq!(shaper().shape("migrated 1234 rows in 0.8s"), "migrated <n> rows in <dur>");
        differ("migrated 1234 rows in 0.8s", "migration FAILED after 0.8s: lock timeout");
    }

    #[test]
    fn apt_lines_differ_by_package_not_by_counter() {
        same(
            "Get:1 http://deb.debian.org/debian bookworm/main amd64 libssl3 amd64 3.0.11-1 [2,016 kB]",
            "Get:7 http://deb.debian.org/debian bookworm/main amd64 libssl3 amd64 3.0.11-1 [2,016 kB]",
        );
        same("Setting up libssl3:amd64 (3.0.11-1) ...", "Setting up libssl3:amd64 (3.0.11-1) ...");
        differ("Setting up libssl3:amd64 (3.0.11-1) ...", "Setting up curl (7.88.1-10) ...");
        same("Fetched 2,016 kB in 1s (3,512 kB/s)", "Fetched 1,980 kB in 0s (3,100 kB/s)");
    }

    #[test]
    fn systemd_and_journal_lines_lose_their_pids_and_host_names() {
        same(
            "Nov 27 20:11:46 stg-web-4 systemd[1]: Started app.service - App server.",
            "Nov 27 20:11:49 stg-web-5 systemd[1]: Started app.service - App server.",
        );
        same("app[2201]: listening on 10.0.3.14:8080", "app[3120]: listening on 10.0.3.15:8080");
        assert_eq!(shaper().shape("app[2201]: listening on 10.0.3.14:8080"), "app[<n>]: listening on <ip>:<n>");
        same("stg-web-4.example.com is ready.", "stg-web-5.example.com is ready.");
    }

    #[test]
    fn a_json_loggers_lines_group_by_message_and_level() {
        same(
            r#"{"ts":"2026-11-27T20:11:46.123Z","level":"info","msg":"cache warmed","entries":5120,"took_ms":812}"#,
            r#"{"ts":"2026-11-27T20:11:47.001Z","level":"info","msg":"cache warmed","entries":4980,"took_ms":64}"#,
        );
        differ(
            r#"{"ts":"2026-11-27T20:11:46.123Z","level":"info","msg":"cache warmed"}"#,
            r#"{"ts":"2026-11-27T20:11:46.123Z","level":"warn","msg":"cache cold: backend timeout"}"#,
        );
    }

    #[test]
    fn ids_and_versions_are_placeholders_but_words_stay_words() {
        same("deployed commit 3f2a9c1d to releases/2.4.2", "deployed commit 9be0a77f to releases/2.4.2");
        same("request 550e8400-e29b-41d4-a716-446655440000 done", "request 6ba7b810-9dad-11d1-80b4-00c04fd430c8 done");
        // Hex-looking words without digits are words.
        differ("deadline exceeded", "defaced exceeded");
        assert_eq!(shaper().shape("release 2.4.2 active"), "release <n> active");
    }

    #[test]
    fn colours_spacing_and_endless_lines_do_not_make_new_shapes() {
        same("\u{1b}[32mOK\u{1b}[0m  all   good", "OK all good");
        let long = format!("{}{}", "x".repeat(SHAPE_CHARS), "tail that differs 1");
        let other = format!("{}{}", "x".repeat(SHAPE_CHARS), "another tail entirely");
        same(&long, &other);
        assert!(shaper().shape(&long).chars().count() <= SHAPE_CHARS + 1);
        assert_eq!(shaper().shape(""), "");
    }
}
