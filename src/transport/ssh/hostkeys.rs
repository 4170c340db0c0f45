//! Host key verification against known_hosts, with OpenSSH's meanings: a matching key is
//! trusted; a different key for a known host is refused (never overridable from here); an
//! unknown host is refused under `strict` and recorded under `accept-new`.
//!
//! The files are read the way OpenSSH's `sshd(8)` describes them, and every doubt fails closed:
//! a file that exists but cannot be read refuses the connection; a line that cannot be parsed is
//! skipped without hiding the others (bytes that are not UTF-8, tabs between fields, a
//! malformed line for the same host); host patterns honour `*`, `?` and `!negation`; `@revoked`
//! refuses its key under any policy. `@cert-authority` lines name the authorities whose host
//! certificates are trusted for the hosts they match: a host certificate is accepted when such
//! an authority signed it, it is a host certificate, it names the host among its principals, and
//! it is valid now; a certificate from no trusted authority is judged by its plain key, as any
//! key. A known key of another type counts as *changed*: a host that is in the file with some
//! key is not unknown.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hmac::{KeyInit, Mac};
use russh::client;
use russh::keys::{HashAlg, PublicKey};

use super::endpoint::expand_home;
use crate::profile::HostKeyPolicy;
use crate::transport::TransportError;

/// The russh client handler: its only job is deciding whether to trust the server's key.
pub struct Verifier {
    /// The name the key is recorded under (ssh_config HostName, else the address).
    pub host: String,
    pub port: u16,
    /// known_hosts files, in the order checked.
    pub files: Vec<PathBuf>,
    pub policy: HostKeyPolicy,
    /// Why the key was refused, for the caller to report once the handshake has failed.
    pub refusal: Arc<Mutex<Option<TransportError>>>,
}

impl Verifier {
    /// The name the host is looked up by: `host`, or `[host]:port` off port 22.
    fn shown(&self) -> String {
        if self.port == 22 { self.host.clone() } else { format!("[{}]:{}", self.host, self.port) }
    }

    /// Some `@cert-authority` line covers this host: the client then asks for a host
    /// certificate (as OpenSSH does), which only such a line can vouch for.
    pub fn trusts_an_authority(&self) -> bool {
        authorities(&self.files, &self.shown()).is_ok_and(|(cas, _)| !cas.is_empty())
    }

    /// Decides about a host certificate; returns whether to trust it.
    pub fn verify_certificate(&self, cert: &russh::keys::Certificate) -> bool {
        use russh::keys::ssh_key::certificate::CertType;
        let shown = self.shown();
        let (cas, revoked) = match authorities(&self.files, &shown) {
            Ok(found) => found,
            Err(e) => return self.refuse(TransportError::Config(e)),
        };
        let ca_key = cert.signature_key();
        let plain = PublicKey::new(cert.public_key().clone(), "");
        if revoked.iter().any(|r| r.key_data() == ca_key || r.key_data() == plain.key_data()) {
            return self.refuse(TransportError::HostKeyChanged(format!(
                "the host certificate of {shown} is signed by, or is for, a key that is REVOKED in known_hosts. \
                 Refusing to connect."
            )));
        }
        let Some((ca, place)) = cas.iter().find(|(ca, _)| ca.key_data() == ca_key) else {
            // No authority of ours signed it: its key is judged like any host key.
            return self.verify(&plain);
        };
        let fingerprint = ca.fingerprint(HashAlg::Sha256);
        let why = if cert.cert_type() != CertType::Host {
            Some("it is a user certificate, not a host certificate".to_string())
        } else if !cert.valid_principals().iter().any(|p| p.eq_ignore_ascii_case(&self.host)) {
            Some(format!("it names {:?}, not {}", cert.valid_principals(), self.host))
        } else {
            cert.validate([&fingerprint]).err().map(|e| format!("it does not check out: {e}"))
        };
        match why {
            None => true,
            Some(why) => self.refuse(TransportError::HostKeyUnknown(format!(
                "the host certificate of {shown} is signed by the authority trusted at {place} ({fingerprint}), \
                 but {why}. Refusing to connect."
            ))),
        }
    }

    pub fn new(host: &str, port: u16, known_hosts: &[PathBuf], policy: HostKeyPolicy) -> Self {
        let mut files = vec![expand_home(std::path::Path::new("~/.ssh/known_hosts"))];
        files.extend(known_hosts.iter().map(|p| expand_home(p)));
        Self { host: host.to_string(), port, files, policy, refusal: Arc::new(Mutex::new(None)) }
    }

