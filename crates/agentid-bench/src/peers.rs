//! Figure 4: the peers a user would pick instead, in the same process. biscuit-auth 6 verifying
//! and authorizing a token with an authority block and N attenuation blocks, against our chain
//! at the same depth and key type; jsonwebtoken (aws-lc-rs backend) verifying one ES256 JWT with
//! `exp` and `aud` checks, against our depth-0 chain (one grant, all eight phases).

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use agentid_protocol::{Algorithm, JwsSigner, Scope};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use biscuit_auth::builder::{fact, string, Algorithm as BAlg};
use biscuit_auth::builder_ext::BuilderExt as _;
use biscuit_auth::{AuthorizerBuilder, AuthorizerLimits, Biscuit, BlockBuilder, KeyPair};
use serde::Deserialize;

use crate::chains::Synth;
use crate::fixtures::{now, Res};
use crate::harness::{compare, Budget, Check};
use crate::report::{Report, Target};

/// A biscuit with the facts of our grant in its authority block and `n` attenuation blocks,
/// each restricting the operation and the expiry (as our links narrow scope and `exp`).
fn biscuit_token(
    alg: BAlg,
    n: usize,
    holder: &str,
    task: &str,
    exp: SystemTime,
) -> Res<(Vec<u8>, biscuit_auth::PublicKey)> {
    let root = KeyPair::new_with_algorithm(alg);
    let mut token = Biscuit::builder()
        .fact(fact("right", &[string("repo:read")]))?
        .fact(fact("right", &[string("repo:write")]))?
        .fact(fact("right", &[string("repo:admin")]))?
        .fact(fact("holder", &[string(holder)]))?
        .fact(fact("task", &[string(task)]))?
        .check_expiration_date(exp)
        .build(&root)?;
    for _ in 0..n {
        let block = BlockBuilder::new()
            .check_operation("repo:read")
            .check_expiration_date(exp);
        token = token.append_with_keypair(&KeyPair::new_with_algorithm(alg), block)?;
    }
    Ok((token.to_vec()?, root.public()))
}

/// Verifies the token's signatures and runs the authorizer for operation `repo:read`.
fn biscuit_verify(data: &[u8], root: &biscuit_auth::PublicKey) -> bool {
    let run = || -> Result<usize, biscuit_auth::error::Token> {
        let token = Biscuit::from(data, root)?;
        let mut authorizer = AuthorizerBuilder::new()
            .time()
            .fact(fact("operation", &[string("repo:read")]))?
            .policy("allow if operation($op), right($op)")?
            .build(&token)?;
        // biscuit's default run-time limit is 1 ms, which a preempted run on a busy machine
        // exceeds: allow one second, as biscuit-auth's own benchmarks do.
        authorizer.authorize_with_limits(AuthorizerLimits {
            max_time: Duration::from_secs(1),
            ..Default::default()
        })
    };
    run().is_ok()
}

/// The claims a jsonwebtoken user would decode: those of our grant, plus `aud`.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct JwtClaims {
    ver: u8,
    iss: String,
    sub: String,
    aud: Vec<String>,
    cnf: serde_json::Value,
    task: String,
    scope: String,
    mode: String,
    max_depth: u8,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
}

/// Figure 4.
pub fn run(es: &Synth, ed: &Synth, budget: Budget, report: &mut Report) -> Res<()> {
    report.section(
        "4. peers: biscuit-auth 6 (verify + authorize) and jsonwebtoken 12 (ES256, exp + aud)",
    );
    let scope = Scope::parse("repo:read")?;
    let t = now();
    let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(es.exp);
    for (fam, balg, target) in [(ed, BAlg::Ed25519, 1.5), (es, BAlg::Secp256r1, 5.0)] {
        let (holder, _) = fam.holders.first().ok_or("no holder")?;
        for n in [0usize, 2, 8] {
            let (data, root) =
                biscuit_token(balg, n, holder.as_str(), holder.task_id().as_str(), exp)?;
            let ok = Check::new();
            let r = compare(
                budget,
                &mut [
                    &mut || ok.and(biscuit_verify(black_box(&data), &root)),
                    &mut || ok.and(fam.verify(black_box(n), &scope, t)),
                ],
            );
            if !ok.get() {
                return Err(format!("figure 4: {} depth {n} failed", fam.name()).into());
            }
            let (theirs, ours) = (
                r.first().copied().unwrap_or(0.0),
                r.get(1).copied().unwrap_or(0.0),
            );
            report.time(
                &format!("fig4.biscuit.{}.blocks{n}", fam.name()),
                theirs,
                "token",
                1.0,
                &format!("biscuit-auth, {} bytes", data.len()),
                Target::None,
            );
            let depth_target = if n == 0 {
                Target::None
            } else {
                Target::AtMost(1.0 / target)
            };
            report.time(
                &format!("fig4.agentid_vs_biscuit.{}.depth{n}", fam.name()),
                ours,
                "chain",
                ours / theirs,
                &format!(
                    "biscuit-auth = {:.1}x faster, target {target}x at depths 2 and 8",
                    theirs / ours
                ),
                depth_target,
            );
        }
    }

    // jsonwebtoken: the grant's own claims plus `aud`, signed with the same P-256 authority key.
    let grant = es.chains.first().ok_or("no grant")?;
    let payload_b64 = grant.as_str().split('.').nth(1).ok_or("not a JWS")?;
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload_b64)?)?;
    let own = "spiffe://bench.example/svc/api";
    if let Some(m) = claims.as_object_mut() {
        m.insert("aud".into(), serde_json::json!([own]));
    }
    let enc = jsonwebtoken::EncodingKey::from_ec_der(es.authority.pkcs8_der());
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &enc,
    )?;
    let dec =
        jsonwebtoken::DecodingKey::from_ec_der(JwsSigner::public_key(&es.authority).raw_bytes());
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[own]);
    validation.set_issuer(&["spiffe://bench.example"]);
    validation.validate_nbf = true;
    let ok = Check::new();
    let r = compare(
        budget,
        &mut [
            &mut || {
                ok.and(
                    jsonwebtoken::decode::<JwtClaims>(black_box(&jwt), &dec, &validation).is_ok(),
                )
            },
            &mut || ok.and(es.verify(black_box(0), &scope, t)),
        ],
    );
    if !ok.get() || es.alg != Algorithm::Es256 {
        return Err("figure 4: jsonwebtoken comparison failed".into());
    }
    let (theirs, ours) = (
        r.first().copied().unwrap_or(0.0),
        r.get(1).copied().unwrap_or(0.0),
    );
    report.time(
        "fig4.jsonwebtoken.es256",
        theirs,
        "token",
        1.0,
        "jsonwebtoken decode, exp+aud+iss+nbf",
        Target::None,
    );
    report.time(
        "fig4.agentid_vs_jsonwebtoken.es256.depth0",
        ours,
        "chain",
        ours / theirs,
        "jsonwebtoken",
        Target::AtMost(1.10),
    );
    Ok(())
}
