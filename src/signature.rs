//! Signing a finished audit file with a key the operator's ssh-agent holds, in OpenSSH's own
//! signature format, so that `ssh-keygen -Y verify` checks it with nothing of wavedeck's:
//!
//! ```text
//! ssh-keygen -Y verify -f allowed_signers -I ann -n wavedeck-audit \
//!     -s wavedeck-<session>.jsonl.sig < wavedeck-<session>.jsonl
//! ```
//!
//! The key is named by `WAVEDECK_AUDIT_SIGNING_KEY` (a public key file, e.g.
//! `~/.ssh/id_ed25519.pub`). No such variable, no agent, or an agent without that key: the file
//! is not signed, which is not an error (its hash chain still stands).

use std::io::Read;
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::{HashAlg, LineEnding, PublicKey, SshSig};
use sha2::Digest as _;

/// Names the public key whose private half, in the agent, signs audit files.
pub const SIGNING_KEY_ENV: &str = "WAVEDECK_AUDIT_SIGNING_KEY";
/// The signature's namespace: what `ssh-keygen -Y verify -n` is given.
pub const NAMESPACE: &str = "wavedeck-audit";

/// Where an audit file's signature goes: beside it, `.sig` added.
pub fn signature_path(audit: &Path) -> PathBuf {
    let mut name = audit.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// SHA-512 of a file, read in pieces.
fn sha512_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha512::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_vec())
}

/// Signs the audit file at `audit` with the key `WAVEDECK_AUDIT_SIGNING_KEY` names, if the agent
/// holds it. Returns the signature's path; `Ok(None)` when signing is not set up; `Err` when it
/// is set up and failed (said to the operator, the deploy's outcome is not changed).
pub async fn sign_if_asked(audit: &Path) -> Result<Option<PathBuf>, String> {
    let Some(key_file) = std::env::var_os(SIGNING_KEY_ENV).filter(|v| !v.is_empty()) else { return Ok(None) };
    let key = russh::keys::load_public_key(&key_file)
        .map_err(|e| format!("{SIGNING_KEY_ENV}: cannot read {}: {e}", PathBuf::from(&key_file).display()))?;
    let Ok(mut agent) = russh::keys::agent::client::AgentClient::connect_env().await else { return Ok(None) };
    let held = agent.request_identities().await.map_err(|e| format!("ssh-agent: {e}"))?;
    let holds_it = held.iter().any(|id| matches!(id, russh::keys::agent::AgentIdentity::PublicKey { key: k, .. } if k.key_data() == key.key_data()));
    if !holds_it {
        return Ok(None);
    }
    let digest = sha512_file(audit).map_err(|e| format!("cannot read {}: {e}", audit.display()))?;
    let data = SshSig::signed_data_for_prehash(NAMESPACE, HashAlg::Sha512, &digest).map_err(|e| e.to_string())?;
    let signature =
        agent.sign_request_signature(&key, None, &data).await.map_err(|e| format!("ssh-agent would not sign: {e}"))?;
    let sshsig =
        SshSig::new(key.key_data().clone(), NAMESPACE, HashAlg::Sha512, signature).map_err(|e| e.to_string())?;
    let pem = sshsig.to_pem(LineEnding::LF).map_err(|e| e.to_string())?;
    let path = signature_path(audit);
    write_private(&path, pem.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(Some(path))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// What an audit file's signature says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signed {
    /// No `.sig` beside it.
    No,
    /// Good, by the key with this fingerprint.
    Good { key: String },
    /// Not a signature of this file (or not in wavedeck's namespace).
    Bad { key: String, why: String },
}

/// Checks the signature beside `audit`, if there is one. Good says the file is what the key's
/// holder signed; who that should be is for the reader to decide (the fingerprint is shown).
pub fn check(audit: &Path) -> Signed {
    let Ok(pem) = std::fs::read_to_string(signature_path(audit)) else { return Signed::No };
    let sshsig = match SshSig::from_pem(pem.trim()) {
        Ok(s) => s,
        Err(e) => return Signed::Bad { key: "?".into(), why: format!("not an SSH signature: {e}") },
    };
    let public = PublicKey::from(sshsig.public_key().clone());
    let key = public.fingerprint(HashAlg::Sha256).to_string();
    if sshsig.namespace() != NAMESPACE {
        return Signed::Bad { key, why: format!("signed for {:?}, not {NAMESPACE}", sshsig.namespace()) };
    }
    let message = match std::fs::read(audit) {
        Ok(m) => m,
        Err(e) => return Signed::Bad { key, why: e.to_string() },
    };
    match public.verify(NAMESPACE, &message, &sshsig) {
        Ok(()) => Signed::Good { key },
        Err(e) => Signed::Bad { key, why: e.to_string() },
    }
}
