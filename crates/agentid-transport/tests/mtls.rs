//! mTLS handshake tests of agentid-transport: chains and hop proofs in the hello and accept,
//! malformed first frames, stalled handshakes, resumption, the audience check, and the frames
//! of one session.
#![cfg(test)]
#![allow(clippy::type_complexity)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use agentid_protocol::{ErrorCode, Scope, TrustDomain};
use agentid_transport::internal::{self as frame, FrameType};
use agentid_transport::{Error, FrameError, MemoryCredentials, PeerPolicy, TimeoutKind};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn td(s: &str) -> TrustDomain {
    TrustDomain::parse(s).unwrap()
}

#[tokio::test]
async fn chain_presented_and_authorized_per_request() {
    let p = pair(Some("files:read files:list"), LeafOpts::default(), false);
    let (mut cs, mut ss) = p
        .connect(
            PeerPolicy::agents_in(td("example.org")),
            PeerPolicy::exact(peer(SERVER)),
        )
        .await;
    assert_eq!(ss.peer().id, peer(CLIENT));
    assert_eq!(cs.peer().id, peer(SERVER));
    assert!(ss.peer().chain.is_some());
    assert_eq!(
        ss.peer().receipts.client_proof,
        cs.peer().receipts.client_proof
    );
    assert_eq!(
        ss.peer().receipts.server_proof,
        cs.peer().receipts.server_proof
    );
    assert!(ss.peer().deadline <= ss.peer().cert_not_after);
    ss.authorize(&Scope::parse("files:read").unwrap()).unwrap();
    let denied = ss
        .authorize(&Scope::parse("files:write").unwrap())
        .unwrap_err();
    assert_eq!(denied.protocol_code(), Some(ErrorCode::ScopeNotGranted));
    // The server has no chain: the client cannot authorize anything on it.
    assert_eq!(
        cs.authorize(&Scope::parse("files:read").unwrap())
            .unwrap_err()
            .protocol_code(),
        Some(ErrorCode::ScopeNotGranted)
    );
    // As for a peer with a chain, a request for `*` fails A1 first (spec section 13).
    assert_eq!(
        cs.authorize(&Scope::parse("files:*").unwrap())
            .unwrap_err()
            .protocol_code(),
        Some(ErrorCode::BadScope)
    );

    // Data both ways, as frames and as a byte stream.
    cs.send(b"ping").await.unwrap();
    assert_eq!(&ss.recv().await.unwrap().unwrap()[..], b"ping");
    ss.write_all(b"pong").await.unwrap();
    ss.flush().await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(T, cs.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"pong");
    cs.close("normal", "bye").await.unwrap();
    assert!(tokio::time::timeout(T, ss.recv())
        .await
        .unwrap()
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn chain_possession_mismatch_is_rejected() {
    // The client presents a chain bound to another key than its certificate's.
    let p = pair(None, LeafOpts::default(), false);
    let other = key();
    let chain = p.a.grant(&p.a.task("client", "t2"), &other, "files:read");
    let ck = key();
    let creds = Arc::new(MemoryCredentials::new(
        credential(&p.a.ca, CLIENT, ck, &LeafOpts::default()).with_chain(chain.as_str()),
    ));
    let (addr, h) = p.serve(1).await;
    let c = client(creds, p.cv.clone(), PeerPolicy::danger_any());
    let r = tokio::time::timeout(T, c.connect(addr)).await.unwrap();
    match r {
        Err(Error::Rejected { code, .. }) => assert_eq!(code, "possession_mismatch"),
        other => panic!("{other:?}"),
    }
    let s = h.await.unwrap().pop().unwrap();
    assert_eq!(
        s.unwrap_err().protocol_code(),
        Some(ErrorCode::PossessionMismatch)
    );
}

#[tokio::test]
async fn hop_proof_replayed_on_another_connection_is_rejected() {
    let p = pair(None, LeafOpts::default(), false);
    let ck = key();
    let ck2 = agentid_protocol::TaskKey::from_pkcs8_der(ck.danger_pkcs8_der()).unwrap();
    let cert = leaf(&p.a.ca, CLIENT, &ck, &LeafOpts::default());
    let creds = Arc::new(MemoryCredentials::new(
        agentid_transport::Credential::new(vec![cert.clone()], ck).unwrap(),
    ));
    let (addr, h) = p.serve(2).await;
    let c = client(creds, p.cv.clone(), PeerPolicy::danger_any());
    let first = tokio::time::timeout(T, c.connect(addr))
        .await
        .unwrap()
        .unwrap();
    let stolen = first.peer().receipts.client_proof.clone();
    // Second connection, same certificate and key, replaying the first connection's proof.
    let cfg = raw_client_config(&p.cv, Some((cert, &ck2)), false);
    let mut tls = raw_connect(cfg, addr).await.unwrap();
    let hello = wire::body(&wire::Hello {
        chain: None,
        proof: stolen,
    });
    frame::write_frame(&mut tls, FrameType::Hello, &hello)
        .await
        .unwrap();
    let reply = tokio::time::timeout(T, frame::read_frame(&mut tls))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply.ty, FrameType::Reject);
    let results = h.await.unwrap();
    assert!(results[0].is_ok());
    assert_eq!(
        results[1].as_ref().unwrap_err().protocol_code(),
        Some(ErrorCode::ChannelBindingMismatch)
    );
}

#[tokio::test]
async fn malformed_first_frames_end_the_handshake() {
    let cases: Vec<(&str, Vec<u8>, fn(&Error) -> bool)> = vec![
        (
            "oversized length",
            {
                let mut v = ((agentid_transport::MAX_FRAME_BODY as u32) + 1)
                    .to_be_bytes()
                    .to_vec();
                v.push(1);
                v
            },
            |e| matches!(e, Error::Frame(FrameError::TooLarge(_))),
        ),
        ("unknown type", vec![0, 0, 0, 0, 0x7f], |e| {
            matches!(e, Error::Frame(FrameError::UnknownType(0x7f)))
        }),
        ("truncated", vec![0, 0, 0, 10, 1, b'{'], |e| {
            matches!(e, Error::Frame(FrameError::Truncated))
        }),
        ("data before hello", vec![0, 0, 0, 1, 0x10, 0], |e| {
            matches!(e, Error::Frame(FrameError::Unexpected(_)))
        }),
        (
            "duplicate member",
            {
                let body = br#"{"proof":"a","proof":"b"}"#;
                let mut v = (body.len() as u32).to_be_bytes().to_vec();
                v.push(1);
                v.extend_from_slice(body);
                v
            },
            |e| matches!(e, Error::Frame(FrameError::BadBody(_))),
        ),
        (
            "unknown member",
            {
                let body = br#"{"proof":"a","x":1}"#;
                let mut v = (body.len() as u32).to_be_bytes().to_vec();
                v.push(1);
                v.extend_from_slice(body);
                v
            },
            |e| matches!(e, Error::Frame(FrameError::BadBody(_))),
        ),
    ];
    for (name, bytes, check) in cases {
        let p = pair(None, LeafOpts::default(), false);
        let (addr, h) = p.serve(1).await;
        let ck = key();
        let cert = leaf(&p.a.ca, CLIENT, &ck, &LeafOpts::default());
        let mut tls = raw_connect(raw_client_config(&p.cv, Some((cert, &ck)), false), addr)
            .await
            .unwrap();
        tls.write_all(&bytes).await.unwrap();
        tls.flush().await.unwrap();
        if name == "truncated" {
            tls.shutdown().await.unwrap();
        }
        let r = tokio::time::timeout(T, h)
            .await
            .unwrap()
            .unwrap()
            .pop()
            .unwrap();
        match &r {
            Err(e) if check(e) => {}
            other => panic!("case `{name}`: got {other:?}"),
        }
        // The client learns the reason in a reject frame (none when the input just stopped).
        let want = match name {
            "oversized length" => Some("frame_too_large"),
            "unknown type" => Some("unknown_frame_type"),
            "truncated" => None,
            _ => Some("bad_frame"),
        };
        let reply = tokio::time::timeout(T, frame::read_frame(&mut tls))
            .await
            .unwrap();
        match (want, reply) {
            (Some(code), Ok(Some(f))) if f.ty == FrameType::Reject => {
                let reason: wire::Reason = wire::parse(&f.body);
                assert_eq!(reason.code, code, "case `{name}`");
            }
            (None, Ok(None) | Err(_)) => {}
            (_, other) => panic!("case `{name}`: reply {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_stalled_handshake_gives_way_to_a_newer_one_and_times_out() {
    let p = pair(None, LeafOpts::default(), false);
    let srv = agentid_transport::AgentServer::builder(
        p.server_creds.clone(),
        p.sv.clone(),
        PeerPolicy::danger_any(),
    )
    .limits(agentid_transport::ConnectionLimits {
        handshake_timeout: Duration::from_millis(800),
        client_hello_timeout: Duration::from_millis(400),
        first_frame_timeout: Duration::from_millis(500),
        max_handshakes: 1,
        ..Default::default()
    })
    .build()
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A client that sends one byte of a ClientHello and stalls.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(&[0x16]).await.unwrap();
    let (tcp1, _) = listener.accept().await.unwrap();
    let srv2 = srv.clone();
    let first = tokio::spawn(async move { srv2.accept(tcp1).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The pool of unauthenticated handshakes is full: a newer connection takes the oldest's
    // slot (never the other way round).
    let mut other = tokio::net::TcpStream::connect(addr).await.unwrap();
    other.write_all(&[0x16]).await.unwrap();
    let (tcp2, _) = listener.accept().await.unwrap();
    let srv3 = srv.clone();
    let second = tokio::spawn(async move { srv3.accept(tcp2).await });
    let r = tokio::time::timeout(T, first).await.unwrap().unwrap();
    assert!(
        matches!(r, Err(Error::Busy(agentid_transport::BusyKind::Handshakes))),
        "{r:?}"
    );
    // The newer one stalls too: it ends at the ClientHello deadline.
    let r = tokio::time::timeout(T, second).await.unwrap().unwrap();
    assert!(
        matches!(r, Err(Error::Timeout(TimeoutKind::ClientHello))),
        "{r:?}"
    );
    assert_eq!(srv.admission().pending_handshakes(), 0);
}

#[tokio::test]
async fn tls_resumption_is_impossible() {
    let p = pair(None, LeafOpts::default(), false);
    let (addr, h) = p.serve(2).await;
    let ck = key();
    let cert = leaf(&p.a.ca, CLIENT, &ck, &LeafOpts::default());
    // A client that WANTS to resume (in-memory session cache on).
    let cfg = raw_client_config(&p.cv, Some((cert, &ck)), true);
    for _ in 0..2 {
        let mut tls = raw_connect(cfg.clone(), addr).await.unwrap();
        // Give the server a chance to send tickets, if it did.
        let mut b = [0u8; 1];
        let _ = tokio::time::timeout(Duration::from_millis(300), tls.read(&mut b)).await;
        assert_eq!(
            tls.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        drop(tls);
    }
    let _ = h.await.unwrap();
}

#[tokio::test]
async fn require_server_in_audience() {
    const OTHER: &str = "spiffe://example.org/agent/other/task/t1";
    #[derive(Debug)]
    enum Want {
        Ok,
        /// The client refuses before sending its chain: the server never sees a hello.
        ClientRefuses,
        /// The client sends; the server's phase 8 refuses.
        ServerRejects,
    }
    // (name, grant aud, narrowing link aud, audience checked (the default), expectation)
    let cases: Vec<(&str, Option<&[&str]>, Option<&[&str]>, bool, Want)> = vec![
        (
            "aud excludes the server, required",
            Some(&[OTHER]),
            None,
            true,
            Want::ClientRefuses,
        ),
        (
            "aud excludes the server, check skipped (danger)",
            Some(&[OTHER]),
            None,
            false,
            Want::ServerRejects,
        ),
        (
            "aud names the server, required",
            Some(&[OTHER, SERVER]),
            None,
            true,
            Want::Ok,
        ),
        (
            "aud names the server's agent, required",
            Some(&["spiffe://example.org/agent/server"]),
            None,
            true,
            Want::Ok,
        ),
        (
            "no aud (the grant's trust domain), required",
            None,
            None,
            true,
            Want::Ok,
        ),
        (
            "a link narrows aud away from the server, required",
            Some(&[OTHER, SERVER]),
            Some(&[OTHER]),
            true,
            Want::ClientRefuses,
        ),
        (
            "a link keeps the server, required",
            Some(&[OTHER, SERVER]),
            Some(&[SERVER]),
            true,
            Want::Ok,
        ),
    ];
    for (name, grant_aud, link_aud, required, want) in cases {
        let a = Domain::new("example.org");
        let ck = key();
        let chain = match link_aud {
            None => a.grant_aud(&a.task("client", "t2"), &ck, "files:read", grant_aud),
            Some(aud) => {
                let pk = key();
                let g = a.grant_aud(&a.task("planner", "t2"), &pk, "files:read", grant_aud);
                delegate(
                    &g,
                    &pk,
                    &a.task("client", "t2"),
                    &ck,
                    "files:read",
                    Some(aud),
                )
            }
        };
        let client_creds = Arc::new(MemoryCredentials::new(
            credential(&a.ca, CLIENT, ck, &LeafOpts::default()).with_chain(chain.as_str()),
        ));
        let sv = verification(SERVER, &[&a], false);
        let mut b = agentid_transport::AgentClient::builder(
            client_creds,
            verification(CLIENT, &[&a], false),
            PeerPolicy::danger_any(),
        )
        .limits(limits());
        if !required {
            b = b.danger_skip_audience_check();
        }
        let srv = server(credentials(&a.ca, SERVER), sv, PeerPolicy::danger_any());
        let (r, s) = handshake(srv, &b.build().unwrap()).await;
        match (&want, &r, &s) {
            (Want::Ok, Ok(cs), Ok(ss)) => {
                assert_eq!(cs.peer().id, peer(SERVER));
                assert!(ss.peer().chain.is_some());
            }
            (Want::ClientRefuses, Err(Error::Protocol(e)), Err(se))
                if e.code() == ErrorCode::AudienceMismatch
                    && matches!(se, Error::Frame(FrameError::Truncated) | Error::Io(_)) => {}
            (Want::ServerRejects, Err(Error::Rejected { code, .. }), Err(se))
                if code == "audience_mismatch"
                    && se.protocol_code() == Some(ErrorCode::AudienceMismatch) => {}
            _ => panic!("case `{name}`: expected {want:?}, got client {r:?}, server {s:?}"),
        }
    }
}

/// An agent whose chain's audience is `OTHER_AGENT` alone (not `SERVER`), built the shortest
/// way or with `danger_skip_audience_check`.
fn client_with_a_chain_for_other(
    a: &Domain,
    skip_audience_check: bool,
) -> agentid_transport::AgentClient {
    let ck = key();
    let chain = a.grant_aud(
        &a.task("client", "t2"),
        &ck,
        "files:read",
        Some(&[OTHER_AGENT]),
    );
    let held = credential(&a.ca, CLIENT, ck, &LeafOpts::default()).with_chain(chain.as_str());
    client_holding(held, a, skip_audience_check)
}

/// A framed client holding `held`, trusting `a`, admitting any server.
fn client_holding(
    held: agentid_transport::Credential,
    a: &Domain,
    skip_audience_check: bool,
) -> agentid_transport::AgentClient {
    let mut b = agentid_transport::AgentClient::builder(
        Arc::new(MemoryCredentials::new(held)),
        verification(CLIENT, &[a], false),
        PeerPolicy::danger_any(),
    )
    .limits(limits());
    if skip_audience_check {
        b = b.danger_skip_audience_check();
    }
    b.build().unwrap()
}

const OTHER_AGENT: &str = "spiffe://example.org/agent/other/task/t1";

/// A framed client built the shortest way (no audience option) never sends its chain to a
/// server its chain's effective audience does not cover: it ends the connection before the
/// hello, `audience_mismatch` (local only), as the HTTP client does by default (spec/PROTOCOL.md
/// 16.3, client step 3). The chain (its scope, principal and task) never reaches that server.
#[tokio::test]
async fn a_framed_client_by_default_never_sends_its_chain_to_a_server_outside_its_audience() {
    let a = Domain::new("example.org");
    let client = client_with_a_chain_for_other(&a, false);
    refused_before_the_hello(&a, &client).await;
}

/// `client` connecting to `SERVER` of `a` ends the connection before its hello,
/// `audience_mismatch` (local only): the server never receives the chain.
async fn refused_before_the_hello(a: &Domain, client: &agentid_transport::AgentClient) {
    let srv = server(
        credentials(&a.ca, SERVER),
        verification(SERVER, &[a], false),
        PeerPolicy::danger_any(),
    );
    let (r, s) = handshake(srv, client).await;
    assert!(
        matches!(&r, Err(Error::Protocol(e)) if e.code() == ErrorCode::AudienceMismatch),
        "the client did not refuse locally before its hello: {r:?}"
    );
    assert!(
        matches!(&s, Err(Error::Frame(FrameError::Truncated) | Error::Io(_))),
        "the server received the chain: {s:?}"
    );
}

/// The default audience check outlives a renewal: a credential renewed with a new certificate
/// (`Credential::renewed`, what enrollment renewals and rotations make every few minutes) keeps
/// its chain, and the client still ends the connection before the hello when that chain's
/// audience does not cover the server (spec/PROTOCOL.md 16.3, client step 3).
#[tokio::test]
async fn a_renewed_credential_still_never_sends_its_chain_to_a_server_outside_its_audience() {
    let a = Domain::new("example.org");
    let ck = key();
    let chain = a.grant_aud(
        &a.task("client", "t2"),
        &ck,
        "files:read",
        Some(&[OTHER_AGENT]),
    );
    let first = credential(&a.ca, CLIENT, ck, &LeafOpts::default()).with_chain(chain.as_str());
    let renewed = first
        .renewed(vec![leaf(
            &a.ca,
            CLIENT,
            &first.shared_key(),
            &LeafOpts::default(),
        )])
        .unwrap();
    assert_eq!(
        renewed.chain(),
        Some(chain.as_str()),
        "the renewal keeps the chain"
    );
    let client = client_holding(renewed, &a, false);
    refused_before_the_hello(&a, &client).await;
}

/// A hello whose chain still verifies (phase 5 takes a token until `exp + skew`) but whose
/// session deadline, `min(notAfter, chain expires)` without skew (16.3 server step 8), is
/// already past is refused with a reject `credential_expired` (16.5): no session is established
/// that would have to end at once.
#[tokio::test]
async fn a_hello_whose_session_deadline_has_passed_is_rejected_credential_expired() {
    let a = Domain::new("example.org");
    let ck = key();
    let n = now();
    let holder = a.task("client", "t2");
    let chain = agentid_protocol::GrantBuilder::new(
        &a.td,
        &holder,
        ck.public_key(),
        Scope::parse("files:read").unwrap(),
    )
    .validity(n - 30, n - 30, n - 2)
    .sign(&a.grant_key)
    .unwrap();
    let held = credential(&a.ca, CLIENT, ck, &LeafOpts::default()).with_chain(chain.as_str());
    let client = client_holding(held, &a, false);
    let srv = server(
        credentials(&a.ca, SERVER),
        verification(SERVER, &[&a], false),
        PeerPolicy::danger_any(),
    );
    let (r, s) = handshake(srv, &client).await;
    assert!(matches!(&s, Err(Error::CredentialExpired)), "{s:?}");
    match r {
        Err(Error::Rejected { code, .. }) => assert_eq!(code, "credential_expired"),
        other => panic!("{other:?}"),
    }
}

/// A server's own ID is its URI SAN (spec/PROTOCOL.md section 9): a server whose verification
/// was made for another identity (one `PeerVerification` shared by two agents, say) would check
/// a chain's audience against that other identity and accept chains meant only for it. Every
/// presentation is refused `bad_config` instead, and no chain is accepted.
#[tokio::test]
async fn a_server_whose_verification_names_another_identity_accepts_no_chain() {
    let a = Domain::new("example.org");
    // A chain for OTHER only, presented to SERVER by a client that skips its own check.
    let client = client_with_a_chain_for_other(&a, true);
    let srv = server(
        credentials(&a.ca, SERVER),
        verification(OTHER_AGENT, &[&a], false),
        PeerPolicy::danger_any(),
    );
    let (r, s) = handshake(srv, &client).await;
    match s {
        Err(e) => assert_eq!(e.protocol_code(), Some(ErrorCode::BadConfig), "{e:?}"),
        Ok(ss) => panic!(
            "SERVER accepted a chain meant for OTHER: {:?}",
            ss.peer().chain
        ),
    }
    // The client is told why, as for any code of section 12 (spec/PROTOCOL.md 16.5).
    match r {
        Err(Error::Rejected { code, .. }) => assert_eq!(code, "bad_config"),
        other => panic!("{other:?}"),
    }
}

/// One session, frame by frame, as spec/PROTOCOL.md section 16 shows it (run with
/// `--nocapture` to print it; tokens are elided). The client is hand-driven so that every frame
/// it sends and receives is visible; the server is the library's.
#[tokio::test]
async fn transcript_of_one_session() {
    let a = Domain::new("example.org");
    // The client holds a depth-1 chain (planner -> client); the server holds a grant of its own.
    let pk = key();
    let ck = key();
    let grant = a.grant_aud(
        &a.task("planner", "t2"),
        &pk,
        "files:read files:write",
        Some(&["spiffe://example.org/agent/server"]),
    );
    let chain = delegate(
        &grant,
        &pk,
        &a.task("client", "t2"),
        &ck,
        "files:read",
        None,
    );
    let sk = key();
    let server_grant = a.grant(&a.task("server", "t1"), &sk, "notes:write");
    let server_creds = Arc::new(MemoryCredentials::new(
        agentid_transport::Credential::new(
            vec![leaf(&a.ca, SERVER, &sk, &LeafOpts::default())],
            sk,
        )
        .unwrap()
        .with_chain(server_grant.as_str()),
    ));
    let sv = verification(SERVER, &[&a], false);
    let (addr, h) = serve(
        server(
            server_creds,
            sv.clone(),
            PeerPolicy::agents_in(td("example.org")),
        ),
        1,
    )
    .await;

    let mut names: Vec<(String, &str)> = Vec::new();
    for (i, t) in chain.tokens().enumerate() {
        names.push((t.to_owned(), if i == 0 { "<grant>" } else { "<link>" }));
    }
    names.push((server_grant.as_str().to_owned(), "<grant>"));
    let mut lines = Vec::new();
    let mut log =
        |dir: &str, ty: FrameType, body: &[u8], names: &[(String, &str)]| -> serde_json::Value {
            let mut text = String::from_utf8(body.to_vec()).unwrap();
            let shown = if ty == FrameType::Data {
                format!("{text:?} (raw bytes)")
            } else {
                let v = agentid_protocol::ijson::parse_object(body).unwrap();
                for (tok, name) in names {
                    text = text.replace(tok.as_str(), name);
                }
                // Proofs and certificates are the remaining long strings.
                for member in ["proof"] {
                    if let Some(p) = v.get(member).and_then(|p| p.as_str()) {
                        text = text.replace(p, "<proof>");
                    }
                }
                if let Some(certs) = v.get("certs").and_then(|c| c.as_array()) {
                    for c in certs {
                        text = text.replace(c.as_str().unwrap(), "<cert>");
                    }
                }
                text
            };
            let mut header = bytes::BytesMut::new();
            frame::encode(ty, body, &mut header).unwrap();
            let header: Vec<String> = header[..frame::HEADER_LEN]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            lines.push(format!(
                "{dir} [{}] {:<6} length {:>4}  {shown}",
                header.join(" "),
                ty.name(),
                body.len()
            ));
            if ty == FrameType::Data {
                serde_json::Value::Null
            } else {
                serde_json::Value::Object(agentid_protocol::ijson::parse_object(body).unwrap())
            }
        };
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();

    let cert = leaf(&a.ca, CLIENT, &ck, &LeafOpts::default());
    let mut raw = RawAgent::hello(&sv, addr, CLIENT, cert, &ck, Some(chain.as_str())).await;
    let hello = wire::body(&wire::Hello {
        chain: Some(chain.as_str().to_owned()),
        proof: raw.hello_proof.clone(),
    });
    let v = log("C->S", FrameType::Hello, &hello, &names);
    assert_eq!(keys(&v), ["chain", "proof"]);

    let accept = raw.read().await.unwrap();
    assert_eq!(accept.ty, FrameType::Accept);
    let v = log("S->C", accept.ty, &accept.body, &names);
    assert_eq!(keys(&v), ["chain", "proof"]);
    // The server's proof, checked as section 12 says (role server, rth over the hello proof).
    let server_exporter = raw
        .tls
        .get_ref()
        .1
        .export_keying_material(
            [0u8; 32],
            agentid_protocol::EXPORTER_LABEL,
            Some(agentid_protocol::Role::Server.exporter_context()),
        )
        .unwrap();
    let accept_body: wire::Accept = wire::parse(&accept.body);
    let mut ss = h.await.unwrap().pop().unwrap().unwrap();
    let server_pub = {
        let der = raw.tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        agentid_transport::check_leaf(&der, agentid_transport::CertUsage::ServerAuth)
            .unwrap()
            .public_key
    };
    agentid_protocol::verify_proof(
        &accept_body.proof,
        &agentid_protocol::ProofContext {
            presenter_id: &raw.server,
            presenter_key: &server_pub,
            verifier_id: &raw.id,
            role: agentid_protocol::Role::Server,
            exporter: server_exporter,
            now: now(),
            skew: 60,
            chain: accept_body.chain.as_deref(),
            client_proof: Some(&raw.hello_proof),
        },
    )
    .unwrap();
    assert_eq!(ss.peer().chain.as_ref().unwrap().depth, 1);

    raw.write(FrameType::Data, b"ping").await;
    log("C->S", FrameType::Data, b"ping", &names);
    assert_eq!(&ss.recv().await.unwrap().unwrap()[..], b"ping");
    ss.send(b"pong").await.unwrap();
    let pong = raw.read().await.unwrap();
    assert_eq!((pong.ty, &pong.body[..]), (FrameType::Data, &b"pong"[..]));
    log("S->C", pong.ty, &pong.body, &names);

    // Reauth: a renewed certificate (same SAN and key), no new chain, a fresh proof.
    let renewed = leaf(
        &a.ca,
        CLIENT,
        &ck,
        &LeafOpts {
            not_after: Some(600),
            ..Default::default()
        },
    );
    let reauth = RawAgent::reauth_body(&[renewed], None, raw.proof(&ck, None, None));
    raw.write(FrameType::Reauth, &reauth).await;
    let v = log("C->S", FrameType::Reauth, &reauth, &names);
    assert_eq!(keys(&v), ["certs", "proof"]);
    raw.write(FrameType::Data, b"after reauth").await;
    log("C->S", FrameType::Data, b"after reauth", &names);
    assert_eq!(&ss.recv().await.unwrap().unwrap()[..], b"after reauth");
    assert_eq!(ss.peer().receipts.reauth_proofs.len(), 1);

    ss.close("normal", "done").await.unwrap();
    let close = raw.read().await.unwrap();
    assert_eq!(close.ty, FrameType::Close);
    let v = log("S->C", close.ty, &close.body, &names);
    assert_eq!(keys(&v), ["code", "message"]);
    assert!(
        raw.read().await.is_none(),
        "TLS close_notify after the close frame"
    );

    // A refused hello on a second connection: the chain is not bound to this certificate's key.
    let (addr, h) = serve(
        server(
            credentials(&a.ca, SERVER),
            sv.clone(),
            PeerPolicy::agents_in(td("example.org")),
        ),
        1,
    )
    .await;
    let other = key();
    let cert = leaf(&a.ca, CLIENT, &other, &LeafOpts::default());
    let mut raw = RawAgent::hello(&sv, addr, CLIENT, cert, &other, Some(chain.as_str())).await;
    let hello = wire::body(&wire::Hello {
        chain: Some(chain.as_str().to_owned()),
        proof: raw.hello_proof.clone(),
    });
    log("C->S", FrameType::Hello, &hello, &names);
    let reject = raw.read().await.unwrap();
    assert_eq!(reject.ty, FrameType::Reject);
    let v = log("S->C", reject.ty, &reject.body, &names);
    assert_eq!(keys(&v), ["code", "message"]);
    assert_eq!(v["code"], "possession_mismatch");
    assert!(h.await.unwrap().pop().unwrap().is_err());
    println!("{}", lines.join("\n"));
}

#[tokio::test]
async fn empty_data_frames_are_not_end_of_stream() {
    let a = Domain::new("example.org");
    let RawSession {
        mut raw,
        server: mut ss,
        ..
    } = raw_session(&a).await;
    raw.write(FrameType::Data, b"").await;
    raw.write(FrameType::Data, b"x").await;
    raw.write(FrameType::Data, b"").await;
    raw.write(FrameType::Data, b"y").await;
    // As a byte stream: an empty frame must not read as end of stream (a 0-byte read).
    let mut b = [0u8; 8];
    let n = tokio::time::timeout(T, ss.read(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&b[..n], b"x");
    // As messages: empty frames are skipped.
    assert_eq!(&ss.recv().await.unwrap().unwrap()[..], b"y");
    // Writing nothing sends no frame.
    assert_eq!(ss.write(b"").await.unwrap(), 0);
    ss.send(b"z").await.unwrap();
    let f = raw.read().await.unwrap();
    assert_eq!((f.ty, &f.body[..]), (FrameType::Data, &b"z"[..]));
}

#[tokio::test]
async fn the_client_tells_the_server_why_it_refuses_the_accept() {
    // A hand-driven server answers the library client's hello; the client must refuse and say
    // why in a close frame (the real server already holds a session at that point).
    let cases: Vec<(&str, FrameType, Vec<u8>, fn(&Error) -> bool, &str)> = vec![
        (
            "proof that is not a JWS",
            FrameType::Accept,
            br#"{"proof":"a.b"}"#.to_vec(),
            |e| e.protocol_code() == Some(ErrorCode::Malformed),
            "malformed",
        ),
        (
            "accept body with a duplicate member",
            FrameType::Accept,
            br#"{"proof":"a","proof":"b"}"#.to_vec(),
            |e| matches!(e, Error::Frame(FrameError::BadBody(_))),
            "bad_frame",
        ),
        (
            "data instead of accept",
            FrameType::Data,
            b"hi".to_vec(),
            |e| matches!(e, Error::Frame(FrameError::Unexpected(_))),
            "bad_frame",
        ),
    ];
    for (name, ty, body, check, code) in cases {
        let a = Domain::new("example.org");
        let (addr, h) = hand_driven_server(&a, &key(), move |mut tls| async move {
            let hello = frame::read_frame(&mut tls).await.unwrap().unwrap();
            assert_eq!(hello.ty, FrameType::Hello);
            frame::write_frame(&mut tls, ty, &body).await.unwrap();
            tokio::time::timeout(T, frame::read_frame(&mut tls))
                .await
                .unwrap()
        })
        .await;
        let creds = credentials(&a.ca, CLIENT);
        let c = client(
            creds,
            verification(CLIENT, &[&a], false),
            PeerPolicy::danger_any(),
        );
        let r = tokio::time::timeout(T, c.connect(addr)).await.unwrap();
        match &r {
            Err(e) if check(e) => {}
            other => panic!("case `{name}`: {other:?}"),
        }
        match h.await.unwrap() {
            Ok(Some(f)) if f.ty == FrameType::Close => {
                let reason: wire::Reason = wire::parse(&f.body);
                assert_eq!(reason.code, code, "case `{name}`");
            }
            other => panic!("case `{name}`: server read {other:?}"),
        }
    }
}

/// `require_server_in_audience` holds for the whole session: a renewed credential whose chain's
/// audience does not cover the server is not sent in a reauth either (the client refuses it
/// locally, `audience_mismatch`, and the server never sees that chain), as it is never sent in
/// a hello (spec/PROTOCOL.md 16.3, client step 3).
#[tokio::test]
async fn require_server_in_audience_holds_for_reauth() {
    const OTHER: &str = "spiffe://example.org/agent/other/task/t1";
    let a = Domain::new("example.org");
    let ck = key();
    let same_key = || agentid_protocol::TaskKey::from_pkcs8_der(ck.danger_pkcs8_der()).unwrap();
    let holder = a.task("client", "t2");
    // The credential the session starts with: a chain for this server.
    let covered = a.grant_aud(&holder, &ck, "read", Some(&[SERVER]));
    let c = agentid_transport::AgentClient::builder(
        Arc::new(MemoryCredentials::new(
            credential(&a.ca, CLIENT, same_key(), &LeafOpts::default())
                .with_chain(covered.as_str()),
        )),
        verification(CLIENT, &[&a], false),
        PeerPolicy::danger_any(),
    )
    .limits(limits())
    .require_server_in_audience()
    .build()
    .unwrap();
    let sv = verification(SERVER, &[&a], false);
    let (mut cs, mut ss) = sessions(
        server(credentials(&a.ca, SERVER), sv, PeerPolicy::danger_any()),
        &c,
    )
    .await;
    // The renewed credential's chain is for another server only.
    let elsewhere = a.grant_aud(&holder, &ck, "read", Some(&[OTHER]));
    let renewed = Arc::new(
        credential(&a.ca, CLIENT, same_key(), &LeafOpts::default()).with_chain(elsewhere.as_str()),
    );
    let sent = cs.reauth(renewed).await;
    assert_eq!(
        sent.as_ref().err().and_then(Error::protocol_code),
        Some(ErrorCode::AudienceMismatch),
        "a chain whose audience misses the server was sent in a reauth: {sent:?}"
    );
    // The server saw no reauth.
    let _ = cs.send(b"x").await;
    let r = tokio::time::timeout(T, ss.recv()).await.unwrap();
    assert!(ss.peer().receipts.reauth_proofs.is_empty());
    assert!(
        !matches!(&r, Err(e) if e.protocol_code() == Some(ErrorCode::AudienceMismatch)),
        "the server received the chain: {r:?}"
    );
}

/// Spec 16.3, client step 3: the client checks the server's own revocation status before the
/// hello. A server whose certificate key the client's list revokes is sent nothing: it reads
/// the end of the connection, never the client's chain.
#[tokio::test]
async fn a_client_sends_no_hello_to_a_server_its_list_revokes() {
    let a = Domain::new("example.org");
    let sk = key();
    let (addr, h) = hand_driven_server(&a, &sk, |mut tls| async move {
        tokio::time::timeout(T, frame::read_frame(&mut tls))
            .await
            .unwrap()
    })
    .await;
    let cv = verification(CLIENT, &[&a], true);
    let jkt = sk.public_key().thumbprint();
    cv.apply_revocation_list(&a.revocation_list(1, |b| b.revoke_key(&jkt, now() + 600)))
        .unwrap();
    let c = client(credentials(&a.ca, CLIENT), cv, PeerPolicy::danger_any());
    let e = tokio::time::timeout(T, c.connect(addr))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.protocol_code(), Some(ErrorCode::Revoked), "{e:?}");
    if let Ok(Some(f)) = h.await.unwrap() {
        panic!("the revoked server read a {:?} frame", f.ty);
    }
}

/// A server driven by hand on 127.0.0.1 (TLS with `key`'s certificate for `SERVER` in `a`, no
/// agentid session): `serve` gets the accepted TLS stream of its one connection.
async fn hand_driven_server<F, Fut, R>(
    a: &Domain,
    key: &agentid_protocol::TaskKey,
    serve: F,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<R>)
where
    F: FnOnce(tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + Send,
    R: Send + 'static,
{
    let v = verification(SERVER, &[a], false);
    let cfg = raw_server_config(&v, leaf(&a.ca, SERVER, key, &LeafOpts::default()), key);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = tokio_rustls::TlsAcceptor::from(cfg)
            .accept(tcp)
            .await
            .unwrap();
        serve(tls).await
    });
    (addr, h)
}

/// The code and message of a peer's reject or close frame are the peer's text: in a reject they
/// reach the handshake's `handshake failed` log line (`error = %e`, written as is), in a close
/// the error the application logs. Up to a whole frame (128 KiB) of newlines and terminal
/// escapes would be copied into the log, forging lines. Both are bounded and their control
/// characters replaced before they reach an error.
#[tokio::test]
async fn a_peers_reject_or_close_reason_reaches_errors_bounded_and_without_control_characters() {
    let forged = format!(
        "revoked\n2026-12-06T00:00:00Z  INFO agentid: forged line\u{1b}[2J{}",
        "x".repeat(60_000)
    );
    let body = wire::body(&wire::Reason {
        code: forged.clone(),
        message: forged.clone(),
    });
    let check = |what: &str, e: &Error| {
        let shown = e.to_string();
        assert!(
            shown.len() <= 1024,
            "{what}: {} bytes of the peer's text in the error",
            shown.len()
        );
        assert!(
            !shown.chars().any(char::is_control),
            "{what}: control characters of the peer in the error: {shown:?}"
        );
        assert!(!e.reason().chars().any(char::is_control), "{what}");
    };

    // A server rejecting the hello.
    let a = Domain::new("example.org");
    let reject = body.clone();
    let (addr, h) = hand_driven_server(&a, &key(), move |mut tls| async move {
        let hello = frame::read_frame(&mut tls).await.unwrap().unwrap();
        assert_eq!(hello.ty, FrameType::Hello);
        frame::write_frame(&mut tls, FrameType::Reject, &reject)
            .await
            .unwrap();
    })
    .await;
    let c = client(
        credentials(&a.ca, CLIENT),
        verification(CLIENT, &[&a], false),
        PeerPolicy::danger_any(),
    );
    match tokio::time::timeout(T, c.connect(addr)).await.unwrap() {
        Err(e @ Error::Rejected { .. }) => check("reject", &e),
        other => panic!("{:?}", other.map(|_| ())),
    }
    h.await.unwrap();

    // A client closing a live session.
    let mut s = raw_session(&a).await;
    s.raw.write(FrameType::Close, &body).await;
    match tokio::time::timeout(T, s.server.recv()).await.unwrap() {
        Err(e @ Error::Closed { .. }) => check("close", &e),
        other => panic!("{other:?}"),
    }
}

/// A client that reads nothing after its hello (a zero TCP window; here a pipe of 256 bytes it
/// never reads) cannot keep the server's accept waiting for ever: the accept frame must be taken
/// within the first-frame timeout, else the handshake ends and gives its session slot back.
/// Before, the server waited for the write for as long as the client held the connection, with
/// the slot, the connection and its task held, past any deadline or revocation.
#[tokio::test]
async fn a_client_that_reads_nothing_after_its_hello_does_not_keep_its_session_slot() {
    let a = Domain::new("example.org");
    let sv = verification(SERVER, &[&a], false);
    let server = server(
        credentials(&a.ca, SERVER),
        sv.clone(),
        PeerPolicy::danger_any(),
    );
    let (ours, theirs) = tokio::io::duplex(256);
    let accepting = tokio::spawn({
        let server = server.clone();
        async move { server.accept(ours).await.map(|_| ()) }
    });
    let key = key();
    let cert = leaf(&a.ca, CLIENT, &key, &LeafOpts::default());
    let raw = RawAgent::hello_over(&sv, theirs, CLIENT, cert, &key, None).await;
    let r = tokio::time::timeout(T, accepting)
        .await
        .expect("the accept still waits for a client that reads nothing")
        .unwrap();
    assert!(
        matches!(r, Err(Error::Timeout(TimeoutKind::FirstFrame))),
        "{r:?}"
    );
    assert_eq!(server.admission().sessions(), 0);
    drop(raw);
}

/// The same for a client: a server that completes TLS and then reads nothing cannot keep the
/// client's `connect` waiting for ever on its hello (a chain of up to 64 KiB): the hello must be
/// taken within the first-frame timeout.
#[tokio::test]
async fn a_server_that_reads_nothing_cannot_keep_a_clients_connect_waiting() {
    let p = pair(Some("files:read"), LeafOpts::default(), false);
    let (ours, theirs) = tokio::io::duplex(256);
    let k = key();
    let acceptor = tokio_rustls::TlsAcceptor::from(raw_server_config(
        &p.sv,
        leaf(&p.a.ca, SERVER, &k, &LeafOpts::default()),
        &k,
    ));
    let silent = tokio::spawn(async move {
        let tls = acceptor.accept(theirs).await;
        tokio::time::sleep(2 * T).await;
        drop(tls);
    });
    let c = client(
        p.client_creds.clone(),
        p.cv.clone(),
        PeerPolicy::danger_any(),
    );
    let r = tokio::time::timeout(T, c.connect_with(ours))
        .await
        .expect("connect still waits for a server that reads nothing");
    assert!(
        matches!(r, Err(Error::Timeout(TimeoutKind::FirstFrame))),
        "{:?}",
        r.map(|_| ())
    );
    silent.abort();
}
