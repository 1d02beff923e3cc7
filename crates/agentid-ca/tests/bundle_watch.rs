//! Signed agentid bundles applied to a live verification (`BundleApplier`, `BundleWatcher`):
//! a newer document signed by the pinned bundle-signing key is applied (new roots, grant and
//! revocation keys); a bad signature, an older `seq` or `iat`, or another trust domain is
//! refused and the verification keeps the bundle it held. The watcher runs against the real CA
//! service on 127.0.0.1.
#![cfg(test)]
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use agentid_ca::agentid_bundle;
use agentid_ca::server::{CaService, ServiceOptions};
use agentid_ca::{CertificateAuthority, KeyType};
use agentid_protocol::{
    sign_bundle, Algorithm, AuthorityKey, BundleSet, SpiffeId, TrustBundle, TrustDomain,
    VerifierConfig,
};
use agentid_transport::enroll::{
    BundleApplied, BundleApplier, BundleWatcher, CaClient, WatchOptions,
};
use agentid_transport::{MemoryCredentials, PeerVerification};

const T: Duration = Duration::from_secs(20);
const OWN: &str = "spiffe://example.org/svc/bundle-watcher";

fn td() -> TrustDomain {
    TrustDomain::parse(common::TD).unwrap()
}

fn verification(bundle: TrustBundle) -> Arc<PeerVerification> {
    let mut set = BundleSet::new();
    set.insert(bundle).unwrap();
    PeerVerification::new(
        VerifierConfig::new(SpiffeId::parse(OWN).unwrap(), set)
            .danger_accept_missing_or_stale_revocations(),
    )
    .unwrap()
}

fn grant_kids(v: &PeerVerification) -> Vec<String> {
    let verifier = v.verifier();
    let b = verifier
        .config()
        .bundles()
        .iter()
        .find(|b| b.trust_domain() == &td())
        .unwrap();
    b.grant_keys().iter().map(|k| k.kid.clone()).collect()
}

fn now() -> u64 {
    common::unix(common::now())
}

