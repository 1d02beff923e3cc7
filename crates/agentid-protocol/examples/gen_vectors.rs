//! Writes the interoperability test vectors of `spec/vectors/`.
//!
//! ```text
//! cargo run -p agentid-protocol --features danger-raw-signing --example gen_vectors -- spec/vectors
//! ```
//!
//! Every case's `expected` value is written here by hand, from spec/PROTOCOL.md: this program
//! never runs the verifier. Invalid tokens are signed properly with the right key (through the
//! `danger` module), so that each failure comes from the check a case targets and not from a
//! broken signature. The published test keys live in `keys.json`: created when absent, reused
//! otherwise. Ed25519 signatures are deterministic; ES256 signatures are randomized, so a re-run
//! changes the bytes of ES256 tokens but never a verdict.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use agentid_protocol::danger::{sha256, sign_with_authority_key, sign_with_task_key};
use agentid_protocol::{
    AgentId, Algorithm, AuthorityKey, ErrorCode, GrantBuilder, JwsSigner, LinkBuilder, PublicKey,
    RevocationListBuilder, Scope, SpiffeId, TaskId, TaskIdentity, TaskKey, TrustBundle,
    TrustDomain,
};

const NOW: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z
const TASK: &str = "kq7xm3vzb4df6hjn5p2rstuw5a";
const OTHER_TASK: &str = "mz4nq7c2xw5vbk3dh6jr2tpa7e";

/// A self-signed P-256 CA certificate (made once with openssl; its key is not used), standard
/// base64 as `x5c` carries it, and its public key: the x509-svid entry of the bundle vectors.
const X509_CA_CERT: &str = "MIIB+zCCAaGgAwIBAgIBATAKBggqhkjOPQQDAjBCMR0wGwYDVQQKDBRhZ2VudGlkIHRlc3QgdmVjdG9yczEhMB8GA1UEAwwYZXhhbXBsZS5vcmcgeDUwOS1zdmlkIENBMCAXDTI2MTIwNTIxMzIwM1oYDzIxMjYxMTExMjEzMjAzWjBCMR0wGwYDVQQKDBRhZ2VudGlkIHRlc3QgdmVjdG9yczEhMB8GA1UEAwwYZXhhbXBsZS5vcmcgeDUwOS1zdmlkIENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAESe9+XHsYWDId71E9n2uk9ozNeFxadclXFLYdBO7XkdktDHL2WJziKB5Aunb5QcbXdPNz5Ca+nFHQnClBRbWAwqOBhTCBgjAdBgNVHQ4EFgQU/lzoaYAzdhZbLCDfEt90L0nneU8wHwYDVR0jBBgwFoAU/lzoaYAzdhZbLCDfEt90L0nneU8wDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYwHwYDVR0RBBgwFoYUc3BpZmZlOi8vZXhhbXBsZS5vcmcwCgYIKoZIzj0EAwIDSAAwRQIgD1UTATsQpJsSaNy2ENYJpHt2iX8VW1oFufL4yG3lf60CIQCmt2ZvNVgVCYh+KHnvmTw1MXiyKbtea8jtDCDSA+evIg==";
const X509_CA_X: &str = "Se9-XHsYWDId71E9n2uk9ozNeFxadclXFLYdBO7Xkdk";
const X509_CA_Y: &str = "LQxy9lic4igeQLp2-UHG13Tzc-QmvpxR0JwpQUW1gMI";
const TD: &str = "example.org";
const PTD: &str = "partner.example";
const TD_ID: &str = "spiffe://example.org";
const PTD_ID: &str = "spiffe://partner.example";
const VERIFIER: &str = "spiffe://example.org/svc/files";
const OTHER_SVC: &str = "spiffe://example.org/svc/search";
const G_IAT: u64 = NOW - 600;
const G_EXP: u64 = NOW + 3000;
const L_IAT: u64 = NOW - 300;
const L_EXP: u64 = NOW + 1800;

// ------------------------------------------------------------------------------------------------
// Keys
// ------------------------------------------------------------------------------------------------

/// Task keys: (name, trust domain, algorithm). `files` is the certificate key of the service
/// `spiffe://example.org/svc/files` (the verifier of most cases, and a server in proof cases).
const AGENTS: &[(&str, &str, Algorithm)] = &[
    ("planner", TD, Algorithm::Es256),
    ("researcher", TD, Algorithm::Ed25519),
    ("coder", TD, Algorithm::Es256),
    ("reviewer", TD, Algorithm::Ed25519),
    ("tester", TD, Algorithm::Es256),
    ("deployer", TD, Algorithm::Ed25519),
    ("auditor", TD, Algorithm::Es256),
    ("writer", TD, Algorithm::Ed25519),
    ("summarizer", TD, Algorithm::Es256),
    ("mallory", TD, Algorithm::Ed25519),
    ("broker", PTD, Algorithm::Es256),
    ("files", TD, Algorithm::Es256),
];

/// Authority keys: (name, use, algorithm).
const AUTHORITIES: &[(&str, &str, Algorithm)] = &[
    ("example.org/grant-es256", "agentid-grant", Algorithm::Es256),
    (
        "example.org/grant-ed25519",
        "agentid-grant",
        Algorithm::Ed25519,
    ),
    (
        "example.org/revocation",
        "agentid-revocation",
        Algorithm::Ed25519,
    ),
    (
        "example.org/revocation-next",
        "agentid-revocation (in bundle updates only)",
        Algorithm::Ed25519,
    ),
    ("partner.example/grant", "agentid-grant", Algorithm::Ed25519),
    (
        "partner.example/revocation",
        "agentid-revocation",
        Algorithm::Ed25519,
    ),
    (
        "untrusted/grant",
        "agentid-grant (in no bundle)",
        Algorithm::Es256,
    ),
];

struct Keys {
    auth: BTreeMap<String, AuthorityKey>,
    task: BTreeMap<String, TaskKey>,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

/// The private scalar of a PKCS#8 document (P-256: the ECPrivateKey octet string; Ed25519: the
/// seed), for the private JWKs published next to the PKCS#8 documents.
fn private_d(pkcs8: &[u8], alg: Algorithm) -> String {
    let pattern: &[u8] = match alg {
        Algorithm::Es256 => &[0x02, 0x01, 0x01, 0x04, 0x20],
        Algorithm::Ed25519 => &[0x04, 0x22, 0x04, 0x20],
    };
    let at = pkcs8
        .windows(pattern.len())
        .position(|w| w == pattern)
        .expect("PKCS#8 layout")
        + pattern.len();
    b64(&pkcs8[at..at + 32])
}

fn key_entry(pkcs8: &[u8], public: &PublicKey, usage: &str) -> Value {
    let mut private = public.to_jwk();
    private["d"] = Value::from(private_d(pkcs8, public.algorithm()));
    json!({
        "use": usage,
        "alg": public.algorithm().as_str(),
        "pkcs8": b64(pkcs8),
        "jwk": public.to_jwk(),
        "thumbprint": public.thumbprint(),
        "private_jwk": private,
    })
}

fn load_or_create_keys(dir: &Path) -> Keys {
    let path = dir.join("keys.json");
    let stored: Option<Value> = std::fs::read(&path)
        .ok()
        .map(|b| serde_json::from_slice(&b).expect("keys.json"));
    let pkcs8 = |name: &str| -> Option<Vec<u8>> {
        stored
            .as_ref()
            .and_then(|v| v["keys"][name]["pkcs8"].as_str())
            .map(unb64)
    };
    let mut keys = Keys {
        auth: BTreeMap::new(),
        task: BTreeMap::new(),
    };
    let mut out = Map::new();
    for (name, usage, alg) in AUTHORITIES {
        let k = match pkcs8(name) {
            Some(der) => AuthorityKey::from_pkcs8_der(&der).unwrap(),
            None => AuthorityKey::generate(*alg).unwrap(),
        };
        assert_eq!(k.public_key().algorithm(), *alg, "{name}");
        out.insert(
            (*name).to_owned(),
            key_entry(k.pkcs8_der(), k.public_key(), usage),
        );
        keys.auth.insert((*name).to_owned(), k);
    }
    for (name, _, alg) in AGENTS {
        let key_name = format!("task/{name}");
        let k = match pkcs8(&key_name) {
            Some(der) => TaskKey::from_pkcs8_der(&der).unwrap(),
            None => TaskKey::generate(*alg).unwrap(),
        };
        assert_eq!(k.algorithm(), *alg, "{name}");
        let usage = format!("task key of {}", id(name));
        out.insert(
            key_name,
            key_entry(k.danger_pkcs8_der(), k.public_key(), &usage),
        );
        keys.task.insert((*name).to_owned(), k);
    }
    let doc = json!({
        "description": "The published agentid TEST keys used by every vector file (never use them for anything else). \
            Each key: `pkcs8` (base64url of the PKCS#8 DER private key), `jwk` (public JWK), `private_jwk` (with `d`), \
            `thumbprint` (RFC 7638). Authority keys are named <trust domain>/<use>; `untrusted/grant` is in no bundle. \
            Task keys are named task/<agent>; the task identity of agent A is spiffe://<td>/agent/A/task/kq7xm3vzb4df6hjn5p2rstuw5a, \
            and task/files is the certificate key of spiffe://example.org/svc/files.",
        "keys": out,
        "cases": [],
    });
    write_json(&path, &doc);
    keys
}

impl Keys {
    fn a(&self, name: &str) -> &AuthorityKey {
        &self.auth[name]
    }
    fn ges(&self) -> &AuthorityKey {
        self.a("example.org/grant-es256")
    }
    fn ged(&self) -> &AuthorityKey {
        self.a("example.org/grant-ed25519")
    }
    fn rev(&self) -> &AuthorityKey {
        self.a("example.org/revocation")
    }
    fn rev_next(&self) -> &AuthorityKey {
        self.a("example.org/revocation-next")
    }
    fn pgrant(&self) -> &AuthorityKey {
        self.a("partner.example/grant")
    }
    fn prev(&self) -> &AuthorityKey {
        self.a("partner.example/revocation")
    }
    fn rogue(&self) -> &AuthorityKey {
        self.a("untrusted/grant")
    }
    fn t(&self, name: &str) -> &TaskKey {
        &self.task[name]
    }
    fn jwk(&self, name: &str) -> Value {
        self.t(name).public_key().to_jwk()
    }
    fn thumb(&self, name: &str) -> String {
        self.t(name).public_key().thumbprint()
    }
}

/// The task identity (or, for `files`, the service ID) of a named holder.
fn id(name: &str) -> String {
    match name {
        "files" => VERIFIER.to_owned(),
        "broker" => format!("spiffe://{PTD}/agent/broker/task/{TASK}"),
        _ => format!("spiffe://{TD}/agent/{name}/task/{TASK}"),
    }
}

fn agent(name: &str) -> String {
    format!("spiffe://{TD}/agent/{name}")
}

// ------------------------------------------------------------------------------------------------
// Tokens
// ------------------------------------------------------------------------------------------------

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn grant_header(k: &AuthorityKey) -> Value {
    json!({"alg": k.algorithm().as_str(), "typ": "agentid-grant+jwt", "kid": k.public_key().thumbprint()})
}

fn link_header(k: &TaskKey) -> Value {
    json!({"alg": k.algorithm().as_str(), "typ": "agentid-link+jwt"})
}

fn proof_header(k: &TaskKey) -> Value {
    json!({"alg": k.algorithm().as_str(), "typ": "agentid-proof+jwt"})
}

fn sign_a(k: &AuthorityKey, header: &Value, claims: &Value) -> String {
    sign_with_authority_key(k, &to_vec(header), &to_vec(claims)).unwrap()
}

fn sign_t(k: &TaskKey, header: &Value, claims: &Value) -> String {
    sign_with_task_key(k, &to_vec(header), &to_vec(claims)).unwrap()
}

/// A token from already-encoded parts, signed over exactly `header_b64.payload_b64`.
fn sign_parts(k: &AuthorityKey, header_b64: &str, payload_b64: &str) -> String {
    let input = format!("{header_b64}.{payload_b64}");
    let sig = k.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", b64(&sig))
}

fn payload_of(token: &str) -> Value {
    serde_json::from_slice(&unb64(token.split('.').nth(1).unwrap())).unwrap()
}

fn prev_hash(token: &str) -> String {
    b64(&sha256(token.as_bytes()))
}

fn grant_claims(k: &Keys, holder: &str, scope: &str) -> Value {
    json!({
        "ver": 1, "iss": TD_ID, "sub": id(holder), "cnf": {"jwk": k.jwk(holder)}, "task": TASK,
        "scope": scope, "mode": "autonomous", "max_depth": 8,
        "iat": G_IAT, "nbf": G_IAT, "exp": G_EXP, "jti": format!("g-{holder}"),
    })
}

fn link_claims(k: &Keys, prev: &str, from: &str, to: &str, scope: &str) -> Value {
    let prev_depth = payload_of(prev)["max_depth"].as_u64().unwrap_or(1);
    json!({
        "ver": 1, "iss": id(from), "sub": id(to), "cnf": {"jwk": k.jwk(to)}, "prev": prev_hash(prev),
        "task": TASK, "scope": scope, "max_depth": prev_depth.saturating_sub(1),
        "iat": L_IAT, "nbf": L_IAT, "exp": L_EXP, "jti": format!("l-{to}"),
    })
}

/// A chain under construction: its tokens and the holder names.
#[derive(Clone)]
struct Ch {
    tokens: Vec<String>,
    holders: Vec<String>,
}

impl Ch {
    /// A grant of example.org (ES256 grant key) to `holder`, claims adjusted by `f`.
    fn grant(k: &Keys, holder: &str, scope: &str, f: impl FnOnce(&mut Value)) -> Self {
        Self::grant_by(k.ges(), k, holder, scope, f)
    }

    fn grant_by(
        signer: &AuthorityKey,
        k: &Keys,
        holder: &str,
        scope: &str,
        f: impl FnOnce(&mut Value),
    ) -> Self {
        let mut c = grant_claims(k, holder, scope);
        f(&mut c);
        Self::raw(sign_a(signer, &grant_header(signer), &c), holder)
    }

    fn raw(token: String, holder: &str) -> Self {
        Self {
            tokens: vec![token],
            holders: vec![holder.to_owned()],
        }
    }

    fn last(&self) -> &str {
        self.tokens.last().unwrap()
    }

    fn holder(&self) -> &str {
        self.holders.last().unwrap()
    }

    /// A link from the current holder to `to`, signed with the current holder's key.
    fn link(&self, k: &Keys, to: &str, scope: &str, f: impl FnOnce(&mut Value)) -> Self {
        let from = self.holder().to_owned();
        self.link_signed(k, k.t(&from), &link_header(k.t(&from)), to, scope, f)
    }

    fn link_signed(
        &self,
        k: &Keys,
        key: &TaskKey,
        header: &Value,
        to: &str,
        scope: &str,
        f: impl FnOnce(&mut Value),
    ) -> Self {
        let mut c = link_claims(k, self.last(), self.holder(), to, scope);
        f(&mut c);
        self.push(sign_t(key, header, &c), to)
    }

    fn push(&self, token: String, holder: &str) -> Self {
        let mut n = self.clone();
        n.tokens.push(token);
        n.holders.push(holder.to_owned());
        n
    }

