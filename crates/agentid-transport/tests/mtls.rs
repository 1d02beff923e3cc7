//! Table-driven mTLS tests of agentid-transport: certificates, policies, chains, limits,
//! resumption, rotation, continuous verification.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, clippy::type_complexity)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use agentid_protocol::{ErrorCode, Scope, TrustDomain};
use agentid_transport::frame::{self, FrameType, Hello};
use agentid_transport::{CertError, Error, FrameError, MemoryCredentials, PeerPolicy, TimeoutKind};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER: &str = "spiffe://example.org/agent/server/task/t1";
const CLIENT: &str = "spiffe://example.org/agent/client/task/t2";

fn td(s: &str) -> TrustDomain {
    TrustDomain::parse(s).unwrap()
}

/// Expected server-side outcome of a client certificate.
#[derive(Debug)]
enum Expect {
    Ok,
    Cert(fn(&CertError) -> bool),
    Policy,
}

#[tokio::test]
async fn client_certificate_table() {
    let a = Domain::new("example.org");
    let b = Domain::new("other.org");
    let future = LeafOpts { not_before: Some(60), not_after: Some(300), ..Default::default() };
    let expired = LeafOpts { not_before: Some(-600), not_after: Some(-120), ..Default::default() };
    let ca = LeafOpts { ca: true, ..Default::default() };
    let kcs = LeafOpts { key_cert_sign: true, ..Default::default() };
    let two = LeafOpts { extra_uri: Some("spiffe://example.org/agent/x/task/y".into()), ..Default::default() };
    let dns = LeafOpts { dns_only: true, ..Default::default() };
    let no_eku = LeafOpts { no_eku: true, ..Default::default() };
    let ok = LeafOpts::default();
    // (name, issuing CA, URI SAN, options, server trusts B too, server policy, expectation)
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, &Ca, &str, &LeafOpts, bool, PeerPolicy, Expect)> = vec![
        ("valid pair", &a.ca, CLIENT, &ok, false, PeerPolicy::agents_in(td("example.org")), Expect::Ok),
        ("service peer admitted", &a.ca, "spiffe://example.org/svc/tool", &ok, false, PeerPolicy::services_in(td("example.org")), Expect::Ok),
        ("other trust domain, no anchors", &b.ca, "spiffe://other.org/agent/c/task/t", &ok, false, PeerPolicy::danger_any(), Expect::Cert(|e| matches!(e, CertError::UnknownTrustDomain(_)))),
        ("our ID on another domain's CA", &b.ca, CLIENT, &ok, true, PeerPolicy::danger_any(), Expect::Cert(|e| matches!(e, CertError::Chain(_)))),
        ("federated peer allowed by policy", &b.ca, "spiffe://other.org/agent/c/task/t", &ok, true, PeerPolicy::agents_in(td("other.org")), Expect::Ok),
        ("federated peer, policy for own domain", &b.ca, "spiffe://other.org/agent/c/task/t", &ok, true, PeerPolicy::agents_in(td("example.org")), Expect::Policy),
        ("expired", &a.ca, CLIENT, &expired, false, PeerPolicy::danger_any(), Expect::Cert(|e| *e == CertError::Expired)),
        ("not yet valid", &a.ca, CLIENT, &future, false, PeerPolicy::danger_any(), Expect::Cert(|e| *e == CertError::Expired)),
        ("CA certificate as leaf", &a.ca, CLIENT, &ca, false, PeerPolicy::danger_any(), Expect::Cert(|e| *e == CertError::CaAsLeaf)),
        ("leaf with keyCertSign", &a.ca, CLIENT, &kcs, false, PeerPolicy::danger_any(), Expect::Cert(|e| *e == CertError::ForbiddenKeyUsage)),
        ("two URI SANs", &a.ca, CLIENT, &two, false, PeerPolicy::danger_any(), Expect::Cert(|e| *e == CertError::UriSanCount(2))),
        ("no URI SAN", &a.ca, CLIENT, &dns, false, PeerPolicy::danger_any(), Expect::Cert(|e| *e == CertError::UriSanCount(0))),
        ("no EKU", &a.ca, CLIENT, &no_eku, false, PeerPolicy::danger_any(), Expect::Cert(|e| matches!(e, CertError::EkuMissing(_)))),
        ("agent ID, not a task identity", &a.ca, "spiffe://example.org/agent/client", &ok, false, PeerPolicy::danger_any(), Expect::Cert(|e| matches!(e, CertError::BadId(_)))),
        ("non-spiffe URI", &a.ca, "https://example.org/agent/client/task/t2", &ok, false, PeerPolicy::danger_any(), Expect::Cert(|e| *e == CertError::NotSpiffe)),
        ("policy deny", &a.ca, CLIENT, &ok, false, PeerPolicy::agent(agentid_protocol::AgentId::new(&td("example.org"), "someone").unwrap()), Expect::Policy),
    ];
    for (name, issuer, uri, opts, federate, policy, expect) in cases {
        let domains: Vec<&Domain> = if federate { vec![&a, &b] } else { vec![&a] };
        let v = verification(SERVER, &domains, false);
        let creds = Arc::new(MemoryCredentials::new(credential(&a.ca, SERVER, key(), &LeafOpts::default())));
        let (addr, h) = serve(server(creds, v.clone(), policy), 1).await;
        let ck = key();
        let cert = leaf(issuer, uri, &ck, opts);
        // Raw client: presents certificates Credential::new would refuse; speaks a hello-less
        // exchange, so the server ends with the first-frame timeout when TLS succeeded.
        let cv = verification(CLIENT, &[&a], false);
        let cfg = raw_client_config(&cv, Some((cert, &ck)), false);
        let conn = raw_connect(cfg, addr).await;
        if let Ok(mut tls) = conn {
            let mut b = [0u8; 1];
            let _ = tokio::time::timeout(Duration::from_secs(3), tls.read(&mut b)).await;
        }
        let result = tokio::time::timeout(T, h).await.unwrap().unwrap().pop().unwrap();
        match (&expect, &result) {
            // TLS passed: the server then waits for a hello that never comes.
            (Expect::Ok, Err(Error::Timeout(TimeoutKind::FirstFrame))) => {}
            (Expect::Cert(f), Err(Error::Certificate(e))) if f(e) => {}
            (Expect::Policy, Err(Error::PolicyDenied(_))) => {}
            _ => panic!("case `{name}`: expected {expect:?}, got {result:?}"),
        }
    }
}