    fn refuse(&self, error: TransportError) -> bool {
        if let Ok(mut slot) = self.refusal.lock() {
            *slot = Some(error);
        }
        false
    }

    /// Decides about `key`; returns whether to trust it.
    pub fn verify(&self, key: &PublicKey) -> bool {
        let shown = self.shown();
        let fingerprint = key.fingerprint(HashAlg::Sha256);
        let algorithm = key.algorithm().as_str().to_string();
        match lookup(&self.files, &shown, key) {
            Err(e) => return self.refuse(TransportError::Config(e)),
            Ok(Known::Trusted) => return true,
            Ok(Known::Revoked(place)) => {
                return self.refuse(TransportError::HostKeyChanged(format!(
                    "the host key of {shown} ({algorithm} {fingerprint}) is REVOKED in {place}. Refusing to connect."
                )));
            }
            Ok(Known::Changed(place)) => {
                return self.refuse(TransportError::HostKeyChanged(format!(
                    "HOST KEY CHANGED for {shown}: it now presents {algorithm} {fingerprint}, which does not match \
                     {place}. This may be an attack (or a reinstalled host): verify the new key out of band \
                     before removing the old line. Refusing to connect."
                )));
            }
            Ok(Known::Unknown) => {}
        }
        match self.policy {
            HostKeyPolicy::AcceptNew => {
                let target = self.files.get(1).or(self.files.first()).cloned();
                match target.map(|t| {
                    russh::keys::known_hosts::learn_known_hosts_path(&self.host, self.port, key, &t).map(|_| t)
                }) {
                    Some(Ok(_)) => true,
                    Some(Err(e)) => self.refuse(TransportError::Config(format!(
                        "cannot record the host key of {shown} ({algorithm} {fingerprint}): {e}"
                    ))),
                    None => self.refuse(TransportError::Config("no known_hosts file to record keys in".into())),
                }
            }
            HostKeyPolicy::Strict => self.refuse(TransportError::HostKeyUnknown(format!(
                "unknown host key for {shown}: {algorithm} {fingerprint}. Check it with the host's owner, then add it \
                 (e.g. `ssh-keyscan -p {} {} >> ~/.ssh/known_hosts`), or set host_key_policy = \"accept-new\" for this \
                 environment.",
                self.port, self.host
            ))),
        }
    }
}

/// What the known_hosts files say of a host and the key it presented.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Known {
    Trusted,
    /// `@revoked` for this key, at `file:line`.
    Revoked(String),
    /// The host is listed with another key, at `file:line`.
    Changed(String),
    Unknown,
}

/// Looks `name` (`host`, or `[host]:port` off port 22) up in every file; revocation anywhere
/// wins, then a matching key, then any other key for the host.
fn lookup(files: &[PathBuf], name: &str, key: &PublicKey) -> Result<Known, String> {
    let mut trusted = false;
    let mut changed = None;
    for (entry, place) in entries(files)? {
        if !entry.matches(name) {
            continue;
        }
        let same = entry.key.key_data() == key.key_data();
        match entry.marker {
            Some(Marker::Revoked) if same => return Ok(Known::Revoked(place)),
            Some(_) => {}
            None if same => trusted = true,
            None => {
                changed.get_or_insert(place);
            }
        }
    }
    Ok(match (trusted, changed) {
        (true, _) => Known::Trusted,
        (false, Some(place)) => Known::Changed(place),
        (false, None) => Known::Unknown,
    })
}

/// Every entry of the files that parses, with where it is (`file:line`). A missing file has none;
/// one that exists but cannot be read is an error (refusing to guess).
fn entries(files: &[PathBuf]) -> Result<Vec<(Entry, String)>, String> {
    let mut out = Vec::new();
    for file in files {
        let bytes = match std::fs::read(file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read known_hosts file {}: {e}; refusing to guess", file.display())),
        };
        for (number, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            if let Some(entry) = Entry::parse(&String::from_utf8_lossy(raw)) {
                out.push((entry, format!("{}:{}", file.display(), number + 1)));
            }
        }
    }
    Ok(out)
}

/// Authorities trusted for a host, each with where it is written (`file:line`).
type Authorities = Vec<(PublicKey, String)>;

