//! Response bodies that a connection can cut: at the deadline or on revocation a streaming
//! response stops with an error (h2: the stream is reset; h1: the connection is closed).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::Full;
use tokio::sync::watch;

use super::server::{Active, ConnShared};

/// The error type of bodies in this module.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a response body, or a request body still arriving, stopped early.
#[derive(Debug, thiserror::Error)]
#[error("body cut: the connection's deadline passed or its peer was revoked")]
pub struct BodyCut;

type Cut = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A response body as the inner service produced it, boxed (the default body type of
/// [`ResponseBody`], for services whose own body type is not named).
pub type BoxBody = UnsyncBoxBody<Bytes, BoxError>;

pin_project_lite::pin_project! {
    /// The response body of an agentid HTTP server: the inner service's body `B` (not boxed),
    /// or a refusal's.
    #[project = ResponseBodyProj]
    pub struct ResponseBody<B = BoxBody> {
        #[pin]
        inner: Inner<B>,
        // Waits for the cut; made only when the body first has nothing to send (streaming).
        cut: Option<Cut>,
        // Held until the body is dropped (the request counts as in flight while it streams); its
        // connection's cut is checked on every poll.
        held: Option<Active>,
        // The body was cut (it then ends).
        was_cut: bool,
        // The rest of a data frame larger than `PIECE`, given next (see there).
        rest: Bytes,
    }
}

/// The largest data frame a response body hands hyper at once (HTTP/2's default frame size):
/// a longer one is given in pieces, so that hyper takes the next piece only once the peer took
/// the ones before (its window, or hyper's write buffer on HTTP/1.1, has room). A response
/// given in large frames (a download made from one buffer, chunks of many MiB, a large gRPC
/// message) then stays in flight until its last piece and shows its progress piece by piece:
/// otherwise hyper took the whole buffer at once, and the request ended (the connection then
/// closed as idle, and dropped as one whose peer did not finish the close) or counted as a
/// frame the peer did not take (the HTTP/2 stall bound of
/// [`HttpOptions::idle_timeout`](super::HttpOptions::idle_timeout)) while a peer that kept
/// reading it was still taking the rest.
const PIECE: usize = 16 * 1024;

pin_project_lite::pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        Service {
            #[pin]
            body: B,
        },
        Full {
            body: Full<Bytes>,
        },
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
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

impl<B> ResponseBody<B> {
    /// The inner service's body, as it is.
    pub(crate) fn new(body: B) -> Self {
        Self::with(Inner::Service { body })
    }

    fn with(inner: Inner<B>) -> Self {
        Self {
            inner,
            cut: None,
            held: None,
            was_cut: false,
            rest: Bytes::new(),
        }
    }

    /// Keeps the request's in-flight guard alive as long as this body, and cuts the body when
    /// the guard's connection ends.
    pub(crate) fn holding(mut self, active: Active) -> Self {
        self.held = Some(active);
        self
    }

    pub(crate) fn full(bytes: Bytes) -> Self {
        Self::with(Inner::Full {
            body: Full::new(bytes),
        })
    }
}

impl ResponseBody {
    /// Any body, boxed.
    #[cfg(feature = "mcp")]
    pub(crate) fn boxed<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt as _;
        Self::new(body.map_err(Into::into).boxed_unsync())
    }
}

impl<B> From<Bytes> for ResponseBody<B> {
    fn from(bytes: Bytes) -> Self {
        Self::full(bytes)
    }
}

