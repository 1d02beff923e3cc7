//! Credentials in the library: renewal (same identity, same key), change signals, framed
//! sessions that send `reauth` on their own, and no credential past `notAfter`.
#![cfg(test)]

mod support;

use std::sync::Arc;

use agentid_transport::{CertError, CredentialSource, Error, MemoryCredentials, PeerPolicy};
use support::*;

#[test]
fn renewed_requires_the_same_identity_and_key() {
    let a = Domain::new("example.org");
    let k = key();
    let pk = k.public_key().clone();
    let cred = credential(&a.ca, CLIENT, k, &LeafOpts::default()).with_chain("chain-kept");
    // Same SAN, same key, a new certificate: a renewal that keeps the key and the chain.
    let renewed_cert = leaf(&a.ca, CLIENT, &cred.shared_key(), &LeafOpts::default());
    let renewed = cred.renewed(vec![renewed_cert]).unwrap();
    assert_eq!(renewed.identity(), cred.identity());
    assert_eq!(renewed.info().public_key, pk);
    assert_ne!(renewed.info().serial, cred.info().serial);
    assert_eq!(renewed.chain(), Some("chain-kept"));
    assert!(Arc::ptr_eq(&renewed.shared_key(), &cred.shared_key()));
    assert!(cred.is_renewal(&renewed));
    // Another key for the same SAN: not a renewal (the leaf does not certify our key).
    let other_key = leaf(&a.ca, CLIENT, &key(), &LeafOpts::default());
    assert!(cred.renewed(vec![other_key]).is_err());
    // Our key under another SAN: not a renewal.
    let other_san = leaf(
        &a.ca,
        "spiffe://example.org/agent/client/task/other",
        &cred.shared_key(),
        &LeafOpts::default(),
    );
    assert!(matches!(
        cred.renewed(vec![other_san]),
        Err(Error::Certificate(CertError::IdentityChanged))
    ));
}

