//! Fuzz harnesses of agentid, one function per target.
//!
//! The cargo-fuzz targets in `fuzz/fuzz_targets/` (nightly, libFuzzer) are one-line wrappers
//! around these functions, and `tests/corpus_replay.rs` runs every committed input of
//! `fuzz/corpus/<target>/` through the same functions on the stable toolchain, so the corpus
//! keeps guarding the decoders in every `cargo test --workspace`.
//!
//! A harness returns normally for any input that is refused or accepted as the specification
//! says; it panics only when an invariant breaks (a decoder panics, an accepted chain does not
//! end at the peer, a re-encoded frame differs, the Ed25519 key check disagrees with
//! curve25519-dalek). Set-up happens once per process: the published test keys and vector
//! inputs of `spec/vectors/` are read, and each valid vector's configuration is built into a
//! [`Verifier`] (bundles parsed, revocation lists verified and applied) that every input is
//! verified with, so an execution spends its time on the input, not on the fixture. That
//! verifier runs exactly what the reference vector runner
//! ([`agentid_protocol::vectors::run_case`]) runs after building the same configuration; the
//! `*_checked` harnesses of [`CROSS_CHECKED`] run both on every input and assert the same
//! verdict (the corpus replay test runs them on the committed corpus).
//!
//! The re-signing targets ([`chain_signed`], [`revocation_list`]) sign fuzzed header and
//! payload bytes with the published test keys of `spec/vectors/keys.json` through the public
//! [`JwsSigner`] interface of [`AuthorityKey`] (a key loaded from PKCS#8 signs any bytes), so
//! mutations of the claims get past the signature check and reach the later phases. They do
//! not use the protocol crate's `danger-raw-signing` feature: enabling it here would compile
//! the danger module into every binary of a workspace build (Cargo unifies features).
#![forbid(unsafe_code)]
// A harness reports a broken invariant by panicking (that is what the fuzzer detects); set-up
// reads fixed files of the repository. `serde_json::Value` is indexed by member name only:
// reading a missing member gives `Null`, and members are written only into the vector inputs,
// which are objects.
#![allow(
    clippy::panic,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use agentid_protocol::{
    sign_bundle, token_hash, verify_proof, verify_signed_bundle, AuthorityKey, AuthorityPolicy,
    BundleSet, Chain, JwsSigner, PeerId, ProofContext, PublicKey, RevocationList, Role, Scope,
    SpiffeId, TrustBundle, TrustDomain, VerifiedChain, Verifier, VerifierConfig,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

/// Every target: its name (the directory of its corpus, the cargo-fuzz binary) and harness.
pub const TARGETS: &[(&str, Harness)] = &[
    ("chain_decode", chain_decode),
    ("chain_signed", chain_signed),
    ("frame", frame),
    ("hello_reauth", hello_reauth),
    ("trust_bundle", trust_bundle),
    ("revocation_list", revocation_list),
    ("csr", csr),
    ("policy", policy),
    ("ed25519_diff", ed25519_diff),
    ("signed_bundle", signed_bundle),
    ("http_presentation", http_presentation),
    ("ca_request", ca_request),
    ("audit_export", audit_export),
];

/// The chain harnesses in cross-checking mode: each also runs every chain it verifies through
/// the reference vector runner ([`agentid_protocol::vectors::run_case`]) on the whole vector
/// input and panics unless both give the same verdict (the same result members, or the same
/// error code and index). Slower; the corpus replay test runs them.
pub const CROSS_CHECKED: &[(&str, Harness)] = &[
    ("chain_decode", chain_decode_checked),
    ("chain_signed", chain_signed_checked),
    ("revocation_list", revocation_list_checked),
];

/// A harness: one fuzz input in, what became of it out.
pub type Harness = fn(&[u8]) -> Outcome;

/// What a harness made of one input (the replay test checks that the seeds reach acceptance).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The input was accepted by the decoder or verifier under test.
    Accepted,
    /// The input was refused.
    Refused,
}

impl Outcome {
    fn from_ok(ok: bool) -> Self {
        if ok {
            Outcome::Accepted
        } else {
            Outcome::Refused
        }
    }
}

const KEYS_JSON: &str = include_str!("../../../spec/vectors/keys.json");
const VALID_JSON: &str = include_str!("../../../spec/vectors/valid.json");

/// The task identity of the published planner test key, and the verifier of the vectors.
const PLANNER: &str = "spiffe://example.org/agent/planner/task/kq7xm3vzb4df6hjn5p2rstuw5a";
const VERIFIER: &str = "spiffe://example.org/svc/files";

struct TestKey {
    signer: AuthorityKey,
    jwk: Value,
    thumbprint: String,
}

struct Fixtures {
    /// Authority keys by name (`example.org/grant-es256`, ...).
    authorities: BTreeMap<String, TestKey>,
    /// Task keys by agent name.
    tasks: BTreeMap<String, TestKey>,
    /// The valid vectors: complete configurations to verify a chain in.
    templates: Vec<Template>,
    bundles: BundleSet,
    now: u64,
    /// The planner's task identity and public key (the presenter of `hello_reauth`'s proofs,
    /// the peer queried in `revocation_list`'s lists).
    planner_id: SpiffeId,
    planner_key: PublicKey,
    verifier_id: SpiffeId,
    trust_domains: [TrustDomain; 2],
}

/// One valid vector: its input, and its configuration built once.
struct Template {
    /// The vector's `input`, for the reference runner.
    input: Value,
    /// The configuration without revocation lists (`revocation_list` applies its own).
    unlisted: VerifierConfig,
    /// The configuration with the vector's revocation lists applied.
    verifier: Verifier,
    peer_id: SpiffeId,
    peer_key: PublicKey,
    now: u64,
    requested_scope: Option<Scope>,
    requested_amounts: BTreeMap<String, u64>,
}

