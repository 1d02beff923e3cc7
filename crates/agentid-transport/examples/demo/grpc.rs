//! The gRPC glue `tonic-build` would generate from a `.proto`, written once for the examples and
//! the tests (transport feature `tonic`): a unary method from a function, and a service that
//! answers each request with a function (which routes it by path).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use agentid_transport::http::{Authorizer, BoxError};
use bytes::Bytes;
use tonic::Status;

/// A boxed future that can move between threads.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A unary method: `f(caller, request)`, where `caller` is the peer's identity as the agentid
/// server verified it (from the request's [`Authorizer`]; empty without one).
#[derive(Clone)]
pub struct Unary<F>(pub F);

impl<F, Req, Resp> tower_service::Service<tonic::Request<Req>> for Unary<F>
where
    F: Fn(String, Req) -> Result<Resp, Status>,
{
    type Response = tonic::Response<Resp>;
    type Error = Status;
    type Future = std::future::Ready<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<Req>) -> Self::Future {
        let caller = req
            .extensions()
            .get::<Authorizer>()
            .map(|a| a.peer_id().to_string())
            .unwrap_or_default();
        std::future::ready((self.0)(caller, req.into_inner()).map(tonic::Response::new))
    }
}

/// A gRPC service: `f(request)` answers each request (decode, call, encode), whatever the body
/// type the agentid server hands over.
#[derive(Clone)]
pub struct Routes<F>(pub F);

impl<F, B> tower_service::Service<http::Request<B>> for Routes<F>
where
    F: Fn(http::Request<tonic::body::Body>) -> BoxFuture<http::Response<tonic::body::Body>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let answer = (self.0)(req.map(tonic::body::Body::new));
        Box::pin(async move { Ok(answer.await) })
    }
}