#[tokio::test]
async fn server_certificate_table() {
    let a = Domain::new("example.org");
    let cases: Vec<(&str, LeafOpts, Box<dyn Fn(&Error) -> bool>)> = vec![
        ("expired server", LeafOpts { not_before: Some(-600), not_after: Some(-120), ..Default::default() },
            Box::new(|e| matches!(e, Error::Certificate(CertError::Expired)))),
        ("CA as server leaf", LeafOpts { ca: true, ..Default::default() },
            Box::new(|e| matches!(e, Error::Certificate(CertError::CaAsLeaf)))),
        ("keyCertSign server leaf", LeafOpts { key_cert_sign: true, ..Default::default() },
            Box::new(|e| matches!(e, Error::Certificate(CertError::ForbiddenKeyUsage)))),
    ];
    for (name, opts, check) in cases {
        let v = verification(SERVER, &[&a], false);
        let sk = key();
        let cfg = raw_server_config(&v, leaf(&a.ca, SERVER, &sk, &opts), &sk);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let h = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = tokio::time::timeout(T, tokio_rustls::TlsAcceptor::from(cfg).accept(tcp)).await;
        });
        let cv = verification(CLIENT, &[&a], false);
        let creds = Arc::new(MemoryCredentials::new(credential(&a.ca, CLIENT, key(), &LeafOpts::default())));
        let c = client(creds, cv, PeerPolicy::danger_any());
        let r = tokio::time::timeout(T, c.connect(addr)).await.unwrap();
        match &r {
            Err(e) if check(e) => {}
            other => panic!("case `{name}`: got {other:?}"),
        }
        h.await.unwrap();
    }
}

struct Pair {
    a: Domain,
    server_creds: Arc<MemoryCredentials>,
    client_creds: Arc<MemoryCredentials>,
    client_key_pub: agentid_protocol::PublicKey,
    sv: Arc<agentid_transport::PeerVerification>,
    cv: Arc<agentid_transport::PeerVerification>,
}