    fn s(&self) -> String {
        self.tokens.join("~")
    }
}

/// planner (ES256) -> researcher (Ed25519) -> coder (ES256), grant scope `files:* tickets:*`.
fn base3(k: &Keys) -> Ch {
    Ch::grant(k, "planner", "files:* tickets:*", |_| {})
        .link(
            k,
            "researcher",
            "files:read files:write tickets:read",
            |_| {},
        )
        .link(k, "coder", "files:read", |_| {})
}

/// planner -> researcher, grant scope `files:*`.
fn base2(k: &Keys) -> Ch {
    Ch::grant(k, "planner", "files:*", |_| {}).link(k, "researcher", "files:read", |_| {})
}

// ------------------------------------------------------------------------------------------------
// Inputs and expectations
// ------------------------------------------------------------------------------------------------

fn bundle_value(b: &TrustBundle) -> Value {
    serde_json::from_str(&b.to_json()).unwrap()
}

fn td(s: &str) -> TrustDomain {
    TrustDomain::parse(s).unwrap()
}

fn bundle_ex(k: &Keys) -> Value {
    bundle_value(
        &TrustBundle::new(td(TD), 1)
            .with_refresh_hint(300)
            .add_grant_key(k.ges().public_key().clone())
            .add_grant_key(k.ged().public_key().clone())
            .add_revocation_key(k.rev().public_key().clone()),
    )
}

fn bundle_partner(k: &Keys) -> Value {
    bundle_value(
        &TrustBundle::new(td(PTD), 1)
            .with_refresh_hint(300)
            .add_grant_key(k.pgrant().public_key().clone())
            .add_revocation_key(k.prev().public_key().clone()),
    )
}

/// A fresh list of example.org (sequence `seq`), with entries added by `f`.
fn list_ex(
    k: &Keys,
    seq: u64,
    f: impl FnOnce(RevocationListBuilder) -> RevocationListBuilder,
) -> String {
    f(RevocationListBuilder::new(
        &td(TD),
        seq,
        NOW - 60,
        NOW + 540,
    ))
    .sign(k.rev())
    .unwrap()
}

fn list_partner(k: &Keys) -> String {
    RevocationListBuilder::new(&td(PTD), 1, NOW - 60, NOW + 540)
        .sign(k.prev())
        .unwrap()
}

/// The default input: example.org's bundle and an empty fresh list, `now` = NOW, skew 60, the
/// verifier `spiffe://example.org/svc/files`, the named peer with its own key.
fn input(k: &Keys, chain: Option<&Ch>, peer: &str) -> Value {
    json!({
        "chain": chain.map(Ch::s),
        "bundles": { TD: bundle_ex(k) },
        "revocation_lists": [list_ex(k, 1, |b| b)],
        "now": NOW,
        "skew": 60,
        "peer": { "id": id(peer), "jwk": k.jwk(peer) },
        "verifier_id": VERIFIER,
        "requested_scope": null,
        "authority_policy": null,
        "enforced_limits": [],
    })
}

/// The default input for a chain whose last holder is the peer.
fn cin(k: &Keys, ch: &Ch) -> Value {
    input(k, Some(ch), ch.holder())
}

/// Adds partner.example's bundle and list.
fn with_partner(k: &Keys, mut inp: Value) -> Value {
    inp["bundles"][PTD] = bundle_partner(k);
    inp["revocation_lists"]
        .as_array_mut()
        .unwrap()
        .push(Value::from(list_partner(k)));
    inp
}

fn err(code: &str, index: Option<usize>) -> Value {
    assert!(ErrorCode::from_code(code).is_some(), "unknown code {code}");
    json!({"valid": false, "error": code, "index": index})
}

/// A success written out member by member (spec/PROTOCOL.md section 11): example.org authority,
/// autonomous, no principal, no limits unless changed by the caller. `holders` are the actor
/// names in chain order; only the first and the last are attested (version 1).
fn ok(
    holders: &[&str],
    scope: &str,
    audience: &[&str],
    nbf: u64,
    exp: u64,
    grant_jti: &str,
) -> Value {
    let last = holders.len() - 1;
    let actors: Vec<Value> = holders
        .iter()
        .enumerate()
        .map(|(i, h)| json!({"id": id(h), "attested": i == 0 || i == last}))
        .collect();
    json!({
        "valid": true, "authority": TD_ID, "mode": "autonomous", "principal": null,
        "holder": id(holders[last]), "task": TASK, "scope": scope, "audience": audience,
        "limits": {}, "not_before": nbf, "expires": exp, "depth": last, "grant_jti": grant_jti,
        "actors": actors,
    })
}

struct Case {
    id: String,
    description: String,
    input: Value,
    expected: Value,
}

#[derive(Default)]
struct File {
    cases: Vec<Case>,
}

impl File {
    fn add(&mut self, id: &str, description: &str, input: Value, expected: Value) {
        self.cases.push(Case {
            id: id.to_owned(),
            description: description.to_owned(),
            input,
            expected,
        });
    }
}

fn write_json(path: &Path, v: &Value) {
    let mut s = serde_json::to_string_pretty(v).unwrap();
    s.push('\n');
    std::fs::write(path, s).unwrap();
}

// ------------------------------------------------------------------------------------------------
// valid.json
// ------------------------------------------------------------------------------------------------

fn valid(k: &Keys) -> File {
    let mut f = File::default();
    let td_aud = [TD_ID];

    let ch = Ch::grant(k, "planner", "files:read files:write", |_| {});
    f.add(
        "valid-depth0-es256",
        "A bare grant (depth 0) signed with an ES256 authority key to an ES256 holder.",
        cin(k, &ch),
        ok(
            &["planner"],
            "files:read files:write",
            &td_aud,
            G_IAT,
            G_EXP,
            "g-planner",
        ),
    );

    let ch = Ch::grant_by(k.ged(), k, "researcher", "files:read", |_| {});
    f.add(
        "valid-depth0-ed25519",
        "A bare grant signed with an Ed25519 authority key (`alg: Ed25519`) to an Ed25519 holder.",
        cin(k, &ch),
        ok(
            &["researcher"],
            "files:read",
            &td_aud,
            G_IAT,
            G_EXP,
            "g-researcher",
        ),
    );

    let mut h = grant_header(k.ged());
    h["alg"] = json!("EdDSA");
    let ch = Ch::raw(
        sign_a(k.ged(), &h, &grant_claims(k, "researcher", "files:read")),
        "researcher",
    );
    f.add(
        "valid-alg-eddsa",
        "`alg: EdDSA` is accepted with an Ed25519 key.",
        cin(k, &ch),
        ok(
            &["researcher"],
            "files:read",
            &td_aud,
            G_IAT,
            G_EXP,
            "g-researcher",
        ),
    );

    let mut gh = grant_header(k.ges());
    gh["typ"] = json!("Application/AGENTID-GRANT+JWT");
    let g = Ch::raw(
        sign_a(k.ges(), &gh, &grant_claims(k, "planner", "files:*")),
        "planner",
    );
    let mut lh = link_header(k.t("planner"));
    lh["typ"] = json!("application/agentid-link+jwt");
    let ch = g.link_signed(k, k.t("planner"), &lh, "researcher", "files:read", |_| {});
    f.add(
        "valid-typ-case-insensitive",
        "`typ` is compared case-insensitively after removing one leading `application/`.",
        cin(k, &ch),
        ok(
            &["planner", "researcher"],
            "files:read",
            &td_aud,
            L_IAT,
            L_EXP,
            "g-planner",
        ),
    );

    let principal = json!({"format": "email", "email": "alice@example.com"});
    let p2 = principal.clone();
    let ch = Ch::grant(k, "planner", "files:* tickets:read", |c| {
        c["aud"] = json!([VERIFIER, OTHER_SVC]);
        c["mode"] = json!("on_behalf_of");
        c["principal"] = p2;
        c["limits"] = json!({"max_calls": 100, "max_bytes": 1_000_000});
        c["may_delegate_to"] = json!([agent("researcher")]);
    })
    .link(k, "researcher", "files:read", |c| {
        c["limits"] = json!({"max_calls": 10})
    });
    let mut inp = cin(k, &ch);
    inp["enforced_limits"] = json!(["max_bytes", "max_calls"]);
    let mut e = ok(
        &["planner", "researcher"],
        "files:read",
        &[VERIFIER, OTHER_SVC],
        L_IAT,
        L_EXP,
        "g-planner",
    );
    e["mode"] = json!("on_behalf_of");
    e["principal"] = principal;
    e["limits"] = json!({"max_bytes": 1_000_000, "max_calls": 10});
    f.add("valid-depth1-mixed-keys-all-claims",
        "ES256 grant holder delegates to an Ed25519 holder; the grant has aud, on_behalf_of with principal, limits and may_delegate_to; the link lowers one limit and inherits the rest.",
        inp, e);

    // Depth 2 with the typed builders.
    let t = |n: &str| TaskIdentity::parse(&id(n)).unwrap();
    let sc = |s: &str| Scope::parse(s).unwrap();
    let g = GrantBuilder::new(
        &td(TD),
        &t("planner"),
        k.t("planner").public_key(),
        sc("repo:*"),
    )
    .max_depth(2)
    .validity(G_IAT, G_IAT, G_EXP)
    .jti("g-typed")
    .sign(k.ges())
    .unwrap();
    let l1 = LinkBuilder::new(
        &g,
        &t("coder"),
        k.t("coder").public_key(),
        sc("repo:read repo:write"),
    )
    .validity(L_IAT, L_IAT, L_EXP)
    .jti("l-typed-1")
    .sign(k.t("planner"))
    .unwrap();
    let l2 = LinkBuilder::new(
        &l1,
        &t("tester"),
        k.t("tester").public_key(),
        sc("repo:read"),
    )
    .validity(L_IAT, L_IAT, L_EXP)
    .jti("l-typed-2")
    .sign(k.t("coder"))
    .unwrap();
    let mut inp = input(k, None, "tester");
    inp["chain"] = json!(l2.as_str());
    f.add(
        "valid-depth2-es256-typed-builders",
        "A depth-2 ES256 chain made by the typed builders (GrantBuilder, LinkBuilder).",
        inp,
        ok(
            &["planner", "coder", "tester"],
            "repo:read",
            &td_aud,
            L_IAT,
            L_EXP,
            "g-typed",
        ),
    );

    let ch = Ch::grant_by(k.ged(), k, "researcher", "files:*", |_| {})
        .link(k, "reviewer", "files:read files:write", |_| {})
        .link(k, "deployer", "files:write", |_| {});
    f.add(
        "valid-depth2-ed25519",
        "A depth-2 chain of Ed25519 keys only (authority and holders).",
        cin(k, &ch),
        ok(
            &["researcher", "reviewer", "deployer"],
            "files:write",
            &td_aud,
            L_IAT,
            L_EXP,
            "g-researcher",
        ),
    );

    let ch = depth8(k);
    f.add("valid-depth8", "The deepest chain: 8 links (9 holders alternating ES256 and Ed25519), narrowing at every step; only the first and last actors are attested.",
        cin(k, &ch),
        ok(&["planner", "researcher", "coder", "reviewer", "tester", "deployer", "auditor", "writer", "summarizer"],
            "files:read", &td_aud, L_IAT, L_EXP, "g-planner"));

    let ch = Ch::grant(k, "planner", "files:*", |c| {
        c["limits"] = json!({"max_calls": 50});
    })
    .link(k, "researcher", "files:read", |c| {
        c["aud"] = json!([VERIFIER]);
        c["limits"] = json!({"max_calls": 20, "max_bytes": 500});
    });
    let mut inp = cin(k, &ch);
    inp["enforced_limits"] = json!(["max_bytes", "max_calls"]);
    let mut e = ok(
        &["planner", "researcher"],
        "files:read",
        &[VERIFIER],
        L_IAT,
        L_EXP,
        "g-planner",
    );
    e["limits"] = json!({"max_bytes": 500, "max_calls": 20});
    f.add("valid-link-narrows-aud-adds-limit", "A link narrows aud to the verifier, lowers one ceiling and adds a new one; effective limits are the name-wise minimum.", inp, e);

    let ch = Ch::grant(k, "planner", "files:read", |c| {
        c["may_delegate_to"] = json!([agent("researcher")])
    });
    f.add(
        "valid-own-sub-not-constrained-by-own-list",
        "A grant's own `sub` is not constrained by its own `may_delegate_to`.",
        cin(k, &ch),
        ok(
            &["planner"],
            "files:read",
            &td_aud,
            G_IAT,
            G_EXP,
            "g-planner",
        ),
    );

    let ch = Ch::grant(k, "planner", "files:*", |c| {
        c["aud"] = json!([VERIFIER]);
        c["may_delegate_to"] = json!([TD_ID, PTD_ID]);
    })
    .link(k, "broker", "files:read", |_| {});
    f.add("valid-cross-domain-delegatee",
        "A grant that allows delegation to partner.example; its agent holds the chain, and both domains' revocation lists are present.",
        with_partner(k, cin(k, &ch)), ok(&["planner", "broker"], "files:read", &[VERIFIER], L_IAT, L_EXP, "g-planner"));

    let ch = Ch::grant_by(k.pgrant(), k, "broker", "tickets:read tickets:write", |c| {
        c["iss"] = json!(PTD_ID);
        c["aud"] = json!([VERIFIER]);
    });
    let mut inp = with_partner(k, cin(k, &ch));
    inp["authority_policy"] = json!({TD: "*", PTD: "tickets:*"});
    inp["requested_scope"] = json!("tickets:read");
    let mut e = ok(
        &["broker"],
        "tickets:read tickets:write",
        &[VERIFIER],
        G_IAT,
        G_EXP,
        "g-broker",
    );
    e["authority"] = json!(PTD_ID);
    f.add("valid-federated-authority-accepted",
        "partner.example's authority is accepted by policy for `tickets:*`; a grant of it authorizes `tickets:read` here.", inp, e);

    let ch = Ch::grant(k, "planner", "files:*", |_| {})
        .link_signed(
            k,
            k.t("planner"),
            &link_header(k.t("planner")),
            "researcher",
            "files:read",
            |c| {
                c["cnf"] = json!({"jwk": k.jwk("mallory")});
            },
        )
        .link_signed(
            k,
            k.t("mallory"),
            &link_header(k.t("mallory")),
            "coder",
            "files:read",
            |_| {},
        );
    f.add("valid-unattested-intermediate",
        "A delegator may name any intermediate with any key (here researcher's name with mallory's key): the chain verifies but that actor is not attested.",
        cin(k, &ch), ok(&["planner", "researcher", "coder"], "files:read", &td_aud, L_IAT, L_EXP, "g-planner"));

    f.add(
        "valid-peer-without-chain",
        "A peer without a chain passes the revocation checks of its trust domain.",
        input(k, None, "coder"),
        json!({"valid": true}),
    );
    f
}

fn depth8(k: &Keys) -> Ch {
    let names = [
        "researcher",
        "coder",
        "reviewer",
        "tester",
        "deployer",
        "auditor",
        "writer",
        "summarizer",
    ];
    let scopes = [
        "files:* tickets:read",
        "files:*",
        "files:read files:write",
        "files:read",
        "files:read",
        "files:read",
        "files:read",
        "files:read",
    ];
    let mut ch = Ch::grant(k, "planner", "files:* tickets:*", |_| {});
    for (n, s) in names.iter().zip(scopes) {
        ch = ch.link(k, n, s, |_| {});
    }
    ch
}

// ------------------------------------------------------------------------------------------------
// framing.json
// ------------------------------------------------------------------------------------------------

fn framing(k: &Keys) -> File {
    let mut f = File::default();
    let g = Ch::grant(k, "planner", "files:read", |_| {});
    let with_chain = |s: String| {
        let mut i = cin(k, &g);
        i["chain"] = json!(s);
        i
    };
    f.add(
        "framing-empty-chain",
        "An empty chain string has one empty part.",
        with_chain(String::new()),
        err("malformed", Some(0)),
    );
    f.add(
        "framing-trailing-tilde",
        "A trailing `~` (SD-JWT style) leaves an empty part 1.",
        with_chain(format!("{}~", g.s())),
        err("malformed", Some(1)),
    );
    f.add(
        "framing-leading-tilde",
        "A leading `~` leaves an empty part 0.",
        with_chain(format!("~{}", g.s())),
        err("malformed", Some(0)),
    );
    let parts: Vec<&str> = g.last().split('.').collect();
    f.add(
        "framing-two-parts",
        "A token with no signature part.",
        with_chain(format!("{}.{}", parts[0], parts[1])),
        err("malformed", Some(0)),
    );
    f.add(
        "framing-four-parts",
        "A token with four parts.",
        with_chain(format!("{}.AAAA", g.s())),
        err("malformed", Some(0)),
    );
    f.add(
        "framing-empty-signature",
        "A token whose signature part is empty (as `alg: none` tokens are sent).",
        with_chain(format!("{}.{}.", parts[0], parts[1])),
        err("malformed", Some(0)),
    );

    let d8 = depth8(k);
    let d9 = d8.link(k, "mallory", "files:read", |c| c["max_depth"] = json!(0));
    f.add(
        "framing-depth9",
        "Ten tokens (depth 9), each properly signed: refused at framing, whatever max_depth says.",
        cin(k, &d9),
        err("depth_exceeded", None),
    );
    let mut inp = cin(k, &d9);
    inp["chain"] = json!(format!("{}~", d9.s()));
    f.add(
        "framing-empty-part-before-depth",
        "The ten tokens of framing-depth9 and a trailing `~`: an empty part (1.2, index 10) is found before the token count (1.3).",
        inp,
        err("malformed", Some(10)),
    );

    let big: Vec<String> = (0..45)
        .map(|i| {
            format!(
                "r{i:02}:{}:{}:{}",
                "a".repeat(60),
                "b".repeat(60),
                "c".repeat(60)
            )
        })
        .collect();
    let g_big = Ch::grant(k, "planner", &big.join(" "), |_| {});
    assert!(g_big.last().len() > 8192);
    f.add(
        "framing-token-too-large",
        "A properly signed grant of more than 8192 bytes (a huge scope).",
        cin(k, &g_big),
        err("token_too_large", Some(0)),
    );

    f.add(
        "framing-chain-too-large",
        "A chain string over 65536 bytes is refused before it is split.",
        with_chain(format!("{}~{}", g.s(), "A".repeat(65536))),
        err("chain_too_large", None),
    );

    // Custom base64url: signed over exactly the transmitted (bad) parts.
    let h_b64 = b64(&to_vec(&grant_header(k.ges())));
    let mut claims = grant_claims(k, "planner", "files:read");
    let mut p_b64 = b64(&to_vec(&claims));
    let mut n = 0;
    while p_b64.len().is_multiple_of(4) {
        n += 1;
        claims["jti"] = json!(format!("g-planner-{n}"));
        p_b64 = b64(&to_vec(&claims));
    }
    let mut padded = p_b64.clone();
    while !padded.len().is_multiple_of(4) {
        padded.push('=');
    }
    f.add(
        "framing-padded-payload",
        "The payload part carries `=` padding (signed over the padded bytes).",
        with_chain(sign_parts(k.ges(), &h_b64, &padded)),
        err("bad_base64", Some(0)),
    );
    let mut spaced = p_b64.clone();
    spaced.insert(40, '\n');
    f.add(
        "framing-whitespace-in-payload",
        "The payload part contains a line break (signed over those bytes).",
        with_chain(sign_parts(k.ges(), &h_b64, &spaced)),
        err("bad_base64", Some(0)),
    );
    let mut std_alpha = h_b64.clone();
    std_alpha.push_str("+/");
    // A header part in the standard (not URL-safe) alphabet.
    f.add(
        "framing-standard-alphabet",
        "A header part using the standard base64 alphabet (`+`, `/`).",
        with_chain(sign_parts(k.ges(), &std_alpha, &p_b64)),
        err("bad_base64", Some(0)),
    );
    // Non-canonical trailing bits in the signature (64 bytes: the last character carries 4 unused bits).
    let tok = g.last().to_owned();
    let (body, sig) = tok.rsplit_once('.').unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = sig.chars().last().unwrap();
    let idx = alphabet.find(last).unwrap();
    let bad_last = alphabet.chars().nth(idx | 1).unwrap();
    let noncanon = format!("{body}.{}{bad_last}", &sig[..sig.len() - 1]);
    f.add("framing-noncanonical-trailing-bits", "The signature part has non-zero unused trailing bits (decodes to the same bytes leniently).",
        with_chain(noncanon), err("bad_base64", Some(0)));
    let ch = base2(k);
    let padded_link = format!("{}~{}==", ch.tokens[0], ch.tokens[1]);
    let mut inp = cin(k, &ch);
    inp["chain"] = json!(padded_link);
    f.add(
        "framing-padded-link-signature",
        "The link's signature part is padded with `==`.",
        inp,
        err("bad_base64", Some(1)),
    );
    // Review addition (PROTOCOL.md section 3.1): a length L with L mod 4 = 1 never decodes. The
    // payload part is a multiple of 4 characters plus one `A`, which a lenient decoder drops
    // (giving the intended claims); the token is signed over exactly these bytes.
    let mut claims = grant_claims(k, "planner", "files:read");
    let mut n = 0;
    while !to_vec(&claims).len().is_multiple_of(3) {
        n += 1;
        claims["jti"] = json!(format!("g-planner{}", "x".repeat(n)));
    }
    let payload = format!("{}A", b64(&to_vec(&claims)));
    assert_eq!(payload.len() % 4, 1);
    let tok = sign_parts(k.ges(), &b64(&to_vec(&grant_header(k.ges()))), &payload);
    f.add(
        "framing-length-mod4-1",
        "The payload part has a length L with L mod 4 = 1 (a valid part plus one `A`); the token is signed over the transmitted bytes.",
        cin(k, &Ch::raw(tok, "planner")),
        err("bad_base64", Some(0)),
    );
    f
}

// ------------------------------------------------------------------------------------------------
// headers.json
// ------------------------------------------------------------------------------------------------

fn grant_with_header(k: &Keys, header: &Value) -> Ch {
    Ch::raw(
        sign_a(k.ges(), header, &grant_claims(k, "planner", "files:read")),
        "planner",
    )
}

fn headers(k: &Keys) -> File {
    let mut f = File::default();
    let gh = grant_header(k.ges());
    let mut hdr_case = |id: &str, desc: &str, change: &dyn Fn(&mut Value), code: &str| {
        let mut h = gh.clone();
        change(&mut h);
        let ch = grant_with_header(k, &h);
        f.add(id, desc, cin(k, &ch), err(code, Some(0)));
    };
    hdr_case(
        "header-alg-none",
        "`alg: none` (with a real signature part).",
        &|h| h["alg"] = json!("none"),
        "unsupported_alg",
    );
    hdr_case(
        "header-alg-rs256",
        "`alg: RS256`.",
        &|h| h["alg"] = json!("RS256"),
        "unsupported_alg",
    );
    hdr_case(
        "header-alg-lowercase",
        "`alg: es256`: algorithm names are case-sensitive.",
        &|h| h["alg"] = json!("es256"),
        "unsupported_alg",
    );
    hdr_case(
        "header-alg-missing",
        "No `alg`.",
        &|h| {
            h.as_object_mut().unwrap().remove("alg");
        },
        "unsupported_alg",
    );
    hdr_case(
        "header-typ-missing",
        "No `typ`.",
        &|h| {
            h.as_object_mut().unwrap().remove("typ");
        },
        "bad_typ",
    );
    hdr_case(
        "header-typ-jwt",
        "`typ: JWT` where a grant is expected.",
        &|h| h["typ"] = json!("JWT"),
        "bad_typ",
    );
    hdr_case(
        "header-typ-double-prefix",
        "`application/application/agentid-grant+jwt` does not match.",
        &|h| h["typ"] = json!("application/application/agentid-grant+jwt"),
        "bad_typ",
    );
    let rogue_jwk = k.rogue().public_key().to_jwk();
    hdr_case(
        "header-jwk",
        "A `jwk` header member (a key taken from the token itself) is forbidden.",
        &|h| h["jwk"] = rogue_jwk.clone(),
        "bad_header",
    );
    hdr_case(
        "header-crit",
        "A `crit` header member is forbidden.",
        &|h| h["crit"] = json!(["exp"]),
        "bad_header",
    );
    hdr_case(
        "header-jku",
        "A `jku` header member is forbidden.",
        &|h| h["jku"] = json!("https://attacker.example/keys"),
        "bad_header",
    );
    hdr_case(
        "header-grant-without-kid",
        "A grant header without `kid`.",
        &|h| {
            h.as_object_mut().unwrap().remove("kid");
        },
        "bad_header",
    );
    hdr_case(
        "header-kid-empty",
        "A grant header with an empty `kid`.",
        &|h| h["kid"] = json!(""),
        "bad_header",
    );

    // HS256 keyed with the authority's public key (the classic confusion attack).
    let claims = grant_claims(k, "planner", "files:read");
    let mut h = gh.clone();
    h["alg"] = json!("HS256");
    let input = format!("{}.{}", b64(&to_vec(&h)), b64(&to_vec(&claims)));
    let mac_key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        k.ges().public_key().raw_bytes(),
    );
    let tag = aws_lc_rs::hmac::sign(&mac_key, input.as_bytes());
    let ch = Ch::raw(format!("{input}.{}", b64(tag.as_ref())), "planner");
    f.add(
        "header-alg-hs256",
        "`alg: HS256` with an HMAC keyed by the authority's public key bytes.",
        cin(k, &ch),
        err("unsupported_alg", Some(0)),
    );

