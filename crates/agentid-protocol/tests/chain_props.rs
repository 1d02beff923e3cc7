//! Property tests over whole chains: any narrowing of a link verifies, any widening fails with
//! the code of the widened dimension. Widened links are signed raw (no builder would sign them),
//! so this file needs the `danger-raw-signing` feature; `.ci/run` runs it.
#![cfg(test)]
#![cfg(feature = "danger-raw-signing")]

use agentid_protocol::danger::{base64url, sha256, sign_with_task_key};
use agentid_protocol::*;
use proptest::prelude::*;
use serde_json::json;

const NOW: u64 = 1_767_225_600;
const POOL: &[&str] = &[
    "repo:read",
    "repo:write",
    "issues:read",
    "issues:write",
    "ci:run",
    "docs:*",
    "deploy:staging",
];

struct Fixture {
    td: TrustDomain,
    grant_key: AuthorityKey,
    verifier: Verifier,
    from: (TaskIdentity, TaskKey),
    to: (TaskIdentity, TaskKey),
    server: SpiffeId,
}

fn fixture() -> Fixture {
    let td = TrustDomain::parse("example.org").unwrap();
    let grant_key = AuthorityKey::generate(Algorithm::Ed25519).unwrap();
    let rev_key = AuthorityKey::generate(Algorithm::Ed25519).unwrap();
    let task = TaskId::generate().unwrap();
    let mk = |n: &str| {
        (
            TaskIdentity::new(&AgentId::new(&td, n).unwrap(), &task).unwrap(),
            TaskKey::generate(Algorithm::Ed25519).unwrap(),
        )
    };
    let server = ServiceId::new(&td, "api").unwrap().as_spiffe_id().clone();
    let mut bundles = BundleSet::new();
    bundles
        .insert(
            TrustBundle::new(td.clone(), 1)
                .add_grant_key(grant_key.public_key().clone())
                .add_revocation_key(rev_key.public_key().clone()),
        )
        .unwrap();
    let list = RevocationListBuilder::new(&td, 1, NOW, NOW + 600)
        .sign(&rev_key)
        .unwrap();
    let mut cfg = VerifierConfig::new(server.clone(), bundles).enforce_limits(["calls", "cost"]);
    cfg.apply_revocation_list(&list).unwrap();
    let (from, to) = (mk("a"), mk("b"));
    Fixture {
        td,
        grant_key,
        verifier: Verifier::new(cfg).unwrap(),
        from,
        to,
        server,
    }
}

/// Signs a link from `f.from` to `f.to` after `grant` with arbitrary narrowing claims.
fn raw_link(
    f: &Fixture,
    grant: &Chain,
    scope: &str,
    limits: serde_json::Value,
    exp: u64,
    depth: u8,
    aud: Option<Vec<String>>,
) -> String {
    let mut claims = json!({
        "ver": 1,
        "iss": f.from.0.as_str(),
        "sub": f.to.0.as_str(),
        "cnf": {"jwk": f.to.1.public_key().to_jwk()},
        "prev": base64url(&sha256(grant.as_str().as_bytes())),
        "task": f.from.0.task_id().as_str(),
        "scope": scope,
        "limits": limits,
        "max_depth": depth,
        "iat": NOW,
        "nbf": NOW,
        "exp": exp,
        "jti": "link-1",
    });
    if limits.is_null() {
        claims.as_object_mut().unwrap().remove("limits");
    }
    if let Some(aud) = aud {
        claims["aud"] = json!(aud);
    }
    let header = br#"{"alg":"Ed25519","typ":"agentid-link+jwt"}"#;
    let link =
        sign_with_task_key(&f.from.1, header, &serde_json::to_vec(&claims).unwrap()).unwrap();
    format!("{}~{}", grant.as_str(), link)
}

