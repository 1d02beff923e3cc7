//! Figure 2: chain verification alone, and the synthetic chains (ES256 and Ed25519, depth 0 to
//! 8) that figures 2 and 4 share. No certificates are needed here: possession is checked against
//! the last holder's key and identity passed in directly, as the transport does after TLS.

use std::hint::black_box;

use agentid_protocol::{
    AgentId, Algorithm, AuthorityKey, BundleSet, Chain, GrantBuilder, JwsSigner, LinkBuilder,
    PublicKey, RevocationListBuilder, Scope, SpiffeId, TaskId, TaskIdentity, TaskKey, TrustBundle,
    TrustDomain, Verifier, VerifierConfig,
};
use aws_lc_rs::signature::{
    UnparsedPublicKey, VerificationAlgorithm, ECDSA_P256_SHA256_FIXED, ED25519,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::fixtures::{now, Res, MAX_DEPTH};
use crate::harness::{compare, Budget, Check};
use crate::report::{Report, Target};

/// A chain family of one algorithm: the verifier, the chains of depth 0..=8 and their holders.
pub struct Synth {
    /// The algorithm of every key (authority and holders).
    pub alg: Algorithm,
    /// The verifier (own ID `spiffe://bench.example/svc/api`, revocation list applied).
    pub verifier: Verifier,
    /// `chains[d]`: the chain of depth `d`.
    pub chains: Vec<Chain>,
    /// `holders[d]`: the identity and key of the holder of `chains[d]`.
    pub holders: Vec<(TaskIdentity, PublicKey)>,
    /// `keys[d]`: the private key of `holders[d]` (for the hop proofs of figure 4).
    pub keys: Vec<TaskKey>,
    /// The authority key (for peers that sign the same claims).
    pub authority: AuthorityKey,
    /// The grant's `exp`.
    pub exp: u64,
}

impl Synth {
    /// Builds the family for `alg`.
    pub fn new(alg: Algorithm) -> Res<Self> {
        let td = TrustDomain::parse("bench.example")?;
        let authority = AuthorityKey::generate(alg)?;
        let revocation = AuthorityKey::generate(alg)?;
        let bundle = TrustBundle::new(td.clone(), 1)
            .add_grant_key(JwsSigner::public_key(&authority))
            .add_revocation_key(JwsSigner::public_key(&revocation));
        let mut bundles = BundleSet::new();
        bundles.insert(bundle)?;
        let own = SpiffeId::parse("spiffe://bench.example/svc/api")?;
        let t = now();
        let exp = t + 3600;
        // A list with 1,000 entries (unrelated keys and tokens), as a live domain would have.
        let mut builder = RevocationListBuilder::new(&td, 1, t, t + 3600);
        let iss = td.id();
        for i in 0..1000u32 {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &i.to_le_bytes());
            let enc = URL_SAFE_NO_PAD.encode(d.as_ref());
            builder = if i % 2 == 0 {
                builder.revoke_key(&enc, exp)
            } else {
                builder.revoke_jti(&iss, &enc, exp)
            };
        }
        let list = builder.sign(&revocation)?;
        let mut cfg = VerifierConfig::new(own, bundles);
        cfg.apply_revocation_list(&list)?;
        let verifier = Verifier::new(cfg)?;

        let task = TaskId::generate()?;
        let mut keys = Vec::new();
        let mut holders = Vec::new();
        for i in 0..=MAX_DEPTH {
            let key = TaskKey::generate(alg)?;
            let id = TaskIdentity::new(&AgentId::new(&td, &format!("h{i}"))?, &task)?;
            holders.push((id, key.public_key().clone()));
            keys.push(key);
        }
        let (id0, pk0) = holders.first().ok_or("no holder")?;
        let grant = GrantBuilder::new(
            &td,
            id0,
            pk0,
            Scope::parse("repo:read repo:write repo:admin")?,
        )
        .max_depth(MAX_DEPTH as u8)
        .validity(t, t, exp)
        .sign(&authority)?;
        let mut chains = vec![grant];
        for i in 1..=MAX_DEPTH {
            let (id, pk) = holders.get(i).ok_or("no holder")?;
            let scope = if i <= 3 {
                "repo:read repo:write"
            } else {
                "repo:read"
            };
            let prev = chains.last().ok_or("no chain")?;
            let signer = keys.get(i - 1).ok_or("no key")?;
            let link = LinkBuilder::new(prev, id, pk, Scope::parse(scope)?)
                .max_depth((MAX_DEPTH - i) as u8)
                .validity(t, t, exp)
                .sign(signer)?;
            chains.push(link);
        }
        Ok(Self {
            alg,
            verifier,
            chains,
            holders,
            keys,
            authority,
            exp,
        })
    }

    /// Verifies the chain of `depth` (phases 1 to 8) and authorizes `repo:read` under it.
    pub fn verify(&self, depth: usize, scope: &Scope, t: u64) -> bool {
        let (Some(chain), Some((id, key))) = (self.chains.get(depth), self.holders.get(depth))
        else {
            return false;
        };
        match self
            .verifier
            .verify_chain(chain.as_str(), id.as_spiffe_id(), key, t)
        {
            Ok(v) => self.verifier.authorize(&v, scope).is_ok(),
            Err(_) => false,
        }
    }

    /// The raw work of the chain of `depth`: (key, signing input, signature) of every token.
    fn raw_parts(&self, depth: usize) -> Res<Vec<RawToken>> {
        let chain = self.chains.get(depth).ok_or("depth above 8")?;
        let mut out = Vec::new();
        for (i, tok) in chain.tokens().enumerate() {
            let key = if i == 0 {
                JwsSigner::public_key(&self.authority).raw_bytes().to_vec()
            } else {
                self.holders
                    .get(i - 1)
                    .ok_or("no holder")?
                    .1
                    .raw_bytes()
                    .to_vec()
            };
            let dot = tok.rfind('.').ok_or("not a JWS")?;
            let input = tok.get(..dot).ok_or("not a JWS")?.as_bytes().to_vec();
            let sig = URL_SAFE_NO_PAD.decode(tok.get(dot + 1..).ok_or("not a JWS")?)?;
            out.push((key, input, sig));
        }
        Ok(out)
    }

    fn raw_alg(&self) -> &'static dyn VerificationAlgorithm {
        match self.alg {
            Algorithm::Ed25519 => &ED25519,
            _ => &ECDSA_P256_SHA256_FIXED,
        }
    }

    /// Figure 2's target: the `prev` hash and the `cnf` key check the spec requires are a larger
    /// share of a cheaper signature, so EdDSA's is higher.
    fn target(&self) -> f64 {
        match self.alg {
            Algorithm::Ed25519 => 1.25,
            _ => 1.15,
        }
    }

    /// The JWS name of the family's algorithm.
    pub fn name(&self) -> &'static str {
        match self.alg {
            Algorithm::Ed25519 => "eddsa",
            _ => "es256",
        }
    }
}

