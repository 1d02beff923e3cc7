//! The framed byte stream under a session: frame reading and writing, the `AsyncRead` /
//! `AsyncWrite` adapter, and how a session ends.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::{now_unix, Ended, Session, CLOSE_NORMAL};
use crate::error::{peer_message, Error, FrameError, Result, TimeoutKind};
use crate::frame::{self, body_bytes, parse_body, FrameType, Reason, HEADER_LEN, MAX_FRAME_BODY};

impl<IO> Session<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    pub(super) async fn write_frame(&mut self, ty: FrameType, body: &[u8]) -> Result<()> {
        if let Some(e) = &self.ended {
            return Err(e.error());
        }
        frame::encode(ty, body, &mut self.wbuf)?;
        std::future::poll_fn(|cx| self.poll_flush_live(cx))
            .await
            .map_err(from_io)
    }

    /// Drains the write buffer and flushes the connection, waiting at most as long as the
    /// session lives ([`Self::poll_drain_live`]).
    pub(super) fn poll_flush_live(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain_live(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Starts the close's wait for the peer (once): from now on it has the close timeout to
    /// take what this side still has to send, the close frame and `close_notify`.
    pub(super) fn arm_close_timer(&mut self) {
        if self.close_timer.is_none() {
            self.close_timer = Some(Box::pin(tokio::time::sleep(self.close_timeout)));
        }
    }

    /// [`Self::poll_drain`] for a caller that waits until the peer has taken the bytes: while
    /// the session lives, the wait ends when the session does (its deadline, a revocation, a
    /// failed re-check), with that reason; once either side closed it, at the deadline; once it
    /// ended on a failure (its close frame sent best effort), at once, with the failure; once a
    /// close started, also at its close timer. A peer that stops reading never holds a writer
    /// for ever, nor a closing side longer than the close timeout.
    pub(super) fn poll_drain_live(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(timer) = self.close_timer.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::other(Error::Timeout(TimeoutKind::Close))));
            }
        }
        match &self.ended {
            None => {
                if let Some(e) = self.poll_kill(cx) {
                    return Poll::Ready(Err(io::Error::other(e)));
                }
            }
            Some(Ended::LocalClosed | Ended::PeerClosed(..)) => {
                if self.deadline.as_mut().poll(cx).is_ready() || now_unix() >= self.peer.deadline {
                    return Poll::Ready(Err(io::Error::other(Error::CredentialExpired)));
                }
            }
            Some(ended) => {
                let e = ended.error();
                return match self.poll_drain(cx) {
                    Poll::Pending => Poll::Ready(Err(io::Error::other(e))),
                    done => done,
                };
            }
        }
        self.poll_drain(cx)
    }

    pub(super) fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wbuf.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Ends the session with `ended`: a best-effort close frame, then every later call fails.
    pub(super) fn end(&mut self, cx: &mut Context<'_>, ended: Ended) -> Error {
        let code = match &ended {
            Ended::Expired => "credential_expired".to_owned(),
            Ended::Idle => "idle".to_owned(),
            Ended::Revoked(_) => "revoked".to_owned(),
            Ended::Unverifiable(e) => e.code().as_str().to_owned(),
            Ended::Untrusted(_) => "bad_certificate".to_owned(),
            Ended::Failed(c, _) => c.clone(),
            Ended::PeerClosed(..) | Ended::LocalClosed => String::new(),
        };
        if !code.is_empty() {
            // The peer gets the code and a fixed message; the detail is logged here.
            let detail = ended.error();
            tracing::info!(peer.id = %self.peer.id, reason = %code, error = %detail, "ending session");
            if let Ok(body) = body_bytes(&Reason {
                code: code.clone(),
                message: peer_message(&code).to_owned(),
            }) {
                let _ = frame::encode(FrameType::Close, &body, &mut self.wbuf);
                let _ = self.poll_drain(cx);
                let _ = Pin::new(&mut self.io).poll_flush(cx);
            }
            tracing::info!(peer.id = %self.peer.id, outcome = "ended", reason = %code, "session ended");
        }
        let e = ended.error();
        self.set_ended(ended);
        e
    }

    /// Ends the session because of `e` (a close frame with `e`'s reason goes to the peer) and
    /// returns `e` itself; later calls get the recorded reason.
    pub(super) fn fail(&mut self, cx: &mut Context<'_>, e: Error) -> Error {
        let ended = match &e {
            Error::CredentialExpired => Ended::Expired,
            Error::Revoked(r) => Ended::Revoked(r.clone()),
            other => Ended::Failed(other.reason().to_owned(), other.to_string()),
        };
        let _ = self.end(cx, ended);
        e
    }

    /// Whether the idle timeout has passed since the last activity (registering the timer with
    /// `cx` otherwise). Activity only records an instant; the timer moves when it fires.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(idle) = self.idle_timeout else {
            return false;
        };
        // Bounded: each round either ends the session or moves the timer into the future.
        for _ in 0..2 {
            if self.idle_timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let due = self.last_activity + idle;
            if Instant::now() >= due {
                return true;
            }
            self.idle_timer.as_mut().reset(due);
        }
        false
    }

    pub(super) fn poll_next_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>>> {
        loop {
            if let Some(e) = self.poll_kill(cx) {
                return Poll::Ready(Err(e));
            }
            match frame::decode(&mut self.rbuf) {
                Err(e) => return Poll::Ready(Err(self.fail(cx, e.into()))),
                Ok(Some(f)) => match f.ty {
                    // An empty data frame carries nothing (and must not read as end of stream).
                    FrameType::Data if f.body.is_empty() => {}
                    FrameType::Data => return Poll::Ready(Ok(Some(f.body))),
                    FrameType::Reauth => {
                        if let Err(e) = self.handle_reauth(&f.body) {
                            tracing::warn!(peer.id = %self.peer.id, outcome = "rejected", reason = e.reason(), "reauth refused");
                            return Poll::Ready(Err(self.fail(cx, e)));
                        }
                    }
                    FrameType::Close => {
                        let reason: Reason = parse_body(&f.body).unwrap_or(Reason {
                            code: "bad_frame".into(),
                            message: "unreadable close frame".into(),
                        });
                        let (code, message) = reason.into_sanitized();
                        let normal = code == CLOSE_NORMAL;
                        let ended = Ended::PeerClosed(code, message);
                        let e = ended.error();
                        self.set_ended(ended);
                        return Poll::Ready(if normal { Ok(None) } else { Err(e) });
                    }
                    other => {
                        let e = Error::Frame(FrameError::Unexpected(other.name()));
                        return Poll::Ready(Err(self.fail(cx, e)));
                    }
                },
                Ok(None) => {
                    // Read at most what the current frame still needs (bounded memory).
                    let need = match self.rbuf.get(..4) {
                        Some(&[a, b, c, d]) => {
                            HEADER_LEN + u32::from_be_bytes([a, b, c, d]) as usize
                        }
                        _ => HEADER_LEN,
                    };
                    let want = need.saturating_sub(self.rbuf.len()).clamp(1, 16 * 1024);
                    let mut tmp = [0u8; 16 * 1024];
                    let Some(slot) = tmp.get_mut(..want) else {
                        return Poll::Ready(Err(
                            self.fail(cx, FrameError::TooLarge(need as u64).into())
                        ));
                    };
                    let mut rb = ReadBuf::new(slot);
                    match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                        Poll::Pending => {
                            if self.poll_idle(cx) {
                                return Poll::Ready(Err(self.end(cx, Ended::Idle)));
                            }
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(e)) => {
                            let e = Error::Io(e);
                            self.set_ended(Ended::Failed("io".into(), e.to_string()));
                            return Poll::Ready(Err(e));
                        }
                        Poll::Ready(Ok(())) => {
                            if rb.filled().is_empty() {
                                if self.rbuf.is_empty() {
                                    // End of stream at a frame boundary, without a close frame.
                                    self.set_ended(Ended::PeerClosed(
                                        "eof".into(),
                                        "connection closed".into(),
                                    ));
                                    return Poll::Ready(Ok(None));
                                }
                                let e = Error::Frame(FrameError::Truncated);
                                self.set_ended(Ended::Failed("bad_frame".into(), e.to_string()));
                                return Poll::Ready(Err(e));
                            }
                            self.rbuf.extend_from_slice(rb.filled());
                            self.last_activity = Instant::now();
                        }
                    }
                }
            }
        }
    }
}

