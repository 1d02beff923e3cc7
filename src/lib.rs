//! agentid: per-task mTLS identities and delegation chains for AI agents.
//!
//! This facade re-exports the workspace crates, and `files` is the credential directory that
//! `agentid cert issue` writes and agents that run as their own processes load: its file names,
//! its key-file rule and its loading. [`fs`] does every file read and write of agentid.
//!
//! ## Features
//!
//! | feature | what | default |
//! |---|---|---|
//! | `ca` | `agentid::ca`: the certificate authority (rcgen, SQLite, toml) | yes |
//! | `transport` | `agentid::transport` (mTLS between agents) and `agentid::files` | yes |
//! | `http`, `tonic`, `a2a`, `mcp` | the HTTP binding and the agent protocols on it | no |
//! | `enroll` | clients of the CA service: enrollment, `Enroller`, `RevocationWatcher` | no |
//! | `ca-server` | the CA service (`agentid ca serve`) | no |
//!
//! [`protocol`] and [`fs`] are always there. An agent that only connects and serves depends on
//! `agentid` with `default-features = false, features = ["transport"]`: no SQLite, no rcgen.
//!
//! The other crates' front pages open with examples of their own: `agentid_protocol` (a chain
//! delegated, verified, authorized and revoked, without I/O), `agentid_transport` (revocation
//! lists applied to live trust state) and `agentid_ca` (issuance and renewal).
#![cfg_attr(
    all(feature = "ca", feature = "transport"),
    doc = r###"
## Embedding: a server agent and a client agent over mTLS

A CA made in a directory issues each agent a per-task certificate for a key the agent generated
(the CA sees only its public half) and a root grant of the task's scope. The librarian serves;
the coder connects over mutual TLS 1.3 on 127.0.0.1, presents its grant, and the librarian
authorizes each request against it.

```
use std::sync::Arc;
use std::time::SystemTime;

use agentid::ca::{
    init_ca, CertificateAuthority, InitOptions, KeySource, OpenTaskRequest, Policy, TaskRequester,
};
use agentid::protocol::{
    Algorithm, BundleSet, Scope, TaskIdentity, TaskKey, TrustDomain, VerifierConfig,
};
use agentid::transport::{
    accept_tcp, AgentClient, AgentServer, Credential, MemoryCredentials, PeerPolicy,
    PeerVerification,
};
use tokio::net::TcpListener;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const POLICY: &str = r##"
[agents.librarian]
scopes = ["repo:serve"]
requesters = ["operator"]

[agents.coder]
scopes = ["repo:read"]
requesters = ["operator"]
"##;

/// Opens a task for agent `name`: a fresh key, its certificate and the grant of `scope`.
fn open_task(
    ca: &CertificateAuthority,
    name: &str,
    scope: &str,
) -> Result<(Credential, TaskIdentity)> {
    let key = TaskKey::generate(Algorithm::Es256)?;
    let spki = KeySource::Spki(key.public_key().to_spki_der());
    let req = OpenTaskRequest::new(name, spki, TaskRequester::Operator, Scope::parse(scope)?);
    let task = ca.open_task(&req, SystemTime::now())?;
    let certs = vec![
        task.certificate.leaf.der.clone().into(),
        task.certificate.intermediate_der.clone().into(),
    ];
    let credential = Credential::new(certs, key)?.with_chain(task.grant.as_str());
    Ok((credential, task.identity))
}

/// What `own` trusts: the CA's bundle and its current revocation list (required: fail closed).
fn verification(ca: &CertificateAuthority, own: &TaskIdentity) -> Result<Arc<PeerVerification>> {
    let mut bundles = BundleSet::new();
    bundles.insert(ca.trust_bundle()?)?;
    let mut config = VerifierConfig::new(own.as_spiffe_id().clone(), bundles);
    config.apply_revocation_list(&ca.revocation_list(SystemTime::now())?)?;
    Ok(PeerVerification::new(config)?)
}

#[tokio::main]
async fn main() -> Result<()> {
    // The CA, in a directory of its own (here a temporary one).
    let dir = tempfile::tempdir()?;
    let td = TrustDomain::parse("example.org")?;
    init_ca(dir.path(), &InitOptions::new(td.clone()), SystemTime::now())?;
    let mut ca = CertificateAuthority::open(dir.path())?;
    ca.set_policy(Policy::from_toml(POLICY)?);
    let (librarian, librarian_id) = open_task(&ca, "librarian", "repo:serve")?;
    let (coder, coder_id) = open_task(&ca, "coder", "repo:read")?;

    // The librarian admits the agents of its trust domain and authorizes every request.
    let server = AgentServer::builder(
        Arc::new(MemoryCredentials::new(librarian)),
        verification(&ca, &librarian_id)?,
        PeerPolicy::agents_in(td),
    )
    .build()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let (tcp, from) = accept_tcp(&listener).await;
        let mut session = server.accept_from(tcp, Some(from)).await?;
        while let Some(request) = session.recv().await? {
            let reply = match Scope::parse(&String::from_utf8_lossy(&request)) {
                Ok(scope) if session.authorize(&scope).is_ok() => "granted",
                _ => "refused",
            };
            session.send(reply.as_bytes()).await?;
        }
        Ok::<_, agentid::transport::Error>(())
    });

    // The coder talks to the librarian (and to no other agent), presenting its grant.
    let client = AgentClient::builder(
        Arc::new(MemoryCredentials::new(coder)),
        verification(&ca, &coder_id)?,
        PeerPolicy::agent(librarian_id.agent()),
    )
    .build()?;
    let mut session = client.connect(addr).await?;
    for (request, expected) in [("repo:read", "granted"), ("repo:write", "refused")] {
        session.send(request.as_bytes()).await?;
        assert_eq!(session.recv().await?.as_deref(), Some(expected.as_bytes()));
    }
    session.close("normal", "done").await?;
    Ok(())
}
```