impl Template {
    /// Builds a valid vector's configuration as the reference runner does (spec/README.md,
    /// "How to run a case"; the valid vectors carry no hop proof and no `danger_` setting):
    /// the verifier's own trust domain's bundle first, then the others in byte order of
    /// their names, then the revocation lists.
    fn build(input: Value) -> Self {
        let verifier_id = PeerId::parse(input["verifier_id"].as_str().expect("verifier_id"))
            .expect("verifier_id")
            .as_spiffe_id()
            .clone();
        assert!(input["proof"].is_null(), "a valid vector with a proof");
        assert!(
            input["danger_accept_missing_or_stale_revocations"].is_null(),
            "a valid vector with a danger setting"
        );
        let own = verifier_id.trust_domain();
        let mut bundles: Vec<(TrustDomain, &Value)> = input["bundles"]
            .as_object()
            .expect("bundles")
            .iter()
            .map(|(td, b)| (TrustDomain::parse(td).expect("trust domain"), b))
            .collect();
        bundles.sort_by_key(|(td, _)| *td != own);
        let mut set = BundleSet::for_trust_domain(own);
        for (td, b) in bundles {
            let b = TrustBundle::parse(&td, b.to_string().as_bytes()).expect("bundle");
            set.insert(b).expect("bundle inserts");
        }
        let limits = input["enforced_limits"]
            .as_array()
            .map(|a| a.iter().map(|n| n.as_str().expect("limit").to_owned()))
            .into_iter()
            .flatten();
        let mut unlisted = VerifierConfig::new(verifier_id, set)
            .skew(input["skew"].as_u64().expect("skew"))
            .expect("skew")
            .enforce_limits(limits);
        if let Some(m) = input["authority_policy"].as_object() {
            let mut p = AuthorityPolicy::none();
            for (td, patterns) in m {
                let patterns = Scope::parse(patterns.as_str().expect("patterns")).expect("scope");
                p = p.allow(TrustDomain::parse(td).expect("trust domain"), patterns);
            }
            unlisted = unlisted.authority_policy(p);
        }
        let mut cfg = unlisted.clone();
        for l in input["revocation_lists"].as_array().into_iter().flatten() {
            cfg.apply_revocation_list(l.as_str().expect("list"))
                .expect("list applies");
        }
        let peer_id = PeerId::parse(input["peer"]["id"].as_str().expect("peer id"))
            .expect("peer id")
            .as_spiffe_id()
            .clone();
        let peer_key = PublicKey::from_jwk(&input["peer"]["jwk"]).expect("peer key");
        let requested_scope = input["requested_scope"]
            .as_str()
            .map(|s| Scope::parse(s).expect("requested scope"));
        let requested_amounts = input["requested_amounts"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_u64().expect("amount")))
            .collect();
        Self {
            now: input["now"].as_u64().expect("now"),
            verifier: Verifier::new(cfg).expect("verifier"),
            unlisted,
            input,
            peer_id,
            peer_key,
            requested_scope,
            requested_amounts,
        }
    }

    /// Verifies `chain` as presented by `peer` (else the vector's peer) with `verifier` (else
    /// the vector's), then authorizes the requested scope if any: what the reference runner
    /// does after building the configuration.
    fn verify(
        &self,
        verifier: Option<&Verifier>,
        chain: &str,
        peer: Option<(&SpiffeId, &PublicKey)>,
    ) -> agentid_protocol::Result<Option<VerifiedChain>> {
        let verifier = verifier.unwrap_or(&self.verifier);
        let (id, key) = peer.unwrap_or((&self.peer_id, &self.peer_key));
        let verified = verifier.verify_peer(Some(chain), id, key, self.now)?;
        if let Some(requested) = &self.requested_scope {
            verifier.authorize_peer(verified.as_ref(), requested, &self.requested_amounts)?;
        }
        Ok(verified)
    }
}

/// A verdict as the reference runner writes it (the `expected` object of a vector).
fn expected(r: &agentid_protocol::Result<Option<VerifiedChain>>) -> Value {
    match r {
        Ok(v) => {
            let mut out = serde_json::Map::new();
            out.insert("valid".into(), Value::Bool(true));
            if let Some(v) = v {
                out.extend(v.to_json());
            }
            Value::Object(out)
        }
        Err(e) => json!({ "valid": false, "error": e.code().as_str(), "index": e.index() }),
    }
}

/// Whether a harness also runs the reference runner and compares verdicts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Fast,
    CrossChecked,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let keys: Value = serde_json::from_str(KEYS_JSON).expect("keys.json");
        let mut authorities = BTreeMap::new();
        let mut tasks = BTreeMap::new();
        for (name, k) in keys["keys"].as_object().expect("keys") {
            let pkcs8 = URL_SAFE_NO_PAD
                .decode(k["pkcs8"].as_str().expect("pkcs8"))
                .expect("pkcs8 base64url");
            let key = TestKey {
                signer: AuthorityKey::from_pkcs8_der(&pkcs8).expect("test key"),
                jwk: k["jwk"].clone(),
                thumbprint: k["thumbprint"].as_str().expect("thumbprint").to_owned(),
            };
            match name.strip_prefix("task/") {
                Some(agent) => tasks.insert(agent.to_owned(), key),
                None => authorities.insert(name.clone(), key),
            };
        }
        let valid: Value = serde_json::from_str(VALID_JSON).expect("valid.json");
        let templates: Vec<Template> = valid["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|c| Template::build(c["input"].clone()))
            .collect();
        let first = templates.first().expect("a valid vector");
        let now = first.now;
        let mut bundles = BundleSet::new();
        for t in &templates {
            for (td, b) in t.input["bundles"].as_object().expect("bundles") {
                let td = TrustDomain::parse(td).expect("trust domain");
                let bundle = TrustBundle::parse(&td, b.to_string().as_bytes()).expect("bundle");
                // The same bundle appears in many vectors: keep the first.
                let _ = bundles.insert(bundle);
            }
        }
        let planner_key =
            PublicKey::from_jwk(&tasks.get("planner").expect("planner").jwk).expect("planner key");
        Fixtures {
            authorities,
            tasks,
            templates,
            bundles,
            now,
            planner_id: SpiffeId::parse(PLANNER).expect("id"),
            planner_key,
            verifier_id: SpiffeId::parse(VERIFIER).expect("id"),
            trust_domains: [
                TrustDomain::parse("example.org").expect("td"),
                TrustDomain::parse("partner.example").expect("td"),
            ],
        }
    })
}

