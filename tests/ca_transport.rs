//! CA-issued certificates end to end: a real `init_ca` with a policy, per-task certificates,
//! grants and links from it, and agentid servers and clients on 127.0.0.1. Table-driven as in
//! rust-spiffe: each case names the client, the server's policy and the expected outcome.
#![cfg(test)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use agentid::ca::RevokeTarget;
use agentid::protocol::{AgentId, AuthorityPolicy, ErrorCode, TaskIdentity, TrustBundle};
use agentid::transport::{CertError, Error, PeerPolicy, PeerVerification, Session};
use support::*;
use tokio::net::TcpStream;

/// The expected server-side outcome of a handshake.
#[derive(Debug)]
enum Expect {
    /// Accepted: both sides hold a session.
    Accepted,
    /// Refused during the TLS handshake by the certificate checks.
    Cert(fn(&CertError) -> bool),
    /// Refused during the TLS handshake by the peer policy.
    Policy,
    /// Refused after TLS with a reject frame carrying this code.
    Rejected(ErrorCode),
}

/// The server's verification: the CA's bundle (plus `extra`), and the CA's current list.
fn server_verification(
    a: &TestCa,
    server: &Agent,
    extra: &[TrustBundle],
    lists: &[&str],
) -> Arc<PeerVerification> {
    let mut bundles = vec![a.bundle()];
    bundles.extend_from_slice(extra);
    verification(&server.id, &bundles, lists)
}

/// A client that trusts the server's CA (so that every refusal below is the server's).
fn client_verification(a: &TestCa, client: &Agent, list: &str) -> Arc<PeerVerification> {
    verification(&client.id, &[a.bundle()], &[list])
}

