//! The reference runner of the test vectors in `spec/vectors/` (format: `spec/README.md`).
//!
//! Pure JSON in, JSON out, no IO and no clock: [`run_case`] takes a case's `input` object and
//! returns what its `expected` object must be. Interop testers can diff their own runner's output
//! against it, and the repository's vector test compares it with every committed vector.
//!
//! Order of a case (spec/README.md, "How to run a case"): first the whole input is read and its
//! format checked (any deviation is `bad_config`); then the configuration (C1 to C3 of
//! spec/PROTOCOL.md section 9: the verifier's own trust domain's bundle first, then the others in
//! byte order of their names; then the revocation lists); then the hop proof if any; then the
//! chain (phases 1 to 8) or, without a chain, the peer's revocation checks; then authorization if
//! a scope is requested (a peer without a chain holds no authority). The first failure is the
//! result.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::bundle::{BundleSet, TrustBundle};
use crate::cache::TokenCache;
use crate::config::{AuthorityPolicy, VerifierConfig};
use crate::encoding::{b64_decode, json_time};
use crate::error::{Error, ErrorCode, Result};
use crate::id::{PeerId, SpiffeId, TrustDomain};
use crate::limits::Limits;
use crate::presentation::{Presentation, PresentationContext};
use crate::proof::{Role, EXPORTER_LEN};
use crate::scope::Scope;
use crate::verifier::Verifier;
use crate::PublicKey;

/// The members a case `input` may have.
const INPUT_MEMBERS: &[&str] = &[
    "chain",
    "bundles",
    "bundle_updates",
    "held_revocation_lists",
    "revocation_lists",
    "now",
    "skew",
    "peer",
    "verifier_id",
    "requested_scope",
    "requested_amounts",
    "authority_policy",
    "enforced_limits",
    "danger_accept_missing_or_stale_revocations",
    "proof",
];

/// The members of `input.proof`.
const PROOF_MEMBERS: &[&str] = &["compact", "role", "exporter", "client_proof"];

/// Runs one vector case: `input` is the case's `input` object; the return value is the
/// `expected` object the case must carry.
///
/// On success: `{"valid": true, ...the verification result (spec/PROTOCOL.md section 11)...}`,
/// plus `proof_jti` when a hop proof was verified (a case without a chain has no result members).
/// On failure: `{"valid": false, "error": CODE, "index": N | null}`.
pub fn run_case(input: &Value) -> Value {
    run_case_with(input, None)
}

/// [`run_case`] with a verifier that uses `cache` (spec/PROTOCOL.md section 10, "Caching": a
/// cache MUST NOT change any verdict, code or index, so the result is [`run_case`]'s whatever
/// the cache already holds, from this case or any other).
pub fn run_case_cached(input: &Value, cache: &Arc<TokenCache>) -> Value {
    run_case_with(input, Some(cache))
}

fn run_case_with(input: &Value, cache: Option<&Arc<TokenCache>>) -> Value {
    match CaseInput::read(input).and_then(|c| c.run(cache)) {
        Ok(v) => v,
        Err(e) => json!({ "valid": false, "error": e.code().as_str(), "index": e.index() }),
    }
}

fn harness(detail: impl Into<String>) -> Error {
    Error::new(
        ErrorCode::BadConfig,
        format!("vector input: {}", detail.into()),
    )
}

fn member<'a>(m: &'a Map<String, Value>, name: &str) -> Result<&'a Value> {
    m.get(name)
        .ok_or_else(|| harness(format!("missing `{name}`")))
}

fn string<'a>(m: &'a Map<String, Value>, name: &str) -> Result<&'a str> {
    member(m, name)?
        .as_str()
        .ok_or_else(|| harness(format!("`{name}` must be a string")))
}

/// A member that is absent or `null` is `None`; otherwise it must be a string.
fn opt_string<'a>(m: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(harness(format!("`{name}` must be a string or null"))),
    }
}

