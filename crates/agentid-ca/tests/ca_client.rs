//! `CaClient` keeps one connection to the CA service (on 127.0.0.1) and reuses it across calls;
//! it opens a new one when the server closed it, and when the credential rotated (a request
//! never goes out under the old certificate). The connections are counted by a TCP relay in
//! front of the service (TLS passes through it untouched), which can also cut them all. The
//! feed watchers, on a credential an `Enroller` renews, follow each renewal without a failure.
#![cfg(test)]
#![allow(missing_docs)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentid_ca::CertificateAuthority;
use agentid_protocol::{BundleSet, SpiffeId, VerifierConfig};
use agentid_transport::enroll::{
    BundleApplier, BundleWatcher, CaClient, Enroller, RevocationWatcher, WatchOptions,
};
use agentid_transport::{Credential, CredentialSource, MemoryCredentials, PeerVerification};

const T: Duration = Duration::from_secs(20);

const EXTRA_POLICY: &str = r#"
[agents.planner.permissions]
"svc:platform" = ["list"]

[services.agentid-ca]
max_ttl = "1h"
requesters = ["operator"]

[services.platform]
max_ttl = "1h"
requesters = ["operator"]
"#;

/// A TCP relay to the CA service that counts the connections it accepts and can cut them all.
struct Relay {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    live: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let live = Arc::new(Mutex::new(Vec::new()));
        let (a, lv) = (accepts.clone(), live.clone());
        let acceptor = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                lv.lock().unwrap().push(task.abort_handle());
            }
        });
        Relay {
            addr,
            accepts,
            live,
            acceptor,
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// Closes every relayed connection (both sockets dropped), as a server going away does.
    fn cut_all(&self) {
        for h in self.live.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut_all();
        self.acceptor.abort();
    }
}

struct World {
    dir: tempfile::TempDir,
    mtls: SocketAddr,
}

async fn start() -> World {
    let (dir, mtls, _) = common::serve_ca(EXTRA_POLICY, false).await;
    World { dir, mtls }
}

impl World {
    fn ca(&self) -> CertificateAuthority {
        CertificateAuthority::open(self.dir.path()).unwrap()
    }

    /// `platform`'s service certificate for a new key (the store binds `platform` to that key
    /// from now on: a certificate for an earlier key is refused `key_mismatch`).
    fn platform(&self) -> Credential {
        self.platform_for(None)
    }

    /// As [`World::platform`], for `ttl` (the policy's default when `None`).
    fn platform_for(&self, ttl: Option<Duration>) -> Credential {
        common::service_credential(&self.ca(), "platform", ttl)
    }

    fn verification(&self) -> Arc<PeerVerification> {
        let mut bundles = BundleSet::new();
        bundles.insert(self.ca().trust_bundle().unwrap()).unwrap();
        let own = SpiffeId::parse("spiffe://example.org/svc/platform").unwrap();
        PeerVerification::new(
            VerifierConfig::new(own, bundles).danger_accept_missing_or_stale_revocations(),
        )
        .unwrap()
    }