/// The `@cert-authority` keys whose patterns match `name`, and every `@revoked` key of the files.
fn authorities(files: &[PathBuf], name: &str) -> Result<(Authorities, Vec<PublicKey>), String> {
    let mut cas = Vec::new();
    let mut revoked = Vec::new();
    for (entry, place) in entries(files)? {
        match entry.marker {
            Some(Marker::Revoked) => revoked.push(entry.key),
            Some(Marker::CertAuthority) if entry.matches(name) => cas.push((entry.key, place)),
            _ => {}
        }
    }
    Ok((cas, revoked))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Revoked,
    CertAuthority,
}

/// One known_hosts line: `[@marker] patterns keytype base64 [comment]`.
struct Entry {
    marker: Option<Marker>,
    patterns: String,
    key: PublicKey,
}

impl Entry {
    /// The line's entry, or `None` for a comment, a blank or a line that does not parse (which
    /// OpenSSH skips too).
    fn parse(line: &str) -> Option<Entry> {
        let mut fields = line.split_whitespace();
        let mut first = fields.next()?;
        if first.starts_with('#') {
            return None;
        }
        let marker = match first {
            "@revoked" => Some(Marker::Revoked),
            "@cert-authority" => Some(Marker::CertAuthority),
            m if m.starts_with('@') => return None,
            _ => None,
        };
        if marker.is_some() {
            first = fields.next()?;
        }
        let (kind, data) = (fields.next()?, fields.next()?);
        let key = PublicKey::from_openssh(&format!("{kind} {data}")).ok()?;
        Some(Entry { marker, patterns: first.to_string(), key })
    }

    /// Whether `name` matches the host patterns: a hashed name (`|1|salt|hash`), or a list
    /// where a matching `!pattern` excludes the host whatever else matches.
    fn matches(&self, name: &str) -> bool {
        if let Some(hashed) = self.patterns.strip_prefix("|1|") {
            return hashed_matches(hashed, name);
        }
        let name = name.to_ascii_lowercase();
        let mut matched = false;
        for pattern in self.patterns.split(',') {
            let (negated, pattern) = match pattern.strip_prefix('!') {
                Some(p) => (true, p),
                None => (false, pattern),
            };
            if wildcard(&pattern.to_ascii_lowercase(), &name) {
                if negated {
                    return false;
                }
                matched = true;
            }
        }
        matched
    }
}

/// `|1|salt|hash`: HMAC-SHA1 of the name keyed with the salt, both base64.
fn hashed_matches(hashed: &str, name: &str) -> bool {
    use russh::keys::ssh_key::known_hosts::HostPatterns;
    let Ok(HostPatterns::HashedName { salt, hash }) = format!("|1|{hashed}").parse::<HostPatterns>() else {
        return false;
    };
    let Ok(mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt) else { return false };
    mac.chain_update(name.as_bytes()).verify_slice(&hash).is_ok()
}

