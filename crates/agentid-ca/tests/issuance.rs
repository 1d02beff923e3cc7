//! Issuance flows and refusals: each refusal has its own error.
#![cfg(test)]
#![allow(missing_docs)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use agentid_ca::{
    CaError, CertificateAuthority, ChildRequest, KeySource, KeyType, OpenTaskRequest, RenewRequest,
    RenewRequester, RevokeTarget, ServiceRequest, TaskRequester,
};
use agentid_protocol::{
    Algorithm, BundleSet, Chain, ErrorCode, IdSet, Jkt, Limits, LinkBuilder, PeerId,
    RevocationList, Scope, SpiffeId, TaskId, TaskIdentity, TaskKey, Verifier, VerifierConfig,
};
use common::*;
use rcgen::{IsCa, KeyUsagePurpose, SanType};

fn scope(s: &str) -> Scope {
    Scope::parse(s).unwrap()
}

/// The operator's request to open a task of `agent` holding `s`, for `key`.
fn by_operator(agent: &str, key: KeySource, s: &str) -> OpenTaskRequest {
    OpenTaskRequest::new(agent, key, TaskRequester::Operator, scope(s))
}

/// A fresh P-256 key whose private half the test never uses.
fn any_key() -> KeySource {
    spki_key(Algorithm::Es256).1
}

/// `parent`'s request for a child certificate of `agent` for a fresh key, without the
/// parent's chain and with the default TTL.
fn child_of(parent: &TaskIdentity, agent: &str) -> ChildRequest {
    ChildRequest {
        parent: parent.clone(),
        parent_chain: None,
        agent: agent.into(),
        key: any_key(),
        ttl: None,
    }
}

fn planner_task(t: &TestCa) -> (agentid_protocol::TaskKey, agentid_ca::TaskCredentials) {
    let (k, src) = spki_key(Algorithm::Es256);
    let mut req = by_operator("planner", src, "tickets:read");
    req.max_depth = Some(1);
    (k, t.ca.open_task(&req, now()).unwrap())
}

fn task_uri(agent: &str, task: &str) -> String {
    format!("spiffe://{TD}/agent/{agent}/task/{task}")
}

// ------------------------------------- CSR refusals (spec/PROTOCOL.md section 19, CSR smuggling)

fn csr_request(csr: Vec<u8>, task: &str) -> OpenTaskRequest {
    let mut req = by_operator("planner", KeySource::Csr(csr), "tickets:read");
    req.task = Some(TaskId::parse(task).unwrap());
    req
}

#[test]
fn csr_with_only_the_identity_is_accepted() {
    let t = test_ca(KeyType::P256);
    let kp = p256_keypair();
    let csr = csr_with(&kp, &[uri(&task_uri("planner", "t1"))], |p| {
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.is_ca = IsCa::ExplicitNoCa;
    });
    let creds = t.ca.open_task(&csr_request(csr, "t1"), now()).unwrap();
    assert_eq!(creds.identity.as_str(), task_uri("planner", "t1"));
    // A CSR without any SAN is accepted too.
    let csr = csr_with(&p256_keypair(), &[], |_| {});
    t.ca.open_task(&csr_request(csr, "t2"), now()).unwrap();
    // Ed25519 CSR.
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let csr = csr_with(&ed, &[], |_| {});
    t.ca.open_task(&csr_request(csr, "t3"), now()).unwrap();
}

#[test]
fn csr_asking_for_ca_true_is_refused() {
    let t = test_ca(KeyType::P256);
    let csr = csr_with(&p256_keypair(), &[], |p| {
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
    });
    let e = t.ca.open_task(&csr_request(csr, "t1"), now()).unwrap_err();
    assert!(matches!(e, CaError::CsrRequestsCa), "{e}");
    assert!(e.to_string().contains("CA:TRUE"));
}

#[test]
fn csr_with_two_uri_sans_is_refused() {
    let t = test_ca(KeyType::P256);
    let me = task_uri("planner", "t1");
    let other = task_uri("payments", "t1");
    let csr = csr_with(&p256_keypair(), &[uri(&me), uri(&other)], |_| {});
    let e = t.ca.open_task(&csr_request(csr, "t1"), now()).unwrap_err();
    assert!(
        matches!(&e, CaError::CsrSanMismatch { requested, .. } if requested.len() == 2),
        "{e}"
    );
    // One URI, but not the identity being issued.
    let csr = csr_with(&p256_keypair(), &[uri(&other)], |_| {});
    let e = t.ca.open_task(&csr_request(csr, "t1"), now()).unwrap_err();
    assert!(matches!(e, CaError::CsrSanMismatch { .. }), "{e}");
}

#[test]
fn csr_with_a_dns_san_is_refused() {
    let t = test_ca(KeyType::P256);
    let me = task_uri("planner", "t1");
    let csr = csr_with(
        &p256_keypair(),
        &[
            uri(&me),
            SanType::DnsName("bank.example".try_into().unwrap()),
        ],
        |_| {},
    );
    let e = t.ca.open_task(&csr_request(csr, "t1"), now()).unwrap_err();
    assert!(
        matches!(&e, CaError::CsrSanMismatch { requested, .. } if requested.iter().any(|r| r == "DNS:bank.example")),
        "{e}"
    );
    let csr = csr_with(
        &p256_keypair(),
        &[SanType::DnsName("bank.example".try_into().unwrap())],
        |_| {},
    );
    let e = t.ca.open_task(&csr_request(csr, "t1"), now()).unwrap_err();
    assert!(matches!(e, CaError::CsrSanMismatch { .. }), "{e}");
}

#[test]
fn a_csr_asking_for_many_names_leaves_a_bounded_audit_record() {
    let t = test_ca(KeyType::P256);
    let me = task_uri("planner", "t1");
    // 200 names of 60 bytes: 12 KB of the requester's text in the CSR.
    let mut sans = vec![uri(&me)];
    for i in 0..200 {
        let name = format!("{i:03}{}.example", "n".repeat(49));
        sans.push(SanType::DnsName(name.as_str().try_into().unwrap()));
    }
    let csr = csr_with(&p256_keypair(), &sans, |_| {});
    let e = t.ca.open_task(&csr_request(csr, "t1"), now()).unwrap_err();
    assert!(matches!(e, CaError::CsrSanMismatch { .. }), "{e}");
    // Records never hold CSRs (spec/CA-API.md 4.1): the refusal quotes a few names, not all.
    let records = audit_records(&t.ca);
    let refusal = records
        .iter()
        .rev()
        .find(|r| r["kind"] == "issue.task" && r["outcome"] == "denied")
        .unwrap();
    let reason = refusal["reason"].as_str().unwrap();
    assert!(reason.len() <= 2048, "{} bytes", reason.len());
    assert!(e.to_string().len() <= 2048, "{} bytes", e.to_string().len());
}

#[test]
fn csr_with_extra_key_usage_is_refused() {
    let t = test_ca(KeyType::P256);
    let csr = csr_with(&p256_keypair(), &[], |p| {
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
    });
    let e = t.ca.open_task(&csr_request(csr, "t1"), now()).unwrap_err();
    assert!(matches!(e, CaError::CsrKeyUsage(_)), "{e}");
    let csr = csr_with(&p256_keypair(), &[], |p| {
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
    });
    let e = t.ca.open_task(&csr_request(csr, "t1"), now()).unwrap_err();
    assert!(matches!(e, CaError::CsrExtendedKeyUsage(_)), "{e}");
}