    let dup = format!(
        r#"{{"alg":"ES256","typ":"agentid-grant+jwt","kid":"{}","alg":"none"}}"#,
        k.ges().public_key().thumbprint()
    );
    let ch = Ch::raw(
        sign_with_authority_key(k.ges(), dup.as_bytes(), &to_vec(&claims)).unwrap(),
        "planner",
    );
    f.add(
        "header-duplicate-member",
        "A header with `alg` twice.",
        cin(k, &ch),
        err("bad_header", Some(0)),
    );
    let ch = Ch::raw(
        sign_with_authority_key(k.ges(), br#"["ES256"]"#, &to_vec(&claims)).unwrap(),
        "planner",
    );
    f.add(
        "header-not-object",
        "A header that is a JSON array.",
        cin(k, &ch),
        err("bad_header", Some(0)),
    );

    // Link headers.
    let g = Ch::grant(k, "planner", "files:*", |_| {});
    let mut lh = link_header(k.t("planner"));
    lh["x5c"] = json!(["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]);
    let ch = g.link_signed(k, k.t("planner"), &lh, "researcher", "files:read", |_| {});
    f.add(
        "header-x5c-in-link",
        "An `x5c` header member in a link.",
        cin(k, &ch),
        err("bad_header", Some(1)),
    );
    let mut lh = link_header(k.t("planner"));
    lh["kid"] = json!(k.thumb("planner"));
    let ch = g.link_signed(k, k.t("planner"), &lh, "researcher", "files:read", |_| {});
    f.add(
        "header-kid-in-link",
        "A `kid` header member in a link (link keys come from the previous `cnf`).",
        cin(k, &ch),
        err("bad_header", Some(1)),
    );

    // typ confusion.
    let other = Ch::grant_by(k.ged(), k, "researcher", "files:read", |_| {});
    let ch = g.push(other.last().to_owned(), "researcher");
    f.add(
        "typ-grant-as-link",
        "A (validly signed) grant presented in a link position.",
        cin(k, &ch),
        err("bad_typ", Some(1)),
    );
    let proof = sign_t(
        k.t("planner"),
        &proof_header(k.t("planner")),
        &json!({
            "sub": id("planner"), "aud": VERIFIER, "iat": NOW - 5, "exp": NOW + 25,
            "jti": b64(&[7u8; 16]), "cb": b64(&sha256(b"agentid vector exporter client")),
        }),
    );
    let ch = Ch::raw(proof, "planner");
    f.add(
        "typ-proof-as-grant",
        "A hop proof presented as the grant.",
        cin(k, &ch),
        err("bad_typ", Some(0)),
    );
    let link_only = Ch::raw(base2(k).tokens[1].clone(), "researcher");
    f.add(
        "typ-link-as-grant",
        "A link presented alone, in the grant position.",
        cin(k, &link_only),
        err("bad_typ", Some(0)),
    );

    // Phase order: phase 2 runs over every token before any signature is checked.
    let tampered = base2(k);
    let t0 = tampered.tokens[0].clone();
    let (body, _) = t0.rsplit_once('.').unwrap();
    let broken = format!("{body}.{}", b64(&[0u8; 64]));
    let mut lh = link_header(k.t("planner"));
    lh["typ"] = json!("agentid-proof+jwt");
    let bad_link = g.link_signed(k, k.t("planner"), &lh, "researcher", "files:read", |_| {});
    let mut inp = cin(k, &bad_link);
    inp["chain"] = json!(format!("{broken}~{}", bad_link.tokens[1]));
    f.add("phase-order-headers-before-signatures", "Token 0 has a bad signature and token 1 a bad `typ`: phase 2 (headers of every token) fails first.",
        inp, err("bad_typ", Some(1)));
    let mut h = grant_header(k.ges());
    h["typ"] = json!("JWT");
    h["alg"] = json!("none");
    f.add(
        "header-bad-typ-before-unsupported-alg",
        "A grant header with `typ: JWT` and `alg: none`: typ (2.3) is checked before alg (2.4).",
        cin(k, &grant_with_header(k, &h)),
        err("bad_typ", Some(0)),
    );
    let mut h = grant_header(k.ges());
    h["jku"] = json!("https://attacker.example/jwks");
    h["typ"] = json!("JWT");
    f.add(
        "header-extra-member-before-bad-typ",
        "A grant header with `jku` and `typ: JWT`: the member allow-list (2.2) is checked before typ (2.3).",
        cin(k, &grant_with_header(k, &h)),
        err("bad_header", Some(0)),
    );
    f
}

// ------------------------------------------------------------------------------------------------
// signatures.json
// ------------------------------------------------------------------------------------------------

fn signatures(k: &Keys) -> File {
    let mut f = File::default();
    let ch = Ch::grant_by(k.rogue(), k, "planner", "files:read", |_| {});
    f.add(
        "untrusted-authority",
        "A grant signed by a key whose kid is in no bundle.",
        cin(k, &ch),
        err("untrusted_authority", Some(0)),
    );

    // Keys across bundles (PROTOCOL.md section 8): a kid belongs to one trust domain; the
    // verifier's own domain is loaded first and always wins, so a federated bundle that repeats
    // one of our keys is refused instead of making our grants or lists ambiguous.
    let ch = Ch::grant(k, "planner", "files:read", |_| {});
    let foreign = |name: &str, b: TrustBundle| {
        let mut inp = cin(k, &ch);
        inp["bundles"][name] = bundle_value(&b);
        inp["authority_policy"] = json!({TD: "*", name: "*"});
        inp
    };
    f.add(
        "bundle-foreign-repeats-own-grant-key",
        "partner.example's bundle lists example.org's grant key (copied: it is public): the partner's bundle is refused, never our grants.",
        foreign(
            PTD,
            TrustBundle::new(td(PTD), 1)
                .add_grant_key(k.ges().public_key().clone())
                .add_revocation_key(k.prev().public_key().clone()),
        ),
        err("bad_bundle", None),
    );
    f.add(
        "bundle-foreign-repeats-own-revocation-key",
        "partner.example's bundle lists example.org's revocation key (as its own revocation key): refused.",
        foreign(
            PTD,
            TrustBundle::new(td(PTD), 1)
                .add_grant_key(k.pgrant().public_key().clone())
                .add_revocation_key(k.rev().public_key().clone()),
        ),
        err("bad_bundle", None),
    );
    f.add(
        "bundle-foreign-repeats-own-key-under-other-use",
        "partner.example's bundle lists example.org's revocation key as a grant key: a kid belongs to one domain whatever its use.",
        foreign(
            PTD,
            TrustBundle::new(td(PTD), 1).add_grant_key(k.rev().public_key().clone()),
        ),
        err("bad_bundle", None),
    );
    f.add(
        "bundle-foreign-sorted-first-repeats-own-grant-key",
        "A bundle whose name sorts before example.org repeats our grant key: the own domain's bundle is loaded first, so the copy is refused.",
        foreign(
            "aaa.example",
            TrustBundle::new(td("aaa.example"), 1).add_grant_key(k.ges().public_key().clone()),
        ),
        err("bad_bundle", None),
    );
    let mut inp = with_partner(k, cin(k, &ch));
    inp["bundles"]["zzz.example"] = bundle_value(
        &TrustBundle::new(td("zzz.example"), 1).add_grant_key(k.pgrant().public_key().clone()),
    );
    f.add(
        "bundle-two-foreign-domains-share-a-key",
        "zzz.example repeats partner.example's grant key; partner.example was loaded first (byte order), so zzz.example's bundle is refused.",
        inp,
        err("bad_bundle", None),
    );

    let ch = Ch::grant_by(k.pgrant(), k, "broker", "files:read", |c| {
        c["iss"] = json!(PTD_ID);
        c["aud"] = json!([VERIFIER]);
    });
    f.add("federated-authority-not-accepted",
        "partner.example's bundle is held (federation) but its authority is not in the default policy: it cannot grant here.",
        with_partner(k, cin(k, &ch)), err("authority_not_accepted", Some(0)));

    let mut h = grant_header(k.ged());
    h["alg"] = json!("ES256");
    let ch = Ch::raw(
        sign_a(k.ged(), &h, &grant_claims(k, "planner", "files:read")),
        "planner",
    );
    f.add(
        "alg-mismatch-grant",
        "`alg: ES256` on a grant whose bundle key is Ed25519 (signed with that Ed25519 key).",
        cin(k, &ch),
        err("alg_mismatch", Some(0)),
    );

    let g = Ch::grant_by(k.ged(), k, "researcher", "files:*", |_| {});
    let mut lh = link_header(k.t("researcher"));
    lh["alg"] = json!("ES256");
    let ch = g.link_signed(k, k.t("researcher"), &lh, "coder", "files:read", |_| {});
    f.add(
        "alg-mismatch-link",
        "`alg: ES256` on a link signed with the previous holder's Ed25519 key.",
        cin(k, &ch),
        err("alg_mismatch", Some(1)),
    );

    let g = Ch::grant(k, "planner", "files:*", |_| {});
    let ch = g.link_signed(
        k,
        k.t("coder"),
        &link_header(k.t("coder")),
        "researcher",
        "files:read",
        |_| {},
    );
    f.add(
        "link-signed-by-wrong-key",
        "A link signed by someone other than the previous holder (a P-256 key, as the holder's).",
        cin(k, &ch),
        err("bad_signature", Some(1)),
    );

    let signed = grant_claims(k, "planner", "files:read");
    let tok = sign_a(k.ges(), &grant_header(k.ges()), &signed);
    let mut parts: Vec<String> = tok.split('.').map(str::to_owned).collect();
    parts[1] = b64(&to_vec(&grant_claims(k, "planner", "*")));
    let ch = Ch::raw(parts.join("."), "planner");
    f.add(
        "tampered-payload",
        "A grant whose payload was widened after signing.",
        cin(k, &ch),
        err("bad_signature", Some(0)),
    );

    let mut bad = grant_claims(k, "planner", "*");
    bad["surprise"] = json!(true);
    parts[1] = b64(&to_vec(&bad));
    let ch = Ch::raw(parts.join("."), "planner");
    f.add(
        "claims-not-read-before-signature",
        "A tampered grant that also has an unknown claim: the signature fails first.",
        cin(k, &ch),
        err("bad_signature", Some(0)),
    );

    let tok = sign_a(
        k.ged(),
        &grant_header(k.ged()),
        &grant_claims(k, "researcher", "files:read"),
    );
    let (body, sig) = tok.rsplit_once('.').unwrap();
    let mut sig = unb64(sig);
    // S + L, little-endian (S < 2^253, so no overflow past 256 bits).
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for (i, l) in L.iter().enumerate() {
        let s = u16::from(sig[32 + i]) + u16::from(*l) + carry;
        sig[32 + i] = (s & 0xff) as u8;
        carry = s >> 8;
    }
    let ch = Ch::raw(format!("{body}.{}", b64(&sig)), "researcher");
    f.add(
        "ed25519-s-not-reduced",
        "An Ed25519 grant signature with S replaced by S + L (non-canonical, malleated).",
        cin(k, &ch),
        err("bad_signature", Some(0)),
    );

    let tok = sign_a(
        k.ges(),
        &grant_header(k.ges()),
        &grant_claims(k, "planner", "files:read"),
    );
    let (body, sig) = tok.rsplit_once('.').unwrap();
    let ch = Ch::raw(format!("{body}.{}", b64(&[0u8; 64])), "planner");
    f.add(
        "es256-zero-signature",
        "An ES256 signature with r = s = 0 (CVE-2022-21449).",
        cin(k, &ch),
        err("bad_signature", Some(0)),
    );
    let short = &unb64(sig)[..63];
    let ch = Ch::raw(format!("{body}.{}", b64(short)), "planner");
    f.add(
        "es256-short-signature",
        "An ES256 signature of 63 bytes.",
        cin(k, &ch),
        err("bad_signature", Some(0)),
    );

    let b = Ch::grant(k, "planner", "files:*", |_| {})
        .link(k, "coder", "files:read", |_| {})
        .link(k, "tester", "files:read", |_| {});
    let mut inp = cin(k, &b);
    inp["chain"] = json!(format!("{}~{}~{}", b.tokens[0], b.tokens[2], b.tokens[1]));
    inp["peer"] = json!({"id": id("coder"), "jwk": k.jwk("coder")});
    f.add(
        "reordered-links",
        "Links 1 and 2 swapped (all P-256 keys): link 2 is not signed by the grant holder's key.",
        inp,
        err("bad_signature", Some(1)),
    );
    let b = base3(k);
    let mut inp = cin(k, &b);
    inp["chain"] = json!(format!("{}~{}~{}", b.tokens[0], b.tokens[2], b.tokens[1]));
    inp["peer"] = json!({"id": id("researcher"), "jwk": k.jwk("researcher")});
    f.add(
        "reordered-links-mixed-keys",
        "Links 1 and 2 swapped where link 2 is Ed25519-signed and the grant holder's key is P-256.",
        inp,
        err("alg_mismatch", Some(1)),
    );

    let ch = Ch::grant(k, "planner", "files:read", |c| c["iss"] = json!(PTD_ID));
    f.add(
        "issuer-mismatch",
        "A grant claiming `iss` partner.example, signed by example.org's grant key.",
        cin(k, &ch),
        err("issuer_mismatch", Some(0)),
    );

    let ch = Ch::grant(k, "planner", "files:read", |_| {});
    let mut inp = cin(k, &ch);
    let kid = inp["bundles"][TD]["keys"][0]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    inp["bundles"][TD]["keys"][0]["kid"] =
        json!(format!("{}A", &kid[..kid.len() - 1]).replace("AA", "AB"));
    f.add(
        "bundle-kid-not-thumbprint",
        "A bundle whose grant key `kid` is not the key's RFC 7638 thumbprint is refused.",
        inp,
        err("bad_bundle", None),
    );

    // Review additions (PROTOCOL.md sections 4.3 and 8).
    // ES256 has no low-S rule: (r, n - s) verifies like (r, s).
    const P256_N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let tok = sign_a(
        k.ges(),
        &grant_header(k.ges()),
        &grant_claims(k, "planner", "files:read"),
    );
    let (body, sig) = tok.rsplit_once('.').unwrap();
    let mut sig = unb64(sig);
    let mut borrow = 0i32;
    for i in (0..32).rev() {
        let d = i32::from(P256_N[i]) - i32::from(sig[32 + i]) - borrow;
        borrow = i32::from(d < 0);
        sig[32 + i] = u8::try_from(d.rem_euclid(256)).unwrap();
    }
    assert_eq!(borrow, 0);
    let ch = Ch::raw(format!("{body}.{}", b64(&sig)), "planner");
    f.add(
        "es256-high-s-accepted",
        "An ES256 grant signature (r, s) replaced by (r, n - s): both verify (no low-S rule).",
        cin(k, &ch),
        ok(
            &["planner"],
            "files:read",
            &[TD_ID],
            G_IAT,
            G_EXP,
            "g-planner",
        ),
    );
    // `r` or `s` equal to the group order `n` (section 4.3: `0 < r, s < n`): the valid
    // signature's other half is kept, so only the range rule refuses it.
    for (name, desc, half) in [
        (
            "es256-r-equals-n",
            "An ES256 grant signature whose r is replaced by the group order n (s kept).",
            0,
        ),
        (
            "es256-s-equals-n",
            "An ES256 grant signature whose s is replaced by the group order n (r kept).",
            32,
        ),
    ] {
        let mut sig = unb64(tok.rsplit_once('.').unwrap().1);
        sig[half..half + 32].copy_from_slice(&P256_N);
        let ch = Ch::raw(format!("{body}.{}", b64(&sig)), "planner");
        f.add(name, desc, cin(k, &ch), err("bad_signature", Some(0)));
    }

    let ch = Ch::grant(k, "planner", "files:read", |_| {});
    let mut inp = cin(k, &ch);
    let mut twice = inp["bundles"][TD]["keys"][0].clone();
    assert_eq!(twice["use"], "agentid-grant");
    twice["use"] = json!("agentid-revocation");
    inp["bundles"][TD]["keys"]
        .as_array_mut()
        .unwrap()
        .push(twice);
    f.add(
        "bundle-same-key-for-both-uses",
        "A bundle listing the grant key a second time as an agentid-revocation key: one kid twice.",
        inp,
        err("bad_bundle", None),
    );
    let mut inp = cin(k, &ch);
    inp["bundles"][TD]["keys"][0]["d"] = json!(b64(&[7u8; 32]));
    f.add(
        "bundle-grant-entry-with-private-d",
        "A bundle whose grant key entry carries the private member `d`.",
        inp,
        err("bad_bundle", None),
    );
    let mut inp = cin(k, &ch);
    inp["bundles"][TD]["keys"].as_array_mut().unwrap().push(
        json!({"use": "jwt-svid", "kty": "RSA", "kid": "jwt-1", "n": "AQAB", "e": "AQAB", "alg": "RS256"}),
    );
    f.add(
        "bundle-jwt-svid-entry-ignored",
        "A bundle with a SPIFFE jwt-svid entry (an RSA key): entries of other uses are ignored.",
        inp,
        ok(
            &["planner"],
            "files:read",
            &[TD_ID],
            G_IAT,
            G_EXP,
            "g-planner",
        ),
    );
    f
}

// ------------------------------------------------------------------------------------------------
// claims.json
// ------------------------------------------------------------------------------------------------

fn claims(k: &Keys) -> File {
    let mut f = File::default();
    let mut g = |id: &str, desc: &str, change: &dyn Fn(&mut Value), code: &str| {
        let ch = Ch::grant(k, "planner", "files:read", |c| change(c));
        f.add(id, desc, cin(k, &ch), err(code, Some(0)));
    };
    g(
        "claim-unknown",
        "A grant with an unknown claim.",
        &|c| c["act"] = json!({"sub": "x"}),
        "unknown_claim",
    );
    g(
        "claim-fractional-time",
        "`exp` written as a float (1767228600.0).",
        &|c| c["exp"] = json!(G_EXP as f64),
        "bad_claim",
    );
    g(
        "claim-string-time",
        "`exp` written as a string.",
        &|c| c["exp"] = json!(G_EXP.to_string()),
        "bad_claim",
    );
    g(
        "claim-negative-time",
        "`iat` negative.",
        &|c| c["iat"] = json!(-1),
        "bad_claim",
    );
    g(
        "claim-ver-2",
        "`ver: 2`.",
        &|c| c["ver"] = json!(2),
        "unsupported_version",
    );
    g(
        "claim-ver-string",
        "`ver: \"1\"`.",
        &|c| c["ver"] = json!("1"),
        "unsupported_version",
    );
    g(
        "claim-ver-missing",
        "No `ver`.",
        &|c| {
            c.as_object_mut().unwrap().remove("ver");
        },
        "missing_claim",
    );
    g(
        "claim-jti-missing",
        "No `jti`.",
        &|c| {
            c.as_object_mut().unwrap().remove("jti");
        },
        "missing_claim",
    );
    g(
        "claim-jti-space",
        "A `jti` with a space (outside 0x21..0x7E).",
        &|c| c["jti"] = json!("g planner"),
        "bad_claim",
    );
    let mut private = k.jwk("planner");
    private["d"] = json!("3q2-7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    g(
        "cnf-private-d",
        "`cnf.jwk` with a private member `d`.",
        &|c| c["cnf"]["jwk"] = private.clone(),
        "bad_key",
    );
    let mut off = k.jwk("planner");
    let mut y = unb64(off["y"].as_str().unwrap());
    y[31] ^= 1;
    off["y"] = json!(b64(&y));
    g(
        "cnf-p256-off-curve",
        "`cnf.jwk` P-256 point not on the curve (y changed).",
        &|c| c["cnf"]["jwk"] = off.clone(),
        "bad_key",
    );
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let small = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&identity), "alg": "Ed25519"});
    g(
        "cnf-ed25519-small-order",
        "`cnf.jwk` Ed25519 key of small order (the identity point).",
        &|c| c["cnf"]["jwk"] = small.clone(),
        "bad_key",
    );
    let mut extra = k.jwk("planner");
    extra["kid"] = json!("k1");
    g(
        "cnf-jwk-extra-member",
        "`cnf.jwk` with an extra member `kid`.",
        &|c| c["cnf"]["jwk"] = extra.clone(),
        "bad_key",
    );
    let mut wrong_alg = k.jwk("researcher");
    wrong_alg["alg"] = json!("ES256");
    g(
        "cnf-jwk-alg-mismatch",
        "`cnf.jwk` of an Ed25519 key with `alg: ES256`.",
        &|c| c["cnf"]["jwk"] = wrong_alg.clone(),
        "bad_key",
    );
    let thumb = k.thumb("planner");
    g(
        "cnf-extra-member",
        "`cnf` with a member besides `jwk`.",
        &|c| c["cnf"]["jkt"] = json!(thumb.clone()),
        "bad_key",
    );
    g(
        "sub-uppercase-trust-domain",
        "`sub` with an uppercase trust domain.",
        &|c| c["sub"] = json!(format!("spiffe://Example.org/agent/planner/task/{TASK}")),
        "bad_id",
    );
    g(
        "sub-dot-dot-segment",
        "`sub` with a `..` segment.",
        &|c| c["sub"] = json!(format!("spiffe://example.org/agent/../task/{TASK}")),
        "bad_id",
    );
    g(
        "sub-percent-encoded",
        "`sub` with percent-encoding.",
        &|c| c["sub"] = json!(format!("spiffe://example.org/agent/pl%61nner/task/{TASK}")),
        "bad_id",
    );
    g(
        "sub-agent-id",
        "`sub` is an agent ID, not a task identity.",
        &|c| c["sub"] = json!(agent("planner")),
        "bad_id",
    );
    g(
        "task-invalid",
        "`task` is not a valid segment.",
        &|c| c["task"] = json!(".."),
        "bad_id",
    );
    g(
        "scope-double-space",
        "`scope` with two spaces between tokens.",
        &|c| c["scope"] = json!("files:read  files:write"),
        "bad_scope",
    );
    g(
        "scope-duplicate-token",
        "`scope` with a duplicate token.",
        &|c| c["scope"] = json!("files:read files:read"),
        "bad_scope",
    );
    g(
        "mode-unknown",
        "`mode: delegated`.",
        &|c| c["mode"] = json!("delegated"),
        "bad_claim",
    );
    g(
        "on-behalf-of-without-principal",
        "`mode: on_behalf_of` without `principal`.",
        &|c| c["mode"] = json!("on_behalf_of"),
        "missing_claim",
    );
    g(
        "principal-with-autonomous",
        "`principal` with `mode: autonomous`.",
        &|c| c["principal"] = json!({"format": "email", "email": "alice@example.com"}),
        "bad_claim",
    );
    g(
        "max-depth-9",
        "`max_depth: 9`.",
        &|c| c["max_depth"] = json!(9),
        "bad_claim",
    );
    g(
        "aud-empty",
        "`aud: []`.",
        &|c| c["aud"] = json!([]),
        "bad_claim",
    );
    g(
        "limits-negative",
        "A negative limit.",
        &|c| c["limits"] = json!({"max_calls": -1}),
        "bad_claim",
    );
    g(
        "json-too-deep",
        "A claims set nested deeper than 8 levels.",
        &|c| {
            c["principal"] = json!({"format": "opaque", "id": "x", "n": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}});
            c["mode"] = json!("on_behalf_of");
        },
        "bad_json",
    );

    // Raw payloads.
    let raw_grant = |payload: &[u8]| {
        Ch::raw(
            sign_with_authority_key(k.ges(), &to_vec(&grant_header(k.ges())), payload).unwrap(),
            "planner",
        )
    };
    let base = serde_json::to_string(&grant_claims(k, "planner", "files:read")).unwrap();
    let dup = base.replacen('{', r#"{"scope":"*","#, 1);
    f.add(
        "claim-duplicate-member",
        "A claims set with `scope` twice (`*` first, then `files:read`).",
        cin(k, &raw_grant(dup.as_bytes())),
        err("bad_json", Some(0)),
    );
    let exp = base.replace(&format!("\"exp\":{G_EXP}"), "\"exp\":1.7672286e9");
    assert_ne!(exp, base);
    f.add(
        "claim-exponent-time",
        "`exp` written with an exponent.",
        cin(k, &raw_grant(exp.as_bytes())),
        err("bad_claim", Some(0)),
    );
    f.add(
        "claim-malformed-json",
        "A payload that is not JSON (truncated).",
        cin(k, &raw_grant(&base.as_bytes()[..40])),
        err("bad_json", Some(0)),
    );
    let mut latin = base.clone().into_bytes();
    let at = latin.iter().position(|b| *b == b'f').unwrap();
    latin[at] = 0xe9;
    f.add(
        "claim-invalid-utf8",
        "A payload that is not UTF-8.",
        cin(k, &raw_grant(&latin)),
        err("bad_json", Some(0)),
    );

    // Number range (PROTOCOL.md section 3.2): a number is rejected by the parser exactly when it
    // rounds to infinity; one that rounds to DBL_MAX is valid JSON but not an integer.
    let dbl_max = base.replace(
        &format!("\"iat\":{G_IAT}"),
        "\"iat\":1.7976931348623158e308",
    );
    assert_ne!(dbl_max, base);
    f.add(
        "claim-time-rounds-to-dbl-max",
        "`iat` = 1.7976931348623158e308, above DBL_MAX but rounding to it: valid JSON, not an integer.",
        cin(k, &raw_grant(dbl_max.as_bytes())),
        err("bad_claim", Some(0)),
    );
    let inf = base.replace(
        &format!("\"iat\":{G_IAT}"),
        "\"iat\":1.7976931348623159e308",
    );
    f.add(
        "claim-time-rounds-to-infinity",
        "`iat` = 1.7976931348623159e308, which rounds to infinity: the claims set is not I-JSON.",
        cin(k, &raw_grant(inf.as_bytes())),
        err("bad_json", Some(0)),
    );

    // Noncharacters (PROTOCOL.md section 3.2) are ordinary characters, raw or escaped.
    let mut e = ok(
        &["planner"],
        "files:read",
        &[TD_ID],
        G_IAT,
        G_EXP,
        "g-planner",
    );
    e["mode"] = json!("on_behalf_of");
    e["principal"] = json!({"format": "opaque", "id": "u\u{FFFF}\u{FDD0}\u{10FFFE}"});
    let g = Ch::grant(k, "planner", "files:read", |c| {
        c["mode"] = json!("on_behalf_of");
        c["principal"] = json!({"format": "opaque", "id": "u\u{FFFF}\u{FDD0}\u{10FFFE}"});
    });
    f.add(
        "principal-noncharacters-raw",
        "A principal holding the noncharacters U+FFFF, U+FDD0 and U+10FFFE as raw UTF-8: accepted.",
        cin(k, &g),
        e.clone(),
    );
    let mut c = grant_claims(k, "planner", "files:read");
    c["mode"] = json!("on_behalf_of");
    c["principal"] = json!({"format": "opaque", "id": "NONCHARACTERS"});
    let escaped = serde_json::to_string(&c)
        .unwrap()
        .replace("NONCHARACTERS", r"u\uffff\ufdd0\udbff\udffe");
    f.add(
        "principal-noncharacters-escaped",
        "The same principal with the noncharacters written as \\u escapes (U+10FFFE as a surrogate pair): accepted.",
        cin(k, &raw_grant(escaped.as_bytes())),
        e,
    );

    // The principal's conditional requirement is checked at its slot (after mode, before
    // max_depth), not with the unconditional ones (PROTOCOL.md section 10, 3.c.4 and 3.c.5).
    let g = Ch::grant(k, "planner", "files:read", |c| {
        c["mode"] = json!("on_behalf_of");
        c["max_depth"] = json!(9);
    });
    f.add(
        "on-behalf-of-without-principal-before-max-depth",
        "`on_behalf_of` without principal and an invalid max_depth: principal's slot comes first.",
        cin(k, &g),
        err("missing_claim", Some(0)),
    );
    let g = Ch::grant(k, "planner", "files:read", |c| {
        c["mode"] = json!("on_behalf_of");
        c["aud"] = json!(["spiffe://example.org/x/y/z"]);
    });
    f.add(
        "on-behalf-of-without-principal-after-aud",
        "`on_behalf_of` without principal and an aud entry of kind \"other\": aud's slot comes first.",
        cin(k, &g),
        err("bad_id", Some(0)),
    );

    // Trust domain names `.` and `..` are invalid (PROTOCOL.md section 2.1).
    let g = Ch::grant(k, "planner", "files:read", |c| {
        c["sub"] = json!(format!("spiffe://../agent/planner/task/{TASK}"));
    });
    f.add(
        "sub-trust-domain-dotdot",
        "A holder in the trust domain `..`: not a valid SPIFFE ID.",
        cin(k, &g),
        err("bad_id", Some(0)),
    );
    let g = Ch::grant(k, "planner", "files:read", |c| {
        c["aud"] = json!(["spiffe://."]);
    });
    f.add(
        "aud-trust-domain-dot",
        "An audience naming the trust domain `.`: not a valid SPIFFE ID.",
        cin(k, &g),
        err("bad_id", Some(0)),
    );

    // Links.
    let g0 = Ch::grant(k, "planner", "files:*", |_| {});
    let mut l = |id: &str, desc: &str, change: &dyn Fn(&mut Value), code: &str| {
        let ch = g0.link(k, "researcher", "files:read", |c| change(c));
        f.add(id, desc, cin(k, &ch), err(code, Some(1)));
    };
    l(
        "link-x5c-claim",
        "`x5c` in a link's claims (reserved for a later version).",
        &|c| c["x5c"] = json!(["MIIB"]),
        "unknown_claim",
    );
    l(
        "link-mode",
        "`mode` in a link.",
        &|c| c["mode"] = json!("autonomous"),
        "unknown_claim",
    );
    l(
        "link-principal",
        "`principal` in a link.",
        &|c| c["principal"] = json!({"format": "email", "email": "mallory@example.com"}),
        "unknown_claim",
    );
    l(
        "link-prev-short",
        "`prev` that does not decode to 32 bytes.",
        &|c| c["prev"] = json!(b64(&[1u8; 31])),
        "bad_claim",
    );
    l(
        "link-missing-prev",
        "A link without `prev`.",
        &|c| {
            c.as_object_mut().unwrap().remove("prev");
        },
        "missing_claim",
    );
    l(
        "link-iss-trust-domain",
        "A link whose `iss` is a trust-domain ID.",
        &|c| c["iss"] = json!(TD_ID),
        "bad_id",
    );

    let ch = g0.link(k, "files", "files:read", |_| {});
    let mut inp = cin(k, &ch);
    inp["verifier_id"] = json!(id("coder"));
    f.add(
        "service-holder-link",
        "A link whose `sub` is a service ID: services never hold chains.",
        inp,
        err("service_holder", Some(1)),
    );
    let ch = Ch::grant(k, "files", "files:read", |_| {});
    let mut inp = cin(k, &ch);
    inp["verifier_id"] = json!(id("coder"));
    f.add(
        "service-holder-grant",
        "A grant whose `sub` is a service ID.",
        inp,
        err("service_holder", Some(0)),
    );
    let ch = Ch::grant(k, "planner", "files:read", |c| {
        c["jti"] = json!("g+planner/1=~")
    });
    f.add(
        "claim-jti-printable",
        "A `jti` of printable ASCII other than base64url characters is valid.",
        cin(k, &ch),
        ok(
            &["planner"],
            "files:read",
            &[TD_ID],
            G_IAT,
            G_EXP,
            "g+planner/1=~",
        ),
    );

    // Review additions (PROTOCOL.md sections 3.2, 3.3, 5.1, 6.1.1): rules no case above exercised.
    // Duplicate names are compared after unescaping: `sc\u006fpe` is `scope`.
    let dup_escaped = base.replacen('{', r#"{"sc\u006fpe":"*","#, 1);
    f.add(
        "claim-duplicate-member-escaped",
        "A claims set with `scope` twice, once written `sc\\u006fpe` (`*`): a duplicate after unescaping.",
        cin(k, &raw_grant(dup_escaped.as_bytes())),
        err("bad_json", Some(0)),
    );
    let trailing = format!("{base}{{\"scope\":\"*\"}}");
    f.add(
        "claim-trailing-value",
        "A valid claims set followed by a second JSON object: trailing bytes after the top-level value.",
        cin(k, &raw_grant(trailing.as_bytes())),
        err("bad_json", Some(0)),
    );
    let mut bom = vec![0xef, 0xbb, 0xbf];
    bom.extend_from_slice(base.as_bytes());
    f.add(
        "claim-byte-order-mark",
        "A valid claims set preceded by a UTF-8 byte order mark.",
        cin(k, &raw_grant(&bom)),
        err("bad_json", Some(0)),
    );
    let surrogate = base.replacen(
        '{',
        r#"{"mode":"on_behalf_of","principal":{"format":"opaque","id":"x\ud800"},"#,
        1,
    );
    let surrogate = surrogate.replace(r#","mode":"autonomous""#, "");
    assert_eq!(surrogate.matches("\"mode\"").count(), 1);
    f.add(
        "claim-escaped-unpaired-surrogate",
        "A principal id holding the escaped unpaired surrogate `\\ud800` (otherwise a valid on_behalf_of grant).",
        cin(k, &raw_grant(surrogate.as_bytes())),
        err("bad_json", Some(0)),
    );
    let big = base.replace(&format!("\"iat\":{G_IAT}"), "\"iat\":9007199254740992");
    assert_ne!(big, base);
    let g = Ch::grant(k, "planner", "files:read", |c| {
        c["ver"] = json!(2);
        c["act"] = json!({"sub": "x"});
    });
    f.add(
        "claim-ver-2-with-new-claim",
        "`ver: 2` with a claim version 1 does not know: the version (3.c.2) is checked before unknown claims (3.c.3).",
        cin(k, &g),
        err("unsupported_version", Some(0)),
    );
    // Section 3.2: an integer literal below 2^1024 - 2^970 is valid JSON (then not an integer of
    // section 3.3), one of 310 digits rounds to infinity and is not.
    for (id, desc, literal, code) in [
        (
            "claim-time-10-pow-308-literal",
            "`iat` written as 1 followed by 308 zeros (10^308, below the bound): valid JSON, not an integer.",
            format!("1{}", "0".repeat(308)),
            "bad_claim",
        ),
        (
            "claim-time-310-digit-literal",
            "`iat` written as 1 followed by 309 zeros (10^309, rounds to infinity): not I-JSON.",
            format!("1{}", "0".repeat(309)),
            "bad_json",
        ),
        (
            "claim-time-negative-zero",
            "`iat` written as -0: not an integer.",
            "-0".to_owned(),
            "bad_claim",
        ),
    ] {
        let t = base.replace(&format!("\"iat\":{G_IAT}"), &format!("\"iat\":{literal}"));
        assert_ne!(t, base);
        f.add(id, desc, cin(k, &raw_grant(t.as_bytes())), err(code, Some(0)));
    }
    let g = Ch::grant(k, "planner", "files:read", |c| {
        c["jti"] = json!("j".repeat(257))
    });
    f.add(
        "claim-jti-257-bytes",
        "A grant `jti` of 257 bytes (at most 256).",
        cin(k, &g),
        err("bad_claim", Some(0)),
    );
    f.add(
        "claim-time-2-pow-53",
        "`iat` = 2^53 (9007199254740992): valid JSON, outside the integer range [0, 2^53 - 1].",
        cin(k, &raw_grant(big.as_bytes())),
        err("bad_claim", Some(0)),
    );
    // Keys are taken in canonical form only (PROTOCOL.md section 5.1): a non-canonical encoding of
    // a valid point would give the same key a second thumbprint and so escape a `jkt` entry.
    let non_canonical_y = {
        // y = 2^255 - 19 + 3, sign bit 0: the point with y = 3 (large order), encoded non-canonically.
        let mut a = [0xffu8; 32];
        a[0] = 0xf0;
        a[31] = 0x7f;
        a
    };
    assert_eq!(
        b64(&non_canonical_y),
        "8P_______________________________________38"
    );
    bad_cnf(
        &mut f,
        k,
        "cnf-ed25519-non-canonical-y",
        "`cnf.jwk` Ed25519 key whose y is 2^255 - 19 + 3 (a non-canonical encoding of a valid point of large order).",
        json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&non_canonical_y), "alg": "Ed25519"}),
    );
    // x = 5 + p (fits in 32 bytes), y a square root of 5^3 - 3*5 + b: on the curve modulo p.
    let mut y2 = [0u8; 32];
    y2[0] = 2;
    bad_cnf(
        &mut f,
        k,
        "cnf-ed25519-not-on-curve",
        "`cnf.jwk` Ed25519 key with y = 2, a canonical encoding that decompresses to no curve point.",
        json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&y2), "alg": "Ed25519"}),
    );
    bad_cnf(
        &mut f,
        k,
        "cnf-p256-x-not-reduced",
        "`cnf.jwk` P-256 key whose x is 5 + p (>= the field prime; the point (5, y) is on the curve).",
        json!({"kty": "EC", "crv": "P-256", "x": "_____wAAAAEAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAQ",
            "y": "RZJDuapYGAb-kTvOmYF63hHKUDxk2aPFM0FcCDJI-8w", "alg": "ES256"}),
    );
    bad_cnf(
        &mut f,
        k,
        "cnf-p256-y-not-reduced",
        "`cnf.jwk` P-256 key whose y is 1 + p (>= the field prime; the point (x, 1) is on the curve).",
        json!({"kty": "EC", "crv": "P-256", "x": "CeeNTvYNBfdQ9mNiCQkrxDy91rR-EaneIKn-sqULuWw",
            "y": "_____wAAAAEAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAA", "alg": "ES256"}),
    );
    for (id, desc, principal) in [
        (
            "principal-unknown-format",
            "A principal of format `aliases` (an RFC 9493 format outside section 6.1.1).",
            json!({"format": "aliases", "identifiers": [{"format": "email", "email": "alice@example.com"}]}),
        ),
        (
            "principal-extra-member",
            "An email principal with a member besides `format` and `email`.",
            json!({"format": "email", "email": "alice@example.com", "name": "Alice"}),
        ),
        (
            "principal-empty-value",
            "An email principal whose `email` is the empty string.",
            json!({"format": "email", "email": ""}),
        ),
        (
            "principal-value-too-long",
            "An opaque principal whose `id` is 1025 bytes.",
            json!({"format": "opaque", "id": "a".repeat(1025)}),
        ),
    ] {
        let g = Ch::grant(k, "planner", "files:read", |c| {
            c["mode"] = json!("on_behalf_of");
            c["principal"] = principal;
        });
        f.add(id, desc, cin(k, &g), err("bad_claim", Some(0)));
    }
    // Scope grammar (section 7.1): `*` only as a whole token or as the last segment.
    let g = Ch::grant(k, "planner", "files:*:read", |_| {});
    f.add(
        "scope-wildcard-not-last",
        "A grant scope `files:*:read` (a `*` segment that is not last).",
        cin(k, &g),
        err("bad_scope", Some(0)),
    );
    // ID sets (section 7.2): duplicates are bad_claim; the element checks come before the count.
    let g = Ch::grant(k, "planner", "files:read", |c| {
        c["aud"] = json!([VERIFIER, VERIFIER])
    });
    f.add(
        "aud-duplicate-entry",
        "`aud` naming the same service twice.",
        cin(k, &g),
        err("bad_claim", Some(0)),
    );
    let mut many: Vec<Value> = (0..16)
        .map(|i| json!(format!("spiffe://example.org/svc/s{i}")))
        .collect();
    many.push(json!("SPIFFE://example.org"));
    let g = Ch::grant(k, "planner", "files:read", |c| c["aud"] = json!(many));
    f.add(
        "aud-17-entries-one-invalid",
        "`aud` of 17 strings, the last `SPIFFE://example.org`: the element's syntax (bad_id) is checked before the count (bad_claim).",
        cin(k, &g),
        err("bad_id", Some(0)),
    );
    // Limits (section 7.3): 1 to 32 members.
    let g = Ch::grant(k, "planner", "files:read", |c| c["limits"] = json!({}));
    f.add(
        "limits-empty-object",
        "`limits: {}` (a limits object has 1 to 32 members).",
        cin(k, &g),
        err("bad_claim", Some(0)),
    );
    // A link's iss of kind service ID is bad_id (section 6.2), not service_holder (which is for sub).
    let ch = Ch::grant(k, "planner", "files:*", |_| {}).link(k, "researcher", "files:read", |c| {
        c["iss"] = json!(VERIFIER)
    });
    f.add(
        "link-iss-service-id",
        "A link whose `iss` is a service ID: bad_id (service_holder is only for `sub`).",
        cin(k, &ch),
        err("bad_id", Some(1)),
    );
    f
}

