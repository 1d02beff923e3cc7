//! Live sessions are indexed by revocation target: a new revocation list re-checks only the
//! sessions under the entries it adds (the peer's key, agent or task, or any `jti`, agent, task
//! or key of its chain), and ends those it covers; every other session runs no re-check.
#![cfg(test)]

mod support;

use std::time::Duration;

use agentid_protocol::RevocationListBuilder;
use agentid_transport::{Error, PeerPolicy, Session};
use support::*;
use tokio::net::TcpStream;

/// A live session as both sides hold it.
struct Live {
    client: Session<TcpStream>,
    server: Session<TcpStream>,
}

async fn exchange(l: &mut Live, msg: &[u8]) {
    l.client.send(msg).await.unwrap();
    let got = tokio::time::timeout(T, l.server.recv())
        .await
        .expect("the session must answer")
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], msg);
}

#[tokio::test]
async fn a_new_list_re_checks_only_the_sessions_its_new_entries_touch() {
    let a = Domain::new("example.org");
    let sv = verification(SERVER, &[&a], false);
    let server_creds = credentials(&a.ca, SERVER);
    let agents = ["c0", "c1", "c2", "c3", "c4"];
    // c3 holds a chain delegated to it by g, whose key is revoked below (a key inside the
    // chain, not the peer's own).
    let g = a.task("g", "t1");
    let g_key = key();
    let mut sessions = Vec::new();
    for name in agents {
        let id = a.task(name, "t1");
        let k = key();
        let mut cred = credential(&a.ca, id.as_str(), k, &LeafOpts::default());
        if name == "c3" {
            let grant = a.grant(&g, &g_key, "files:*");
            let k3 = key();
            let chain = delegate(&grant, &g_key, &id, &k3, "files:read", None);
            cred =
                credential(&a.ca, id.as_str(), k3, &LeafOpts::default()).with_chain(chain.as_str());
        }
        let (addr, h) = serve(
            server(server_creds.clone(), sv.clone(), PeerPolicy::danger_any()),
            1,
        )
        .await;
        let cv = verification(id.as_str(), &[&a], false);
        let c = client(
            std::sync::Arc::new(agentid_transport::MemoryCredentials::new(cred)),
            cv,
            PeerPolicy::danger_any(),
        );
        let client = tokio::time::timeout(T, c.connect(addr))
            .await
            .unwrap()
            .unwrap();
        let server = h.await.unwrap().pop().unwrap().unwrap();
        let mut l = Live { client, server };
        exchange(&mut l, b"hello").await;
        sessions.push(l);
    }
    let (signalled, rechecks) = (sv.sessions_signalled(), sv.session_rechecks());

    // A list revoking nobody the sessions depend on: nothing is signalled, nothing re-checks.
    let unrelated = a.revocation_list(1, |b| {
        b.revoke_agent(&a.task("nobody", "t1").agent(), now() + 600)
    });
    sv.apply_revocation_list(&unrelated).unwrap();
    for l in &mut sessions {
        exchange(l, b"still").await;
    }
    assert_eq!(sv.sessions_signalled(), signalled);
    assert_eq!(sv.session_rechecks(), rechecks);

    // The next list keeps that entry and adds c1's agent and g's key: exactly c1 and c3 (whose
    // chain g signed) re-check and end; the other three never re-check.
    let list = a.revocation_list(2, |b: RevocationListBuilder| {
        b.revoke_agent(&a.task("nobody", "t1").agent(), now() + 600)
            .revoke_agent(&a.task("c1", "t1").agent(), now() + 600)
            .revoke_key(&g_key.public_key().thumbprint(), now() + 600)
    });
    sv.apply_revocation_list(&list).unwrap();
    assert_eq!(sv.sessions_signalled(), signalled + 2);
    for (i, l) in sessions.iter_mut().enumerate() {
        if i == 1 || i == 3 {
            let _ = l.client.send(b"after").await;
            let r = tokio::time::timeout(Duration::from_secs(5), l.server.recv())
                .await
                .expect("a touched session must end, not wait");
            assert!(matches!(r, Err(Error::Revoked(_))), "session {i}: {r:?}");
        } else {
            exchange(l, b"untouched").await;
        }
    }
    assert_eq!(
        sv.session_rechecks(),
        rechecks + 2,
        "only the two touched sessions re-checked"
    );
    // The untouched sessions still authorize without a re-check.
    for i in [0, 2, 4] {
        let _ = sessions[i]
            .server
            .authorize(&agentid_protocol::Scope::parse("files:read").unwrap());
    }
    assert_eq!(sv.session_rechecks(), rechecks + 2);
}