fn cut_now<B>(mut this: ResponseBodyProj<'_, B>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    *this.cut = None;
    *this.was_cut = true;
    *this.rest = Bytes::new();
    // The guard stays held (the request is in flight until the body is dropped).
    this.inner.set(Inner::Full {
        body: Full::new(Bytes::new()),
    });
    Poll::Ready(Some(Err(Box::new(BodyCut))))
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(a) = this.held.as_mut() {
            a.taken();
        }
        if !*this.was_cut && this.held.as_ref().is_some_and(Active::is_cut) {
            return cut_now(this);
        }
        if !this.rest.is_empty() {
            let piece = this.rest.split_to(this.rest.len().min(PIECE));
            if let Some(a) = this.held.as_mut() {
                a.gave();
            }
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        let polled = match this.inner.as_mut().project() {
            InnerProj::Service { body } => body
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            InnerProj::Full { body } => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
        };
        match polled {
            Poll::Pending => {
                // Streaming: wake on the cut as well as on the next frame.
                if this.cut.is_none() {
                    // Subscribed now: a cut sent before is seen (the value is read first).
                    *this.cut = this.held.as_ref().map(|a| cut_signal(a.cut_signal()));
                }
                let cut = this
                    .cut
                    .as_mut()
                    .is_some_and(|cut| cut.as_mut().poll(cx).is_ready());
                if cut {
                    cut_now(this)
                } else {
                    Poll::Pending
                }
            }
            Poll::Ready(Some(Ok(frame))) => {
                // Until the next poll, the frame waits for the peer to take it.
                let Some(a) = this.held.as_mut() else {
                    return Poll::Ready(Some(Ok(frame)));
                };
                a.gave();
                match frame.into_data() {
                    Ok(mut data) if data.len() > PIECE => {
                        *this.rest = data.split_off(PIECE);
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                }
            }
            ready => ready,
        }
    }

    fn is_end_stream(&self) -> bool {
        if !self.rest.is_empty() {
            return false;
        }
        match &self.inner {
            Inner::Service { body } => body.is_end_stream(),
            Inner::Full { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let inner = match &self.inner {
            Inner::Service { body } => body.size_hint(),
            Inner::Full { body } => body.size_hint(),
        };
        if self.rest.is_empty() {
            return inner;
        }
        // The rest of a frame given in pieces is still to come.
        let rest = u64::try_from(self.rest.len()).unwrap_or(u64::MAX);
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper().and_then(|u| u.checked_add(rest)) {
            hint.set_upper(upper);
        }
        hint
    }
}

/// Why a request body stopped early.
#[derive(Debug, thiserror::Error)]
#[error("request body stalled: no data arrived within {0:?}")]
pub struct BodyStalled(pub std::time::Duration);

pin_project_lite::pin_project! {
    /// The request body an agentid HTTP server hands its service: the connection's body as
    /// hyper received it, failing with [`BodyStalled`] when nothing of it arrives for
    /// [`HttpOptions::body_idle_timeout`](super::HttpOptions::body_idle_timeout) (a peer that
    /// stops sending a body otherwise keeps its request, and on HTTP/1.1 its connection, in
    /// flight until the connection's deadline). The timer is armed only while the body waits
    /// for data: a body that arrives whole, or is empty, costs none.
    ///
    /// It fails with [`BodyCut`] once the connection's authority ends (its peer revoked, its
    /// deadline passed): no frame is handed over after that, and a service waiting for the
    /// next one is woken, although the connection itself is kept for the cut grace.
    ///
    /// A body that failed lets go of the connection's body at once, also while the service
    /// still holds this one: what the peer sends on that stream afterwards is discarded and
    /// its HTTP/2 flow-control credit returned, never left buffered against the connection's
    /// window, where it would starve the connection's other streams.
    pub struct RequestBody {
        // `None` once the body failed.
        inner: Option<hyper::body::Incoming>,
        idle: Option<std::time::Duration>,
        stalled: Option<Pin<Box<tokio::time::Sleep>>>,
        conn: Arc<ConnShared>,
        // Waits for the connection's cut; made only when the body first waits for data.
        cut: Option<Cut>,
    }
}

impl RequestBody {
    pub(crate) fn new(
        inner: hyper::body::Incoming,
        idle: Option<std::time::Duration>,
        conn: Arc<ConnShared>,
    ) -> Self {
        Self {
            inner: Some(inner),
            idle,
            stalled: None,
            conn,
            cut: None,
        }
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

/// Ends a request body with `error` (the connection's cut, or a stall): an error now, then no
/// more frames; the connection's body is dropped.
fn fail_request(
    inner: &mut Option<hyper::body::Incoming>,
    stalled: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    cut: &mut Option<Cut>,
    error: BoxError,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    *inner = None;
    *stalled = None;
    *cut = None;
    Poll::Ready(Some(Err(error)))
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if this.inner.is_some() && this.conn.is_cut() {
            return fail_request(this.inner, this.stalled, this.cut, Box::new(BodyCut));
        }
        // `None`: the body failed, and has ended.
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.stalled = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                // Subscribed now: a cut sent before is seen (the value is read first).
                let cut = this
                    .cut
                    .get_or_insert_with(|| cut_signal(this.conn.cut_signal()));
                if cut.as_mut().poll(cx).is_ready() {
                    return fail_request(this.inner, this.stalled, this.cut, Box::new(BodyCut));
                }
                let Some(idle) = *this.idle else {
                    return Poll::Pending;
                };
                let timer = this
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    return fail_request(
                        this.inner,
                        this.stalled,
                        this.cut,
                        Box::new(BodyStalled(idle)),
                    );
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(inner) => inner.is_end_stream(),
            None => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}