/// `base` with `spiffe_sequence` = `seq` and only the keys of the uses `keep`.
fn edited(base: &TrustBundle, seq: u64, keep: &[&str]) -> TrustBundle {
    let mut v: serde_json::Value = serde_json::from_str(&base.to_json()).unwrap();
    v["spiffe_sequence"] = seq.into();
    v["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| keep.contains(&k["use"].as_str().unwrap()));
    TrustBundle::parse(&td(), v.to_string().as_bytes()).unwrap()
}

/// The CA's bundle with one more grant key (a rotation in progress).
fn rotated(base: &TrustBundle, seq: u64) -> (TrustBundle, String) {
    let new_grant = AuthorityKey::generate(Algorithm::Es256).unwrap();
    let kid = new_grant.public_key().thumbprint();
    let all = ["x509-svid", "agentid-grant", "agentid-revocation"];
    (
        edited(base, seq, &all).add_grant_key(new_grant.public_key().clone()),
        kid,
    )
}

#[test]
fn a_rotated_bundle_is_applied_and_refusals_keep_the_one_held() {
    let ca = common::test_ca(KeyType::P256);
    let base = ca.ca.trust_bundle().unwrap();
    let signer = AuthorityKey::generate(Algorithm::Es256).unwrap();
    let v = verification(base.clone());
    let applier = BundleApplier::new(v.clone(), signer.public_key().clone(), td());
    let t = now();

    // The first document, then a rotation adding a grant key: applied.
    let first = sign_bundle(&signer, &base, 10, t - 5).unwrap();
    assert_eq!(applier.apply(&first, t).unwrap(), BundleApplied::Applied);
    assert_eq!(applier.apply(&first, t).unwrap(), BundleApplied::Unchanged);
    let (next, kid) = rotated(&base, base.sequence() + 1);
    let second = sign_bundle(&signer, &next, 11, t).unwrap();
    assert_eq!(applier.apply(&second, t).unwrap(), BundleApplied::Applied);
    assert!(
        grant_kids(&v).contains(&kid),
        "the new grant key verifies now"
    );
    assert_eq!(applier.held(), Some((11, t)));
    let held = grant_kids(&v);

    // Refused, and nothing changes: another signer (the CA service's own online key, say) ...
    let mallory = AuthorityKey::generate(Algorithm::Es256).unwrap();
    let (evil, evil_kid) = rotated(&base, base.sequence() + 2);
    let forged = sign_bundle(&mallory, &evil, 12, t).unwrap();
    assert!(applier.apply(&forged, t).is_err());
    // ... an older seq, or the same seq re-signed, or an older iat with a higher seq ...
    for (seq, iat) in [(9, t), (11, t + 1), (12, t - 1)] {
        let old = sign_bundle(&signer, &evil, seq, iat).unwrap();
        assert!(applier.apply(&old, t + 1).is_err(), "seq {seq} iat {iat}");
    }
    // ... a document issued in the future ...
    let future = sign_bundle(&signer, &evil, 13, t + 3600).unwrap();
    assert!(applier.apply(&future, t).is_err());
    // ... or one of another trust domain.
    let other_td = TrustDomain::parse("other.example").unwrap();
    let elsewhere = sign_bundle(&signer, &TrustBundle::new(other_td, 1), 14, t).unwrap();
    assert!(applier.apply(&elsewhere, t).is_err());
    assert_eq!(grant_kids(&v), held);
    assert!(!grant_kids(&v).contains(&evil_kid));
    assert_eq!(applier.held(), Some((11, t)));
}

/// The operator rotates the grant key and signs the bundle again within the second of the
/// document before (a script that signs, replaces the key, and signs again): the new document
/// is a newer one, so a watcher holding the first applies it, and the grant key the rotation
/// took out no longer verifies there. Both documents used to carry `seq` = `iat` = that second,
/// which a watcher holding the first took for the one it held.
#[test]
fn a_bundle_signed_again_within_the_same_second_replaces_the_one_before() {
    let dir = common::make_ca_dir(KeyType::P256);
    let t = now();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let first = agentid_bundle::sign_dir(&ca, dir.path(), t).unwrap();
    let old_kid = ca.trust_bundle().unwrap().grant_keys()[0].kid.clone();

    let path = dir.path().join("grant.key");
    std::fs::remove_file(&path).unwrap();
    let key = AuthorityKey::generate(Algorithm::Es256).unwrap();
    agentid_fs::write_private_key(&path, key.pkcs8_der()).unwrap();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let second = agentid_bundle::sign_dir(&ca, dir.path(), t).unwrap();

    let full = ca.trust_bundle().unwrap();
    let v = verification(edited(&full, full.sequence(), &["x509-svid"]));
    let signing = agentid_bundle::public_key(dir.path()).unwrap();
    let applier = BundleApplier::new(v.clone(), signing, td());
    assert_eq!(applier.apply(&first, t).unwrap(), BundleApplied::Applied);
    assert_eq!(grant_kids(&v), vec![old_kid]);
    assert_eq!(applier.apply(&second, t).unwrap(), BundleApplied::Applied);
    assert_eq!(grant_kids(&v), vec![key.public_key().thumbprint()]);
    // The CA serves the second document, which verifies with its keys.
    assert_eq!(ca.signed_agentid_bundle().unwrap(), Some(second));
}

async fn serve(dir: &std::path::Path) -> std::net::SocketAddr {
    let ca = CertificateAuthority::open(dir).unwrap();
    let service = CaService::new(ca, ServiceOptions::default()).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { service.serve_both(l, None).await });
    addr
}

