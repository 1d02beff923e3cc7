//! A bound on how long a write may wait for the peer to take bytes: the server's every
//! connection ([`HttpOptions::idle_timeout`](super::HttpOptions::idle_timeout)), a dropped
//! client connection (its connect timeout).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The timer of a write that waits. Nothing is armed while writes complete: a write (flush,
/// shutdown) that returns `Pending` arms it at the limit, the next one that completes disarms
/// it, and one still waiting when it fires fails with [`io::ErrorKind::TimedOut`]. The timer
/// is allocated at the first wait and reused after.
pub(crate) struct WriteStall {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl WriteStall {
    pub(crate) fn new(limit: Duration) -> Self {
        Self {
            limit,
            timer: None,
            armed: false,
        }
    }

    /// A write that completed (or was never started): the wait, if any, is over.
    pub(crate) fn progressed(&mut self) {
        self.armed = false;
    }

    /// A write that returned `Pending`: `Pending` until it has waited the limit (the task is
    /// woken then), then the error, with `what` as its message.
    pub(crate) fn waiting<T>(
        &mut self,
        cx: &mut Context<'_>,
        what: &'static str,
    ) -> Poll<io::Result<T>> {
        if !self.armed {
            self.armed = true;
            let at = Instant::now() + self.limit;
            match self.timer.as_mut() {
                Some(t) => t.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        let fired = self
            .timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready());
        if fired {
            Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
        } else {
            Poll::Pending
        }
    }

    /// The outcome `r` of a write, flush or shutdown, bounded: see [`WriteStall`].
    pub(crate) fn bound<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
        what: &'static str,
    ) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.progressed();
            return r;
        }
        self.waiting(cx, what)
    }
}

/// A server connection's socket (under TLS) whose writes, once [`StallBounded::bound`], are
/// bounded by a [`WriteStall`]: a peer that stops reading (a response streaming, a close under
/// way) loses the connection once a write to the socket has waited the limit, whatever is in
/// flight. Under TLS, so that bytes TLS buffers for a peer that takes none are no progress.
pub(crate) struct StallBounded<IO> {
    io: IO,
    stall: Option<WriteStall>,
}

const PEER_STOPPED_READING: &str = "agentid http: the peer takes no more bytes";

impl<IO> StallBounded<IO> {
    /// `io`, its writes unbounded (the TLS handshake has its own timeout).
    pub(crate) fn new(io: IO) -> Self {
        Self { io, stall: None }
    }

    /// From now on a write that waits `limit` fails.
    pub(crate) fn bound(&mut self, limit: Duration) {
        self.stall = Some(WriteStall::new(limit));
    }

    fn bounded<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match &mut self.stall {
            Some(stall) => stall.bound(cx, r, PEER_STOPPED_READING),
            None => r,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for StallBounded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for StallBounded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.bounded(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.bounded(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.bounded(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.bounded(cx, r)
    }
}