/// An integer of spec/PROTOCOL.md section 3.3: no sign, fraction or exponent, at most 2^53 - 1.
fn integer(v: &Value, name: &str) -> Result<u64> {
    json_time(v).ok_or_else(|| harness(format!("`{name}` must be an integer in [0, 2^53 - 1]")))
}

fn object<'a>(v: &'a Value, name: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| harness(format!("`{name}` must be an object")))
}

/// A member that is absent or `null` is `None`; otherwise it must be an object.
fn opt_object<'a>(m: &'a Map<String, Value>, name: &str) -> Result<Option<&'a Map<String, Value>>> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => object(v, name).map(Some),
    }
}

fn only_members(m: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<()> {
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(harness(format!("unknown member `{k}` in {what}"))),
        None => Ok(()),
    }
}

/// `input.proof`, read.
struct ProofInput<'a> {
    compact: &'a str,
    role: Role,
    exporter: [u8; EXPORTER_LEN],
    client_proof: Option<&'a str>,
}

/// A case `input`, read and checked against the vector format (spec/README.md). Everything
/// here that does not follow the format is `bad_config`, before any configuration is built.
struct CaseInput<'a> {
    chain: Option<&'a str>,
    /// Bundles in loading order: the verifier's own trust domain first, then the others in byte
    /// order of their names. Each bundle is any JSON value: its content is checked by C2.
    bundles: Vec<(TrustDomain, &'a Value)>,
    /// Bundles that replace a held one, in this order, after `bundles` are loaded and
    /// `held_revocation_lists` applied, at `now`.
    bundle_updates: Vec<(TrustDomain, &'a Value)>,
    /// Lists applied before `bundle_updates`: lists a verifier held when its bundles changed.
    held_revocation_lists: Vec<&'a str>,
    /// Lists applied after `bundle_updates`.
    revocation_lists: Vec<&'a str>,
    now: u64,
    skew: u64,
    peer_id: PeerId,
    peer_key: PublicKey,
    verifier_id: SpiffeId,
    requested_scope: Option<&'a str>,
    requested_amounts: BTreeMap<String, u64>,
    authority_policy: Option<AuthorityPolicy>,
    enforced_limits: Vec<String>,
    danger: bool,
    proof: Option<ProofInput<'a>>,
}

impl<'a> CaseInput<'a> {
    fn read(input: &'a Value) -> Result<Self> {
        let input = object(input, "input")?;
        only_members(input, INPUT_MEMBERS, "`input`")?;
        let chain = opt_string(input, "chain")?;
        let now = integer(member(input, "now")?, "now")?;
        // C1 (spec/PROTOCOL.md section 9): skew, own ID, authority policy, enforced limits.
        let skew = integer(member(input, "skew")?, "skew")?;
        if skew > crate::config::MAX_SKEW {
            return Err(Error::new(ErrorCode::BadConfig, "skew above 120 seconds"));
        }
        let verifier_id = PeerId::parse(string(input, "verifier_id")?)
            .map_err(|e| harness(format!("verifier_id: {}", e.detail())))?
            .as_spiffe_id()
            .clone();
        let authority_policy = match opt_object(input, "authority_policy")? {
            None => None,
            Some(m) => {
                let mut p = AuthorityPolicy::none();
                for (td, patterns) in m {
                    let td = TrustDomain::parse(td)
                        .map_err(|e| harness(format!("authority policy: {}", e.detail())))?;
                    let patterns = patterns
                        .as_str()
                        .ok_or_else(|| harness("authority policy patterns must be strings"))?;
                    let patterns = Scope::parse(patterns)
                        .map_err(|e| harness(format!("authority policy: {}", e.detail())))?;
                    p = p.allow(td, patterns);
                }
                Some(p)
            }
        };
        let enforced_limits = match input.get("enforced_limits") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(names)) => names
                .iter()
                .map(|n| {
                    n.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| harness("enforced limit names are strings"))
                })
                .collect::<Result<Vec<String>>>()?,
            Some(_) => return Err(harness("`enforced_limits` must be an array")),
        };
        for name in &enforced_limits {
            Limits::new(BTreeMap::from([(name.clone(), 0)]))
                .map_err(|e| harness(format!("enforced limit: {}", e.detail())))?;
        }
        let danger = match input.get("danger_accept_missing_or_stale_revocations") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(harness(
                    "`danger_accept_missing_or_stale_revocations` must be a boolean",
                ))
            }
        };
        // Bundles: names are part of the format (a name binds a bundle to its trust domain);
        // the values are checked by C2.
        let own = verifier_id.trust_domain();
        let mut bundles = Vec::new();
        for (td, bundle) in object(member(input, "bundles")?, "bundles")? {
            let td = TrustDomain::parse(td)
                .map_err(|e| harness(format!("bundle trust domain: {}", e.detail())))?;
            bundles.push((td, bundle));
        }
        // The own trust domain first (spec/PROTOCOL.md section 9, C2), then byte order of the
        // names (serde_json's map is ordered by name); the sort is stable.
        bundles.sort_by_key(|(td, _)| *td != own);
        let bundle_updates = match input.get("bundle_updates") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(updates)) => updates
                .iter()
                .map(|u| {
                    let u = object(u, "a bundle update")?;
                    only_members(u, &["trust_domain", "bundle"], "a bundle update")?;
                    let td = TrustDomain::parse(string(u, "trust_domain")?).map_err(|e| {
                        harness(format!("bundle update trust domain: {}", e.detail()))
                    })?;
                    Ok((td, member(u, "bundle")?))
                })
                .collect::<Result<Vec<_>>>()?,
            Some(_) => return Err(harness("`bundle_updates` must be an array")),
        };
        let lists = |name: &str| -> Result<Vec<&'a str>> {
            match input.get(name) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(lists)) => lists
                    .iter()
                    .map(|l| {
                        l.as_str()
                            .ok_or_else(|| harness("revocation lists are compact strings"))
                    })
                    .collect(),
                Some(_) => Err(harness(format!("`{name}` must be an array"))),
            }
        };
        let held_revocation_lists = lists("held_revocation_lists")?;
        let revocation_lists = lists("revocation_lists")?;
        // The peer as the TLS layer reports it: the URI SAN of a certificate that passed
        // spec/PROTOCOL.md section 15.2 (so a task identity or a service ID), and its key.
        let p = object(member(input, "peer")?, "peer")?;
        only_members(p, &["id", "jwk"], "`peer`")?;
        let peer_id = PeerId::parse(string(p, "id")?)
            .map_err(|e| harness(format!("peer id: {}", e.detail())))?;
        let peer_key = PublicKey::from_jwk(member(p, "jwk")?)
            .map_err(|e| harness(format!("peer jwk: {}", e.detail())))?;
        let requested_scope = opt_string(input, "requested_scope")?;
        let requested_amounts = match opt_object(input, "requested_amounts")? {
            None => BTreeMap::new(),
            Some(m) => m
                .iter()
                .map(|(k, v)| Ok((k.clone(), integer(v, "requested_amounts")?)))
                .collect::<Result<BTreeMap<String, u64>>>()?,
        };
        let proof = match opt_object(input, "proof")? {
            None => None,
            Some(p) => {
                only_members(p, PROOF_MEMBERS, "`proof`")?;
                let role = match string(p, "role")? {
                    "client" => Role::Client,
                    "server" => Role::Server,
                    other => return Err(harness(format!("unknown role `{other}`"))),
                };
                let exporter: [u8; EXPORTER_LEN] = b64_decode(string(p, "exporter")?)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| harness("`exporter` must be base64url of 32 bytes"))?;
                let client_proof = opt_string(p, "client_proof")?;
                if role == Role::Client && client_proof.is_some() {
                    return Err(harness("`client_proof` is for role \"server\" only"));
                }
                Some(ProofInput {
                    compact: string(p, "compact")?,
                    role,
                    exporter,
                    client_proof,
                })
            }
        };
        Ok(Self {
            chain,
            bundles,
            bundle_updates,
            held_revocation_lists,
            revocation_lists,
            now,
            skew,
            peer_id,
            peer_key,
            verifier_id,
            requested_scope,
            requested_amounts,
            authority_policy,
            enforced_limits,
            danger,
            proof,
        })
    }

    /// Configuration processing, C2 and C3 (C1 was checked while reading).
    fn config(&self) -> Result<Verifier> {
        let parse = |td: &TrustDomain, bundle: &Value| -> Result<TrustBundle> {
            let bytes = serde_json::to_vec(bundle).map_err(|e| harness(e.to_string()))?;
            TrustBundle::parse(td, &bytes)
        };
        let mut bundles = BundleSet::for_trust_domain(self.verifier_id.trust_domain());
        for (td, bundle) in &self.bundles {
            bundles.insert(parse(td, bundle)?)?;
        }
        let mut cfg = VerifierConfig::new(self.verifier_id.clone(), bundles)
            .skew(self.skew)?
            .enforce_limits(self.enforced_limits.iter().cloned());
        if let Some(p) = &self.authority_policy {
            cfg = cfg.authority_policy(p.clone());
        }
        if self.danger {
            cfg = cfg.danger_accept_missing_or_stale_revocations();
        }
        for l in &self.held_revocation_lists {
            cfg.apply_revocation_list(l)?;
        }
        // The updates in their order, at `now`: each one an insert, as a held bundle is
        // replaced (section 8: an equal or higher sequence replaces it, a lower one fails), and
        // a held list whose key an update takes away is orphaned (section 14.1).
        for (td, bundle) in &self.bundle_updates {
            cfg.insert_bundle_at(parse(td, bundle)?, self.now)?;
        }
        for l in &self.revocation_lists {
            cfg.apply_revocation_list(l)?;
        }
        Verifier::new(cfg)
    }

    fn run(&self, cache: Option<&Arc<TokenCache>>) -> Result<Value> {
        let verifier = match cache {
            Some(c) => self.config()?.with_cache(Arc::clone(c)),
            None => self.config()?,
        };
        let peer_id = self.peer_id.as_spiffe_id();

        // The presentation (spec/PROTOCOL.md section 16.3): the hop proof if any, then the
        // chain or, without one, the peer's revocation checks.
        let (proof_jti, verified) = match &self.proof {
            None => (
                None,
                verifier.verify_peer(self.chain, peer_id, &self.peer_key, self.now)?,
            ),
            Some(p) => {
                let presentation = Presentation {
                    proof: p.compact,
                    chain: self.chain,
                };
                let ctx = PresentationContext {
                    presenter: peer_id,
                    presenter_key: &self.peer_key,
                    presenter_not_after: u64::MAX,
                    verifier_id: verifier.config().own_id(),
                    role: p.role,
                    exporter: p.exporter,
                    client_proof: p.client_proof,
                    accepted_jtis: &[],
                    held_chain: None,
                    now: self.now,
                };
                let v = verifier.verify_presentation(&presentation, &ctx)?;
                (Some(v.proof.jti), v.chain)
            }
        };
        // Then authorization, if a scope is requested (a peer without a chain holds none).
        if let Some(requested) = self.requested_scope {
            let requested = Scope::parse(requested)?;
            verifier.authorize_peer(verified.as_ref(), &requested, &self.requested_amounts)?;
        }

        let mut out = Map::new();
        out.insert("valid".into(), Value::Bool(true));
        if let Some(verified) = &verified {
            out.extend(verified.to_json());
        }
        if let Some(jti) = proof_jti {
            out.insert("proof_jti".into(), Value::from(jti));
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audience::IdSet;
    use crate::crypto::{AuthorityKey, TaskKey};
    use crate::revocation::RevocationListBuilder;
    use crate::token::{GrantBuilder, LinkBuilder};
    use crate::{Algorithm, TaskIdentity};

    const NOW: u64 = 1_767_225_600;

    struct Fixture {
        input: Value,
        holder_key: TaskKey,
    }

    fn fixture() -> Fixture {
        let td = TrustDomain::parse("example.org").unwrap();
        let grant_key = AuthorityKey::generate(Algorithm::Es256).unwrap();
        let rev_key = AuthorityKey::generate(Algorithm::Ed25519).unwrap();
        let a_key = TaskKey::generate(Algorithm::Es256).unwrap();
        let b_key = TaskKey::generate(Algorithm::Ed25519).unwrap();
        let a = TaskIdentity::parse("spiffe://example.org/agent/a/task/t1").unwrap();
        let b = TaskIdentity::parse("spiffe://example.org/agent/b/task/t1").unwrap();
        let grant = GrantBuilder::new(
            &td,
            &a,
            a_key.public_key(),
            Scope::parse("files:*").unwrap(),
        )
        .max_depth(2)
        .validity(NOW - 60, NOW - 60, NOW + 600)
        .jti("g1")
        .sign(&grant_key)
        .unwrap();
        let chain = LinkBuilder::new(
            &grant,
            &b,
            b_key.public_key(),
            Scope::parse("files:read").unwrap(),
        )
        .audience(
            IdSet::single(SpiffeId::parse("spiffe://example.org/svc/files").unwrap()).unwrap(),
        )
        .validity(NOW - 30, NOW - 30, NOW + 300)
        .jti("l1")
        .sign(&a_key)
        .unwrap();
        let bundle = TrustBundle::new(td.clone(), 1)
            .add_grant_key(grant_key.public_key().clone())
            .add_revocation_key(rev_key.public_key().clone());
        let list = RevocationListBuilder::new(&td, 1, NOW - 10, NOW + 590)
            .sign(&rev_key)
            .unwrap();
        let input = json!({
            "chain": chain.as_str(),
            "bundles": { "example.org": serde_json::from_str::<Value>(&bundle.to_json()).unwrap() },
            "revocation_lists": [list],
            "now": NOW,
            "skew": 60,
            "peer": { "id": b.as_str(), "jwk": b_key.public_key().to_jwk() },
            "verifier_id": "spiffe://example.org/svc/files",
            "requested_scope": null,
            "authority_policy": null,
            "enforced_limits": [],
        });
        Fixture {
            input,
            holder_key: b_key,
        }
    }

    #[test]
    fn a_valid_chain_yields_the_result_members() {
        let f = fixture();
        let out = run_case(&f.input);
        assert_eq!(out["valid"], json!(true), "{out}");
        assert_eq!(out["scope"], json!("files:read"));
        assert_eq!(out["depth"], json!(1));
        assert_eq!(out["grant_jti"], json!("g1"));
        assert_eq!(out["audience"], json!(["spiffe://example.org/svc/files"]));
        assert_eq!(out["limits"], json!({}));
        assert_eq!(out["not_before"], json!(NOW - 30));
        assert_eq!(out["expires"], json!(NOW + 300));
        assert_eq!(out["principal"], Value::Null);
        assert_eq!(out["actors"][1]["attested"], json!(true));
        assert!(f.holder_key.public_key().thumbprint().len() == 43);
    }

    #[test]
    fn failures_carry_code_and_index() {
        let mut f = fixture();
        f.input["now"] = json!(NOW + 400);
        assert_eq!(
            run_case(&f.input),
            json!({"valid": false, "error": "expired", "index": 1})
        );
        let mut f = fixture();
        f.input["requested_scope"] = json!("files:write");
        assert_eq!(
            run_case(&f.input),
            json!({"valid": false, "error": "scope_not_granted", "index": null})
        );
    }

    #[test]
    fn malformed_harness_input_is_bad_config() {
        let bad = json!({"valid": false, "error": "bad_config", "index": null});
        assert_eq!(run_case(&json!([])), bad);
        for name in ["now", "peer", "verifier_id", "bundles", "skew"] {
            let mut f = fixture();
            f.input.as_object_mut().unwrap().remove(name);
            assert_eq!(run_case(&f.input), bad, "without {name}");
        }
        let mut f = fixture();
        f.input["surprise"] = json!(1);
        assert_eq!(run_case(&f.input), bad);
        let mut f = fixture();
        f.input["skew"] = json!(121);
        assert_eq!(run_case(&f.input), bad);
    }
}