/// A grant to planner whose `cnf.jwk` is `jwk`: fails `bad_key` (0).
fn bad_cnf(f: &mut File, k: &Keys, id: &str, desc: &str, jwk: Value) {
    let ch = Ch::grant(k, "planner", "files:read", |c| c["cnf"]["jwk"] = jwk);
    f.add(id, desc, cin(k, &ch), err("bad_key", Some(0)));
}

// ------------------------------------------------------------------------------------------------
// attenuation.json
// ------------------------------------------------------------------------------------------------

fn attenuation(k: &Keys) -> File {
    let mut f = File::default();
    let g = Ch::grant(k, "planner", "files:*", |_| {});
    let mut l = |id: &str,
                 desc: &str,
                 to: &str,
                 scope: &str,
                 change: &dyn Fn(&mut Value),
                 code: &str,
                 limits: &[&str]| {
        let ch = g.link(k, to, scope, |c| change(c));
        let mut inp = cin(k, &ch);
        inp["enforced_limits"] = json!(limits);
        f.add(id, desc, inp, err(code, Some(1)));
    };
    l(
        "broken-link",
        "A link signed by the holder but naming another agent as `iss`.",
        "researcher",
        "files:read",
        &|c| c["iss"] = json!(id("coder")),
        "broken_link",
        &[],
    );
    l(
        "task-mismatch-link",
        "A link of another task (claim and sub).",
        "researcher",
        "files:read",
        &|c| {
            c["task"] = json!(OTHER_TASK);
            c["sub"] = json!(format!("spiffe://{TD}/agent/researcher/task/{OTHER_TASK}"));
        },
        "task_mismatch",
        &[],
    );
    l(
        "task-mismatch-link-sub",
        "A link whose `sub` is of another task than its `task` claim.",
        "researcher",
        "files:read",
        &|c| c["sub"] = json!(format!("spiffe://{TD}/agent/researcher/task/{OTHER_TASK}")),
        "task_mismatch",
        &[],
    );
    l(
        "self-delegation",
        "A link from the holder to itself.",
        "planner",
        "files:read",
        &|_| {},
        "self_delegation",
        &[],
    );
    l(
        "depth-not-decreasing",
        "A link whose max_depth equals its predecessor's.",
        "researcher",
        "files:read",
        &|c| c["max_depth"] = json!(8),
        "depth_exceeded",
        &[],
    );
    l(
        "scope-escalation",
        "A link adding a scope token its predecessor does not cover.",
        "researcher",
        "files:read tickets:read",
        &|_| {},
        "scope_escalation",
        &[],
    );
    l(
        "scope-escalation-parent",
        "`files:*` does not cover `files`.",
        "researcher",
        "files",
        &|_| {},
        "scope_escalation",
        &[],
    );
    l(
        "scope-escalation-wildcard",
        "A link widening to `*`.",
        "researcher",
        "*",
        &|_| {},
        "scope_escalation",
        &[],
    );
    l(
        "expiry-extended",
        "A link outliving its predecessor by one second.",
        "researcher",
        "files:read",
        &|c| c["exp"] = json!(G_EXP + 1),
        "expiry_extended",
        &[],
    );
    l(
        "delegatee-other-domain-default",
        "Without may_delegate_to, delegation stays in the authority's trust domain.",
        "broker",
        "files:read",
        &|_| {},
        "delegatee_denied",
        &[],
    );
    l(
        "unsupported-limit-link",
        "A link introduces a limit name the verifier does not enforce.",
        "researcher",
        "files:read",
        &|c| c["limits"] = json!({"max_tokens": 5}),
        "unsupported_limit",
        &["max_calls"],
    );

    let ch = Ch::grant(k, "planner", "files:*", |c| c["max_depth"] = json!(0)).link(
        k,
        "researcher",
        "files:read",
        |c| c["max_depth"] = json!(0),
    );
    f.add(
        "sealed-grant",
        "A link after a grant with max_depth 0.",
        cin(k, &ch),
        err("depth_exceeded", Some(1)),
    );
    let ch = Ch::grant(k, "planner", "files:*", |c| c["max_depth"] = json!(2))
        .link(k, "researcher", "files:read", |c| c["max_depth"] = json!(0))
        .link(k, "coder", "files:read", |c| c["max_depth"] = json!(0));
    f.add(
        "depth-exhausted",
        "A link after a link with max_depth 0.",
        cin(k, &ch),
        err("depth_exceeded", Some(2)),
    );

    let ch = Ch::grant(k, "planner", "files:*", |_| {})
        .link(k, "researcher", "files:read", |_| {})
        .link(k, "coder", "files:*", |_| {});
    f.add("scope-escalation-depth2", "Link 2 widens back to the grant's scope: covering is against the previous token, not the grant.", cin(k, &ch), err("scope_escalation", Some(2)));

    let ch = Ch::grant(k, "planner", "files:*", |c| c["aud"] = json!([VERIFIER])).link(
        k,
        "researcher",
        "files:read",
        |c| c["aud"] = json!([TD_ID]),
    );
    f.add(
        "audience-escalation",
        "A link widening aud from one service to the whole trust domain.",
        cin(k, &ch),
        err("audience_escalation", Some(1)),
    );
    let ch = Ch::grant(k, "planner", "files:*", |_| {}).link(k, "researcher", "files:read", |c| {
        c["aud"] = json!([VERIFIER, PTD_ID])
    });
    f.add(
        "audience-escalation-other-domain",
        "A link adding another trust domain to the inherited aud.",
        cin(k, &ch),
        err("audience_escalation", Some(1)),
    );

    let ch = Ch::grant(k, "planner", "files:*", |c| {
        c["limits"] = json!({"max_calls": 10})
    })
    .link(k, "researcher", "files:read", |c| {
        c["limits"] = json!({"max_calls": 11})
    });
    let mut inp = cin(k, &ch);
    inp["enforced_limits"] = json!(["max_calls"]);
    f.add(
        "limit-escalation",
        "A link raising a ceiling from 10 to 11.",
        inp,
        err("limit_escalation", Some(1)),
    );
    let ch = Ch::grant(k, "planner", "files:*", |c| {
        c["limits"] = json!({"max_calls": 10})
    });
    f.add(
        "unsupported-limit-grant",
        "A grant carrying a limit the verifier does not enforce.",
        cin(k, &ch),
        err("unsupported_limit", Some(0)),
    );

    let ch = Ch::grant(k, "planner", "files:*", |c| {
        c["may_delegate_to"] = json!([agent("researcher")])
    })
    .link(k, "researcher", "files:read", |c| {
        c["may_delegate_to"] = json!([TD_ID])
    });
    f.add(
        "delegation-escalation",
        "A link widening may_delegate_to from one agent to the whole domain.",
        cin(k, &ch),
        err("delegation_escalation", Some(1)),
    );
    let ch = Ch::grant(k, "planner", "files:*", |c| {
        c["may_delegate_to"] = json!([agent("coder")])
    })
    .link(k, "researcher", "files:read", |_| {});
    f.add(
        "delegatee-denied",
        "A link to an agent outside the grant's may_delegate_to.",
        cin(k, &ch),
        err("delegatee_denied", Some(1)),
    );
    let ch = Ch::grant(k, "planner", "files:*", |_| {})
        .link(k, "researcher", "files:*", |c| {
            c["may_delegate_to"] = json!([agent("reviewer")])
        })
        .link(k, "coder", "files:read", |_| {});
    f.add(
        "delegatee-denied-by-link-list",
        "A link's may_delegate_to constrains the next link.",
        cin(k, &ch),
        err("delegatee_denied", Some(2)),
    );

    // Splicing: a link made on another grant to the same holder key.
    let ga = Ch::grant(k, "planner", "files:read", |c| c["jti"] = json!("g-a"));
    let gb = Ch::grant(k, "planner", "files:*", |c| c["jti"] = json!("g-b"));
    let la = ga.link(k, "researcher", "files:read", |_| {});
    let ch = gb.push(la.tokens[1].clone(), "researcher");
    f.add(
        "prev-mismatch-splice",
        "A link cut from another chain (same holder key) spliced after a different grant.",
        cin(k, &ch),
        err("prev_mismatch", Some(1)),
    );

    let ch = Ch::grant(k, "planner", "files:*", |c| c["task"] = json!(OTHER_TASK));
    f.add(
        "task-mismatch-grant",
        "A grant whose `sub` is not of its `task`.",
        cin(k, &ch),
        err("task_mismatch", Some(0)),
    );
    let ch = Ch::grant(k, "broker", "files:*", |_| {});
    f.add(
        "foreign-holder",
        "An example.org grant to a partner.example agent.",
        with_partner(k, cin(k, &ch)),
        err("foreign_holder", Some(0)),
    );

    // Review additions: check order within a link (PROTOCOL.md section 10, phase 4) and between
    // phases (each phase runs over every token before the next phase starts).
    let ch = Ch::grant(k, "planner", "files:*", |c| {
        c["limits"] = json!({"max_calls": 10})
    })
    .link(k, "researcher", "files:read", |c| {
        c["limits"] = json!({"max_calls": 11, "max_tokens": 5})
    });
    let mut inp = cin(k, &ch);
    inp["enforced_limits"] = json!(["max_calls"]);
    f.add(
        "unsupported-limit-before-limit-escalation",
        "A link raising max_calls (10 to 11) and adding max_tokens, which is not enforced: 4.8 checks every name for unsupported_limit before any ceiling.",
        inp,
        err("unsupported_limit", Some(1)),
    );
    let ch = Ch::grant(k, "planner", "files:*", |c| c["aud"] = json!([VERIFIER])).link(
        k,
        "researcher",
        "files:* tickets:read",
        |c| c["aud"] = json!([TD_ID]),
    );
    f.add(
        "scope-escalation-before-audience-escalation",
        "A link widening both its scope and its aud: scope (4.6) is checked before aud (4.7).",
        cin(k, &ch),
        err("scope_escalation", Some(1)),
    );
    let ch = Ch::grant(k, "planner", "files:*", |c| c["nbf"] = json!(NOW + 1000)).link(
        k,
        "researcher",
        "tickets:read",
        |_| {},
    );
    f.add(
        "phase-order-attenuation-before-time",
        "A grant not yet valid (nbf = now + 1000) and a link escalating scope: phase 4 (link 1) runs before phase 5 (grant).",
        cin(k, &ch),
        err("scope_escalation", Some(1)),
    );
    let g = Ch::grant(k, "planner", "files:* tickets:*", |_| {});
    let l1 = g.link(k, "researcher", "files:read tickets:read", |c| {
        c["prev"] = json!(b64(&[9u8; 32]))
    });
    let ch = l1.link(k, "coder", "files:read", |c| c["jti"] = json!("l coder"));
    f.add(
        "phase-order-claims-before-linkage",
        "Link 1 has a wrong prev and link 2 a jti with a space: phase 3 (claims of every token) runs before phase 4 (linkage of link 1).",
        cin(k, &ch),
        err("bad_claim", Some(2)),
    );
    // Covering is by segments, not by string prefix (section 7.1).
    let ch =
        Ch::grant(k, "planner", "files:*", |_| {}).link(k, "researcher", "filesystem:read", |_| {});
    f.add(
        "scope-escalation-string-prefix",
        "Under `files:*`, a link with `filesystem:read`: `files` is a string prefix of `filesystem` but not a segment prefix.",
        cin(k, &ch),
        err("scope_escalation", Some(1)),
    );
    f
}

// ------------------------------------------------------------------------------------------------
// time.json
// ------------------------------------------------------------------------------------------------

fn time(k: &Keys) -> File {
    let mut f = File::default();
    let mut t = |id: &str,
                 desc: &str,
                 iat: u64,
                 nbf: u64,
                 exp: u64,
                 skew: u64,
                 expected: Option<(&str, Option<usize>)>| {
        let ch = Ch::grant(k, "planner", "files:read", |c| {
            c["iat"] = json!(iat);
            c["nbf"] = json!(nbf);
            c["exp"] = json!(exp);
        });
        let mut inp = cin(k, &ch);
        inp["skew"] = json!(skew);
        let e = match expected {
            Some((code, i)) => err(code, i),
            None => ok(&["planner"], "files:read", &[TD_ID], nbf, exp, "g-planner"),
        };
        f.add(id, desc, inp, e);
    };
    t(
        "expired",
        "A grant that expired an hour ago.",
        NOW - 7200,
        NOW - 7200,
        NOW - 3600,
        60,
        Some(("expired", Some(0))),
    );
    t(
        "expired-at-exp-plus-skew",
        "now = exp + skew exactly: expired (the window is half-open).",
        NOW - 3600,
        NOW - 3600,
        NOW - 60,
        60,
        Some(("expired", Some(0))),
    );
    t(
        "valid-one-second-before-exp-plus-skew",
        "now = exp + skew - 1: still valid.",
        NOW - 3600,
        NOW - 3600,
        NOW - 59,
        60,
        None,
    );
    t(
        "valid-at-nbf-minus-skew",
        "now = nbf - skew exactly: valid.",
        NOW,
        NOW + 60,
        NOW + 3600,
        60,
        None,
    );
    t(
        "not-yet-valid",
        "now = nbf - skew - 1: not yet valid.",
        NOW,
        NOW + 61,
        NOW + 3600,
        60,
        Some(("not_yet_valid", Some(0))),
    );
    t(
        "issued-in-future",
        "iat = now + skew + 1.",
        NOW + 61,
        NOW,
        NOW + 3600,
        60,
        Some(("issued_in_future", Some(0))),
    );
    t(
        "valid-iat-at-now-plus-skew",
        "iat = now + skew: valid.",
        NOW + 60,
        NOW,
        NOW + 3600,
        60,
        None,
    );
    t(
        "nbf-after-exp",
        "nbf later than exp.",
        NOW - 100,
        NOW + 10,
        NOW + 5,
        60,
        Some(("bad_validity", Some(0))),
    );
    t(
        "lifetime-over-24h",
        "A grant living 24 h + 1 s.",
        NOW - 600,
        NOW - 600,
        NOW - 600 + 86_401,
        60,
        Some(("lifetime_exceeded", Some(0))),
    );
    t(
        "valid-lifetime-24h",
        "A grant living exactly 24 h.",
        NOW - 600,
        NOW - 600,
        NOW - 600 + 86_400,
        60,
        None,
    );
    t(
        "skew-zero-at-exp",
        "skew 0 and now = exp: expired.",
        NOW - 600,
        NOW - 600,
        NOW,
        0,
        Some(("expired", Some(0))),
    );
    t(
        "valid-skew-120",
        "skew 120 and now = exp + 119: valid.",
        NOW - 3600,
        NOW - 3600,
        NOW - 119,
        120,
        None,
    );
    t(
        "skew-121",
        "A configured skew above 120 s is refused.",
        G_IAT,
        G_IAT,
        G_EXP,
        121,
        Some(("bad_config", None)),
    );

    let g = Ch::grant(k, "planner", "files:*", |_| {});
    let ch = g.link(k, "researcher", "files:read", |c| {
        c["iat"] = json!(NOW - 400);
        c["nbf"] = json!(NOW - 400);
        c["exp"] = json!(NOW - 60);
    });
    f.add(
        "link-expired",
        "The grant is valid but the link has expired.",
        cin(k, &ch),
        err("expired", Some(1)),
    );
    let ch = g.link(k, "researcher", "files:read", |c| {
        c["nbf"] = json!(NOW + 61)
    });
    f.add(
        "link-not-yet-valid",
        "The link is not yet valid.",
        cin(k, &ch),
        err("not_yet_valid", Some(1)),
    );
    let ch = g.link(k, "researcher", "files:read", |c| {
        c["iat"] = json!(NOW - 90_000);
        c["nbf"] = json!(NOW - 90_000);
    });
    f.add(
        "valid-link-without-lifetime-cap",
        "Links have no lifetime cap of their own (their exp never exceeds the grant's).",
        cin(k, &ch),
        ok(
            &["planner", "researcher"],
            "files:read",
            &[TD_ID],
            G_IAT,
            L_EXP,
            "g-planner",
        ),
    );
    f
}

