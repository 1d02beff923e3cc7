//! Live sessions of agentid-transport: rotation, the deadline, reauth, and continuous
//! verification (revocation lists applied or gone stale, revoked earlier holders).
#![cfg(test)]
#![allow(clippy::type_complexity)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use agentid_protocol::{ErrorCode, RevocationListBuilder, Scope, TaskKey};
use agentid_transport::internal::FrameType;
use agentid_transport::{
    CertError, Error, MemoryCredentials, PeerPolicy, PeerVerification, Session,
};
use support::*;
use tokio::net::TcpStream;

/// A session between a server of `a` ([`SERVER`], verifying with `sv`) and a client of `a`
/// ([`CLIENT`], with `client_creds`), each admitting any peer: (the client's session, the
/// server's session).
async fn sessions_of(
    a: &Domain,
    sv: Arc<PeerVerification>,
    client_creds: Arc<MemoryCredentials>,
) -> (Session<TcpStream>, Session<TcpStream>) {
    sessions(
        server(credentials(&a.ca, SERVER), sv, PeerPolicy::danger_any()),
        &client(
            client_creds,
            verification(CLIENT, &[a], false),
            PeerPolicy::danger_any(),
        ),
    )
    .await
}

#[tokio::test]
async fn rotation_keeps_live_sessions_and_new_handshakes_use_the_new_certificate() {
    let p = pair(None, LeafOpts::default(), false);
    let (addr, h) = p.serve(2).await;
    let c = client(
        p.client_creds.clone(),
        p.cv.clone(),
        PeerPolicy::danger_any(),
    );
    let mut s1 = tokio::time::timeout(T, c.connect(addr))
        .await
        .unwrap()
        .unwrap();
    let old_serial = s1.peer().cert_serial.clone();
    // Rotate the server credential (validated against the trust store before publishing).
    let renewed = credential(&p.a.ca, SERVER, key(), &LeafOpts::default());
    let new_serial = renewed.info().serial.clone();
    let trust = p.sv.trust_store();
    p.server_creds.rotate(renewed, &trust).unwrap();
    // A credential that fails our checks is never published.
    let other = Domain::new("example.org");
    let foreign = credential(&other.ca, SERVER, key(), &LeafOpts::default());
    assert!(p.server_creds.rotate(foreign, &trust).is_err());

    let s2 = tokio::time::timeout(T, c.connect(addr))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s2.peer().cert_serial, new_serial);
    assert_ne!(old_serial, new_serial);
    let mut servers = h.await.unwrap();
    let mut ss1 = servers.remove(0).unwrap();
    s1.send(b"still here").await.unwrap();
    assert_eq!(&ss1.recv().await.unwrap().unwrap()[..], b"still here");
}

#[tokio::test]
async fn a_session_ends_at_peer_certificate_expiry() {
    let p = pair(
        None,
        LeafOpts {
            not_after: Some(2),
            ..Default::default()
        },
        false,
    );
    let (mut cs, mut ss) = p
        .connect(PeerPolicy::danger_any(), PeerPolicy::danger_any())
        .await;
    assert!(ss.peer().deadline <= now() + 3);
    let r = tokio::time::timeout(Duration::from_secs(6), ss.recv())
        .await
        .unwrap();
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
    let ck_der = ck.danger_pkcs8_der().to_vec();
    let short = credential(
        &a.ca,
        CLIENT,
        ck,
        &LeafOpts {
            not_after: Some(2),
            ..Default::default()
        },
    );
    let client_creds = Arc::new(MemoryCredentials::new(short));
    let sv = verification(SERVER, &[&a], false);
    let (mut cs, mut ss) = sessions_of(&a, sv, client_creds).await;
    let first_deadline = ss.peer().deadline;

    // Renewed certificate, same SAN and key.
    let same_key = agentid_protocol::TaskKey::from_pkcs8_der(&ck_der).unwrap();
    let renewed = Arc::new(credential(&a.ca, CLIENT, same_key, &LeafOpts::default()));
    // A different key is refused before sending.
    let other = Arc::new(credential(&a.ca, CLIENT, key(), &LeafOpts::default()));
    assert!(matches!(
        cs.reauth(other).await,
        Err(Error::Certificate(CertError::IdentityChanged))
    ));
    cs.reauth(renewed).await.unwrap();
    cs.send(b"after reauth").await.unwrap();
    assert_eq!(&ss.recv().await.unwrap().unwrap()[..], b"after reauth");
    assert!(ss.peer().deadline > first_deadline + 100);
    assert_eq!(ss.peer().receipts.reauth_proofs.len(), 1);
    // Past the first certificate's expiry, the session is alive.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        roundtrip(&mut cs, &mut ss, b"still alive").await,
        b"still alive"
    );
}