fn grant(f: &Fixture, scope: &Scope, calls: u64, aud: &[String]) -> Chain {
    let aud = IdSet::new(aud.iter().map(|a| SpiffeId::parse(a).unwrap()).collect()).unwrap();
    GrantBuilder::new(&f.td, &f.from.0, f.from.1.public_key(), scope.clone())
        .max_depth(3)
        .limits(Limits::new([("calls".to_owned(), calls)].into_iter().collect()).unwrap())
        .audience(aud)
        .validity(NOW - 10, NOW - 10, NOW + 3600)
        .sign(&f.grant_key)
        .unwrap()
}

fn verify(f: &Fixture, chain: &str) -> Result<VerifiedChain> {
    f.verifier
        .verify_chain(chain, f.to.0.as_spiffe_id(), f.to.1.public_key(), NOW)
}

fn subset() -> impl Strategy<Value = Vec<usize>> {
    proptest::sample::subsequence((0..POOL.len()).collect::<Vec<_>>(), 1..=POOL.len())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_narrowing_verifies(parent in subset(), pick in any::<proptest::sample::Index>(),
                              calls in 1u64..1000, lower in 0u64..1000, shorten in 0u64..3600, depth in 0u8..=2) {
        let f = fixture();
        let parent_scope = Scope::parse(&parent.iter().map(|i| POOL[*i]).collect::<Vec<_>>().join(" ")).unwrap();
        let aud = vec![f.td.id().as_str().to_owned()];
        let g = grant(&f, &parent_scope, calls, &aud);
        // The child keeps one concrete token of the parent (a `x:*` parent yields `x:sub`).
        let token = parent_scope.tokens()[pick.index(parent_scope.tokens().len())].as_str().replace('*', "sub");
        let child_limit = lower.min(calls);
        let chain = raw_link(&f, &g, &token, json!({"calls": child_limit, "cost": 5}), NOW + 3600 - shorten, depth,
                             Some(vec![f.server.as_str().to_owned()]));
        let r = verify(&f, &chain);
        prop_assert!(r.is_ok(), "{:?}", r.err());
        let r = r.unwrap();
        prop_assert_eq!(r.limits.get("calls"), Some(child_limit));
        prop_assert_eq!(r.scope.to_string(), token);
    }

    #[test]
    fn any_widening_fails(parent in subset(), extra in 0..POOL.len(), calls in 1u64..1000, raise in 1u64..1000,
                          dimension in 0u8..5) {
        let f = fixture();
        let parent_scope = Scope::parse(&parent.iter().map(|i| POOL[*i]).collect::<Vec<_>>().join(" ")).unwrap();
        let aud = vec![f.td.id().as_str().to_owned()];
        let g = grant(&f, &parent_scope, calls, &aud);
        let ok_scope = parent_scope.tokens()[0].as_str().replace('*', "sub");
        let (chain, code) = match dimension {
            0 => {
                // A token outside the parent set (wildcards of the pool cover only their own prefix).
                let wider = format!("{} {}:other", ok_scope, POOL[extra].split(':').next().unwrap_or("x").to_owned() + "x");
                (raw_link(&f, &g, &wider, serde_json::Value::Null, NOW + 60, 0, None), ErrorCode::ScopeEscalation)
            }
            1 => (raw_link(&f, &g, &ok_scope, json!({"calls": calls + raise}), NOW + 60, 0, None), ErrorCode::LimitEscalation),
            2 => (raw_link(&f, &g, &ok_scope, serde_json::Value::Null, NOW + 3600 + raise, 0, None), ErrorCode::ExpiryExtended),
            3 => (raw_link(&f, &g, &ok_scope, serde_json::Value::Null, NOW + 60, 3, None), ErrorCode::DepthExceeded),
            _ => (raw_link(&f, &g, &ok_scope, serde_json::Value::Null, NOW + 60, 0, Some(vec!["spiffe://other.example".to_owned()])),
                  ErrorCode::AudienceEscalation),
        };
        let e = verify(&f, &chain).unwrap_err();
        prop_assert_eq!((e.code(), e.index()), (code, Some(1)), "{}", e);
    }
}
