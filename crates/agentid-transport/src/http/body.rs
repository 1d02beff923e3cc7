//! Response bodies that a connection can cut: at the deadline or on revocation a streaming
//! response stops with an error (h2: the stream is reset; h1: the connection is closed).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use tokio::sync::watch;

use super::server::Active;

/// The error type of bodies in this module.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a response body stopped early.
#[derive(Debug, thiserror::Error)]
#[error("response cut: the connection's deadline passed or its peer was revoked")]
pub struct BodyCut;

type Cut = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The response body of an agentid HTTP server.
pub struct ResponseBody {
    inner: UnsyncBoxBody<Bytes, BoxError>,
    /// The connection's cut signal, read on every poll.
    cut_rx: Option<watch::Receiver<bool>>,
    /// Waits for the cut; made only when the body first has nothing to send (streaming).
    cut: Option<Cut>,
    /// Held until the body is dropped (the request counts as in flight while it streams).
    held: Option<Active>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

fn cut_signal(mut rx: watch::Receiver<bool>) -> Cut {
    Box::pin(async move {
        if rx.wait_for(|cut| *cut).await.is_err() {
            // The connection is gone, and with it every response: nothing left to cut.
            std::future::pending::<()>().await;
        }
    })
}

impl ResponseBody {
    pub(crate) fn new<B>(body: B, cut: Option<watch::Receiver<bool>>) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self {
            inner: body.map_err(Into::into).boxed_unsync(),
            cut_rx: cut,
            cut: None,
            held: None,
        }
    }

    /// Keeps the request's in-flight guard alive as long as this body.
    pub(crate) fn holding(mut self, active: Active) -> Self {
        self.held = Some(active);
        self
    }

    pub(crate) fn full(bytes: Bytes) -> Self {
        Self::new(Full::new(bytes), None)
    }
}

impl From<Bytes> for ResponseBody {
    fn from(bytes: Bytes) -> Self {
        Self::full(bytes)
    }
}

impl ResponseBody {
    fn cut_now(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.cut = None;
        self.cut_rx = None;
        self.inner = Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync();
        Poll::Ready(Some(Err(Box::new(BodyCut))))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.cut_rx.as_ref().is_some_and(|rx| *rx.borrow()) {
            return self.cut_now();
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => {
                // Streaming: wake on the cut as well as on the next frame.
                if self.cut.is_none() {
                    self.cut = self.cut_rx.clone().map(cut_signal);
                }
                let cut = self
                    .cut
                    .as_mut()
                    .is_some_and(|cut| cut.as_mut().poll(cx).is_ready());
                if cut {
                    self.cut_now()
                } else {
                    Poll::Pending
                }
            }
            ready => ready,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
