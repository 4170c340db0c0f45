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

/// Copies the first `size` bytes of the file at `from` to `to`, a chunk at a time, with progress
/// events; each write waits for `to` to take it (a channel's window: the host's pace, not this
/// machine's memory). A file that turns out shorter is an error; what a longer one has past
/// `size` is left behind, and the hash check after the copy says so. The error says which side
/// failed.
pub async fn copy(
    from: &Path,
    size: u64,
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    output: &dyn OutputSink,
) -> Result<(), CopyError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut local = tokio::fs::File::open(from).await.map_err(|e| CopyError::Read(e.to_string()))?;
    let mut progress = Progress::new(output, size);
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = local.read(&mut buf[..want]).await.map_err(|e| CopyError::Read(e.to_string()))?;
        if n == 0 {
            return Err(CopyError::Read("it shrank while it was being copied".into()));
        }
        to.write_all(&buf[..n]).await.map_err(|e| CopyError::Write(e.to_string()))?;
        progress.add(n as u64);
        left -= n as u64;
    }
    to.flush().await.map_err(|e| CopyError::Write(e.to_string()))?;
    progress.finish();
    Ok(())
}

/// Which side of a [`copy`] failed, and why.
#[derive(Debug)]
pub enum CopyError {
    Read(String),
    Write(String),
}

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
