//! MCP between agents with agentid (transport feature `mcp`): a tool server on the official Rust
//! SDK `rmcp` (streamable HTTP) behind the agentid HTTP server, each tool requiring a delegated
//! scope and each MCP session bound to the peer that initialized it; an MCP client on the
//! agentid HTTP client.
//!
//! ```sh
//! cargo run -p agentid-transport --features mcp --example mcp_agents
//! ```
//!
//! The example makes a throw-away PKI in memory (`examples/demo/mod.rs`) and serves, on
//! 127.0.0.1, `svc/repo` with the tools `read_file` (scope `repo:read`) and `write_file` (scope
//! `repo:write`). The task `coder/t1`, delegated `repo:read`, calls `read_file` and is refused
//! `write_file`; the task `intruder/t2`, which learned the coder's session id, is refused when it
//! uses it. Stdout carries the transcript; the exit status says whether every step went as
//! described.

pub mod demo;

use std::sync::Arc;
use std::time::Duration;

use agentid_protocol::{Scope, ServiceId, TrustDomain};
use agentid_transport::http::{HttpClient, HttpServer};
use agentid_transport::mcp::rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, InitializeResult,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, Tool,
};
use agentid_transport::mcp::rmcp::service::RequestContext;
use agentid_transport::mcp::rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use agentid_transport::mcp::rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use agentid_transport::mcp::rmcp::{ErrorData, RoleServer, ServerHandler};
use agentid_transport::mcp::{
    authorizer_of, require_scope, McpClient, McpError, McpSessions, FORBIDDEN,
};
use agentid_transport::PeerPolicy;
use anyhow::{bail, Context as _, Result};

const REPO: &str = "spiffe://example.org/svc/repo";
const CODER: &str = "spiffe://example.org/agent/coder/task/t1";
const INTRUDER: &str = "spiffe://example.org/agent/intruder/task/t2";
const HOST: &str = "repo.example.org";

/// The tools and the scope each requires.
const TOOLS: [(&str, &str, &str); 2] = [
    ("read_file", "repo:read", "Reads a file of the repository"),
    (
        "write_file",
        "repo:write",
        "Writes a file of the repository",
    ),
];

/// The MCP server: every tool call first checks the tool's scope against the caller's chain.
#[derive(Clone)]
pub struct RepoTools;

impl ServerHandler for RepoTools {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema = serde_json::json!({
            "type": "object",
            "properties": { "path": { "type": "string" } },
            "required": ["path"],
        });
        let schema = Arc::new(schema.as_object().cloned().unwrap_or_default());
        Ok(ListToolsResult::with_all_items(
            TOOLS
                .iter()
                .map(|(name, _, description)| Tool::new(*name, *description, schema.clone()))
                .collect(),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let Some((_, scope, _)) = TOOLS.iter().find(|(name, ..)| *name == request.name) else {
            return Err(ErrorData::invalid_params("no such tool", None));
        };
        let scope =
            Scope::parse(scope).map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        require_scope(&context, &scope)?;
        let caller = authorizer_of(&context)
            .map(|a| a.peer_id().to_string())
            .unwrap_or_default();
        let path = request
            .arguments
            .as_ref()
            .and_then(|a| a.get("path"))
            .and_then(|p| p.as_str())
            .unwrap_or("");
        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
            "{} {path} for {caller}",
            request.name
        ))])
        .into())
    }
}

fn text_of(result: &serde_json::Value) -> &str {
    result
        .pointer("/content/0/text")
        .and_then(|t| t.as_str())
        .unwrap_or_default()
}

/// The whole demo; an error says which step did not go as described.
pub async fn run() -> Result<()> {
    let domain = demo::Domain::new("example.org")?;
    let td = TrustDomain::parse("example.org")?;

    let manager = Arc::new(LocalSessionManager::default());
    let mcp = StreamableHttpService::new(
        || Ok(RepoTools),
        manager.clone(),
        StreamableHttpServerConfig::default().with_allowed_hosts([HOST]),
    );
    // Sessions whose binding is forgotten (a peer's oldest past its cap) are closed in rmcp.
    let sessions = McpSessions::new(manager);
    let service = tower_layer::Layer::layer(&sessions, mcp);
    let server = HttpServer::builder(
        domain.service(REPO)?,
        domain.verification(REPO)?,
        PeerPolicy::agents_in(td.clone()),
    )
    .build()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { server.serve(listener, service).await });
    println!("repo     | {REPO}: MCP at /mcp on {addr}; read_file needs repo:read, write_file needs repo:write");

    let connect = |who: &str| -> Result<HttpClient> {
        Ok(HttpClient::builder(
            domain.task(who, "repo:read")?,
            domain.verification(who)?,
            PeerPolicy::service(ServiceId::new(&td, "repo")?),
        )
        .connect_timeout(Duration::from_secs(5))
        .build()?)
    };

    let coder = connect(CODER)?;
    let mut mcp = McpClient::initialize(coder.connect(addr, HOST).await?, "/mcp")
        .await
        .context("initialize")?;
    let session = mcp.session_id().context("no session id")?.to_owned();
    println!("coder    | initialized, session bound to {CODER}");
    let tools = mcp.list_tools().await?;
    println!("coder    | tools/list -> {}", tools.join(", "));
    let r = mcp
        .call_tool("read_file", serde_json::json!({ "path": "src/lib.rs" }))
        .await
        .context("read_file")?;
    println!("coder    | read_file -> {}", text_of(&r));
    if !text_of(&r).ends_with(CODER) {
        bail!("unexpected result {r}");
    }
    match mcp
        .call_tool("write_file", serde_json::json!({ "path": "src/lib.rs" }))
        .await
    {
        Err(McpError::Rpc { code, message })
            if code == i64::from(FORBIDDEN) && message == "scope_not_granted" =>
        {
            println!("coder    | write_file -> refused: {message}");
        }
        other => bail!("write_file: unexpected {other:?}"),
    }

    // Another agent of the domain (its own delegated repo:read) with the coder's session id.
    let intruder = connect(INTRUDER)?;
    let mut theirs = McpClient::initialize(intruder.connect(addr, HOST).await?, "/mcp").await?;
    theirs.set_session_id(&session)?;
    match theirs
        .call_tool("read_file", serde_json::json!({ "path": "src/lib.rs" }))
        .await
    {
        Err(McpError::Http { status: 403, code }) if code == "peer_denied" => {
            println!("intruder | read_file in the coder's session -> refused: 403 {code}");
        }
        other => bail!("intruder: unexpected {other:?}"),
    }
    // The coder's session still works for the coder.
    mcp.call_tool("read_file", serde_json::json!({ "path": "README.md" }))
        .await
        .context("read_file again")?;
    println!("done");
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    demo::exit_status("mcp_agents", run()).await
}
