//! An idle limit for connections in the middle of a request: hyper's header read timeout bounds the wait for a
//! request head, but not a request body that stops arriving or a client that stops reading its answer, which would
//! hold the connection and its task forever (a dead peer that never sent FIN). [`Idle`] fails a read or write once
//! nothing has moved in either direction for the limit, and hyper then closes the connection.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A byte stream whose pending reads and writes fail with `TimedOut` after `limit` without progress.
#[derive(Debug)]
pub(crate) struct Idle<T> {
    io: T,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<T> Idle<T> {
    pub(crate) fn new(io: T, limit: Duration) -> Self {
        Self { io, limit, deadline: Box::pin(tokio::time::sleep(limit)) }
    }

    /// Progress was made: push the deadline out.
    fn touch(&mut self) {
        let next = Instant::now() + self.limit;
        self.deadline.as_mut().reset(next);
    }

    /// Called when the inner stream is pending: fail once the deadline has passed (which also registers the
    /// waker, so a stalled stream is woken to fail).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out(limit: Duration) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("connection idle for {} s", limit.as_secs()))
}

/// Map an inner poll result: progress touches the deadline, pending checks it.
fn track<R>(idle: &mut Idle<impl Sized>, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
    match poll {
        Poll::Ready(result) => {
            idle.touch();
            Poll::Ready(result)
        }
        Poll::Pending if idle.expired(cx) => Poll::Ready(Err(timed_out(idle.limit))),
        Poll::Pending => Poll::Pending,
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Idle<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        track(this, cx, poll)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Idle<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        track(this, cx, poll)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        track(this, cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_shutdown(cx);
        track(this, cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        track(this, cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const LIMIT: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn a_silent_peer_times_out_after_the_limit() {
        let (near, _far) = tokio::io::duplex(64);
        let mut idle = Idle::new(near, LIMIT);
        let start = Instant::now();
        let err = idle.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= LIMIT, "failed after {:?}", start.elapsed());
    }

    #[tokio::test]
    async fn traffic_keeps_the_connection_alive_past_the_limit() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut idle = Idle::new(near, LIMIT);
        let start = Instant::now();
        let writer = tokio::spawn(async move {
            for _ in 0..6 {
                tokio::time::sleep(LIMIT / 2).await;
                far.write_all(b"x").await.unwrap();
            }
            far
        });
        let mut got = Vec::new();
        while got.len() < 6 {
            let mut buf = [0u8; 8];
            let n = idle.read(&mut buf).await.expect("timed out although bytes kept arriving");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(start.elapsed() > LIMIT * 2, "the test did not outlast the limit");
        let _far = writer.await.unwrap();
        // And once the traffic stops, the limit applies again.
        let err = idle.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