fn key_for_jwk<'a>(keys: impl Iterator<Item = &'a TestKey>, jwk: &Value) -> Option<&'a TestKey> {
    let same = |a: &Value, b: &Value, m: &str| a.get(m) == b.get(m);
    keys.into_iter()
        .find(|k| same(&k.jwk, jwk, "x") && same(&k.jwk, jwk, "y") && same(&k.jwk, jwk, "crv"))
}

fn compact(header: &[u8], payload: &[u8], key: &TestKey) -> String {
    let mut token = b64(header);
    token.push('.');
    token.push_str(&b64(payload));
    let sig = signature(key, token.as_bytes());
    token.push('.');
    token.push_str(&sig);
    token
}

/// Signatures made so far in this process (base64url), by key thumbprint and signing input:
/// most mutations change one token of a chain, and the others need not be signed again. A
/// signature is over fixed bytes, so any valid one serves (ES256 signatures are randomized).
/// Bounded: cleared when full.
fn signature(key: &TestKey, signing_input: &[u8]) -> String {
    use std::cell::RefCell;
    use std::collections::HashMap;
    const MAX_ENTRIES: usize = 8192;
    thread_local! {
        static SIGNATURES: RefCell<HashMap<Vec<u8>, String>> = RefCell::new(HashMap::new());
    }
    let mut memo_key = Vec::with_capacity(key.thumbprint.len() + 1 + signing_input.len());
    memo_key.extend_from_slice(key.thumbprint.as_bytes());
    memo_key.push(b'.');
    memo_key.extend_from_slice(signing_input);
    SIGNATURES.with(|memo| {
        let mut memo = memo.borrow_mut();
        if let Some(sig) = memo.get(&memo_key) {
            return sig.clone();
        }
        // A test key signs any bytes; a failure here would be the backend's, not the input's.
        let sig = b64(&key.signer.sign(signing_input).expect("test key signs"));
        if memo.len() >= MAX_ENTRIES {
            memo.clear();
        }
        memo.insert(memo_key, sig.clone());
        sig
    })
}

/// Splits `rest` on NUL bytes (JSON text never holds a raw NUL) into (header, payload) pairs.
fn pairs(rest: &[u8], max: usize) -> Vec<(&[u8], &[u8])> {
    let parts: Vec<&[u8]> = rest.split(|b| *b == 0).collect();
    parts
        .chunks_exact(2)
        .take(max)
        .filter_map(|c| match c {
            [h, p] => Some((*h, *p)),
            _ => None,
        })
        .collect()
}

/// Text inputs: chains, tokens, IDs, scopes, JWKs and whole vector inputs, through the
/// unverified readers, the I-JSON parser, the reference vector runner (a JSON object as a whole
/// vector input) and phases 1-8 against the configuration of the first valid vector.
pub fn chain_decode(data: &[u8]) -> Outcome {
    chain_decode_with(data, Mode::Fast)
}

/// [`chain_decode`], also running the chain through the reference runner (see
/// [`CROSS_CHECKED`]).
pub fn chain_decode_checked(data: &[u8]) -> Outcome {
    chain_decode_with(data, Mode::CrossChecked)
}

fn chain_decode_with(data: &[u8], mode: Mode) -> Outcome {
    let f = fixtures();
    let _ = agentid_protocol::ijson::parse_object(data);
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        let _ = PublicKey::from_jwk(&v);
        if v.is_object() {
            let _ = agentid_protocol::vectors::run_case(&v);
        }
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return Outcome::Refused;
    };
    let _ = Scope::parse(s);
    let _ = SpiffeId::parse(s);
    if let Ok(c) = Chain::parse_unverified(s) {
        assert!(c.depth() <= 8, "a parsed chain has at most 8 links");
        assert_eq!(c.tokens().count(), c.depth() + 1);
        if let Ok(u) = c.read_unverified() {
            let _ = u.holder();
            let _ = u.audience();
            let _ = u.expires();
        }
    }
    let template = f.templates.first().expect("template");
    let verdict = template.verify(None, s, None);
    if mode == Mode::CrossChecked {
        let mut input = template.input.clone();
        input["chain"] = json!(s);
        cross_check(&input, &verdict);
    }
    check_verdict(template.peer_id.as_str(), &verdict)
}

/// Panics unless the reference runner gives `verdict` for `input`.
fn cross_check(input: &Value, verdict: &agentid_protocol::Result<Option<VerifiedChain>>) {
    let reference = agentid_protocol::vectors::run_case(input);
    assert_eq!(
        expected(verdict),
        reference,
        "the harness's verifier and the reference runner disagree on {input}"
    );
}

/// The invariants of any verdict on a chain presented by `peer`.
fn check_verdict(peer: &str, verdict: &agentid_protocol::Result<Option<VerifiedChain>>) -> Outcome {
    match verdict {
        Ok(Some(v)) => {
            assert!(v.depth <= 8, "accepted depth {}", v.depth);
            assert_eq!(
                v.holder.as_str(),
                peer,
                "an accepted chain ends at the TLS peer"
            );
            assert_eq!(v.actors.len(), v.depth + 1, "one actor per token");
            Outcome::Accepted
        }
        Ok(None) => panic!("no chain verified for a presented chain"),
        Err(e) => {
            assert!(!e.code().as_str().is_empty(), "a refusal carries a code");
            Outcome::Refused
        }
    }
}

/// Structured chains, re-signed: byte 0 holds flags (bit 0: recompute each link's `prev` from
/// the previous token; bit 1: take the peer from the last token's `sub` and `cnf`; bits 3-7: the
/// valid vector whose configuration is used), then up to nine `header NUL payload` pairs
/// separated by NUL. Token 0 is signed with the authority key whose thumbprint is its `kid`
/// (else the Ed25519 grant key), link i with the test key bound by token i-1's `cnf` (else the
/// planner's), so mutations reach linkage, attenuation, time, revocation, possession and
/// audience (phases 4-8) and authorization.
pub fn chain_signed(data: &[u8]) -> Outcome {
    chain_signed_with(data, Mode::Fast)
}