    fn client(&self, url: &str, creds: Arc<MemoryCredentials>) -> CaClient {
        CaClient::new(url, creds, self.verification(), T).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successive_calls_share_one_connection() {
    let w = start().await;
    let relay = Relay::start(w.mtls).await;
    let client = w.client(&relay.url(), Arc::new(MemoryCredentials::new(w.platform())));
    for _ in 0..3 {
        client.revocations().await.unwrap();
        client.list().await.unwrap();
    }
    // A refusal is an answer too: the connection stays.
    let refused = client
        .revoke(&agentid_api::RevokeRequest {
            task: Some("t-none".into()),
            agent: None,
            serial: None,
            jkt: None,
            jti: None,
            iss: None,
            reason: None,
        })
        .await
        .unwrap_err();
    assert!(refused.api_error().is_some(), "{refused}");
    // Clones share the kept connection.
    client.clone().list().await.unwrap();
    assert_eq!(relay.accepts(), 1, "eight calls, one connection");

    // Concurrent calls do not wait for one another: each opens its own, and one is kept.
    let (a, b) = tokio::join!(client.list(), client.list());
    a.unwrap();
    b.unwrap();
    let after_concurrent = relay.accepts();
    assert!((1..=2).contains(&after_concurrent), "{after_concurrent}");
    client.list().await.unwrap();
    client.list().await.unwrap();
    assert_eq!(relay.accepts(), after_concurrent, "the kept one is reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_after_the_server_closed_the_connection_goes_out_on_a_new_one() {
    let w = start().await;
    let relay = Relay::start(w.mtls).await;
    let client = w.client(&relay.url(), Arc::new(MemoryCredentials::new(w.platform())));
    client.list().await.unwrap();
    assert_eq!(relay.accepts(), 1);
    for round in 2..=4 {
        relay.cut_all();
        // Whether or not the client noticed the close before the call: the call succeeds.
        client.list().await.unwrap();
        client.revocations().await.unwrap();
        assert_eq!(relay.accepts(), round, "one new connection per close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_credential_is_presented_on_a_new_connection() {
    let w = start().await;
    let relay = Relay::start(w.mtls).await;
    let old = w.platform();
    let old_again =
        Credential::with_shared_key(old.cert_chain().to_vec(), old.shared_key()).unwrap();
    let creds = Arc::new(MemoryCredentials::new(old));
    let client = w.client(&relay.url(), creds.clone());
    client.list().await.unwrap();
    client.list().await.unwrap();
    assert_eq!(relay.accepts(), 1);

    // The CA now binds `platform` to a new key: the old certificate is refused from here on,
    // on any connection (the CA re-checks the caller's key on every request).
    let new = w.platform();
    let stale = w.client(
        &format!("https://{}", w.mtls),
        Arc::new(MemoryCredentials::new(old_again)),
    );
    let err = stale.list().await.unwrap_err();
    assert_eq!(
        err.api_error().map(|e| e.code),
        Some(agentid_api::ErrorCode::KeyMismatch),
        "{err}"
    );

    // After the rotation the kept connection (old certificate, still open and usable) is not
    // reused: the call goes out on a new connection under the new certificate.
    let trust = w.verification().trust_store();
    creds.rotate(new, &trust).unwrap();
    client.list().await.unwrap();
    assert_eq!(relay.accepts(), 2, "a new connection after the rotation");
    client.list().await.unwrap();
    assert_eq!(relay.accepts(), 2, "and that one is kept");
}

/// The watchers' long-polls on a credential that an `Enroller` renews: every renewal is
/// followed on a new connection, and no poll fails. (Each watcher's connection used to outlive
/// the certificate it was made with and to be dropped under a held long-poll at that
/// certificate's deadline margin, logging `dispatch task is gone` after each renewal.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_watchers_follow_renewals_without_a_failed_poll() {
    const TTL: Duration = Duration::from_secs(12);
    let w = start().await;
    let url = format!("https://{}", w.mtls);
    // The signed agentid bundle the CA serves, for the bundle watcher to apply.
    agentid_ca::agentid_bundle::sign_dir(&w.ca(), w.dir.path(), common::unix(common::now()))
        .unwrap();
    let enroller = Enroller::from_credential(&url, w.platform_for(Some(TTL)), w.verification(), T)
        .with_ttl(Some(TTL));
    let creds = enroller.credentials();
    let first_not_after = creds.current().unwrap().info().not_after;
    let target = w.verification();
    let client = || CaClient::new(&url, creds.clone(), w.verification(), T).unwrap();
    // The default 25-second long-poll: longer than the certificates live.
    let revocations =
        RevocationWatcher::new(client(), target.clone(), WatchOptions::default()).spawn();
    let signing = agentid_ca::agentid_bundle::public_key(w.dir.path()).unwrap();
    let applier = Arc::new(BundleApplier::new(
        target.clone(),
        signing,
        agentid_protocol::TrustDomain::parse(common::TD).unwrap(),
    ));
    let bundles = BundleWatcher::new(
        client(),
        applier,
        WatchOptions::default().with_bundle_interval(Duration::from_secs(1)),
    )
    .spawn();
    assert!(revocations.wait_for(T, |s| s.seq.is_some()).await);
    assert!(bundles.wait_for(T, |s| s.applied > 0).await);

    let mut changes = creds.subscribe().unwrap();
    let renewing = tokio::spawn(async move { enroller.run().await });
    // The first renewal comes at once (the enroller times the certificate it started with
    // from its back-dated notBefore), the next ones at half of each 12-second lifetime: the
    // third is past the deadline margin of the first two certificates, where the connections
    // they were presented on are dropped.
    for n in 1..=3 {
        tokio::time::timeout(Duration::from_secs(40), changes.changed())
            .await
            .unwrap_or_else(|_| panic!("renewal {n} within 40 s"))
            .unwrap();
    }
    let now = common::unix(common::now());
    assert!(
        now + 5 > first_not_after,
        "the third renewal comes after the first certificate's margin ({now}, {first_not_after})"
    );
    renewing.abort();
    for (name, status) in [
        ("revocations", revocations.status()),
        ("bundles", bundles.status()),
    ] {
        assert_eq!(status.failures, 0, "{name}: {status:?}");
        assert_eq!(status.last_error, None, "{name}: {status:?}");
    }
    // The feed is still followed under the renewed certificate: a revocation committed now
    // (by the operator, on the same store) reaches the watcher.
    let seq = revocations.status().seq.unwrap();
    w.ca()
        .revoke(
            &agentid_ca::RevokeTarget::Agent("worker".into()),
            Some("test"),
            "operator",
            common::now(),
        )
        .unwrap();
    assert!(
        revocations
            .wait_for(T, |s| s.seq.is_some_and(|q| q > seq))
            .await,
        "{:?}",
        revocations.status()
    );
    assert_eq!(revocations.status().failures, 0);
    revocations.stop().await;
    bundles.stop().await;
}

/// Every `policy_denied` carries the next step: the policy.toml rule that refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_refusal_names_the_rule_that_refused() {
    let w = start().await;
    let client = w.client(
        &format!("https://{}", w.mtls),
        Arc::new(MemoryCredentials::new(w.platform())),
    );
    let hint_of = |e: agentid_transport::enroll::EnrollError| {
        let api = e.api_error().cloned().unwrap_or_else(|| panic!("{e}"));
        assert_eq!(api.code, agentid_api::ErrorCode::PolicyDenied, "{api}");
        api.hint
    };
    // A permission `platform` does not hold for an agent.
    let token = |agent: &str, scope: &str| agentid_api::TokenRequest {
        agent: agent.into(),
        scope: vec![scope.into()],
        ..Default::default()
    };
    let hint = hint_of(
        client
            .create_token(&token("planner", "tickets:read"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        hint,
        "check the request against agents.planner.permissions in the CA's policy.toml, or ask the CA's operator to change that rule"
    );
    // An agent without a rule: refused as one whose rule gives `platform` nothing, so that a
    // service cannot tell which agent names the policy has (SECURITY.md row 205).
    let hint = hint_of(
        client
            .create_token(&token("ghost", "tickets:read"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        hint,
        "check the request against agents.ghost.permissions in the CA's policy.toml, or ask the CA's operator to change that rule"
    );
    // `list` held for no agent at all.
    let weak = common::service_credential(&w.ca(), "search", None);
    let search = CaClient::new(
        &format!("https://{}", w.mtls),
        Arc::new(MemoryCredentials::new(weak)),
        w.verification(),
        T,
    )
    .unwrap();
    let hint = hint_of(search.list().await.unwrap_err());
    assert!(hint.contains("agents.*.permissions"), "{hint}");
}

/// A renewal the CA refuses for good ends `Enroller::run` at once with that refusal, instead of
/// asking again every few seconds until 90% of the certificate's lifetime: here the certificate
/// was revoked, and with a 60-second certificate back-dated by the CA's 60-second skew the old
/// retry loop would have kept asking for about 55 seconds, far past the 20-second bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_refused_for_good_ends_the_renewal_loop_at_once() {
    let w = start().await;
    let url = format!("https://{}", w.mtls);
    let credential = w.platform_for(Some(Duration::from_secs(60)));
    let serial = credential.info().serial.clone();
    common::revoke_serial(&w.ca(), &serial);
    let enroller = Enroller::from_credential(&url, credential, w.verification(), T)
        .with_ttl(Some(Duration::from_secs(60)));
    let e = tokio::time::timeout(T, enroller.run())
        .await
        .expect("the loop ends within the bound")
        .expect_err("a revoked certificate is not renewed");
    assert!(!e.is_transient(), "{e}");
    assert_eq!(
        e.api_error().map(|a| a.code),
        Some(agentid_api::ErrorCode::Revoked),
        "{e}"
    );
    // The revoked certificate was not replaced.
    assert_eq!(
        enroller.credentials().current().unwrap().info().serial,
        serial
    );
}

/// The application rotates another credential into the source an `Enroller` renews (a new task
/// for a new key, after the old key was suspected stolen, say) while a renewal of the old one is
/// in flight: the renewal must not put the old key back. It used to publish the renewed old
/// certificate over the new credential, and every later renewal kept the old key alive. The CA
/// is held on its store's write lock so that the rotation lands while the renewal waits there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_in_flight_does_not_replace_a_credential_rotated_in_meanwhile() {
    let w = start().await;
    let relay = Relay::start(w.mtls).await;
    let ca = w.ca();
    let (key_a, chain_a, id_a) = common::operator_task(&ca, "planner");
    let (key_b, chain_b, id_b) = common::operator_task(&ca, "planner");
    let verification = common::verification(&ca, &id_a);
    let enroller = Arc::new(Enroller::from_credential(
        &relay.url(),
        Credential::new(chain_a, key_a).unwrap(),
        verification.clone(),
        T,
    ));
    let creds = enroller.credentials();

    let db = rusqlite::Connection::open(w.dir.path().join("ca.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let renewal = tokio::spawn({
        let e = enroller.clone();
        async move { e.renew().await }
    });
    // The renewal read the credential it renews and connected; its request then reaches the CA
    // (on 127.0.0.1, well within the pause below) and waits there for the store. Should it not
    // have been sent yet, it goes out under the new credential, which the `Enroller` refuses to
    // take as a renewal of the old one: this test then passes whatever the code.
    let deadline = std::time::Instant::now() + T;
    while relay.accepts() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the renewal never connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    creds
        .rotate(
            Credential::new(chain_b, key_b).unwrap(),
            &verification.trust_store(),
        )
        .unwrap();
    db.execute_batch("COMMIT").unwrap();
    let renewed = tokio::time::timeout(T, renewal).await.unwrap().unwrap();
    assert_eq!(
        creds.current().unwrap().identity().as_str(),
        id_b,
        "the renewal of {id_a} replaced the credential rotated in meanwhile ({renewed:?})"
    );
}
