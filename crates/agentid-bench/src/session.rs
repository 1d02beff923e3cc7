//! Figures 1 and 3: session establishment in memory (a `tokio::io::duplex` pair, no sockets),
//! both ends on one thread, so a figure is the CPU cost of one session for both sides.

use std::hint::black_box;
use std::sync::Arc;

use agentid_protocol::{ProofBuilder, Role, TokenCache};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use tokio::runtime::Runtime;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::fixtures::{server_name, Pki, Res};
use crate::harness::{compare, Budget, Check};
use crate::report::{Report, Target};
use crate::sigops::SigOps;

const DUPLEX_BUF: usize = 64 * 1024;

fn runtime() -> Res<Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// One raw tokio-rustls mTLS handshake over a duplex pair.
pub(crate) fn raw_once(rt: &Runtime, acceptor: &TlsAcceptor, connector: &TlsConnector, ok: &Check) {
    rt.block_on(async {
        let (a, b) = tokio::io::duplex(DUPLEX_BUF);
        let (s, c) = tokio::join!(acceptor.accept(a), connector.connect(server_name(), b));
        ok.and(s.is_ok() && c.is_ok());
    });
}

/// One agentid session (TLS, verifiers, hello with chain and proof, accept with proof).
fn agentid_once(
    rt: &Runtime,
    server: &agentid_transport::AgentServer,
    client: &agentid_transport::AgentClient,
    ok: &Check,
) {
    rt.block_on(async {
        let (a, b) = tokio::io::duplex(DUPLEX_BUF);
        let (s, c) = tokio::join!(server.accept(a), client.connect_with(b));
        ok.and(s.is_ok() && c.is_ok());
    });
}

