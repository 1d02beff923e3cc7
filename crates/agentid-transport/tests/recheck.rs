//! A live session's re-check fails closed (spec/PROTOCOL.md 16.4): any failure other than the
//! expiry that the deadline already handles ends the session.
#![cfg(test)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use agentid_protocol::{ErrorCode, Scope, TrustBundle};
use agentid_transport::{Error, Session};
use support::*;
use tokio::net::TcpStream;

struct Live {
    a: Domain,
    sv: Arc<agentid_transport::PeerVerification>,
    client: Session<TcpStream>,
    server: Session<TcpStream>,
}

/// A session whose client presents a grant for `read` (revocation lists optional).
async fn live() -> Live {
    let p = pair(Some("read"), LeafOpts::default(), false);
    let (cs, ss) = p.live().await;
    ss.authorize(&Scope::parse("read").unwrap()).unwrap();
    Live {
        a: p.a,
        sv: p.sv,
        client: cs,
        server: ss,
    }
}

/// The server's session must end with `code`, and tell the client so.
async fn ends_with(mut l: Live, code: &str) {
    let _ = l.client.send(b"after").await;
    let r = tokio::time::timeout(Duration::from_secs(5), l.server.recv())
        .await
        .expect("the session must end, not wait");
    match &r {
        Err(e) => assert_eq!(e.reason(), code, "{e:?}"),
        Ok(v) => panic!("session kept after the change: {v:?}"),
    }
    // Every later call gets the same answer.
    let again = l.server.authorize(&Scope::parse("read").unwrap());
    assert_eq!(again.unwrap_err().reason(), code);
    let r = tokio::time::timeout(T, l.client.recv()).await.unwrap();
    match r {
        Err(Error::Closed { code: c, .. }) => assert_eq!(c, code),
        other => panic!("client saw {other:?}"),
    }
}

#[tokio::test]
async fn rotating_the_grant_key_out_of_the_bundle_ends_the_session() {
    let l = live().await;
    // The authority rotates its grant key (after a compromise): the bundle no longer holds the
    // key that signed the session's grant.
    let rotated = TrustBundle::new(l.a.td.clone(), 2)
        .add_x509_authority(l.a.ca.der.to_vec(), l.a.ca.key.public_key())
        .add_grant_key(
            agentid_protocol::AuthorityKey::generate(agentid_protocol::Algorithm::Es256)
                .unwrap()
                .public_key()
                .clone(),
        )
        .add_revocation_key(l.a.rev_key.public_key().clone());
    l.sv.update_bundle(rotated).unwrap();
    ends_with(l, ErrorCode::UntrustedAuthority.as_str()).await;
}

/// Spec 14.1 ("Held lists and bundle changes"): a list signed with a stolen revocation key (the
/// highest `seq`, a `next_update` that never comes, nothing revoked) stops counting when the
/// operator rotates that key out of the bundle: it is due again from the change, so the session
/// it kept ends `revocation_stale` at the skew after it (none here), and the next list, signed
/// with the new key, applies whatever its `seq`.
#[tokio::test]
async fn rotating_a_stolen_revocation_key_out_ends_the_sessions_its_list_kept() {
    let mut p = pair(Some("read"), LeafOpts::default(), true);
    p.sv = verification_with(SERVER, &[&p.a], |c| c.skew(0).unwrap());
    let top = (1 << 53) - 1;
    let forged = p.a.revocation_list_until(top, top, |b| b);
    p.sv.apply_revocation_list(&forged).unwrap();
    p.cv.apply_revocation_list(&forged).unwrap();
    let (client, server) = p.live().await;
    server.authorize(&Scope::parse("read").unwrap()).unwrap();
    let l = Live {
        a: p.a,
        sv: p.sv,
        client,
        server,
    };
    let new_key =
        agentid_protocol::AuthorityKey::generate(agentid_protocol::Algorithm::Es256).unwrap();
    let rotated = TrustBundle::new(l.a.td.clone(), 2)
        .add_x509_authority(l.a.ca.der.to_vec(), l.a.ca.key.public_key())
        .add_grant_key(l.a.grant_key.public_key().clone())
        .add_revocation_key(new_key.public_key().clone());
    let sv = l.sv.clone();
    let td = l.a.td.clone();
    sv.update_bundle(rotated).unwrap();
    ends_with(l, ErrorCode::RevocationStale.as_str()).await;
    let next = agentid_protocol::RevocationListBuilder::new(&td, 2, now(), now() + 600)
        .sign(&new_key)
        .unwrap();
    sv.apply_revocation_list(&next).unwrap();
    assert_eq!(
        sv.verifier().config().revocation_list(&td).map(|l| l.seq()),
        Some(2)
    );
}