/// A server and a client of example.org; the client holds a grant for `scope` unless `None`.
fn pair(scope: Option<&str>, client_opts: LeafOpts, strict: bool) -> Pair {
    let a = Domain::new("example.org");
    let ck = key();
    let client_key_pub = ck.public_key().clone();
    let holder = a.task("client", "t2");
    let chain = scope.map(|s| a.grant(&holder, &ck, s));
    let mut cred = credential(&a.ca, CLIENT, ck, &client_opts);
    if let Some(c) = chain {
        cred = cred.with_chain(c.as_str());
    }
    Pair {
        server_creds: Arc::new(MemoryCredentials::new(credential(&a.ca, SERVER, key(), &LeafOpts::default()))),
        client_creds: Arc::new(MemoryCredentials::new(cred)),
        client_key_pub,
        sv: verification(SERVER, &[&a], strict),
        cv: verification(CLIENT, &[&a], strict),
        a,
    }
}

#[tokio::test]
async fn chain_presented_and_authorized_per_request() {
    let p = pair(Some("files:read files:list"), LeafOpts::default(), false);
    let (addr, h) = serve(server(p.server_creds.clone(), p.sv.clone(), PeerPolicy::agents_in(td("example.org"))), 1).await;
    let c = client(p.client_creds.clone(), p.cv.clone(), PeerPolicy::exact(peer(SERVER)));
    let mut cs = tokio::time::timeout(T, c.connect(addr)).await.unwrap().unwrap();
    let mut ss = h.await.unwrap().pop().unwrap().unwrap();
    assert_eq!(ss.peer().id, peer(CLIENT));
    assert_eq!(cs.peer().id, peer(SERVER));
    assert!(ss.peer().chain.is_some());
    assert_eq!(ss.peer().receipts.client_proof, cs.peer().receipts.client_proof);
    assert_eq!(ss.peer().receipts.server_proof, cs.peer().receipts.server_proof);
    assert!(ss.peer().deadline <= ss.peer().cert_not_after);
    ss.authorize(&Scope::parse("files:read").unwrap()).unwrap();
    let denied = ss.authorize(&Scope::parse("files:write").unwrap()).unwrap_err();
    assert_eq!(denied.protocol_code(), Some(ErrorCode::ScopeNotGranted));
    // The server has no chain: the client cannot authorize anything on it.
    assert_eq!(cs.authorize(&Scope::parse("files:read").unwrap()).unwrap_err().protocol_code(), Some(ErrorCode::ScopeNotGranted));

    // Data both ways, as frames and as a byte stream.
    cs.send(b"ping").await.unwrap();
    assert_eq!(&ss.recv().await.unwrap().unwrap()[..], b"ping");
    ss.write_all(b"pong").await.unwrap();
    ss.flush().await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(T, cs.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf, b"pong");
    cs.close("normal", "bye").await.unwrap();
    assert!(tokio::time::timeout(T, ss.recv()).await.unwrap().unwrap().is_none());
}

#[tokio::test]
async fn client_policy_refuses_the_server() {
    let p = pair(None, LeafOpts::default(), false);
    let (addr, h) = serve(server(p.server_creds.clone(), p.sv.clone(), PeerPolicy::danger_any()), 1).await;
    let c = client(p.client_creds.clone(), p.cv.clone(), PeerPolicy::services_in(td("example.org")));
    let r = tokio::time::timeout(T, c.connect(addr)).await.unwrap();
    assert!(matches!(r, Err(Error::PolicyDenied(_))), "{r:?}");
    assert!(h.await.unwrap().pop().unwrap().is_err());
}

#[tokio::test]
async fn no_client_certificate_is_refused() {
    let p = pair(None, LeafOpts::default(), false);
    let (addr, h) = serve(server(p.server_creds.clone(), p.sv.clone(), PeerPolicy::danger_any()), 1).await;
    let cfg = raw_client_config(&p.cv, None, false);
    if let Ok(mut tls) = raw_connect(cfg, addr).await {
        let mut b = [0u8; 1];
        let _ = tokio::time::timeout(T, tls.read(&mut b)).await;
    }
    let r = h.await.unwrap().pop().unwrap();
    assert!(matches!(r, Err(Error::Tls(rustls::Error::NoCertificatesPresented))), "{r:?}");
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
    let (addr, h) = serve(server(p.server_creds.clone(), p.sv.clone(), PeerPolicy::danger_any()), 1).await;
    let c = client(creds, p.cv.clone(), PeerPolicy::danger_any());
    let r = tokio::time::timeout(T, c.connect(addr)).await.unwrap();
    match r {
        Err(Error::Rejected { code, .. }) => assert_eq!(code, "possession_mismatch"),
        other => panic!("{other:?}"),
    }
    let s = h.await.unwrap().pop().unwrap();
    assert_eq!(s.unwrap_err().protocol_code(), Some(ErrorCode::PossessionMismatch));
}

