//! The main job: an embedded CA, two agents, one delegation, one authorized request and one
//! refused request, over mutual TLS 1.3 on 127.0.0.1.
//!
//! ```sh
//! cargo run --example agent_pair
//! ```
//!
//! Exits 0 only if every expected outcome happened.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentid::ca::{
    init_ca, CertificateAuthority, ChildRequest, InitOptions, KeySource, OpenTaskRequest, Policy,
    TaskRequester,
};
use agentid::protocol::{
    Algorithm, BundleSet, ErrorCode, LinkBuilder, Scope, TaskKey, TrustDomain, VerifierConfig,
};
use agentid::transport::{
    accept_tcp, AgentClient, AgentServer, Credential, MemoryCredentials, PeerPolicy,
    PeerVerification,
};
use anyhow::{bail, Context, Result};
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;

const POLICY: &str = r#"
[defaults]
ttl = "5m"
task_ttl = "30m"

[agents.planner]
scopes = ["repo:read", "repo:write", "issues:*"]
max_depth = 2
requesters = ["operator"]

[agents.coder]
scopes = []
requesters = ["parent:planner"]

[agents.librarian]
scopes = ["repo:serve"]
requesters = ["operator"]
"#;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn say(who: &str, what: impl AsRef<str>) {
    println!("{who:>10} | {}", what.as_ref());
}

