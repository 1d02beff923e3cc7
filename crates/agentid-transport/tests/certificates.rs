//! mTLS certificate tests of agentid-transport: the X509-SVID rules on both sides, peer
//! policies, a missing client certificate, and serials in the CA's form.
#![cfg(test)]
#![allow(clippy::type_complexity)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use agentid_protocol::TrustDomain;
use agentid_transport::{CertError, Error, MemoryCredentials, PeerPolicy, TimeoutKind};
use support::*;
use tokio::io::AsyncReadExt;

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
    let future = LeafOpts {
        not_before: Some(60),
        not_after: Some(300),
        ..Default::default()
    };
    let expired = LeafOpts {
        not_before: Some(-600),
        not_after: Some(-120),
        ..Default::default()
    };
    let ca = LeafOpts {
        ca: true,
        ..Default::default()
    };
    let kcs = LeafOpts {
        key_cert_sign: true,
        ..Default::default()
    };
    let two = LeafOpts {
        extra_uri: Some("spiffe://example.org/agent/x/task/y".into()),
        ..Default::default()
    };
    let dns = LeafOpts {
        dns_only: true,
        ..Default::default()
    };
    let no_eku = LeafOpts {
        no_eku: true,
        ..Default::default()
    };
    let ok = LeafOpts::default();
    // (name, issuing CA, URI SAN, options, server trusts B too, server policy, expectation)
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, &Ca, &str, &LeafOpts, bool, PeerPolicy, Expect)> = vec![
        (
            "valid pair",
            &a.ca,
            CLIENT,
            &ok,
            false,
            PeerPolicy::agents_in(td("example.org")),
            Expect::Ok,
        ),
        (
            "service peer admitted",
            &a.ca,
            "spiffe://example.org/svc/tool",
            &ok,
            false,
            PeerPolicy::services_in(td("example.org")),
            Expect::Ok,
        ),
        (
            "other trust domain, no anchors",
            &b.ca,
            "spiffe://other.org/agent/c/task/t",
            &ok,
            false,
            PeerPolicy::danger_any(),
            Expect::Cert(|e| matches!(e, CertError::UnknownTrustDomain(_))),
        ),
        (
            "our ID on another domain's CA",
            &b.ca,
            CLIENT,
            &ok,
            true,
            PeerPolicy::danger_any(),
            Expect::Cert(|e| matches!(e, CertError::Chain(_))),
        ),
        (
            "federated peer allowed by policy",
            &b.ca,
            "spiffe://other.org/agent/c/task/t",
            &ok,
            true,
            PeerPolicy::agents_in(td("other.org")),
            Expect::Ok,
        ),
        (
            "federated peer, policy for own domain",
            &b.ca,
            "spiffe://other.org/agent/c/task/t",
            &ok,
            true,
            PeerPolicy::agents_in(td("example.org")),
            Expect::Policy,
        ),
        (
            "expired",
            &a.ca,
            CLIENT,
            &expired,
            false,
            PeerPolicy::danger_any(),
            Expect::Cert(|e| *e == CertError::Expired),
        ),
        (
            "not yet valid",
            &a.ca,
            CLIENT,
            &future,
            false,
            PeerPolicy::danger_any(),
            Expect::Cert(|e| *e == CertError::Expired),
        ),
        (
            "CA certificate as leaf",
            &a.ca,
            CLIENT,
            &ca,
            false,
            PeerPolicy::danger_any(),
            Expect::Cert(|e| *e == CertError::CaAsLeaf),
        ),
        (
            "leaf with keyCertSign",
            &a.ca,
            CLIENT,
            &kcs,
            false,
            PeerPolicy::danger_any(),
            Expect::Cert(|e| *e == CertError::ForbiddenKeyUsage),
        ),
        (
            "two URI SANs",
            &a.ca,
            CLIENT,
            &two,
            false,
            PeerPolicy::danger_any(),
            Expect::Cert(|e| *e == CertError::UriSanCount(2)),
        ),
        (
            "no URI SAN",
            &a.ca,
            CLIENT,
            &dns,
            false,
            PeerPolicy::danger_any(),
            Expect::Cert(|e| *e == CertError::UriSanCount(0)),
        ),
        (
            "no EKU",
            &a.ca,
            CLIENT,
            &no_eku,
            false,
            PeerPolicy::danger_any(),
            Expect::Cert(|e| matches!(e, CertError::EkuMissing(_))),
        ),
        (
            "agent ID, not a task identity",
            &a.ca,
            "spiffe://example.org/agent/client",
            &ok,
            false,
            PeerPolicy::danger_any(),
            Expect::Cert(|e| matches!(e, CertError::BadId(_))),
        ),
        (
            "non-spiffe URI",
            &a.ca,
            "https://example.org/agent/client/task/t2",
            &ok,
            false,
            PeerPolicy::danger_any(),
            Expect::Cert(|e| *e == CertError::NotSpiffe),
        ),
        (
            "policy deny",
            &a.ca,
            CLIENT,
            &ok,
            false,
            PeerPolicy::agent(
                agentid_protocol::AgentId::new(&td("example.org"), "someone").unwrap(),
            ),
            Expect::Policy,
        ),
    ];
    for (name, issuer, uri, opts, federate, policy, expect) in cases {
        let domains: Vec<&Domain> = if federate { vec![&a, &b] } else { vec![&a] };
        let v = verification(SERVER, &domains, false);
        let creds = credentials(&a.ca, SERVER);
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
        let result = tokio::time::timeout(T, h)
            .await
            .unwrap()
            .unwrap()
            .pop()
            .unwrap();
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
        (
            "expired server",
            LeafOpts {
                not_before: Some(-600),
                not_after: Some(-120),
                ..Default::default()
            },
            Box::new(|e| matches!(e, Error::Certificate(CertError::Expired))),
        ),
        (
            "CA as server leaf",
            LeafOpts {
                ca: true,
                ..Default::default()
            },
            Box::new(|e| matches!(e, Error::Certificate(CertError::CaAsLeaf))),
        ),
        (
            "keyCertSign server leaf",
            LeafOpts {
                key_cert_sign: true,
                ..Default::default()
            },
            Box::new(|e| matches!(e, Error::Certificate(CertError::ForbiddenKeyUsage))),
        ),
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
        let creds = credentials(&a.ca, CLIENT);
        let c = client(creds, cv, PeerPolicy::danger_any());
        let r = tokio::time::timeout(T, c.connect(addr)).await.unwrap();
        match &r {
            Err(e) if check(e) => {}
            other => panic!("case `{name}`: got {other:?}"),
        }
        h.await.unwrap();
    }
}