#[tokio::test]
async fn handshake_table() {
    let a = TestCa::new("example.org");
    let b = TestCa::new("other.org");
    // A second CA for OUR trust domain: its certificates name our IDs but chain elsewhere.
    let impostor = TestCa::new("example.org");

    let librarian = a.open_task("librarian", "repo:serve", 0, None);
    let planner = a.open_task("planner", "repo:read repo:write", 1, None);
    let mut coder = a.child(&planner, "coder");
    planner.delegate(&mut coder, "repo:read");
    let search = a.service("search");
    let foreign = b.open_task("planner", "repo:read", 0, None);
    let fake = impostor.open_task("planner", "repo:read", 0, None);
    // The coder presenting the planner's grant: a chain bound to another key than its certificate.
    let stolen_grant = coder.presenting(planner.chain.clone());

    let a_list = a.revocations();
    let b_list = b.revocations();
    let own = PeerPolicy::agents_in(a.td.clone());
    let services = PeerPolicy::services_in(a.td.clone());
    let planner_only = PeerPolicy::agent(AgentId::new(&a.td, "planner").unwrap());

    // (name, client, server also trusts other.org, server policy, expected outcome)
    let cases: Vec<(&str, &Agent, bool, PeerPolicy, Expect)> = vec![
        (
            "valid pair (grant holder)",
            &planner,
            false,
            own.clone(),
            Expect::Accepted,
        ),
        (
            "child certificate with a link",
            &coder,
            false,
            own.clone(),
            Expect::Accepted,
        ),
        (
            "agent name allowed",
            &planner,
            false,
            planner_only.clone(),
            Expect::Accepted,
        ),
        (
            "agent name not allowed",
            &coder,
            false,
            planner_only.clone(),
            Expect::Policy,
        ),
        (
            "another trust domain, no bundle for it",
            &foreign,
            false,
            PeerPolicy::danger_any(),
            Expect::Cert(|e| matches!(e, CertError::UnknownTrustDomain(_))),
        ),
        (
            "another trust domain, federated, policy for our own",
            &foreign,
            true,
            own.clone(),
            Expect::Policy,
        ),
        (
            "our trust domain's ID from another CA",
            &fake,
            false,
            PeerPolicy::danger_any(),
            Expect::Cert(|e| matches!(e, CertError::Chain(_))),
        ),
        (
            "service where the policy admits agents only",
            &search,
            false,
            own.clone(),
            Expect::Policy,
        ),
        (
            "service where the policy admits services",
            &search,
            false,
            services.clone(),
            Expect::Accepted,
        ),
        (
            "service where the policy admits both",
            &search,
            false,
            own.clone().or(services.clone()),
            Expect::Accepted,
        ),
        (
            "agent where the policy admits services only",
            &planner,
            false,
            services.clone(),
            Expect::Policy,
        ),
        (
            "chain bound to another key",
            &stolen_grant,
            false,
            own.clone(),
            Expect::Rejected(ErrorCode::PossessionMismatch),
        ),
    ];
    for (name, c, federate, policy, expect) in cases {
        let extra = if federate { vec![b.bundle()] } else { vec![] };
        let lists: Vec<&str> = if federate {
            vec![&a_list, &b_list]
        } else {
            vec![&a_list]
        };
        let sv = server_verification(&a, &librarian, &extra, &lists);
        let (addr, h) = serve(server(&librarian, sv, policy), 1).await;
        let cv = client_verification(&a, c, &a_list);
        let client_result =
            connect(&client(c, cv, PeerPolicy::agents_in(a.td.clone())), addr).await;
        let server_result = accepted(h).await;
        match (&expect, &server_result) {
            (Expect::Accepted, Ok(s)) => {
                assert_eq!(s.peer().id, c.id, "{name}");
                assert_eq!(s.peer().cert_serial, c.cert.serial(), "{name}");
                let cs = client_result.unwrap_or_else(|e| panic!("{name}: client: {e}"));
                assert_eq!(cs.peer().id, librarian.id, "{name}");
            }
            (Expect::Cert(f), Err(Error::Certificate(e))) => {
                assert!(f(e), "{name}: wrong certificate error {e:?}");
                assert!(client_result.is_err(), "{name}: the client got a session");
            }
            (Expect::Policy, Err(Error::PolicyDenied(_))) => {
                assert!(client_result.is_err(), "{name}: the client got a session");
            }
            (Expect::Rejected(code), Err(e)) if e.protocol_code() == Some(*code) => {
                match &client_result {
                    Err(Error::Rejected { code: got, .. }) => {
                        assert_eq!(got, code.as_str(), "{name}")
                    }
                    other => panic!("{name}: client: {other:?}"),
                }
            }
            (_, other) => panic!(
                "{name}: expected {expect:?}, server got {:?}",
                other.as_ref().map(|s| s.peer().id.to_string())
            ),
        }
    }
}