#[tokio::test]
async fn rotation_signals_subscribers() {
    let a = Domain::new("example.org");
    let cred = credential(&a.ca, CLIENT, key(), &LeafOpts::default());
    let renewed = cred
        .renewed(vec![leaf(
            &a.ca,
            CLIENT,
            &cred.shared_key(),
            &LeafOpts::default(),
        )])
        .unwrap();
    let source = MemoryCredentials::new(cred);
    let mut rx = source.subscribe().unwrap();
    let trust = verification(SERVER, &[&a], false).trust_store();
    source.rotate(renewed, &trust).unwrap();
    tokio::time::timeout(T, rx.changed())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_credential_past_not_after_is_not_presented() {
    let a = Domain::new("example.org");
    let expired = credential(
        &a.ca,
        CLIENT,
        key(),
        &LeafOpts {
            not_before: Some(-600),
            not_after: Some(-1),
            ..LeafOpts::default()
        },
    );
    let source = Arc::new(MemoryCredentials::new(expired));
    assert!(source.current().is_none());
    let server_creds = credentials(&a.ca, SERVER);
    let sv = verification(SERVER, &[&a], false);
    let (addr, h) = serve(server(server_creds, sv, PeerPolicy::danger_any()), 1).await;
    let c = client(
        source,
        verification(CLIENT, &[&a], false),
        PeerPolicy::danger_any(),
    );
    // A local refusal, before any byte goes out.
    let r = tokio::time::timeout(T, c.connect(addr)).await.unwrap();
    assert!(matches!(r, Err(Error::NoCredential)), "{r:?}");
    h.abort();
}

#[tokio::test]
async fn a_framed_session_sends_reauth_when_its_credential_renews() {
    let a = Domain::new("example.org");
    let cred = credential(&a.ca, CLIENT, key(), &LeafOpts::default());
    let old_serial = cred.info().serial.clone();
    let client_creds = Arc::new(MemoryCredentials::new(cred));
    let server_creds = credentials(&a.ca, SERVER);
    let sv = verification(SERVER, &[&a], false);
    let cv = verification(CLIENT, &[&a], false);
    let (addr, h) = serve(server(server_creds, sv, PeerPolicy::danger_any()), 1).await;
    let c = client(client_creds.clone(), cv.clone(), PeerPolicy::danger_any());
    let mut cs = tokio::time::timeout(T, c.connect(addr))
        .await
        .unwrap()
        .unwrap();
    let mut ss = h.await.unwrap().pop().unwrap().unwrap();
    assert_eq!(ss.peer().cert_serial, old_serial);
    let old_deadline = ss.peer().deadline;

    // The client's credential is renewed: a certificate that lives longer, same key.
    let current = client_creds.current().unwrap();
    let longer = LeafOpts {
        not_after: Some(900),
        ..LeafOpts::default()
    };
    let renewed = current
        .renewed(vec![leaf(&a.ca, CLIENT, &current.shared_key(), &longer)])
        .unwrap();
    let new_serial = renewed.info().serial.clone();
    client_creds.rotate(renewed, &cv.trust_store()).unwrap();

    // No explicit reauth call: the session sends it with its next traffic.
    assert_eq!(
        roundtrip(&mut cs, &mut ss, b"after renewal").await,
        b"after renewal"
    );
    assert_eq!(ss.peer().cert_serial, new_serial);
    assert!(ss.peer().deadline > old_deadline);
    assert_eq!(ss.peer().receipts.reauth_proofs.len(), 1);

    // Rotating to another key is not a renewal: nothing is sent on the live session.
    let other = credential(&a.ca, CLIENT, key(), &LeafOpts::default());
    client_creds.rotate(other, &cv.trust_store()).unwrap();
    assert_eq!(roundtrip(&mut cs, &mut ss, b"again").await, b"again");
    assert_eq!(ss.peer().receipts.reauth_proofs.len(), 1);
    assert_eq!(ss.peer().cert_serial, new_serial);
}

/// A renewal landing while the handshake is under way (after it read the credential it
/// presents, before the session exists) is sent as a `reauth` like any later one: before, the
/// session subscribed to renewals only once built and never sent it, so the peer ended the
/// session at the old certificate's `notAfter`.
#[tokio::test]
async fn a_renewal_during_the_handshake_is_sent_as_a_reauth() {
    let a = Domain::new("example.org");
    let cred = credential(&a.ca, CLIENT, key(), &LeafOpts::default());
    let old_serial = cred.info().serial.clone();
    let client_creds = Arc::new(MemoryCredentials::new(cred));
    let server_creds = credentials(&a.ca, SERVER);
    let sv = verification(SERVER, &[&a], false);
    let cv = verification(CLIENT, &[&a], false);
    let (addr, h) = serve(server(server_creds, sv, PeerPolicy::danger_any()), 1).await;
    let c = client(client_creds.clone(), cv.clone(), PeerPolicy::danger_any());

    // Renewed (a certificate that lives longer, same key) once the hello is on its way.
    let current = client_creds.current().unwrap();
    let longer = LeafOpts {
        not_after: Some(900),
        ..LeafOpts::default()
    };
    let renewed = current
        .renewed(vec![leaf(&a.ca, CLIENT, &current.shared_key(), &longer)])
        .unwrap();
    let new_serial = renewed.info().serial.clone();
    let (creds, trust) = (client_creds.clone(), cv.trust_store());
    // Once the handshake ended and the hello was written, while the accept is awaited.
    let io = Hooked::new(
        tokio::net::TcpStream::connect(addr).await.unwrap(),
        &[Burst::Write, Burst::Read, Burst::Write],
        Burst::Read,
        move || creds.rotate(renewed, &trust).unwrap(),
    );
    let mut cs = tokio::time::timeout(T, c.connect_with(io))
        .await
        .unwrap()
        .unwrap();
    let mut ss = h.await.unwrap().pop().unwrap().unwrap();
    assert_eq!(
        ss.peer().cert_serial,
        old_serial,
        "the handshake presented the old one"
    );

    // No explicit reauth call: the session sends it with its next traffic.
    tokio::time::timeout(T, cs.send(b"after renewal"))
        .await
        .unwrap()
        .unwrap();
    let got = tokio::time::timeout(T, ss.recv()).await.unwrap().unwrap();
    assert_eq!(got.as_deref(), Some(&b"after renewal"[..]));
    assert_eq!(ss.peer().cert_serial, new_serial);
    assert_eq!(ss.peer().receipts.reauth_proofs.len(), 1);
}

/// A rotation to another key while a framed handshake is under way (after the TLS handshake
/// presented the old certificate) does not split the handshake: its proof is signed with the
/// key of the certificate it presented, and the new credential is for the next handshakes.
/// Before, the server presented one certificate and signed its accept with the other key, and
/// the client refused a healthy server.
#[tokio::test]
async fn a_rotation_during_the_handshake_does_not_split_the_presented_credential() {
    let a = Domain::new("example.org");
    let server_creds = credentials(&a.ca, SERVER);
    let old_serial = server_creds.current().unwrap().info().serial.clone();
    let sv = verification(SERVER, &[&a], false);
    let cv = verification(CLIENT, &[&a], false);
    let s = server(server_creds.clone(), sv.clone(), PeerPolicy::danger_any());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let other = credential(&a.ca, SERVER, key(), &LeafOpts::default());
    let (creds, trust) = (server_creds.clone(), sv.trust_store());
    let accepted = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        // Once the server's certificate went out, before the client's answer is read.
        let io = Hooked::new(tcp, &[Burst::Read, Burst::Write], Burst::Read, move || {
            creds.rotate(other, &trust).unwrap()
        });
        tokio::time::timeout(T, s.accept(io)).await.unwrap()
    });
    let c = client(credentials(&a.ca, CLIENT), cv, PeerPolicy::danger_any());
    let cs = tokio::time::timeout(T, c.connect(addr)).await.unwrap();
    let ss = tokio::time::timeout(T, accepted).await.unwrap().unwrap();
    let cs = cs.unwrap();
    ss.unwrap();
    assert_eq!(cs.peer().cert_serial, old_serial);
    assert_ne!(server_creds.current().unwrap().info().serial, old_serial);
}