/// OpenSSH's glob: `*` is any run of characters, `?` any one.
fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match server_key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => Ok(self.verify(key)),
            russh::keys::PublicKeyOrCertificate::Certificate(cert) => Ok(self.verify_certificate(cert)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> PublicKey {
        let private =
            russh::keys::PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]));
        private.public_key().clone()
    }

    /// An ECDSA public key (made with ssh-keygen), where the host's own is ed25519.
    fn key_of_other_type() -> &'static str {
        "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBJ8G1c2jeNLzzUlIl/hfovNjwf2/\
         jibQhT2LbCsX7Ok7kVMJJ0A2awBSHlx0+iFiIaUnczIEO+ZnCj3mmxnlvNI="
    }

    #[test]
    fn known_unknown_and_changed_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        let entry = format!("[web]:2222 {}\n", key(1).to_openssh().unwrap());
        std::fs::write(&file, entry).unwrap();
        let v = Verifier::new("web", 2222, std::slice::from_ref(&file), HostKeyPolicy::Strict);
        assert!(v.verify(&key(1)));
        assert!(!v.verify(&key(2)));
        let refusal = v.refusal.lock().unwrap().clone().unwrap();
        assert_eq!(refusal.kind(), "host_key_changed");
        assert!(refusal.to_string().contains(&format!("{}:1", file.display())), "{refusal}");

        let other = Verifier::new("db", 2222, std::slice::from_ref(&file), HostKeyPolicy::Strict);
        assert!(!other.verify(&key(3)));
        let refusal = other.refusal.lock().unwrap().clone().unwrap();
        assert_eq!(refusal.kind(), "host_key_unknown");
        assert!(refusal.to_string().contains("SHA256:"), "{refusal}");
    }

    /// The verdict for host `web` on port 2222 presenting `key(1)`, with `known` as its file.
    fn verdict(known: &[u8], policy: HostKeyPolicy) -> (bool, Option<String>) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, known).unwrap();
        let v = Verifier::new("web", 2222, std::slice::from_ref(&file), policy);
        let trusted = v.verify(&key(1));
        let refusal = v.refusal.lock().unwrap().clone().map(|r| r.kind().to_string());
        (trusted, refusal)
    }

    #[test]
    fn a_known_host_is_never_taken_for_unknown_however_odd_its_file() {
        let old = key(9).to_openssh().unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "a non-UTF-8 byte",
                [b"# \xff\xfe caf\xe9\n".to_vec(), format!("[web]:2222 {old}\n").into_bytes()].concat(),
            ),
            (
                "a malformed line for the host",
                format!("[web]:2222 ssh-ed25519 not-base64!!\n[web]:2222 {old}\n").into_bytes(),
            ),
            ("tabs between fields", format!("[web]:2222\t{}\n", old.replacen(' ', "\t", 1)).into_bytes()),
            ("a wildcard pattern", format!("[w?b]:*,[db]:2222 {old}\n").into_bytes()),
            ("a key of another type", format!("[web]:2222 {}\n", key_of_other_type()).into_bytes()),
        ];
        for (what, known) in cases {
            let (trusted, refusal) = verdict(&known, HostKeyPolicy::AcceptNew);
            assert!(!trusted, "{what}: a changed key was accepted");
            assert_eq!(refusal.as_deref(), Some("host_key_changed"), "{what}");
        }
    }

    #[test]
    fn revoked_keys_negations_and_unreadable_files() {
        let mine = key(1).to_openssh().unwrap();
        let revoked = format!("[web]:2222 {mine}\n@revoked [web]:2222 {mine}\n");
        assert_eq!(verdict(revoked.as_bytes(), HostKeyPolicy::Strict), (false, Some("host_key_changed".into())));
        // A negated pattern takes the host out of a line that would otherwise match it.
        let negated = format!("[*]:2222,![web]:2222 {}\n", key(9).to_openssh().unwrap());
        assert_eq!(verdict(negated.as_bytes(), HostKeyPolicy::Strict), (false, Some("host_key_unknown".into())));
        assert_eq!(verdict(format!("[web]:2222 {mine}\n").as_bytes(), HostKeyPolicy::Strict), (true, None));
        // A known_hosts path that exists but cannot be read as a file fails closed.
        let dir = tempfile::tempdir().unwrap();
        let v = Verifier::new("web", 2222, &[dir.path().to_path_buf()], HostKeyPolicy::AcceptNew);
        assert!(!v.verify(&key(1)));
        assert_eq!(v.refusal.lock().unwrap().clone().unwrap().kind(), "config");
    }

    #[test]
    fn hashed_names_match_only_their_host() {
        // `ssh-keygen -H` of "[web]:2222" with this salt.
        let salt = [7u8; 20];
        let mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt).unwrap().chain_update(b"[web]:2222").finalize();
        use russh::keys::ssh_key::known_hosts::HostPatterns;
        let hashed = HostPatterns::HashedName { salt: salt.to_vec(), hash: mac.into_bytes().into() }.to_string();
        let line = format!("{hashed} {}\n", key(1).to_openssh().unwrap());
        assert_eq!(verdict(line.as_bytes(), HostKeyPolicy::Strict), (true, None));
        let entry = Entry::parse(line.trim()).unwrap();
        assert!(!entry.matches("[db]:2222"));
    }

    #[test]
    fn accept_new_records_the_key_and_then_trusts_only_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        let v = Verifier::new("new-host", 22, std::slice::from_ref(&file), HostKeyPolicy::AcceptNew);
        assert!(v.verify(&key(4)));
        assert!(std::fs::read_to_string(&file).unwrap().trim_start().starts_with("new-host "));
        assert!(v.verify(&key(4)));
        assert!(!v.verify(&key(5)), "a changed key is refused even under accept-new");
    }
}
