//! RFC 5280 section 6.1.4 (n): an intermediate CA whose keyUsage extension lacks `keyCertSign`
//! cannot issue the peer's certificate (rustls-webpki 0.103 does not check it; agentid does, in
//! `TrustStore::verify`, which the handshake in both directions, `reauth` and
//! `agentid cert verify` all use).
#![cfg(test)]

mod support;

use std::sync::Arc;

use agentid_protocol::{Algorithm, TaskKey};
use agentid_transport::internal::FrameType;
use agentid_transport::{
    CertError, CertUsage, Credential, Error, MemoryCredentials, PeerPolicy, TrustStore,
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, UnixTime};
use support::*;

/// How the issuing (intermediate) CA's keyUsage extension looks.
#[derive(Clone, Copy, Debug)]
enum IssuerKu {
    /// `keyCertSign` and `cRLSign`: the profile.
    CertSign,
    /// No keyUsage extension at all: allowed by RFC 5280.
    Absent,
    /// `digitalSignature` only: may not sign certificates.
    DigitalSignatureOnly,
    /// `cRLSign` only: may sign revocation lists, not certificates.
    CrlSignOnly,
}

/// An intermediate CA (cA = true, pathLen 0) under `root` with the given keyUsage.
fn intermediate(root: &Ca, ku: IssuerKu) -> Ca {
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let mut p = CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, format!("issuing CA {ku:?}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = match ku {
        IssuerKu::CertSign => vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
        IssuerKu::Absent => vec![],
        IssuerKu::DigitalSignatureOnly => vec![KeyUsagePurpose::DigitalSignature],
        IssuerKu::CrlSignOnly => vec![KeyUsagePurpose::CrlSign],
    };
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::hours(2);
    p.serial_number = Some(rcgen::SerialNumber::from(vec![0x11, 0x22, ku as u8 + 1]));
    p.use_authority_key_identifier_extension = true;
    let kp = KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(key.danger_pkcs8_der().to_vec()),
        &rcgen::PKCS_ECDSA_P256_SHA256,
    )
    .unwrap();
    let der = p.signed_by(&kp, &root.issuer).unwrap().der().clone();
    Ca {
        key,
        issuer: Issuer::new(p, kp),
        der,
    }
}

/// `id`'s leaf issued by `inter`, as a credential presenting [leaf, intermediate].
fn credential_via(inter: &Ca, id: &str) -> Credential {
    let k = key();
    let cert = leaf(inter, id, &k, &LeafOpts::default());
    Credential::new(vec![cert, inter.der.clone()], k).unwrap()
}

fn now_unix() -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(now()))
}

fn expect_issuer_ku(e: &Error) -> bool {
    matches!(e, Error::Certificate(CertError::IssuerKeyUsage))
}

/// The trust store alone (what `reauth`, credential rotation and `agentid cert verify` call).
#[test]
fn trust_store_checks_the_issuers_key_usage() {
    let a = Domain::new("example.org");
    let store = TrustStore::new()
        .with_authority(&a.td, a.ca.der.as_ref())
        .unwrap();
    for (ku, accepted) in [
        (IssuerKu::CertSign, true),
        (IssuerKu::Absent, true),
        (IssuerKu::DigitalSignatureOnly, false),
        (IssuerKu::CrlSignOnly, false),
    ] {
        let inter = intermediate(&a.ca, ku);
        let k = key();
        let cert = leaf(&inter, CLIENT, &k, &LeafOpts::default());
        for usage in [CertUsage::ClientAuth, CertUsage::ServerAuth] {
            let r = store.verify(&cert, std::slice::from_ref(&inter.der), now_unix(), usage);
            if accepted {
                assert_eq!(r.unwrap().id, peer(CLIENT), "{ku:?} {usage:?}");
            } else {
                assert_eq!(r, Err(CertError::IssuerKeyUsage), "{ku:?} {usage:?}");
            }
        }
        // The leaf itself is profile-conforming either way: only the path is at fault.
        agentid_transport::check_leaf(&cert, CertUsage::ClientAuth).unwrap();
        // The same certificate again (the validated-leaf memory must not skip the issuer check).
        let again = store.verify(
            &cert,
            std::slice::from_ref(&inter.der),
            now_unix(),
            CertUsage::ClientAuth,
        );
        assert_eq!(again.is_ok(), accepted, "{ku:?} again");
    }
}

