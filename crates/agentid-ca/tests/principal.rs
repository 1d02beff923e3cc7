//! Revoking a principal is a CA-side expansion: every live task of that principal is revoked as
//! a `task` entry in one transaction, new tasks for it are refused, the expansion is audited,
//! and the principal itself never appears in a published list.
#![cfg(test)]
#![allow(missing_docs)]

mod common;

use agentid_ca::{
    CaError, KeyType, OpenTaskRequest, RevocationKind, RevokeTarget, TaskCredentials, TaskRequester,
};
use agentid_protocol::{
    Algorithm, BundleSet, ErrorCode, Scope, SpiffeId, Verifier, VerifierConfig,
};
use common::*;

fn alice() -> serde_json::Value {
    serde_json::json!({"format": "email", "email": "alice@example.com"})
}

fn bob() -> serde_json::Value {
    serde_json::json!({"format": "email", "email": "bob@example.com"})
}

fn open(t: &TestCa, principal: Option<serde_json::Value>) -> Result<TaskCredentials, CaError> {
    let mut req = OpenTaskRequest::new(
        "planner",
        spki_key(Algorithm::Es256).1,
        TaskRequester::Operator,
        Scope::parse("tickets:read").unwrap(),
    );
    req.principal = principal;
    t.ca.open_task(&req, now())
}

fn task_of(c: &TaskCredentials) -> String {
    c.identity.as_str().rsplit('/').next().unwrap().to_owned()
}

#[test]
fn revoking_a_principal_revokes_its_tasks_and_refuses_new_ones() {
    let t = test_ca(KeyType::P256);
    let a1 = open(&t, Some(alice())).unwrap();
    let a2 = open(&t, Some(alice())).unwrap();
    let b1 = open(&t, Some(bob())).unwrap();
    let none = open(&t, None).unwrap();

    // The same principal written with its keys in another order is the same principal.
    let reordered: serde_json::Value =
        serde_json::from_str(r#"{"email": "alice@example.com", "format": "email"}"#).unwrap();
    t.ca.revoke(
        &RevokeTarget::Principal(reordered),
        Some("account compromised"),
        "operator",
        now(),
    )
    .unwrap();

    let revoked_tasks: Vec<String> =
        t.ca.revocations()
            .unwrap()
            .into_iter()
            .filter(|r| r.kind == RevocationKind::Task)
            .map(|r| r.value)
            .collect();
    assert_eq!(revoked_tasks, vec![task_of(&a1), task_of(&a2)]);

    // The list names the tasks, never the principal.
    let list = t.ca.revocation_list(now()).unwrap();
    let payload = String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            list.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(payload.contains(&task_of(&a1)) && payload.contains(&task_of(&a2)));
    assert!(!payload.contains(&task_of(&b1)) && !payload.contains(&task_of(&none)));
    assert!(!payload.contains("alice") && !payload.contains("principal"));

    // No new task for alice while the revocation lasts; bob and principal-less tasks go on.
    let e = open(&t, Some(alice())).unwrap_err();
    assert!(
        matches!(
            e,
            CaError::Revoked {
                kind: "principal",
                ..
            }
        ),
        "{e:?}"
    );
    open(&t, Some(bob())).unwrap();
    open(&t, None).unwrap();

    // The expansion is audited, and the trail verifies.
    let records = principal_revoke_records(&t.ca);
    let rec = records.first().unwrap();
    let reason = rec["reason"].as_str().unwrap();
    assert!(reason.contains("expanded to 2 task(s)"), "{reason}");
    // Each task entry, with the exp it committed with.
    let expanded: Vec<(String, u64)> = serde_json::from_value(rec["expanded"].clone()).unwrap();
    let stored: Vec<(String, u64)> =
        t.ca.revocations()
            .unwrap()
            .into_iter()
            .filter(|r| r.kind == RevocationKind::Task)
            .map(|r| (format!("task:{}", r.value), r.exp))
            .collect();
    assert_eq!(expanded, stored);
    assert_eq!(
        expanded.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>(),
        vec![
            format!("task:{}", task_of(&a1)),
            format!("task:{}", task_of(&a2))
        ]
    );
    agentid_ca::audit::verify_dir(t.path()).unwrap().unwrap();
}

#[test]
fn revoking_a_principal_without_tasks_still_refuses_new_ones() {
    let t = test_ca(KeyType::P256);
    t.ca.revoke(&RevokeTarget::Principal(alice()), None, "operator", now())
        .unwrap();
    assert!(matches!(
        open(&t, Some(alice())).unwrap_err(),
        CaError::Revoked { .. }
    ));
}

/// PROTOCOL.md 10 (rule 5.5) accepts a grant until `exp + skew`, and 6.5 keeps an entry listed
/// until everything it could hit has expired: a principal revoked in the skew after its task's
/// grant `exp`, while verifiers still accept that grant, lists the task.
#[test]
fn a_principal_revoked_at_its_tasks_exp_still_lists_the_task() {
    let t = test_ca(KeyType::P256);
    let (key, src) = spki_key(Algorithm::Es256);
    let mut req = OpenTaskRequest::new(
        "planner",
        src,
        TaskRequester::Operator,
        Scope::parse("tickets:read").unwrap(),
    );
    req.principal = Some(alice());
    req.task_ttl = Some(minutes(2));
    req.ttl = Some(minutes(2));
    let c = t.ca.open_task(&req, now()).unwrap();
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(c.grant_exp);
    t.ca.revoke(&RevokeTarget::Principal(alice()), None, "operator", at)
        .unwrap();
    let mut bundles = BundleSet::new();
    bundles.insert(t.ca.trust_bundle().unwrap()).unwrap();
    let me = SpiffeId::parse(&format!("spiffe://{TD}/svc/search")).unwrap();
    let mut cfg = VerifierConfig::new(me, bundles);
    cfg.apply_revocation_list(&t.ca.revocation_list(at).unwrap())
        .unwrap();
    let e = Verifier::new(cfg)
        .unwrap()
        .verify_chain(
            c.grant.as_str(),
            c.identity.as_spiffe_id(),
            key.public_key(),
            c.grant_exp,
        )
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Revoked, "{e}");
}

