//! A2A (protocol 0.3.0) between agents with agentid (transport features `a2a` and `axum`): an
//! A2A agent whose card keeps the standard `mutualTLS` scheme and carries its SPIFFE identity in
//! an `AgentExtension`, and a client that expects an identity from its own configuration and
//! checks both the mTLS peer and the card against it before sending a message.
//!
//! ```sh
//! cargo run -p agentid-transport --features a2a,axum --example a2a_agents
//! ```
//!
//! The example makes a throw-away PKI in memory (`examples/demo/mod.rs`) and runs, on
//! 127.0.0.1: the agent `svc/planner` (card at `/.well-known/agent-card.json`, JSON-RPC
//! `message/send` at `/a2a` requiring the delegated scope `planner:plan`); a second server,
//! `svc/impostor`, whose card claims to be `svc/planner` and names a "bundle endpoint". The task
//! `coder/t1` (delegated `planner:plan`) talks to the planner; the impostor is refused because
//! its mTLS identity is not the configured one, and its bundle endpoint is never contacted.
//! Stdout carries the transcript; the exit status says whether every step went as described.

pub mod demo;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agentid_protocol::{Scope, SpiffeId, TrustDomain};
use agentid_transport::a2a::{
    identity_extension, mutual_tls_scheme, A2aClient, AgentCard, A2A_PROTOCOL_VERSION,
    AGENT_CARD_PATH,
};
use agentid_transport::http::{Authorizer, HttpClient, HttpServer, RequireScope};
use agentid_transport::{MemoryCredentials, PeerPolicy};
use anyhow::{bail, Result};
use axum::handler::Handler as _;
use axum::routing::{get, post};
use axum::{Json, Router};

const PLANNER: &str = "spiffe://example.org/svc/planner";
const IMPOSTOR: &str = "spiffe://example.org/svc/impostor";
const CODER: &str = "spiffe://example.org/agent/coder/task/t1";

/// A2A `message/send` over JSON-RPC: answers with one text part naming the caller.
async fn message_send(
    a: Authorizer,
    Json(req): Json<serde_json::Value>,
) -> Json<serde_json::Value> {
    let id = req.get("id").cloned().unwrap_or(serde_json::Value::Null);
    if req.get("method").and_then(|m| m.as_str()) != Some("message/send") {
        return Json(serde_json::json!({
            "jsonrpc": "2.0", "id": id,
            "error": { "code": -32601, "message": "Method not found" },
        }));
    }
    let text = req
        .pointer("/params/message/parts/0/text")
        .and_then(|t| t.as_str())
        .unwrap_or("");
    Json(serde_json::json!({
        "jsonrpc": "2.0", "id": id,
        "result": {
            "kind": "message", "role": "agent", "messageId": "r1",
            "parts": [{ "kind": "text", "text": format!("plan for {:?}, asked by {}", text, a.peer_id()) }],
        },
    }))
}

/// Serves an A2A agent presenting `creds`, publishing `card`, on 127.0.0.1.
async fn serve_agent(
    creds: Arc<MemoryCredentials>,
    verification: Arc<agentid_transport::PeerVerification>,
    td: &TrustDomain,
    card: AgentCard,
) -> Result<SocketAddr> {
    let card = Arc::new(card);
    let app = Router::new()
        .route(
            AGENT_CARD_PATH,
            get(move || {
                let card = card.clone();
                async move { Json((*card).clone()) }
            }),
        )
        .route(
            "/a2a",
            post(message_send.layer(RequireScope::new(Scope::parse("planner:plan")?))),
        );
    let server =
        HttpServer::builder(creds, verification, PeerPolicy::agents_in(td.clone())).build()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { server.serve(listener, app).await });
    Ok(addr)
}

fn card_for(id: &SpiffeId, bundle_endpoint: Option<&str>) -> AgentCard {
    AgentCard::new(
        "planner",
        "Plans work for coding agents",
        "https://planner.example.org/a2a",
        "1.0.0",
    )
    .security_scheme(
        "agentid",
        mutual_tls_scheme("X509-SVID of the agent named in the agentid extension"),
    )
    .extension(identity_extension(id, bundle_endpoint))
    .skill(
        "plan",
        "Plan",
        "Turns a goal into steps (scope planner:plan)",
    )
}

/// The whole demo; an error says which step did not go as described.
pub async fn run() -> Result<()> {
    let domain = demo::Domain::new("example.org")?;
    let td = TrustDomain::parse("example.org")?;
    let planner_id = SpiffeId::parse(PLANNER)?;

    let planner = serve_agent(
        domain.service(PLANNER)?,
        domain.verification(PLANNER)?,
        &td,
        card_for(&planner_id, None),
    )
    .await?;
    println!("planner  | {PLANNER}: A2A {A2A_PROTOCOL_VERSION} card at {AGENT_CARD_PATH}, message/send at /a2a (needs planner:plan), on {planner}");

    // The impostor is a genuine member of the trust domain, but not the planner: its card
    // claims the planner's identity and names a bundle endpoint (a listener that counts visits).
    let bundle_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    bundle_listener.set_nonblocking(true)?;
    let bundle_url = format!("https://{}/bundle.json", bundle_listener.local_addr()?);
    let impostor = serve_agent(
        domain.service(IMPOSTOR)?,
        domain.verification(IMPOSTOR)?,
        &td,
        card_for(&planner_id, Some(&bundle_url)),
    )
    .await?;
    println!(
        "impostor | {IMPOSTOR}: card claims {PLANNER}, bundle endpoint {bundle_url}, on {impostor}"
    );

    // The client's configuration names the agent it wants; TLS admits services of the domain,
    // and the A2A client checks the exact identity itself.
    let http = HttpClient::builder(
        domain.task(CODER, "planner:plan")?,
        domain.verification(CODER)?,
        PeerPolicy::services_in(td.clone()),
    )
    .connect_timeout(Duration::from_secs(5))
    .build()?;
    let a2a = A2aClient::new(http, planner_id.clone());

    let mut conn = a2a.connect(planner, "planner.example.org").await?;
    println!(
        "coder    | card of {} checked: {} (A2A {})",
        conn.http().peer().info.id,
        conn.card().name,
        conn.card().protocol_version
    );
    let reply = conn.send_text("/a2a", "ship release 1.2").await?;
    let text = reply
        .pointer("/parts/0/text")
        .and_then(|t| t.as_str())
        .unwrap_or_default();
    println!("coder    | message/send -> {text}");
    if !text.ends_with(CODER) {
        bail!("unexpected reply {reply}");
    }

    match a2a.connect(impostor, "planner.example.org").await {
        Ok(_) => bail!("the impostor was accepted"),
        Err(e) if e.code() == "peer_mismatch" => {
            println!("coder    | impostor refused: {} ({e})", e.code())
        }
        Err(e) => bail!("impostor: unexpected refusal {e}"),
    }
    match bundle_listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            println!("coder    | the bundle endpoint named in the card was never contacted");
        }
        Ok(_) => bail!("the bundle endpoint was contacted"),
        Err(e) => bail!("bundle listener: {e}"),
    }
    println!("done");
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    demo::exit_status("a2a_agents", run()).await
}