#[tokio::test]
async fn removing_the_x509_authority_ends_the_session() {
    let l = live().await;
    // The CA certificate that issued the client's certificate leaves the bundle (another CA
    // replaces it); the grant key stays.
    let other = Ca::new("example.org");
    let rotated = TrustBundle::new(l.a.td.clone(), 2)
        .add_x509_authority(other.der.to_vec(), other.key.public_key())
        .add_grant_key(l.a.grant_key.public_key().clone())
        .add_revocation_key(l.a.rev_key.public_key().clone());
    l.sv.update_bundle(rotated).unwrap();
    ends_with(l, "bad_certificate").await;
}

#[tokio::test]
async fn a_bundle_update_that_keeps_the_keys_keeps_the_session() {
    let mut l = live().await;
    let same = TrustBundle::new(l.a.td.clone(), 2)
        .add_x509_authority(l.a.ca.der.to_vec(), l.a.ca.key.public_key())
        .add_grant_key(l.a.grant_key.public_key().clone())
        .add_revocation_key(l.a.rev_key.public_key().clone());
    l.sv.update_bundle(same).unwrap();
    l.client.send(b"still").await.unwrap();
    let got = tokio::time::timeout(T, l.server.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], b"still");
    l.server.authorize(&Scope::parse("read").unwrap()).unwrap();
}

/// A session whose hello a proxy holds while the CA that issued the client's certificate
/// leaves the server's bundle (the grant key stays), then lets through: the server's session,
/// whose hello itself verified, and the client's.
async fn session_across_a_ca_removal() -> (Session<TcpStream>, Session<TcpStream>) {
    let p = pair(Some("read"), LeafOpts::default(), false);
    let (addr, h) = p.serve(1).await;
    let held = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let proxy = holding_proxy(addr, held.clone(), release.clone()).await;
    let c = client(
        p.client_creds.clone(),
        p.cv.clone(),
        agentid_transport::PeerPolicy::danger_any(),
    );
    let change = async {
        tokio::time::timeout(T, held.notified())
            .await
            .expect("the proxy holds the hello");
        // The CA that issued the client's certificate leaves the bundle; the grant key stays.
        let other = Ca::new("example.org");
        let rotated = TrustBundle::new(p.a.td.clone(), 2)
            .add_x509_authority(other.der.to_vec(), other.key.public_key())
            .add_grant_key(p.a.grant_key.public_key().clone())
            .add_revocation_key(p.a.rev_key.public_key().clone());
        p.sv.update_bundle(rotated).unwrap();
        release.notify_one();
    };
    let (client_result, ()) = tokio::join!(connect(&c, proxy), change);
    let server = accepted(h).await.expect("the hello itself verifies");
    (server, client_result.expect("the server accepted"))
}

/// A bundle change that lands after the TLS handshake but before the server has read the
/// client's hello (a proxy holds it) is a change since the session began: the new session
/// re-validates the peer's certificate at once and ends (`bad_certificate`), as a session that
/// was live before the change does.
#[tokio::test]
async fn a_bundle_change_before_the_hello_is_read_ends_the_new_session() {
    let (mut server, _client) = session_across_a_ca_removal().await;
    let r = tokio::time::timeout(T, server.recv())
        .await
        .expect("the session must end, not wait");
    match r {
        Err(e) => assert_eq!(e.reason(), "bad_certificate", "{e:?}"),
        Ok(v) => panic!("a session whose certificate's CA left the bundle was kept: {v:?}"),
    }
}