#[tokio::test]
async fn a_revocation_list_ends_a_live_session() {
    let p = pair(Some("files:read"), LeafOpts::default(), false);
    let (mut cs, mut ss) = p.live().await;
    // Unrelated list: the session survives.
    let unrelated = p.a.revocation_list(1, |b| {
        b.revoke_agent(
            &agentid_protocol::AgentId::new(&p.a.td, "someone").unwrap(),
            now() + 600,
        )
    });
    p.sv.apply_revocation_list(&unrelated).unwrap();
    assert_eq!(roundtrip(&mut cs, &mut ss, b"y").await, b"y");
    // The client's key is revoked: the server's session ends at once, with the reason.
    let list = p.a.revocation_list(2, |b| {
        b.revoke_key(&p.client_key_pub.thumbprint(), now() + 600)
    });
    p.sv.apply_revocation_list(&list).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(2), ss.recv())
        .await
        .unwrap();
    assert!(matches!(r, Err(Error::Revoked(_))), "{r:?}");
    let r = tokio::time::timeout(T, cs.recv()).await.unwrap();
    match r {
        Err(Error::Closed { code, .. }) => assert_eq!(code, "revoked"),
        other => panic!("{other:?}"),
    }
}

/// What the receiving side of a `reauth` frame must do with it.
#[derive(Debug, Clone, Copy)]
enum ReauthExpect {
    Accepted,
    Refused {
        reason: &'static str,
        local: fn(&Error) -> bool,
    },
}