/// A DER TLV with a definite, minimal length.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x100 {
        out.extend([0x81, n as u8]);
    } else {
        out.extend([0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(content);
    out
}

/// A P-256 CSR signed by `key` whose extensionRequest attribute holds `values` (each a DER
/// `Extensions` SEQUENCE) in its SET, in that order: rcgen writes one value only.
fn csr_with_extension_request_values(key: &rcgen::KeyPair, values: &[Vec<u8>]) -> Vec<u8> {
    use rcgen::{PublicKeyData, SigningKey};
    const EXTENSION_REQUEST: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e,
    ];
    const ECDSA_WITH_SHA256: &[u8] = &[
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
    ];
    let attribute = tlv(
        0x30,
        &[EXTENSION_REQUEST, &tlv(0x31, &values.concat())].concat(),
    );
    let info = tlv(
        0x30,
        &[
            &[0x02, 0x01, 0x00][..],
            &[0x30, 0x00],
            &key.subject_public_key_info(),
            &tlv(0xa0, &attribute),
        ]
        .concat(),
    );
    let signature = key.sign(&info).unwrap();
    let mut bits = vec![0u8];
    bits.extend(signature);
    tlv(
        0x30,
        &[&info[..], ECDSA_WITH_SHA256, &tlv(0x03, &bits)].concat(),
    )
}

/// `Extensions` with one subjectAltName holding `uri`.
fn san_uri_extensions(uri: &str) -> Vec<u8> {
    let names = tlv(0x30, &tlv(0x86, uri.as_bytes()));
    let ext = tlv(
        0x30,
        &[&[0x06, 0x03, 0x55, 0x1d, 0x11][..], &tlv(0x04, &names)].concat(),
    );
    tlv(0x30, &ext)
}

/// `Extensions` with one critical basicConstraints `cA = TRUE`.
fn ca_true_extensions() -> Vec<u8> {
    let bc = tlv(0x30, &[0x01, 0x01, 0xff]);
    let ext = tlv(
        0x30,
        &[
            &[0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff][..],
            &tlv(0x04, &bc),
        ]
        .concat(),
    );
    tlv(0x30, &ext)
}

#[test]
fn a_csr_asking_for_ca_true_in_a_second_extension_request_value_is_refused() {
    let t = test_ca(KeyType::P256);
    // The hand-built CSR itself is sound: with the identity alone, it is issued.
    let me = task_uri("planner", "t1");
    let csr = csr_with_extension_request_values(&p256_keypair(), &[san_uri_extensions(&me)]);
    t.ca.open_task(&csr_request(csr, "t1"), now()).unwrap();
    // extensionRequest is single-valued (PKCS#9): a second value asking for `cA = TRUE` is
    // not a request the CA may read past.
    let me = task_uri("planner", "t2");
    let csr = csr_with_extension_request_values(
        &p256_keypair(),
        &[san_uri_extensions(&me), ca_true_extensions()],
    );
    let e = t.ca.open_task(&csr_request(csr, "t2"), now()).unwrap_err();
    assert!(matches!(e, CaError::CsrMalformed(_)), "{e}");
    // And alone, that value is refused as what it asks for.
    let csr = csr_with_extension_request_values(&p256_keypair(), &[ca_true_extensions()]);
    let e = t.ca.open_task(&csr_request(csr, "t3"), now()).unwrap_err();
    assert!(matches!(e, CaError::CsrRequestsCa), "{e}");
}

#[test]
fn csr_with_a_bad_signature_is_refused() {
    let t = test_ca(KeyType::P256);
    for kp in [
        p256_keypair(),
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
    ] {
        let mut csr = csr_with(&kp, &[], |_| {});
        // The signature is the last bytes of the DER: flip one bit inside it.
        let n = csr.len();
        csr[n - 5] ^= 0x01;
        let e = t.ca.open_task(&csr_request(csr, "t1"), now()).unwrap_err();
        assert!(matches!(e, CaError::CsrBadSignature), "{e}");
    }
}

#[test]
fn csr_with_an_rsa_key_is_refused() {
    let t = test_ca(KeyType::P256);
    let rsa = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let csr = csr_with(&rsa, &[], |_| {});
    let e = t.ca.open_task(&csr_request(csr, "t1"), now()).unwrap_err();
    assert!(
        matches!(&e, CaError::CsrUnsupportedKey(k) if k == "RSA"),
        "{e}"
    );
    // P-384 too.
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let csr = csr_with(&p384, &[], |_| {});
    let e = t.ca.open_task(&csr_request(csr, "t1"), now()).unwrap_err();
    assert!(matches!(e, CaError::CsrUnsupportedKey(_)), "{e}");
}

#[test]
fn garbage_csr_is_malformed() {
    let t = test_ca(KeyType::P256);
    let e =
        t.ca.open_task(&csr_request(b"not a csr".to_vec(), "t1"), now())
            .unwrap_err();
    assert!(matches!(e, CaError::CsrMalformed(_)), "{e}");
    let mut csr = csr_with(&p256_keypair(), &[], |_| {});
    csr.push(0);
    let e = t.ca.open_task(&csr_request(csr, "t1"), now()).unwrap_err();
    assert!(matches!(e, CaError::CsrMalformed(_)), "{e}");
}

// ---------------------------------------------------------------- keys and identities

#[test]
fn key_already_used_by_another_identity_is_refused() {
    let t = test_ca(KeyType::P256);
    let k = agentid_protocol::TaskKey::generate(Algorithm::Es256).unwrap();
    let spki = k.public_key().to_spki_der();
    t.ca.open_task(
        &by_operator("planner", KeySource::Spki(spki.clone()), "tickets:read"),
        now(),
    )
    .unwrap();
    // Same key, another task of the same agent.
    let e =
        t.ca.open_task(
            &by_operator("planner", KeySource::Spki(spki.clone()), "tickets:read"),
            now(),
        )
        .unwrap_err();
    assert!(
        matches!(&e, CaError::KeyInUse { jkt, .. } if *jkt == k.public_key().thumbprint()),
        "{e}"
    );
    // Same key for a service.
    let e =
        t.ca.issue_service(
            &ServiceRequest {
                service: "search".into(),
                key: KeySource::Spki(spki),
                ttl: None,
            },
            now(),
        )
        .unwrap_err();
    assert!(matches!(e, CaError::KeyInUse { .. }), "{e}");
    // Nothing was recorded for the refusals.
    assert_eq!(t.ca.issuances().unwrap().len(), 1);
}

#[test]
fn a_task_is_opened_once() {
    let t = test_ca(KeyType::P256);
    let mut req = by_operator("planner", any_key(), "tickets:read");
    req.task = Some(TaskId::parse("fixed").unwrap());
    t.ca.open_task(&req, now()).unwrap();
    req.key = spki_key(Algorithm::Es256).1;
    let e = t.ca.open_task(&req, now()).unwrap_err();
    assert!(matches!(e, CaError::IdentityExists(_)), "{e}");
    // Another agent cannot open the same task id either (the task has one root holder).
    let mut req2 = by_operator("worker", any_key(), "tickets:read");
    req2.task = Some(TaskId::parse("fixed").unwrap());
    let e = t.ca.open_task(&req2, now()).unwrap_err();
    assert!(matches!(e, CaError::IdentityExists(_)), "{e}");
}

#[test]
fn renewal_keeps_the_key_and_refuses_another() {
    let t = test_ca(KeyType::P256);
    let (k, creds) = planner_task(&t);
    let id = PeerId::Task(creds.identity.clone());
    let later = now() + Duration::from_secs(120);
    let renewed =
        t.ca.renew(
            &RenewRequest {
                identity: id.clone(),
                key: KeySource::Spki(k.public_key().to_spki_der()),
                requester: RenewRequester::Holder,
                ttl: None,
            },
            later,
        )
        .unwrap();
    assert_ne!(renewed.serial(), creds.certificate.serial());
    assert_eq!(renewed.jkt, creds.certificate.jkt);
    assert_eq!(renewed.leaf.not_after, unix(later) + 300);
    // Another key for the same identity.
    let e =
        t.ca.renew(
            &RenewRequest {
                identity: id.clone(),
                key: spki_key(Algorithm::Es256).1,
                requester: RenewRequester::Holder,
                ttl: None,
            },
            later,
        )
        .unwrap_err();
    assert!(matches!(e, CaError::KeyMismatch { .. }), "{e}");
    // Unknown identity.
    let ghost = PeerId::parse(&task_uri("planner", "ghost")).unwrap();
    let e =
        t.ca.renew(
            &RenewRequest {
                identity: ghost,
                key: KeySource::Spki(k.public_key().to_spki_der()),
                requester: RenewRequester::Holder,
                ttl: None,
            },
            later,
        )
        .unwrap_err();
    assert!(matches!(e, CaError::UnknownIdentity(_)), "{e}");
    // Renewal never outlives the task's grant.
    let near_end = now() + Duration::from_secs(3600 - 100);
    let r =
        t.ca.renew(
            &RenewRequest {
                identity: id,
                key: KeySource::Spki(k.public_key().to_spki_der()),
                requester: RenewRequester::Holder,
                ttl: None,
            },
            near_end,
        )
        .unwrap();
    assert_eq!(r.leaf.not_after, creds.grant_exp);
}

// ---------------------------------------------------------------- policy

#[test]
fn ttl_above_policy_is_refused() {
    let t = test_ca(KeyType::P256);
    let mut req = by_operator("planner", any_key(), "tickets:read");
    req.ttl = Some(minutes(11));
    let e = t.ca.open_task(&req, now()).unwrap_err();
    assert!(
        matches!(&e, CaError::Policy { rule, .. } if rule == "agents.planner.max_ttl"),
        "{e}"
    );
    req.ttl = Some(minutes(10));
    t.ca.open_task(&req, now()).unwrap();
    // Task lifetime above policy.
    let mut req = by_operator("planner", any_key(), "tickets:read");
    req.task_ttl = Some(Duration::from_secs(9 * 3600));
    let e = t.ca.open_task(&req, now()).unwrap_err();
    assert!(
        matches!(&e, CaError::Policy { rule, .. } if rule == "defaults.max_task_ttl"),
        "the rule that decided (planner sets none): {e}"
    );
    assert!(
        e.to_string()
            .contains("task lifetime 9h exceeds the maximum of 8h"),
        "durations as written: {e}"
    );
    // Services too.
    let e =
        t.ca.issue_service(
            &ServiceRequest {
                service: "search".into(),
                key: spki_key(Algorithm::Es256).1,
                ttl: Some(Duration::from_secs(7200)),
            },
            now(),
        )
        .unwrap_err();
    assert!(
        matches!(&e, CaError::Policy { rule, .. } if rule == "services.search.max_ttl"),
        "{e}"
    );
}

#[test]
fn scope_outside_policy_is_refused() {
    /// What the CA must answer.
    enum Want {
        Issued,
        /// A policy refusal naming `rule` (and, where given, with exactly `message`).
        Refused {
            rule: &'static str,
            message: Option<&'static str>,
        },
    }
    use Want::{Issued, Refused};
    struct Case {
        name: &'static str,
        agent: &'static str,
        scope: &'static str,
        max_depth: Option<u8>,
        audience: Option<&'static str>,
        want: Want,
    }
    let case = |name, agent, scope, want| Case {
        name,
        agent,
        scope,
        max_depth: None,
        audience: None,
        want,
    };
    let scopes = |message| Refused {
        rule: "agents.planner.scopes",
        message,
    };
    let cases = [
        case(
            "a scope token outside the agent's patterns",
            "planner",
            "tickets:read payments:write",
            scopes(Some(
                r#"policy: agent "planner" may not hold scope "payments:write" (rule agents.planner.scopes)"#,
            )),
        ),
        // `tickets:*` covers tickets:read:all but not `tickets` itself.
        case(
            "the bare prefix of a pattern",
            "planner",
            "tickets",
            scopes(None),
        ),
        case(
            "tokens under the agent's patterns",
            "planner",
            "tickets:read:all search:query",
            Issued,
        ),
        // Wildcards are never granted by request.
        case("a wildcard", "planner", "tickets:*", scopes(None)),
        Case {
            max_depth: Some(3),
            ..case(
                "max_depth above policy",
                "planner",
                "tickets:read",
                Refused {
                    rule: "agents.planner.max_depth",
                    message: None,
                },
            )
        },
        Case {
            audience: Some("spiffe://other.org/svc/x"),
            ..case(
                "an audience outside the trust domain (no audiences rule)",
                "planner",
                "tickets:read",
                Refused {
                    rule: "agents.planner.audiences",
                    message: None,
                },
            )
        },
        case(
            "an agent without a rule",
            "nobody",
            "tickets:read",
            Refused {
                rule: "agents.nobody",
                message: None,
            },
        ),
    ];
    let t = test_ca(KeyType::P256);
    let mut failures = Vec::new();
    for c in &cases {
        let mut req = by_operator(c.agent, any_key(), c.scope);
        req.max_depth = c.max_depth;
        req.audience = c
            .audience
            .map(|a| IdSet::new(vec![SpiffeId::parse(a).unwrap()]).unwrap());
        let got = t.ca.open_task(&req, now());
        let met = match (&c.want, &got) {
            (Issued, Ok(_)) => true,
            (Refused { rule, message }, Err(e @ CaError::Policy { rule: r, .. })) => {
                r == rule && message.is_none_or(|m| e.to_string() == m)
            }
            _ => false,
        };
        if !met {
            let got = got.map(|c| c.identity.to_string());
            failures.push(format!("{}: {got:?}", c.name));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// An agent rule's `audiences` bounds every grant the CA opens for the agent: a request that
/// names no audience gets the rule's list, not a grant without `aud` (which verifiers read as
/// `[iss]`, the whole trust domain), so every other service of the trust domain would accept
/// the agent's chain.
#[test]
fn a_task_opened_without_an_audience_is_held_to_the_rules_audiences() {
    let dir = make_ca_dir(KeyType::P256);
    let policy = format!(
        "{POLICY}\n[agents.fetcher]\nscopes = [\"search:query\"]\n\
         audiences = [\"spiffe://{TD}/svc/search\"]\nrequesters = [\"operator\"]\n"
    );
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let creds = ca
        .open_task(&by_operator("fetcher", any_key(), "search:query"), now())
        .unwrap();
    let aud = creds.grant.read_unverified().unwrap().audience().unwrap();
    let id = |s: &str| SpiffeId::parse(&format!("spiffe://{TD}/{s}")).unwrap();
    assert!(aud.covers_id(&id("svc/search")), "{aud:?}");
    assert!(!aud.covers_id(&id("svc/payments")), "{aud:?}");
}

#[test]
fn unauthorized_requester_is_refused() {
    let t = test_ca(KeyType::P256);
    // summarizer may only be requested by a planner parent, not by the operator.
    let req = by_operator("summarizer", any_key(), "tickets:read");
    let e = t.ca.open_task(&req, now()).unwrap_err();
    assert!(
        matches!(&e, CaError::Unauthorized { rule, .. } if rule == "agents.summarizer.requesters"),
        "{e}"
    );
    // worker may not be requested by a planner parent.
    let (_k, creds) = planner_task(&t);
    let e =
        t.ca.issue_child(&child_of(&creds.identity, "worker"), now())
            .unwrap_err();
    assert!(
        matches!(&e, CaError::Unauthorized { rule, .. } if rule == "agents.worker.requesters"),
        "{e}"
    );
    // worker may not get a bootstrap token.
    let e =
        t.ca.create_bootstrap_token("worker", None, minutes(5), now())
            .unwrap_err();
    assert!(matches!(e, CaError::Unauthorized { .. }), "{e}");
    // A parent the CA never issued.
    let ghost = TaskIdentity::parse(&task_uri("planner", "ghost")).unwrap();
    let e =
        t.ca.issue_child(&child_of(&ghost, "summarizer"), now())
            .unwrap_err();
    assert!(matches!(e, CaError::ParentNotActive(_)), "{e}");
}

#[test]
fn wrong_trust_domain_parent_is_refused() {
    let t = test_ca(KeyType::P256);
    let other = TaskIdentity::parse("spiffe://other.org/agent/planner/task/t1").unwrap();
    let e =
        t.ca.issue_child(&child_of(&other, "summarizer"), now())
            .unwrap_err();
    assert!(matches!(e, CaError::WrongTrustDomain { .. }), "{e}");
}

// ---------------------------------------------------------------- children

/// CA-API.md 3.8: a child never outlives its parent's certificate (here shorter than the task).
#[test]
fn a_child_never_outlives_its_parents_certificate() {
    let t = test_ca(KeyType::P256);
    let (_k, src) = spki_key(Algorithm::Es256);
    let mut req = by_operator("planner", src, "tickets:read");
    req.ttl = Some(minutes(2));
    req.task_ttl = Some(minutes(60));
    req.max_depth = Some(1);
    let n = now();
    let creds = t.ca.open_task(&req, n).unwrap();
    let parent_not_after = creds.certificate.leaf.not_after;
    assert!(parent_not_after < creds.grant_exp);
    // The default TTL (5 minutes) is cut to the parent's certificate.
    let child =
        t.ca.issue_child(&child_of(&creds.identity, "summarizer"), n)
            .unwrap();
    assert_eq!(child.leaf.not_after, parent_not_after);
    // An explicit TTL beyond it is refused, and nothing is issued.
    let before = t.ca.issuances().unwrap().len();
    let e =
        t.ca.issue_child(
            &ChildRequest {
                ttl: Some(minutes(4)),
                ..child_of(&creds.identity, "summarizer")
            },
            n,
        )
        .unwrap_err();
    assert!(
        matches!(e, CaError::OutlivesParent { parent_exp, .. } if parent_exp == parent_not_after),
        "{e}"
    );
    assert_eq!(t.ca.issuances().unwrap().len(), before);
}

/// CA-API.md 3.8: a child deeper in its task than the grant's `max_depth` is refused
/// (`cap_reached`), and nothing is issued; the depth counts every parent up to the root holder.
#[test]
fn a_child_deeper_than_its_tasks_max_depth_is_refused() {
    let t = test_ca(KeyType::P256);
    let open = |depth: Option<u8>| {
        let (_k, src) = spki_key(Algorithm::Es256);
        let mut req = by_operator("planner", src, "tickets:read");
        req.max_depth = depth;
        t.ca.open_task(&req, now()).unwrap()
    };
    let as_task =
        |c: &agentid_ca::IssuedCertificate| TaskIdentity::parse(c.identity.as_str()).unwrap();
    // A sealed task (max_depth 0, the default) has no children.
    let sealed = open(None);
    let before = t.ca.issuances().unwrap().len();
    let e =
        t.ca.issue_child(&child_of(&sealed.identity, "summarizer"), now())
            .unwrap_err();
    assert!(
        matches!(
            e,
            CaError::ChildTooDeep {
                depth: 1,
                max_depth: 0
            }
        ),
        "{e}"
    );
    assert_eq!(t.ca.issuances().unwrap().len(), before);
    // max_depth 1: children of the root holder, no grandchildren.
    let one = open(Some(1));
    let child =
        t.ca.issue_child(&child_of(&one.identity, "summarizer"), now())
            .unwrap();
    let before = t.ca.issuances().unwrap().len();
    let e =
        t.ca.issue_child(&child_of(&as_task(&child), "reviewer"), now())
            .unwrap_err();
    assert!(
        matches!(
            e,
            CaError::ChildTooDeep {
                depth: 2,
                max_depth: 1
            }
        ),
        "{e}"
    );
    assert_eq!(t.ca.issuances().unwrap().len(), before);
    // max_depth 2: the grandchild too.
    let two = open(Some(2));
    let child =
        t.ca.issue_child(&child_of(&two.identity, "summarizer"), now())
            .unwrap();
    let grandchild =
        t.ca.issue_child(&child_of(&as_task(&child), "reviewer"), now())
            .unwrap();
    assert_eq!(
        grandchild.identity.as_str(),
        task_uri("reviewer", two.identity.task_id().as_str())
    );
}

/// CA-API.md 3.8 and 3.9: once the root holder's key is revoked, no descendant of it gets a
/// certificate, however deep: the child opens no grandchild and the grandchild is not renewed
/// (`Revoked`), and nothing is issued. Each issuance refuses every ancestor's key and agent.
#[test]
fn a_revoked_root_key_ends_issuance_to_every_descendant() {
    let t = test_ca(KeyType::P256);
    let (_k, src) = spki_key(Algorithm::Es256);
    let mut req = by_operator("planner", src, "tickets:read");
    req.max_depth = Some(2);
    let root = t.ca.open_task(&req, now()).unwrap();
    let child =
        t.ca.issue_child(&child_of(&root.identity, "summarizer"), now())
            .unwrap();
    let child = TaskIdentity::parse(child.identity.as_str()).unwrap();
    let (gk, gsrc) = spki_key(Algorithm::Es256);
    let mut grandchild = child_of(&child, "reviewer");
    grandchild.key = gsrc.clone();
    let issued = t.ca.issue_child(&grandchild, now()).unwrap();

    revoke_serial(&t.ca, root.certificate.serial());
    let before = t.ca.issuances().unwrap().len();
    // The child asks again for the same grandchild key (allowed before the revocation).
    let e = t.ca.issue_child(&grandchild, now()).unwrap_err();
    assert!(matches!(e, CaError::Revoked { .. }), "{e}");
    let e =
        t.ca.renew(
            &RenewRequest {
                identity: issued.identity.clone(),
                key: KeySource::Spki(gk.public_key().to_spki_der()),
                requester: RenewRequester::Holder,
                ttl: None,
            },
            now(),
        )
        .unwrap_err();
    assert!(matches!(e, CaError::Revoked { .. }), "{e}");
    assert_eq!(t.ca.issuances().unwrap().len(), before, "nothing issued");
}

/// PROTOCOL.md 6.5 ("Entry expiry"): an entry stays listed until everything it could hit has
/// expired. An agent and a key are hit by the links that name the agent or bind or sign with the
/// key, which live as long as their delegator makes them, up to the task grant's `exp`: longer
/// than a child's certificate (which ends with its parent's), and whether the CA ever certified
/// that agent or key in the task or not. The revocation is listed as long as such a link can
/// verify.
#[test]
fn a_revoked_agent_or_key_stays_listed_while_a_link_to_it_can_verify() {
    for (certified, target) in [
        (true, "key"),
        (true, "agent"),
        (false, "key"),
        (false, "agent"),
    ] {
        let t = test_ca(KeyType::P256);
        let (root_key, src) = spki_key(Algorithm::Es256);
        let mut req = by_operator("planner", src, "tickets:read");
        req.ttl = Some(minutes(2));
        req.task_ttl = Some(minutes(60));
        req.max_depth = Some(1);
        let n = now();
        let root = t.ca.open_task(&req, n).unwrap();
        let (key, key_src) = spki_key(Algorithm::Es256);
        // A child the CA certified (its certificate ends with its parent's, in 2 minutes), or
        // an agent the root delegates to without any certificate of the task.
        let (to, agent) = if certified {
            let child =
                t.ca.issue_child(
                    &ChildRequest {
                        key: key_src,
                        ..child_of(&root.identity, "summarizer")
                    },
                    n,
                )
                .unwrap();
            assert!(child.leaf.not_after < root.grant_exp);
            (
                TaskIdentity::parse(child.identity.as_str()).unwrap(),
                "summarizer",
            )
        } else {
            let task = root.identity.task_id();
            (
                TaskIdentity::parse(&task_uri("worker", task.as_str())).unwrap(),
                "worker",
            )
        };
        // The parent delegates for the whole task.
        let chain = LinkBuilder::new(&root.grant, &to, key.public_key(), scope("tickets:read"))
            .validity(unix(n), unix(n), root.grant_exp)
            .sign(&root_key)
            .unwrap();
        let what = match target {
            "key" => RevokeTarget::Key(key.public_key().jkt()),
            _ => RevokeTarget::Agent(agent.into()),
        };
        t.ca.revoke(&what, None, "operator", n).unwrap();
        // Ten minutes after the child's certificate ended, the link still has most of an hour.
        let later = n + minutes(12);
        assert!(unix(later) < root.grant_exp);
        let mut bundles = BundleSet::new();
        bundles.insert(t.ca.trust_bundle().unwrap()).unwrap();
        let me = SpiffeId::parse(&format!("spiffe://{TD}/svc/search")).unwrap();
        let mut cfg = VerifierConfig::new(me, bundles);
        cfg.apply_revocation_list(&t.ca.revocation_list(later).unwrap())
            .unwrap();
        let e = Verifier::new(cfg)
            .unwrap()
            .verify_chain(
                chain.as_str(),
                to.as_spiffe_id(),
                key.public_key(),
                unix(later),
            )
            .unwrap_err();
        assert_eq!(
            e.code(),
            ErrorCode::Revoked,
            "{target} (certified: {certified}): {e}"
        );
    }
}

/// CA-API.md 3.8 and 3.9: a task whose grant is revoked (by its `jti`) opens no child and
/// renews nothing: the grant is the task's authority, so the revocation refuses inside the
/// issuance's own transaction (with the task, agent and key entries), not only in the
/// service's per-request re-check of its caller, which a call already past it does not see.
#[test]
fn a_revoked_grant_ends_its_tasks_children_and_renewals() {
    let t = test_ca(KeyType::P256);
    let (k, creds) = planner_task(&t);
    t.ca.revoke(
        &RevokeTarget::GrantJti(creds.grant_jti.parse().unwrap()),
        None,
        "operator",
        now(),
    )
    .unwrap();
    let before = t.ca.issuances().unwrap().len();
    let e =
        t.ca.issue_child(&child_of(&creds.identity, "summarizer"), now())
            .unwrap_err();
    assert!(
        matches!(&e, CaError::Revoked { kind: "jti", value } if *value == creds.grant_jti),
        "{e}"
    );
    let e =
        t.ca.renew(
            &RenewRequest {
                identity: PeerId::Task(creds.identity.clone()),
                key: KeySource::Spki(k.public_key().to_spki_der()),
                requester: RenewRequester::Holder,
                ttl: None,
            },
            now(),
        )
        .unwrap_err();
    assert!(
        matches!(&e, CaError::Revoked { kind: "jti", value } if *value == creds.grant_jti),
        "{e}"
    );
    assert_eq!(t.ca.issuances().unwrap().len(), before, "nothing issued");
}

#[test]
fn child_gets_no_grant_and_never_outlives_the_parent_chain() {
    let t = test_ca(KeyType::P256);
    let (_k, src) = spki_key(Algorithm::Es256);
    let mut req = by_operator("planner", src, "tickets:read");
    req.task_ttl = Some(minutes(8));
    req.ttl = Some(minutes(8));
    req.max_depth = Some(1);
    let n = now();
    let creds = t.ca.open_task(&req, n).unwrap();
    // 5 minutes later, the parent's chain has 3 minutes left: a defaulted TTL is shortened.
    let later = n + minutes(5);
    let child =
        t.ca.issue_child(
            &ChildRequest {
                parent_chain: Some(creds.grant.clone()),
                ..child_of(&creds.identity, "summarizer")
            },
            later,
        )
        .unwrap();
    assert_eq!(child.leaf.not_after, creds.grant_exp);
    assert_eq!(
        child.identity.as_str(),
        task_uri("summarizer", creds.identity.task_id().as_str())
    );
    // An explicit TTL beyond the parent's chain is refused.
    let e =
        t.ca.issue_child(
            &ChildRequest {
                ttl: Some(minutes(4)),
                ..child_of(&creds.identity, "summarizer")
            },
            later,
        )
        .unwrap_err();
    assert!(
        matches!(e, CaError::OutlivesParent { parent_exp, .. } if parent_exp == creds.grant_exp),
        "{e}"
    );
    // After the chain's end, nothing.
    let e =
        t.ca.issue_child(&child_of(&creds.identity, "summarizer"), n + minutes(9))
            .unwrap_err();
    assert!(matches!(e, CaError::ParentNotActive(_)), "{e}");
    // A chain of another holder is refused.
    let (_k2, other) = planner_task(&t);
    let e =
        t.ca.issue_child(
            &ChildRequest {
                parent_chain: Some(other.grant.clone()),
                ..child_of(&creds.identity, "summarizer")
            },
            later,
        )
        .unwrap_err();
    assert!(matches!(e, CaError::InvalidRequest(_)), "{e}");
    let rec =
        t.ca.find_serial(&child.serial().parse().unwrap())
            .unwrap()
            .unwrap();
    assert_eq!(rec.kind, agentid_ca::IssuanceKind::Child);
    assert_eq!(rec.grant_jti, None);
    assert_eq!(rec.requester, creds.identity.as_str());
}

// ---------------------------------------------------------------- bootstrap tokens

#[test]
fn bootstrap_token_is_single_use_and_bound() {
    let t = test_ca(KeyType::P256);
    let tok =
        t.ca.create_bootstrap_token("planner", None, minutes(10), now())
            .unwrap();
    let task = tok.identity.task_id();
    let mk = |agent: &str, task: &TaskId, token: &str| {
        let mut r = OpenTaskRequest::new(
            agent,
            spki_key(Algorithm::Es256).1,
            TaskRequester::Bootstrap(token.into()),
            scope("tickets:read"),
        );
        r.task = Some(task.clone());
        r
    };
    // Wrong task.
    let e =
        t.ca.open_task(
            &mk("planner", &TaskId::parse("other").unwrap(), &tok.token),
            now(),
        )
        .unwrap_err();
    assert!(matches!(e, CaError::BootstrapToken(_)), "{e}");
    // Wrong token.
    let e =
        t.ca.open_task(&mk("planner", &task, "nope"), now())
            .unwrap_err();
    assert!(matches!(e, CaError::BootstrapToken(_)), "{e}");
    // A principal cannot be asserted with a token.
    let mut r = mk("planner", &task, &tok.token);
    r.principal = Some(serde_json::json!({"format":"email","email":"alice@example.com"}));
    assert!(matches!(
        t.ca.open_task(&r, now()).unwrap_err(),
        CaError::InvalidRequest(_)
    ));
    // Expired.
    let e =
        t.ca.open_task(&mk("planner", &task, &tok.token), now() + minutes(11))
            .unwrap_err();
    assert!(matches!(e, CaError::BootstrapToken("expired")), "{e}");
    // Right: once.
    let creds =
        t.ca.open_task(&mk("planner", &task, &tok.token), now())
            .unwrap();
    assert_eq!(creds.identity, tok.identity);
    let e =
        t.ca.open_task(&mk("planner", &task, &tok.token), now())
            .unwrap_err();
    assert!(matches!(e, CaError::BootstrapToken(_)), "{e}");
    // The token is stored hashed only (SQLite's file is read whole; PostgreSQL's token row is
    // read through the store, which knows it by hash only).
    if t.pg.is_none() {
        let db = std::fs::read(t.path().join("ca.db")).unwrap();
        assert!(!db
            .windows(tok.token.len())
            .any(|w| w == tok.token.as_bytes()));
    }
    let audit = serde_json::to_string(&audit_records(&t.ca)).unwrap();
    assert!(audit.contains("bootstrap.create"));
    assert!(!audit.contains(&tok.token));
}

/// CA-API.md 1.3: a single-use token redeemed by several agents at once issues once, and every
/// other redemption is told `token_used`, whichever step of its issuance it lost on (the
/// token, or the identity the winner had just bound), never a binding error that sends an
/// agent looking for a key problem.
#[test]
fn concurrent_redemptions_of_one_token_issue_once_and_the_rest_are_told_token_used() {
    let t = test_ca(KeyType::P256);
    let binding = agentid_ca::TokenBinding {
        scope: "tickets:read".into(),
        ..Default::default()
    };
    for _round in 0..4 {
        let tok =
            t.ca.create_bound_token("planner", None, &binding, minutes(10), now())
                .unwrap();
        let csrs: Vec<Vec<u8>> = (0..6).map(|_| csr_for(&tok)).collect();
        let barrier = std::sync::Barrier::new(csrs.len());
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = csrs
                .into_iter()
                .map(|csr| {
                    let (ca, token, barrier) = (&t.ca, &tok.token, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        ca.enroll(token, csr, now())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "one issuance: {results:?}"
        );
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(r, agentid_ca::EnrollError::TokenUsed),
                "a losing redemption is told token_used: {r:?}"
            );
        }
    }
}

/// A CSR for a fresh key with the identity `tok` binds as its only SAN.
fn csr_for(tok: &agentid_ca::BootstrapToken) -> Vec<u8> {
    csr_with(
        &p256_keypair(),
        &[uri(tok.identity.as_spiffe_id().as_str())],
        |_| {},
    )
}

/// A bound token is stored with what it binds, and with its audit record, in the one
/// transaction that creates it (on either store): it enrolls once, to a task holding the bound
/// scope and depth, and its creation is audited once.
#[test]
fn a_bound_token_is_stored_with_its_binding() {
    let t = test_ca(KeyType::P256);
    let binding = agentid_ca::TokenBinding {
        scope: "tickets:read".into(),
        max_depth: Some(1),
        ..Default::default()
    };
    let tok =
        t.ca.create_bound_token("planner", None, &binding, minutes(10), now())
            .unwrap();
    let csr = || csr_for(&tok);
    let creds = t.ca.enroll(&tok.token, csr(), now()).unwrap();
    assert_eq!(creds.identity, tok.identity);
    // The grant holds what the token bound (its payload read directly).
    let payload = creds
        .grant
        .tokens()
        .next()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap();
    let grant: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(grant["scope"], "tickets:read");
    assert_eq!(grant["max_depth"], 1);
    assert!(matches!(
        t.ca.enroll(&tok.token, csr(), now()),
        Err(agentid_ca::EnrollError::TokenUsed)
    ));
    let created = audit_records(&t.ca)
        .iter()
        .filter(|r| r["kind"] == "bootstrap.create")
        .count();
    assert_eq!(created, 1);
}

/// CA-API.md 4.1: a token the store knows, refused before any issuance (used, expired), is an
/// `issue.task` `denied` record (actor `bootstrap`, the bound identity as subject, never the
/// token); an unknown token is recorded nowhere (anyone can send one); the trail verifies.
#[test]
fn refused_redemptions_of_known_tokens_are_audited() {
    let t = test_ca(KeyType::P256);
    let binding = agentid_ca::TokenBinding {
        scope: "tickets:read".into(),
        ..Default::default()
    };
    let tok =
        t.ca.create_bound_token("planner", None, &binding, minutes(10), now())
            .unwrap();
    let csr = || csr_for(&tok);
    t.ca.enroll(&tok.token, csr(), now()).unwrap();
    let before = audit_records(&t.ca).len();
    // Used: once through `enroll`, once through `redeem` (the service's route).
    assert!(matches!(
        t.ca.enroll(&tok.token, csr(), now()),
        Err(agentid_ca::EnrollError::TokenUsed)
    ));
    assert!(matches!(
        t.ca.redeem(&tok.token, csr(), now()),
        Err(agentid_ca::EnrollError::TokenUsed)
    ));
    // Expired (asked after its expiry).
    let late =
        t.ca.create_bound_token("planner", None, &binding, minutes(1), now())
            .unwrap();
    let after_expiry = now() + Duration::from_secs(120);
    assert!(matches!(
        t.ca.redeem(&late.token, csr(), after_expiry),
        Err(agentid_ca::EnrollError::TokenExpired)
    ));
    // Unknown.
    assert!(matches!(
        t.ca.redeem("not-a-token", csr(), now()),
        Err(agentid_ca::EnrollError::TokenInvalid)
    ));
    let records = audit_records(&t.ca);
    let new: Vec<_> = records[before..]
        .iter()
        .filter(|r| r["kind"] != "bootstrap.create")
        .collect();
    let subject = |id: &agentid_protocol::TaskIdentity| id.as_str().to_owned();
    assert_eq!(
        new.iter()
            .map(|r| (
                r["kind"].as_str().unwrap(),
                r["actor"].as_str().unwrap(),
                r["subject"].as_str().unwrap().to_owned(),
                r["outcome"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
            ))
            .collect::<Vec<_>>(),
        vec![
            (
                "issue.task",
                "bootstrap token",
                subject(&tok.identity),
                "denied",
                "bootstrap token already redeemed"
            ),
            (
                "issue.task",
                "bootstrap token",
                subject(&tok.identity),
                "denied",
                "bootstrap token already redeemed"
            ),
            (
                "issue.task",
                "bootstrap token",
                subject(&late.identity),
                "denied",
                "bootstrap token expired"
            ),
        ]
    );
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains(&tok.token) && !text.contains(&late.token));
    let report = agentid_ca::audit::verify_dir(t.dir.path())
        .unwrap()
        .unwrap();
    assert_eq!(report.issuances, 1);
}

// ---------------------------------------------------------------- grant, bundle, revocation

#[test]
fn grant_is_bound_to_the_leaf_key_and_verifies() {
    let t = test_ca(KeyType::P256);
    let (k, src) = spki_key(Algorithm::Es256);
    let mut req = by_operator("planner", src, "tickets:read search:query");
    req.principal = Some(serde_json::json!({"format":"email","email":"alice@example.com"}));
    req.max_depth = Some(2);
    req.limits = Some(Limits::new([("calls".to_string(), 5u64)].into_iter().collect()).unwrap());
    let n = now();
    let creds = t.ca.open_task(&req, n).unwrap();
    let mut bundles = BundleSet::new();
    bundles.insert(t.ca.trust_bundle().unwrap()).unwrap();
    let json = t.ca.trust_bundle().unwrap().to_json();
    assert!(
        json.contains("agentid-grant")
            && json.contains("agentid-revocation")
            && json.contains("x509-svid")
    );
    let me = SpiffeId::parse(&format!("spiffe://{TD}/svc/search")).unwrap();
    let mut cfg = VerifierConfig::new(me, bundles.clone()).enforce_limits(["calls"]);
    cfg.apply_revocation_list(&t.ca.revocation_list(n).unwrap())
        .unwrap();
    let v = Verifier::new(cfg).unwrap();
    let vc = v
        .verify_chain(
            creds.grant.as_str(),
            creds.identity.as_spiffe_id(),
            k.public_key(),
            unix(n),
        )
        .unwrap();
    assert_eq!(vc.holder, creds.identity);
    assert_eq!(vc.scope, scope("tickets:read search:query"));
    assert_eq!(vc.grant_jti, creds.grant_jti);
    assert_eq!(vc.expires, creds.grant_exp);
    assert_eq!(vc.mode, agentid_protocol::Mode::OnBehalfOf);
    // The grant is bound to the certificate's key: another key fails possession.
    let other = agentid_protocol::TaskKey::generate(Algorithm::Es256).unwrap();
    assert!(v
        .verify_chain(
            creds.grant.as_str(),
            creds.identity.as_spiffe_id(),
            other.public_key(),
            unix(n)
        )
        .is_err());
    let _ = Chain::parse_unverified(creds.grant.as_str()).unwrap();
}

#[test]
fn revoked_agent_task_and_key_ask_again_and_are_refused() {
    let t = test_ca(KeyType::P256);
    let (k, creds) = planner_task(&t);
    let n = now();
    let rec =
        t.ca.revoke(
            &RevokeTarget::Agent("planner".into()),
            Some("compromised"),
            "operator",
            n,
        )
        .unwrap();
    // The entry lives until everything it covers expired, plus skew: any link naming the
    // agent, in any task (`a_revoked_agent_or_key_stays_listed_while_a_link_to_it_can_verify`).
    assert_eq!(
        rec.exp,
        unix(n) + 86_400 + 60,
        "entry lives until everything it covers expired, plus skew"
    );
    assert!(rec.exp > creds.grant_exp + 60);
    let req = by_operator("planner", any_key(), "tickets:read");
    let e = t.ca.open_task(&req, n).unwrap_err();
    assert!(
        matches!(&e, CaError::Revoked { kind: "agent", value } if value == "planner"),
        "{e}"
    );
    let e =
        t.ca.renew(
            &RenewRequest {
                identity: PeerId::Task(creds.identity.clone()),
                key: KeySource::Spki(k.public_key().to_spki_der()),
                requester: RenewRequester::Holder,
                ttl: None,
            },
            n,
        )
        .unwrap_err();
    assert!(matches!(e, CaError::Revoked { kind: "agent", .. }), "{e}");
    // A child of a revoked parent agent.
    let e =
        t.ca.issue_child(&child_of(&creds.identity, "summarizer"), n)
            .unwrap_err();
    assert!(matches!(e, CaError::Revoked { kind: "agent", .. }), "{e}");

    // Revoking a service certificate by serial revokes its key.
    let svc_key = spki_key(Algorithm::Es256);
    let svc =
        t.ca.issue_service(
            &ServiceRequest {
                service: "search".into(),
                key: svc_key.1.clone(),
                ttl: None,
            },
            n,
        )
        .unwrap();
    let r =
        t.ca.revoke(
            &RevokeTarget::Serial(svc.serial().to_uppercase().parse().unwrap()),
            None,
            "operator",
            n,
        )
        .unwrap();
    assert_eq!(r.kind, agentid_ca::RevocationKind::Jkt);
    assert_eq!(r.value, svc_key.0.public_key().thumbprint());
    let e =
        t.ca.issue_service(
            &ServiceRequest {
                service: "search".into(),
                key: svc_key.1,
                ttl: None,
            },
            n,
        )
        .unwrap_err();
    assert!(matches!(e, CaError::Revoked { kind: "jkt", .. }), "{e}");
    // Unknown serial.
    let e =
        t.ca.revoke(
            &RevokeTarget::Serial("abcdef".parse().unwrap()),
            None,
            "operator",
            n,
        )
        .unwrap_err();
    assert!(matches!(e, CaError::NotFound { kind: "serial", .. }), "{e}");

    // The list carries both entries, is signed by the revocation key and sequenced.
    let mut bundles = BundleSet::new();
    bundles.insert(t.ca.trust_bundle().unwrap()).unwrap();
    let l1 = RevocationList::verify(&t.ca.revocation_list(n).unwrap(), &bundles).unwrap();
    let l2 = RevocationList::verify(&t.ca.revocation_list(n).unwrap(), &bundles).unwrap();
    assert_eq!(l1.len(), 2);
    assert!(l2.seq() > l1.seq(), "{} after {}", l2.seq(), l1.seq());
    // At least the time's milliseconds: a store restored from a backup publishes above the
    // lists it lost (CA-API 3.4).
    assert!(l1.seq() >= agentid_ca::store::list_seq_floor(n));
    assert_eq!(l1.next_update(), unix(n) + 600);
    assert!(l1.covers_peer(creds.identity.as_spiffe_id(), k.public_key()));
    // After everything expired (+ skew: any link naming the agent or binding the key ends
    // within the longest grant lifetime), the entries are pruned from the list.
    let late = n + Duration::from_secs(86_400 + 61);
    let l3 = RevocationList::verify(&t.ca.revocation_list(late).unwrap(), &bundles).unwrap();
    assert_eq!(l3.len(), 0);
    // ...but the CA still refuses the revoked agent.
    let req = by_operator("planner", any_key(), "tickets:read");
    assert!(matches!(
        t.ca.open_task(&req, late).unwrap_err(),
        CaError::Revoked { .. }
    ));
}

/// CA-API.md 3.4, "The CA forgets no revocation": an agent's entry leaves the lists once what
/// it covered has expired, but the CA still opens no task for that agent after that: revoking
/// is not undone by time.
#[test]
fn a_revocation_past_its_exp_still_refuses_new_tasks() {
    let t = test_ca(KeyType::P256);
    let n = now();
    let rec =
        t.ca.revoke(&RevokeTarget::Agent("planner".into()), None, "operator", n)
            .unwrap();
    let later = std::time::UNIX_EPOCH + Duration::from_secs(rec.exp + 3_600);
    let req = by_operator("planner", any_key(), "tickets:read");
    let e = t.ca.open_task(&req, later).unwrap_err();
    assert!(matches!(e, CaError::Revoked { kind: "agent", .. }), "{e}");
}

#[test]
fn a_revoked_agent_gets_no_bootstrap_token_even_past_the_entrys_exp() {
    let t = test_ca(KeyType::P256);
    let n = now();
    let rec =
        t.ca.revoke(&RevokeTarget::Agent("planner".into()), None, "operator", n)
            .unwrap();
    // Its enrollment would be refused (as `a_revocation_past_its_exp_still_refuses_new_tasks`
    // shows for any issuance): the token is refused when made, now and after the entry's exp.
    let binding = agentid_ca::TokenBinding {
        scope: "tickets:read".into(),
        ..Default::default()
    };
    for at in [
        n,
        std::time::UNIX_EPOCH + Duration::from_secs(rec.exp + 3_600),
    ] {
        let e =
            t.ca.create_bound_token("planner", None, &binding, minutes(10), at)
                .unwrap_err();
        assert!(matches!(e, CaError::Revoked { kind: "agent", .. }), "{e}");
    }
}

/// A bootstrap token names its task before anyone redeems it (the token file's `identity` and
/// `task`): an operator answering a leaked token file revokes that task, and the token then
/// opens nothing (`revoked`), instead of being told that the task is unknown while the token
/// stays redeemable.
#[test]
fn the_task_of_an_unredeemed_token_is_revocable_and_the_token_then_opens_nothing() {
    let t = test_ca(KeyType::P256);
    let binding = agentid_ca::TokenBinding {
        scope: "tickets:read".into(),
        ..Default::default()
    };
    let tok =
        t.ca.create_bound_token("planner", None, &binding, minutes(10), now())
            .unwrap();
    let task = tok.identity.task_id();
    let rec =
        t.ca.revoke(&RevokeTarget::Task(task.clone()), None, "operator", now())
            .unwrap();
    assert_eq!(rec.value, task.as_str());
    let e = t.ca.enroll(&tok.token, csr_for(&tok), now()).unwrap_err();
    assert!(
        matches!(
            e,
            agentid_ca::EnrollError::Ca(CaError::Revoked { kind: "task", .. })
        ),
        "{e:?}"
    );
    // A task no token names and no issuance made is still unknown.
    let unknown = TaskId::generate().unwrap();
    let e =
        t.ca.revoke(&RevokeTarget::Task(unknown), None, "operator", now())
            .unwrap_err();
    assert!(matches!(e, CaError::NotFound { kind: "task", .. }), "{e}");
}

/// CA-API.md 4.1 and 4.3: a `revoke` record's `subject` is its target as `kind:value`, for a
/// refused revocation as for one that committed (a reader looking for what happened to
/// `task:T` finds both). A refused one was recorded with the target's Rust debug form
/// (`Task(TaskId("T"))`), and a name that is no agent name was copied into it as given.
#[test]
fn a_refused_revocation_names_its_target_as_kind_and_value() {
    let t = test_ca(KeyType::P256);
    let (_k, creds) = planner_task(&t);
    let n = now();
    let unknown = TaskId::generate().unwrap();
    let jti = "no-such-grant";
    let refused = [
        (
            RevokeTarget::Task(unknown.clone()),
            Some(format!("task:{}", unknown.as_str())),
        ),
        (
            RevokeTarget::GrantJti(jti.parse().unwrap()),
            Some(format!("jti:{jti}")),
        ),
        (RevokeTarget::Agent("Not An\nAgent".into()), None),
    ];
    for (target, want) in &refused {
        let before = audit_records(&t.ca).len();
        assert!(t.ca.revoke(target, None, "operator", n).is_err());
        let lines = audit_records(&t.ca);
        let new: Vec<_> = lines[before..].iter().collect();
        assert_eq!(new.len(), 1, "{new:?}");
        assert_eq!(new[0]["kind"], "revoke");
        assert_eq!(new[0]["outcome"], "error");
        assert_eq!(
            new[0]["subject"].as_str().map(str::to_owned),
            *want,
            "{target:?}: {}",
            new[0]
        );
    }
    // The committed revocation of the same kind of target, for comparison.
    t.ca.revoke(
        &RevokeTarget::Task(creds.identity.task_id()),
        None,
        "operator",
        n,
    )
    .unwrap();
    let lines = audit_records(&t.ca);
    let last = lines.last().unwrap();
    assert_eq!(
        last["subject"],
        format!("task:{}", creds.identity.task_id().as_str())
    );
}

#[test]
fn revoke_task_and_jti() {
    let t = test_ca(KeyType::P256);
    let (_k, creds) = planner_task(&t);
    let n = now();
    t.ca.revoke(
        &RevokeTarget::Task(creds.identity.task_id()),
        None,
        "operator",
        n,
    )
    .unwrap();
    let e =
        t.ca.issue_child(&child_of(&creds.identity, "summarizer"), n)
            .unwrap_err();
    assert!(matches!(e, CaError::Revoked { kind: "task", .. }), "{e}");
    let r =
        t.ca.revoke(
            &RevokeTarget::GrantJti(creds.grant_jti.parse().unwrap()),
            None,
            "operator",
            n,
        )
        .unwrap();
    assert_eq!(r.exp, creds.grant_exp + 60);
    assert!(matches!(
        t.ca.revoke(
            &RevokeTarget::GrantJti("nope".parse().unwrap()),
            None,
            "operator",
            n
        )
        .unwrap_err(),
        CaError::NotFound { .. }
    ));
    assert!(matches!(
        t.ca.revoke(
            &RevokeTarget::Task(TaskId::parse("nope").unwrap()),
            None,
            "operator",
            n
        )
        .unwrap_err(),
        CaError::NotFound { .. }
    ));
    // A malformed thumbprint cannot even be named: `Jkt` holds only what a list entry may carry.
    assert!("short".parse::<Jkt>().is_err());
    let lines = audit_records(&t.ca);
    for l in &lines {
        for k in [
            "ts", "kind", "actor", "subject", "task", "serial", "jti", "outcome", "reason",
        ] {
            assert!(l.get(k).is_some(), "audit line lacks {k}: {l}");
        }
    }
    assert!(lines
        .iter()
        .any(|l| l["kind"] == "revoke" && l["outcome"] == "ok"));
    assert!(lines
        .iter()
        .any(|l| l["kind"] == "issue.child" && l["outcome"] == "denied"));
    assert!(lines
        .iter()
        .any(|l| l["kind"] == "issue.task" && l["serial"] == creds.certificate.serial()));
}

// ---------------------------------------------------------------- key files

#[test]
fn key_files_readable_by_others_are_refused() {
    let dir = make_ca_dir(KeyType::P256);
    for name in [
        "root.key",
        "intermediate.key",
        "grant.key",
        "revocation.key",
    ] {
        let mode = std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{name} created 0600");
    }
    CertificateAuthority::open(dir.path()).unwrap();
    for name in ["intermediate.key", "grant.key", "revocation.key"] {
        let p = dir.path().join(name);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = CertificateAuthority::open(dir.path()).unwrap_err();
        assert!(
            matches!(&e, CaError::InsecureKeyFile { path, mode: 0o644 } if *path == p),
            "{e}"
        );
        assert!(e.to_string().contains(name));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            CertificateAuthority::open(dir.path()).unwrap_err(),
            CaError::InsecureKeyFile { .. }
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    CertificateAuthority::open(dir.path()).unwrap();
}

/// The CA directory is read only if the user opening it holds it, as a credential directory is
/// (`agentid_fs::read_held`): whoever can write its policy, configuration, certificates, keys or
/// the directory itself could choose what the CA issues, to whom, and with which key. The
/// refusal names the entry and the `chmod` to run.
#[test]
fn a_ca_directory_others_can_write_is_refused_at_open() {
    let dir = make_ca_dir(KeyType::P256);
    CertificateAuthority::open(dir.path()).unwrap();
    let ca = dir.path();
    for (p, mode) in [
        (ca.to_path_buf(), 0o777),
        (ca.join("config.toml"), 0o666),
        (ca.join("policy.toml"), 0o646),
        (ca.join("root.pem"), 0o664),
        (ca.join("intermediate.pem"), 0o666),
        // A key group or others can write is not held, before its mode is judged a secret's.
        (ca.join("intermediate.key"), 0o620),
        (ca.join("grant.key"), 0o602),
        (ca.join("revocation.key"), 0o660),
        (ca.join("audit.key"), 0o660),
        (ca.join("audit.pub"), 0o666),
        // The store: its tokens, bindings and revocations are the CA's state.
        (ca.join("ca.db"), 0o666),
    ] {
        let before = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let Err(e) = CertificateAuthority::open(ca) else {
            panic!("opened with {} at {mode:03o}", p.display())
        };
        let CaError::NotHeld(fs) = &e else {
            panic!("{}: {e}", p.display())
        };
        assert_eq!(fs.path(), p, "{e}");
        let step = e.next_step().unwrap_or_default();
        assert!(
            step.starts_with(&format!("run `chmod go-w {}`", p.display())),
            "{e}"
        );
        assert!(e.to_string().contains(&format!("{mode:03o}")), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(before)).unwrap();
    }
    CertificateAuthority::open(ca).unwrap();
}

/// The signed agentid bundle the CA serves (and whose `seq` its token files carry as the floor
/// an enrolled agent applies) is read only if held, every time it is read, as is the public key
/// it is checked with: whoever could write `agentid-bundle.jws` could put back an older,
/// genuinely signed document (keys a rotation retired) for the CA to serve.
#[test]
fn a_signed_bundle_others_can_write_is_refused_when_served_or_replaced() {
    let dir = make_ca_dir(KeyType::P256);
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    assert!(ca.signed_agentid_bundle().unwrap().is_some());
    assert!(ca.signed_bundle_seq().unwrap().is_some());
    for name in ["agentid-bundle.jws", "bundle-signing.pub"] {
        let p = dir.path().join(name);
        let before = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        for e in [
            ca.signed_agentid_bundle().map(drop).unwrap_err(),
            ca.signed_bundle_seq().map(drop).unwrap_err(),
        ] {
            let CaError::NotHeld(fs) = &e else {
                panic!("{name}: {e}")
            };
            assert_eq!(fs.path(), p, "{e}");
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(before)).unwrap();
    }
    // Signing the next document: the one it replaces is read as held, not taken as absent.
    let jws = dir.path().join("agentid-bundle.jws");
    std::fs::set_permissions(&jws, std::fs::Permissions::from_mode(0o666)).unwrap();
    let e = agentid_ca::agentid_bundle::sign_offline(dir.path(), unix(now())).unwrap_err();
    assert!(
        matches!(&e, CaError::NotHeld(fs) if fs.path() == jws),
        "{e}"
    );
    std::fs::set_permissions(&jws, std::fs::Permissions::from_mode(0o600)).unwrap();
    agentid_ca::agentid_bundle::sign_offline(dir.path(), unix(now())).unwrap();
}

#[test]
fn init_refuses_to_overwrite_and_checks_the_issuing_key() {
    let dir = make_ca_dir(KeyType::P256);
    let opts = agentid_ca::InitOptions::new(agentid_protocol::TrustDomain::parse(TD).unwrap());
    let e = agentid_ca::init_ca(dir.path(), &opts, now()).unwrap_err();
    assert!(matches!(e, CaError::AlreadyInitialized { .. }), "{e}");
    // Swap in another CA's intermediate key: refused at open.
    let other = make_ca_dir(KeyType::P256);
    std::fs::remove_file(dir.path().join("intermediate.key")).unwrap();
    std::fs::copy(
        other.path().join("intermediate.key"),
        dir.path().join("intermediate.key"),
    )
    .unwrap();
    std::fs::set_permissions(
        dir.path().join("intermediate.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    assert!(matches!(
        CertificateAuthority::open(dir.path()).unwrap_err(),
        CaError::IssuerKeyMismatch
    ));
}

#[test]
fn policy_errors_name_the_rule() {
    let e = agentid_ca::Policy::from_toml("[agents.a]\nscopes = [\"bad scope!\"]\n").unwrap_err();
    assert!(e.to_string().contains("agents.a.scopes"), "{e}");
    let e = agentid_ca::Policy::from_toml("[agents.a]\nmax_ttl = \"soon\"\n").unwrap_err();
    assert!(e.to_string().contains("agents.a.max_ttl"), "{e}");
    let e = agentid_ca::Policy::from_toml("[agents.a]\nrequesters = [\"anyone\"]\n").unwrap_err();
    assert!(e.to_string().contains("agents.a.requesters"), "{e}");
    let e = agentid_ca::Policy::from_toml("[agents.a]\nmax_depth = 9\n").unwrap_err();
    assert!(e.to_string().contains("agents.a.max_depth"), "{e}");
    let e = agentid_ca::Policy::from_toml("[agents.a]\nunknown = 1\n").unwrap_err();
    assert!(matches!(e, CaError::Policy { .. }), "{e}");
    // Services are requested by the operator, or with a bootstrap token (services enroll the
    // same way as agents); never by a parent task.
    let e =
        agentid_ca::Policy::from_toml("[services.s]\nrequesters = [\"parent:a\"]\n").unwrap_err();
    assert!(e.to_string().contains("services.s.requesters"), "{e}");
    agentid_ca::Policy::from_toml("[services.s]\nrequesters = [\"operator\", \"bootstrap\"]\n")
        .unwrap();
    agentid_ca::Policy::from_toml(agentid_ca::hierarchy::DEFAULT_POLICY).unwrap();
}

#[test]
fn principal_parsing() {
    assert_eq!(
        agentid_ca::parse_principal("email:alice@example.com").unwrap(),
        serde_json::json!({"format":"email","email":"alice@example.com"})
    );
    assert!(agentid_ca::parse_principal("alice").is_err());
    assert!(agentid_ca::parse_principal("email:").is_err());
    assert!(agentid_ca::parse_principal("phone:123").is_err());
}

/// `revoke --jkt` with 43 base64url characters whose last one has non-zero trailing bits used to
/// be stored, and then made every `revocation_list()` fail (the protocol's list builder refuses
/// the entry) until it aged out. Now such a value is refused when parsed, and a well-formed one
/// is published.
#[test]
fn a_revoked_thumbprint_is_always_publishable() {
    let t = test_ca(KeyType::P256);
    let n = now();
    let good = TaskKey::generate(Algorithm::Ed25519)
        .unwrap()
        .public_key()
        .jkt();
    // Same length and alphabet, but the last character carries non-zero trailing bits: the
    // canonical last character has a base64 index divisible by 4, the next one has not.
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bad = good.to_string();
    let last = bad.pop().unwrap();
    let i = ALPHABET.find(last).unwrap();
    assert_eq!(i % 4, 0);
    bad.push(char::from(ALPHABET.as_bytes()[i + 1]));
    assert!(bad.parse::<Jkt>().is_err(), "{bad}");
    t.ca.revoke(&RevokeTarget::Key(good.clone()), None, "operator", n)
        .unwrap();
    let mut bundles = BundleSet::new();
    bundles.insert(t.ca.trust_bundle().unwrap()).unwrap();
    let list = RevocationList::verify(&t.ca.revocation_list(n).unwrap(), &bundles).unwrap();
    assert!(list.contains(&agentid_protocol::RevocationTarget::Key(good.to_string())));
}

/// `TaskKey::csr` (the protocol crate's hand-written PKCS#10) is accepted by the CA's CSR intake,
/// for both key types, and the certificate binds the task key.
#[test]
fn a_task_key_csr_is_issued() {
    for alg in [Algorithm::Es256, Algorithm::Ed25519] {
        let t = test_ca(KeyType::P256);
        let key = TaskKey::generate(alg).unwrap();
        let task = TaskId::parse("csr-task").unwrap();
        let identity = task_uri("planner", task.as_str());
        let csr = key.csr(&SpiffeId::parse(&identity).unwrap()).unwrap();
        // The CSR intake alone: signature verified, the key taken.
        let requested = agentid_ca::parse_csr(&csr, &identity).unwrap();
        assert_eq!(&requested.public_key, key.public_key());
        // A CSR for another identity is refused.
        assert!(agentid_ca::parse_csr(&csr, &task_uri("planner", "other")).is_err());
        let mut req = by_operator("planner", agentid_ca::KeySource::Csr(csr), "tickets:read");
        req.task = Some(task);
        let creds = t.ca.open_task(&req, now()).unwrap();
        assert_eq!(creds.identity.as_str(), identity);
        let rec =
            t.ca.find_serial(&creds.certificate.serial().parse().unwrap())
                .unwrap()
                .unwrap();
        assert_eq!(rec.jkt, key.public_key().thumbprint(), "{alg:?}");
    }
}

/// The `entries` array of a signed list, as its payload carries it.
fn entries_bytes(compact: &str) -> String {
    let payload = compact.split('.').nth(1).unwrap();
    let payload = String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap(),
    )
    .unwrap();
    let end = payload.find(r#"],"iat":"#).unwrap();
    payload[r#"{"entries":["#.len()..end].to_owned()
}

/// A list written from the entries a CA kept since its last publication is, entry for entry,
/// the list a fresh CA (nothing kept) writes at the same time, with entries added, widened
/// and expired in between; each publication keeps the latest `PUBLISHED_LISTS_KEPT` stored
/// lists, `seq` keeps growing past the pruned ones, and the latest is found after any older
/// `seq`.
#[test]
fn publications_reuse_written_entries_exactly_and_prune_old_lists() {
    let t = test_ca(KeyType::P256);
    let t0 = now();
    let (_, c) = planner_task(&t);
    let iss = c.identity.clone();
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let jkt = Jkt::parse(&key.public_key().thumbprint()).unwrap();
    let link = |j: &str| RevokeTarget::LinkJti {
        iss: iss.clone(),
        jti: agentid_protocol::Jti::parse(j).unwrap(),
    };
    let mut seqs = Vec::new();
    let mut check = |at: std::time::SystemTime| {
        let kept = t.ca.publish_revocations(at).unwrap();
        let fresh = CertificateAuthority::open(t.path()).unwrap();
        let cold = fresh.publish_revocations(at).unwrap();
        assert_eq!(cold.seq, kept.seq + 1);
        assert_eq!(entries_bytes(&kept.compact), entries_bytes(&cold.compact));
        // The store reads only what the list holds: the revocations unexpired at `at`, no
        // principal, in the order they were recorded (compared by `exp`, entry by entry).
        let at_s = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let expected: Vec<u64> =
            t.ca.revocations()
                .unwrap()
                .into_iter()
                .filter(|r| r.exp > at_s && r.kind != agentid_ca::RevocationKind::Principal)
                .map(|r| r.exp)
                .collect();
        let listed: Vec<u64> = serde_json::from_str::<Vec<serde_json::Value>>(&format!(
            "[{}]",
            entries_bytes(&kept.compact)
        ))
        .unwrap()
        .iter()
        .map(|e| e["exp"].as_u64().unwrap())
        .collect();
        assert_eq!(listed, expected);
        seqs.push(kept.seq);
        seqs.push(cold.seq);
        entries_bytes(&kept.compact)
    };
    let empty = check(t0);
    assert_eq!(empty, "");
    for (i, target) in [
        link("l-1"),
        link("l-\"2\\"),
        RevokeTarget::Agent("planner".into()),
        RevokeTarget::Key(jkt.clone()),
        RevokeTarget::Task(c.identity.task_id().clone()),
    ]
    .into_iter()
    .enumerate()
    {
        t.ca.revoke(&target, None, "operator", t0).unwrap();
        let entries = check(t0 + Duration::from_secs(i as u64));
        assert_eq!(entries.matches(r#""exp":"#).count(), i + 1, "{entries}");
    }
    // Widened: the same link revoked later lives longer; the written entry follows.
    let before = check(t0 + Duration::from_secs(10));
    t.ca.revoke(
        &link("l-1"),
        None,
        "operator",
        t0 + Duration::from_secs(100),
    )
    .unwrap();
    let widened = check(t0 + Duration::from_secs(100));
    assert_ne!(before, widened);
    assert!(widened.contains("l-1"));
    // Expired: a day and a half later only the entries that outlive the links remain.
    let later = check(t0 + Duration::from_secs(36 * 3600));
    assert!(later.matches(r#""exp":"#).count() < 5, "{later}");
    assert!(!later.contains("l-1"));

    // Only the latest lists are stored; the latest is found after any older seq.
    let kept = usize::try_from(agentid_ca::store::PUBLISHED_LISTS_KEPT).unwrap();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
    let last = *seqs.last().unwrap();
    let latest = t.ca.latest_published().unwrap().unwrap();
    assert_eq!(latest.seq, last);
    for after in [None, Some(0), Some(seqs[0]), Some(last - 1)] {
        let found = t.ca.latest_published_after(after).unwrap().unwrap();
        assert_eq!(found, latest, "after {after:?}");
    }
    assert_eq!(t.ca.latest_published_after(Some(last)).unwrap(), None);
    if let Some(stored) = stored_list_seqs(&t) {
        assert_eq!(stored, seqs[seqs.len() - kept..]);
    }
    // The next publication after pruning still takes the next seq.
    let next =
        t.ca.publish_revocations(t0 + Duration::from_secs(36 * 3600))
            .unwrap();
    assert_eq!(next.seq, last + 1);
}

/// The `seq`s of the stored lists, ascending (SQLite: read from `ca.db`; `None` on
/// PostgreSQL, whose pruning `pg_replicas` checks).
fn stored_list_seqs(t: &TestCa) -> Option<Vec<u64>> {
    if t.pg.is_some() {
        return None;
    }
    let db = rusqlite::Connection::open(t.path().join("ca.db")).unwrap();
    let mut st = db
        .prepare("SELECT seq FROM published_lists ORDER BY seq")
        .unwrap();
    let seqs = st
        .query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|s| u64::try_from(s.unwrap()).unwrap())
        .collect();
    Some(seqs)
}