fn credential(issued: &agentid::ca::IssuedCertificate, key: TaskKey) -> Result<Credential> {
    let chain = vec![
        CertificateDer::from(issued.leaf.der.clone()),
        CertificateDer::from(issued.intermediate_der.clone()),
    ];
    Ok(Credential::new(chain, key)?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut failures = Vec::new();
    let dir = tempfile::tempdir()?;
    let td = TrustDomain::parse("example.org")?;

    // 1. An embedded CA in a temporary directory.
    init_ca(dir.path(), &InitOptions::new(td.clone()), SystemTime::now())?;
    let mut ca = CertificateAuthority::open(dir.path())?;
    ca.set_policy(Policy::from_toml(POLICY)?);
    say(
        "ca",
        format!(
            "initialised for trust domain {td} in {}",
            dir.path().display()
        ),
    );

    // 2. The planner's task: a per-task certificate from its own key, and the root grant.
    let planner_key = TaskKey::generate(Algorithm::Es256)?;
    let mut req = OpenTaskRequest::new(
        "planner",
        KeySource::Spki(planner_key.public_key().to_spki_der()),
        TaskRequester::Operator,
        Scope::parse("repo:read repo:write issues:read")?,
    );
    req.max_depth = Some(1);
    let planner = ca.open_task(&req, SystemTime::now())?;
    say(
        "ca",
        format!(
            "opened task {} for {} (serial {}), grant scope \"repo:read repo:write issues:read\"",
            planner.identity.task_id(),
            planner.identity,
            planner.certificate.serial()
        ),
    );

    // 3. The coder, a child the planner spawns: a certificate without a grant...
    let coder_key = TaskKey::generate(Algorithm::Ed25519)?;
    let coder_cert = ca.issue_child(
        &ChildRequest {
            parent: planner.identity.clone(),
            parent_chain: Some(planner.grant.clone()),
            agent: "coder".into(),
            key: KeySource::Spki(coder_key.public_key().to_spki_der()),
            ttl: None,
        },
        SystemTime::now(),
    )?;
    let coder_id = match &coder_cert.identity {
        agentid::protocol::PeerId::Task(t) => t.clone(),
        other => bail!("the CA issued {other} for a child agent"),
    };
    say(
        "ca",
        format!(
            "issued {} (serial {}) without a grant",
            coder_id,
            coder_cert.serial()
        ),
    );

    // ...whose authority comes only from the link the planner signs: read-only.
    let t = now();
    let chain = LinkBuilder::new(
        &planner.grant,
        &coder_id,
        coder_key.public_key(),
        Scope::parse("repo:read")?,
    )
    .validity(t, t, planner.grant_exp.min(t + 600))
    .sign(&planner_key)?;
    say(
        "planner",
        format!(
            "delegated \"repo:read\" to {coder_id} (chain depth {})",
            chain.depth()
        ),
    );

    // 4. The server agent: the librarian, with its own task.
    let librarian_key = TaskKey::generate(Algorithm::Es256)?;
    let librarian = ca.open_task(
        &OpenTaskRequest::new(
            "librarian",
            KeySource::Spki(librarian_key.public_key().to_spki_der()),
            TaskRequester::Operator,
            Scope::parse("repo:serve")?,
        ),
        SystemTime::now(),
    )?;
    say(
        "ca",
        format!(
            "opened task for {} (serial {})",
            librarian.identity,
            librarian.certificate.serial()
        ),
    );

    // Both sides trust the CA's bundle and apply its current revocation list (fail closed).
    let bundle = ca.trust_bundle()?;
    let revocations = ca.revocation_list(SystemTime::now())?;
    let verification = |own: &agentid::protocol::SpiffeId| -> Result<Arc<PeerVerification>> {
        let mut bundles = BundleSet::new();
        bundles.insert(bundle.clone())?;
        let mut cfg = VerifierConfig::new(own.clone(), bundles);
        cfg.apply_revocation_list(&revocations)?;
        Ok(PeerVerification::new(cfg)?)
    };

    let server = AgentServer::builder(
        Arc::new(MemoryCredentials::new(credential(
            &librarian.certificate,
            librarian_key,
        )?)),
        verification(librarian.identity.as_spiffe_id())?,
        PeerPolicy::agents_in(td.clone()),
    )
    .build()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    say(
        "librarian",
        format!("listening on {addr} (mTLS 1.3, ALPN agentid/1), admitting agents of {td}"),
    );

    let server_task = tokio::spawn(async move {
        // Accept errors (EMFILE) are logged and backed off, never fatal.
        let (tcp, from) = accept_tcp(&listener).await;
        let mut session = server.accept_from(tcp, Some(from)).await?;
        let peer = session.peer().clone();
        say(
            "librarian",
            format!(
                "authenticated {} (cert {}), chain depth {}, effective scope \"{}\"",
                peer.id,
                peer.cert_serial,
                peer.chain.as_ref().map(|c| c.depth).unwrap_or(0),
                peer.chain
                    .as_ref()
                    .map(|c| c.scope.to_string())
                    .unwrap_or_default()
            ),
        );
        let mut answered = 0;
        while let Some(request) = session.recv().await? {
            let wanted = String::from_utf8_lossy(&request).to_string();
            // Authorization is per request, against the verified chain.
            let reply = match Scope::parse(&wanted)
                .map_err(agentid::transport::Error::from)
                .and_then(|s| session.authorize(&s))
            {
                Ok(()) => format!("ok: {wanted} granted"),
                Err(e) => format!(
                    "denied: {}",
                    e.protocol_code().map(|c| c.as_str()).unwrap_or("error")
                ),
            };
            say("librarian", format!("request \"{wanted}\" -> {reply}"));
            session.send(reply.as_bytes()).await?;
            answered += 1;
        }
        anyhow::Ok(answered)
    });

    // 5. The coder connects, presenting its chain, and makes two requests.
    let client = AgentClient::builder(
        Arc::new(MemoryCredentials::new(
            credential(&coder_cert, coder_key)?.with_chain(chain.as_str()),
        )),
        verification(coder_id.as_spiffe_id())?,
        PeerPolicy::agent(librarian.identity.agent()),
    )
    .build()?;
    let mut session = tokio::time::timeout(Duration::from_secs(10), client.connect(addr))
        .await
        .context("handshake timed out")??;
    say(
        "coder",
        format!(
            "connected to {} and accepted (server proof received)",
            session.peer().id
        ),
    );

    for (wanted, expect_ok) in [("repo:read", true), ("repo:write", false)] {
        session.send(wanted.as_bytes()).await?;
        let reply = tokio::time::timeout(Duration::from_secs(10), session.recv())
            .await
            .context("reply timed out")??
            .context("server closed early")?;
        let reply = String::from_utf8_lossy(&reply).to_string();
        say("coder", format!("\"{wanted}\" -> {reply}"));
        let ok = reply.starts_with("ok:");
        let code_ok = expect_ok || reply.ends_with(ErrorCode::ScopeNotGranted.as_str());
        if ok != expect_ok || !code_ok {
            failures.push(format!("request {wanted}: unexpected reply {reply:?}"));
        }
    }
    session.close("normal", "done").await?;
    let answered = tokio::time::timeout(Duration::from_secs(10), server_task).await???;
    if answered != 2 {
        failures.push(format!("server answered {answered} requests, expected 2"));
    }

    if failures.is_empty() {
        println!("\nall expected outcomes happened: repo:read granted, repo:write refused with scope_not_granted");
        Ok(())
    } else {
        for f in &failures {
            eprintln!("FAILED: {f}");
        }
        bail!("{} expected outcome(s) did not happen", failures.len())
    }
}