#[tokio::test]
async fn the_receiving_side_checks_every_reauth() {
    // The library's `Session::reauth` refuses to send most of these; a raw client sends them, so
    // the test proves the RECEIVING side (the server session) refuses them.
    type Build = Box<dyn Fn(&Domain, &Domain, &TaskKey, &RawAgent) -> Vec<u8>>;
    // A reauth body: a leaf for `uri` and `k` issued by `a` (as `o` says), no chain, `proof`.
    let renewed = |a: &Domain, k: &TaskKey, uri: &str, o: &LeafOpts, proof: String| {
        RawAgent::reauth_body(&[leaf(&a.ca, uri, k, o)], None, proof)
    };
    let identity_changed = ReauthExpect::Refused {
        reason: "bad_certificate",
        local: |e| matches!(e, Error::Certificate(CertError::IdentityChanged)),
    };
    let cases: Vec<(&str, Build, ReauthExpect)> = vec![
        (
            "renewed, same SAN and key",
            Box::new(move |a, _, k, r| {
                renewed(a, k, CLIENT, &LeafOpts::default(), r.proof(k, None, None))
            }),
            ReauthExpect::Accepted,
        ),
        (
            "different key, same SAN, proof by the new key",
            Box::new(move |a, _, _, r| {
                let other = key();
                renewed(
                    a,
                    &other,
                    CLIENT,
                    &LeafOpts::default(),
                    r.proof(&other, None, None),
                )
            }),
            identity_changed,
        ),
        (
            "different key, same SAN, proof by the old key",
            Box::new(move |a, _, k, r| {
                renewed(
                    a,
                    &key(),
                    CLIENT,
                    &LeafOpts::default(),
                    r.proof(k, None, None),
                )
            }),
            identity_changed,
        ),
        (
            "same key, another identity",
            Box::new(move |a, _, k, r| {
                let mallory = "spiffe://example.org/agent/mallory/task/t2";
                renewed(a, k, mallory, &LeafOpts::default(), r.proof(k, None, None))
            }),
            identity_changed,
        ),
        (
            "same SAN and key, issued by a foreign CA",
            Box::new(move |_, b, k, r| {
                renewed(b, k, CLIENT, &LeafOpts::default(), r.proof(k, None, None))
            }),
            ReauthExpect::Refused {
                reason: "bad_certificate",
                local: |e| matches!(e, Error::Certificate(CertError::Chain(_))),
            },
        ),
        (
            "same SAN and key, expired",
            Box::new(move |a, _, k, r| {
                let o = LeafOpts {
                    not_before: Some(-600),
                    not_after: Some(-120),
                    ..Default::default()
                };
                renewed(a, k, CLIENT, &o, r.proof(k, None, None))
            }),
            ReauthExpect::Refused {
                reason: "bad_certificate",
                local: |e| matches!(e, Error::Certificate(CertError::Expired)),
            },
        ),
        (
            "no certificate",
            Box::new(move |_, _, k, r| RawAgent::reauth_body(&[], None, r.proof(k, None, None))),
            ReauthExpect::Refused {
                reason: "bad_certificate",
                local: |e| matches!(e, Error::Certificate(CertError::Missing)),
            },
        ),
        (
            // spec/PROTOCOL.md 16.6: a certificate over 16384 bytes is `bad_certificate`,
            // whether or not the path to an anchor needs it.
            "renewed, with a certificate over 16384 bytes after the leaf",
            Box::new(move |a, _, k, r| {
                let big = rustls::pki_types::CertificateDer::from(vec![0x30; 16_385]);
                let leaf = leaf(&a.ca, CLIENT, k, &LeafOpts::default());
                RawAgent::reauth_body(&[leaf, big], None, r.proof(k, None, None))
            }),
            ReauthExpect::Refused {
                reason: "bad_certificate",
                local: |e| matches!(e, Error::Certificate(CertError::Malformed(_))),
            },
        ),
        (
            // spec/PROTOCOL.md 16.4 step 2 and 16.6: at most 1 leaf + 4 intermediates.
            "renewed, with 5 intermediates",
            Box::new(move |a, _, k, r| {
                let leaf = leaf(&a.ca, CLIENT, k, &LeafOpts::default());
                let certs = vec![leaf; 6];
                RawAgent::reauth_body(&certs, None, r.proof(k, None, None))
            }),
            ReauthExpect::Refused {
                reason: "bad_certificate",
                local: |e| matches!(e, Error::Certificate(CertError::TooManyIntermediates(5))),
            },
        ),
        (
            // spec/PROTOCOL.md 16.4 step 2: the count before the encoding, so 6 certificates of
            // which one is not base64url fail `bad_certificate`, not `bad_frame`.
            "6 certificates, one of them not base64url",
            Box::new(move |a, _, k, r| {
                use base64::Engine as _;
                let leaf = leaf(&a.ca, CLIENT, k, &LeafOpts::default());
                let good = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(leaf.as_ref());
                let mut certs = vec![good; 5];
                certs.push("not base64url!".to_owned());
                wire::body(&wire::Reauth {
                    certs,
                    chain: None,
                    proof: r.proof(k, None, None),
                })
            }),
            ReauthExpect::Refused {
                reason: "bad_certificate",
                local: |e| matches!(e, Error::Certificate(CertError::TooManyIntermediates(5))),
            },
        ),
        (
            "the hello proof replayed",
            Box::new(move |a, _, k, r| {
                renewed(a, k, CLIENT, &LeafOpts::default(), r.hello_proof.clone())
            }),
            ReauthExpect::Refused {
                reason: "proof_replayed",
                local: |e| e.protocol_code() == Some(ErrorCode::ProofReplayed),
            },
        ),
        (
            "proof bound to another connection",
            Box::new(move |a, _, k, r| {
                let proof = r.proof(k, None, Some([7u8; 32]));
                renewed(a, k, CLIENT, &LeafOpts::default(), proof)
            }),
            ReauthExpect::Refused {
                reason: "channel_binding_mismatch",
                local: |e| e.protocol_code() == Some(ErrorCode::ChannelBindingMismatch),
            },
        ),
    ];
    for (name, build, expect) in cases {
        let a = Domain::new("example.org");
        let b = Domain::new("example.org");
        let RawSession {
            mut raw,
            key: ck,
            server: mut ss,
            ..
        } = raw_session(&a).await;
        let first_serial = ss.peer().cert_serial.clone();
        let body = build(&a, &b, &ck, &raw);
        raw.write(FrameType::Reauth, &body).await;
        raw.write(FrameType::Data, b"after").await;
        let r = tokio::time::timeout(T, ss.recv()).await.unwrap();
        match (&expect, r) {
            (ReauthExpect::Accepted, Ok(Some(d))) => {
                assert_eq!(&d[..], b"after");
                assert_eq!(ss.peer().receipts.reauth_proofs.len(), 1, "case `{name}`");
                assert_ne!(ss.peer().cert_serial, first_serial, "case `{name}`");
            }
            (ReauthExpect::Refused { reason, local }, Err(e)) => {
                assert!(local(&e), "case `{name}`: local error {e:?}");
                assert_eq!(e.reason(), *reason, "case `{name}`");
                // The sender learns why, in a close frame; the session is over on both sides.
                let f = raw.read().await.unwrap();
                assert_eq!(f.ty, FrameType::Close, "case `{name}`");
                let close: wire::Reason = wire::parse(&f.body);
                assert_eq!(close.code, *reason, "case `{name}`");
                assert!(
                    ss.recv().await.is_err(),
                    "case `{name}`: the session must stay ended"
                );
                assert_eq!(ss.peer().cert_serial, first_serial, "case `{name}`");
                assert!(ss.peer().receipts.reauth_proofs.is_empty(), "case `{name}`");
            }
            (_, other) => panic!("case `{name}`: expected {expect:?}, got {other:?}"),
        }
    }
}