/// The same change seen by a per-request check: a session established across a bundle change
/// that removed its peer's CA must refuse an authorization before it is ever read or written
/// (spec/PROTOCOL.md 16.4: "a per-request authorization performed after such an update ... fails
/// with the same code even if the session has not been read or written since").
#[tokio::test]
async fn a_bundle_change_before_the_hello_is_read_fails_the_first_authorization() {
    let (server, _client) = session_across_a_ca_removal().await;
    // No read or write yet: the first request is authorized against the changed state.
    match server.authorize(&Scope::parse("read").unwrap()) {
        Err(e) => assert_eq!(e.reason(), "bad_certificate", "{e:?}"),
        Ok(()) => panic!("a request was authorized for a peer whose CA left the bundle"),
    }
}

/// The peer's certificate was issued through an intermediate CA that expires before the leaf
/// (webpki does not require nesting). Once that intermediate has expired, the CA leaving the
/// bundle must still end the session: the expiry that a re-check leaves to the deadline is the
/// leaf's (the deadline is `min(leaf notAfter, chain exp)`), not an issuer's, so an expired
/// issuer may not mask the path that no longer reaches an anchor (spec/PROTOCOL.md 16.4, "fails
/// closed").
#[tokio::test]
async fn an_expired_intermediate_does_not_keep_a_session_whose_ca_left_the_bundle() {
    use agentid_protocol::{Algorithm, TaskKey};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    use rustls::pki_types::PrivatePkcs8KeyDer;

    let a = Domain::new("example.org");
    // An issuing CA under the root, valid for 2 more seconds.
    let inter = {
        let key = TaskKey::generate(Algorithm::Es256).unwrap();
        let mut p = CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "short-lived issuing CA");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        p.not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
        p.serial_number = Some(rcgen::SerialNumber::from(vec![0x21, 0x22, 0x23]));
        p.use_authority_key_identifier_extension = true;
        let kp = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(key.danger_pkcs8_der().to_vec()),
            &rcgen::PKCS_ECDSA_P256_SHA256,
        )
        .unwrap();
        let der = p.signed_by(&kp, &a.ca.issuer).unwrap().der().clone();
        Ca {
            key,
            issuer: Issuer::new(p, kp),
            der,
        }
    };
    let ck = key();
    // The leaf itself is valid for 300 s.
    let cert = leaf(&inter, CLIENT, &ck, &LeafOpts::default());
    let client_creds = Arc::new(agentid_transport::MemoryCredentials::new(
        agentid_transport::Credential::new(vec![cert, inter.der.clone()], ck).unwrap(),
    ));
    let sv = verification(SERVER, &[&a], false);
    let (mut cs, mut ss) = sessions(
        server(
            credentials(&a.ca, SERVER),
            sv.clone(),
            agentid_transport::PeerPolicy::danger_any(),
        ),
        &client(
            client_creds,
            verification(CLIENT, &[&a], false),
            agentid_transport::PeerPolicy::danger_any(),
        ),
    )
    .await;
    cs.send(b"x").await.unwrap();
    let got = tokio::time::timeout(T, ss.recv()).await.unwrap();
    assert_eq!(&got.unwrap().unwrap()[..], b"x");
    // The intermediate expires; the leaf and the session's deadline are still minutes away.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // The CA that issued the intermediate leaves the bundle (another CA replaces it).
    let other = Ca::new("example.org");
    let rotated = TrustBundle::new(a.td.clone(), 2)
        .add_x509_authority(other.der.to_vec(), other.key.public_key())
        .add_grant_key(a.grant_key.public_key().clone())
        .add_revocation_key(a.rev_key.public_key().clone());
    sv.update_bundle(rotated).unwrap();
    let _ = cs.send(b"after").await;
    match tokio::time::timeout(T, ss.recv()).await.unwrap() {
        Err(e) => assert_eq!(e.reason(), "bad_certificate", "{e:?}"),
        Ok(v) => panic!("a session whose CA left the bundle was kept: {v:?}"),
    }
}