/// [`chain_signed`], also running the chain through the reference runner (see
/// [`CROSS_CHECKED`]).
pub fn chain_signed_checked(data: &[u8]) -> Outcome {
    chain_signed_with(data, Mode::CrossChecked)
}

fn chain_signed_with(data: &[u8], mode: Mode) -> Outcome {
    let f = fixtures();
    let Some((&flags, rest)) = data.split_first() else {
        return Outcome::Refused;
    };
    let fix_prev = flags & 1 != 0;
    let peer_from_chain = flags & 2 != 0;
    let template = f
        .templates
        .get(usize::from(flags >> 3) % f.templates.len())
        .expect("template");
    let pairs = pairs(rest, 9);
    if pairs.is_empty() {
        return Outcome::Refused;
    }
    let mut tokens: Vec<String> = Vec::with_capacity(pairs.len());
    let mut last_claims = Value::Null;
    for (i, (header, payload)) in pairs.iter().enumerate() {
        let mut claims = serde_json::from_slice::<Value>(payload).unwrap_or(Value::Null);
        let mut payload = payload.to_vec();
        if let (true, Some(prev_token), Some(obj)) =
            (fix_prev, tokens.last(), claims.as_object_mut())
        {
            if obj.contains_key("prev") {
                obj.insert("prev".into(), json!(token_hash(prev_token)));
                payload = serde_json::to_vec(&claims).expect("re-encode");
            }
        }
        let key = if i == 0 {
            let kid = serde_json::from_slice::<Value>(header)
                .ok()
                .and_then(|h| h["kid"].as_str().map(str::to_owned));
            f.authorities
                .values()
                .find(|k| Some(k.thumbprint.as_str()) == kid.as_deref())
                .or_else(|| f.authorities.get("example.org/grant-ed25519"))
        } else {
            key_for_jwk(f.tasks.values(), &last_claims["cnf"]["jwk"])
                .or_else(|| f.tasks.get("planner"))
        };
        let key = key.expect("fixture key");
        tokens.push(compact(header, &payload, key));
        last_claims = claims;
    }
    let chain = tokens.join("~");
    // The peer as the reference runner reads it (a bad one is a refused configuration, not a
    // verdict on the chain).
    let peer_claims = match (
        peer_from_chain,
        last_claims["sub"].as_str(),
        last_claims["cnf"]["jwk"].as_object(),
    ) {
        (true, Some(sub), Some(_)) => Some((sub, &last_claims["cnf"]["jwk"])),
        _ => None,
    };
    let verdict = verify_signed(template, &chain, peer_claims);
    if mode == Mode::CrossChecked {
        let mut input = template.input.clone();
        input["chain"] = json!(chain);
        if let Some((sub, jwk)) = peer_claims {
            input["peer"] = json!({ "id": sub, "jwk": jwk });
        }
        match &verdict {
            Some(v) => cross_check(&input, v),
            None => assert_eq!(
                agentid_protocol::vectors::run_case(&input)["error"],
                "bad_config",
                "the reference runner accepts a peer the harness refused: {input}"
            ),
        }
    }
    let Some(verdict) = verdict else {
        // The fuzzer made the peer unusable as configuration: nothing was verified.
        return Outcome::Refused;
    };
    let peer = match peer_claims {
        Some((sub, _)) => sub,
        None => template.peer_id.as_str(),
    };
    check_verdict(peer, &verdict)
}

/// Verifies a re-signed chain with a template's configuration, presented by the peer taken
/// from the chain if any; `None` if that peer's ID or key is not one a TLS layer reports.
fn verify_signed(
    template: &Template,
    chain: &str,
    peer: Option<(&str, &Value)>,
) -> Option<agentid_protocol::Result<Option<VerifiedChain>>> {
    match peer {
        None => Some(template.verify(None, chain, None)),
        Some((sub, jwk)) => {
            let id = PeerId::parse(sub).ok()?;
            let key = PublicKey::from_jwk(jwk).ok()?;
            Some(template.verify(None, chain, Some((id.as_spiffe_id(), &key))))
        }
    }
}

/// Transport frames: the streaming decoder over arbitrary bytes (up to 64 frames), every
/// control body through its strict parser, and the encode/decode round trip.
pub fn frame(data: &[u8]) -> Outcome {
    use agentid_transport::internal as fr;
    let mut buf = bytes::BytesMut::from(data);
    let mut any = false;
    for _ in 0..64 {
        match fr::decode(&mut buf) {
            Ok(Some(frame)) => {
                any = true;
                assert!(frame.body.len() <= agentid_transport::MAX_FRAME_BODY);
                let mut again = bytes::BytesMut::new();
                fr::encode(frame.ty, &frame.body, &mut again).expect("a decoded frame encodes");
                let back = fr::decode(&mut again)
                    .expect("round trip")
                    .expect("whole frame");
                assert_eq!(back, frame, "frame round trip");
                assert!(again.is_empty());
                let _ = fr::parse_control_body(frame.ty, &frame.body);
            }
            Ok(None) | Err(_) => break,
        }
    }
    Outcome::from_ok(any)
}

/// Control bodies as a server meets them: the body as hello, accept, reason and reauth; a
/// hello's proof verified in a fixed connection context (as the client's, against the
/// planner's key) and its chain through [`chain_decode`]; a reauth's certificates decoded and
/// checked as X509-SVIDs and against a trust store.
pub fn hello_reauth(data: &[u8]) -> Outcome {
    use agentid_transport::internal::{parse_control_body, FrameType};
    let f = fixtures();
    let mut ok = false;
    if let Some(Ok(h)) = parse_control_body(FrameType::Hello, data) {
        ok = true;
        let ctx = ProofContext {
            presenter_id: &f.planner_id,
            presenter_key: &f.planner_key,
            verifier_id: &f.verifier_id,
            role: Role::Client,
            exporter: [7u8; 32],
            now: f.now,
            skew: 60,
            chain: h.chain.as_deref(),
            client_proof: None,
        };
        let _ = verify_proof(h.proof.as_deref().unwrap_or_default(), &ctx);
        if let Some(c) = &h.chain {
            chain_decode(c.as_bytes());
        }
    }
    if let Some(Ok(a)) = parse_control_body(FrameType::Accept, data) {
        ok = true;
        if let Some(c) = &a.chain {
            let _ = Chain::parse_unverified(c);
        }
    }
    if let Some(Ok(_)) = parse_control_body(FrameType::Close, data) {
        ok = true;
    }
    if let Some(Ok(r)) = parse_control_body(FrameType::Reauth, data) {
        ok = true;
        reauth_certs(&r.certs);
    }
    Outcome::from_ok(ok)
}