/// A bootstrap token bound to a revoked principal is refused when it is made (`revoked`), as
/// one for a revoked agent, task or creator key is: no enrollment could redeem it, so none is
/// handed out, and the refusal names the revocation instead of an unusable token reaching an
/// agent.
#[test]
fn a_token_bound_to_a_revoked_principal_is_refused_when_made() {
    let t = test_ca(KeyType::P256);
    t.ca.revoke(&RevokeTarget::Principal(alice()), None, "operator", now())
        .unwrap();
    let binding = |p: serde_json::Value| agentid_ca::TokenBinding {
        scope: "tickets:read".into(),
        principal: Some(p),
        ..Default::default()
    };
    let ten_minutes = std::time::Duration::from_secs(600);
    // The same principal, its members in another order.
    let reordered: serde_json::Value =
        serde_json::from_str(r#"{"email": "alice@example.com", "format": "email"}"#).unwrap();
    let made =
        t.ca.create_bound_token("planner", None, &binding(reordered), ten_minutes, now());
    assert!(
        matches!(
            made,
            Err(CaError::Revoked {
                kind: "principal",
                ..
            })
        ),
        "{made:?}"
    );
    // Another principal's token is made.
    t.ca.create_bound_token("planner", None, &binding(bob()), ten_minutes, now())
        .unwrap();
}

/// A principal with more tasks than one record lists is recorded in several records of the
/// same subject, which together name every task entry with the exp it committed with; the
/// trail verifies.
#[test]
fn a_long_expansion_is_recorded_in_several_records() {
    let t = test_ca(KeyType::P256);
    let n = agentid_ca::audit::EXPANDED_PER_RECORD + 3;
    for _ in 0..n {
        open(&t, Some(alice())).unwrap();
    }
    t.ca.revoke(&RevokeTarget::Principal(alice()), None, "operator", now())
        .unwrap();
    let records = principal_revoke_records(&t.ca);
    let sizes: Vec<usize> = records
        .iter()
        .map(|r| r["expanded"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(sizes, vec![agentid_ca::audit::EXPANDED_PER_RECORD, 3]);
    let mut expanded: Vec<(String, u64)> = records
        .iter()
        .flat_map(|r| serde_json::from_value::<Vec<(String, u64)>>(r["expanded"].clone()).unwrap())
        .collect();
    expanded.sort();
    let mut stored: Vec<(String, u64)> =
        t.ca.revocations()
            .unwrap()
            .into_iter()
            .filter(|r| r.kind == RevocationKind::Task)
            .map(|r| (format!("task:{}", r.value), r.exp))
            .collect();
    stored.sort();
    assert_eq!(expanded.len(), n);
    assert_eq!(expanded, stored);
    agentid_ca::audit::verify_dir(t.path()).unwrap().unwrap();
}