/// A chain client → server through earlier holders: `planner` (grant holder), optionally `mid`,
/// then the client. Returns the chain and the keys of every holder (grant holder first).
fn delegated_chain(a: &Domain, depth: usize) -> (agentid_protocol::Chain, Vec<TaskKey>) {
    let mut keys = vec![key()];
    let planner = a.task("planner", "t2");
    let mut chain = a.grant(&planner, &keys[0], "files:read files:write");
    if depth == 2 {
        let k = key();
        chain = delegate(
            &chain,
            &keys[0],
            &a.task("mid", "t2"),
            &k,
            "files:read files:write",
            None,
        );
        keys.push(k);
    }
    let ck = key();
    chain = delegate(
        &chain,
        keys.last().unwrap(),
        &a.task("client", "t2"),
        &ck,
        "files:read",
        None,
    );
    keys.push(ck);
    (chain, keys)
}

#[tokio::test]
async fn revoking_an_earlier_holder_ends_sessions_whose_chain_passes_through_it() {
    type Revoke = fn(
        &Domain,
        &[TaskKey],
        &agentid_protocol::Chain,
        RevocationListBuilder,
    ) -> RevocationListBuilder;
    // (name, chain depth, what the list revokes, whether the session must end)
    let cases: Vec<(&str, usize, Revoke, bool)> = vec![
        (
            "depth 1: the delegator's key",
            1,
            |_, k, _, b| b.revoke_key(&k[0].public_key().thumbprint(), now() + 600),
            true,
        ),
        (
            "depth 2: the grant holder's key",
            2,
            |_, k, _, b| b.revoke_key(&k[0].public_key().thumbprint(), now() + 600),
            true,
        ),
        (
            "depth 2: the middle holder's key",
            2,
            |_, k, _, b| b.revoke_key(&k[1].public_key().thumbprint(), now() + 600),
            true,
        ),
        (
            "depth 2: the middle holder's agent",
            2,
            |a, _, _, b| {
                b.revoke_agent(
                    &agentid_protocol::AgentId::new(&a.td, "mid").unwrap(),
                    now() + 600,
                )
            },
            true,
        ),
        (
            "depth 2: an unrelated key",
            2,
            |_, _, _, b| b.revoke_key(&key().public_key().thumbprint(), now() + 600),
            false,
        ),
    ];
    for (name, depth, revoke, ends) in cases {
        let a = Domain::new("example.org");
        let (chain, keys) = delegated_chain(&a, depth);
        let ck = TaskKey::from_pkcs8_der(keys.last().unwrap().danger_pkcs8_der()).unwrap();
        let client_creds = Arc::new(MemoryCredentials::new(
            credential(&a.ca, CLIENT, ck, &LeafOpts::default()).with_chain(chain.as_str()),
        ));
        let sv = verification(SERVER, &[&a], false);
        let (mut cs, mut ss) = sessions_of(&a, sv.clone(), client_creds).await;
        assert_eq!(
            ss.peer().chain.as_ref().unwrap().depth,
            depth,
            "case `{name}`"
        );
        ss.authorize(&Scope::parse("files:read").unwrap()).unwrap();

        let list = a.revocation_list(1, |b| revoke(&a, &keys, &chain, b));
        sv.apply_revocation_list(&list).unwrap();
        // Per-request authorization sees the list at once, even before the session is polled.
        let auth = ss.authorize(&Scope::parse("files:read").unwrap());
        cs.send(b"after the list").await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(2), ss.recv())
            .await
            .unwrap();
        if ends {
            assert!(
                matches!(auth, Err(Error::Revoked(_))),
                "case `{name}`: authorize gave {auth:?}"
            );
            assert!(matches!(r, Err(Error::Revoked(_))), "case `{name}`: {r:?}");
            match tokio::time::timeout(T, cs.recv()).await.unwrap() {
                Err(Error::Closed { code, .. }) => assert_eq!(code, "revoked", "case `{name}`"),
                other => panic!("case `{name}`: {other:?}"),
            }
        } else {
            assert!(auth.is_ok(), "case `{name}`: {auth:?}");
            assert_eq!(&r.unwrap().unwrap()[..], b"after the list", "case `{name}`");
        }
    }
}