// ------------------------------------------------------------------------------------------------
// revocation.json
// ------------------------------------------------------------------------------------------------

fn revocation(k: &Keys) -> File {
    let mut f = File::default();
    let b = base3(k);
    let far = NOW + 3600;
    let mut r = |id: &str,
                 desc: &str,
                 entries: &dyn Fn(RevocationListBuilder) -> RevocationListBuilder,
                 expected: Value| {
        let mut inp = cin(k, &b);
        inp["revocation_lists"] = json!([list_ex(k, 1, entries)]);
        f.add(id, desc, inp, expected);
    };
    let sid = |s: &str| SpiffeId::parse(s).unwrap();
    let ok3 = ok(
        &["planner", "researcher", "coder"],
        "files:read",
        &[TD_ID],
        L_IAT,
        L_EXP,
        "g-planner",
    );
    r(
        "revoked-grant-jti",
        "The grant is revoked by jti (issuer: the authority).",
        &|l| l.revoke_jti(&sid(TD_ID), "g-planner", far),
        err("revoked", Some(0)),
    );
    r(
        "revoked-link-jti",
        "Link 1 is revoked by jti (issuer: the grant holder).",
        &|l| l.revoke_jti(&sid(&id("planner")), "l-researcher", far),
        err("revoked", Some(1)),
    );
    r("revoked-jti-other-issuer", "A jti entry only matches its own issuer: the same jti from another issuer does not revoke link 1.",
        &|l| l.revoke_jti(&sid(&id("mallory")), "l-researcher", far), ok3.clone());
    r(
        "revoked-task",
        "The task is revoked.",
        &|l| l.revoke_task(&TaskId::parse(TASK).unwrap(), far),
        err("revoked", Some(0)),
    );
    r(
        "revoked-agent-intermediate",
        "The intermediate holder's agent is revoked.",
        &|l| l.revoke_agent(&AgentId::parse(&agent("researcher")).unwrap(), far),
        err("revoked", Some(1)),
    );
    r(
        "revoked-earlier-holder-key",
        "The grant holder's key is revoked: every chain through it is cut.",
        &|l| l.revoke_key(&k.thumb("planner"), far),
        err("revoked", Some(0)),
    );
    r(
        "revoked-holder-key",
        "The last holder's (the peer's) key is revoked.",
        &|l| l.revoke_key(&k.thumb("coder"), far),
        err("revoked", Some(2)),
    );
    r(
        "revoked-authority-grant-key",
        "The authority's grant key itself is revoked in its domain's list.",
        &|l| l.revoke_key(&k.ges().public_key().thumbprint(), far),
        err("revoked", Some(0)),
    );
    r(
        "revocation-entry-expired",
        "An entry applies only while now < its exp: at exp it is ignored.",
        &|l| l.revoke_agent(&AgentId::parse(&agent("researcher")).unwrap(), NOW),
        ok3.clone(),
    );

    let mut inp = cin(k, &b);
    inp["revocation_lists"] = json!([list_ex(k, 1, |l| l.revoke_key(&k.thumb("mallory"), far))]);
    inp["peer"] = json!({"id": id("coder"), "jwk": k.jwk("mallory")});
    f.add(
        "revoked-peer-certificate-key",
        "The TLS peer's certificate key is revoked (phase 6 runs before possession).",
        inp,
        err("revoked", None),
    );

    let stale = |next: u64| {
        RevocationListBuilder::new(&td(TD), 1, next - 600, next)
            .sign(k.rev())
            .unwrap()
    };
    let mut inp = cin(k, &b);
    inp["revocation_lists"] = json!([stale(NOW - 60)]);
    f.add(
        "revocation-stale",
        "now = next_update + skew: the list is stale.",
        inp,
        err("revocation_stale", None),
    );
    let mut inp = cin(k, &b);
    inp["revocation_lists"] = json!([stale(NOW - 59)]);
    f.add(
        "valid-revocation-fresh-boundary",
        "now = next_update + skew - 1: the list is still fresh.",
        inp,
        ok3.clone(),
    );
    let mut inp = cin(k, &b);
    inp["revocation_lists"] = json!([]);
    f.add(
        "revocation-missing",
        "No list for example.org.",
        inp,
        err("revocation_missing", None),
    );
    let mut inp = cin(k, &b);
    inp["revocation_lists"] = json!([]);
    inp["danger_accept_missing_or_stale_revocations"] = json!(true);
    f.add(
        "valid-danger-missing-list",
        "With the danger setting, a missing list is treated as empty.",
        inp,
        ok3.clone(),
    );
    let mut inp = cin(k, &b);
    inp["revocation_lists"] =
        json!([
            RevocationListBuilder::new(&td(TD), 1, NOW - 1260, NOW - 660)
                .revoke_task(&TaskId::parse(TASK).unwrap(), far)
                .sign(k.rev())
                .unwrap()
        ]);
    inp["danger_accept_missing_or_stale_revocations"] = json!(true);
    f.add(
        "danger-stale-list-still-applies",
        "With the danger setting, a stale list is used as it is (and revokes).",
        inp,
        err("revoked", Some(0)),
    );

    let ch = Ch::grant(k, "planner", "files:*", |c| {
        c["aud"] = json!([VERIFIER]);
        c["may_delegate_to"] = json!([TD_ID, PTD_ID]);
    })
    .link(k, "broker", "files:read", |_| {});
    let mut inp = cin(k, &ch);
    inp["bundles"][PTD] = bundle_partner(k);
    f.add(
        "revocation-missing-partner",
        "A holder of partner.example needs partner.example's list too.",
        inp,
        err("revocation_missing", None),
    );

    // Invalid lists.
    let raw_list = |claims: Value| {
        sign_a(
            k.rev(),
            &json!({"alg": "Ed25519", "typ": "agentid-revocations+jwt", "kid": k.rev().public_key().thumbprint()}),
            &claims,
        )
    };
    let unknown = raw_list(
        json!({"iss": TD_ID, "seq": 1, "iat": NOW - 60, "next_update": NOW + 540,
        "entries": [{"serial": "7f3a", "exp": far}]}),
    );
    let mut inp = cin(k, &b);
    inp["revocation_lists"] = json!([unknown.clone()]);
    f.add(
        "revocation-unknown-entry-kind",
        "A list with an entry of an unknown kind is invalid as a whole.",
        inp,
        err("bad_revocation_list", None),
    );
    let mut inp = cin(k, &b);
    inp["revocation_lists"] = json!([unknown]);
    inp["danger_accept_missing_or_stale_revocations"] = json!(true);
    f.add(
        "revocation-invalid-list-despite-danger",
        "An invalid list is an error even where missing lists are tolerated.",
        inp,
        err("bad_revocation_list", None),
    );
    let other = raw_list(
        json!({"iss": TD_ID, "seq": 1, "iat": NOW - 60, "next_update": NOW + 540,
        "entries": [{"agent": format!("{PTD_ID}/agent/broker"), "exp": far}]}),
    );
    let mut inp = cin(k, &b);
    inp["revocation_lists"] = json!([other]);
    f.add(
        "revocation-entry-other-domain",
        "An example.org list naming a partner.example agent is invalid.",
        inp,
        err("bad_revocation_list", None),
    );
    let mut inp = cin(k, &b);
    inp["revocation_lists"] = json!([RevocationListBuilder::new(&td(TD), 1, NOW - 60, NOW + 540)
        .sign(k.ges())
        .unwrap()]);
    f.add(
        "revocation-signed-by-grant-key",
        "A list signed by a grant key (not an agentid-revocation key).",
        inp,
        err("bad_revocation_list", None),
    );
    let mut inp = cin(k, &b);
    inp["revocation_lists"] = json!([list_ex(k, 2, |l| l), list_ex(k, 1, |l| l)]);
    f.add(
        "revocation-sequence-rollback",
        "A list with a lower seq than the one held is refused.",
        inp,
        err("sequence_rollback", None),
    );

    let mut inp = input(k, None, "coder");
    inp["revocation_lists"] = json!([list_ex(k, 1, |l| l
        .revoke_agent(&AgentId::parse(&agent("coder")).unwrap(), far))]);
    f.add(
        "revoked-peer-without-chain",
        "A peer without a chain whose agent is revoked.",
        inp,
        err("revoked", None),
    );
    // Entry expiry has no skew (PROTOCOL.md section 6.5): an entry applies while now < exp.
    for (id, desc, exp, expected) in [
        (
            "revocation-entry-exp-equals-now",
            "A key entry for the holder with exp = now: no longer applies (issuers add the skew to exp).",
            NOW,
            ok3.clone(),
        ),
        (
            "revocation-entry-exp-now-plus-1",
            "The same entry with exp = now + 1: still applies.",
            NOW + 1,
            err("revoked", Some(2)),
        ),
    ] {
        let mut inp = cin(k, &b);
        inp["revocation_lists"] = json!([list_ex(k, 1, |l| l.revoke_key(&k.thumb("coder"), exp))]);
        f.add(id, desc, inp, expected);
    }
    // An equal seq replaces the held list (PROTOCOL.md section 14.1, R8): issuers never sign two
    // different lists with one seq, so this only re-applies the same publication; the vectors pin
    // what a verifier does anyway.
    let revoking = list_ex(k, 2, |l| l.revoke_key(&k.thumb("coder"), far));
    let empty = list_ex(k, 2, |l| l);
    let mut inp = cin(k, &b);
    inp["revocation_lists"] = json!([revoking, empty]);
    f.add(
        "revocation-equal-seq-replaces",
        "Two lists with seq 2, the second without the entry: the second replaces the first.",
        inp,
        ok3.clone(),
    );
    let mut inp = cin(k, &b);
    inp["revocation_lists"] = json!([empty, revoking]);
    f.add(
        "revocation-equal-seq-replaces-reversed",
        "The same two lists in the other order: the list applied last holds.",
        inp,
        err("revoked", Some(2)),
    );

    // Held lists and bundle changes (PROTOCOL.md section 14.1): a bundle update that takes away
    // the key that verified a held list orphans the list. It is due at the change (stale from
    // `now` + skew: still applied at `now`) and no longer the floor of R8.
    let with_next_key = |keep_old: bool| {
        let mut b = bundle_ex(k);
        b["spiffe_sequence"] = json!(2);
        let old = k.rev().public_key().thumbprint();
        let keys = b["keys"].as_array_mut().unwrap();
        if !keep_old {
            keys.retain(|e| e["kid"] != json!(old));
        }
        let next = bundle_value(
            &TrustBundle::new(td(TD), 1).add_revocation_key(k.rev_next().public_key().clone()),
        )["keys"][0]
            .clone();
        assert_eq!(next["use"], "agentid-revocation");
        keys.push(next);
        json!([{"trust_domain": TD, "bundle": b}])
    };
    let list_next = |seq: u64, revoke: bool| {
        let l = RevocationListBuilder::new(&td(TD), seq, NOW - 60, NOW + 540);
        let l = if revoke {
            l.revoke_key(&k.thumb("coder"), far)
        } else {
            l
        };
        l.sign(k.rev_next()).unwrap()
    };
    let mut inp = cin(k, &b);
    inp["held_revocation_lists"] = json!([list_ex(k, 100, |l| l)]);
    inp["bundle_updates"] = with_next_key(false);
    inp["revocation_lists"] = json!([list_next(1, true)]);
    f.add(
        "revocation-held-list-orphaned-replaced-by-lower-seq",
        "A list with seq 100 is held; a bundle update replaces example.org's revocation key by a new one, orphaning it; a list with seq 1 signed by the new key, revoking the holder's key, replaces it (R8 does not compare with an orphaned list).",
        inp,
        err("revoked", Some(2)),
    );
    let mut inp = cin(k, &b);
    inp["held_revocation_lists"] = json!([list_ex(k, 1, |l| l.revoke_key(&k.thumb("coder"), far))]);
    inp["bundle_updates"] = with_next_key(false);
    inp["revocation_lists"] = json!([]);
    f.add(
        "revocation-held-list-orphaned-still-applies-within-skew",
        "A held list revokes the holder's key; a bundle update at now orphans it: it is stale only from now + skew, so at now its entry still applies.",
        inp,
        err("revoked", Some(2)),
    );
    let mut inp = cin(k, &b);
    inp["held_revocation_lists"] = json!([list_ex(k, 5, |l| l)]);
    inp["bundle_updates"] = with_next_key(true);
    inp["revocation_lists"] = json!([list_ex(k, 3, |l| l)]);
    f.add(
        "revocation-held-list-kept-by-bundle-update-stays-the-floor",
        "A list with seq 5 is held; a bundle update adds a second revocation key and keeps the list's own: the list is not orphaned, and a list with seq 3 is refused.",
        inp,
        err("sequence_rollback", None),
    );

    // Review additions (PROTOCOL.md sections 14.1 and 14.2, phase 6).
    // R6: a list is bound to the domain whose bundle holds its key, whatever its iss says; a
    // partner must not be able to replace example.org's list (and so lift its revocations).
    let forged = sign_a(
        k.prev(),
        &json!({"alg": "Ed25519", "typ": "agentid-revocations+jwt", "kid": k.prev().public_key().thumbprint()}),
        &json!({"iss": TD_ID, "seq": 2, "iat": NOW - 60, "next_update": NOW + 540, "entries": []}),
    );
    let mut inp = with_partner(k, cin(k, &b));
    inp["revocation_lists"] = json!([
        list_ex(k, 1, |l| l.revoke_key(&k.thumb("coder"), far)),
        list_partner(k),
        forged
    ]);
    f.add(
        "revocation-iss-other-domain",
        "A list signed by partner.example's revocation key claiming `iss` example.org (seq 2, no entries, after example.org's list revoking the holder): invalid.",
        inp,
        err("bad_revocation_list", None),
    );
    for (id, desc, header, claims) in [
        (
            "revocation-list-extra-claim",
            "A list with a claim besides iss, seq, iat, next_update and entries (`ver`).",
            json!({"alg": "Ed25519", "typ": "agentid-revocations+jwt", "kid": k.rev().public_key().thumbprint()}),
            json!({"iss": TD_ID, "ver": 1, "seq": 1, "iat": NOW - 60, "next_update": NOW + 540, "entries": []}),
        ),
        (
            "revocation-list-missing-entries",
            "A list without `entries` (an empty list must still carry `entries: []`).",
            json!({"alg": "Ed25519", "typ": "agentid-revocations+jwt", "kid": k.rev().public_key().thumbprint()}),
            json!({"iss": TD_ID, "seq": 1, "iat": NOW - 60, "next_update": NOW + 540}),
        ),
        (
            "revocation-list-next-update-before-iat",
            "A list whose next_update is one second before its iat.",
            json!({"alg": "Ed25519", "typ": "agentid-revocations+jwt", "kid": k.rev().public_key().thumbprint()}),
            json!({"iss": TD_ID, "seq": 1, "iat": NOW - 60, "next_update": NOW - 61, "entries": []}),
        ),
        (
            "revocation-list-typ-grant",
            "A list whose header `typ` is agentid-grant+jwt (signed by the revocation key).",
            json!({"alg": "Ed25519", "typ": "agentid-grant+jwt", "kid": k.rev().public_key().thumbprint()}),
            json!({"iss": TD_ID, "seq": 1, "iat": NOW - 60, "next_update": NOW + 540, "entries": []}),
        ),
        (
            "revocation-entry-two-kinds",
            "An entry with the members of two kinds (agent and jkt, with exp): an unknown kind.",
            json!({"alg": "Ed25519", "typ": "agentid-revocations+jwt", "kid": k.rev().public_key().thumbprint()}),
            json!({"iss": TD_ID, "seq": 1, "iat": NOW - 60, "next_update": NOW + 540,
                "entries": [{"agent": agent("researcher"), "jkt": k.thumb("researcher"), "exp": far}]}),
        ),
    ] {
        let mut inp = cin(k, &b);
        inp["revocation_lists"] = json!([sign_a(k.rev(), &header, &claims)]);
        f.add(id, desc, inp, err("bad_revocation_list", None));
    }

    // 6.2.2 and 14.2: only the authority's list revokes a task, and a list never revokes a key
    // bound to an identity of another domain. planner (example.org) -> broker (partner.example)
    // -> coder (example.org), so the peer is of example.org.
    let ch = Ch::grant(k, "planner", "files:*", |c| {
        c["aud"] = json!([VERIFIER]);
        c["may_delegate_to"] = json!([TD_ID, PTD_ID]);
    })
    .link(k, "broker", "files:read", |_| {})
    .link(k, "coder", "files:read", |_| {});
    let e = ok(
        &["planner", "broker", "coder"],
        "files:read",
        &[VERIFIER],
        L_IAT,
        L_EXP,
        "g-planner",
    );
    for (id, desc, list) in [
        (
            "revocation-task-entry-in-non-authority-list",
            "partner.example's list has a task entry for the chain's task: only the authority's (example.org's) list revokes a task.",
            RevocationListBuilder::new(&td(PTD), 1, NOW - 60, NOW + 540)
                .revoke_task(&TaskId::parse(TASK).unwrap(), far),
        ),
        (
            "revocation-key-entry-in-other-domain-list",
            "partner.example's list has a key entry for the thumbprint of planner's (an example.org holder's) key: a list revokes keys of its own domain only.",
            RevocationListBuilder::new(&td(PTD), 1, NOW - 60, NOW + 540)
                .revoke_key(&k.thumb("planner"), far),
        ),
    ] {
        let mut inp = cin(k, &ch);
        inp["bundles"][PTD] = bundle_partner(k);
        inp["revocation_lists"]
            .as_array_mut()
            .unwrap()
            .push(Value::from(list.sign(k.prev()).unwrap()));
        f.add(id, desc, inp, e.clone());
    }
    // 6.3.3 with a chain: the same task entry of partner.example's list revokes the chain's last
    // holder when it is the partner's broker, as the peer (a verifier may skip rule 6.3 only for a
    // peer of the authority's domain, whose questions rules 6.2.2, 6.2.4 and 6.2.5 asked).
    let ch = Ch::grant(k, "planner", "files:*", |c| {
        c["aud"] = json!([VERIFIER]);
        c["may_delegate_to"] = json!([TD_ID, PTD_ID]);
    })
    .link(k, "broker", "files:read", |_| {});
    let mut inp = cin(k, &ch);
    inp["bundles"][PTD] = bundle_partner(k);
    inp["revocation_lists"]
        .as_array_mut()
        .unwrap()
        .push(Value::from(
            RevocationListBuilder::new(&td(PTD), 1, NOW - 60, NOW + 540)
                .revoke_task(&TaskId::parse(TASK).unwrap(), far)
                .sign(k.prev())
                .unwrap(),
        ));
    f.add(
        "revoked-foreign-peer-task-with-chain",
        "The chain's last holder is partner.example's broker, the peer; partner.example's list has a task entry for the chain's task: rule 6.3.3 revokes the peer (index null), though that list never revokes the task for the chain's tokens (rule 6.2.2).",
        inp,
        err("revoked", None),
    );

    // Phase 5 runs over every token before phase 6: a revoked grant and an expired link 2.
    let ch = Ch::grant(k, "planner", "files:* tickets:*", |_| {})
        .link(k, "researcher", "files:read", |_| {})
        .link(k, "coder", "files:read", |c| {
            c["exp"] = json!(NOW - 60);
        });
    let mut inp = cin(k, &ch);
    inp["revocation_lists"] = json!([list_ex(k, 1, |l| l.revoke_jti(
        &sid(TD_ID),
        "g-planner",
        far
    ))]);
    f.add(
        "phase-order-time-before-revocation",
        "The grant is revoked by jti and link 2 expired (exp + skew = now): phase 5 (link 2) runs before phase 6 (grant).",
        inp,
        err("expired", Some(2)),
    );

    // 6.1 walks the domains in order of first appearance, missing then stale for each: example.org
    // (stale) comes before partner.example (missing).
    let ch = Ch::grant(k, "planner", "files:*", |c| {
        c["aud"] = json!([VERIFIER]);
        c["may_delegate_to"] = json!([TD_ID, PTD_ID]);
    })
    .link(k, "broker", "files:read", |_| {});
    let mut inp = cin(k, &ch);
    inp["bundles"][PTD] = bundle_partner(k);
    inp["revocation_lists"] = json!([stale(NOW - 60)]);
    f.add(
        "revocation-stale-before-partner-missing",
        "example.org's list is stale and partner.example's missing: example.org appears first in the chain, so revocation_stale.",
        inp,
        err("revocation_stale", None),
    );
    // 6.3.3: a peer without a chain is revoked by its task.
    let mut inp = input(k, None, "coder");
    inp["revocation_lists"] =
        json!([list_ex(k, 1, |l| l.revoke_task(&TaskId::parse(TASK).unwrap(), far))]);
    f.add(
        "revoked-peer-task-without-chain",
        "A peer without a chain whose task (its identity's task segment) is revoked.",
        inp,
        err("revoked", None),
    );
    // R7: two entries with the same kind and value apply until the later of their exps, whatever
    // their order (a map keyed by value that keeps the last exp would lift the revocation).
    let twice = raw_list(
        json!({"iss": TD_ID, "seq": 1, "iat": NOW - 60, "next_update": NOW + 540,
        "entries": [{"jkt": k.thumb("coder"), "exp": far}, {"jkt": k.thumb("coder"), "exp": NOW}]}),
    );
    let mut inp = cin(k, &b);
    inp["revocation_lists"] = json!([twice]);
    f.add(
        "revocation-duplicate-entry-later-exp-applies",
        "Two key entries for the holder's key, exp now + 3600 then exp now: together they apply until the later exp.",
        inp,
        err("revoked", Some(2)),
    );
    // 14.3: only the lists of the chain's and the peer's trust domains are needed fresh.
    let mut inp = cin(k, &b);
    inp["bundles"][PTD] = bundle_partner(k);
    inp["revocation_lists"]
        .as_array_mut()
        .unwrap()
        .push(Value::from(
            RevocationListBuilder::new(&td(PTD), 1, NOW - 1260, NOW - 660)
                .sign(k.prev())
                .unwrap(),
        ));
    f.add(
        "revocation-stale-list-of-uninvolved-domain",
        "partner.example's list is stale, but no token or peer of the chain is of partner.example.",
        inp,
        ok3.clone(),
    );

    f
}

// ------------------------------------------------------------------------------------------------
// possession_audience.json
// ------------------------------------------------------------------------------------------------

fn possession_audience(k: &Keys) -> File {
    let mut f = File::default();
    let b = base2(k);
    let mut inp = cin(k, &b);
    inp["peer"] = json!({"id": id("researcher"), "jwk": k.jwk("mallory")});
    f.add(
        "possession-mismatch",
        "The TLS peer's key is not the last cnf key.",
        inp,
        err("possession_mismatch", Some(1)),
    );
    let mut inp = cin(k, &b);
    inp["peer"] = json!({"id": id("planner"), "jwk": k.jwk("planner")});
    f.add(
        "possession-previous-holder",
        "The previous holder presents the chain it delegated (bearer use).",
        inp,
        err("possession_mismatch", Some(1)),
    );
    let mut inp = cin(k, &b);
    inp["peer"] = json!({"id": format!("spiffe://{TD}/agent/researcher/task/{OTHER_TASK}"), "jwk": k.jwk("researcher")});
    f.add(
        "holder-mismatch",
        "The last sub is not the peer's URI SAN (same key, another task identity).",
        inp,
        err("holder_mismatch", Some(1)),
    );

    let ch = Ch::grant(k, "planner", "files:*", |c| c["aud"] = json!([OTHER_SVC]));
    f.add(
        "audience-mismatch-grant",
        "The grant's aud names another service.",
        cin(k, &ch),
        err("audience_mismatch", None),
    );
    let ch = Ch::grant(k, "planner", "files:*", |_| {}).link(k, "researcher", "files:read", |c| {
        c["aud"] = json!([OTHER_SVC])
    });
    f.add(
        "audience-mismatch-link",
        "A link narrows aud to another service.",
        cin(k, &ch),
        err("audience_mismatch", None),
    );
    let mut inp = cin(k, &Ch::grant(k, "planner", "files:*", |_| {}));
    inp["verifier_id"] = json!("spiffe://partner.example/svc/files");
    inp["authority_policy"] = json!({TD: "*"});
    f.add(
        "audience-mismatch-default-aud",
        "Without aud a grant is for its own trust domain only.",
        inp,
        err("audience_mismatch", None),
    );

    let ch = Ch::grant(k, "planner", "files:*", |c| {
        c["aud"] = json!([agent("reviewer")])
    });
    let mut inp = cin(k, &ch);
    inp["verifier_id"] = json!(id("reviewer"));
    f.add(
        "valid-audience-agent-covers-task",
        "An agent ID in aud covers that agent's task identities.",
        inp,
        ok(
            &["planner"],
            "files:*",
            &[&agent("reviewer")],
            G_IAT,
            G_EXP,
            "g-planner",
        ),
    );
    // Covering is by ID structure, not by string prefix (section 7.2).
    let ch = Ch::grant(k, "planner", "files:*", |c| {
        c["aud"] = json!([agent("reviewer")])
    });
    let mut inp = cin(k, &ch);
    inp["verifier_id"] = json!(id("reviewerx"));
    f.add(
        "audience-agent-id-string-prefix",
        "aud names the agent reviewer; the verifier is a task of agent reviewerx (the aud entry is a string prefix of its ID).",
        inp,
        err("audience_mismatch", None),
    );
    let ch = Ch::grant(k, "planner", "files:*", |_| {});
    let mut inp = cin(k, &ch);
    inp["verifier_id"] = json!("spiffe://example.org.evil/svc/files");
    inp["authority_policy"] = json!({TD: "*"});
    f.add(
        "audience-trust-domain-string-prefix",
        "Default aud [spiffe://example.org]; the verifier is spiffe://example.org.evil/svc/files, which accepts example.org's grants: another trust domain.",
        inp,
        err("audience_mismatch", None),
    );
    f
}