/// Figure 1 (depths 0, 2, 8) and figure 3 (a repeated depth-8 chain with the token cache).
///
/// Two baselines per figure, both reported:
/// - **composite** (the one the targets are judged on): a raw tokio-rustls mTLS handshake
///   followed by the session's required signature operations ([`RequiredSigs`]) in one call,
///   timed in the same interleaved rounds as the sessions;
/// - **composed** (the earlier figure, kept for comparison): the raw handshake of the same rounds
///   plus each signature operation's time from `sigops`' hot loop (512-byte messages), which
///   runs with warm caches and so understates what the same operations cost after a handshake.
pub fn run(pki: &Pki, ops: &SigOps, budget: Budget, report: &mut Report) -> Res<()> {
    let rt = runtime()?;
    let acceptor = TlsAcceptor::from(pki.raw_server_config()?);
    let connector = TlsConnector::from(pki.raw_client_config(0)?);
    let server = pki.agentid_server(None)?;
    let cache = Arc::new(TokenCache::new(4096));
    let cached_server = pki.agentid_server(Some(cache.clone()))?;
    let clients = [
        pki.agentid_client(0)?,
        pki.agentid_client(2)?,
        pki.agentid_client(8)?,
    ];
    let required = [
        RequiredSigs::new(pki, 0, false)?,
        RequiredSigs::new(pki, 2, false)?,
        RequiredSigs::new(pki, 8, false)?,
        RequiredSigs::new(pki, 8, true)?,
    ];

    let ok = Check::new();
    let [c0, c2, c8] = &clients;
    let [q0, q2, q8, q8c] = &required;
    // The cache is filled by the warm-up and then holds all nine tokens of the depth-8 chain.
    let r = compare(
        budget,
        &mut [
            &mut || raw_once(&rt, &acceptor, &connector, &ok),
            &mut || agentid_once(&rt, &server, c0, &ok),
            &mut || agentid_once(&rt, &server, c2, &ok),
            &mut || agentid_once(&rt, &server, c8, &ok),
            &mut || agentid_once(&rt, &cached_server, c8, &ok),
            &mut || composite_once(&rt, &acceptor, &connector, q0, &ok),
            &mut || composite_once(&rt, &acceptor, &connector, q2, &ok),
            &mut || composite_once(&rt, &acceptor, &connector, q8, &ok),
            &mut || composite_once(&rt, &acceptor, &connector, q8c, &ok),
        ],
    );
    if !ok.get() {
        return Err("a handshake or a signature operation failed during figure 1".into());
    }
    let get = |i: usize| r.get(i).copied().unwrap_or(0.0);
    let raw = get(0);
    report.section("1. session establishment in memory (duplex pair, both ends on one thread)");
    report.baseline("fig1.raw_rustls_mtls_handshake", raw, "handshake");
    report.baseline("fig1.raw_sig.p256_sign", ops.p256_sign, "op");
    report.baseline("fig1.raw_sig.p256_verify", ops.p256_verify, "op");
    report.time(
        "fig1.raw_sig.p256_verify_distinct",
        ops.p256_verify_distinct,
        "op",
        ops.p256_verify_distinct / ops.p256_verify,
        "one signature verified again and again; here each call verifies the next of 1,024 distinct signatures, as a session verifies new proofs (the composite baselines verify proofs so)",
        Target::None,
    );
    report.baseline("fig1.raw_sig.ed25519_sign", ops.ed_sign, "op");
    report.baseline("fig1.raw_sig.ed25519_verify", ops.ed_verify, "op");
    // Composed: two hop proofs signed and verified, plus one verification per chain token,
    // each at its hot-loop time.
    let composed = |signs: usize, verifies: usize| {
        raw + signs as f64 * ops.p256_sign + verifies as f64 * ops.p256_verify
    };
    for (i, depth, q) in [(1, 0usize, q0), (2, 2, q2), (3, 8, q8)] {
        let ours = get(i);
        let (signs, verifies) = q.counts();
        let base = get(i + 4);
        report.baseline(
            &format!("fig1.composite_baseline.depth{depth}"),
            base,
            "handshake + signatures",
        );
        report.time(
            &format!("fig1.agentid_session.depth{depth}"),
            ours,
            "session",
            ours / base,
            &format!("composite: raw handshake then {signs} sign + {verifies} verify, measured"),
            Target::AtMost(1.10),
        );
        let old = composed(signs, verifies);
        report.time(
            &format!("fig1.agentid_session_vs_composed.depth{depth}"),
            ours,
            "session",
            ours / old,
            &format!(
                "composed: raw handshake + {signs} sign + {verifies} verify from sigops = {:.0} us",
                old / 1000.0
            ),
            Target::None,
        );
    }
    for (i, depth) in [(1, 0usize), (2, 2), (3, 8)] {
        let over = get(i) - get(i + 4);
        report.time(
            &format!("fig1.agentid_overhead_beyond_crypto.depth{depth}"),
            over.max(0.0),
            "session",
            over / raw,
            "raw handshake",
            Target::None,
        );
    }

    report.section("3. verified-token cache: a repeated depth-8 chain on a new connection");
    let cached = get(4);
    let (signs, verifies) = q8c.counts();
    let base = get(8);
    report.baseline(
        "fig3.composite_baseline.depth8_cached",
        base,
        "handshake + signatures",
    );
    report.time(
        "fig3.agentid_session.depth8_cached",
        cached,
        "session",
        cached / base,
        &format!("composite: raw handshake then {signs} sign + {verifies} verify, measured"),
        Target::AtMost(1.10),
    );
    let old = composed(signs, verifies);
    report.time(
        "fig3.agentid_session_vs_composed.depth8_cached",
        cached,
        "session",
        cached / old,
        &format!(
            "composed: raw handshake + {signs} sign + {verifies} verify from sigops = {:.0} us",
            old / 1000.0
        ),
        Target::None,
    );
    report.time(
        "fig3.agentid_session.depth8_uncached",
        get(3),
        "session",
        get(3) / cached,
        "cached",
        Target::None,
    );
    report.line(
        "fig3.cache_entries",
        cache.len() as f64,
        "tokens",
        1.0,
        "after the run",
        Target::None,
    );
    Ok(())
}

/// A raw public point, a message and its signature.
type Signed = (Vec<u8>, Vec<u8>, Vec<u8>);