#[tokio::test]
async fn requests_are_authorized_one_by_one() {
    let a = TestCa::new("example.org");
    let librarian = a.open_task("librarian", "repo:serve", 0, None);
    let planner = a.open_task("planner", "repo:read repo:write", 1, None);
    let mut coder = a.child(&planner, "coder");
    planner.delegate(&mut coder, "repo:read");
    let coder_without_chain = coder.presenting(None);
    let search = a.service("search");
    let list = a.revocations();

    let any = AuthorityPolicy::own_domain(&a.td);
    let read_only = AuthorityPolicy::none().allow(a.td.clone(), scope("repo:read"));
    use ErrorCode::{AuthorityScopeDenied as Denied, ScopeNotGranted as NotGranted};
    // (name, client, the server's authority policy, [(request, None = granted / Some(code))])
    #[allow(clippy::type_complexity)]
    let cases: Vec<(
        &str,
        &Agent,
        &AuthorityPolicy,
        Vec<(&str, Option<ErrorCode>)>,
    )> = vec![
        (
            "grant holder",
            &planner,
            &any,
            vec![
                ("repo:read", None),
                ("repo:write", None),
                ("repo:read repo:write", None),
                ("issues:read", Some(NotGranted)),
            ],
        ),
        (
            "child through a read-only link",
            &coder,
            &any,
            vec![
                ("repo:read", None),
                ("repo:write", Some(NotGranted)),
                ("repo:read repo:write", Some(NotGranted)),
            ],
        ),
        (
            "child presenting no chain",
            &coder_without_chain,
            &any,
            vec![("repo:read", Some(NotGranted))],
        ),
        (
            "service (never holds a chain)",
            &search,
            &any,
            vec![("repo:read", Some(NotGranted))],
        ),
        (
            "authority limited to repo:read at this server",
            &planner,
            &read_only,
            vec![("repo:read", None), ("repo:write", Some(Denied))],
        ),
    ];
    for (name, c, authority, requests) in cases {
        let mut bundles = agentid::protocol::BundleSet::new();
        bundles.insert(a.bundle()).unwrap();
        let mut cfg =
            agentid::protocol::VerifierConfig::new(librarian.id.as_spiffe_id().clone(), bundles)
                .authority_policy(authority.clone());
        cfg.apply_revocation_list(&list).unwrap();
        let sv = PeerVerification::new(cfg).unwrap();
        let policy = PeerPolicy::agents_in(a.td.clone()).or(PeerPolicy::services_in(a.td.clone()));
        let (addr, h) = serve(server(&librarian, sv, policy), 1).await;
        let cv = verification(&c.id, &[a.bundle()], &[&list]);
        let mut cs = connect(&client(c, cv, PeerPolicy::agents_in(a.td.clone())), addr)
            .await
            .unwrap();
        let mut ss = accepted(h).await.unwrap();
        for (request, expected) in requests {
            // Each request travels to the server, which authorizes it against the verified chain.
            let got = roundtrip(&mut cs, &mut ss, request.as_bytes()).await;
            let outcome = ss.authorize(&scope(std::str::from_utf8(&got).unwrap()));
            match (expected, outcome) {
                (None, Ok(())) => {}
                (Some(code), Err(e)) => {
                    assert_eq!(e.protocol_code(), Some(code), "{name}: {request}: {e}")
                }
                (expected, got) => panic!("{name}: {request}: expected {expected:?}, got {got:?}"),
            }
        }
    }
}

/// The CA's `librarian` serving its `planner` (`repo:read` on a certificate of 2 s), both holding
/// the CA's list and admitting the agents of the trust domain: (the CA, the planner, the
/// planner's session, the librarian's session).
async fn planner_on_a_two_second_certificate(
) -> (TestCa, Agent, Session<TcpStream>, Session<TcpStream>) {
    let a = TestCa::new("example.org");
    let librarian = a.open_task("librarian", "repo:serve", 0, None);
    let planner = a.open_task("planner", "repo:read", 0, Some(Duration::from_secs(2)));
    let list = a.revocations();
    let sv = verification(&librarian.id, &[a.bundle()], &[&list]);
    let (addr, h) = serve(
        server(&librarian, sv, PeerPolicy::agents_in(a.td.clone())),
        1,
    )
    .await;
    let cv = verification(&planner.id, &[a.bundle()], &[&list]);
    let cs = connect(
        &client(&planner, cv, PeerPolicy::agents_in(a.td.clone())),
        addr,
    )
    .await
    .unwrap();
    let ss = accepted(h).await.unwrap();
    (a, planner, cs, ss)
}