#[tokio::test]
async fn a_live_session_ends_when_the_held_revocation_list_goes_stale() {
    #[derive(Debug, Clone, Copy)]
    enum Case {
        /// The list goes stale: fail closed, `revocation_stale`.
        Stale,
        /// A fresh list arrives before: the session lives on.
        Refreshed,
        /// Stale lists tolerated (`danger_` setting): the session lives on.
        Danger,
    }
    let run = |case: Case| async move {
        let a = Domain::new("example.org");
        let p_chain_key = key();
        let chain = a.grant(&a.task("client", "t2"), &p_chain_key, "files:read");
        let client_creds = Arc::new(MemoryCredentials::new(
            credential(&a.ca, CLIENT, p_chain_key, &LeafOpts::default()).with_chain(chain.as_str()),
        ));
        let sv = verification_with(SERVER, &[&a], |c| {
            let c = c.skew(0).unwrap();
            if matches!(case, Case::Danger) {
                c.danger_accept_missing_or_stale_revocations()
            } else {
                c
            }
        });
        // The held list is fresh for 2 more seconds (skew 0).
        sv.apply_revocation_list(&a.revocation_list_until(1, now() + 2, |b| b))
            .unwrap();
        let (mut cs, mut ss) = sessions_of(&a, sv.clone(), client_creds).await;
        let read = Scope::parse("files:read").unwrap();
        ss.authorize(&read).unwrap();
        if matches!(case, Case::Refreshed) {
            tokio::time::sleep(Duration::from_millis(800)).await;
            sv.apply_revocation_list(&a.revocation_list_until(2, now() + 600, |b| b))
                .unwrap();
        }
        // Past next_update + skew, without polling the session: authorize already refuses.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let auth = ss.authorize(&read);
        cs.send(b"late").await.unwrap();
        let r = tokio::time::timeout(T, ss.recv()).await.unwrap();
        match case {
            Case::Stale => {
                let auth = auth.unwrap_err();
                assert_eq!(
                    auth.protocol_code(),
                    Some(ErrorCode::RevocationStale),
                    "{auth:?}"
                );
                let e = r.unwrap_err();
                assert_eq!(e.protocol_code(), Some(ErrorCode::RevocationStale), "{e:?}");
                match tokio::time::timeout(T, cs.recv()).await.unwrap() {
                    Err(Error::Closed { code, .. }) => assert_eq!(code, "revocation_stale"),
                    other => panic!("{other:?}"),
                }
            }
            Case::Refreshed | Case::Danger => {
                auth.unwrap_or_else(|e| panic!("{case:?}: {e:?}"));
                assert_eq!(&r.unwrap().unwrap()[..], b"late", "{case:?}");
            }
        }
    };
    // The three cases wait on the clock: run them side by side.
    tokio::join!(run(Case::Stale), run(Case::Refreshed), run(Case::Danger));
}

/// A held list is replaced by one that goes stale sooner (a lower `next_update`; it revokes
/// nothing new, so the index signals no session). The live sessions that depend on it must
/// still end when the list they now depend on goes stale (spec/PROTOCOL.md 16.4: "when a held
/// revocation list that the session depends on ... goes stale at `next_update + skew`"), and a
/// request after that time must be refused, as a new connection would be.
#[tokio::test]
async fn a_live_session_ends_when_a_replacing_list_goes_stale_sooner() {
    let a = Domain::new("example.org");
    let k = key();
    let chain = a.grant(&a.task("client", "t2"), &k, "files:read");
    let client_creds = Arc::new(MemoryCredentials::new(
        credential(&a.ca, CLIENT, k, &LeafOpts::default()).with_chain(chain.as_str()),
    ));
    let sv = verification_with(SERVER, &[&a], |c| c.skew(0).unwrap());
    sv.apply_revocation_list(&a.revocation_list_until(1, now() + 600, |b| b))
        .unwrap();
    let (mut cs, mut ss) = sessions_of(&a, sv.clone(), client_creds).await;
    let read = Scope::parse("files:read").unwrap();
    ss.authorize(&read).unwrap();
    // The next publication is fresh for 2 seconds only.
    sv.apply_revocation_list(&a.revocation_list_until(2, now() + 2, |b| b))
        .unwrap();
    cs.send(b"before").await.unwrap();
    let r = tokio::time::timeout(T, ss.recv()).await.unwrap();
    assert_eq!(&r.unwrap().unwrap()[..], b"before");
    ss.authorize(&read).unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // A new connection would now fail `revocation_stale`; so does the live session.
    let auth = ss.authorize(&read);
    assert_eq!(
        auth.as_ref().err().and_then(Error::protocol_code),
        Some(ErrorCode::RevocationStale),
        "authorized with a stale list: {auth:?}"
    );
    let _ = cs.send(b"late").await;
    match tokio::time::timeout(T, ss.recv()).await.unwrap() {
        Err(e) => assert_eq!(e.protocol_code(), Some(ErrorCode::RevocationStale), "{e:?}"),
        Ok(v) => panic!("the session outlived its stale list: {v:?}"),
    }
}

/// Wall-clock time, with its fraction of a second.
fn wall() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
}