/// The signature operations a session requires, done with aws-lc-rs alone on the messages a
/// session signs and verifies: the baselines of figures 1, 3 and 10 (wall clock in [`run`] and
/// in figure 10, callgrind in [`profile`]).
///
/// The messages are real: the signing inputs (`header.payload`) of a client and a server hop
/// proof built for this server and holder, and of every token of the chain at the figure's
/// depth. Each is signed in setup by its own fresh P-256 key (ES256, fixed-size signature), so
/// a verification parses its key from the raw point, hashes a message of the real size and
/// checks a valid signature, as the session does; what the session adds (JSON, framing, claims,
/// revocation digests, hashes, allocation) is not here.
///
/// **Fresh proofs, as a session sees them.** A session verifies two hop proofs it has never
/// seen (new exporter values, a new ECDSA nonce), while its chain's tokens are the same on
/// every session. ECDSA verification in aws-lc runs variable-time code (the inversion of `s`,
/// the double-scalar multiplication), whose branches depend on the signature; verifying one
/// fixed signature over and over lets the branch predictor learn them, which makes it about
/// 9% cheaper than verifying a new one on this host (an interleaved loop, 2026-12-06: 37.2 us
/// against 40.4 us, the same instruction count under callgrind). So each proof's verification
/// takes the next of [`PROOF_VARIANTS`] distinct proofs (distinct exporter values, each signed
/// in setup), and the chain's tokens stay the same signatures on every call.
pub(crate) struct RequiredSigs {
    rng: SystemRandom,
    /// The two hop proofs' signing inputs with the key that signs each (one per side).
    signs: Vec<(EcdsaKeyPair, Vec<u8>)>,
    /// Per hop proof, [`PROOF_VARIANTS`] raw public points, messages and signatures (one key per
    /// proof, as one side's key signs its proof on every session).
    proofs: Vec<Vec<Signed>>,
    /// Raw public point, message and signature of each chain token's verification.
    tokens: Vec<Signed>,
    /// The proof variant the next call verifies.
    next: std::cell::Cell<usize>,
}

/// How many distinct signed variants of each hop proof [`RequiredSigs`] cycles through: far
/// more signatures than a branch predictor can learn.
const PROOF_VARIANTS: usize = 1024;

/// The signing input of a compact JWS (everything before the last `.`).
fn signing_input(compact: &str) -> Res<Vec<u8>> {
    let end = compact
        .rfind('.')
        .ok_or("a compact JWS without a signature")?;
    Ok(compact
        .get(..end)
        .ok_or("a compact JWS without a signature")?
        .as_bytes()
        .to_vec())
}

impl RequiredSigs {
    /// Figure 1 (and 10) at `depth` (2 signs, `depth` + 3 verifications: both proofs and every
    /// chain token), or figure 3's cached depth-8 session with `proofs_only` (2 signs, the 2
    /// proofs' verifications: the chain's tokens come from the cache).
    pub(crate) fn new(pki: &Pki, depth: usize, proofs_only: bool) -> Res<Self> {
        let rng = SystemRandom::new();
        let holder = pki.holders.get(depth).ok_or("depth above 8")?;
        let chain = pki.chains.get(depth).ok_or("depth above 8")?;
        let now = crate::fixtures::now();
        // One client and one server proof per variant, the exporter values telling them apart
        // (as a new TLS connection does).
        let proofs_for = |variant: usize| -> Res<[Vec<u8>; 2]> {
            let mut exporter = [0x5a; 32];
            exporter[..8].copy_from_slice(&(variant as u64).to_be_bytes());
            let client_proof = ProofBuilder::new(
                holder.id.as_spiffe_id(),
                pki.server.id.as_spiffe_id(),
                Role::Client,
                exporter,
                now,
                now + 60,
            )
            .chain(chain.as_str())
            .sign(&holder.key)?;
            exporter[8] ^= 0xff;
            let server_proof = ProofBuilder::new(
                pki.server.id.as_spiffe_id(),
                holder.id.as_spiffe_id(),
                Role::Server,
                exporter,
                now,
                now + 60,
            )
            .responding_to(&client_proof)
            .sign(&pki.server.key)?;
            Ok([signing_input(&client_proof)?, signing_input(&server_proof)?])
        };
        let first = proofs_for(0)?;
        let signs = first
            .iter()
            .map(|m| {
                Ok((
                    EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)?,
                    m.clone(),
                ))
            })
            .collect::<Res<Vec<_>>>()?;
        let proof_keys = [
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)?,
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)?,
        ];
        let mut proofs: Vec<Vec<Signed>> = vec![
            Vec::with_capacity(PROOF_VARIANTS),
            Vec::with_capacity(PROOF_VARIANTS),
        ];
        for variant in 0..PROOF_VARIANTS {
            let messages = if variant == 0 {
                first.clone()
            } else {
                proofs_for(variant)?
            };
            for ((pool, key), m) in proofs.iter_mut().zip(&proof_keys).zip(messages) {
                let sig = key.sign(&rng, &m)?.as_ref().to_vec();
                pool.push((key.public_key().as_ref().to_vec(), m, sig));
            }
        }
        let mut tokens = Vec::new();
        if !proofs_only {
            for token in chain.tokens() {
                let m = signing_input(token)?;
                let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)?;
                let sig = key.sign(&rng, &m)?.as_ref().to_vec();
                tokens.push((key.public_key().as_ref().to_vec(), m, sig));
            }
        }
        Ok(Self {
            rng,
            signs,
            proofs,
            tokens,
            next: std::cell::Cell::new(0),
        })
    }

    /// The number of signs and verifications.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.signs.len(), self.proofs.len() + self.tokens.len())
    }

    /// Every sign, then every verification: the next variant of each proof, then every chain
    /// token.
    pub(crate) fn run(&self, ok: &Check) {
        for (key, msg) in &self.signs {
            ok.and(key.sign(&self.rng, black_box(msg)).is_ok());
        }
        let variant = self.next.get();
        self.next.set((variant + 1) % PROOF_VARIANTS);
        for pool in &self.proofs {
            match pool.get(variant) {
                Some((public, msg, sig)) => ok.and(verify(public, msg, sig)),
                None => ok.and(false),
            }
        }
        for (public, msg, sig) in &self.tokens {
            ok.and(verify(public, msg, sig));
        }
    }
}