#[tokio::test]
async fn hop_proof_replayed_on_another_connection_is_rejected() {
    let p = pair(None, LeafOpts::default(), false);
    let ck = key();
    let ck2 = agentid_protocol::TaskKey::from_pkcs8_der(ck.pkcs8_der()).unwrap();
    let cert = leaf(&p.a.ca, CLIENT, &ck, &LeafOpts::default());
    let creds = Arc::new(MemoryCredentials::new(
        agentid_transport::Credential::new(vec![cert.clone()], ck).unwrap(),
    ));
    let (addr, h) = serve(server(p.server_creds.clone(), p.sv.clone(), PeerPolicy::danger_any()), 2).await;
    let c = client(creds, p.cv.clone(), PeerPolicy::danger_any());
    let first = tokio::time::timeout(T, c.connect(addr)).await.unwrap().unwrap();
    let stolen = first.peer().receipts.client_proof.clone();
    // Second connection, same certificate and key, replaying the first connection's proof.
    let cfg = raw_client_config(&p.cv, Some((cert, &ck2)), false);
    let mut tls = raw_connect(cfg, addr).await.unwrap();
    let hello = frame::body_bytes(&Hello { chain: None, proof: stolen }).unwrap();
    frame::write_frame(&mut tls, FrameType::Hello, &hello).await.unwrap();
    let reply = tokio::time::timeout(T, frame::read_frame(&mut tls)).await.unwrap().unwrap().unwrap();
    assert_eq!(reply.ty, FrameType::Reject);
    let results = h.await.unwrap();
    assert!(results[0].is_ok());
    assert_eq!(results[1].as_ref().unwrap_err().protocol_code(), Some(ErrorCode::ChannelBindingMismatch));
}

