//! Certificates renew for longer than three lifetimes with no failed request: a server agent
//! whose credential comes from an `Enroller` (`agentid_transport::enroll`) renewing against the
//! real CA service on 127.0.0.1 with certificates of a few seconds, while a client agent makes
//! requests to it (a fresh mutual-TLS session and one echoed message each) the whole time.
#![cfg(test)]
#![allow(missing_docs)]

mod common;
use common::chain_of;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentid_ca::server::{CaService, ServiceOptions};
use agentid_ca::{
    CertificateAuthority, KeySource, KeyType, OpenTaskRequest, ServiceRequest, TaskRequester,
};
use agentid_protocol::{Algorithm, PeerId, Scope, TaskKey, TrustDomain};
use agentid_transport::enroll::Enroller;
use agentid_transport::{
    AgentClient, AgentServer, Credential, CredentialSource, MemoryCredentials, PeerPolicy,
};

/// The bound on every await.
const T: Duration = Duration::from_secs(10);
/// The server's certificate lifetime. The Enroller renews at half of it (in whole seconds from
/// receipt), over an HTTP connection that sends nothing within 5 s (its default close margin)
/// of the certificate's `notAfter`: 14 s leaves a renewal more than a second to get through on a
/// loaded machine. With 10 s or less every renewal after the first is refused locally and the
/// certificate expires.
const LIFETIME: Duration = Duration::from_secs(14);
const SERVER_ID: &str = "spiffe://example.org/svc/renew-server";

const EXTRA_POLICY: &str = r#"
[services.agentid-ca]
max_ttl = "1h"
requesters = ["operator"]

[services.renew-server]
max_ttl = "1h"
requesters = ["operator"]
"#;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_for_longer_than_three_lifetimes_with_no_failed_request() {
    // The CA service.
    let dir = common::make_ca_dir(KeyType::P256);
    let mut policy = common::POLICY.to_owned();
    policy.push_str(EXTRA_POLICY);
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let ca = || CertificateAuthority::open(dir.path()).unwrap();
    let service = CaService::new(ca(), ServiceOptions::default()).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ca_url = format!("https://{}", l.local_addr().unwrap());
    tokio::spawn(async move { service.serve_both(l, None).await });

    // The server agent's first short-lived certificate, then its Enroller.
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let issued = ca()
        .issue_service(
            &ServiceRequest {
                service: "renew-server".into(),
                key: KeySource::Spki(key.public_key().to_spki_der()),
                ttl: Some(LIFETIME),
            },
            common::now(),
        )
        .unwrap();
    assert_eq!(issued.identity.as_str(), SERVER_ID);
    let first = Credential::new(chain_of(&issued.leaf.der, &issued.intermediate_der), key).unwrap();
    let server_verification = common::verification(&ca(), SERVER_ID);
    let enroller = Arc::new(
        Enroller::from_credential(&ca_url, first, server_verification.clone(), T)
            .with_ttl(Some(LIFETIME)),
    );
    let source = enroller.credentials();

    // Every certificate the server held: serial -> (notBefore, notAfter).
    let held: Arc<Mutex<BTreeMap<String, (u64, u64)>>> = Arc::default();
    let record = {
        let held = held.clone();
        let source = source.clone();
        move || {
            if let Some(c) = source.current() {
                let i = c.info();
                held.lock()
                    .unwrap()
                    .insert(i.serial.clone(), (i.not_before, i.not_after));
            }
        }
    };
    record();
    let mut changes = source.subscribe().unwrap();
    let recorder = tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            record();
        }
    });
    let renewing = {
        let enroller = enroller.clone();
        tokio::spawn(async move { enroller.run().await })
    };

    // The server agent: presents whatever the Enroller holds now; echoes each message.
    let td = TrustDomain::parse(common::TD).unwrap();
    let server = Arc::new(
        AgentServer::builder(source, server_verification, PeerPolicy::agents_in(td))
            .build()
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let server = server.clone();
            tokio::spawn(async move {
                let Ok(mut s) = tokio::time::timeout(T, server.accept(tcp)).await else {
                    return;
                };
                let Ok(s) = s.as_mut() else { return };
                while let Ok(Ok(Some(d))) = tokio::time::timeout(T, s.recv()).await {
                    if s.send(&d).await.is_err() {
                        break;
                    }
                }
            });
        }
    });

    // The client agent: a planner task with a long certificate.
    let client_key = TaskKey::generate(Algorithm::Es256).unwrap();
    let opened = ca()
        .open_task(
            &OpenTaskRequest::new(
                "planner",
                KeySource::Spki(client_key.public_key().to_spki_der()),
                TaskRequester::Operator,
                Scope::parse("tickets:read").unwrap(),
            ),
            common::now(),
        )
        .unwrap();
    let client_chain = chain_of(
        &opened.certificate.leaf.der,
        &opened.certificate.intermediate_der,
    );
    let client = AgentClient::builder(
        Arc::new(MemoryCredentials::new(
            Credential::new(client_chain, client_key).unwrap(),
        )),
        common::verification(&ca(), opened.identity.as_str()),
        PeerPolicy::exact(PeerId::parse(SERVER_ID).unwrap()),
    )
    .build()
    .unwrap();

    // Requests, one after another, for three lifetimes and a bit.
    let until = Instant::now() + LIFETIME * 3 + Duration::from_secs(1);
    let mut used: Vec<(String, u64)> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let msg = format!("request {n}");
        let outcome = tokio::time::timeout(T, async {
            let mut session = client.connect(addr).await.map_err(|e| e.to_string())?;
            let peer = (session.peer().cert_serial.clone(), unix_now());
            session
                .send(msg.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            match session.recv().await {
                Ok(Some(d)) if d.as_ref() == msg.as_bytes() => Ok(peer),
                other => Err(format!("no echo: {other:?}")),
            }
        })
        .await;
        match outcome {
            Ok(Ok(peer)) => used.push(peer),
            Ok(Err(e)) => failures.push(format!("request {n}: {e}")),
            Err(_) => failures.push(format!("request {n}: timed out")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert!(
        !renewing.is_finished(),
        "the Enroller stopped: {:?}; held {:?}; {} failures {:?}",
        renewing.await,
        held.lock().unwrap(),
        failures.len(),
        failures.first()
    );
    renewing.abort();
    recorder.abort();
    assert!(
        failures.is_empty(),
        "{} of {n} requests failed: {failures:?}",
        failures.len()
    );

    // Every certificate the client met was one the server held, within its validity.
    let held = held.lock().unwrap().clone();
    for (serial, at) in &used {
        let (nb, na) = held
            .get(serial)
            .unwrap_or_else(|| panic!("the server presented {serial}, never held"));
        assert!(
            (*nb..=*na).contains(at),
            "{serial} used at {at}, valid {nb}..={na}"
        );
    }
    let serials: std::collections::BTreeSet<&str> = used.iter().map(|(s, _)| s.as_str()).collect();
    let renewals = serials.len() - 1;
    assert!(
        renewals >= 3,
        "{renewals} renewals seen over {n} requests; held {held:?}"
    );
    println!(
        "lifetime {} s: {n} requests, none failed, {renewals} renewals seen by the client ({} certificates held)",
        LIFETIME.as_secs(),
        held.len()
    );
}