fn reauth_certs(certs: &[String]) {
    use agentid_transport::{check_leaf, CertUsage, TrustStore};
    use rustls_pki_types::{CertificateDer, UnixTime};
    let ders: Vec<CertificateDer<'static>> = certs
        .iter()
        .take(8)
        .filter_map(|c| URL_SAFE_NO_PAD.decode(c).ok())
        .map(CertificateDer::from)
        .collect();
    let Some((leaf, rest)) = ders.split_first() else {
        return;
    };
    for usage in [CertUsage::ClientAuth, CertUsage::ServerAuth] {
        let _ = check_leaf(leaf, usage);
    }
    // A store whose anchor is the first intermediate (if it parses as one): exercises path
    // building and the issuer key-usage check on fuzzed certificates.
    let mut store = TrustStore::new();
    if let Some(anchor) = rest.first() {
        let _ = store.add_authority(&fixtures().trust_domains[0], anchor);
    }
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(fixtures().now));
    let _ = store.verify(leaf, rest, now, CertUsage::ClientAuth);
}

/// SPIFFE trust bundles (JWK Set with agentid uses), for two trust domains; an accepted bundle
/// goes into a bundle set next to the vectors' own.
pub fn trust_bundle(data: &[u8]) -> Outcome {
    let f = fixtures();
    let mut ok = false;
    for td in &f.trust_domains {
        if let Ok(b) = TrustBundle::parse(td, data) {
            ok = true;
            let mut set = f.bundles.clone();
            let _ = set.insert(b);
        }
    }
    Outcome::from_ok(ok)
}

/// Revocation lists. Byte 0: bit 0 set means the rest is `header NUL payload`, re-signed with
/// the revocation key named by the header's `kid` (else example.org's); clear means the rest is
/// a compact list as is. The list is verified against the vectors' bundles, queried, and then
/// used as the only list of the first valid vector (phase 6).
pub fn revocation_list(data: &[u8]) -> Outcome {
    revocation_list_with(data, Mode::Fast)
}

/// [`revocation_list`], also running the first valid vector with the list through the
/// reference runner (see [`CROSS_CHECKED`]).
pub fn revocation_list_checked(data: &[u8]) -> Outcome {
    revocation_list_with(data, Mode::CrossChecked)
}

fn revocation_list_with(data: &[u8], mode: Mode) -> Outcome {
    let f = fixtures();
    let Some((&flags, rest)) = data.split_first() else {
        return Outcome::Refused;
    };
    let compact_list = if flags & 1 != 0 {
        let Some(&(header, payload)) = pairs(rest, 1).first() else {
            return Outcome::Refused;
        };
        let kid = serde_json::from_slice::<Value>(header)
            .ok()
            .and_then(|h| h["kid"].as_str().map(str::to_owned));
        let key = f
            .authorities
            .values()
            .find(|k| Some(k.thumbprint.as_str()) == kid.as_deref())
            .or_else(|| f.authorities.get("example.org/revocation"))
            .expect("revocation key");
        compact(header, payload, key)
    } else {
        match std::str::from_utf8(rest) {
            Ok(s) => s.to_owned(),
            Err(_) => return Outcome::Refused,
        }
    };
    let verified = RevocationList::verify(&compact_list, &f.bundles);
    if let Ok(list) = &verified {
        assert!(list.next_update() >= list.iat(), "next_update before iat");
        let _ = list.is_stale(f.now, 60);
        let _ = list.len();
        let _ = list.covers_peer_at(&f.planner_id, &f.planner_key, f.now);
    }
    // The first valid vector with this list as its only one: configuration (C3), then its
    // chain through phase 6 against the list.
    let template = f.templates.first().expect("template");
    let chain = template.input["chain"].as_str().expect("chain");
    let mut cfg = template.unlisted.clone();
    let verdict = cfg
        .apply_revocation_list(&compact_list)
        .and_then(|_| Verifier::new(cfg))
        .and_then(|v| template.verify(Some(&v), chain, None));
    if mode == Mode::CrossChecked {
        let mut input = template.input.clone();
        input["revocation_lists"] = json!([compact_list]);
        cross_check(&input, &verdict);
    }
    check_verdict(template.peer_id.as_str(), &verdict);
    Outcome::from_ok(verified.is_ok())
}

/// PKCS#10 requests as the CA reads them (DER or PEM), for a fixed identity.
pub fn csr(data: &[u8]) -> Outcome {
    const URI: &str = "spiffe://example.org/agent/planner/task/t1";
    match agentid_ca::parse_csr(data, URI) {
        Ok(k) => {
            assert_eq!(k.thumbprint().len(), 43, "RFC 7638 thumbprint");
            Outcome::Accepted
        }
        Err(_) => Outcome::Refused,
    }
}

