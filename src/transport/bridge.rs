//! The bridge that makes a GATT pipe (writes to one characteristic, notifications from another) a byte-stream
//! [`Link`], and the registry that lets a command close every such bridge before it exits.
//!
//! Nothing here knows btleplug: the GATT side is the small [`Gatt`] trait plus a stream of notification values and
//! a future that says when the module went away, so the bridge is tested with channels in place of BlueZ.
//!
//! The holder of the Link writes request bytes; a task splits them into GATT writes of at most the chunk size and
//! forwards every notification value, in order, to the Link's read side. Notifications carry the reply stream cut
//! at whatever points the module's MTU chose (a 13-byte frame, two frames, or 200 bytes of a multi-frame burst),
//! so the Link is a plain byte stream and the protocol's deframer finds the frames, exactly as on a serial line.
//! When the module disconnects, the notification stream ends or a write fails, the Link's next read fails with
//! the reason, which sends the poller down its reconnect path; when the holder drops the Link, the task
//! unsubscribes and disconnects the module.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, DuplexStream, ReadBuf};
use tokio::sync::Notify;

use super::Link;

/// The longest a single GATT write may take. A write without response only queues the packet in BlueZ, so this
/// is only reached when BlueZ or the connection is stuck.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes buffered between the bridge task and the Link in each direction: far more than one poll's replies (a
/// full Daly poll is under 400 bytes), so a notification never waits for the holder to read.
const BUFFER: usize = 64 * 1024;

/// The write side of a GATT pipe and its tear-down.
pub(super) trait Gatt: Send + Sync + 'static {
    /// Writes one chunk (at most the bridge's chunk size) to the write characteristic.
    fn write(&self, chunk: Vec<u8>) -> BoxFuture<'_, Result<(), String>>;
    /// Unsubscribes from notifications and disconnects the module, best effort and bounded in time.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// Everything a bridge needs from an open GATT connection.
pub(super) struct Pipe<G> {
    /// The write side.
    pub(super) gatt: G,
    /// Values of the notify characteristic, in arrival order; it ends when the connection to BlueZ does.
    pub(super) notifications: BoxStream<'static, Vec<u8>>,
    /// Resolves, with a reason, when the module disconnects.
    pub(super) gone: BoxFuture<'static, String>,
    /// The largest GATT write: the ATT payload of the negotiated MTU (20 bytes for the default MTU of 23).
    pub(super) chunk: usize,
}

/// The bridges open in one process, so a command can close them all (and wait for the modules to be
/// disconnected) before its runtime stops; see [`super::close_bluetooth`].
#[derive(Debug)]
pub(super) struct Registry {
    /// Bridge tasks that have not yet finished closing.
    open: AtomicUsize,
    /// Woken whenever a bridge task has finished.
    finished: Notify,
    /// Tells every bridge that exists now to close.
    close: Notify,
}

impl Registry {
    /// An empty registry.
    pub(super) const fn new() -> Self {
        Self { open: AtomicUsize::new(0), finished: Notify::const_new(), close: Notify::const_new() }
    }

    /// Tells every bridge of this registry to close, and waits, at most `max`, until all have finished.
    pub(super) async fn close_all(&self, max: Duration) {
        self.close.notify_waiters();
        let all_finished = async {
            loop {
                // Registered before the count is read, so a bridge finishing in between still wakes us.
                let finished = self.finished.notified();
                if self.open.load(Ordering::SeqCst) == 0 {
                    return;
                }
                finished.await;
            }
        };
        if tokio::time::timeout(max, all_finished).await.is_err() {
            tracing::warn!(
                open = self.open.load(Ordering::SeqCst),
                "Bluetooth links still closing after {max:?}; exiting anyway"
            );
        }
    }
}

/// The registry of every Bluetooth bridge of this process.
pub(super) static BRIDGES: Registry = Registry::new();