/// `--profile-chain es256|eddsa DEPTH N [cached|raw]`: verifies the chain of `DEPTH` N times
/// (phases 1-8 and `authorize`, as figure 2 does; `cached`: with a token cache), or (`raw`) does
/// figure 2's baseline N times, the (DEPTH + 1) raw verifications, for `valgrind
/// --tool=callgrind` (instruction counts are reproducible on a busy machine). The chains are
/// built before the loop: run two N and take the difference for the cost of one.
pub fn profile(args: &[String]) -> Res<()> {
    let alg = match args.get(1).map(String::as_str) {
        Some("eddsa") => Algorithm::Ed25519,
        _ => Algorithm::Es256,
    };
    let depth: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let n: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let mut fam = Synth::new(alg)?;
    let mode = args.get(4).map(String::as_str);
    if mode == Some("cached") {
        fam.verifier = fam
            .verifier
            .clone()
            .with_cache(std::sync::Arc::new(agentid_protocol::TokenCache::new(64)));
    }
    let scope = Scope::parse("repo:read")?;
    let t = now();
    let ok = Check::new();
    if mode == Some("raw") {
        let parts = fam.raw_parts(depth)?;
        let alg = fam.raw_alg();
        for _ in 0..n {
            for (k, m, s) in &parts {
                ok.and(
                    UnparsedPublicKey::new(alg, black_box(k))
                        .verify(black_box(m), s)
                        .is_ok(),
                );
            }
        }
    } else {
        for _ in 0..n {
            ok.and(fam.verify(black_box(depth), &scope, t));
        }
    }
    if !ok.get() {
        return Err("a verification failed".into());
    }
    println!("{n} chains of depth {depth} verified");
    Ok(())
}

/// (key, signing input, signature) of one token.
type RawToken = (Vec<u8>, Vec<u8>, Vec<u8>);

/// Figure 2.
pub fn run(families: &[&Synth], budget: Budget, report: &mut Report) -> Res<()> {
    report.section(
        "2. chain verification alone (phases 1-8 + authorize) vs (depth+1) raw verifications",
    );
    let scope = Scope::parse("repo:read")?;
    let t = now();
    for fam in families {
        for depth in [0usize, 1, 2, 8] {
            let parts = fam.raw_parts(depth)?;
            let alg = fam.raw_alg();
            let ok = Check::new();
            let r = compare(
                budget,
                &mut [
                    &mut || {
                        for (k, m, s) in &parts {
                            ok.and(
                                UnparsedPublicKey::new(alg, black_box(k))
                                    .verify(black_box(m), s)
                                    .is_ok(),
                            );
                        }
                    },
                    &mut || ok.and(fam.verify(black_box(depth), &scope, t)),
                ],
            );
            if !ok.get() {
                return Err(format!("{} depth {depth}: verification failed", fam.name()).into());
            }
            let (raw, ours) = (
                r.first().copied().unwrap_or(0.0),
                r.get(1).copied().unwrap_or(0.0),
            );
            report.time(
                &format!("fig2.chain_verify.{}.depth{depth}", fam.name()),
                ours,
                "chain",
                ours / raw,
                &format!("{} raw verify = {:.1} us", depth + 1, raw / 1000.0),
                Target::AtMost(fam.target()),
            );
        }
    }
    Ok(())
}
