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
    /// Waits for the cut; made only when the body first has nothing to send (streaming).
    cut: Option<Cut>,
    /// Held until the body is dropped (the request counts as in flight while it streams); its
    /// connection's cut is checked on every poll.
    held: Option<Active>,
    /// The body was cut (it then ends).
    was_cut: bool,
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
    pub(crate) fn new<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self {
            inner: body.map_err(Into::into).boxed_unsync(),
            cut: None,
            held: None,
            was_cut: false,
        }
    }

    /// Keeps the request's in-flight guard alive as long as this body, and cuts the body when
    /// the guard's connection ends.
    pub(crate) fn holding(mut self, active: Active) -> Self {
        self.held = Some(active);
        self
    }

    pub(crate) fn full(bytes: Bytes) -> Self {
        Self::new(Full::new(bytes))
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
        self.was_cut = true;
        // The guard stays held (the request is in flight until the body is dropped).
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
        if !self.was_cut && self.held.as_ref().is_some_and(Active::is_cut) {
            return self.cut_now();
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => {
                // Streaming: wake on the cut as well as on the next frame.
                if self.cut.is_none() {
                    // Subscribed now: a cut sent before is seen (the value is read first).
                    self.cut = self.held.as_ref().map(|a| cut_signal(a.cut_signal()));
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