/// The deadline is a Unix second; the session must end AT it, not up to a second later
/// (spec/PROTOCOL.md 16.4: "When the deadline ... passes ... a side ends the session with close
/// `credential_expired`"). The session is made late in a second (fraction ~0.6 to 0.9), which is
/// when a timer computed from whole seconds fires latest; data the peer sends 0.3 s after the
/// deadline must not be delivered.
#[tokio::test]
async fn no_data_is_delivered_after_the_deadline_second() {
    let p = pair(
        None,
        LeafOpts {
            not_after: Some(4),
            ..Default::default()
        },
        false,
    );
    let frac = wall().subsec_millis();
    if frac > 600 {
        tokio::time::sleep(Duration::from_millis(u64::from(1600 - frac))).await;
    } else {
        tokio::time::sleep(Duration::from_millis(u64::from(600 - frac))).await;
    }
    let (mut cs, mut ss) = p
        .connect(PeerPolicy::danger_any(), PeerPolicy::danger_any())
        .await;
    let deadline = Duration::from_secs(ss.peer().deadline);
    assert!(wall() < deadline, "the session starts before its deadline");
    // 0.3 s past the deadline, the client (which does not enforce the server's view) sends.
    tokio::time::sleep(deadline + Duration::from_millis(300) - wall()).await;
    let _ = cs.send(b"late").await;
    let r = tokio::time::timeout(T, ss.recv()).await.unwrap();
    assert!(
        matches!(r, Err(Error::CredentialExpired)),
        "data delivered {:?} past the deadline: {r:?}",
        wall().saturating_sub(deadline)
    );
}

/// Writes on `session` that the peer never reads, until one waits for it (the connection is
/// full); bounded.
async fn fill_until_writes_wait(session: &mut Session<TcpStream>) {
    use tokio::io::AsyncWriteExt as _;
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..65_536 {
        let write = tokio::time::timeout(Duration::from_secs(1), session.write_all(&chunk));
        if write.await.is_err() {
            return;
        }
    }
    panic!("the connection took everything");
}

/// The server applies a list that revokes the client's key.
fn revoke_client_at_server(p: &Pair) {
    let list = p.a.revocation_list(1, |b| {
        b.revoke_key(&p.client_key_pub.thumbprint(), now() + 600)
    });
    p.sv.apply_revocation_list(&list).unwrap();
}

/// Sends 64 KiB messages on `session` until one fails (or, bounded, a large amount was sent),
/// counting the sends that completed in `sent`: the failure, if any.
async fn send_until_refused(
    mut session: Session<TcpStream>,
    sent: Arc<std::sync::atomic::AtomicU64>,
) -> Option<Error> {
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..65_536 {
        if let Err(e) = session.send(&chunk).await {
            return Some(e);
        }
        sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    None
}

/// Waits (bounded) until `sent` stops moving: the writer waits for a peer that reads nothing.
async fn until_blocked(sent: &std::sync::atomic::AtomicU64) {
    let mut last = u64::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = sent.load(std::sync::atomic::Ordering::SeqCst);
        if now == last {
            return;
        }
        last = now;
    }
    panic!("the writer never waited for the peer");
}

/// A peer that stops reading holds the other side's writes only while its session lives: a
/// send waiting for the connection to take its bytes ends when a revocation list covering the
/// peer is applied (spec/PROTOCOL.md 16.4: the re-check fails closed, "the session ends at
/// once"), instead of waiting for ever with the revoked peer's session slot held.
#[tokio::test]
async fn a_send_to_a_peer_that_stopped_reading_ends_when_the_peer_is_revoked() {
    let p = pair(Some("files:read"), LeafOpts::default(), false);
    let (cs, ss) = p.live().await;
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = tokio::spawn(send_until_refused(ss, sent.clone()));
    until_blocked(&sent).await;
    revoke_client_at_server(&p);
    let r = tokio::time::timeout(T, writer)
        .await
        .expect("the send still waits for a revoked peer that reads nothing")
        .unwrap();
    assert!(matches!(r, Some(Error::Revoked(_))), "{r:?}");
    drop(cs);
}

/// The same for the deadline: a send waiting for a peer that reads nothing ends with
/// `credential_expired` once the peer's certificate expires (spec/PROTOCOL.md 16.4, "Deadline").
#[tokio::test]
async fn a_send_to_a_peer_that_stopped_reading_ends_at_the_deadline() {
    let p = pair(
        None,
        LeafOpts {
            not_after: Some(3),
            ..Default::default()
        },
        false,
    );
    let (cs, ss) = p
        .connect(PeerPolicy::danger_any(), PeerPolicy::danger_any())
        .await;
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = tokio::spawn(send_until_refused(ss, sent.clone()));
    let r = tokio::time::timeout(T, writer)
        .await
        .expect("the send still waits for a peer past its deadline that reads nothing")
        .unwrap();
    assert!(matches!(r, Some(Error::CredentialExpired)), "{r:?}");
    drop(cs);
}

