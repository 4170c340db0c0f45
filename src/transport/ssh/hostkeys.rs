//! Host key verification against known_hosts, with OpenSSH's meanings: a matching key is
//! trusted; a different key for a known host is refused (never overridable from here); an
//! unknown host is refused under `strict` and recorded under `accept-new`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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
        let shown = if self.port == 22 { self.host.clone() } else { format!("[{}]:{}", self.host, self.port) };
        let fingerprint = key.fingerprint(HashAlg::Sha256);
        let algorithm = key.algorithm().as_str().to_string();
        for file in &self.files {
            match russh::keys::check_known_hosts_path(&self.host, self.port, key, file) {
                Ok(true) => return true,
                Ok(false) => {}
                Err(russh::keys::Error::KeyChanged { line }) => {
                    return self.refuse(TransportError::HostKeyChanged(format!(
                        "HOST KEY CHANGED for {shown}: it now presents {algorithm} {fingerprint}, which does not match \
                         {}:{line}. This may be an attack (or a reinstalled host): verify the new key out of band \
                         before removing the old line. Refusing to connect.",
                        file.display()
                    )));
                }
                // An unreadable or missing file just knows nothing.
                Err(_) => {}
            }
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

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match server_key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => Ok(self.verify(key)),
            russh::keys::PublicKeyOrCertificate::Certificate(_) => Ok(self.refuse(TransportError::HostKeyUnknown(
                format!("{} presented a host certificate; wavedeck verifies plain host keys only", self.host),
            ))),
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