// ------------------------------------------------------------------------------------------------
// authorization.json
// ------------------------------------------------------------------------------------------------

fn authorization(k: &Keys) -> File {
    let mut f = File::default();
    let ch = Ch::grant(k, "planner", "files:* tickets:*", |c| {
        c["limits"] = json!({"max_calls": 10})
    })
    .link(k, "researcher", "files:read files:write tickets:*", |_| {});
    let mut ok2 = ok(
        &["planner", "researcher"],
        "files:read files:write tickets:*",
        &[TD_ID],
        L_IAT,
        L_EXP,
        "g-planner",
    );
    ok2["limits"] = json!({"max_calls": 10});
    let ch_auth = ch.clone();
    let ok_auth = ok2.clone();
    let mut a =
        |id: &str, desc: &str, scope: &str, policy: Value, amounts: Value, expected: Value| {
            let mut inp = cin(k, &ch);
            inp["enforced_limits"] = json!(["max_calls"]);
            inp["requested_scope"] = json!(scope);
            inp["authority_policy"] = policy;
            if !amounts.is_null() {
                inp["requested_amounts"] = amounts;
            }
            f.add(id, desc, inp, expected);
        };
    a(
        "authorized",
        "A requested scope covered by the chain.",
        "files:read",
        Value::Null,
        Value::Null,
        ok2.clone(),
    );
    a(
        "authorized-pattern",
        "`tickets:*` covers `tickets:open:42`.",
        "tickets:open:42",
        Value::Null,
        Value::Null,
        ok2.clone(),
    );
    a(
        "scope-not-granted",
        "A requested scope the chain does not cover.",
        "files:delete",
        Value::Null,
        Value::Null,
        err("scope_not_granted", None),
    );
    a(
        "scope-not-granted-prefix",
        "`tickets:*` does not cover `tickets`.",
        "tickets",
        Value::Null,
        Value::Null,
        err("scope_not_granted", None),
    );
    a(
        "requested-scope-pattern",
        "A requested scope may not contain `*`.",
        "files:*",
        Value::Null,
        Value::Null,
        err("bad_scope", None),
    );
    a(
        "authority-scope-denied",
        "The authority policy lets example.org grant only `files:read` here.",
        "files:write",
        json!({TD: "files:read"}),
        Value::Null,
        err("authority_scope_denied", None),
    );
    a(
        "authority-scope-allowed",
        "The same policy allows `files:read`.",
        "files:read",
        json!({TD: "files:read"}),
        Value::Null,
        ok2.clone(),
    );
    a(
        "limit-exceeded",
        "A requested amount above the effective ceiling.",
        "files:read",
        Value::Null,
        json!({"max_calls": 11}),
        err("limit_exceeded", None),
    );
    a(
        "limit-at-ceiling",
        "A requested amount equal to the ceiling.",
        "files:read",
        Value::Null,
        json!({"max_calls": 10}),
        ok2.clone(),
    );
    a(
        "authority-not-in-policy",
        "A policy without example.org: its grants are not accepted at all.",
        "files:read",
        json!({PTD: "*"}),
        Value::Null,
        err("authority_not_accepted", Some(0)),
    );

    let ch = Ch::grant_by(k.pgrant(), k, "broker", "tickets:* files:read", |c| {
        c["iss"] = json!(PTD_ID);
        c["aud"] = json!([VERIFIER]);
    });
    let mut inp = with_partner(k, cin(k, &ch));
    inp["authority_policy"] = json!({TD: "*", PTD: "tickets:*"});
    inp["requested_scope"] = json!("files:read");
    f.add(
        "federated-authority-scope-denied",
        "partner.example granted `files:read`, but may grant only `tickets:*` here.",
        inp,
        err("authority_scope_denied", None),
    );
    // A peer without a chain holds no authority (PROTOCOL.md section 13).
    let mut inp = input(k, None, "coder");
    inp["requested_scope"] = json!("files:read");
    f.add(
        "chainless-peer-requests-scope",
        "An authenticated peer without a chain asks for files:read: it holds no authority.",
        inp,
        err("scope_not_granted", None),
    );
    let mut inp = input(k, None, "files");
    inp["verifier_id"] = json!(id("coder"));
    inp["requested_scope"] = json!("files:*");
    f.add(
        "chainless-peer-requests-wildcard",
        "A peer without a chain asks for a wildcard scope: A1 (bad_scope) still runs first.",
        inp,
        err("bad_scope", None),
    );

    // Review additions (PROTOCOL.md section 13): A2 before A3, and A4.
    let mut inp = cin(k, &ch_auth);
    inp["enforced_limits"] = json!(["max_calls"]);
    inp["requested_scope"] = json!("files:delete");
    inp["authority_policy"] = json!({TD: "files:read"});
    f.add(
        "scope-not-granted-before-authority-scope-denied",
        "files:delete is neither in the chain's scope nor in the policy's patterns: A2 (scope_not_granted) runs before A3.",
        inp,
        err("scope_not_granted", None),
    );
    for (id, desc, enforced, amounts, expected) in [
        (
            "requested-amount-unsupported-limit",
            "A request for an amount of max_tokens, a limit this verifier does not enforce.",
            json!(["max_calls"]),
            json!({"max_tokens": 1}),
            err("unsupported_limit", None),
        ),
        (
            "requested-amount-enforced-limit-not-in-chain",
            "An amount of max_tokens, enforced here but not limited by the chain: not constrained.",
            json!(["max_calls", "max_tokens"]),
            json!({"max_tokens": 1_000_000}),
            ok_auth.clone(),
        ),
        (
            "requested-amounts-name-order-exceeded-first",
            "max_calls over its ceiling and max_tokens not enforced: names are checked in byte order, max_calls first.",
            json!(["max_calls"]),
            json!({"max_calls": 11, "max_tokens": 1}),
            err("limit_exceeded", None),
        ),
        (
            "requested-amounts-name-order-unsupported-first",
            "calls_total not enforced and max_calls over its ceiling: calls_total sorts first.",
            json!(["max_calls"]),
            json!({"calls_total": 1, "max_calls": 11}),
            err("unsupported_limit", None),
        ),
    ] {
        let mut inp = cin(k, &ch_auth);
        inp["enforced_limits"] = enforced;
        inp["requested_scope"] = json!("files:read");
        inp["requested_amounts"] = amounts;
        f.add(id, desc, inp, expected);
    }

    f
}

// ------------------------------------------------------------------------------------------------
// proofs.json
// ------------------------------------------------------------------------------------------------

fn exporter(label: &str) -> [u8; 32] {
    sha256(format!("agentid vector exporter {label}").as_bytes())
}

fn proofs(k: &Keys) -> File {
    let mut f = File::default();
    let ec = exporter("client");
    let es = exporter("server");
    let jti = b64(&sha256(b"client proof jti")[..16]);
    let client_claims = json!({"sub": id("coder"), "aud": VERIFIER, "iat": NOW - 5, "exp": NOW + 25, "jti": jti, "cb": b64(&ec)});
    let client = |c: &Value| sign_t(k.t("coder"), &proof_header(k.t("coder")), c);
    let pin = |compact: &str, role: &str, exp: &[u8; 32]| {
        let mut i = input(k, None, "coder");
        i["proof"] = json!({"compact": compact, "role": role, "exporter": b64(exp)});
        i
    };
    let cp = client(&client_claims);
    f.add(
        "proof-client-valid",
        "A client's hop proof without a chain.",
        pin(&cp, "client", &ec),
        json!({"valid": true, "proof_jti": jti}),
    );

    let mut c = |id: &str, desc: &str, change: &dyn Fn(&mut Value), code: &str| {
        let mut claims = client_claims.clone();
        change(&mut claims);
        f.add(
            id,
            desc,
            pin(&client(&claims), "client", &ec),
            err(code, None),
        );
    };
    c(
        "proof-replayed-other-connection",
        "A proof made for another connection (another exporter value).",
        &|p| p["cb"] = json!(b64(&exporter("another connection"))),
        "channel_binding_mismatch",
    );
    c(
        "proof-wrong-role-context",
        "A client proof whose cb was computed with the `server` context.",
        &|p| p["cb"] = json!(b64(&es)),
        "channel_binding_mismatch",
    );
    c(
        "proof-wrong-aud",
        "A proof addressed to another service.",
        &|p| p["aud"] = json!(OTHER_SVC),
        "audience_mismatch",
    );
    c(
        "proof-wrong-sub",
        "A proof naming another presenter.",
        &|p| p["sub"] = json!(id("mallory")),
        "holder_mismatch",
    );
    c(
        "proof-cth-without-chain",
        "`cth` present but no chain sent.",
        &|p| p["cth"] = json!(b64(&sha256(b"some chain"))),
        "chain_hash_mismatch",
    );
    c(
        "proof-expired",
        "now = exp + skew.",
        &|p| {
            p["iat"] = json!(NOW - 120);
            p["exp"] = json!(NOW - 60);
        },
        "expired",
    );
    c(
        "proof-lifetime-61",
        "A proof living 61 seconds.",
        &|p| {
            p["iat"] = json!(NOW - 10);
            p["exp"] = json!(NOW + 51);
        },
        "lifetime_exceeded",
    );
    c(
        "proof-issued-in-future",
        "iat = now + skew + 1.",
        &|p| {
            p["iat"] = json!(NOW + 61);
            p["exp"] = json!(NOW + 90);
        },
        "issued_in_future",
    );
    c(
        "proof-iat-equals-exp",
        "iat = exp.",
        &|p| p["exp"] = json!(NOW - 5),
        "bad_validity",
    );
    c(
        "proof-short-jti",
        "A jti of 8 bytes.",
        &|p| p["jti"] = json!(b64(&[9u8; 8])),
        "bad_claim",
    );
    c(
        "proof-unknown-claim",
        "A proof with `nbf`.",
        &|p| p["nbf"] = json!(NOW - 5),
        "unknown_claim",
    );
    c(
        "proof-rth-in-client-proof",
        "A client proof carrying `rth`.",
        &|p| p["rth"] = json!(b64(&[1u8; 32])),
        "unknown_claim",
    );
    c(
        "proof-missing-cb",
        "A proof without cb.",
        &|p| {
            p.as_object_mut().unwrap().remove("cb");
        },
        "missing_claim",
    );
    c(
        "proof-float-iat",
        "A proof with a fractional iat.",
        &|p| p["iat"] = json!((NOW - 5) as f64),
        "bad_claim",
    );

    let mut hc = |id: &str, desc: &str, key: &TaskKey, header: Value, code: &str| {
        let tok = sign_t(key, &header, &client_claims);
        f.add(id, desc, pin(&tok, "client", &ec), err(code, None));
    };
    let mut h = proof_header(k.t("coder"));
    h["kid"] = json!(k.thumb("coder"));
    hc(
        "proof-kid-header",
        "A proof header with kid.",
        k.t("coder"),
        h,
        "bad_header",
    );
    hc(
        "proof-wrong-key",
        "A proof signed by a key other than the presenter's certificate key.",
        k.t("planner"),
        proof_header(k.t("planner")),
        "bad_signature",
    );
    let mut h = proof_header(k.t("coder"));
    h["typ"] = json!("agentid-link+jwt");
    hc(
        "proof-typ-link",
        "A link-typed token presented as a proof.",
        k.t("coder"),
        h,
        "bad_typ",
    );
    let mut h = proof_header(k.t("coder"));
    h["alg"] = json!("Ed25519");
    hc(
        "proof-alg-mismatch",
        "`alg: Ed25519` with the presenter's P-256 key.",
        k.t("coder"),
        h,
        "alg_mismatch",
    );

    // With a chain.
    let b = base3(k);
    let mut with_cth = client_claims.clone();
    with_cth["cth"] = json!(b64(&sha256(b.s().as_bytes())));
    let mut inp = cin(k, &b);
    inp["proof"] = json!({"compact": client(&with_cth), "role": "client", "exporter": b64(&ec)});
    let mut e = ok(
        &["planner", "researcher", "coder"],
        "files:read",
        &[TD_ID],
        L_IAT,
        L_EXP,
        "g-planner",
    );
    e["proof_jti"] = json!(jti);
    f.add(
        "proof-with-chain-valid",
        "A client proof bound to the chain sent with it (cth).",
        inp,
        e,
    );
    let mut other_cth = client_claims.clone();
    other_cth["cth"] = json!(b64(&sha256(base2(k).s().as_bytes())));
    let mut inp = cin(k, &b);
    inp["proof"] = json!({"compact": client(&other_cth), "role": "client", "exporter": b64(&ec)});
    f.add(
        "proof-cth-mismatch",
        "A proof bound to another chain.",
        inp,
        err("chain_hash_mismatch", None),
    );
    // Review additions (PROTOCOL.md section 12, P9 and P4).
    let oversized = format!("{}~{}", b.s(), "A".repeat(65536));
    let mut big_cth = client_claims.clone();
    big_cth["cth"] = json!(b64(&sha256(oversized.as_bytes())));
    let mut inp = cin(k, &b);
    inp["chain"] = json!(oversized);
    inp["proof"] = json!({"compact": client(&big_cth), "role": "client", "exporter": b64(&ec)});
    f.add(
        "proof-cth-oversized-chain",
        "A proof whose cth is the hash of the chain sent with it, a chain over 65536 bytes: P9 fails before the chain's own chain_too_large.",
        inp,
        err("chain_hash_mismatch", None),
    );
    let mut long_jti = client_claims.clone();
    long_jti["jti"] = json!("A".repeat(260));
    f.add(
        "proof-jti-too-long",
        "A proof whose jti is 260 base64url characters (at most 256).",
        pin(&client(&long_jti), "client", &ec),
        err("bad_claim", None),
    );
    let mut aud_array = client_claims.clone();
    aud_array["aud"] = json!([VERIFIER]);
    f.add(
        "proof-aud-array",
        "A proof whose aud is an array holding the verifier's ID (a proof's aud is a single string).",
        pin(&client(&aud_array), "client", &ec),
        err("bad_claim", None),
    );
    let mut inp = cin(k, &b);
    inp["proof"] = json!({"compact": cp.clone(), "role": "client", "exporter": b64(&ec)});
    f.add(
        "proof-cth-missing",
        "A chain sent with a proof that has no cth.",
        inp,
        err("chain_hash_mismatch", None),
    );

    // Server proofs: the presenter is the server, the verifier the client (coder).
    let server_claims = |presenter: &str, rth: &str| {
        json!({"sub": id(presenter), "aud": id("coder"), "iat": NOW - 4, "exp": NOW + 26,
            "jti": b64(&sha256(format!("server proof jti {presenter}").as_bytes())[..16]), "cb": b64(&es), "rth": rth})
    };
    let rth = b64(&sha256(cp.as_bytes()));
    let spin = |presenter: &str, compact: &str, exp: &[u8; 32]| {
        let mut i = input(k, None, presenter);
        i["verifier_id"] = json!(id("coder"));
        i["proof"] =
            json!({"compact": compact, "role": "server", "exporter": b64(exp), "client_proof": cp});
        i
    };
    for (presenter, name) in [("files", "es256-service"), ("researcher", "ed25519-agent")] {
        let claims = server_claims(presenter, &rth);
        let tok = sign_t(k.t(presenter), &proof_header(k.t(presenter)), &claims);
        f.add(
            &format!("proof-server-valid-{name}"),
            "A server's hop proof answering the client proof (rth).",
            spin(presenter, &tok, &es),
            json!({"valid": true, "proof_jti": claims["jti"]}),
        );
    }
    let tok = sign_t(
        k.t("files"),
        &proof_header(k.t("files")),
        &server_claims("files", &b64(&sha256(b"another client proof"))),
    );
    f.add(
        "proof-rth-mismatch",
        "A server proof answering another client proof.",
        spin("files", &tok, &es),
        err("response_hash_mismatch", None),
    );
    let mut no_rth = server_claims("files", &rth);
    no_rth.as_object_mut().unwrap().remove("rth");
    let tok = sign_t(k.t("files"), &proof_header(k.t("files")), &no_rth);
    f.add(
        "proof-server-missing-rth",
        "A server proof without rth.",
        spin("files", &tok, &es),
        err("missing_claim", None),
    );
    let mut inp = pin(&cp, "server", &es);
    inp["proof"]["client_proof"] = json!(cp);
    f.add(
        "proof-client-proof-as-server",
        "The client's own proof reflected as if it were the server's: role server requires rth.",
        inp,
        err("missing_claim", None),
    );
    let tok = sign_t(
        k.t("files"),
        &proof_header(k.t("files")),
        &server_claims("files", &rth),
    );
    let mut i = input(k, None, "files");
    i["verifier_id"] = json!(id("coder"));
    i["proof"] = json!({"compact": tok, "role": "client", "exporter": b64(&ec)});
    f.add(
        "proof-server-proof-as-client",
        "A server proof presented in the client role: rth is unknown there.",
        i,
        err("unknown_claim", None),
    );
    // P4: `sub` is checked completely (type, syntax, kind) before `aud`.
    let mut claims = client_claims.clone();
    claims["sub"] = json!(agent("coder"));
    claims["aud"] = json!(42);
    f.add(
        "proof-sub-bad-kind-before-aud-type",
        "`sub` an agent ID (bad_id) and `aud` a number (bad_claim): sub is checked first.",
        pin(&client(&claims), "client", &ec),
        err("bad_id", None),
    );
    let mut claims = client_claims.clone();
    claims["sub"] = json!(42);
    claims["aud"] = json!("SPIFFE://example.org/svc/files");
    f.add(
        "proof-sub-type-before-aud-id",
        "`sub` a number (bad_claim) and `aud` an invalid ID (bad_id): sub is checked first.",
        pin(&client(&claims), "client", &ec),
        err("bad_claim", None),
    );
    // P10: a server proof verified without the client proof is a caller error, at P10.
    let claims = server_claims("files", &rth);
    let tok = sign_t(k.t("files"), &proof_header(k.t("files")), &claims);
    let mut inp = spin("files", &tok, &es);
    inp["proof"]["client_proof"] = Value::Null;
    f.add(
        "proof-server-without-client-proof",
        "A valid server proof verified without the client proof: bad_config at P10.",
        inp,
        err("bad_config", None),
    );
    let mut inp = spin("files", &tok, &exporter("another connection"));
    inp["proof"]["client_proof"] = Value::Null;
    f.add(
        "proof-server-without-client-proof-wrong-cb",
        "The same without the client proof, on another connection: P8 fails before P10.",
        inp,
        err("channel_binding_mismatch", None),
    );
    // The vector format: `client_proof` only with role server.
    let mut inp = pin(&cp, "client", &ec);
    inp["proof"]["client_proof"] = json!(cp);
    f.add(
        "proof-client-role-with-client-proof",
        "A client-role proof input carrying `client_proof`: not the vector format.",
        inp,
        err("bad_config", None),
    );
    let mut inp = pin(&cp, "client", &ec);
    inp["proof"]["client_proof"] = Value::Null;
    f.add(
        "proof-client-role-client-proof-null",
        "A client-role proof input with `client_proof: null` (allowed).",
        inp,
        json!({"valid": true, "proof_jti": jti}),
    );

    f
}

// ------------------------------------------------------------------------------------------------
// inputs.json
// ------------------------------------------------------------------------------------------------

