//! The queue between the engine and its consumer: events out, with the output they carry
//! bounded so a slow consumer holds hosts back instead of filling memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use chrono::Utc;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::event::{Event, Stamped};

/// Output bytes that may wait in the event queue for a slow consumer (a busy screen, an audit
/// disk that cannot keep up). Past it, steps' output is no longer read until the queue drains, so
/// the host's writes wait: nothing is dropped and this machine's memory stays bounded.
pub const OUTPUT_BACKLOG_BYTES: usize = 8 * 1024 * 1024;

/// The output bytes queued between the engine and its consumer.
#[derive(Default)]
struct Backlog {
    bytes: AtomicUsize,
    drained: Notify,
    /// The consumer went away: nobody will drain, so nobody may wait.
    closed: AtomicBool,
}

/// Where events go. Sending itself never blocks (control events are few and must not wait
/// behind output); output is held back at its source instead, through [`EventSink::room`]. A
/// consumer that went away is not an error for the deploy, which must still finish.
#[derive(Clone)]
pub struct EventSink {
    sender: mpsc::UnboundedSender<Queued>,
    backlog: Arc<Backlog>,
}

/// The consumer's end of the event queue.
pub struct EventStream {
    receiver: mpsc::UnboundedReceiver<Queued>,
    backlog: Arc<Backlog>,
}

/// An event in the queue, with, for one that must be on disk before the engine acts on it, the
/// way to say it is.
struct Queued {
    stamped: Stamped,
    durable: Option<Durable>,
}

/// The consumer's promise to an event's emitter: dropping it (or calling [`Durable::done`]) lets
/// the engine go on. A consumer that keeps no record drops it at once.
pub struct Durable(oneshot::Sender<()>);

impl Durable {
    /// A promise for a record of one's own (an operator's command) and its fulfilment.
    pub fn pair() -> (Durable, oneshot::Receiver<()>) {
        let (done, durable) = oneshot::channel();
        (Durable(done), durable)
    }

    pub fn done(self) {
        let _ = self.0.send(());
    }
}

/// A new event queue: the engine's end and the consumer's.
pub fn event_channel() -> (EventSink, EventStream) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let backlog = Arc::new(Backlog::default());
    (EventSink { sender, backlog: backlog.clone() }, EventStream { receiver, backlog })
}

fn output_bytes(event: &Event) -> usize {
    match event {
        Event::Output { line, .. } => line.len(),
        _ => 0,
    }
}

impl EventSink {
    pub(super) fn emit(&self, event: Event) {
        self.forward(Stamped { at: Utc::now(), event });
    }

    /// Emits an event the consumer must make durable before the engine acts on it (a step's
    /// start: write-ahead); the returned receiver completes when it is, or when the consumer
    /// does not keep records.
    pub(super) fn emit_durable(&self, event: Event) -> oneshot::Receiver<()> {
        let (done, durable) = oneshot::channel();
        self.send(Queued { stamped: Stamped { at: Utc::now(), event }, durable: Some(Durable(done)) });
        durable
    }

    /// Passes on an event read from another queue, keeping its time.
    pub fn forward(&self, stamped: Stamped) {
        self.send(Queued { stamped, durable: None });
    }

    fn send(&self, queued: Queued) {
        let bytes = output_bytes(&queued.stamped.event);
        self.backlog.bytes.fetch_add(bytes, Ordering::SeqCst);
        if self.sender.send(queued).is_err() {
            self.backlog.bytes.fetch_sub(bytes, Ordering::SeqCst);
        }
    }

    /// Waits while more than [`OUTPUT_BACKLOG_BYTES`] of output are queued.
    pub async fn room(&self) {
        loop {
            let drained = self.backlog.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.backlog.closed.load(Ordering::SeqCst)
                || self.backlog.bytes.load(Ordering::SeqCst) < OUTPUT_BACKLOG_BYTES
            {
                return;
            }
            drained.await;
        }
    }
}

impl EventStream {
    pub async fn recv(&mut self) -> Option<Stamped> {
        Some(self.recv_durable().await?.0)
    }

    /// The next event, and the promise to make it durable if the engine waits for that.
    pub async fn recv_durable(&mut self) -> Option<(Stamped, Option<Durable>)> {
        let queued = self.receiver.recv().await?;
        self.taken(output_bytes(&queued.stamped.event));
        Some((queued.stamped, queued.durable))
    }

    /// Up to `limit` events at once (at least one, unless the engine is gone), appended to `buffer`.
    pub async fn recv_many(&mut self, buffer: &mut Vec<Stamped>, limit: usize) -> usize {
        let mut queued = Vec::with_capacity(limit.min(1024));
        let received = self.receiver.recv_many(&mut queued, limit).await;
        self.taken(queued.iter().map(|q| output_bytes(&q.stamped.event)).sum());
        buffer.extend(queued.into_iter().map(|q| q.stamped));
        received
    }

    fn taken(&self, bytes: usize) {
        if bytes > 0 {
            self.backlog.bytes.fetch_sub(bytes, Ordering::SeqCst);
            self.backlog.drained.notify_waiters();
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.backlog.closed.store(true, Ordering::SeqCst);
        self.backlog.drained.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    use crate::event::Stream;

    fn output(bytes: usize) -> Event {
        Event::Output { host: "h".into(), step: "s".into(), stream: Stream::Stdout, line: "x".repeat(bytes) }
    }

    #[tokio::test]
    async fn output_waits_for_room_while_the_consumer_is_behind() {
        let (sink, mut stream) = event_channel();
        let line = 64 * 1024;
        for _ in 0..OUTPUT_BACKLOG_BYTES / line - 1 {
            sink.emit(output(line));
        }
        assert!(sink.room().now_or_never().is_some(), "below the limit there is room");
        sink.emit(output(line));
        assert!(sink.room().now_or_never().is_none(), "at the limit a step's output must wait");
        // Control events never wait and never count.
        sink.emit(Event::Resumed);
        let waiting = tokio::spawn({
            let sink = sink.clone();
            async move { sink.room().await }
        });
        stream.recv().await.unwrap();
        waiting.await.unwrap();
        drop(stream);
        for _ in 0..4 {
            sink.emit(output(line));
        }
        assert!(sink.room().now_or_never().is_some(), "with no consumer left, nobody waits");
    }
}