/// One raw ES256 verification from the raw public point.
fn verify(public: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, black_box(public))
        .verify(black_box(msg), sig)
        .is_ok()
}

/// A figure's composite baseline: one raw mTLS handshake, then the signature operations the
/// session requires, in one call (so they are timed in the same interleaved rounds as the
/// session, with the caches a handshake leaves).
fn composite_once(
    rt: &Runtime,
    acceptor: &TlsAcceptor,
    connector: &TlsConnector,
    sigs: &RequiredSigs,
    ok: &Check,
) {
    raw_once(rt, acceptor, connector, ok);
    sigs.run(ok);
}

/// `--profile-session agentid|raw|cached|baseline|baseline-cached N [DEPTH]`: N in-memory
/// sessions (agentid at `DEPTH`, default 0; `cached`: the depth-8 chain against a server with a
/// token cache), N raw handshakes, or N times a figure's whole baseline (`baseline`: a raw
/// handshake, 2 P-256 signs and `DEPTH` + 3 P-256 verifications, figure 1; `baseline-cached`: a
/// raw handshake, 2 signs and 2 verifications, figure 3; the messages as in
/// [`RequiredSigs`]), for `valgrind --tool=callgrind`
/// (instruction counts are reproducible when wall time is not). The fixtures (CA, chains) are
/// built before the loop: run two N and take the difference for the cost of one.
pub fn profile(args: &[String]) -> Res<()> {
    let mode = args.get(1).map(String::as_str).unwrap_or("agentid");
    let n: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(100);
    let depth: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let pki = Pki::new()?;
    let rt = runtime()?;
    let ok = Check::new();
    match mode {
        "raw" | "baseline" | "baseline-cached" => {
            let acceptor = TlsAcceptor::from(pki.raw_server_config()?);
            let connector = TlsConnector::from(pki.raw_client_config(0)?);
            let sigs = match mode {
                "baseline" => Some(RequiredSigs::new(&pki, depth, false)?),
                "baseline-cached" => Some(RequiredSigs::new(&pki, 8, true)?),
                _ => None,
            };
            for _ in 0..n {
                match &sigs {
                    Some(sigs) => composite_once(&rt, &acceptor, &connector, sigs, &ok),
                    None => raw_once(&rt, &acceptor, &connector, &ok),
                }
            }
        }
        "cached" => {
            let server = pki.agentid_server(Some(Arc::new(TokenCache::new(4096))))?;
            let client = pki.agentid_client(8)?;
            for _ in 0..n {
                agentid_once(&rt, &server, &client, &ok);
            }
        }
        _ => {
            let server = pki.agentid_server(None)?;
            let client = pki.agentid_client(depth)?;
            for _ in 0..n {
                agentid_once(&rt, &server, &client, &ok);
            }
        }
    }
    if !ok.get() {
        return Err("a handshake failed".into());
    }
    println!("{n} {mode} sessions");
    Ok(())
}