/// The vector input format (spec/README.md) and configuration processing (PROTOCOL.md
/// section 9): integer ranges, the order of format, bundle and list errors, peers, policies.
fn inputs(k: &Keys) -> File {
    const MAX_SAFE: u64 = (1 << 53) - 1;
    let mut f = File::default();
    let g = Ch::grant(k, "planner", "files:read", |_| {});
    let ok1 = ok(
        &["planner"],
        "files:read",
        &[TD_ID],
        G_IAT,
        G_EXP,
        "g-planner",
    );
    let mut c = |id: &str, desc: &str, change: &dyn Fn(&mut Value), expected: Value| {
        let mut inp = cin(k, &g);
        change(&mut inp);
        f.add(id, desc, inp, expected);
    };
    // Integers of section 3.3: now, skew, requested amounts.
    c(
        "input-now-max-safe-integer",
        "now = 2^53 - 1 is an integer (and every token has expired by then).",
        &|i| i["now"] = json!(MAX_SAFE),
        err("expired", Some(0)),
    );
    c(
        "input-now-above-max-safe-integer",
        "now = 2^53: not an integer of section 3.3.",
        &|i| i["now"] = json!(MAX_SAFE + 1),
        err("bad_config", None),
    );
    c(
        "input-now-negative",
        "now = -1.",
        &|i| i["now"] = json!(-1),
        err("bad_config", None),
    );
    c(
        "input-now-fraction",
        "now written as 1767225600.0.",
        &|i| i["now"] = json!(NOW as f64),
        err("bad_config", None),
    );
    c(
        "input-skew-negative",
        "skew = -5: not an integer of section 3.3 (it would shrink every window).",
        &|i| i["skew"] = json!(-5),
        err("bad_config", None),
    );
    c(
        "input-skew-120",
        "skew = 120, the largest allowed.",
        &|i| i["skew"] = json!(120),
        ok1.clone(),
    );
    let with_amount = |i: &mut Value, amount: Value| {
        i["enforced_limits"] = json!(["max_calls"]);
        i["requested_scope"] = json!("files:read");
        i["requested_amounts"] = json!({ "max_calls": amount });
    };
    c(
        "input-amount-max-safe-integer",
        "A requested amount of 2^53 - 1 for an enforced limit the chain does not constrain.",
        &|i| with_amount(i, json!(MAX_SAFE)),
        ok1.clone(),
    );
    c(
        "input-amount-above-max-safe-integer",
        "A requested amount of 2^53.",
        &|i| with_amount(i, json!(MAX_SAFE + 1)),
        err("bad_config", None),
    );
    c(
        "input-amount-negative",
        "A requested amount of -1.",
        &|i| with_amount(i, json!(-1)),
        err("bad_config", None),
    );
    c(
        "input-amount-fraction",
        "A requested amount of 1.5.",
        &|i| with_amount(i, json!(1.5)),
        err("bad_config", None),
    );
    // requested_amounts without a requested scope: not used (no authorization runs), but its
    // format is still checked.
    c(
        "input-amounts-without-scope-ignored",
        "requested_amounts for a limit nobody enforces, with requested_scope null: not used.",
        &|i| i["requested_amounts"] = json!({"max_calls": 5}),
        ok1.clone(),
    );
    c(
        "input-amounts-null",
        "requested_amounts null with a requested scope: no amounts.",
        &|i| {
            i["requested_scope"] = json!("files:read");
            i["requested_amounts"] = Value::Null;
        },
        ok1.clone(),
    );
    c(
        "input-amounts-malformed-without-scope",
        "requested_amounts with a string amount, requested_scope null: still a format error.",
        &|i| i["requested_amounts"] = json!({"max_calls": "5"}),
        err("bad_config", None),
    );
    // Bundles given as JSON values.
    c(
        "bundle-string",
        "A bundle given as a JSON string: not a bundle (section 8: a top-level object).",
        &|i| i["bundles"][TD] = json!(serde_json::to_string(&bundle_ex(k)).unwrap()),
        err("bad_bundle", None),
    );
    c(
        "bundle-array",
        "A bundle given as a JSON array.",
        &|i| i["bundles"][TD] = json!([]),
        err("bad_bundle", None),
    );
    c(
        "bundle-name-invalid",
        "A bundle keyed by `Example.org` (uppercase): the name binds the bundle to a trust domain, so bad_config.",
        &|i| i["bundles"]["Example.org"] = bundle_ex(k),
        err("bad_config", None),
    );
    c(
        "bundle-name-invalid-beats-bad-bundle",
        "example.org's bundle is an array and another bundle is keyed `zzz.example:443`: the format is checked first.",
        &|i| {
            i["bundles"][TD] = json!([]);
            i["bundles"]["zzz.example:443"] = bundle_partner(k);
        },
        err("bad_config", None),
    );
    let nested = |arrays: usize| {
        let mut v = json!(0);
        for _ in 0..arrays {
            v = json!([v]);
        }
        v
    };
    c(
        "bundle-depth-8",
        "A bundle whose ignored jwt-svid entry nests arrays down to depth 8 (the bundle object is depth 1).",
        &|i| {
            i["bundles"][TD]["keys"]
                .as_array_mut()
                .unwrap()
                .push(json!({"use": "jwt-svid", "kty": "EC", "x": nested(5)}));
        },
        ok1.clone(),
    );
    c(
        "bundle-depth-9",
        "The same entry nesting one array deeper (depth 9): not I-JSON.",
        &|i| {
            i["bundles"][TD]["keys"]
                .as_array_mut()
                .unwrap()
                .push(json!({"use": "jwt-svid", "kty": "EC", "x": nested(6)}));
        },
        err("bad_bundle", None),
    );
    // Order: format, then C1, C2, C3.
    c(
        "input-peer-invalid-beats-bad-bundle",
        "An agent-ID peer (not the format) and a bundle that is an array: the format is checked first.",
        &|i| {
            i["bundles"][TD] = json!([]);
            i["peer"]["id"] = json!(agent("planner"));
        },
        err("bad_config", None),
    );
    c(
        "input-skew-beats-bad-bundle",
        "skew 121 (C1) and a bundle that is an array (C2).",
        &|i| {
            i["bundles"][TD] = json!([]);
            i["skew"] = json!(121);
        },
        err("bad_config", None),
    );
    c(
        "input-bad-bundle-beats-bad-list",
        "A bundle that is an array (C2) and a revocation list that is not a token (C3).",
        &|i| {
            i["bundles"][TD] = json!([]);
            i["revocation_lists"] = json!(["not a token"]);
        },
        err("bad_bundle", None),
    );
    c(
        "input-bad-list-beats-chain",
        "A revocation list that is not a token (C3) and a chain that is not a chain.",
        &|i| {
            i["revocation_lists"] = json!(["not a token"]);
            i["chain"] = json!("~");
        },
        err("bad_revocation_list", None),
    );
    // The peer: a task identity or service ID with a JWK of section 5.1 (alg included).
    c(
        "peer-jwk-without-alg",
        "The peer's JWK without `alg`: section 5.1 requires it, even for a certificate key.",
        &|i| {
            i["peer"]["jwk"].as_object_mut().unwrap().remove("alg");
        },
        err("bad_config", None),
    );
    let mut p = |id: &str, desc: &str, peer: &str| {
        let mut inp = input(k, None, "planner");
        inp["peer"]["id"] = json!(peer);
        f.add(id, desc, inp, err("bad_config", None));
    };
    p(
        "peer-agent-id",
        "A peer without a chain whose ID is an agent ID: no X509-SVID carries one (section 15.2).",
        &agent("planner"),
    );
    p(
        "peer-other-kind",
        "A peer whose ID is of kind \"other\".",
        "spiffe://example.org/workload/x",
    );
    p(
        "peer-trust-domain-dotdot",
        "A peer in the trust domain `..`: not a valid SPIFFE ID.",
        &format!("spiffe://../agent/planner/task/{TASK}"),
    );
    // authority_policy {}: no accepted authority.
    let mut inp = cin(k, &g);
    inp["authority_policy"] = json!({});
    f.add(
        "authority-policy-empty",
        "authority_policy {} accepts no authority at all (absent or null is the default).",
        inp,
        err("authority_not_accepted", Some(0)),
    );
    // C1 (PROTOCOL.md section 9): policy patterns and enforced limit names are checked.
    let mut inp = cin(k, &g);
    inp["authority_policy"] = json!({TD: "files:*:read"});
    f.add(
        "authority-policy-invalid-pattern",
        "An authority policy whose pattern set `files:*:read` is not a scope set.",
        inp,
        err("bad_config", None),
    );
    let mut inp = cin(k, &g);
    inp["enforced_limits"] = json!(["Max_Calls"]);
    f.add(
        "enforced-limit-invalid-name",
        "An enforced limit name with uppercase letters (names are a-z, 0-9, _, ., -).",
        inp,
        err("bad_config", None),
    );
    f
}

// ------------------------------------------------------------------------------------------------
// main
// ------------------------------------------------------------------------------------------------

// ------------------------------------------------------------------------------------------------
// Rules that had no vector: size caps (3.4), DER ES256 signatures (4.3), lengths of `prev`, `cb`,
// `cth`, `rth` and `jkt` (6.2, 6.4, 14.1 R7), trust bundle content (8), revocation list framing
// and header (14.1 R1, R2) and the order of phase 5 against the other phases (10).
// ------------------------------------------------------------------------------------------------

/// The length of the unpadded base64url encoding of `n` bytes.
fn b64_len(n: usize) -> usize {
    (4 * n).div_ceil(3)
}

/// A token whose compact serialization is exactly `len` bytes, with a 64-byte signature: JSON
/// whitespace (section 3.2) is appended to the payload and, when the payload part would need a
/// length L with L mod 4 = 1 (which no base64url part has), one space to the header. `sign` signs
/// the raw header and payload bytes.
fn token_of_len(
    len: usize,
    header: &Value,
    claims: &Value,
    sign: &dyn Fn(&[u8], &[u8]) -> String,
) -> String {
    let base_h = to_vec(header);
    let base_p = to_vec(claims);
    for h_pad in 0..2 {
        let mut h = base_h.clone();
        h.extend(std::iter::repeat_n(b' ', h_pad));
        let fixed = b64_len(h.len()) + 2 + b64_len(64);
        let Some(target) = len.checked_sub(fixed) else {
            continue;
        };
        for p_pad in 0..4 {
            let n = target * 3 / 4 + p_pad;
            if n < base_p.len() || b64_len(n) != target {
                continue;
            }
            let mut p = base_p.clone();
            p.extend(std::iter::repeat_n(b' ', n - base_p.len()));
            let tok = sign(&h, &p);
            assert_eq!(tok.len(), len);
            return tok;
        }
    }
    unreachable!("no token of {len} bytes");
}

/// DER (`SEQUENCE { INTEGER r, INTEGER s }`) of a 64-byte `r || s` signature.
fn der_of(raw: &[u8]) -> Vec<u8> {
    let int = |x: &[u8]| {
        let mut v: Vec<u8> = x.iter().copied().skip_while(|b| *b == 0).collect();
        if v.first().is_none_or(|b| b & 0x80 != 0) {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, u8::try_from(v.len()).unwrap()];
        out.extend(v);
        out
    };
    let mut body = int(&raw[..32]);
    body.extend(int(&raw[32..]));
    let mut out = vec![0x30, u8::try_from(body.len()).unwrap()];
    out.extend(body);
    out
}

/// Signs with `sign` until the ES256 signature's DER form is 70 bytes (r and s both 32 bytes
/// with the high bit clear), and returns the token and that DER signature.
fn es256_with_der_70(sign: &dyn Fn() -> String) -> (String, Vec<u8>) {
    loop {
        let tok = sign();
        let raw = unb64(tok.rsplit_once('.').unwrap().1);
        assert_eq!(raw.len(), 64);
        let der = der_of(&raw);
        if der.len() == 70 {
            return (tok, der);
        }
    }
}

fn with_signature(tok: &str, sig: &[u8]) -> String {
    format!("{}.{}", tok.rsplit_once('.').unwrap().0, b64(sig))
}

fn more_framing(k: &Keys, f: &mut File) {
    // 3.4: a chain token is at most 8192 bytes, a chain at most 65536 (PROTOCOL.md 1.1, 1.4.1).
    let grant_of = |len: usize| {
        let signer = k.ges();
        token_of_len(
            len,
            &grant_header(signer),
            &grant_claims(k, "planner", "files:read"),
            &|h, p| sign_with_authority_key(signer, h, p).unwrap(),
        )
    };
    let g = Ch::raw(grant_of(8192), "planner");
    f.add(
        "framing-grant-8192-bytes",
        "A grant of exactly 8192 bytes (its payload ends in JSON whitespace): at the cap, valid.",
        cin(k, &g),
        ok(
            &["planner"],
            "files:read",
            &[TD_ID],
            G_IAT,
            G_EXP,
            "g-planner",
        ),
    );
    let g = Ch::raw(grant_of(8193), "planner");
    f.add(
        "framing-grant-8193-bytes",
        "The same grant at 8193 bytes (one more byte of JSON whitespace), properly signed: token_too_large.",
        cin(k, &g),
        err("token_too_large", Some(0)),
    );
    let g = Ch::grant(k, "planner", "files:*", |_| {});
    let link_of = |len: usize| {
        let key = k.t("planner");
        let tok = token_of_len(
            len,
            &link_header(key),
            &link_claims(k, g.last(), "planner", "researcher", "files:read"),
            &|h, p| sign_with_task_key(key, h, p).unwrap(),
        );
        g.push(tok, "researcher")
    };
    f.add(
        "framing-link-8192-bytes",
        "A link of exactly 8192 bytes: at the cap, valid.",
        cin(k, &link_of(8192)),
        ok(
            &["planner", "researcher"],
            "files:read",
            &[TD_ID],
            L_IAT,
            L_EXP,
            "g-planner",
        ),
    );
    f.add(
        "framing-link-8193-bytes",
        "A properly signed link of 8193 bytes after a valid grant: token_too_large at index 1.",
        cin(k, &link_of(8193)),
        err("token_too_large", Some(1)),
    );
    for (len, id, desc, expected) in [
        (
            65536,
            "framing-chain-65536-bytes",
            "A depth-8 chain (the holders of valid-depth8) of exactly 65536 bytes, every token padded with JSON whitespace: at the cap, valid.",
            ok(
                &[
                    "planner",
                    "researcher",
                    "coder",
                    "reviewer",
                    "tester",
                    "deployer",
                    "auditor",
                    "writer",
                    "summarizer",
                ],
                "files:read",
                &[TD_ID],
                L_IAT,
                L_EXP,
                "g-planner",
            ),
        ),
        (
            65537,
            "framing-chain-65537-bytes",
            "The same chain at 65537 bytes, every token properly signed and within its own cap: chain_too_large.",
            err("chain_too_large", None),
        ),
    ] {
        let ch = big_chain(k, len);
        f.add(id, desc, cin(k, &ch), expected);
    }
}

/// The chain of `depth8` (planner to summarizer) padded to exactly `len` bytes: eight tokens of
/// 7281 bytes and a last one of `len - 8 - 8 * 7281`.
fn big_chain(k: &Keys, len: usize) -> Ch {
    let names = [
        "researcher",
        "coder",
        "reviewer",
        "tester",
        "deployer",
        "auditor",
        "writer",
        "summarizer",
    ];
    let scopes = [
        "files:* tickets:read",
        "files:*",
        "files:read files:write",
        "files:read",
        "files:read",
        "files:read",
        "files:read",
        "files:read",
    ];
    let signer = k.ges();
    let mut ch = Ch::raw(
        token_of_len(
            7281,
            &grant_header(signer),
            &grant_claims(k, "planner", "files:* tickets:*"),
            &|h, p| sign_with_authority_key(signer, h, p).unwrap(),
        ),
        "planner",
    );
    for (i, (n, s)) in names.iter().zip(scopes).enumerate() {
        let from = ch.holder().to_owned();
        let key = k.t(&from);
        let size = if i == 7 { len - 8 - 8 * 7281 } else { 7281 };
        let tok = token_of_len(
            size,
            &link_header(key),
            &link_claims(k, ch.last(), &from, n, s),
            &|h, p| sign_with_task_key(key, h, p).unwrap(),
        );
        ch = ch.push(tok, n);
    }
    assert_eq!(ch.s().len(), len);
    ch
}

fn more_signatures(k: &Keys, f: &mut File) {
    // 4.3: an ES256 signature is 64 bytes r || s; the DER form of the same (r, s) is refused.
    let claims = grant_claims(k, "planner", "files:read");
    let (tok, der) = es256_with_der_70(&|| sign_a(k.ges(), &grant_header(k.ges()), &claims));
    f.add(
        "es256-raw-signature-of-der-pair",
        "A grant with a 64-byte r || s signature whose r and s have the high bit clear (the pair of es256-der-signature): valid.",
        cin(k, &Ch::raw(tok.clone(), "planner")),
        ok(&["planner"], "files:read", &[TD_ID], G_IAT, G_EXP, "g-planner"),
    );
    f.add(
        "es256-der-signature",
        "The same grant with the same (r, s) as a 70-byte DER signature: bad_signature.",
        cin(k, &Ch::raw(with_signature(&tok, &der), "planner")),
        err("bad_signature", Some(0)),
    );
    let mut long = unb64(tok.rsplit_once('.').unwrap().1);
    long.push(0);
    f.add(
        "es256-signature-65-bytes",
        "The same grant's valid 64-byte signature followed by one zero byte: bad_signature.",
        cin(k, &Ch::raw(with_signature(&tok, &long), "planner")),
        err("bad_signature", Some(0)),
    );
    let g = Ch::grant(k, "planner", "files:*", |_| {});
    let lc = link_claims(k, g.last(), "planner", "coder", "files:read");
    let (tok, der) =
        es256_with_der_70(&|| sign_t(k.t("planner"), &link_header(k.t("planner")), &lc));
    f.add(
        "es256-der-signature-link",
        "A link signed by the planner's P-256 key, its signature sent as 70-byte DER: bad_signature at index 1.",
        cin(k, &g.push(with_signature(&tok, &der), "coder")),
        err("bad_signature", Some(1)),
    );

    // Section 8: bundle content rules. Each case changes example.org's bundle of a valid grant.
    let ch = Ch::grant(k, "planner", "files:read", |_| {});
    let good = ok(
        &["planner"],
        "files:read",
        &[TD_ID],
        G_IAT,
        G_EXP,
        "g-planner",
    );
    let mut b = |id: &str, desc: &str, change: &dyn Fn(&mut Value), expected: Value| {
        let mut inp = cin(k, &ch);
        change(&mut inp["bundles"][TD]);
        f.add(id, desc, inp, expected);
    };
    let bad = || err("bad_bundle", None);
    b(
        "bundle-keys-missing",
        "A bundle object without `keys`.",
        &|v| {
            v.as_object_mut().unwrap().remove("keys");
        },
        bad(),
    );
    b(
        "bundle-keys-not-array",
        "A bundle whose `keys` is an object.",
        &|v| v["keys"] = json!({}),
        bad(),
    );
    b(
        "bundle-sequence-absent",
        "A bundle without `spiffe_sequence` (absent means 0): valid.",
        &|v| {
            v.as_object_mut().unwrap().remove("spiffe_sequence");
        },
        good.clone(),
    );
    b(
        "bundle-sequence-max-safe-integer",
        "`spiffe_sequence` = 2^53 - 1, the largest integer of section 3.3: valid.",
        &|v| v["spiffe_sequence"] = json!(9_007_199_254_740_991_u64),
        good.clone(),
    );
    b(
        "bundle-sequence-2-pow-53",
        "`spiffe_sequence` = 2^53, not an integer of section 3.3.",
        &|v| v["spiffe_sequence"] = json!(9_007_199_254_740_992_u64),
        bad(),
    );
    b(
        "bundle-sequence-negative",
        "`spiffe_sequence` = -1.",
        &|v| v["spiffe_sequence"] = json!(-1),
        bad(),
    );
    b(
        "bundle-sequence-string",
        "`spiffe_sequence` given as the string \"1\".",
        &|v| v["spiffe_sequence"] = json!("1"),
        bad(),
    );
    b(
        "bundle-refresh-hint-fraction",
        "`spiffe_refresh_hint` = 300.5.",
        &|v| v["spiffe_refresh_hint"] = json!(300.5),
        bad(),
    );
    b(
        "bundle-unknown-top-level-member-ignored",
        "A bundle with an unknown top-level member (ignored): valid.",
        &|v| v["x-publisher"] = json!({"note": "ignored"}),
        good.clone(),
    );
    b(
        "bundle-entry-not-object",
        "A `keys` element that is a string.",
        &|v| {
            v["keys"]
                .as_array_mut()
                .unwrap()
                .push(json!("agentid-grant"))
        },
        bad(),
    );
    b(
        "bundle-entry-without-use",
        "A `keys` element without `use` (the grant key's entry with `use` removed).",
        &|v| {
            v["keys"][1].as_object_mut().unwrap().remove("use");
        },
        bad(),
    );
    b(
        "bundle-entry-use-not-string",
        "A `keys` element whose `use` is a number.",
        &|v| {
            v["keys"]
                .as_array_mut()
                .unwrap()
                .push(json!({"use": 1, "kty": "OKP"}))
        },
        bad(),
    );
    b(
        "bundle-grant-entry-extra-member",
        "A grant key entry with a member besides kty, crv, x, y, alg, use, kid (`ext`).",
        &|v| v["keys"][0]["ext"] = json!(true),
        bad(),
    );
    b(
        "bundle-grant-entry-missing-kid",
        "A grant key entry without `kid`.",
        &|v| {
            v["keys"][1].as_object_mut().unwrap().remove("kid");
        },
        bad(),
    );
    b(
        "bundle-grant-entry-ed25519-with-y",
        "An Ed25519 grant key entry carrying a `y` member.",
        &|v| v["keys"][1]["y"] = v["keys"][1]["x"].clone(),
        bad(),
    );
    b(
        "bundle-grant-entry-alg-mismatch",
        "The P-256 grant key entry with `alg` Ed25519.",
        &|v| v["keys"][0]["alg"] = json!("Ed25519"),
        bad(),
    );
    b(
        "bundle-grant-entry-alg-eddsa",
        "The Ed25519 grant key entry with `alg` EdDSA (allowed with Ed25519): valid.",
        &|v| v["keys"][1]["alg"] = json!("EdDSA"),
        good.clone(),
    );
    b(
        "bundle-grant-entry-listed-twice",
        "The same grant key entry listed twice under agentid-grant: one kid twice.",
        &|v| {
            let e = v["keys"][0].clone();
            v["keys"].as_array_mut().unwrap().push(e);
        },
        bad(),
    );
    b(
        "bundle-x509-entry-x5c-not-array",
        "An x509-svid entry whose `x5c` is a string, not an array of one string.",
        &|v| {
            v["keys"]
                .as_array_mut()
                .unwrap()
                .push(json!({"use": "x509-svid", "kty": "EC", "x5c": "MAA="}))
        },
        bad(),
    );
    b(
        "bundle-x509-entry-x5c-empty",
        "An x509-svid entry whose `x5c` is an empty array.",
        &|v| {
            v["keys"]
                .as_array_mut()
                .unwrap()
                .push(json!({"use": "x509-svid", "kty": "EC", "x5c": []}))
        },
        bad(),
    );
    b(
        "bundle-x509-entry-not-der",
        "An x509-svid entry whose one `x5c` string is canonical base64 of bytes that are not a DER certificate.",
        &|v| {
            v["keys"].as_array_mut().unwrap().push(
                json!({"use": "x509-svid", "kty": "EC", "x5c": ["bm90IGEgY2VydGlmaWNhdGU="]}),
            )
        },
        bad(),
    );
    let mut inp = cin(k, &ch);
    inp["bundles"][PTD] = json!({"keys": []});
    f.add(
        "bundle-partner-empty-keys",
        "partner.example's bundle has an empty `keys` array (allowed); the chain does not involve it: valid.",
        inp,
        good.clone(),
    );
    // Section 8 and C2: a bundle that replaces a held one (the vectors' `bundle_updates`). The
    // held bundle of example.org has `spiffe_sequence` 1; each update is a copy of it with a
    // sequence and, for the replacements, without the grant key: a replacement is seen by the
    // grant's signature check failing (untrusted_authority), a refused update by the error.
    let update = |seq: u64, without_grant_key: bool| {
        let mut inp = cin(k, &ch);
        let mut b = inp["bundles"][TD].clone();
        assert_eq!(b["spiffe_sequence"], json!(1));
        b["spiffe_sequence"] = json!(seq);
        if without_grant_key {
            b["keys"]
                .as_array_mut()
                .unwrap()
                .retain(|e| e["kid"] != inp["bundles"][TD]["keys"][0]["kid"]);
            assert_eq!(inp["bundles"][TD]["keys"][0]["use"], "agentid-grant");
        }
        inp["bundle_updates"] = json!([{"trust_domain": TD, "bundle": b}]);
        inp
    };
    f.add(
        "bundle-update-sequence-rollback",
        "example.org's bundle (spiffe_sequence 1) is held; an update with spiffe_sequence 0 is refused and the held bundle stays.",
        update(0, true),
        err("sequence_rollback", None),
    );
    f.add(
        "bundle-update-equal-sequence-replaces",
        "An update with the held spiffe_sequence 1 that drops the grant key replaces the held bundle: the grant's key is no longer trusted.",
        update(1, true),
        err("untrusted_authority", Some(0)),
    );
    f.add(
        "bundle-update-higher-sequence-replaces",
        "An update with spiffe_sequence 2 that drops the grant key replaces the held bundle: the grant's key is no longer trusted.",
        update(2, true),
        err("untrusted_authority", Some(0)),
    );
    f.add(
        "bundle-update-higher-sequence-same-keys",
        "An update with spiffe_sequence 2 and the same keys: valid.",
        update(2, false),
        good.clone(),
    );
    // Section 8 and step 3.a.1: a kid the own bundle holds names the own domain's key under
    // either use. partner.example's bundle (held first) lists a key as its grant key; example.org's
    // update then lists the same key as its own revocation key (an own bundle is never refused).
    // A partner grant signed with it no longer finds a grant key: the kid is ours now.
    {
        let pch = Ch::grant_by(k.pgrant(), k, "broker", "tickets:read", |c| {
            c["iss"] = json!(PTD_ID);
            c["aud"] = json!([VERIFIER]);
        });
        let mut inp = with_partner(k, cin(k, &pch));
        inp["authority_policy"] = json!({TD: "*", PTD: "tickets:*"});
        inp["requested_scope"] = json!("tickets:read");
        let mut own = inp["bundles"][TD].clone();
        own["spiffe_sequence"] = json!(2);
        let entry = bundle_value(
            &TrustBundle::new(td(TD), 1).add_revocation_key(k.pgrant().public_key().clone()),
        )["keys"][0]
            .clone();
        assert_eq!(entry["use"], "agentid-revocation");
        own["keys"].as_array_mut().unwrap().push(entry);
        inp["bundle_updates"] = json!([{"trust_domain": TD, "bundle": own}]);
        f.add(
            "bundle-update-own-key-under-other-use-shadows-partner-grant-key",
            "partner.example's bundle lists a grant key; an update of example.org's bundle then lists the same key as its revocation key: a kid the own bundle holds under either use is the own domain's, so the partner's grant signed with it finds no grant key.",
            inp,
            err("untrusted_authority", Some(0)),
        );
    }
    let mut b = |id: &str, desc: &str, change: &dyn Fn(&mut Value), expected: Value| {
        let mut inp = cin(k, &ch);
        change(&mut inp["bundles"][TD]);
        f.add(id, desc, inp, expected);
    };
    // Section 8: an x509-svid entry's `x5c` is one string of standard base64 (with padding) of
    // one DER certificate.
    let entry = |x5c: Value| json!({"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": X509_CA_X, "y": X509_CA_Y, "x5c": x5c});
    b(
        "bundle-x509-entry-valid",
        "An x509-svid entry holding a real self-signed P-256 CA certificate in standard base64: valid.",
        &|v| v["keys"].as_array_mut().unwrap().push(entry(json!([X509_CA_CERT]))),
        good,
    );
    b(
        "bundle-x509-entry-two-certificates",
        "The same x509-svid entry with the certificate twice in `x5c` (exactly one is allowed).",
        &|v| {
            v["keys"]
                .as_array_mut()
                .unwrap()
                .push(entry(json!([X509_CA_CERT, X509_CA_CERT])))
        },
        bad(),
    );
    b(
        "bundle-x509-entry-base64url",
        "The same certificate in base64url without padding (x5c is standard base64 with padding, RFC 7517 section 4.7).",
        &|v| {
            let der = base64::engine::general_purpose::STANDARD.decode(X509_CA_CERT).unwrap();
            v["keys"].as_array_mut().unwrap().push(entry(json!([b64(&der)])))
        },
        bad(),
    );
    b(
        "bundle-x509-entry-without-kty",
        "The valid x509-svid entry without `kty`.",
        &|v| {
            let mut e = entry(json!([X509_CA_CERT]));
            e.as_object_mut().unwrap().remove("kty");
            v["keys"].as_array_mut().unwrap().push(e)
        },
        bad(),
    );
    b(
        "bundle-x509-entry-empty-sequences",
        "An x509-svid entry whose `x5c` decodes to `30 02 30 00` (a DER SEQUENCE holding an empty SEQUENCE): the outer shape of a certificate, but no certificate.",
        &|v| v["keys"].as_array_mut().unwrap().push(entry(json!(["MAIwAA=="]))),
        bad(),
    );
    b(
        "bundle-x509-entry-certificate-without-signature",
        "An x509-svid entry holding the valid certificate's tbsCertificate and signatureAlgorithm re-wrapped without its signatureValue: not a certificate.",
        &|v| {
            let der = base64::engine::general_purpose::STANDARD.decode(X509_CA_CERT).unwrap();
            // The certificate is 30 82 LL LL || tbs || alg || sig; drop the final BIT STRING.
            let body = &der[4..];
            let tbs_len = 4 + (usize::from(body[2]) << 8 | usize::from(body[3]));
            let alg_len = 2 + usize::from(body[tbs_len + 1]);
            let kept = &body[..tbs_len + alg_len];
            let mut cut = vec![0x30, 0x82, (kept.len() >> 8) as u8, kept.len() as u8];
            cut.extend(kept);
            v["keys"].as_array_mut().unwrap().push(entry(json!([base64::engine::general_purpose::STANDARD.encode(cut)])))
        },
        bad(),
    );
    let ch = Ch::grant_by(k.ged(), k, "researcher", "files:read", |_| {});
    let mut long = unb64(ch.last().rsplit_once('.').unwrap().1);
    long.push(0);
    f.add(
        "ed25519-signature-65-bytes",
        "An Ed25519 grant's valid 64-byte signature followed by one zero byte: bad_signature.",
        input(
            k,
            Some(&Ch::raw(with_signature(ch.last(), &long), "researcher")),
            "researcher",
        ),
        err("bad_signature", Some(0)),
    );
}

