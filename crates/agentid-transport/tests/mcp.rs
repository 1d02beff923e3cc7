//! MCP on the HTTP binding (feature `mcp`): the `mcp_agents` example, then the session binding
//! and the per-tool scopes one by one against the example's tool server.
#![cfg(test)]
#![cfg(feature = "mcp")]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use agentid_protocol::{ServiceId, TrustDomain};
use agentid_transport::http::{HttpClient, HttpServer};
use agentid_transport::mcp::rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use agentid_transport::mcp::rmcp::transport::streamable_http_server::session::{
    EventStore, EventStoreError, EventStream, ServerSseMessage,
};
use agentid_transport::mcp::rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use agentid_transport::mcp::{McpClient, McpError, McpSessions, FORBIDDEN, SESSION_HEADER};
use agentid_transport::{MemoryCredentials, PeerPolicy, PeerVerification};
use axum::response::IntoResponse as _;
use bytes::Bytes;
use example::demo;
use serde_json::json;

#[path = "support/decisions.rs"]
mod decisions;

#[path = "../examples/mcp_agents.rs"]
#[allow(dead_code, reason = "the example's main is not called here")]
mod example;

const REPO: &str = "spiffe://example.org/svc/repo";
const CODER: &str = "spiffe://example.org/agent/coder/task/t1";
const OTHER: &str = "spiffe://example.org/agent/other/task/t2";
const HOST: &str = "repo.example.org";
const T: Duration = Duration::from_secs(10);

struct World {
    domain: demo::Domain,
    td: TrustDomain,
    sessions: McpSessions,
    server_verification: Arc<PeerVerification>,
    decisions: Arc<decisions::Recorder>,
    addr: SocketAddr,
    /// rmcp's own sessions (what each `initialize` creates).
    manager: Arc<LocalSessionManager>,
}

impl World {
    /// Serves the example tools behind [`McpSessions`] on rmcp's session manager, as
    /// `configure` sets them up.
    async fn start(configure: impl FnOnce(McpSessions) -> McpSessions) -> Self {
        Self::start_on(Arc::new(LocalSessionManager::default()), configure).await
    }

    /// As [`World::start`], on `manager` (an event store, say).
    async fn start_on(
        manager: Arc<LocalSessionManager>,
        configure: impl FnOnce(McpSessions) -> McpSessions,
    ) -> Self {
        let domain = demo::Domain::new("example.org").unwrap();
        let td = TrustDomain::parse("example.org").unwrap();
        let mcp = StreamableHttpService::new(
            || Ok(example::RepoTools),
            manager.clone(),
            StreamableHttpServerConfig::default().with_allowed_hosts([HOST]),
        );
        let sessions = configure(McpSessions::new(manager.clone()));
        let service = tower_layer::Layer::layer(&sessions, mcp);
        let server_verification = domain.verification(REPO).unwrap();
        let decisions = Arc::new(decisions::Recorder::default());
        let server = HttpServer::builder(
            domain.service(REPO).unwrap(),
            server_verification.clone(),
            PeerPolicy::agents_in(td.clone()),
        )
        .decision_sink(decisions.clone())
        .build()
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { server.serve(listener, service).await });
        Self {
            domain,
            td,
            sessions,
            server_verification,
            decisions,
            addr,
            manager,
        }
    }

    fn http(&self, creds: Arc<MemoryCredentials>, who: &str) -> HttpClient {
        HttpClient::builder(
            creds,
            self.domain.verification(who).unwrap(),
            PeerPolicy::service(ServiceId::new(&self.td, "repo").unwrap()),
        )
        .connect_timeout(T)
        .build()
        .unwrap()
    }

    async fn mcp(&self, who: &str, scope: &str) -> Result<McpClient, McpError> {
        let http = self.http(self.domain.task(who, scope).unwrap(), who);
        let conn = http.connect(self.addr, HOST).await?;
        tokio::time::timeout(T, McpClient::initialize(conn, "/mcp"))
            .await
            .unwrap()
    }
}

async fn read(c: &mut McpClient) -> Result<serde_json::Value, McpError> {
    tokio::time::timeout(T, c.call_tool("read_file", json!({ "path": "a" })))
        .await
        .unwrap()
}