/// An agent that enrolled knows only the CA's root (the public bundle): the watcher brings it
/// the grant and revocation keys from the document the operator signed, and each newer
/// signing after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_applies_the_signed_bundle_the_ca_serves() {
    let dir = common::make_ca_dir(KeyType::P256);
    let mut policy = common::POLICY.to_owned();
    policy.push_str(
        r#"
[services.agentid-ca]
max_ttl = "1h"
requesters = ["operator"]

[services.bundle-watcher]
max_ttl = "1h"
requesters = ["operator"]
"#,
    );
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let full = ca.trust_bundle().unwrap();
    let addr = serve(dir.path()).await;

    // Only the X509 authorities, as enrollment pins them.
    let roots = edited(&full, full.sequence(), &["x509-svid"]);
    let target = verification(roots.clone());
    assert!(grant_kids(&target).is_empty());

    let creds = Arc::new(MemoryCredentials::new(common::service_credential(
        &ca,
        "bundle-watcher",
        None,
    )));
    let client = CaClient::new(&format!("https://{addr}"), creds, verification(roots), T).unwrap();
    let signing = agentid_bundle::public_key(dir.path()).unwrap();
    let applier = Arc::new(BundleApplier::new(target.clone(), signing, td()));
    let options = WatchOptions::default()
        .with_bundle_interval(Duration::from_secs(1))
        .with_backoff(Duration::from_millis(100), Duration::from_millis(400));
    let watcher = BundleWatcher::new(client, applier.clone(), options).spawn();
    assert!(
        watcher.wait_for(T, |s| s.applied >= 1).await,
        "{:?}",
        watcher.status()
    );
    let want: Vec<String> = full.grant_keys().iter().map(|k| k.kid.clone()).collect();
    assert_eq!(grant_kids(&target), want);
    let first = watcher.status().seq.unwrap();

    // The operator signs again (offline, where the key is): a higher seq, applied.
    agentid_bundle::sign_dir(&ca, dir.path(), now() + 1).unwrap();
    assert!(
        watcher
            .wait_for(T, |s| s.seq.is_some_and(|q| q > first))
            .await,
        "{:?}",
        watcher.status()
    );
    assert_eq!(watcher.status().applied, 2);

    // A document the bundle-signing key did not sign is never served, nor applied.
    let mallory = AuthorityKey::generate(Algorithm::Es256).unwrap();
    let forged = agentid_bundle::sign(&mallory, &full, now() + 2).unwrap();
    std::fs::write(dir.path().join("agentid-bundle.jws"), forged).unwrap();
    let failures = watcher.status().failures;
    assert!(
        watcher.wait_for(T, |s| s.failures > failures).await,
        "{:?}",
        watcher.status()
    );
    assert_eq!(watcher.status().applied, 2);
    assert_eq!(grant_kids(&target), want);
    watcher.stop().await;
}

/// A task of `planner` opened by the operator: its key and what the CA issued.
fn planner_task(
    ca: &CertificateAuthority,
) -> (agentid_protocol::TaskKey, agentid_ca::TaskCredentials) {
    let key = agentid_protocol::TaskKey::generate(Algorithm::Es256).unwrap();
    let req = agentid_ca::OpenTaskRequest::new(
        "planner",
        agentid_ca::KeySource::Spki(key.public_key().to_spki_der()),
        agentid_ca::TaskRequester::Operator,
        agentid_protocol::Scope::parse("tickets:read").unwrap(),
    );
    let creds = ca.open_task(&req, common::now()).unwrap();
    (key, creds)
}

/// Whether `v` verifies the grant of `task` now (the code of its refusal otherwise).
fn grant_verifies(
    v: &PeerVerification,
    (key, task): &(agentid_protocol::TaskKey, agentid_ca::TaskCredentials),
) -> Result<(), agentid_protocol::ErrorCode> {
    v.verifier()
        .verify_chain(
            task.grant.as_str(),
            task.identity.as_spiffe_id(),
            key.public_key(),
            now(),
        )
        .map(|_| ())
        .map_err(|e| e.code())
}

/// Replaces the CA directory's `grant.key` with a new key, returned.
fn replace_grant_key(dir: &std::path::Path) -> AuthorityKey {
    replace_key(dir, "grant.key")
}

/// Replaces the CA directory's key file `name` with a new key, returned.
fn replace_key(dir: &std::path::Path, name: &str) -> AuthorityKey {
    let path = dir.join(name);
    std::fs::remove_file(&path).unwrap();
    let key = AuthorityKey::generate(Algorithm::Es256).unwrap();
    agentid_fs::write_private_key(&path, key.pkcs8_der()).unwrap();
    key
}