/// `close` waits for the peer to take the close frame, but not for ever: to a peer that stopped
/// reading, a close in progress ends with the session when a revocation list covering the peer
/// is applied, as a send does.
#[tokio::test]
async fn a_close_to_a_peer_that_stopped_reading_ends_when_the_peer_is_revoked() {
    let p = pair(Some("files:read"), LeafOpts::default(), false);
    let (cs, mut ss) = p.live().await;
    fill_until_writes_wait(&mut ss).await;
    let closing = tokio::spawn(ss.close("normal", "done"));
    revoke_client_at_server(&p);
    let r = tokio::time::timeout(T, closing)
        .await
        .expect("the close still waits for a revoked peer that reads nothing")
        .unwrap();
    assert!(matches!(r, Err(Error::Revoked(_))), "{r:?}");
    drop(cs);
}

/// A shutdown to a peer that stopped reading (the close frame `normal` queued, the session
/// closed here) waits for the peer only until the session's deadline, never for ever.
#[tokio::test]
async fn a_shutdown_to_a_peer_that_stopped_reading_ends_at_the_deadline() {
    use tokio::io::AsyncWriteExt as _;
    let p = pair(
        None,
        LeafOpts {
            not_after: Some(4),
            ..Default::default()
        },
        false,
    );
    let (cs, mut ss) = p
        .connect(PeerPolicy::danger_any(), PeerPolicy::danger_any())
        .await;
    fill_until_writes_wait(&mut ss).await;
    let r = tokio::time::timeout(T, ss.shutdown())
        .await
        .expect("the shutdown still waits for a peer that reads nothing, past the deadline");
    assert!(r.is_err(), "{r:?}");
    drop(cs);
}

/// `close` and `shutdown` wait for the peer to take the close frame and `close_notify` at most
/// the first-frame timeout (2 s here), as the handshake's own frames do, not until the session's
/// deadline (300 s here, a day for a service certificate): a peer that stopped reading does not
/// hold the closing side, and its session slot, that long. Both sides, both calls.
#[tokio::test]
async fn a_close_to_a_peer_that_stopped_reading_ends_at_the_first_frame_timeout() {
    use tokio::io::AsyncWriteExt as _;
    for (server_side, shutdown) in [(true, false), (true, true), (false, false), (false, true)] {
        let p = pair(None, LeafOpts::default(), false);
        let (cs, ss) = p.live().await;
        let (mut closing, other) = if server_side { (ss, cs) } else { (cs, ss) };
        assert!(closing.peer().deadline >= now() + 200);
        fill_until_writes_wait(&mut closing).await;
        // The reason of the failure (the shutdown's `io::Error` carries the crate's error).
        let r = if shutdown {
            tokio::time::timeout(T, closing.shutdown()).await.map(|r| {
                r.map_err(|e| {
                    let inner = e.get_ref().and_then(|i| i.downcast_ref::<Error>());
                    inner.map_or_else(|| e.to_string(), |i| i.reason().to_owned())
                })
            })
        } else {
            tokio::time::timeout(T, closing.close("normal", "done"))
                .await
                .map(|r| r.map_err(|e| e.reason().to_owned()))
        };
        let what = format!("server {server_side}, shutdown {shutdown}");
        let r =
            r.unwrap_or_else(|_| panic!("{what}: the close waits for a peer that reads nothing"));
        assert_eq!(r, Err("close_timeout".to_owned()), "{what}");
        drop(other);
    }
}

/// A session whose peer a revocation list now covers ends with `revoked` even when this side
/// closes it before reading or writing again: the close frame carries the failure's code, not
/// the application's `normal` (spec/PROTOCOL.md 16.4: the re-check "fails closed: whatever
/// fails, the session ends at once with a close frame carrying the code of the failure"), so
/// the revoked peer does not read an orderly end of stream.
#[tokio::test]
async fn closing_a_session_whose_peer_was_revoked_sends_revoked_not_normal() {
    use tokio::io::AsyncWriteExt as _;
    for shutdown in [false, true] {
        let p = pair(Some("files:read"), LeafOpts::default(), false);
        let (mut cs, mut ss) = p.live().await;
        revoke_client_at_server(&p);
        let closed = if shutdown {
            tokio::time::timeout(T, ss.shutdown())
                .await
                .unwrap()
                .is_ok()
        } else {
            let done = ss.close(agentid_transport::CLOSE_NORMAL, "done");
            tokio::time::timeout(T, done).await.unwrap().is_ok()
        };
        assert!(
            !closed,
            "shutdown {shutdown}: a revoked session closed as if healthy"
        );
        match tokio::time::timeout(T, cs.recv()).await.unwrap() {
            Err(Error::Closed { code, .. }) => assert_eq!(code, "revoked", "shutdown {shutdown}"),
            other => panic!("shutdown {shutdown}: {other:?}"),
        }
    }
}