/// A raw MCP `tools/list` request with these session headers, in order.
fn tools_list(sessions: &[&str]) -> http::Request<Bytes> {
    let mut req = http::Request::post("/mcp");
    for s in sessions {
        req = req.header(SESSION_HEADER, *s);
    }
    req.header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#,
        ))
        .unwrap()
}

fn http_refusal(r: Result<serde_json::Value, McpError>, status: u16, code: &str) {
    match r {
        Err(McpError::Http { status: s, code: c }) => {
            assert_eq!((s, c.as_str()), (status, code));
        }
        other => panic!("expected HTTP {status} {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn the_mcp_agents_example_runs() {
    tokio::time::timeout(Duration::from_secs(60), example::run())
        .await
        .expect("the example finishes")
        .expect("every step of the example goes as described");
}

#[tokio::test]
async fn a_session_is_bound_to_the_peer_that_initialized_it() {
    let w = World::start(|s| s).await;
    let mut coder = w.mcp(CODER, "repo:read").await.unwrap();
    let session = coder.session_id().unwrap().to_owned();
    assert_eq!(w.sessions.owner(&session).unwrap().as_str(), CODER);
    assert!(read(&mut coder).await.is_ok());

    let mut other = w.mcp(OTHER, "repo:read").await.unwrap();
    other.set_session_id(&session).unwrap();
    http_refusal(read(&mut other).await, 403, "peer_denied");
    // Still the coder's, and still working for it.
    assert_eq!(w.sessions.owner(&session).unwrap().as_str(), CODER);
    assert!(read(&mut coder).await.is_ok());
}

/// spec/PROTOCOL.md 22.8: every authorization decision reaches the server's decision sink.
/// Using another peer's MCP session, or one never handed out, is refused by the session
/// binding before any tool runs; both denials reach the sink (`mcp session`, `peer_denied`),
/// so an audit sink sees a peer probing for sessions, and the session id is not in them.
#[tokio::test]
async fn a_refused_session_reaches_the_decision_sink() {
    let w = World::start(|s| s).await;
    let mut coder = w.mcp(CODER, "repo:read").await.unwrap();
    let session = coder.session_id().unwrap().to_owned();
    let mut other = w.mcp(OTHER, "repo:read").await.unwrap();
    other.set_session_id(&session).unwrap();
    http_refusal(read(&mut other).await, 403, "peer_denied");
    coder.set_session_id("0f6a2b1c-made-up").unwrap();
    http_refusal(read(&mut coder).await, 403, "peer_denied");

    let recorded = w.decisions.0.lock().unwrap().clone();
    let denials: Vec<_> = recorded
        .iter()
        .filter(|(resource, granted, _)| resource == "mcp session" && !granted)
        .collect();
    assert_eq!(denials.len(), 2, "{recorded:?}");
    assert!(
        denials
            .iter()
            .all(|(_, _, code)| *code == Some("peer_denied")),
        "{recorded:?}"
    );
    assert!(
        !recorded
            .iter()
            .any(|(resource, _, _)| resource.contains(&session)),
        "a decision names the session id: {recorded:?}"
    );
}

/// spec/PROTOCOL.md 22.8, the other half: a request in the peer's own session is a granted
/// decision on the session binding and reaches the sink as one (`mcp session`, granted), so an
/// audit sink sees every use of a session, not only the refused ones.
#[tokio::test]
async fn a_request_in_the_peers_own_session_reaches_the_decision_sink_as_a_grant() {
    let w = World::start(|s| s).await;
    let mut coder = w.mcp(CODER, "repo:read").await.unwrap();
    let before = w.decisions.0.lock().unwrap().len();
    assert!(read(&mut coder).await.is_ok());
    let recorded = w.decisions.0.lock().unwrap().clone();
    let grants = recorded[before..]
        .iter()
        .filter(|(resource, granted, code)| resource == "mcp session" && *granted && code.is_none())
        .count();
    assert_eq!(grants, 1, "{recorded:?}");
}

#[tokio::test]
async fn a_session_id_never_handed_out_is_refused() {
    let w = World::start(|s| s).await;
    let mut coder = w.mcp(CODER, "repo:read").await.unwrap();
    coder.set_session_id("0f6a2b1c-made-up").unwrap();
    http_refusal(read(&mut coder).await, 403, "peer_denied");
}

#[tokio::test]
async fn another_peer_cannot_delete_a_session_and_the_owner_can() {
    let w = World::start(|s| s).await;
    let coder = w.mcp(CODER, "repo:read").await.unwrap();
    let session = coder.session_id().unwrap().to_owned();
    let delete = |session: &str| {
        http::Request::delete("/mcp")
            .header(SESSION_HEADER, session)
            .header("mcp-protocol-version", "2025-06-18")
            .body(Bytes::new())
            .unwrap()
    };
    let other = w.http(w.domain.task(OTHER, "repo:read").unwrap(), OTHER);
    let mut conn = other.connect(w.addr, HOST).await.unwrap();
    let resp = conn.send(delete(&session)).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(w.sessions.owner(&session).is_some());

    let mine = w.http(w.domain.task(CODER, "repo:read").unwrap(), CODER);
    let mut conn = mine.connect(w.addr, HOST).await.unwrap();
    let resp = conn.send(delete(&session)).await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    assert!(w.sessions.owner(&session).is_none());
}

#[tokio::test]
async fn a_tool_outside_the_delegated_scope_is_refused_with_its_code() {
    let w = World::start(|s| s).await;
    let mut coder = w.mcp(CODER, "repo:read").await.unwrap();
    match coder.call_tool("write_file", json!({ "path": "a" })).await {
        Err(McpError::Rpc { code, message }) => {
            assert_eq!(code, i64::from(FORBIDDEN));
            assert_eq!(message, "scope_not_granted");
        }
        other => panic!("{other:?}"),
    }
    let mut writer = w.mcp(OTHER, "repo:write").await.unwrap();
    assert!(writer
        .call_tool("write_file", json!({ "path": "a" }))
        .await
        .is_ok());
}

#[tokio::test]
async fn a_caller_without_a_chain_holds_no_tool() {
    let w = World::start(|s| s).await;
    let (cred, _) = w.domain.credential(CODER).unwrap();
    let http = w.http(Arc::new(MemoryCredentials::new(cred)), CODER);
    let conn = http.connect(w.addr, HOST).await.unwrap();
    let mut c = McpClient::initialize(conn, "/mcp").await.unwrap();
    match read(&mut c).await {
        Err(McpError::Rpc { code, message }) => {
            assert_eq!(
                (code, message.as_str()),
                (i64::from(FORBIDDEN), "scope_not_granted")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn revocation_ends_the_session_for_its_peer() {
    let w = World::start(|s| s).await;
    let mut coder = w.mcp(CODER, "repo:read").await.unwrap();
    let session = coder.session_id().unwrap().to_owned();
    assert!(read(&mut coder).await.is_ok());
    w.server_verification
        .apply_revocation_list(&w.domain.revocation_list(&[CODER]).unwrap())
        .unwrap();
    match read(&mut coder).await {
        Ok(r) => panic!("allowed after revocation: {r}"),
        Err(McpError::Http { status, code }) => {
            assert_eq!((status, code.as_str()), (401, "revoked"))
        }
        Err(McpError::Transport(_)) => {} // the server already closed the connection
        Err(e) => panic!("{e}"),
    }
    // A new connection of the revoked task cannot resume the session either.
    let http = w.http(w.domain.task(CODER, "repo:read").unwrap(), CODER);
    let answer = match http.connect(w.addr, HOST).await {
        Err(e) => format!("connect refused: {e}"),
        Ok(mut conn) => match conn.send(tools_list(&[session.as_str()])).await {
            Err(e) => format!("closed: {e}"),
            Ok(resp) => resp.status().to_string(),
        },
    };
    assert!(
        answer.starts_with("connect refused")
            || answer.starts_with("closed")
            || answer.starts_with("401"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_peer_holds_a_bounded_number_of_sessions_and_the_server_too() {
    let w = World::start(|s| s.max_sessions_per_peer(1).max_sessions(2)).await;
    let first = w.mcp(CODER, "repo:read").await.unwrap();
    let old = first.session_id().unwrap().to_owned();
    let mut second = w.mcp(CODER, "repo:read").await.unwrap();
    // The coder's oldest session was forgotten, and is refused from now on.
    assert!(w.sessions.owner(&old).is_none());
    assert!(read(&mut second).await.is_ok());
    let mut again = w.mcp(CODER, "repo:read").await.unwrap();
    again.set_session_id(&old).unwrap();
    http_refusal(read(&mut again).await, 403, "peer_denied");
    // Two sessions bound (one per peer at most): a third initialize is busy.
    let _other = w.mcp(OTHER, "repo:read").await.unwrap();
    match w
        .mcp("spiffe://example.org/agent/third/task/t3", "repo:read")
        .await
    {
        Err(McpError::Http { status, code }) => assert_eq!((status, code.as_str()), (503, "busy")),
        other => panic!("{:?}", other.map(|c| c.session_id().map(str::to_owned))),
    }
}

#[tokio::test]
async fn an_idle_binding_is_forgotten_and_frees_its_place() {
    // Idle timeout zero: every binding is stale as soon as it is made (no clock games).
    let w = World::start(|s| s.idle_timeout(Duration::ZERO).max_sessions(1)).await;
    // The session given by `initialize` is already forgotten when the client confirms it.
    http_refusal(
        w.mcp(CODER, "repo:read").await.map(|_| json!(null)),
        403,
        "peer_denied",
    );
    // The full table was purged of the stale binding: the next initialize is not `busy`.
    http_refusal(
        w.mcp(OTHER, "repo:read").await.map(|_| json!(null)),
        403,
        "peer_denied",
    );
}

#[tokio::test]
async fn two_session_headers_are_refused_before_the_mcp_service() {
    let w = World::start(|s| s).await;
    let coder = w.mcp(CODER, "repo:read").await.unwrap();
    let mine = coder.session_id().unwrap().to_owned();
    let other = w.mcp(OTHER, "repo:read").await.unwrap();
    let theirs = other.session_id().unwrap().to_owned();
    let http = w.http(w.domain.task(CODER, "repo:read").unwrap(), CODER);
    let mut conn = http.connect(w.addr, HOST).await.unwrap();
    // Whichever header a later layer would read, the request never gets there.
    for (a, b) in [(&mine, &theirs), (&theirs, &mine)] {
        let resp = conn
            .send(tools_list(&[a.as_str(), b.as_str()]))
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
    }
}

/// The per-peer and server caps of [`McpSessions`] bound what a peer holds, not only the table
/// of bindings: a session whose binding is forgotten to make room (the peer's oldest) is closed
/// in rmcp too. Otherwise one peer that calls `initialize` again and again leaves every session
/// it opened alive in rmcp's session manager (a task, its handler and its channels each) until
/// rmcp's keep-alive (5 minutes), past any cap: the server cap counts bindings only, so it
/// never refuses that peer either.
#[tokio::test]
async fn sessions_whose_binding_is_evicted_do_not_stay_open_in_rmcp() {
    let w = World::start(|s| s.max_sessions_per_peer(2).max_sessions(4)).await;
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(w.mcp(CODER, "repo:read").await.unwrap());
    }
    // rmcp closes a session asynchronously: bounded wait for it to settle at the cap.
    let mut open = usize::MAX;
    for _ in 0..50 {
        open = w.manager.sessions.read().await.len();
        if open <= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        open <= 4,
        "{open} rmcp sessions are open for one peer (per-peer cap 2, server cap 4)"
    );
}

/// One agent's tasks are distinct peers, each under its own per-peer cap: an agent that opens
/// many tasks (a service opens them for it) would fill the server's table with sessions of its
/// tasks and every other peer's `initialize` would be `busy`. The tasks of one agent together
/// hold at most their agent's share; the others keep their places.
#[tokio::test]
async fn one_agent_with_many_tasks_leaves_room_in_the_session_table_for_the_others() {
    let w = World::start(|s| s.max_sessions_per_peer(1).max_sessions(8)).await;
    let mut held = Vec::new();
    let mut busy = 0;
    for t in 0..8 {
        match w
            .mcp(
                &format!("spiffe://example.org/agent/coder/task/m{t}"),
                "repo:read",
            )
            .await
        {
            Ok(c) => held.push(c),
            Err(McpError::Http { status: 503, code }) if code == "busy" => busy += 1,
            Err(e) => panic!("task m{t}: {e}"),
        }
    }
    assert!(
        !held.is_empty() && busy > 0,
        "{} held, {busy} busy",
        held.len()
    );
    // Another agent still gets a session, and a task of the capped agent that already holds
    // one may replace it (its oldest makes room).
    let mut other = w.mcp(OTHER, "repo:read").await.unwrap();
    assert!(read(&mut other).await.is_ok());
    let mut again = w
        .mcp("spiffe://example.org/agent/coder/task/m0", "repo:read")
        .await
        .unwrap();
    assert!(read(&mut again).await.is_ok());
}

/// An rmcp event store (what a server configures so that streams resume across connections and
/// replicas) handing out sequential event ids, as a database sequence or a Redis stream does: an
/// id names one stream's place, whichever session the stream belongs to.
#[derive(Default)]
struct SequentialEvents(std::sync::Mutex<Vec<(String, ServerSseMessage)>>);

impl EventStore for SequentialEvents {
    fn store_event<'a, 'b, 'c, 'async_trait>(
        &'a self,
        stream_id: &'b str,
        event: &'c ServerSseMessage,
    ) -> Pin<Box<dyn Future<Output = Result<String, EventStoreError>> + Send + 'async_trait>>
    where
        'a: 'async_trait,
        'b: 'async_trait,
        'c: 'async_trait,
        Self: 'async_trait,
    {
        let mut events = self.0.lock().unwrap();
        let id = (events.len() + 1).to_string();
        let mut event = event.clone();
        event.event_id = Some(id.clone());
        events.push((stream_id.to_owned(), event));
        Box::pin(std::future::ready(Ok(id)))
    }

    fn replay_events_after<'a, 'b, 'async_trait>(
        &'a self,
        last_event_id: &'b str,
    ) -> Pin<Box<dyn Future<Output = Result<EventStream, EventStoreError>> + Send + 'async_trait>>
    where
        'a: 'async_trait,
        'b: 'async_trait,
        Self: 'async_trait,
    {
        let events = self.0.lock().unwrap();
        let after: Vec<ServerSseMessage> = last_event_id
            .parse::<usize>()
            .ok()
            .and_then(|n| events.get(n.checked_sub(1)?).map(|(s, _)| (n, s.clone())))
            .map(|(n, stream)| {
                events
                    .iter()
                    .skip(n)
                    .filter(|(s, _)| *s == stream)
                    .map(|(_, e)| e.clone())
                    .collect()
            })
            .unwrap_or_default();
        let stream: EventStream = Box::pin(tokio_stream::iter(after));
        Box::pin(std::future::ready(Ok(stream)))
    }
}

/// A GET resuming a stream (`Last-Event-ID`): in `session` (MCP 2025-06-18), or without one
/// (MCP 2026-07-28, which has no sessions: rmcp resumes such a stream statelessly).
fn resume(session: Option<&str>, last_event_id: &str) -> http::Request<Bytes> {
    let version = if session.is_some() {
        "2025-06-18"
    } else {
        "2026-07-28"
    };
    let mut req = http::Request::get("/mcp")
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", version)
        .header("last-event-id", last_event_id);
    if let Some(s) = session {
        req = req.header(SESSION_HEADER, s);
    }
    req.body(Bytes::new()).unwrap()
}

/// Whatever a response body carries within a bounded wait.
async fn body_text(resp: agentid_transport::http::HttpResponse) -> String {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(
        Duration::from_secs(2),
        http_body_util::BodyExt::frame(&mut body),
    )
    .await
    {
        if let Some(d) = frame.data_ref() {
            out.extend_from_slice(d);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// With an event store, rmcp resumes a stream by its event id alone (`Last-Event-ID`),
/// whichever session the GET names, or none: the id, not the session, finds the stream. A peer
/// that learns or guesses another peer's event id must not read that peer's tool results by
/// resuming its stream, in its own session or in none; the peer the events were delivered to
/// still resumes them.
#[tokio::test]
async fn a_peer_cannot_resume_another_peers_stream_by_its_event_id() {
    let store = Arc::new(SequentialEvents::default());
    let manager = LocalSessionManager::default().with_event_store(store.clone());
    let w = World::start_on(Arc::new(manager), |s| s).await;
    let mut coder = w.mcp(CODER, "repo:read").await.unwrap();
    let coders = coder.session_id().unwrap().to_owned();
    let result = read(&mut coder).await.unwrap().to_string();
    assert!(result.contains(CODER), "{result}");
    // The first event of the coder's stream that holds its tool result (stream ids are the
    // store's business, not the session's).
    let first = {
        let events = store.0.lock().unwrap();
        let holds = |stream: &str| {
            events.iter().any(|(s, e)| {
                s == stream
                    && e.message
                        .as_ref()
                        .is_some_and(|m| serde_json::to_string(m).unwrap().contains(CODER))
            })
        };
        let i = events
            .iter()
            .position(|(s, _)| holds(s))
            .expect("the coder's tool result was stored");
        (i + 1).to_string()
    };

    let other = w.mcp(OTHER, "repo:read").await.unwrap();
    let others = other.session_id().unwrap().to_owned();
    let http = w.http(w.domain.task(OTHER, "repo:read").unwrap(), OTHER);
    let mut conn = http.connect(w.addr, HOST).await.unwrap();
    for session in [Some(others.as_str()), None] {
        let resp = conn.send(resume(session, &first)).await.unwrap();
        let status = resp.status();
        let text = body_text(resp).await;
        assert!(
            !text.contains(CODER),
            "session {session:?}: {status} replayed the coder's events: {text}"
        );
        assert_eq!(status, 403, "session {session:?}: {text}");
        assert!(text.contains("peer_denied"), "{text}");
    }

    // The coder resumes its own stream.
    let http = w.http(w.domain.task(CODER, "repo:read").unwrap(), CODER);
    let mut conn = http.connect(w.addr, HOST).await.unwrap();
    let resp = conn.send(resume(Some(&coders), &first)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = body_text(resp).await;
    assert!(text.contains(CODER), "{text}");
}

/// A hostile tool server presenting the repo's certificate: every POST to `/mcp` is answered
/// with `answer`, as JSON or (`sse`) as one server-sent event.
async fn hostile_repo(domain: &demo::Domain, answer: serde_json::Value, sse: bool) -> SocketAddr {
    let td = TrustDomain::parse("example.org").unwrap();
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(move || {
            let answer = answer.clone();
            async move {
                if sse {
                    let body = format!("data: {answer}\n\n");
                    ([("content-type", "text/event-stream")], body).into_response()
                } else {
                    axum::Json(answer).into_response()
                }
            }
        }),
    );
    serve_as_repo(domain, td, app).await
}

/// `app` served on 127.0.0.1 with the repo's certificate, to agents of `td`.
async fn serve_as_repo(domain: &demo::Domain, td: TrustDomain, app: axum::Router) -> SocketAddr {
    let server = HttpServer::builder(
        domain.service(REPO).unwrap(),
        domain.verification(REPO).unwrap(),
        PeerPolicy::agents_in(td),
    )
    .build()
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { server.serve(listener, app).await });
    addr
}

/// The coder's HTTP connection to the repo at `addr`.
async fn coder_connection(
    domain: &demo::Domain,
    addr: SocketAddr,
) -> Result<agentid_transport::http::HttpClientConnection, agentid_transport::Error> {
    let td = TrustDomain::parse("example.org").unwrap();
    HttpClient::builder(
        domain.task(CODER, "repo:read").unwrap(),
        domain.verification(CODER).unwrap(),
        PeerPolicy::service(ServiceId::new(&td, "repo").unwrap()),
    )
    .connect_timeout(T)
    .build()
    .unwrap()
    .connect(addr, HOST)
    .await
}

/// The coder initializes an MCP session with the server at `addr` (bounded).
async fn initialize_with(domain: &demo::Domain, addr: SocketAddr) -> Result<McpClient, McpError> {
    let conn = coder_connection(domain, addr).await?;
    tokio::time::timeout(T, McpClient::initialize(conn, "/mcp"))
        .await
        .unwrap()
}

/// A JSON-RPC error message is the server's text: a MiB of forged log lines and terminal
/// escapes reached the error (and every log line showing it) as they were.
#[tokio::test]
async fn a_json_rpc_error_message_from_the_server_is_shown_bounded_and_without_control_characters()
{
    let domain = demo::Domain::new("example.org").unwrap();
    let message = format!(
        "x\n2026-12-06T07:00:00Z INFO forged: all checks passed\u{1b}[2J{}",
        "y".repeat(500_000)
    );
    for sse in [false, true] {
        let answer = json!({
            "jsonrpc": "2.0", "id": 1,
            "error": { "code": -32000, "message": message },
        });
        let addr = hostile_repo(&domain, answer, sse).await;
        match initialize_with(&domain, addr).await {
            Ok(c) => panic!("sse {sse}: initialized: {:?}", c.server_info()),
            Err(e @ McpError::Rpc { .. }) => {
                let shown = e.to_string();
                assert!(
                    shown.len() <= 1200,
                    "sse {sse}: {} bytes shown",
                    shown.len()
                );
                assert!(!shown.chars().any(char::is_control), "sse {sse}: {shown:?}");
            }
            Err(e) => panic!("sse {sse}: {e}"),
        }
    }
}

/// JSON-RPC 2.0: a response carries its request's id. An answer under another id (a number, the
/// same number as a string, `null`) is not the answer to this request, as JSON or as an event.
#[tokio::test]
async fn a_json_rpc_response_under_another_id_is_refused() {
    let domain = demo::Domain::new("example.org").unwrap();
    for sse in [false, true] {
        for id in [json!(7), json!("1"), serde_json::Value::Null] {
            let answer = json!({
                "jsonrpc": "2.0", "id": id,
                "result": { "protocolVersion": "2025-06-18", "capabilities": {},
                            "serverInfo": { "name": "not yours", "version": "1" } },
            });
            let addr = hostile_repo(&domain, answer, sse).await;
            match initialize_with(&domain, addr).await {
                Ok(c) => panic!("sse {sse}, id {id}: initialized: {:?}", c.server_info()),
                Err(McpError::Malformed(_)) => {}
                Err(e) => panic!("sse {sse}, id {id}: {e}"),
            }
        }
    }
}

/// An endless event stream of comments, one a tick.
struct Pings(tokio::time::Interval);

impl tokio_stream::Stream for Pings {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0
            .poll_tick(cx)
            .map(|_| Some(Ok(Bytes::from_static(b": ping\n\n"))))
    }
}

/// A server-sent event stream that never carries the answer (a comment every few milliseconds,
/// far below the size cap) held the request until the connection's certificates neared their
/// end (hours).
#[tokio::test]
async fn an_event_stream_that_never_carries_the_answer_times_out() {
    let domain = demo::Domain::new("example.org").unwrap();
    let td = TrustDomain::parse("example.org").unwrap();
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(|| async {
            let pings = Pings(tokio::time::interval(Duration::from_millis(10)));
            (
                [("content-type", "text/event-stream")],
                axum::body::Body::from_stream(pings),
            )
                .into_response()
        }),
    );
    let addr = serve_as_repo(&domain, td, app).await;
    let conn = coder_connection(&domain, addr).await.unwrap();
    let r = tokio::time::timeout(
        T,
        McpClient::initialize_within(conn, "/mcp", Duration::from_millis(300)),
    )
    .await
    .expect("the client gave up by itself");
    match r {
        Ok(c) => panic!("initialized: {:?}", c.server_info()),
        Err(McpError::Transport(e)) => assert_eq!(e.reason(), "response_timeout", "{e}"),
        Err(e) => panic!("{e}"),
    }
}

/// An MCP server (a peer the client's policy admits, compromised or faulty) answering in
/// server-sent events cut into one-byte pieces made the client search its whole buffer again
/// for each piece: a 256 KiB answer cost it about 2^36 byte comparisons, minutes of CPU per
/// call. The answer is now read at the cost of its length (a bound far above that).
#[tokio::test]
async fn an_event_stream_answer_in_one_byte_pieces_is_read_at_the_cost_of_its_length() {
    use axum::response::IntoResponse as _;

    const PADDING: usize = 256 * 1024;
    async fn mcp(body: Bytes) -> axum::response::Response {
        let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let Some(id) = req.get("id").cloned() else {
            // A notification.
            return http::StatusCode::ACCEPTED.into_response();
        };
        let answer = json!({
            "jsonrpc": "2.0",
            "id": id,
            "result": { "padding": "x".repeat(PADDING) },
        });
        let event = format!("data: {answer}\n\n").into_bytes();
        let pieces = tokio_stream::iter(
            event
                .into_iter()
                .map(|b| Ok::<_, std::convert::Infallible>(Bytes::from(vec![b]))),
        );
        (
            [(http::header::CONTENT_TYPE, "text/event-stream")],
            axum::body::Body::from_stream(pieces),
        )
            .into_response()
    }

    let domain = demo::Domain::new("example.org").unwrap();
    let td = TrustDomain::parse("example.org").unwrap();
    let server = HttpServer::builder(
        domain.service(REPO).unwrap(),
        domain.verification(REPO).unwrap(),
        PeerPolicy::agents_in(td.clone()),
    )
    .build()
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/mcp", axum::routing::post(mcp));
    tokio::spawn(async move { server.serve(listener, app).await });

    for h1 in [true, false] {
        let mut b = HttpClient::builder(
            domain.task(CODER, "repo:read").unwrap(),
            domain.verification(CODER).unwrap(),
            PeerPolicy::service(ServiceId::new(&td, "repo").unwrap()),
        )
        .connect_timeout(T);
        if h1 {
            b = b.http1_only();
        }
        let conn = b.build().unwrap().connect(addr, HOST).await.unwrap();
        let c = tokio::time::timeout(Duration::from_secs(60), McpClient::initialize(conn, "/mcp"))
            .await
            .expect("the answer is read within a minute")
            .unwrap();
        let padding = c.server_info()["padding"].as_str().unwrap();
        assert_eq!(padding.len(), PADDING, "h1={h1}");
    }
}

/// MCP's streamable HTTP lets a server send its own JSON-RPC requests and notifications on the
/// event stream before the response; a server request numbers its ids in the server's own
/// space, so it may carry the very id of the client's request. It is not the answer (it has a
/// `method`, no `result` or `error`): a healthy server's `ping` with id 1 before its answer to
/// the client's `initialize` (id 1) failed the call as a response without result.
#[tokio::test]
async fn a_server_request_on_the_event_stream_under_the_clients_id_is_not_taken_as_the_answer() {
    let domain = demo::Domain::new("example.org").unwrap();
    let td = TrustDomain::parse("example.org").unwrap();
    async fn mcp(body: Bytes) -> axum::response::Response {
        let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let Some(id) = req.get("id").cloned() else {
            // A notification.
            return http::StatusCode::ACCEPTED.into_response();
        };
        let ping = json!({ "jsonrpc": "2.0", "id": id, "method": "ping" });
        let progress = json!({
            "jsonrpc": "2.0", "method": "notifications/progress",
            "params": { "progressToken": 1, "progress": 1 },
        });
        let answer = json!({
            "jsonrpc": "2.0", "id": id,
            "result": { "protocolVersion": "2025-06-18", "capabilities": {},
                        "serverInfo": { "name": "repo", "version": "1" } },
        });
        let body = format!("data: {ping}\n\ndata: {progress}\n\ndata: {answer}\n\n");
        ([("content-type", "text/event-stream")], body).into_response()
    }
    let app = axum::Router::new().route("/mcp", axum::routing::post(mcp));
    let addr = serve_as_repo(&domain, td, app).await;
    let c = initialize_with(&domain, addr).await.unwrap();
    assert_eq!(c.server_info()["serverInfo"]["name"], "repo");
}