/// A planned grant-key rotation (CA-API 3.3): the operator replaces `grant.key` and signs a
/// document that lists the outgoing key as retiring beside the new one. The CA serves it (it
/// names the CA's current keys), and a verifier that applied it still verifies the grants the
/// old key signed, as well as the new key's; once every such grant has ended, a document
/// without the old key takes it out, and its grants stop verifying. A document that lacks the
/// CA's current grant key is still not served.
#[test]
fn a_retiring_grant_key_verifies_until_a_later_document_drops_it() {
    let dir = common::make_ca_dir(KeyType::P256);
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let full = ca.trust_bundle().unwrap();
    let old_key = full.grant_keys()[0].key.clone();
    let old_task = planner_task(&ca);
    let first = ca.signed_agentid_bundle().unwrap().unwrap();

    let v = verification(edited(&full, full.sequence(), &["x509-svid"]));
    let signing = agentid_bundle::public_key(dir.path()).unwrap();
    let applier = BundleApplier::new(v.clone(), signing.clone(), td());
    assert_eq!(
        applier.apply(&first, now()).unwrap(),
        BundleApplied::Applied
    );
    assert_eq!(grant_verifies(&v, &old_task), Ok(()));

    // The overlap: the new key is current, the old one retiring.
    let new_key = replace_grant_key(dir.path());
    let retiring = agentid_bundle::RetiringKeys {
        grant: vec![old_key.clone()],
        revocation: Vec::new(),
    };
    let overlap = agentid_bundle::sign_offline_with(dir.path(), now(), &retiring).unwrap();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    assert_eq!(ca.signed_agentid_bundle().unwrap(), Some(overlap.clone()));
    assert_eq!(
        applier.apply(&overlap, now()).unwrap(),
        BundleApplied::Applied
    );
    let mut want = vec![new_key.public_key().thumbprint(), old_key.thumbprint()];
    want.sort();
    let mut held = grant_kids(&v);
    held.sort();
    assert_eq!(held, want);
    let new_task = planner_task(&ca);
    assert_eq!(grant_verifies(&v, &old_task), Ok(()), "the old key's grant");
    assert_eq!(grant_verifies(&v, &new_task), Ok(()), "the new key's grant");

    // The final document drops the old key: its grants no longer verify.
    let last = agentid_bundle::sign_offline(dir.path(), now()).unwrap();
    assert_eq!(ca.signed_agentid_bundle().unwrap(), Some(last.clone()));
    assert_eq!(applier.apply(&last, now()).unwrap(), BundleApplied::Applied);
    assert_eq!(grant_kids(&v), vec![new_key.public_key().thumbprint()]);
    assert_eq!(grant_verifies(&v, &new_task), Ok(()));
    assert!(grant_verifies(&v, &old_task).is_err());

    // A document naming the old key alone (the CA's current one missing) is not served.
    let der = agentid_fs::read_private_key(&dir.path().join("bundle-signing.key")).unwrap();
    let key = AuthorityKey::from_pkcs8_der(&der).unwrap();
    let stale = agentid_bundle::sign(&key, &full, now() + 1).unwrap();
    std::fs::write(dir.path().join("agentid-bundle.jws"), stale).unwrap();
    assert!(ca.signed_agentid_bundle().is_err());
}

/// A retiring key is another key than the CA's current ones: the CA's current revocation key
/// (or grant key) listed as a retiring grant (or revocation) key is refused and nothing is
/// written, so no document names a current key under the other use.
#[test]
fn a_current_key_listed_as_retiring_is_refused() {
    let dir = common::make_ca_dir(KeyType::P256);
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let full = ca.trust_bundle().unwrap();
    let before = std::fs::read(dir.path().join("agentid-bundle.jws")).unwrap();
    let revocation = full.revocation_keys()[0].key.clone();
    let grant = full.grant_keys()[0].key.clone();
    for retiring in [
        agentid_bundle::RetiringKeys {
            grant: vec![revocation.clone()],
            revocation: Vec::new(),
        },
        agentid_bundle::RetiringKeys {
            grant: Vec::new(),
            revocation: vec![grant.clone()],
        },
        agentid_bundle::RetiringKeys {
            grant: vec![grant.clone()],
            revocation: Vec::new(),
        },
    ] {
        assert!(agentid_bundle::sign_offline_with(dir.path(), now(), &retiring).is_err());
        assert_eq!(
            std::fs::read(dir.path().join("agentid-bundle.jws")).unwrap(),
            before
        );
    }
}