/// A session that already ended because its peer was revoked does not wait for that peer to
/// read its close frame: a later `close` (what an application does on the error) returns the
/// session's reason at once instead of waiting for ever on a revoked peer that reads nothing,
/// holding the connection (spec/PROTOCOL.md 16.4: "the session ends at once").
#[tokio::test]
async fn a_close_after_the_peer_was_revoked_does_not_wait_for_a_peer_that_stopped_reading() {
    let p = pair(Some("files:read"), LeafOpts::default(), false);
    let (cs, mut ss) = p.live().await;
    fill_until_writes_wait(&mut ss).await;
    revoke_client_at_server(&p);
    let sent = tokio::time::timeout(T, ss.send(b"more")).await.unwrap();
    assert!(matches!(sent, Err(Error::Revoked(_))), "{sent:?}");
    let r = tokio::time::timeout(T, ss.close("normal", "done"))
        .await
        .expect("the close of an ended session still waits for a revoked peer that reads nothing");
    assert!(matches!(r, Err(Error::Revoked(_))), "{r:?}");
    drop(cs);
}

/// A hop proof may take 8 KiB, and JSON whitespace pads one at no cost: a peer reauthing with
/// padded proofs made the session keep up to 8 MiB of receipts (1024 of them). The receipts a
/// session keeps are bounded in bytes too (a kilobyte a reauth on average): past the bound the
/// session ends `bad_frame`, as at the count, and keeps no more than the bound.
#[tokio::test]
async fn a_peer_padding_its_reauth_proofs_is_stopped_at_the_receipts_byte_bound() {
    use agentid_transport::MAX_REAUTH_RECEIPT_BYTES;
    use base64::Engine as _;
    let a = Domain::new("example.org");
    let RawSession {
        mut raw,
        key: ck,
        server: mut ss,
        ..
    } = raw_session(&a).await;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signer = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        ck.danger_pkcs8_der(),
    )
    .unwrap();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let cert = leaf(&a.ca, CLIENT, &ck, &LeafOpts::default());
    // A valid proof, its payload padded with spaces to just under 8192 bytes and signed again.
    let padded = |raw: &RawAgent| {
        let p = raw.proof(&ck, None, None);
        let mut parts = p.split('.');
        let header = parts.next().unwrap().to_owned();
        let mut payload = b64.decode(parts.next().unwrap()).unwrap();
        // 86 characters of signature, two dots.
        while header.len() + 2 + (4 * (payload.len() + 1)).div_ceil(3) + 86 <= 8192 {
            payload.push(b' ');
        }
        let input = format!("{header}.{}", b64.encode(&payload));
        let sig = signer.sign(&rng, input.as_bytes()).unwrap();
        let proof = format!("{input}.{}", b64.encode(sig.as_ref()));
        assert!(proof.len() > 8100 && proof.len() <= 8192, "{}", proof.len());
        proof
    };
    let fits = MAX_REAUTH_RECEIPT_BYTES / 8192;
    let mut accepted = 0;
    let refusal = loop {
        assert!(
            accepted <= fits + 1,
            "no refusal after {accepted} padded reauths"
        );
        let body = RawAgent::reauth_body(std::slice::from_ref(&cert), None, padded(&raw));
        raw.write(FrameType::Reauth, &body).await;
        raw.write(FrameType::Data, b"x").await;
        match tokio::time::timeout(T, ss.recv()).await.unwrap() {
            Ok(Some(d)) => {
                assert_eq!(&d[..], b"x");
                accepted += 1;
            }
            Ok(None) => panic!("the session ended without an error"),
            Err(e) => break e,
        }
    };
    // Every padded proof that fits is taken (a peer within the bound is served), none beyond.
    assert!(accepted >= fits, "{accepted} < {fits}");
    assert_eq!(refusal.reason(), "bad_frame", "{refusal:?}");
    let held: usize = ss
        .peer()
        .receipts
        .reauth_proofs
        .iter()
        .map(String::len)
        .sum();
    assert!(held <= MAX_REAUTH_RECEIPT_BYTES, "{held}");
    assert_eq!(ss.peer().receipts.reauth_proofs.len(), accepted);
    let f = raw.read().await.unwrap();
    assert_eq!(f.ty, FrameType::Close);
    let close: wire::Reason = wire::parse(&f.body);
    assert_eq!(close.code, "bad_frame");
}
