//! Secret values: read from the environment at deploy time, kept out of every output.
//!
//! A secret reaches exactly one place, the command sent to the host. Everything shown or
//! written (screen, audit log, plan, output lines) goes through [`Redactor`], which masks any
//! secret value wherever it appears, including in what a command echoes back.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use crate::profile::Profile;

pub const MASK: &str = "******";

/// Shortest line of a multi-line secret masked on its own.
const MIN_SECRET_LINE: usize = 8;

/// The environment variable holding secret `name` while a step runs.
pub fn env_var_name(name: &str) -> String {
    format!("WAVEDECK_SECRET_{}", name.to_ascii_uppercase())
}

/// Resolved secret values by name.
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.values.keys()).finish()
    }
}

impl Secrets {
    /// Reads every secret the profile declares from the process environment.
    pub fn from_env(profile: &Profile) -> Result<Secrets, String> {
        Self::from_lookup(profile, |var| std::env::var(var).ok())
    }

    /// Resolves secrets through `lookup` (the environment, or a test's map); names every
    /// missing one at once.
    pub fn from_lookup(profile: &Profile, lookup: impl Fn(&str) -> Option<String>) -> Result<Secrets, String> {
        let mut values = BTreeMap::new();
        let mut missing = Vec::new();
        for (name, secret) in &profile.secrets {
            match lookup(&secret.env_var) {
                Some(v) if !v.is_empty() => {
                    values.insert(name.clone(), v);
                }
                _ => missing.push(format!("`{name}` (from ${})", secret.env_var)),
            }
        }
        if missing.is_empty() {
            Ok(Secrets { values })
        } else {
            Err(format!("secrets not set in the environment: {}", missing.join(", ")))
        }
    }

    /// Secrets given directly, for tests.
    #[cfg(test)]
    pub(crate) fn of(pairs: &[(&str, &str)]) -> Secrets {
        Secrets { values: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    /// Placeholder values for showing a plan without needing the secrets.
    pub fn masked(profile: &Profile) -> Secrets {
        Secrets { values: profile.secrets.keys().map(|k| (k.clone(), MASK.to_string())).collect() }
    }

    pub fn values(&self) -> impl Iterator<Item = (&String, &String)> {
        self.values.iter()
    }

    /// Each secret as the environment variable a step reads it from (`WAVEDECK_SECRET_<NAME>`),
    /// with its value.
    pub fn env_vars(&self) -> impl Iterator<Item = (String, &String)> {
        self.values.iter().map(|(name, value)| (env_var_name(name), value))
    }

    pub fn redactor(&self) -> Redactor {
        let mut needles: Vec<String> = Vec::new();
        for value in self.values.values().filter(|v| v.as_str() != MASK) {
            needles.push(value.clone());
            // Output is masked line by line, so a multi-line secret (a PEM key) is also masked
            // one line at a time; lines too short to be secret on their own are left alone.
            if value.contains('\n') {
                needles.extend(value.lines().map(str::trim).filter(|l| l.len() >= MIN_SECRET_LINE).map(str::to_string));
            }
        }
        // Longest first so a secret containing another is masked whole.
        needles.sort_by_key(|v| std::cmp::Reverse(v.len()));
        needles.dedup();
        Redactor { needles }
    }
}

/// Masks secret values in text.
#[derive(Clone, Default)]
pub struct Redactor {
    needles: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.needles.len())
    }
}

impl Redactor {
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if !self.needles.iter().any(|n| text.contains(n.as_str())) {
            return Cow::Borrowed(text);
        }
        let mut out = text.to_string();
        for n in &self.needles {
            out = out.replace(n.as_str(), MASK);
        }
        Cow::Owned(out)
    }

    /// Where `text`, the start of a longer line still arriving, can be cut so that no secret
    /// is split: everything before the cut can be masked and let go, and what is after it (at
    /// most the longest secret's length) must wait for the rest of the line.
    pub fn safe_cut(&self, text: &str) -> usize {
        let longest = self.needles.first().map_or(0, String::len);
        let mut cut = text.len().saturating_sub(longest.saturating_sub(1));
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        // A secret that starts before the cut and ends after it goes out whole with what is
        // before; repeat, as moving the cut may make it cross another.
        loop {
            let crossing = self
                .needles
                .iter()
                .flat_map(|n| text.match_indices(n.as_str()))
                .filter(|(at, found)| *at < cut && at + found.len() > cut)
                .map(|(at, found)| at + found.len())
                .max();
            match crossing {
                Some(end) => cut = end,
                None => return cut,
            }
        }
    }
}

/// A string that must not be printed: `Debug` shows nothing of it, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive(pub String);

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sensitive(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence_longest_first() {
        let s =
            Secrets { values: BTreeMap::from([("a".into(), "hunter2".into()), ("b".into(), "hunter2-long".into())]) };
        let r = s.redactor();
        assert_eq!(r.redact("x hunter2-long y hunter2"), format!("x {MASK} y {MASK}"));
        assert!(matches!(r.redact("clean"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_cut_never_splits_a_secret() {
        let s = Secrets { values: BTreeMap::from([("t".into(), "tok-4711".into())]) };
        let r = s.redactor();
        // The tail that waits is shorter than the secret, so a secret starting there is whole
        // when the rest of the line arrives.
        assert_eq!(r.safe_cut("0123456789"), 3);
        // A secret across the natural cut goes out whole with the text before it.
        assert_eq!(r.safe_cut("0123tok-4711ab"), 12);
        assert_eq!(Redactor::default().safe_cut("abc"), 3);
    }

    #[test]
    fn each_line_of_a_multi_line_secret_is_masked() {
        let pem = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nabc\n-----END KEY-----";
        let s = Secrets { values: BTreeMap::from([("k".into(), pem.into())]) };
        let r = s.redactor();
        assert_eq!(r.redact("  MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"), format!("  {MASK}"));
        assert_eq!(r.redact(pem), MASK);
        assert_eq!(r.redact("abc"), "abc", "lines too short to be secret alone stay");
    }
}