#[tokio::test]
async fn client_policy_refuses_the_server() {
    let p = pair(None, LeafOpts::default(), false);
    let (addr, h) = p.serve(1).await;
    let c = client(
        p.client_creds.clone(),
        p.cv.clone(),
        PeerPolicy::services_in(td("example.org")),
    );
    let r = tokio::time::timeout(T, c.connect(addr)).await.unwrap();
    assert!(matches!(r, Err(Error::PolicyDenied(_))), "{r:?}");
    assert!(h.await.unwrap().pop().unwrap().is_err());
}

#[tokio::test]
async fn no_client_certificate_is_refused() {
    let p = pair(None, LeafOpts::default(), false);
    let (addr, h) = p.serve(1).await;
    let cfg = raw_client_config(&p.cv, None, false);
    if let Ok(mut tls) = raw_connect(cfg, addr).await {
        let mut b = [0u8; 1];
        let _ = tokio::time::timeout(T, tls.read(&mut b)).await;
    }
    let r = h.await.unwrap().pop().unwrap();
    assert!(
        matches!(r, Err(Error::Tls(rustls::Error::NoCertificatesPresented))),
        "{r:?}"
    );
}

#[tokio::test]
async fn serials_are_reported_in_the_ca_form() {
    // A serial with its high bit set: DER prepends a 0x00 sign byte, which the CA does not write.
    let a = Domain::new("example.org");
    let serial = vec![
        0xdc, 0x60, 0x07, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc,
        0xdd,
    ];
    let expected = "dc6007112233445566778899aabbccdd";
    let opts = LeafOpts {
        serial: Some(serial.clone()),
        ..Default::default()
    };
    let ck = key();
    let cert = leaf(&a.ca, CLIENT, &ck, &opts);
    let mut der_int = vec![0x02, 0x11, 0x00];
    der_int.extend_from_slice(&serial);
    assert!(
        cert.windows(der_int.len()).any(|w| w == der_int),
        "the DER serial carries the 00 sign byte"
    );
    let sk = key();
    let scert = leaf(&a.ca, SERVER, &sk, &opts);
    let client_cred = agentid_transport::Credential::new(vec![cert], ck).unwrap();
    assert_eq!(client_cred.info().serial, expected);
    let server_creds = Arc::new(MemoryCredentials::new(
        agentid_transport::Credential::new(vec![scert], sk).unwrap(),
    ));
    let sv = verification(SERVER, &[&a], false);
    let cv = verification(CLIENT, &[&a], false);
    let client_creds = Arc::new(MemoryCredentials::new(client_cred));
    let (cs, ss) = sessions(
        server(server_creds, sv, PeerPolicy::danger_any()),
        &client(client_creds, cv, PeerPolicy::danger_any()),
    )
    .await;
    assert_eq!(ss.peer().cert_serial, expected, "server side");
    assert_eq!(cs.peer().cert_serial, expected, "client side");
}