/// CA API request bodies as the CA's routes read them (spec/CA-API.md 1.2), among them the
/// enrollment listener's, which anyone who reaches the CA can send. Byte 0 picks the route's
/// body type (enroll, tokens, tasks, children, renew, revoke); the rest is the body, read by
/// `agentid_ca::request_body::parse_request_body`. What a body that reads carries goes on as the route
/// takes it: a CSR (base64url DER) to the CA's CSR parser, a principal to its canonical form,
/// a parent chain to the unverified chain reader, scope, task and identity fields to their
/// parsers.
pub fn ca_request(data: &[u8]) -> Outcome {
    use agentid_api::{
        ChildRequest, EnrollRequest, OpenTaskRequest, RenewRequest, RevokeRequest, TokenRequest,
    };
    use agentid_ca::request_body::parse_request_body as parse;
    fn csr_field(b64: &str) {
        if let Ok(der) = URL_SAFE_NO_PAD.decode(b64) {
            let _ = csr(&der);
        }
    }
    fn token_request(t: &TokenRequest) {
        if let Some(task) = &t.task {
            let _ = agentid_protocol::TaskId::parse(task);
        }
        if let Some(p) = &t.principal {
            let _ = agentid_ca::store::canonical_principal(p);
        }
        let _ = Scope::parse(&t.scope.join(" "));
        for id in t.audience.iter().chain(&t.may_delegate_to).flatten() {
            let _ = SpiffeId::parse(id);
        }
    }
    let Some((&route, body)) = data.split_first() else {
        return Outcome::Refused;
    };
    let ok = match route % 6 {
        0 => parse::<EnrollRequest>(body)
            .map(|r| csr_field(&r.csr))
            .is_ok(),
        1 => parse::<TokenRequest>(body)
            .map(|r| token_request(&r))
            .is_ok(),
        2 => parse::<OpenTaskRequest>(body)
            .map(|r| {
                csr_field(&r.csr);
                token_request(&r.task);
            })
            .is_ok(),
        3 => parse::<ChildRequest>(body)
            .map(|r| {
                csr_field(&r.csr);
                if let Some(c) = &r.parent_chain {
                    let _ = Chain::parse_unverified(c);
                }
            })
            .is_ok(),
        4 => parse::<RenewRequest>(body)
            .map(|r| {
                if let Some(id) = &r.identity {
                    let _ = SpiffeId::parse(id);
                }
            })
            .is_ok(),
        _ => parse::<RevokeRequest>(body).is_ok(),
    };
    Outcome::from_ok(ok)
}

/// The CA's issuance policy file (TOML), with a lookup of the first agent and service rule.
pub fn policy(data: &[u8]) -> Outcome {
    let Ok(text) = std::str::from_utf8(data) else {
        return Outcome::Refused;
    };
    match agentid_ca::Policy::from_toml(text) {
        Ok(p) => {
            let _ = p.agent("planner");
            let _ = p.service("search");
            Outcome::Accepted
        }
        Err(_) => Outcome::Refused,
    }
}

/// The hand-written Ed25519 public-key check (canonical y, decompression by quadratic
/// character, `-0`, small order) against curve25519-dalek, for up to 8 keys of 32 bytes per
/// input: both must accept exactly the same encodings.
pub fn ed25519_diff(data: &[u8]) -> Outcome {
    use curve25519_dalek::edwards::CompressedEdwardsY;
    let mut any = false;
    for chunk in data.chunks_exact(32).take(8) {
        let mut key = [0u8; 32];
        key.copy_from_slice(chunk);
        let ours = PublicKey::from_ed25519(&key).is_ok();
        let dalek = CompressedEdwardsY(key)
            .decompress()
            .is_some_and(|p| p.compress().to_bytes() == key && !p.is_small_order());
        assert_eq!(
            ours, dalek,
            "Ed25519 key check disagrees with curve25519-dalek on {key:02x?}"
        );
        any |= ours;
    }
    Outcome::from_ok(any)
}

/// Signed agentid bundles (spec/CA-API.md 3.3, what `GET /v1/bundle/agentid` serves), verified
/// for both trust domains with a bundle-signing key: the published `untrusted/grant` test key,
/// which no bundle holds. Byte 0: bit 0 set means the rest is `header NUL payload`, signed with
/// that key (so mutated headers and claims get past the signature); clear means the rest is a
/// compact document as is. A verified document must be for the domain it was verified for,
/// must verify again after being signed anew from what was read (same `seq`, `iat` and keys),
/// and its bundle goes into a set beside the vectors' bundles.
pub fn signed_bundle(data: &[u8]) -> Outcome {
    let f = fixtures();
    let Some((&flags, rest)) = data.split_first() else {
        return Outcome::Refused;
    };
    let key = f
        .authorities
        .get("untrusted/grant")
        .expect("the bundle-signing test key");
    let document = if flags & 1 != 0 {
        let Some(&(header, payload)) = pairs(rest, 1).first() else {
            return Outcome::Refused;
        };
        compact(header, payload, key)
    } else {
        match std::str::from_utf8(rest) {
            Ok(s) => s.to_owned(),
            Err(_) => return Outcome::Refused,
        }
    };
    let public = key.signer.public_key();
    let mut ok = false;
    for td in &f.trust_domains {
        let Ok(doc) = verify_signed_bundle(&document, public, td, f.now, 60) else {
            continue;
        };
        ok = true;
        assert_eq!(
            doc.bundle.trust_domain(),
            td,
            "a bundle read for another domain"
        );
        assert!(doc.iat <= f.now + 60, "a document signed in the future");
        let again = sign_bundle(&key.signer, &doc.bundle, doc.seq, doc.iat).expect("re-sign");
        let round = verify_signed_bundle(&again, public, td, f.now, 60)
            .expect("a re-signed verified bundle verifies");
        assert_eq!((round.seq, round.iat), (doc.seq, doc.iat));
        assert_eq!(round.bundle.grant_keys(), doc.bundle.grant_keys());
        assert_eq!(round.bundle.revocation_keys(), doc.bundle.revocation_keys());
        let mut set = f.bundles.clone();
        let _ = set.insert(doc.bundle);
    }
    Outcome::from_ok(ok)
}