#[tokio::test]
async fn malformed_first_frames_end_the_handshake() {
    let cases: Vec<(&str, Vec<u8>, fn(&Error) -> bool)> = vec![
        ("oversized length", {
            let mut v = ((frame::MAX_FRAME_BODY as u32) + 1).to_be_bytes().to_vec();
            v.push(1);
            v
        }, |e| matches!(e, Error::Frame(FrameError::TooLarge(_)))),
        ("unknown type", vec![0, 0, 0, 0, 0x7f], |e| matches!(e, Error::Frame(FrameError::UnknownType(0x7f)))),
        ("truncated", vec![0, 0, 0, 10, 1, b'{'], |e| matches!(e, Error::Frame(FrameError::Truncated))),
        ("data before hello", vec![0, 0, 0, 1, 0x10, 0], |e| matches!(e, Error::Frame(FrameError::Unexpected(_)))),
        ("duplicate member", {
            let body = br#"{"proof":"a","proof":"b"}"#;
            let mut v = (body.len() as u32).to_be_bytes().to_vec();
            v.push(1);
            v.extend_from_slice(body);
            v
        }, |e| matches!(e, Error::Frame(FrameError::BadBody(_)))),
        ("unknown member", {
            let body = br#"{"proof":"a","x":1}"#;
            let mut v = (body.len() as u32).to_be_bytes().to_vec();
            v.push(1);
            v.extend_from_slice(body);
            v
        }, |e| matches!(e, Error::Frame(FrameError::BadBody(_)))),
    ];
    for (name, bytes, check) in cases {
        let p = pair(None, LeafOpts::default(), false);
        let (addr, h) = serve(server(p.server_creds.clone(), p.sv.clone(), PeerPolicy::danger_any()), 1).await;
        let ck = key();
        let cert = leaf(&p.a.ca, CLIENT, &ck, &LeafOpts::default());
        let mut tls = raw_connect(raw_client_config(&p.cv, Some((cert, &ck)), false), addr).await.unwrap();
        tls.write_all(&bytes).await.unwrap();
        tls.flush().await.unwrap();
        if name == "truncated" {
            tls.shutdown().await.unwrap();
        }
        let r = tokio::time::timeout(T, h).await.unwrap().unwrap().pop().unwrap();
        match &r {
            Err(e) if check(e) => {}
            other => panic!("case `{name}`: got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_stalled_handshake_times_out_and_caps_apply() {
    let p = pair(None, LeafOpts::default(), false);
    let srv = agentid_transport::AgentServer::builder(p.server_creds.clone(), p.sv.clone(), PeerPolicy::danger_any())
        .limits(agentid_transport::ConnectionLimits {
            handshake_timeout: Duration::from_millis(500),
            first_frame_timeout: Duration::from_millis(500),
            max_connections: 1,
            max_handshakes: 1,
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
    // While it stalls, the cap refuses a second connection at once.
    let _other = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (tcp2, _) = listener.accept().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(matches!(srv.accept(tcp2).await, Err(Error::Busy)));
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(T, first).await.unwrap().unwrap();
    assert!(matches!(r, Err(Error::Timeout(TimeoutKind::Handshake))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn tls_resumption_is_impossible() {
    let p = pair(None, LeafOpts::default(), false);
    let (addr, h) = serve(server(p.server_creds.clone(), p.sv.clone(), PeerPolicy::danger_any()), 2).await;
    let ck = key();
    let cert = leaf(&p.a.ca, CLIENT, &ck, &LeafOpts::default());
    // A client that WANTS to resume (in-memory session cache on).
    let cfg = raw_client_config(&p.cv, Some((cert, &ck)), true);
    for _ in 0..2 {
        let mut tls = raw_connect(cfg.clone(), addr).await.unwrap();
        // Give the server a chance to send tickets, if it did.
        let mut b = [0u8; 1];
        let _ = tokio::time::timeout(Duration::from_millis(300), tls.read(&mut b)).await;
        assert_eq!(tls.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Full));
        drop(tls);
    }
    let _ = h.await.unwrap();
}

#[tokio::test]
async fn rotation_keeps_live_sessions_and_new_handshakes_use_the_new_certificate() {
    let p = pair(None, LeafOpts::default(), false);
    let (addr, h) = serve(server(p.server_creds.clone(), p.sv.clone(), PeerPolicy::danger_any()), 2).await;
    let c = client(p.client_creds.clone(), p.cv.clone(), PeerPolicy::danger_any());
    let mut s1 = tokio::time::timeout(T, c.connect(addr)).await.unwrap().unwrap();
    let old_serial = s1.peer().cert_serial.clone();
    // Rotate the server credential (validated against the trust store before publishing).
    let renewed = credential(&p.a.ca, SERVER, key(), &LeafOpts::default());
    let new_serial = renewed.info().serial.clone();
    let trust = p.sv.trust_store();
    p.server_creds
        .rotate(renewed, Some((&trust, rustls::pki_types::UnixTime::now())))
        .unwrap();
    // A credential that fails our checks is never published.
    let other = Domain::new("example.org");
    let foreign = credential(&other.ca, SERVER, key(), &LeafOpts::default());
    assert!(p.server_creds.rotate(foreign, Some((&trust, rustls::pki_types::UnixTime::now()))).is_err());

    let s2 = tokio::time::timeout(T, c.connect(addr)).await.unwrap().unwrap();
    assert_eq!(s2.peer().cert_serial, new_serial);
    assert_ne!(old_serial, new_serial);
    let mut servers = h.await.unwrap();
    let mut ss1 = servers.remove(0).unwrap();
    s1.send(b"still here").await.unwrap();
    assert_eq!(&ss1.recv().await.unwrap().unwrap()[..], b"still here");
}

#[tokio::test]
async fn a_session_ends_at_peer_certificate_expiry() {
    let p = pair(None, LeafOpts { not_after: Some(2), ..Default::default() }, false);
    let (addr, h) = serve(server(p.server_creds.clone(), p.sv.clone(), PeerPolicy::danger_any()), 1).await;
    let c = client(p.client_creds.clone(), p.cv.clone(), PeerPolicy::danger_any());
    let mut cs = tokio::time::timeout(T, c.connect(addr)).await.unwrap().unwrap();
    let mut ss = h.await.unwrap().pop().unwrap().unwrap();
    assert!(ss.peer().deadline <= now() + 3);
    let r = tokio::time::timeout(Duration::from_secs(6), ss.recv()).await.unwrap();
    assert!(matches!(r, Err(Error::CredentialExpired)), "{r:?}");
    // The client learns why.
    let r = tokio::time::timeout(T, cs.recv()).await.unwrap();
    match r {
        Err(Error::Closed { code, .. }) => assert_eq!(code, "credential_expired"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn reauth_moves_the_deadline_and_a_different_key_is_refused() {
    let a = Domain::new("example.org");
    let ck = key();
    let ck_der = ck.pkcs8_der().to_vec();
    let short = credential(&a.ca, CLIENT, ck, &LeafOpts { not_after: Some(2), ..Default::default() });
    let client_creds = Arc::new(MemoryCredentials::new(short));
    let server_creds = Arc::new(MemoryCredentials::new(credential(&a.ca, SERVER, key(), &LeafOpts::default())));
    let sv = verification(SERVER, &[&a], false);
    let cv = verification(CLIENT, &[&a], false);
    let (addr, h) = serve(server(server_creds, sv, PeerPolicy::danger_any()), 1).await;
    let c = client(client_creds, cv, PeerPolicy::danger_any());
    let mut cs = tokio::time::timeout(T, c.connect(addr)).await.unwrap().unwrap();
    let mut ss = h.await.unwrap().pop().unwrap().unwrap();
    let first_deadline = ss.peer().deadline;

    // Renewed certificate, same SAN and key.
    let same_key = agentid_protocol::TaskKey::from_pkcs8_der(&ck_der).unwrap();
    let renewed = Arc::new(credential(&a.ca, CLIENT, same_key, &LeafOpts::default()));
    // A different key is refused before sending.
    let other = Arc::new(credential(&a.ca, CLIENT, key(), &LeafOpts::default()));
    assert!(matches!(cs.reauth(other).await, Err(Error::Certificate(CertError::IdentityChanged))));
    cs.reauth(renewed).await.unwrap();
    cs.send(b"after reauth").await.unwrap();
    assert_eq!(&ss.recv().await.unwrap().unwrap()[..], b"after reauth");
    assert!(ss.peer().deadline > first_deadline + 100);
    assert_eq!(ss.peer().receipts.reauth_proofs.len(), 1);
    // Past the first certificate's expiry, the session is alive.
    tokio::time::sleep(Duration::from_secs(4)).await;
    cs.send(b"still alive").await.unwrap();
    assert_eq!(&tokio::time::timeout(T, ss.recv()).await.unwrap().unwrap().unwrap()[..], b"still alive");
}

#[tokio::test]
async fn a_revocation_list_ends_a_live_session() {
    let p = pair(Some("files:read"), LeafOpts::default(), false);
    let (addr, h) = serve(server(p.server_creds.clone(), p.sv.clone(), PeerPolicy::danger_any()), 1).await;
    let c = client(p.client_creds.clone(), p.cv.clone(), PeerPolicy::danger_any());
    let mut cs = tokio::time::timeout(T, c.connect(addr)).await.unwrap().unwrap();
    let mut ss = h.await.unwrap().pop().unwrap().unwrap();
    cs.send(b"x").await.unwrap();
    assert!(ss.recv().await.unwrap().is_some());
    // Unrelated list: the session survives.
    let unrelated = p.a.revocation_list(1, |b| {
        b.revoke_agent(&agentid_protocol::AgentId::new(&p.a.td, "someone").unwrap(), now() + 600)
    });
    p.sv.apply_revocation_list(&unrelated).unwrap();
    cs.send(b"y").await.unwrap();
    assert_eq!(&tokio::time::timeout(T, ss.recv()).await.unwrap().unwrap().unwrap()[..], b"y");
    // The client's key is revoked: the server's session ends at once, with the reason.
    let list = p.a.revocation_list(2, |b| b.revoke_key(&p.client_key_pub.thumbprint(), now() + 600));
    p.sv.apply_revocation_list(&list).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(2), ss.recv()).await.unwrap();
    assert!(matches!(r, Err(Error::Revoked(_))), "{r:?}");
    let r = tokio::time::timeout(T, cs.recv()).await.unwrap();
    match r {
        Err(Error::Closed { code, .. }) => assert_eq!(code, "revoked"),
        other => panic!("{other:?}"),
    }
}
