//! Figures 1 and 3: session establishment in memory (a `tokio::io::duplex` pair, no sockets),
//! both ends on one thread, so a figure is the CPU cost of one session for both sides.

use std::hint::black_box;
use std::sync::Arc;

use agentid_protocol::TokenCache;
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

    let ok = Check::new();
    let [c0, c2, c8] = &clients;
    // The cache is filled by the warm-up and then holds all nine tokens of the depth-8 chain.
    let r = compare(
        budget,
        &mut [
            &mut || raw_once(&rt, &acceptor, &connector, &ok),
            &mut || agentid_once(&rt, &server, c0, &ok),
            &mut || agentid_once(&rt, &server, c2, &ok),
            &mut || agentid_once(&rt, &server, c8, &ok),
            &mut || agentid_once(&rt, &cached_server, c8, &ok),
        ],
    );
    if !ok.get() {
        return Err("a handshake failed during figure 1".into());
    }
    let get = |i: usize| r.get(i).copied().unwrap_or(0.0);
    let raw = get(0);
    report.section("1. session establishment in memory (duplex pair, both ends on one thread)");
    report.baseline("fig1.raw_rustls_mtls_handshake", raw, "handshake");
    report.baseline("fig1.raw_sig.p256_sign", ops.p256_sign, "op");
    report.baseline("fig1.raw_sig.p256_verify", ops.p256_verify, "op");
    report.baseline("fig1.raw_sig.ed25519_sign", ops.ed_sign, "op");
    report.baseline("fig1.raw_sig.ed25519_verify", ops.ed_verify, "op");
    // Two hop proofs signed and verified, plus one verification per chain token.
    let required =
        |depth: usize| 2.0 * ops.p256_sign + (2.0 + depth as f64 + 1.0) * ops.p256_verify;
    for (i, depth) in [(1, 0usize), (2, 2), (3, 8)] {
        let ours = get(i);
        let base = raw + required(depth);
        report.time(
            &format!("fig1.agentid_session.depth{depth}"),
            ours,
            "session",
            ours / base,
            &format!(
                "raw handshake + 2 sign + {} verify = {:.0} us",
                depth + 3,
                base / 1000.0
            ),
            Target::AtMost(1.10),
        );
    }
    for (i, depth) in [(1, 0usize), (2, 2), (3, 8)] {
        let over = get(i) - raw - required(depth);
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
    let base = raw + 2.0 * ops.p256_sign + 2.0 * ops.p256_verify;
    report.time(
        "fig3.agentid_session.depth8_cached",
        cached,
        "session",
        cached / base,
        &format!(
            "raw handshake + 2 proofs' sign+verify = {:.0} us",
            base / 1000.0
        ),
        Target::AtMost(1.10),
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

/// The raw signature operations of figures 1 and 3's baselines, as `sigops` measures them
/// (ES256 with a fixed-size signature, over a message the size of a token's signing input).
struct RawSigs {
    rng: SystemRandom,
    key: EcdsaKeyPair,
    public: Vec<u8>,
    sig: Vec<u8>,
}

/// A message the size of a typical token's signing input (as `sigops`).
const MSG: [u8; 512] = [0x61; 512];

impl RawSigs {
    fn new() -> Res<Self> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)?;
        let public = key.public_key().as_ref().to_vec();
        let sig = key.sign(&rng, &MSG)?.as_ref().to_vec();
        Ok(Self {
            rng,
            key,
            public,
            sig,
        })
    }

    /// `signs` P-256 signatures and `verifies` P-256 verifications.
    fn run(&self, signs: usize, verifies: usize, ok: &Check) {
        for _ in 0..signs {
            ok.and(self.key.sign(&self.rng, black_box(&MSG)).is_ok());
        }
        for _ in 0..verifies {
            ok.and(
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, black_box(&self.public))
                    .verify(black_box(&MSG), &self.sig)
                    .is_ok(),
            );
        }
    }
}

/// `--profile-session agentid|raw|cached|baseline|baseline-cached N [DEPTH]`: N in-memory
/// sessions (agentid at `DEPTH`, default 0; `cached`: the depth-8 chain against a server with a
/// token cache), N raw handshakes, or N times a figure's whole baseline (`baseline`: a raw
/// handshake, 2 P-256 signs and `DEPTH` + 3 P-256 verifications, figure 1; `baseline-cached`: a
/// raw handshake, 2 signs and 2 verifications, figure 3), for `valgrind --tool=callgrind`
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
            let sigs = RawSigs::new()?;
            let (signs, verifies) = match mode {
                "baseline" => (2, depth + 3),
                "baseline-cached" => (2, 2),
                _ => (0, 0),
            };
            for _ in 0..n {
                raw_once(&rt, &acceptor, &connector, &ok);
                sigs.run(signs, verifies, &ok);
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