#[tokio::test]
async fn a_two_second_certificate_ends_a_live_session() {
    let (_a, planner, mut cs, mut ss) = planner_on_a_two_second_certificate().await;
    // The deadline is the certificate's notAfter (the grant lives 30 minutes).
    assert_eq!(ss.peer().deadline, planner.cert.leaf.not_after);
    assert!(ss.peer().deadline <= now() + 2);
    // Alive before the deadline...
    assert_eq!(roundtrip(&mut cs, &mut ss, b"before").await, b"before");
    assert!(ss.authorize(&scope("repo:read")).is_ok());
    // ...and ended at it, without any traffic, with `credential_expired` on both sides.
    let r = tokio::time::timeout(Duration::from_secs(3), ss.recv())
        .await
        .expect("the session outlived its certificate");
    assert!(matches!(r, Err(Error::CredentialExpired)), "{r:?}");
    assert!(matches!(
        ss.authorize(&scope("repo:read")),
        Err(Error::CredentialExpired)
    ));
    match tokio::time::timeout(T, cs.recv()).await.unwrap() {
        Err(Error::Closed { code, .. }) => assert_eq!(code, "credential_expired"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn renew_and_reauth_keep_a_session_past_the_first_certificate() {
    let (a, planner, mut cs, mut ss) = planner_on_a_two_second_certificate().await;
    let first_deadline = ss.peer().deadline;
    assert_eq!(first_deadline, planner.cert.leaf.not_after);

    // The CA renews for the same key (a new serial); the client re-authenticates on the session.
    let renewed = a.renew(&planner);
    assert_ne!(renewed.cert.serial(), planner.cert.serial());
    tokio::time::timeout(T, cs.reauth(Arc::new(renewed.credential())))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        roundtrip(&mut cs, &mut ss, b"after reauth").await,
        b"after reauth"
    );
    assert_eq!(ss.peer().deadline, renewed.cert.leaf.not_after);
    assert!(ss.peer().deadline > first_deadline + 60);
    assert_eq!(ss.peer().cert_serial, renewed.cert.serial());
    assert_eq!(ss.peer().receipts.reauth_proofs.len(), 1);

    // Past the first certificate's notAfter, the session is alive and still authorizes.
    let wait = first_deadline.saturating_sub(now()) + 1;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert!(now() > first_deadline);
    assert_eq!(
        roundtrip(&mut cs, &mut ss, b"still alive").await,
        b"still alive"
    );
    assert!(ss.authorize(&scope("repo:read")).is_ok());
}

/// What a revocation case revokes, from (planner, coder, an unrelated agent).
type Target = fn(&Agent, &Agent, &Agent) -> RevokeTarget;

fn task_of(agent: &Agent) -> agentid::protocol::TaskId {
    TaskIdentity::task_id(&agent.task_identity())
}

#[tokio::test]
async fn ca_revocations_end_live_sessions_and_refuse_the_next_handshake() {
    // The client is the coder, holding planner grant ~ planner->coder link (depth 1).
    // (name, target, Some(the token index in the reason) = revoked / None = unaffected)
    let cases: Vec<(&str, Target, Option<&str>)> = vec![
        (
            "the coder's certificate, by serial",
            |_, c, _| RevokeTarget::Serial(c.cert.serial().parse().unwrap()),
            Some("(token 1)"),
        ),
        (
            "the coder's agent name",
            |_, _, _| RevokeTarget::Agent("coder".into()),
            Some("(token 1)"),
        ),
        (
            "the coder's key, by thumbprint",
            |_, c, _| RevokeTarget::Key(c.cert.jkt.parse().unwrap()),
            Some("(token 1)"),
        ),
        (
            "the earlier holder's key (the planner's)",
            |p, _, _| RevokeTarget::Key(p.cert.jkt.parse().unwrap()),
            Some("(token 0)"),
        ),
        (
            "the earlier holder's certificate, by serial",
            |p, _, _| RevokeTarget::Serial(p.cert.serial().parse().unwrap()),
            Some("(token 0)"),
        ),
        (
            "the earlier holder's agent name",
            |_, _, _| RevokeTarget::Agent("planner".into()),
            Some("(token 0)"),
        ),
        (
            "the task",
            |p, _, _| RevokeTarget::Task(task_of(p)),
            Some("(token 0)"),
        ),
        (
            "the grant, by jti",
            |p, _, _| RevokeTarget::GrantJti(p.grant_jti.clone().unwrap().parse().unwrap()),
            Some("(token 0)"),
        ),
        (
            "an unrelated agent's certificate",
            |_, _, u| RevokeTarget::Serial(u.cert.serial().parse().unwrap()),
            None,
        ),
        (
            "an unrelated agent's name",
            |_, _, _| RevokeTarget::Agent("auditor".into()),
            None,
        ),
    ];
    // Every case runs; the failures are reported together.
    let mut failures = Vec::new();
    for (name, target, expect) in cases {
        let a = TestCa::new("example.org");
        let librarian = a.open_task("librarian", "repo:serve", 0, None);
        let planner = a.open_task("planner", "repo:read repo:write", 1, None);
        let mut coder = a.child(&planner, "coder");
        planner.delegate(&mut coder, "repo:read");
        let unrelated = a.open_task("auditor", "repo:read", 0, None);

        let list = a.revocations();
        let sv = verification(&librarian.id, &[a.bundle()], &[&list]);
        let (addr, mut accepted) = serve_each(server(
            &librarian,
            sv.clone(),
            PeerPolicy::agents_in(a.td.clone()),
        ))
        .await;
        let cv = verification(&coder.id, &[a.bundle()], &[&list]);
        let c = client(&coder, cv, PeerPolicy::agents_in(a.td.clone()));
        let mut cs = connect(&c, addr).await.unwrap();
        let mut ss = next(&mut accepted).await.unwrap();
        assert_eq!(
            roundtrip(&mut cs, &mut ss, b"repo:read").await,
            b"repo:read",
            "{name}"
        );
        assert!(ss.authorize(&scope("repo:read")).is_ok(), "{name}");

        // The CA revokes, publishes its next list, and the server applies it.
        a.ca.revoke(
            &target(&planner, &coder, &unrelated),
            Some("test"),
            "operator",
            std::time::SystemTime::now(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        sv.apply_revocation_list(&a.revocations()).unwrap();

        let outcome: Result<(), String> = async {
            match expect {
                Some(index) => {
                    // The live session ends at once (no traffic needed), with the reason...
                    match tokio::time::timeout(Duration::from_secs(2), ss.recv()).await {
                        Ok(Err(Error::Revoked(reason))) if reason.contains(index) => {}
                        other => {
                            return Err(format!(
                                "the live session was not ended as expected: {other:?}"
                            ))
                        }
                    }
                    if !matches!(ss.authorize(&scope("repo:read")), Err(Error::Revoked(_))) {
                        return Err("authorize still works on the ended session".into());
                    }
                    // ...which the client learns from the close frame.
                    match tokio::time::timeout(T, cs.recv()).await {
                        Ok(Err(Error::Closed { code, .. })) if code == "revoked" => {}
                        other => return Err(format!("client: {other:?}")),
                    }
                    // The next handshake is refused with the same code.
                    let again = connect(&c, addr).await;
                    match (&again, next(&mut accepted).await) {
                        (Err(Error::Rejected { code, .. }), Err(e))
                            if code == "revoked"
                                && e.protocol_code() == Some(ErrorCode::Revoked) => {}
                        (other, server) => {
                            return Err(format!(
                                "reconnect: {other:?} / {:?}",
                                server.map(|s| s.peer().id.clone())
                            ))
                        }
                    }
                }
                None => {
                    // Unaffected: the live session carries on and a new handshake succeeds.
                    cs.send(b"still here")
                        .await
                        .map_err(|e| format!("send: {e}"))?;
                    match tokio::time::timeout(T, ss.recv()).await {
                        Ok(Ok(Some(got))) if &got[..] == b"still here" => {}
                        other => return Err(format!("the live session ended: {other:?}")),
                    }
                    ss.authorize(&scope("repo:read"))
                        .map_err(|e| format!("authorize: {e}"))?;
                    connect(&c, addr)
                        .await
                        .map_err(|e| format!("reconnect: {e}"))?;
                    next(&mut accepted)
                        .await
                        .map_err(|e| format!("reconnect, server: {e}"))?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