/// HTTP presentations (spec/PROTOCOL.md section 22.3). The input is up to 16 requests separated
/// by NUL, each up to 8 header lines `name: value` separated by `\n`; a header the `http` crate
/// refuses is dropped (hyper refuses such a request before it reaches agentid). Each request's
/// headers go through `parse_presentation`, then the connection's presentation machine; the
/// verification a `Verify` starts succeeds when the proof's first byte is even and fails
/// otherwise. Checked against the section's state table: a refusal of the headers changes
/// nothing on the connection; a presentation other than the pending or verified one fails it;
/// a failed connection refuses everything after with the same code; a verified value is served
/// only for the presentation that was verified or for requests without headers.
pub fn http_presentation(data: &[u8]) -> Outcome {
    use agentid_transport::http::{
        parse_presentation, Dispatch, PresentationMachine, PresentationState,
    };
    use http::header::{HeaderMap, HeaderName, HeaderValue};

    let mut machine = PresentationMachine::<agentid_transport::http::Presentation>::new();
    let mut verified_any = false;
    for request in data.split(|b| *b == 0).take(16) {
        let mut headers = HeaderMap::new();
        for line in request.split(|b| *b == b'\n').take(8) {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (name, value) = line.split_at(colon);
            let value = value.get(1..).unwrap_or_default().trim_ascii();
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                headers.append(n, v);
            }
        }
        let before = machine.state();
        let presentation = match parse_presentation(&headers) {
            Ok(p) => p,
            Err(r) => {
                assert!(r.status().is_client_error(), "a header refusal is 4xx");
                assert_eq!(
                    machine.state(),
                    before,
                    "a header refusal moved the connection"
                );
                continue;
            }
        };
        let failed_with = machine.failure().map(|r| r.code());
        match machine.dispatch(presentation.as_ref()) {
            Dispatch::IdentityOnly => {
                assert!(presentation.is_none() && before == PresentationState::None);
            }
            Dispatch::Verify => {
                let p = presentation.clone().expect("a presentation to verify");
                assert_eq!(before, PresentationState::None);
                let even = p.proof.as_bytes().first().is_some_and(|b| b % 2 == 0);
                let result = if even {
                    Ok(p.clone())
                } else {
                    Err(agentid_transport::http::Refusal::unauthenticated(
                        "bad_proof",
                        "the fuzzed proof",
                    ))
                };
                match machine.complete(result) {
                    Ok(v) => {
                        assert_eq!(*v, p);
                        assert_eq!(machine.state(), PresentationState::Verified);
                        verified_any = true;
                    }
                    Err(_) => assert_eq!(machine.state(), PresentationState::Failed),
                }
            }
            Dispatch::Hit(v) => {
                assert_eq!(before, PresentationState::Verified);
                if let Some(p) = &presentation {
                    assert_eq!(*v, *p, "a verified value served for another presentation");
                }
            }
            Dispatch::Wait => panic!("nothing is pending between requests here"),
            Dispatch::Refuse(r) => {
                assert_eq!(machine.state(), PresentationState::Failed);
                if let Some(code) = failed_with {
                    assert_eq!(r.code(), code, "a failed connection changed its refusal");
                } else {
                    assert!(presentation.is_some(), "refused without a presentation");
                }
            }
        }
    }
    Outcome::from_ok(verified_any)
}

/// `agentid audit export` files as `agentid audit verify --against` and `agentid audit prune
/// --exported` read them, beside the store ([`agentid_ca::audit::ExportFile`], two passes:
/// the lines checked and each writer's runs indexed, then each writer's records read again by
/// seeking) and into memory ([`agentid_ca::audit::read_anchors`] with reports,
/// [`agentid_ca::audit::read_export`] without). Byte 0: bit 0 clear, the rest is the file;
/// set, the rest is a script (`export_of_script`, bit 1: the last line ended, bit 2: long
/// blank lines allowed) that writes real record lines (their hashes right) of several
/// writers, interleaved, with checkpoint, base and blank lines, then splices its own bytes
/// into them. For both readers: the file is refused by both or by
/// neither (with the same message); read into memory, it gives the same records; indexed, it
/// holds as many records, and every writer's records read again are exactly that writer's
/// records in file order, each at its line.
pub fn audit_export(data: &[u8]) -> Outcome {
    let Some((&flags, rest)) = data.split_first() else {
        return Outcome::Refused;
    };
    let file = if flags & 1 != 0 {
        export_of_script(rest, flags & 2 != 0, flags & 4 != 0)
    } else {
        rest.to_vec()
    };
    let mut accepted = false;
    for reports in [true, false] {
        accepted |= export_file_agrees(&file, reports);
    }
    Outcome::from_ok(accepted)
}

/// The writers of [`export_of_script`]'s records (one needs escaping in JSON, one is empty).
const EXPORT_WRITERS: [&str; 4] = ["main", "ca-2", "r\u{e9}plica \"3\"", ""];

/// At most this many blank lines of [`EXPORT_PAD`] bytes per script: two make a gap larger
/// than the 1 MiB within which a writer's runs are merged (few, and only with byte 0's bit 2
/// set: each costs the harness several instrumented readings of half a MiB, tens of
/// milliseconds).
const EXPORT_PADS: usize = 2;
const EXPORT_PAD: usize = 512 * 1024 + 64;

