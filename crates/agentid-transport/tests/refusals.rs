//! What a refused peer learns: a stable code and a fixed message, never the verifier's local
//! detail; and a chain accepted only by the skew is refused at the handshake instead of giving
//! a session that is already over.
#![cfg(test)]

mod support;

use std::sync::Arc;

use agentid_protocol::{GrantBuilder, Scope};
use agentid_transport::{Error, MemoryCredentials, PeerPolicy};
use support::*;

/// Connects a client presenting `chain` (made for the client's key by `make`) to a server with
/// revocation lists required (`strict`), and returns the client's error.
async fn refusal(
    strict: bool,
    make: impl FnOnce(&Domain, &agentid_protocol::TaskKey) -> String,
) -> Error {
    let a = Domain::new("example.org");
    let ck = key();
    let chain = make(&a, &ck);
    let client_creds = Arc::new(MemoryCredentials::new(
        credential(&a.ca, CLIENT, ck, &LeafOpts::default()).with_chain(chain),
    ));
    let server_creds = credentials(&a.ca, SERVER);
    let sv = verification(SERVER, &[&a], strict);
    let cv = verification(CLIENT, &[&a], false);
    let (addr, h) = serve(server(server_creds, sv, PeerPolicy::danger_any()), 1).await;
    let c = client(client_creds, cv, PeerPolicy::danger_any());
    let r = tokio::time::timeout(T, c.connect(addr)).await.unwrap();
    let server_side = h.await.unwrap().pop().unwrap();
    assert!(server_side.is_err());
    r.unwrap_err()
}

#[tokio::test]
async fn a_reject_carries_the_code_and_no_local_detail() {
    // The server requires revocation lists and holds none: the local error names the missing
    // list; the peer learns only the code.
    let e = refusal(true, |a, k| {
        a.grant(&a.task("client", "t2"), k, "read")
            .as_str()
            .to_owned()
    })
    .await;
    match e {
        Error::Rejected { code, message } => {
            assert_eq!(code, "revocation_missing");
            assert_eq!(message, "presentation refused");
            assert!(!message.contains("example.org"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_chain_expired_within_the_skew_is_refused_at_the_handshake() {
    let e = refusal(false, |a, k| {
        let n = now();
        // Expired 20 s ago: inside the verifier's 60 s skew, so the chain verifies, but the
        // session's deadline (the chain's exp) is already past.
        GrantBuilder::new(
            &a.td,
            &a.task("client", "t2"),
            k.public_key(),
            Scope::parse("read").unwrap(),
        )
        .validity(n - 300, n - 300, n - 20)
        .sign(&a.grant_key)
        .unwrap()
        .as_str()
        .to_owned()
    })
    .await;
    match e {
        Error::Rejected { code, .. } => assert_eq!(code, "credential_expired"),
        other => panic!("{other:?}"),
    }
}