#[tokio::test]
async fn a_bundle_change_still_re_checks_every_session() {
    let p = pair(Some("read"), LeafOpts::default(), false);
    let (mut cs, mut ss) = p.live().await;
    let before = p.sv.session_rechecks();
    let same = agentid_protocol::TrustBundle::new(p.a.td.clone(), 2)
        .add_x509_authority(p.a.ca.der.to_vec(), p.a.ca.key.public_key())
        .add_grant_key(p.a.grant_key.public_key().clone())
        .add_revocation_key(p.a.rev_key.public_key().clone());
    p.sv.update_bundle(same).unwrap();
    cs.send(b"y").await.unwrap();
    assert!(tokio::time::timeout(T, ss.recv())
        .await
        .unwrap()
        .unwrap()
        .is_some());
    assert_eq!(p.sv.session_rechecks(), before + 1);
}

/// The same over the HTTP binding: connections are indexed by their peer and, once presented,
/// their chain; a list re-checks only the connections under its new entries.
#[tokio::test]
async fn over_http_a_new_list_re_checks_only_the_connections_it_touches() {
    use agentid_transport::http::{HttpClient, HttpServer, RequireScope};
    use axum::routing::get;

    const SERVER_SVC: &str = "spiffe://example.org/svc/files";
    let a = Domain::new("example.org");
    let sv = verification(SERVER_SVC, &[&a], false);
    let server = HttpServer::builder(
        credentials(&a.ca, SERVER_SVC),
        sv.clone(),
        PeerPolicy::trust_domain(a.td.clone()),
    )
    .build()
    .unwrap();
    let app = axum::Router::new().route(
        "/scope",
        get(|| async { "ok" }).layer(RequireScope::new(
            agentid_protocol::Scope::parse("files:read").unwrap(),
        )),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { server.serve(listener, app).await });

    let get_scope = || {
        ::http::Request::get("/scope")
            .body(bytes::Bytes::new())
            .unwrap()
    };
    let mut conns = Vec::new();
    // Task ids are the revocation target of `{task}` entries: one per connection here.
    for (name, task) in [("h0", "t0"), ("h1", "t1"), ("h2", "t2")] {
        let id = a.task(name, task);
        let k = key();
        let chain = a.grant(&id, &k, "files:read");
        let cred =
            credential(&a.ca, id.as_str(), k, &LeafOpts::default()).with_chain(chain.as_str());
        let client = HttpClient::builder(
            std::sync::Arc::new(agentid_transport::MemoryCredentials::new(cred)),
            verification(id.as_str(), &[&a], false),
            PeerPolicy::exact(peer(SERVER_SVC)),
        )
        .connect_timeout(T)
        .build()
        .unwrap();
        let mut conn = client.connect(addr, "files").await.unwrap();
        let r = conn.send(get_scope()).await.unwrap();
        assert_eq!(r.status(), 200);
        conns.push(conn);
    }
    let (signalled, rechecks) = (sv.sessions_signalled(), sv.session_rechecks());

    // h1's task is revoked: its connection alone is signalled and refused.
    let list = a.revocation_list(1, |b| {
        b.revoke_task(&a.task("h1", "t1").task_id(), now() + 600)
    });
    sv.apply_revocation_list(&list).unwrap();
    assert_eq!(sv.sessions_signalled(), signalled + 1);
    if let Ok(r) = conns[1].send(get_scope()).await {
        assert_eq!(r.status(), 401, "the revoked connection is refused");
    }
    let after = sv.session_rechecks();
    assert!(
        (rechecks + 1..=rechecks + 2).contains(&after),
        "only h1's connection re-checked (once on the signal, once more if a request raced it): {rechecks} -> {after}"
    );
    for i in [0, 2] {
        for _ in 0..3 {
            let r = conns[i].send(get_scope()).await.unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    assert_eq!(
        sv.session_rechecks(),
        after,
        "untouched connections never re-checked"
    );
}

/// A chain a reauth brings to a session that had none joins the index: a list revoking only a
/// token of that chain (its grant's `jti`, which neither the peer's certificate nor its
/// identity names) signals the session and ends it.
#[tokio::test]
async fn a_chain_brought_by_reauth_is_indexed() {
    use agentid_protocol::{GrantBuilder, RevocationTarget, Scope, TaskIdentity};
    use agentid_transport::internal::FrameType;

    let a = Domain::new("example.org");
    let RawSession {
        sv,
        mut raw,
        key: ck,
        server: mut ss,
    } = raw_session(&a).await;
    assert!(ss.peer().chain.is_none());
    let n = now();
    let grant = GrantBuilder::new(
        &a.td,
        &TaskIdentity::parse(CLIENT).unwrap(),
        ck.public_key(),
        Scope::parse("files:read").unwrap(),
    )
    .validity(n - 5, n - 5, n + 600)
    .jti("brought-by-reauth")
    .sign(&a.grant_key)
    .unwrap();
    let proof = raw.proof(&ck, Some(grant.as_str()), None);
    let cert = leaf(&a.ca, CLIENT, &ck, &LeafOpts::default());
    raw.write(
        FrameType::Reauth,
        &RawAgent::reauth_body(&[cert], Some(grant.as_str()), proof),
    )
    .await;
    raw.write(FrameType::Data, b"with a chain").await;
    let got = tokio::time::timeout(T, ss.recv()).await.unwrap();
    assert_eq!(&got.unwrap().unwrap()[..], b"with a chain");
    assert!(ss.peer().chain.is_some());

    let signalled = sv.sessions_signalled();
    let list = a.revocation_list(1, |b| {
        b.entry(
            RevocationTarget::Jti {
                iss: a.td.id(),
                jti: "brought-by-reauth".into(),
            },
            now() + 600,
        )
    });
    sv.apply_revocation_list(&list).unwrap();
    assert_eq!(sv.sessions_signalled(), signalled + 1);
    raw.write(FrameType::Data, b"after").await;
    let r = tokio::time::timeout(Duration::from_secs(5), ss.recv())
        .await
        .expect("the session must end, not wait");
    assert!(matches!(r, Err(Error::Revoked(_))), "{r:?}");
}

/// A copy of `k` (the same private key): a key that repeats along a chain.
fn same_key(k: &agentid_protocol::TaskKey) -> agentid_protocol::TaskKey {
    agentid_protocol::TaskKey::from_pkcs8_der(k.danger_pkcs8_der()).unwrap()
}

/// A live session of `id` (key `k`, chain `chain` if any) with the server of `sv`.
async fn live_with(
    a: &Domain,
    sv: &std::sync::Arc<agentid_transport::PeerVerification>,
    id: &agentid_protocol::TaskIdentity,
    k: agentid_protocol::TaskKey,
    chain: Option<&str>,
) -> Live {
    let mut cred = credential(&a.ca, id.as_str(), k, &LeafOpts::default());
    if let Some(c) = chain {
        cred = cred.with_chain(c);
    }
    let (addr, h) = serve(
        server(
            credentials(&a.ca, SERVER),
            sv.clone(),
            PeerPolicy::danger_any(),
        ),
        1,
    )
    .await;
    let c = client(
        std::sync::Arc::new(agentid_transport::MemoryCredentials::new(cred)),
        verification(id.as_str(), &[a], false),
        PeerPolicy::danger_any(),
    );
    let client = tokio::time::timeout(T, c.connect(addr))
        .await
        .unwrap()
        .unwrap();
    let server = h.await.unwrap().pop().unwrap().unwrap();
    let mut l = Live { client, server };
    exchange(&mut l, b"hello").await;
    l
}

/// Whether the server side of `l` ends revoked (after one more message from the client), or
/// still answers.
async fn ends_revoked(l: &mut Live) -> bool {
    if l.client.send(b"after").await.is_err() {
        return true;
    }
    let r = tokio::time::timeout(Duration::from_secs(5), l.server.recv())
        .await
        .expect("the session must answer or end, not wait");
    match r {
        Ok(Some(m)) => {
            assert_eq!(&m[..], b"after");
            false
        }
        Err(Error::Revoked(_)) => true,
        other => panic!("neither an answer nor a revocation: {other:?}"),
    }
}

/// Every target a list may name to revoke a peer (`peer_revocation_targets`, read from the
/// compact chain, not from what verification shared), added alone by a new list, ends the live
/// session of a peer holding a chain of depth 0, 1 or 8 (a key repeated along it, the peer's
/// own key also a middle holder's), or of a chain-less peer: for the grant, every link, every
/// holder and the peer itself. A session of another task of a middle holder's agent ends with
/// that agent (and its own key and task) only.
#[tokio::test]
async fn every_target_of_a_chain_at_any_depth_ends_its_live_session() {
    use agentid_protocol::{GrantBuilder, LinkBuilder, RevocationTarget, Scope};
    let a = Domain::new("example.org");
    let sv = verification(SERVER, &[&a], false);
    let mut seq = 1;
    for depth in [None, Some(0usize), Some(1), Some(8)] {
        let n = depth.map_or(0, |d| d);
        let ids: Vec<_> = (0..=n).map(|i| a.task(&format!("h{i}"), "t1")).collect();
        let mut keys: Vec<agentid_protocol::TaskKey> = Vec::new();
        for i in 0..=n {
            keys.push(match i {
                5 => same_key(&keys[2]),
                8 => same_key(&keys[3]),
                _ => key(),
            });
        }
        let chain = depth.map(|d| {
            let now = now();
            let mut c = GrantBuilder::new(
                &a.td,
                &ids[0],
                keys[0].public_key(),
                Scope::parse("files:*").unwrap(),
            )
            .max_depth(u8::try_from(d).unwrap())
            .validity(now - 5, now - 5, now + 600)
            .sign(&a.grant_key)
            .unwrap();
            for i in 1..=d {
                c = LinkBuilder::new(
                    &c,
                    &ids[i],
                    keys[i].public_key(),
                    Scope::parse("files:*").unwrap(),
                )
                .validity(now - 5, now - 5, now + 500)
                .sign(&keys[i - 1])
                .unwrap();
            }
            c
        });
        let peer = &ids[n];
        let peer_key = keys.pop().unwrap();
        let targets = agentid_protocol::peer_revocation_targets(
            chain.as_ref().map(|c| c.as_str()),
            peer.as_spiffe_id(),
            peer_key.public_key(),
        )
        .unwrap();
        assert!(targets.len() >= 3);
        // Another task of a middle holder's agent (the peer's own when there is no middle),
        // made again (a new key) once a list ended it.
        let side_id = a.task(&format!("h{}", n / 2), "t2");
        let mut side: Option<(Live, RevocationTarget)> = None;
        for t in &targets {
            // A list revoking nothing, then the sessions, then a list adding `t` alone.
            sv.apply_revocation_list(&a.revocation_list(seq, |b| b))
                .unwrap();
            seq += 1;
            let mut l = live_with(
                &a,
                &sv,
                peer,
                same_key(&peer_key),
                chain.as_ref().map(|c| c.as_str()),
            )
            .await;
            if side.is_none() {
                let k = key();
                let jkt = RevocationTarget::Key(k.public_key().thumbprint());
                side = Some((live_with(&a, &sv, &side_id, k, None).await, jkt));
            }
            let list = a.revocation_list(seq, |b| b.entry(t.clone(), now() + 600));
            seq += 1;
            sv.apply_revocation_list(&list).unwrap();
            assert!(
                ends_revoked(&mut l).await,
                "depth {depth:?}: a list adding {t:?} left the session live"
            );
            let (s, side_key) = side.as_mut().unwrap();
            let side_hit = *t == *side_key
                || *t == RevocationTarget::Agent(side_id.agent())
                || *t == RevocationTarget::Task(side_id.task_id());
            assert_eq!(
                ends_revoked(s).await,
                side_hit,
                "depth {depth:?}: the side session under {t:?}"
            );
            if side_hit {
                side = None;
            }
        }
    }
}