/// An export file written by `script`, one operation a byte (low 3 bits):
///
/// * 0-2: a record of writer `(op >> 3) % 4`, numbered by `op >> 5` (0-4 the writer's next,
///   5 its last again, 6 one skipped, 7 one back), its body and hash as the CA writes them;
/// * 3, 4: a checkpoint, a base line of writer `(op >> 3) % 4` at its last number;
/// * 5: a blank line: empty, spaces and a tab, a lone CR, or a form feed, by `(op >> 3) % 4`;
///   0xfd with `pad`: (at most [`EXPORT_PADS`] times) [`EXPORT_PAD`] spaces;
/// * 6: the line ending switched between LF and CRLF;
/// * 7: the next byte `n` and position byte `p`: `n % 24` bytes of the script inserted into
///   the last line at `p`, written over it, or removed from it (by `(op >> 3) % 3`).
///
/// Without `ending`, the last line has no line ending.
fn export_of_script(script: &[u8], ending: bool, pad: bool) -> Vec<u8> {
    use agentid_ca::audit::{record_body, record_hash, AuditEvent, ExportLine, GENESIS};
    let mut out: Vec<u8> = Vec::new();
    let mut last_line = 0usize;
    let mut crlf = false;
    let mut pads = 0usize;
    let mut last = [0u64; 4];
    let mut prev: [String; 4] = std::array::from_fn(|_| GENESIS.to_owned());
    let mut bytes = script.iter().copied().take(4096);
    let mut ops = 0usize;
    while let Some(op) = bytes.next() {
        ops += 1;
        if ops > 256 {
            break;
        }
        let w = usize::from(op >> 3) % EXPORT_WRITERS.len();
        let writer = EXPORT_WRITERS[w];
        let line = match op & 7 {
            0..=2 => {
                let seq = match op >> 5 {
                    0..=4 => last[w].saturating_add(1),
                    5 => last[w],
                    6 => last[w].saturating_add(2),
                    _ => last[w].saturating_sub(1),
                };
                let ev = AuditEvent {
                    ts: 1_700_000_000 + seq,
                    kind: ["issue.task", "revoke", "list.publish"][usize::from(op & 7)].into(),
                    actor: "operator".into(),
                    outcome: "ok".into(),
                    serial: (op & 1 == 0).then(|| format!("{seq:x}")),
                    ..AuditEvent::default()
                };
                let body = record_body(writer, seq, &prev[w], &ev).expect("a record body");
                let hash = record_hash(&body);
                let line = ExportLine::Record {
                    body: Box::new(serde_json::from_str(&body).expect("a record body reads")),
                    text: body,
                    hash: hash.clone(),
                };
                last[w] = seq;
                prev[w] = hash;
                serde_json::to_vec(&line).expect("an export line")
            }
            3 => serde_json::to_vec(&ExportLine::Checkpoint {
                writer: writer.to_owned(),
                seq: last[w],
                jws: "eyJhbGciOiJFZERTQSJ9.e30.c2ln".to_owned(),
            })
            .expect("an export line"),
            4 => serde_json::to_vec(&ExportLine::Base {
                writer: writer.to_owned(),
                seq: last[w],
                jws: "eyJhbGciOiJFZERTQSJ9.e30.c2ln".to_owned(),
            })
            .expect("an export line"),
            5 if pad && op == 0xfd && pads < EXPORT_PADS => {
                pads += 1;
                vec![b' '; EXPORT_PAD]
            }
            5 => match (op >> 3) % 4 {
                0 => Vec::new(),
                1 => b"  \t".to_vec(),
                2 => b"\r".to_vec(),
                _ => b"\x0c".to_vec(),
            },
            6 => {
                crlf = !crlf;
                continue;
            }
            _ => {
                let n = usize::from(bytes.next().unwrap_or(0) % 24);
                let p = usize::from(bytes.next().unwrap_or(0));
                let spliced: Vec<u8> = bytes.by_ref().take(n).collect();
                let at = last_line + p % (out.len() - last_line + 1);
                match (op >> 3) % 3 {
                    0 => {
                        out.splice(at..at, spliced);
                    }
                    1 => {
                        let end = (at + spliced.len()).min(out.len());
                        out.splice(at..end, spliced);
                    }
                    _ => {
                        let end = (at + n).min(out.len());
                        out.drain(at..end);
                    }
                }
                continue;
            }
        };
        last_line = out.len();
        out.extend_from_slice(&line);
        out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
    }
    if !ending {
        while out.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            out.pop();
        }
    }
    out
}

/// [`audit_export`]'s property for one reader (`reports`: as `verify --against` reads, else as
/// `prune --exported` does); whether the file was read.
fn export_file_agrees(file: &[u8], reports: bool) -> bool {
    use agentid_ca::audit::{self, Against, ExportFile, ExportLine};
    let listed = if reports {
        audit::read_anchors(file)
    } else {
        audit::read_export(file)
    };
    let opened = ExportFile::open(std::io::Cursor::new(file.to_vec()), reports);
    let (anchors, against) = match (listed, opened) {
        (Err(listed), Err(opened)) => {
            assert_eq!(
                opened, listed,
                "reports: {reports}: the file is refused for another reason"
            );
            return false;
        }
        (Ok(_), Err(e)) => {
            panic!("reports: {reports}: read into memory, refused beside the store: {e}")
        }
        (Err(e), Ok(_)) => {
            panic!("reports: {reports}: refused in memory ({e}), read beside the store")
        }
        (Ok(anchors), Ok(against)) => (anchors, against),
    };
    let mut f = match against {
        Against::Listed(v) => {
            assert_eq!(
                *v, *anchors,
                "reports: {reports}: read into memory differently"
            );
            return true;
        }
        Against::Export(f) => f,
    };
    // The k-th record line is the k-th record read (every line is within the length limit:
    // the file was read).
    let lines: Vec<u64> = file
        .split(|b| *b == b'\n')
        .zip(1u64..)
        .filter(|(l, _)| {
            matches!(
                serde_json::from_slice::<ExportLine>(l),
                Ok(ExportLine::Record { .. })
            )
        })
        .map(|(_, n)| n)
        .collect();
    assert_eq!(lines.len(), anchors.len(), "record lines");
    assert_eq!(f.records(), anchors.len() as u64, "records indexed");
    let mut writers: Vec<&str> = anchors.iter().map(|a| a.writer.as_str()).collect();
    writers.sort_unstable();
    writers.dedup();
    let mut first = None;
    for w in &writers {
        let expected: Vec<(u64, String, u64)> = anchors
            .iter()
            .zip(&lines)
            .filter(|(a, _)| a.writer == *w)
            .map(|(a, line)| (a.seq, a.hash.clone(), *line))
            .collect();
        let read = f
            .read_writer(w)
            .unwrap_or_else(|e| panic!("reports: {reports}: writer {w:?} read again: {e}"));
        assert!(
            read.windows(2).all(|p| p[0].2 < p[1].2),
            "writer {w:?}: lines out of order: {read:?}"
        );
        assert_eq!(read, expected, "writer {w:?}: read again differently");
        first.get_or_insert(read);
    }
    // Read again after the others moved the reader; a writer the file does not hold has none.
    if let (Some(w), Some(read)) = (writers.first(), first) {
        assert_eq!(f.read_writer(w).expect("read a third time"), read);
    }
    if !writers.contains(&"\u{0}absent") {
        let none = f.read_writer("\u{0}absent").expect("an absent writer");
        assert!(
            none.is_empty(),
            "records of a writer the file does not hold"
        );
    }
    true
}