fn more_claims(k: &Keys, f: &mut File) {
    let g = Ch::grant(k, "planner", "files:*", |_| {});
    let ch = g.link(k, "researcher", "files:read", |c| {
        let mut p = unb64(c["prev"].as_str().unwrap());
        p.push(0);
        c["prev"] = json!(b64(&p));
    });
    f.add(
        "link-prev-33-bytes",
        "A link whose `prev` is the right SHA-256 followed by one zero byte (33 bytes): bad_claim, not prev_mismatch.",
        cin(k, &ch),
        err("bad_claim", Some(1)),
    );
    let ch = g.link(k, "researcher", "files:read", |c| {
        let p = unb64(c["prev"].as_str().unwrap());
        c["prev"] = json!(b64(&p[..31]));
    });
    f.add(
        "link-prev-31-bytes-prefix",
        "A link whose `prev` is the first 31 bytes of the right SHA-256: bad_claim.",
        cin(k, &ch),
        err("bad_claim", Some(1)),
    );
}

fn more_time(k: &Keys, f: &mut File) {
    let grant = |iat: u64, nbf: u64, exp: u64| {
        Ch::grant(k, "planner", "files:read", |c| {
            c["iat"] = json!(iat);
            c["nbf"] = json!(nbf);
            c["exp"] = json!(exp);
        })
    };
    f.add(
        "time-order-bad-validity-before-lifetime",
        "A grant with nbf > exp and a lifetime over 24 h: 5.1 (bad_validity) comes before 5.2.",
        cin(k, &grant(NOW - 100_000, NOW + 10, NOW + 5)),
        err("bad_validity", Some(0)),
    );
    f.add(
        "time-order-lifetime-before-issued-in-future",
        "A grant living 24 h + 1 s whose iat = now + skew + 1: 5.2 (lifetime_exceeded) comes before 5.3.",
        cin(k, &grant(NOW + 61, NOW + 61, NOW + 61 + 86_401)),
        err("lifetime_exceeded", Some(0)),
    );
    f.add(
        "time-order-issued-in-future-before-not-yet-valid",
        "iat = now + skew + 1 and nbf = now + skew + 40: 5.3 (issued_in_future) comes before 5.4.",
        cin(k, &grant(NOW + 61, NOW + 100, NOW + 3600)),
        err("issued_in_future", Some(0)),
    );
    let ch = grant(NOW, NOW + 61, G_EXP).link(k, "researcher", "files:read", |c| {
        c["nbf"] = json!(L_EXP + 1)
    });
    f.add(
        "time-order-per-token",
        "The grant is not yet valid (5.4) and the link has nbf > exp (5.1): phase 5 runs all its checks on token 0 before token 1, so not_yet_valid at 0.",
        cin(k, &ch),
        err("not_yet_valid", Some(0)),
    );
    let ch = grant(NOW - 7200, NOW - 7200, NOW - 3600).link(k, "researcher", "files:read", |c| {
        c["iat"] = json!(NOW - 7000);
        c["nbf"] = json!(NOW - 7000);
        c["exp"] = json!(NOW - 3700);
        c["jti"] = json!("l researcher");
    });
    f.add(
        "time-order-claims-before-time",
        "The grant and the link have expired and the link's jti has a space: phase 3 (link 1) runs before phase 5 (grant).",
        cin(k, &ch),
        err("bad_claim", Some(1)),
    );
    let ch = grant(NOW - 7200, NOW - 7200, NOW - 3600);
    f.add(
        "time-order-time-before-possession",
        "An expired grant presented by another peer (mallory, another key and ID): phase 5 (expired) runs before phase 7.",
        input(k, Some(&ch), "mallory"),
        err("expired", Some(0)),
    );
    let ch = Ch::grant(k, "planner", "files:read", |c| {
        c["iat"] = json!(NOW - 7200);
        c["nbf"] = json!(NOW - 7200);
        c["exp"] = json!(NOW - 3600);
        c["aud"] = json!([OTHER_SVC]);
    });
    f.add(
        "time-order-time-before-audience",
        "An expired grant addressed to another service: phase 5 (expired) runs before phase 8.",
        cin(k, &ch),
        err("expired", Some(0)),
    );
    f.add(
        "valid-nbf-equals-exp",
        "nbf = exp = now (5.1 allows nbf = exp): valid, since now is in [nbf - skew, exp + skew).",
        cin(k, &grant(NOW - 100, NOW, NOW)),
        ok(&["planner"], "files:read", &[TD_ID], NOW, NOW, "g-planner"),
    );
    let mut t0 = |id: &str, desc: &str, ch: Ch, expected: Value| {
        let mut inp = cin(k, &ch);
        inp["skew"] = json!(0);
        f.add(id, desc, inp, expected);
    };
    t0(
        "valid-skew-zero-at-nbf",
        "skew 0 and now = nbf: valid.",
        grant(NOW, NOW, NOW + 600),
        ok(
            &["planner"],
            "files:read",
            &[TD_ID],
            NOW,
            NOW + 600,
            "g-planner",
        ),
    );
    t0(
        "skew-zero-one-second-before-nbf",
        "skew 0 and now = nbf - 1: not yet valid.",
        grant(NOW, NOW + 1, NOW + 600),
        err("not_yet_valid", Some(0)),
    );
    t0(
        "valid-skew-zero-one-second-before-exp",
        "skew 0 and now = exp - 1: valid.",
        grant(NOW - 600, NOW - 600, NOW + 1),
        ok(
            &["planner"],
            "files:read",
            &[TD_ID],
            NOW - 600,
            NOW + 1,
            "g-planner",
        ),
    );
    t0(
        "skew-zero-iat-one-second-ahead",
        "skew 0 and iat = now + 1: issued_in_future.",
        grant(NOW + 1, NOW, NOW + 600),
        err("issued_in_future", Some(0)),
    );
}

fn more_revocation(k: &Keys, f: &mut File) {
    let ch = Ch::grant(k, "planner", "files:read", |_| {});
    let good = ok(
        &["planner"],
        "files:read",
        &[TD_ID],
        G_IAT,
        G_EXP,
        "g-planner",
    );
    let kid = k.rev().public_key().thumbprint();
    let header = json!({"alg": "Ed25519", "typ": "agentid-revocations+jwt", "kid": kid});
    let claims =
        json!({"iss": TD_ID, "seq": 1, "iat": NOW - 60, "next_update": NOW + 540, "entries": []});
    let with_list = |list: String| {
        let mut inp = cin(k, &ch);
        inp["revocation_lists"] = json!([list]);
        inp
    };
    let good_list = sign_a(k.rev(), &header, &claims);
    let (body, sig) = good_list.rsplit_once('.').unwrap();
    let (hb, pb) = body.split_once('.').unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = alphabet.find(sig.chars().last().unwrap()).unwrap();
    let noncanon = format!(
        "{body}.{}{}",
        &sig[..sig.len() - 1],
        alphabet.chars().nth(last | 1).unwrap()
    );
    let mut h_rt = header.clone();
    h_rt["typ"] = json!("Application/AGENTID-REVOCATIONS+JWT");
    let bad = || err("bad_revocation_list", None);
    let raw_header =
        |h: &str| sign_with_authority_key(k.rev(), h.as_bytes(), &to_vec(&claims)).unwrap();
    let signed = |h: Value| sign_a(k.rev(), &h, &claims);
    let cases: Vec<(&str, &str, String, Value)> = vec![
        (
            "revocation-list-two-parts",
            "R1: a list with no signature part.",
            format!("{hb}.{pb}"),
            bad(),
        ),
        (
            "revocation-list-empty-signature",
            "R1: a list whose signature part is empty.",
            format!("{hb}.{pb}."),
            bad(),
        ),
        (
            "revocation-list-four-parts",
            "R1: a valid list followed by a fourth part.",
            format!("{good_list}.AAAA"),
            bad(),
        ),
        (
            "revocation-list-padded-signature",
            "R1: a valid list whose signature part is padded with `==`.",
            format!("{good_list}=="),
            bad(),
        ),
        (
            "revocation-list-noncanonical-trailing-bits",
            "R1: the signature part has non-zero unused trailing bits.",
            noncanon,
            bad(),
        ),
        (
            "revocation-list-header-crit",
            "R2: a header with `crit` besides alg, typ and kid (signed).",
            signed(
                json!({"alg": "Ed25519", "typ": "agentid-revocations+jwt", "kid": kid, "crit": ["exp"]}),
            ),
            bad(),
        ),
        (
            "revocation-list-header-without-kid",
            "R2: a header without `kid` (signed).",
            signed(json!({"alg": "Ed25519", "typ": "agentid-revocations+jwt"})),
            bad(),
        ),
        (
            "revocation-list-header-kid-empty",
            "R2: a header whose `kid` is the empty string (signed).",
            signed(json!({"alg": "Ed25519", "typ": "agentid-revocations+jwt", "kid": ""})),
            bad(),
        ),
        (
            "revocation-list-header-kid-number",
            "R2: a header whose `kid` is a number (signed).",
            signed(json!({"alg": "Ed25519", "typ": "agentid-revocations+jwt", "kid": 1})),
            bad(),
        ),
        (
            "revocation-list-header-typ-missing",
            "R2: a header without `typ` (signed).",
            signed(json!({"alg": "Ed25519", "kid": kid})),
            bad(),
        ),
        (
            "revocation-list-header-alg-none",
            "R2: `alg: none` with a real Ed25519 signature.",
            signed(json!({"alg": "none", "typ": "agentid-revocations+jwt", "kid": kid})),
            bad(),
        ),
        (
            "revocation-list-header-duplicate-member",
            "R2: a header with `typ` twice (the same value), signed over those bytes.",
            raw_header(&format!(
                r#"{{"alg":"Ed25519","kid":"{kid}","typ":"agentid-revocations+jwt","typ":"agentid-revocations+jwt"}}"#
            )),
            bad(),
        ),
        (
            "revocation-list-typ-application-prefix",
            "R2: `typ` Application/AGENTID-REVOCATIONS+JWT matches (section 4.2): valid.",
            signed(h_rt),
            good.clone(),
        ),
    ];
    for (id, desc, list, expected) in cases {
        f.add(id, desc, with_list(list), expected);
    }

    // R1: a list is not held to the 8192-byte cap of chain tokens.
    let far = NOW + 3600;
    let list = list_ex(k, 1, |mut b| {
        for i in 0..200 {
            b = b.revoke_jti(
                &SpiffeId::parse(TD_ID).unwrap(),
                &format!("old-{i:04}"),
                far,
            );
        }
        b
    });
    assert!(list.len() > 8192);
    f.add(
        "revocation-list-larger-than-token-cap",
        "R1: a valid list of more than 8192 bytes (200 token entries; lists are capped at 256 MiB, not at the chain-token cap): valid.",
        with_list(list),
        good,
    );

    // R7: `jkt` is base64url of exactly 32 bytes.
    let thumb = unb64(&k.thumb("planner"));
    let mut long = thumb.clone();
    long.push(0);
    for (id, desc, jkt) in [
        (
            "revocation-entry-jkt-31-bytes",
            "R7: a key entry whose `jkt` is the first 31 bytes of a thumbprint.",
            b64(&thumb[..31]),
        ),
        (
            "revocation-entry-jkt-33-bytes",
            "R7: a key entry whose `jkt` is a thumbprint followed by one zero byte.",
            b64(&long),
        ),
    ] {
        let mut c = claims.clone();
        c["entries"] = json!([{"jkt": jkt, "exp": far}]);
        f.add(id, desc, with_list(sign_a(k.rev(), &header, &c)), bad());
    }
}

fn more_proofs(k: &Keys, f: &mut File) {
    let ec = exporter("client");
    let es = exporter("server");
    let jti = b64(&sha256(b"client proof jti")[..16]);
    let client_claims = json!({"sub": id("coder"), "aud": VERIFIER, "iat": NOW - 5, "exp": NOW + 25, "jti": jti, "cb": b64(&ec)});
    let key = k.t("coder");
    let client = |c: &Value| sign_t(key, &proof_header(key), c);
    let pin = |compact: &str| {
        let mut i = input(k, None, "coder");
        i["proof"] = json!({"compact": compact, "role": "client", "exporter": b64(&ec)});
        i
    };
    let valid = json!({"valid": true, "proof_jti": jti});

    // 3.4: a hop proof is at most 8192 bytes.
    let of_len = |len: usize| {
        token_of_len(len, &proof_header(key), &client_claims, &|h, p| {
            sign_with_task_key(key, h, p).unwrap()
        })
    };
    f.add(
        "proof-8192-bytes",
        "A client proof of exactly 8192 bytes (its payload ends in JSON whitespace): at the cap, valid.",
        pin(&of_len(8192)),
        valid.clone(),
    );
    f.add(
        "proof-8193-bytes",
        "The same proof at 8193 bytes, properly signed: token_too_large.",
        pin(&of_len(8193)),
        err("token_too_large", None),
    );

    // 4.3: DER signature.
    let (tok, der) = es256_with_der_70(&|| client(&client_claims));
    f.add(
        "proof-der-signature",
        "A client proof whose ES256 signature is sent as 70-byte DER: bad_signature.",
        pin(&with_signature(&tok, &der)),
        err("bad_signature", None),
    );

    // 6.4 / P4: cb, cth and rth decode to exactly 32 bytes; a 31-byte prefix or a 33-byte
    // extension of the right value is bad_claim, before the comparisons of P8 to P10.
    let short = |v: &[u8]| b64(&v[..31]);
    let long = |v: &[u8]| {
        let mut x = v.to_vec();
        x.push(0);
        b64(&x)
    };
    for (id, desc, cb) in [
        ("proof-cb-31-bytes", "`cb` is the first 31 bytes of the exporter value: bad_claim, not channel_binding_mismatch.", short(&ec)),
        ("proof-cb-33-bytes", "`cb` is the exporter value followed by one zero byte: bad_claim.", long(&ec)),
    ] {
        let mut c = client_claims.clone();
        c["cb"] = json!(cb);
        f.add(id, desc, pin(&client(&c)), err("bad_claim", None));
    }
    let b = base3(k);
    let cth = sha256(b.s().as_bytes());
    for (id, desc, v) in [
        ("proof-cth-31-bytes", "`cth` is the first 31 bytes of SHA-256 of the chain sent: bad_claim, not chain_hash_mismatch.", short(&cth)),
        ("proof-cth-33-bytes", "`cth` is SHA-256 of the chain sent followed by one zero byte: bad_claim.", long(&cth)),
    ] {
        let mut c = client_claims.clone();
        c["cth"] = json!(v);
        let mut inp = cin(k, &b);
        inp["proof"] = json!({"compact": client(&c), "role": "client", "exporter": b64(&ec)});
        f.add(id, desc, inp, err("bad_claim", None));
    }
    let cp = client(&client_claims);
    let rth = sha256(cp.as_bytes());
    for (case_id, desc, v) in [
        ("proof-rth-31-bytes", "A server proof whose `rth` is the first 31 bytes of SHA-256 of the client proof: bad_claim, not response_hash_mismatch.", short(&rth)),
        ("proof-rth-33-bytes", "A server proof whose `rth` is SHA-256 of the client proof followed by one zero byte: bad_claim.", long(&rth)),
    ] {
        let claims = json!({"sub": id("files"), "aud": id("coder"), "iat": NOW - 4, "exp": NOW + 26,
            "jti": b64(&sha256(b"server proof jti files")[..16]), "cb": b64(&es), "rth": v});
        let tok = sign_t(k.t("files"), &proof_header(k.t("files")), &claims);
        let mut i = input(k, None, "files");
        i["verifier_id"] = json!(id("coder"));
        i["proof"] =
            json!({"compact": tok, "role": "server", "exporter": b64(&es), "client_proof": cp});
        f.add(case_id, desc, i, err("bad_claim", None));
    }

    // P5 boundaries and order.
    let mut t =
        |id: &str, desc: &str, iat: u64, exp: u64, change: &dyn Fn(&mut Value), expected: Value| {
            let mut c = client_claims.clone();
            c["iat"] = json!(iat);
            c["exp"] = json!(exp);
            change(&mut c);
            f.add(id, desc, pin(&client(&c)), expected);
        };
    t(
        "proof-valid-one-second-before-exp-plus-skew",
        "now = exp + skew - 1: valid.",
        NOW - 119,
        NOW - 59,
        &|_| {},
        valid.clone(),
    );
    t(
        "proof-valid-iat-at-now-plus-skew",
        "iat = now + skew: valid.",
        NOW + 60,
        NOW + 90,
        &|_| {},
        valid.clone(),
    );
    t(
        "proof-valid-lifetime-60",
        "A proof living exactly 60 seconds: valid.",
        NOW - 10,
        NOW + 50,
        &|_| {},
        valid.clone(),
    );
    t(
        "proof-time-before-holder",
        "An expired proof (now = exp + skew) naming another presenter: P5 (expired) before P6.",
        NOW - 120,
        NOW - 60,
        &|c| c["sub"] = json!(id("mallory")),
        err("expired", None),
    );
    t(
        "proof-lifetime-before-issued-in-future",
        "A proof living 61 s with iat = now + skew + 1: lifetime_exceeded before issued_in_future.",
        NOW + 61,
        NOW + 122,
        &|_| {},
        err("lifetime_exceeded", None),
    );
    // P9: a chain of exactly 65536 bytes is within the cap, so its cth is compared.
    let big = big_chain(k, 65536);
    let holder = big.holder().to_owned();
    let mut c = client_claims.clone();
    c["sub"] = json!(id(&holder));
    c["cth"] = json!(b64(&sha256(big.s().as_bytes())));
    let hk = k.t(&holder);
    let mut inp = cin(k, &big);
    inp["proof"] = json!({"compact": sign_t(hk, &proof_header(hk), &c), "role": "client", "exporter": b64(&ec)});
    let mut e = ok(
        &[
            "planner",
            "researcher",
            "coder",
            "reviewer",
            "tester",
            "deployer",
            "auditor",
            "writer",
            "summarizer",
        ],
        "files:read",
        &[TD_ID],
        L_IAT,
        L_EXP,
        "g-planner",
    );
    e["proof_jti"] = json!(jti);
    f.add(
        "proof-cth-chain-65536-bytes",
        "A client proof sent with the 65536-byte chain of framing-chain-65536-bytes, cth its SHA-256: at the cap, valid (P9 and then the chain).",
        inp,
        e,
    );
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "spec/vectors".to_owned()),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let k = load_or_create_keys(&dir);
    let files: Vec<(&str, &str, File)> = vec![
        ("valid.json", "Valid chains: depths 0, 1, 2 and 8, ES256, Ed25519 and mixed keys, with and without aud, principal, limits and may_delegate_to, federation, peers without a chain.", valid(&k)),
        ("framing.json", "Phase 1: framing, size caps and strict base64url.", { let mut f = framing(&k); more_framing(&k, &mut f); f }),
        ("headers.json", "Phase 2: the protected header allow-list, typ and alg (including typ confusion).", headers(&k)),
        ("signatures.json", "Phase 3 a/b: the verifying key (bundles, authority policy), alg/key agreement and signatures; bundle validity and keys across bundles.", { let mut f = signatures(&k); more_signatures(&k, &mut f); f }),
        ("claims.json", "Phase 3 c: claims decoding (I-JSON, ver, unknown and missing claims, types, keys, IDs, scopes).", { let mut f = claims(&k); more_claims(&k, &mut f); f }),
        ("attenuation.json", "Phase 4: linkage (prev, iss, task) and attenuation (depth, scope, aud, limits, may_delegate_to, exp).", attenuation(&k)),
        ("time.json", "Phase 5: validity windows, skew boundaries (half-open [nbf - skew, exp + skew)) and lifetime caps.", { let mut f = time(&k); more_time(&k, &mut f); f }),
        ("revocation.json", "Phase 6 and revocation lists: missing, stale and invalid lists, and revocation by jti, task, agent and key.", { let mut f = revocation(&k); more_revocation(&k, &mut f); f }),
        ("possession_audience.json", "Phases 7 and 8: possession of the last cnf key, the holder's identity and the audience.", possession_audience(&k)),
        ("authorization.json", "Per-request authorization: requested scope, authority policy and limit ceilings.", authorization(&k)),
        ("proofs.json", "Hop proofs: channel binding, role, identities, chain and response hashes, time.", { let mut f = proofs(&k); more_proofs(&k, &mut f); f }),
        ("inputs.json", "The vector input format and configuration processing: integer ranges, bundles given as JSON values, the order of format, configuration, bundle and list errors, peers, authority policies.", inputs(&k)),
    ];
    let mut total = 0;
    let mut ids = std::collections::BTreeSet::new();
    for (name, description, file) in files {
        let cases: Vec<Value> = file
            .cases
            .into_iter()
            .map(|c| {
                assert!(ids.insert(c.id.clone()), "duplicate case id {}", c.id);
                json!({"id": c.id, "description": c.description, "input": c.input, "expected": c.expected})
            })
            .collect();
        println!("{name}: {} cases", cases.len());
        total += cases.len();
        write_json(
            &dir.join(name),
            &json!({"description": description, "cases": cases}),
        );
    }
    println!("total: {total} cases");
}
