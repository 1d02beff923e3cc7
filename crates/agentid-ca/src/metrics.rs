//! The CA service's metrics: `GET /metrics` in the OpenMetrics text format (which Prometheus
//! scrapes), served only on the plain-HTTP listener of `agentid ca serve --metrics-listen`
//! ([`crate::server::CaService::serve_metrics`]).
//!
//! Labels are limited to the route (one of the CA API's fixed routes, or `other`), the HTTP
//! status code, the refusal code of `spec/CA-API.md` and the kind of issuance: nothing a caller
//! chooses (no identities, paths, addresses or tokens) becomes a label, so the series are bounded.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `agentid_ca_requests_total` | counter | `route`, `status` |
//! | `agentid_ca_refusals_total` | counter | `code` |
//! | `agentid_ca_issuances_total` | counter | `kind` (`enroll`, `task`, `child`, `renew`) |
//! | `agentid_ca_revocations_total` | counter | |
//! | `agentid_ca_revocation_list_seq` | gauge | |
//! | `agentid_ca_revocation_list_bytes` | gauge | |
//! | `agentid_ca_revocation_waiters` | gauge | |
//! | `agentid_ca_revocation_polls_ahead_total` | counter | |

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use agentid_api::{routes, ErrorCode};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, Method, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The path of the one route of the metrics listener.
pub const METRICS_PATH: &str = "/metrics";

/// The content type of [`METRICS_PATH`]'s body.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// The refusal code of a response, set by the service's refusals for [`track`] to count.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RefusalCode(pub(crate) ErrorCode);

/// The service's counters and gauges.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    refusals: Family<CodeLabels, Counter>,
    issuances: Family<KindLabels, Counter>,
    revocations: Counter,
    list_seq: Gauge<u64, AtomicU64>,
    list_bytes: Gauge<u64, AtomicU64>,
    waiters: Gauge<u64, AtomicU64>,
    polls_ahead: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric of the module documentation, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("agentid_ca");
        let requests = Family::<RequestLabels, Counter>::default();
        let refusals = Family::<CodeLabels, Counter>::default();
        let issuances = Family::<KindLabels, Counter>::default();
        let revocations = Counter::default();
        let list_seq = Gauge::<u64, AtomicU64>::default();
        let list_bytes = Gauge::<u64, AtomicU64>::default();
        let waiters = Gauge::<u64, AtomicU64>::default();
        let polls_ahead = Counter::default();
        registry.register(
            "requests",
            "Requests answered, by route and HTTP status",
            requests.clone(),
        );
        registry.register(
            "refusals",
            "Refusals, by the CA API error code",
            refusals.clone(),
        );
        registry.register(
            "issuances",
            "Certificates issued over the network, by kind",
            issuances.clone(),
        );
        registry.register(
            "revocations",
            "Revocations made over the network",
            revocations.clone(),
        );
        registry.register(
            "revocation_list_seq",
            "The seq of the revocation list served",
            list_seq.clone(),
        );
        registry.register(
            "revocation_list_bytes",
            "The size in bytes of the signed revocation list served",
            list_bytes.clone(),
        );
        registry.register(
            "revocation_waiters",
            "Revocation long-poll requests held now",
            waiters.clone(),
        );
        registry.register(
            "revocation_polls_ahead",
            "Revocation list requests whose `after` is above the seq served: a client holds a \
             list this CA's store does not (a store restored from a backup, or a forged list)",
            polls_ahead.clone(),
        );
        Metrics {
            registry,
            requests,
            refusals,
            issuances,
            revocations,
            list_seq,
            list_bytes,
            waiters,
            polls_ahead,
        }
    }

    /// Counts one revocation list request whose `after` is above the `seq` served.
    pub(crate) fn poll_ahead(&self) {
        self.polls_ahead.inc();
    }

    /// Sets the gauges read from the service's state at scrape time.
    pub(crate) fn set_state(&self, seq: u64, bytes: u64, waiters: u64) {
        self.list_seq.set(seq);
        self.list_bytes.set(bytes);
        self.waiters.set(waiters);
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Counts one answered request.
    fn record(&self, method: &Method, path: &str, status: StatusCode, refusal: Option<ErrorCode>) {
        let route = route_label(path);
        self.requests
            .get_or_create(&RequestLabels {
                route,
                status: status.as_u16(),
            })
            .inc();
        if let Some(code) = refusal {
            self.refusals
                .get_or_create(&CodeLabels {
                    code: code.as_str(),
                })
                .inc();
        }
        if status != StatusCode::OK || *method != Method::POST {
            return;
        }
        // Each of these routes issues exactly one certificate when it answers 200.
        let kind = match route {
            routes::ENROLL => Some("enroll"),
            routes::TASKS => Some("task"),
            routes::CHILDREN => Some("child"),
            routes::RENEW => Some("renew"),
            _ => None,
        };
        if let Some(kind) = kind {
            self.issuances.get_or_create(&KindLabels { kind }).inc();
        }
        if route == routes::REVOKE {
            self.revocations.inc();
        }
    }
}

/// The route label of a path: one of the CA API's routes, or `other` (so that no caller-chosen
/// path becomes a series).
pub(crate) fn route_label(path: &str) -> &'static str {
    const ROUTES: [&str; 10] = [
        routes::HEALTHZ,
        routes::BUNDLE,
        routes::BUNDLE_AGENTID,
        routes::REVOCATIONS,
        routes::ENROLL,
        routes::TOKENS,
        routes::TASKS,
        routes::CHILDREN,
        routes::RENEW,
        routes::REVOKE,
    ];
    ROUTES.into_iter().find(|r| *r == path).unwrap_or("other")
}

/// Middleware of the service's routers: counts every answered request.
pub(crate) async fn track(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = next.run(req).await;
    let refusal = response.extensions().get::<RefusalCode>().map(|c| c.0);
    m.record(&method, &path, response.status(), refusal);
    response
}

/// The response of `GET /metrics`.
pub(crate) fn scrape(m: &Metrics) -> Response {
    match m.encode() {
        Ok(text) => {
            let mut r = Response::new(Body::from(text));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            r
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_chosen_paths_are_one_label() {
        assert_eq!(route_label("/v1/enroll"), "/v1/enroll");
        assert_eq!(route_label("/v1/enroll/x"), "other");
        assert_eq!(route_label("/../etc/passwd"), "other");
    }

    #[test]
    fn issuing_routes_count_issuances_only_when_answered_ok() {
        let m = Metrics::new();
        m.record(&Method::POST, "/v1/renew", StatusCode::OK, None);
        m.record(
            &Method::POST,
            "/v1/enroll",
            StatusCode::CONFLICT,
            Some(ErrorCode::TokenUsed),
        );
        m.record(&Method::GET, "/v1/tasks", StatusCode::OK, None);
        let text = m.encode().unwrap_or_default();
        assert!(
            text.contains("agentid_ca_issuances_total{kind=\"renew\"} 1"),
            "{text}"
        );
        assert!(!text.contains("kind=\"enroll\""), "{text}");
        assert!(!text.contains("kind=\"task\""), "{text}");
        assert!(
            text.contains("agentid_ca_refusals_total{code=\"token_used\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("agentid_ca_requests_total{route=\"/v1/enroll\",status=\"409\"} 1"),
            "{text}"
        );
    }
}