/// Counts one bridge task as open for as long as it lives, even if its runtime drops it half-way.
struct Registered(&'static Registry);

impl Registered {
    fn new(registry: &'static Registry) -> Self {
        registry.open.fetch_add(1, Ordering::SeqCst);
        Self(registry)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.finished.notify_waiters();
    }
}

/// Why the bridge ended, once it has; read by the Link side to turn end-of-stream into an error that says why.
type Ended = Arc<Mutex<Option<String>>>;

/// The Link side of a bridge: a duplex stream whose end-of-stream becomes an error naming why the bridge ended.
struct Bridged {
    inner: DuplexStream,
    ended: Ended,
}

impl Bridged {
    fn ended_error(&self) -> Option<io::Error> {
        let reason = self.ended.lock().unwrap_or_else(PoisonError::into_inner).clone()?;
        Some(io::Error::new(io::ErrorKind::ConnectionAborted, reason))
    }
}

impl AsyncRead for Bridged {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            // Nothing read into a buffer with room is end-of-stream: the bridge task has ended.
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                Poll::Ready(self.ended_error().map_or(Ok(()), Err))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Bridged {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Err(error)) => Poll::Ready(Err(self.ended_error().unwrap_or(error))),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Starts the bridge task for `pipe` on the current runtime and returns the Link it serves.
pub(super) fn bridge<G: Gatt>(pipe: Pipe<G>, description: String, registry: &'static Registry) -> Link {
    let (near, far) = tokio::io::duplex(BUFFER);
    let ended: Ended = Arc::default();
    let registered = Registered::new(registry);
    // Taken before the task starts, so a close_all() that comes before its first poll still reaches it.
    let close = registry.close.notified();
    let task_ended = Arc::clone(&ended);
    let task_description = description.clone();
    tokio::spawn(async move {
        let _registered = registered;
        let Pipe { gatt, notifications, gone, chunk } = pipe;
        let (mut from_link, mut to_link) = tokio::io::split(far);
        let reason = tokio::select! {
            reason = uplink(&gatt, &mut from_link, chunk.max(1)) => reason,
            reason = downlink(notifications, &mut to_link) => reason,
            reason = gone => Some(reason),
            () = close => Some("closed by bms_exporter".to_owned()),
        };
        // The reason is in place before the stream ends, so the holder's read reports it.
        if let Some(reason) = &reason {
            tracing::debug!(transport = %task_description, %reason, "bluetooth link ended");
            *task_ended.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.clone());
        }
        drop((from_link, to_link));
        gatt.close().await;
        tracing::debug!(transport = %task_description, "bluetooth module released");
    });
    Link::from_stream(Bridged { inner: near, ended }, description)
}

/// Link → GATT: every byte the holder writes, in writes of at most `chunk` bytes. `None` when the holder dropped
/// the Link, the reason when a write failed.
async fn uplink<G: Gatt>(gatt: &G, from_link: &mut (impl AsyncRead + Unpin), chunk: usize) -> Option<String> {
    let mut buf = vec![0u8; 512];
    loop {
        let n = match from_link.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        for piece in buf.get(..n).unwrap_or_default().chunks(chunk) {
            match tokio::time::timeout(WRITE_TIMEOUT, gatt.write(piece.to_vec())).await {
                Err(_elapsed) => return Some(format!("a GATT write did not complete within {WRITE_TIMEOUT:?}")),
                Ok(Err(error)) => return Some(format!("a GATT write failed: {error}")),
                Ok(Ok(())) => {}
            }
        }
    }
}

/// GATT → Link: every notification value, in order. `None` when the holder dropped the Link, the reason when the
/// notifications stopped.
async fn downlink(
    mut notifications: BoxStream<'static, Vec<u8>>,
    to_link: &mut (impl AsyncWrite + Unpin),
) -> Option<String> {
    while let Some(value) = notifications.next().await {
        if to_link.write_all(&value).await.is_err() {
            return None;
        }
    }
    Some("the notification stream ended (the connection to BlueZ was lost)".to_owned())
}

#[cfg(test)]
mod tests {
    use futures::FutureExt as _;
    use futures::channel::{mpsc, oneshot};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::protocol::daly::{A5Framing, Frame};
    use crate::protocol::deframer::{Deframer, Event};

    /// A GATT stand-in: writes go into a channel, closing is recorded, a write can be made to fail.
    struct FakeGatt {
        writes: mpsc::UnboundedSender<Vec<u8>>,
        closed: Arc<Mutex<bool>>,
        fail_writes: bool,
    }

    impl Gatt for FakeGatt {
        fn write(&self, chunk: Vec<u8>) -> BoxFuture<'_, Result<(), String>> {
            let result = if self.fail_writes {
                Err("org.bluez.Error.Failed: Not connected".to_owned())
            } else {
                self.writes.unbounded_send(chunk).map_err(|e| e.to_string())
            };
            async move { result }.boxed()
        }

        fn close(&self) -> BoxFuture<'_, ()> {
            *self.closed.lock().unwrap() = true;
            async {}.boxed()
        }
    }

    /// The test's ends of a bridge.
    struct Fake {
        link: Link,
        notify: mpsc::UnboundedSender<Vec<u8>>,
        writes: mpsc::UnboundedReceiver<Vec<u8>>,
        disconnect: oneshot::Sender<String>,
        closed: Arc<Mutex<bool>>,
    }

    fn fake(chunk: usize, fail_writes: bool, registry: &'static Registry) -> Fake {
        let (writes_tx, writes) = mpsc::unbounded();
        let (notify, notifications) = mpsc::unbounded();
        let (disconnect, gone) = oneshot::channel::<String>();
        let closed = Arc::new(Mutex::new(false));
        let gatt = FakeGatt { writes: writes_tx, closed: Arc::clone(&closed), fail_writes };
        let pipe = Pipe {
            gatt,
            notifications: notifications.boxed(),
            gone: gone.map(|r| r.unwrap_or_else(|_| "test dropped the sender".to_owned())).boxed(),
            chunk,
        };
        Fake {
            link: bridge(pipe, "bluetooth 11:22:33:44:55:66".to_owned(), registry),
            notify,
            writes,
            disconnect,
            closed,
        }
    }

    /// A valid Daly reply frame from board 1 for command `command`.
    fn frame(command: u8, seed: u8) -> Vec<u8> {
        Frame { address: 0x01, command, data: [seed, 2, 3, 4, 5, 6, 7, 8] }.encode().to_vec()
    }

    async fn read_some(link: &mut Link) -> io::Result<Vec<u8>> {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), link.read(&mut buf)).await.expect("read timed out")?;
        Ok(buf[..n].to_vec())
    }

    async fn wait_closed(closed: &Arc<Mutex<bool>>) {
        for _ in 0..500 {
            if *closed.lock().unwrap() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the bridge never closed the GATT side");
    }

    #[tokio::test]
    async fn notifications_cut_anywhere_and_mixed_with_garbage_reach_the_deframer_as_whole_frames() {
        static REGISTRY: Registry = Registry::new();
        let mut fake = fake(20, false, &REGISTRY);
        let frames = [frame(0x90, 1), frame(0x95, 2), frame(0x95, 3), frame(0x96, 4)];
        // Garbage before, between and after the frames, as a woken dongle or a cut burst produces.
        let mut stream = vec![0x00, 0xFF, 0xA5, 0x13];
        stream.extend(&frames[0]);
        stream.extend([0xA5, 0x01, 0x90]);
        stream.extend(&frames[1]);
        stream.extend(&frames[2]);
        stream.extend([0x55; 7]);
        stream.extend(&frames[3]);
        stream.push(0xA5);
        // Cut at points that split the start byte, the header and the checksum off their frames.
        let cuts = [1, 3, 5, 17, 18, 30, 31, 44, 45, 60];
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
            fake.notify.unbounded_send(stream[start..cut].to_vec()).unwrap();
            start = cut;
        }
        let mut deframer = Deframer::new(A5Framing);
        let mut got = Vec::new();
        while got.len() < frames.len() {
            let bytes = read_some(&mut fake.link).await.unwrap();
            deframer.push(&bytes);
            while let Some(event) = deframer.poll() {
                if let Event::Frame(f) = event {
                    got.push(f);
                }
            }
        }
        assert_eq!(got, frames.to_vec());
        assert!(deframer.skipped_bytes() >= 4 + 3 + 7, "skipped {}", deframer.skipped_bytes());
    }

    #[tokio::test]
    async fn writes_become_gatt_writes_of_at_most_the_chunk_size_in_order() {
        static REGISTRY: Registry = Registry::new();
        let mut fake = fake(20, false, &REGISTRY);
        let request: Vec<u8> = (0u8..45).collect();
        fake.link.write_all(&request).await.unwrap();
        fake.link.flush().await.unwrap();
        let mut sent = Vec::new();
        while sent.len() < request.len() {
            let chunk = tokio::time::timeout(Duration::from_secs(5), fake.writes.next()).await.unwrap().unwrap();
            assert!(!chunk.is_empty() && chunk.len() <= 20, "chunk of {}", chunk.len());
            sent.extend(chunk);
        }
        assert_eq!(sent, request);

        // A 13-byte Daly request fits one write.
        let daly = frame(0x90, 9);
        fake.link.write_all(&daly).await.unwrap();
        let chunk = tokio::time::timeout(Duration::from_secs(5), fake.writes.next()).await.unwrap().unwrap();
        assert_eq!(chunk, daly);
    }

    #[tokio::test]
    async fn a_disconnect_makes_the_next_read_fail_with_the_reason_and_closes_the_gatt_side() {
        static REGISTRY: Registry = Registry::new();
        let mut fake = fake(20, false, &REGISTRY);
        fake.notify.unbounded_send(frame(0x90, 1)).unwrap();
        assert_eq!(read_some(&mut fake.link).await.unwrap(), frame(0x90, 1));
        fake.disconnect.send("the module disconnected".to_owned()).unwrap();
        let error = read_some(&mut fake.link).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(error.to_string(), "the module disconnected");
        wait_closed(&fake.closed).await;
        // Writing after the end fails too, with the same reason, instead of vanishing into a dead pipe.
        let error = fake.link.write_all(&frame(0x90, 2)).await.unwrap_err();
        assert_eq!(error.to_string(), "the module disconnected");
    }

    #[tokio::test]
    async fn the_end_of_the_notification_stream_is_a_read_error() {
        static REGISTRY: Registry = Registry::new();
        let mut fake = fake(20, false, &REGISTRY);
        drop(fake.notify);
        let error = read_some(&mut fake.link).await.unwrap_err();
        assert!(error.to_string().contains("notification stream ended"), "{error}");
        wait_closed(&fake.closed).await;
    }

    #[tokio::test]
    async fn a_failed_gatt_write_ends_the_link_with_the_bluez_error() {
        static REGISTRY: Registry = Registry::new();
        let mut fake = fake(20, true, &REGISTRY);
        fake.link.write_all(&frame(0x90, 1)).await.unwrap();
        let error = read_some(&mut fake.link).await.unwrap_err();
        assert_eq!(error.to_string(), "a GATT write failed: org.bluez.Error.Failed: Not connected");
        wait_closed(&fake.closed).await;
    }

    #[tokio::test]
    async fn dropping_the_link_releases_the_module() {
        static REGISTRY: Registry = Registry::new();
        let fake = fake(20, false, &REGISTRY);
        assert_eq!(REGISTRY.open.load(Ordering::SeqCst), 1);
        drop(fake.link);
        wait_closed(&fake.closed).await;
        REGISTRY.close_all(Duration::from_secs(5)).await;
        assert_eq!(REGISTRY.open.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn close_all_ends_every_open_link_and_waits_for_the_modules_to_be_released() {
        static REGISTRY: Registry = Registry::new();
        let mut first = fake(20, false, &REGISTRY);
        let mut second = fake(20, false, &REGISTRY);
        assert_eq!(REGISTRY.open.load(Ordering::SeqCst), 2);
        REGISTRY.close_all(Duration::from_secs(5)).await;
        assert_eq!(REGISTRY.open.load(Ordering::SeqCst), 0);
        assert!(*first.closed.lock().unwrap() && *second.closed.lock().unwrap());
        for fake in [&mut first, &mut second] {
            let error = read_some(&mut fake.link).await.unwrap_err();
            assert_eq!(error.to_string(), "closed by bms_exporter");
        }
    }
}