/// The issuing CAs the handshake tests use, and whether a peer they issued is accepted.
const HANDSHAKE_ISSUERS: [(IssuerKu, bool); 2] = [
    (IssuerKu::CertSign, true),
    (IssuerKu::DigitalSignatureOnly, false),
];

/// A [`handshake`] in a fresh domain between a server ([`SERVER`]) and a client ([`CLIENT`]),
/// each admitting any peer; the client's certificate (`client_via`) or else the server's is
/// issued through an intermediate with `ku`, the other one by the root: (the client's result,
/// the server's).
async fn handshake_via(ku: IssuerKu, client_via: bool) -> (ServerResult, ServerResult) {
    let a = Domain::new("example.org");
    let inter = intermediate(&a.ca, ku);
    let via = |id| Arc::new(MemoryCredentials::new(credential_via(&inter, id)));
    let (server_creds, client_creds) = if client_via {
        (credentials(&a.ca, SERVER), via(CLIENT))
    } else {
        (via(SERVER), credentials(&a.ca, CLIENT))
    };
    let sv = verification(SERVER, &[&a], false);
    let cv = verification(CLIENT, &[&a], false);
    handshake(
        server(server_creds, sv, PeerPolicy::danger_any()),
        &client(client_creds, cv, PeerPolicy::danger_any()),
    )
    .await
}

/// The `refusing` side's result is the refusal of its peer for the issuer's keyUsage (`ku`), and
/// the `refused` side got no session either.
fn assert_refused_for_the_issuer(
    ku: IssuerKu,
    refusing: (&str, ServerResult),
    refused: (&str, ServerResult),
) {
    let ((refusing, r), (peer, p)) = (refusing, refused);
    match r {
        Err(e) if expect_issuer_ku(&e) => {}
        other => panic!("{ku:?}: {refusing} should refuse the {peer}, got {other:?}"),
    }
    assert!(p.is_err(), "{ku:?}: the {peer} must not get a session");
}

/// The server refuses a client whose certificate was issued by a CA without keyCertSign; the
/// same set-up with a conforming intermediate connects.
#[tokio::test]
async fn handshake_refuses_a_client_issued_by_a_ca_without_key_cert_sign() {
    for (ku, accepted) in HANDSHAKE_ISSUERS {
        let (cr, sr) = handshake_via(ku, true).await;
        if accepted {
            let ss = sr.unwrap();
            assert_eq!(ss.peer().id, peer(CLIENT));
            cr.unwrap();
        } else {
            assert_refused_for_the_issuer(ku, ("server", sr), ("client", cr));
        }
    }
}

/// The client refuses a server whose certificate was issued by a CA without keyCertSign.
#[tokio::test]
async fn handshake_refuses_a_server_issued_by_a_ca_without_key_cert_sign() {
    for (ku, accepted) in HANDSHAKE_ISSUERS {
        let (cr, sr) = handshake_via(ku, false).await;
        if accepted {
            assert_eq!(cr.unwrap().peer().id, peer(SERVER));
            sr.unwrap();
        } else {
            assert_refused_for_the_issuer(ku, ("client", cr), ("server", sr));
        }
    }
}

/// A `reauth` presenting the same SAN and key, but issued through a CA without keyCertSign, ends
/// the session with `bad_certificate`.
#[tokio::test]
async fn reauth_refuses_a_certificate_issued_by_a_ca_without_key_cert_sign() {
    let a = Domain::new("example.org");
    let RawSession {
        mut raw,
        key: ck,
        server: mut ss,
        ..
    } = raw_session(&a).await;

    let bad = intermediate(&a.ca, IssuerKu::DigitalSignatureOnly);
    let renewed: Vec<CertificateDer<'static>> = vec![
        leaf(&bad, CLIENT, &ck, &LeafOpts::default()),
        bad.der.clone(),
    ];
    let body = RawAgent::reauth_body(&renewed, None, raw.proof(&ck, None, None));
    raw.write(FrameType::Reauth, &body).await;
    raw.write(FrameType::Data, b"after").await;
    let r = tokio::time::timeout(T, ss.recv()).await.unwrap();
    match r {
        Err(e) if expect_issuer_ku(&e) => assert_eq!(e.reason(), "bad_certificate"),
        other => panic!("reauth through a non-signing CA: got {other:?}"),
    }
    let f = raw.read().await.unwrap();
    assert_eq!(f.ty, FrameType::Close);
    let close: wire::Reason = wire::parse(&f.body);
    assert_eq!(close.code, "bad_certificate");
    assert!(ss.peer().receipts.reauth_proofs.is_empty());
}