`examples/agent_pair.rs` is the same with a delegated chain; `examples/agent_server.rs` and
`examples/agent_client.rs` load their credentials with [`files`]."###
)]
#![cfg_attr(
    all(feature = "ca", feature = "transport"),
    doc = r###"
## Over HTTP (feature `http`)

The same credentials serve HTTP/1.1 and HTTP/2: an axum router behind `HttpServer`, which
verifies the caller's grant or chain once per connection, and a scope required per route
(`RequireScope`); `HttpClient` presents the chain. The set-up (CA, tasks, trust) is that of the
example above.

```
# use std::sync::Arc;
# use std::time::SystemTime;
# use agentid::ca::{init_ca, CertificateAuthority, InitOptions, KeySource, OpenTaskRequest, Policy, TaskRequester};
# use agentid::protocol::{Algorithm, BundleSet, TaskIdentity, TaskKey, TrustDomain, VerifierConfig};
# use agentid::transport::{Credential, PeerVerification};
# type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;
# fn open_task(ca: &CertificateAuthority, name: &str, scope: &str) -> Result<(Credential, TaskIdentity)> {
#     let key = TaskKey::generate(Algorithm::Es256)?;
#     let spki = KeySource::Spki(key.public_key().to_spki_der());
#     let req = OpenTaskRequest::new(name, spki, TaskRequester::Operator, Scope::parse(scope)?);
#     let task = ca.open_task(&req, SystemTime::now())?;
#     let certs = vec![task.certificate.leaf.der.clone().into(), task.certificate.intermediate_der.clone().into()];
#     Ok((Credential::new(certs, key)?.with_chain(task.grant.as_str()), task.identity))
# }
# fn verification(ca: &CertificateAuthority, own: &TaskIdentity) -> Result<Arc<PeerVerification>> {
#     let mut bundles = BundleSet::new();
#     bundles.insert(ca.trust_bundle()?)?;
#     let mut config = VerifierConfig::new(own.as_spiffe_id().clone(), bundles);
#     config.apply_revocation_list(&ca.revocation_list(SystemTime::now())?)?;
#     Ok(PeerVerification::new(config)?)
# }
use agentid::protocol::Scope;
use agentid::transport::http::{HttpClient, HttpServer, RequireScope};
use agentid::transport::{MemoryCredentials, PeerPolicy};
use axum::handler::Handler as _;
use axum::routing::get;

# #[tokio::main]
# async fn main() -> Result<()> {
# let dir = tempfile::tempdir()?;
# let td = TrustDomain::parse("example.org")?;
# init_ca(dir.path(), &InitOptions::new(td.clone()), SystemTime::now())?;
# let mut ca = CertificateAuthority::open(dir.path())?;
# ca.set_policy(Policy::from_toml("[agents.librarian]\nscopes = [\"repo:serve\"]\nrequesters = [\"operator\"]\n[agents.coder]\nscopes = [\"repo:read\"]\nrequesters = [\"operator\"]\n")?);
# let (librarian, librarian_id) = open_task(&ca, "librarian", "repo:serve")?;
# let (coder, coder_id) = open_task(&ca, "coder", "repo:read")?;
// The librarian: one route per scope.
let read = RequireScope::new(Scope::parse("repo:read")?);
let write = RequireScope::new(Scope::parse("repo:write")?);
let app = axum::Router::new()
    .route("/read", get((|| async { "contents" }).layer(read)))
    .route("/write", get((|| async { "written" }).layer(write)));
let server = HttpServer::builder(
    Arc::new(MemoryCredentials::new(librarian)),
    verification(&ca, &librarian_id)?,
    PeerPolicy::agents_in(td),
)
.build()?;
let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
let addr = listener.local_addr()?;
tokio::spawn(async move { server.serve(listener, app).await });

// The coder, holding "repo:read" only.
let client = HttpClient::builder(
    Arc::new(MemoryCredentials::new(coder)),
    verification(&ca, &coder_id)?,
    PeerPolicy::agent(librarian_id.agent()),
)
.build()?;
let mut conn = client.connect(addr, "librarian").await?;
for (path, status) in [("/read", 200), ("/write", 403)] {
    let response = conn.send(http::Request::get(path).body(bytes::Bytes::new())?).await?;
    assert_eq!(response.status().as_u16(), status);
}
# Ok(())
# }
```

`examples/http_agents.rs` serves and calls with credential directories (and curl)."###
)]
#![forbid(unsafe_code)]

#[cfg(feature = "transport")]
pub mod files;

#[cfg(feature = "ca")]
pub use agentid_ca as ca;
pub use agentid_fs as fs;
pub use agentid_protocol as protocol;
#[cfg(feature = "transport")]
pub use agentid_transport as transport;