/// Recovers the crate error carried inside an `io::Error` from the stream adapter.
pub(super) fn from_io(e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(inner) = e.into_inner() {
            if let Ok(err) = inner.downcast::<Error>() {
                return *err;
            }
        }
        return Error::Config("unreachable".into());
    }
    Error::Io(e)
}

impl<IO> AsyncRead for Session<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_empty() {
            match ready!(this.poll_next_data(cx)) {
                Ok(Some(body)) => this.pending = body,
                Ok(None) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(this.pending.get(..n).unwrap_or_default());
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO> AsyncWrite for Session<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.poll_kill(cx) {
            return Poll::Ready(Err(io::Error::other(e)));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(this.poll_drain(cx))?;
        let n = buf.len().min(MAX_FRAME_BODY);
        let chunk = buf.get(..n).unwrap_or_default();
        frame::encode(FrameType::Data, chunk, &mut this.wbuf)
            .map_err(|e| io::Error::other(Error::Frame(e)))?;
        // A session that is producing data is not idle.
        this.last_activity = Instant::now();
        // Best effort now; poll_flush finishes the job.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_live(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.arm_close_timer();
        if this.ended.is_none() {
            // A deadline or revocation not acted on yet ends the session with its own code.
            if let Some(e) = this.poll_kill(cx) {
                return Poll::Ready(Err(io::Error::other(e)));
            }
            let body = body_bytes(&Reason {
                code: CLOSE_NORMAL.into(),
                message: String::new(),
            })
            .map_err(|e| io::Error::other(Error::Frame(e)))?;
            frame::encode(FrameType::Close, &body, &mut this.wbuf)
                .map_err(|e| io::Error::other(Error::Frame(e)))?;
            this.set_ended(Ended::LocalClosed);
        }
        ready!(this.poll_drain_live(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
