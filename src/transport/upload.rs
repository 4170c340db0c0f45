//! Pieces of the upload step shared by the transports: hashing the local file and pacing
//! progress reports.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::OutputSink;

/// Chunk size for reading and sending files.
pub const CHUNK: usize = 64 * 1024;

/// Progress is reported at most this often (and always at the end), so a fast upload does not
/// flood the event stream.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// sha256 of a local file, as lowercase hex. Runs on a blocking thread.
pub async fn sha256_file(path: &Path) -> Result<String, String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hex(&hasher.finalize()))
    })
    .await
    .map_err(|e| format!("hashing failed: {e}"))?
}

pub use crate::sys::hex;

/// A name next to `to` for writing before the atomic rename.
pub fn temporary_name(to: &str) -> String {
    format!("{to}.wavedeck-tmp-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() & 0xffff_ffff
}

/// Reports upload progress at a bounded rate.
pub struct Progress<'a> {
    sink: &'a dyn OutputSink,
    total: u64,
    sent: u64,
    last: Option<Instant>,
}

impl<'a> Progress<'a> {
    pub fn new(sink: &'a dyn OutputSink, total: u64) -> Self {
        sink.progress(0, total);
        Self { sink, total, sent: 0, last: Some(Instant::now()) }
    }

    pub fn add(&mut self, n: u64) {
        self.sent += n;
        if self.last.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
            self.sink.progress(self.sent, self.total);
            self.last = Some(Instant::now());
        }
    }

    pub fn finish(self) {
        self.sink.progress(self.sent, self.total);
    }
}