/// The same for a revocation key: with the outgoing key listed as retiring, a verifier keeps
/// taking the lists it signed (a replica not yet restarted on the new key) as well as the new
/// key's; once a document drops it, a list it signs is refused.
#[test]
fn a_retiring_revocation_key_verifies_lists_until_a_later_document_drops_it() {
    let dir = common::make_ca_dir(KeyType::P256);
    let old_ca = CertificateAuthority::open(dir.path()).unwrap();
    let full = old_ca.trust_bundle().unwrap();
    let old_key = full.revocation_keys()[0].key.clone();
    let first = old_ca.signed_agentid_bundle().unwrap().unwrap();
    let v = verification(edited(&full, full.sequence(), &["x509-svid"]));
    let signing = agentid_bundle::public_key(dir.path()).unwrap();
    let applier = BundleApplier::new(v.clone(), signing, td());
    assert_eq!(
        applier.apply(&first, now()).unwrap(),
        BundleApplied::Applied
    );

    replace_key(dir.path(), "revocation.key");
    let retiring = agentid_bundle::RetiringKeys {
        grant: Vec::new(),
        revocation: vec![old_key],
    };
    let overlap = agentid_bundle::sign_offline_with(dir.path(), now(), &retiring).unwrap();
    let new_ca = CertificateAuthority::open(dir.path()).unwrap();
    assert_eq!(
        new_ca.signed_agentid_bundle().unwrap(),
        Some(overlap.clone())
    );
    assert_eq!(
        old_ca.signed_agentid_bundle().unwrap(),
        Some(overlap.clone())
    );
    assert_eq!(
        applier.apply(&overlap, now()).unwrap(),
        BundleApplied::Applied
    );
    let t = common::now();
    v.apply_revocation_list(&old_ca.revocation_list(t).unwrap())
        .unwrap();
    v.apply_revocation_list(&new_ca.revocation_list(t).unwrap())
        .unwrap();
    v.apply_revocation_list(&old_ca.revocation_list(t).unwrap())
        .unwrap();

    let last = agentid_bundle::sign_offline(dir.path(), now()).unwrap();
    assert_eq!(new_ca.signed_agentid_bundle().unwrap(), Some(last.clone()));
    assert_eq!(applier.apply(&last, now()).unwrap(), BundleApplied::Applied);
    v.apply_revocation_list(&new_ca.revocation_list(t).unwrap())
        .unwrap();
    assert!(v
        .apply_revocation_list(&old_ca.revocation_list(t).unwrap())
        .is_err());
}

/// `GET /v1/bundle`, the standard SPIFFE bundle that federation consumers (SPIRE) fetch, carries
/// a `spiffe_sequence` that rises with every signed document: the signed agentid bundle's `seq`
/// (CA-API 3.2), not a constant 1 that told consumers nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spiffe_bundle_sequence_rises_with_each_signed_bundle() {
    let dir = common::make_ca_dir(KeyType::P256);
    let mut policy = common::POLICY.to_owned();
    policy.push_str("\n[services.agentid-ca]\nmax_ttl = \"1h\"\nrequesters = [\"operator\"]\n");
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let addr = serve(dir.path()).await;
    let (client, _) = common::task_client(&ca, "planner", T);
    let mut c = client.connect(addr, "ca.example.org").await.unwrap();
    let mut fetch = async || {
        let (s, b) = common::call(&mut c, "GET", "/v1/bundle", "").await;
        assert_eq!(s, 200, "{b}");
        let bundle = TrustBundle::parse(&td(), b.as_bytes()).unwrap();
        assert!(bundle.grant_keys().is_empty() && bundle.revocation_keys().is_empty());
        bundle.sequence()
    };
    let first = fetch().await;
    let signed = ca.signed_bundle_seq().unwrap().unwrap();
    assert_eq!(first, signed);

    // The operator signs a new document (a rotation): the sequence rises, without a restart.
    let t = now().max(signed) + 1;
    agentid_bundle::sign_dir(&ca, dir.path(), t).unwrap();
    let second = fetch().await;
    assert!(second > first, "{second} after {first}");
    assert_eq!(second, ca.signed_bundle_seq().unwrap().unwrap());
    // The same sequence as the agentid bundle files made from the directory.
    assert_eq!(second, ca.exported_bundle().unwrap().sequence());
    // A signed bundle removed (or restored from an older copy) does not take it back.
    std::fs::remove_file(dir.path().join("agentid-bundle.jws")).unwrap();
    assert_eq!(fetch().await, second);
}
