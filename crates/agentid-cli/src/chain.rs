//! `agentid chain verify`: the reference chain verifier for interop testers.
//!
//! The command builds a verifier from its arguments and verifies the chain with the protocol
//! crate's API, so its `verdict` is what a spec vector's `expected` would be for the same input:
//! `{"valid":true, ...result...}` or `{"valid":false,"error":CODE,"index":N}` (`index` null when
//! the failure is not tied to a token). The report adds every token's header and claims, decoded for display only (NOT
//! verified: the verdict says what holds), the peer, the verifier and the time.

use std::path::PathBuf;

use agentid_protocol::{
    AuthorityPolicy, ErrorCode, PeerId, Scope, TrustBundle, TrustDomain, VerifiedChain, Verifier,
    VerifierConfig,
};
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::common::{now_unix, parse_time, print_json, print_text, relative, rfc3339, Format};
use crate::delegate::parse_scope;
use crate::error::{ArgContext, CliError, CliResult};
use crate::files;
use crate::trust::{self, parse_bundle_arg, Bare, BundleArg, BundleFile};

/// `chain` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ChainCommand {
    /// Verify a chain presented by a peer (phases 1-8) and print a per-token report.
    Verify(VerifyArgs),
}

/// Arguments of `chain verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The chain file (grant and links joined with `~`).
    pub chain_file: PathBuf,
    /// SPIFFE bundle (JSON) of a trust domain, as `TD=FILE` (a bundle file does not say whose it
    /// is, and the peer certificate cannot say it for the file). Repeatable, one per trust domain.
    #[arg(long = "bundle", required = true, value_parser = parse_bundle_arg)]
    pub bundles: Vec<BundleArg>,
    /// The TLS peer's certificate (PEM, leaf first): its URI SAN and key are the possession check.
    #[arg(long)]
    pub peer_cert: PathBuf,
    /// The verifier's own ID (a task identity or service ID), for the audience check and the
    /// default authority (default: `spiffe://<peer's trust domain>/svc/agentid-cli`).
    #[arg(long)]
    pub verifier: Option<String>,
    /// Authorize this requested scope after verification (repeatable).
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// Revocation lists (compact JWS), one per trust domain at least for every domain in the
    /// chain and the peer's.
    #[arg(long = "revocations")]
    pub revocations: Vec<PathBuf>,
    /// Another trust domain whose authority may grant here: `TD` (any scope) or `TD=PATTERNS`
    /// (space-separated scope patterns). Default: the verifier's own trust domain only.
    #[arg(long = "authority", value_name = "TD[=PATTERNS]")]
    pub authorities: Vec<String>,
    /// A limit name this verifier enforces (repeatable); chains with other limits fail.
    #[arg(long = "enforce-limit")]
    pub limits: Vec<String>,
    /// Verify at this time instead of now: RFC 3339 or Unix seconds.
    #[arg(long, value_parser = parse_time)]
    pub at: Option<u64>,
    /// Allowed clock skew in seconds (at most 120).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=120))]
    pub skew: u64,
    /// DANGER: accept missing or stale revocation lists (never in production).
    #[arg(long)]
    pub danger_no_revocation: bool,
    /// DANGER: do not validate the peer certificate's X.509 chain (for synthetic test peers);
    /// its X509-SVID leaf profile is still checked.
    #[arg(long)]
    pub danger_unverified_peer_cert: bool,
    /// Output format (`json` by default: this is the interop report).
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
}

/// Runs a `chain` subcommand.
pub fn run(cmd: &ChainCommand) -> CliResult {
    match cmd {
        ChainCommand::Verify(a) => verify(a),
    }
}

fn verify(args: &VerifyArgs) -> CliResult {
    let at = match args.at {
        Some(t) => t,
        None => now_unix()?,
    };
    // The command line first (status 2): the verifier's ID, the authorities, the scope.
    let verifier_arg = args
        .verifier
        .as_deref()
        .map(|v| PeerId::parse(v).bad_arg("--verifier", v))
        .transpose()?;
    let authorities = parse_authorities(&args.authorities)?;
    for name in &args.limits {
        // A limit name as section 7.3 spells one (the verifier would refuse it as `bad_config`).
        agentid_protocol::Limits::new([(name.clone(), 0)].into_iter().collect())
            .map_err(|e| e.detail().to_owned())
            .bad_arg("--enforce-limit", name)?;
    }
    let requested = if args.scopes.is_empty() {
        None
    } else {
        Some(parse_scope(&args.scopes)?)
    };
    let chain = files::read_text(&args.chain_file)?;

    // The peer: its identity and key from the certificate, checked against its trust domain.
    let peer = if args.danger_unverified_peer_cert {
        tracing::warn!("peer certificate chain not validated (--danger-unverified-peer-cert)");
        let certs = files::read_certs(&args.peer_cert)?;
        let leaf = certs
            .first()
            .ok_or_else(|| CliError::failed("no peer certificate"))?;
        agentid_transport::check_leaf(leaf.as_ref(), agentid_transport::CertUsage::ClientAuth)
            .map_err(|e| peer_invalid(args, at, &e.to_string()))?
    } else {
        crate::cert::verify::verify_file(&args.peer_cert, &args.bundles, Bare::Refused, at)?
            .map_err(|r| peer_invalid(args, at, &r))?
            .info
    };
    let peer_td = peer.id.trust_domain();

    let mut bundles = Vec::new();
    for (td, path) in trust::assign(&args.bundles, &peer_td, Bare::Refused)? {
        match trust::read_bundle_file(path)? {
            BundleFile::Spiffe(json) => bundles.push(trust::parse_spiffe(&td, &json, path)?),
            BundleFile::Pem(_) => {
                return Err(CliError::failed(format!(
                    "{}: chain verify needs a SPIFFE bundle (JSON, with grant and revocation keys), not PEM",
                    path.display()
                )))
            }
        }
    }
    let verifier_id = match &verifier_arg {
        Some(v) => v.as_str().to_owned(),
        None => format!("{}/svc/{DEFAULT_VERIFIER_SERVICE}", peer_td.id().as_str()),
    };
    let lists = args
        .revocations
        .iter()
        .map(|p| files::read_revocation_list(p))
        .collect::<CliResult<Vec<_>>>()?;
    if args.danger_no_revocation {
        tracing::warn!("missing or stale revocation lists accepted (--danger-no-revocation)");
    }
    // The protocol's own API: configuration (spec/PROTOCOL.md section 9), the peer's authority
    // (section 10), authorization (section 13). Any failure of these is the verdict.
    let tokens = decode_tokens(&chain);
    let inputs = Inputs {
        chain,
        bundles,
        lists,
        requested,
        authorities,
    };
    let (verdict, message) = match verify_at(args, inputs, &verifier_id, &peer, at) {
        Ok(verified) => {
            let mut v = Map::new();
            v.insert("valid".into(), Value::Bool(true));
            v.extend(verified.to_json());
            (Value::Object(v), None)
        }
        Err(e) => (
            json!({ "valid": false, "error": e.code().as_str(), "index": e.index() }),
            Some(explain(&e, &tokens, at)),
        ),
    };
    let summary = match &message {
        None => summary(&verdict),
        Some(m) => format!("invalid: {m}"),
    };
    let mut report = json!({
        "chain_file": args.chain_file.display().to_string(),
        "tokens": tokens,
        "peer": { "id": peer.id.as_str(), "jkt": peer.public_key.thumbprint(), "serial": peer.serial },
        "verifier": verifier_id,
        "at": at,
        "verdict": verdict,
    });
    if let (Some(m), Value::Object(r)) = (&message, &mut report) {
        r.insert("message".into(), Value::from(format!("chain invalid: {m}")));
    }
    // A verdict reached with a check turned off says so in the report itself, not only in a
    // warning on stderr that a pipeline drops.
    let skipped: Vec<&str> = [
        (args.danger_no_revocation, "revocation"),
        (args.danger_unverified_peer_cert, "peer_certificate"),
    ]
    .into_iter()
    .filter_map(|(on, check)| on.then_some(check))
    .collect();
    if let (false, Value::Object(r)) = (skipped.is_empty(), &mut report) {
        r.insert("danger_skipped".into(), json!(skipped));
    }
    match args.format {
        Format::Json => print_json(&report)?,
        Format::Text => print_text(&summary)?,
    }
    match message {
        None => Ok(()),
        Some(_) => Err(CliError::invalid(format!("chain {summary}")).reported()),
    }
}

/// The peer certificate did not verify: status 3, with the same message in the JSON report.
fn peer_invalid(args: &VerifyArgs, at: u64, reason: &str) -> CliError {
    let message = format!(
        "{}: peer certificate invalid: {reason}",
        args.peer_cert.display()
    );
    if args.format == Format::Json {
        let report = json!({
            "chain_file": args.chain_file.display().to_string(),
            "at": at,
            "peer_certificate": { "valid": false, "error": reason },
            "message": message,
        });
        if let Err(e) = print_json(&report) {
            return e;
        }
    }
    CliError::invalid(message).reported()
}

/// `--authority TD[=PATTERNS]` values (status 2 when malformed).
fn parse_authorities(values: &[String]) -> CliResult<Vec<(TrustDomain, Option<Scope>)>> {
    values
        .iter()
        .map(|a| match a.split_once('=') {
            None => Ok((TrustDomain::parse(a).bad_arg("--authority", a)?, None)),
            Some((td, patterns)) => Ok((
                TrustDomain::parse(td).bad_arg("--authority", a)?,
                Some(Scope::parse(patterns).bad_arg("--authority", a)?),
            )),
        })
        .collect()
}

/// A failed verification for people: the code, the token, the protocol's detail, the date
/// when time decided, and what to do next.
fn explain(e: &agentid_protocol::Error, tokens: &[Value], at: u64) -> String {
    let mut m = e.code().as_str().to_owned();
    if let Some(i) = e.index() {
        m.push_str(&format!(" at token {i}"));
    }
    m.push_str(&format!(": {}", e.detail()));
    let claim = |k: &str| {
        e.index()
            .and_then(|i| tokens.get(i))
            .and_then(|t| t.get("claims"))
            .and_then(|c| c.get(k))
            .and_then(Value::as_u64)
    };
    let hint = match e.code() {
        ErrorCode::Expired => Some(format!(
            "{}open a new task (`agentid cert issue`) or ask the holder for a new link (`agentid delegate`)",
            claim("exp")
                .map(|t| format!("it expired at {} ({}); ", rfc3339(t), relative(t, at)))
                .unwrap_or_default()
        )),
        ErrorCode::NotYetValid => Some(format!(
            "{}check the clock, or --at",
            claim("nbf")
                .map(|t| format!("it is valid from {} ({}); ", rfc3339(t), relative(t, at)))
                .unwrap_or_default()
        )),
        ErrorCode::RevocationMissing => Some(
            "pass --revocations FILE (see `agentid revocations export`)".to_owned(),
        ),
        ErrorCode::RevocationStale => Some(
            "pass a fresh list: `agentid revocations export --ca CA_DIR --out FILE`, then --revocations FILE".to_owned(),
        ),
        ErrorCode::BadRevocationList => Some(
            "pass the list `agentid revocations export` wrote for this trust domain, with the bundle of the same CA".to_owned(),
        ),
        ErrorCode::SequenceRollback => Some("pass only the newest list of each trust domain".to_owned()),
        ErrorCode::Revoked => Some(
            "the CA revoked it (`agentid revocations list` shows the entries); a new task is needed".to_owned(),
        ),
        ErrorCode::ScopeNotGranted => Some(
            "ask the holder for a link with that scope (`agentid delegate --scope ...`), or request less".to_owned(),
        ),
        ErrorCode::AudienceMismatch => Some(
            "pass the ID of the service the chain is meant for as --verifier".to_owned(),
        ),
        ErrorCode::PossessionMismatch | ErrorCode::HolderMismatch => Some(
            "the chain belongs to another holder: pass that holder's certificate as --peer-cert".to_owned(),
        ),
        ErrorCode::UntrustedAuthority | ErrorCode::BadBundle => Some(
            "pass the bundle of the CA that issued the chain (`agentid bundle export --format agentid`)".to_owned(),
        ),
        _ => None,
    };
    if let Some(h) = hint {
        m.push_str(&format!("; {h}"));
    }
    m
}

/// The service name of the default verifier ID, `spiffe://<peer's trust domain>/svc/agentid-cli`.
pub const DEFAULT_VERIFIER_SERVICE: &str = "agentid-cli";

/// What `chain verify` read from its files and arguments.
struct Inputs {
    chain: String,
    bundles: Vec<TrustBundle>,
    lists: Vec<String>,
    requested: Option<Scope>,
    authorities: Vec<(TrustDomain, Option<Scope>)>,
}

/// Builds the verifier (section 9: skew, own ID, authority policy, enforced limits, bundles,
/// revocation lists, in that order) and verifies the peer's chain at `at`, then authorizes
/// `requested` if given.
fn verify_at(
    args: &VerifyArgs,
    inputs: Inputs,
    verifier_id: &str,
    peer: &agentid_transport::SvidInfo,
    at: u64,
) -> agentid_protocol::Result<VerifiedChain> {
    let Inputs {
        chain,
        bundles,
        lists,
        requested,
        authorities,
    } = inputs;
    let bad_config = |what: &str, e: agentid_protocol::Error| {
        agentid_protocol::Error::new(ErrorCode::BadConfig, format!("{what}: {}", e.detail()))
    };
    let own = PeerId::parse(verifier_id)
        .map_err(|e| bad_config("--verifier", e))?
        .as_spiffe_id()
        .clone();
    let mut policy = AuthorityPolicy::own_domain(&own.trust_domain());
    for (td, patterns) in authorities {
        policy = match patterns {
            None => policy.allow_any(td),
            Some(p) => policy.allow(td, p),
        };
    }
    let set = trust::bundle_set(own.trust_domain(), bundles)?;
    let mut config = VerifierConfig::new(own, set)
        .skew(args.skew)?
        .authority_policy(policy)
        .enforce_limits(args.limits.iter().cloned());
    if args.danger_no_revocation {
        config = config.danger_accept_missing_or_stale_revocations();
    }
    for l in &lists {
        config.apply_revocation_list(l)?;
    }
    let verifier = Verifier::new(config)?;
    // A file carries no hop proof: the chain step of the presentation verifier (section 10,
    // possession against the peer certificate's key).
    let verified = verifier.verify_chain(&chain, peer.id.as_spiffe_id(), &peer.public_key, at)?;
    if let Some(requested) = &requested {
        verifier.authorize(&verified, requested)?;
    }
    Ok(verified)
}

fn summary(verdict: &Value) -> String {
    let s = |k: &str| {
        verdict
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_owned()
    };
    if verdict.get("valid") == Some(&Value::Bool(true)) {
        format!(
            "valid: {} holds {:?} for task {} ({} link(s), {}, until {})",
            s("holder"),
            s("scope"),
            s("task"),
            verdict.get("depth").and_then(Value::as_u64).unwrap_or(0),
            s("mode"),
            verdict
                .get("expires")
                .and_then(Value::as_u64)
                .map(rfc3339)
                .unwrap_or_default()
        )
    } else {
        match verdict.get("index").and_then(Value::as_u64) {
            Some(i) => format!("invalid: {} at token {i}", s("error")),
            None => format!("invalid: {}", s("error")),
        }
    }
}

/// Each token's header and claims, decoded for display only (never trusted).
fn decode_tokens(chain: &str) -> Vec<Value> {
    chain
        .split('~')
        .enumerate()
        .take(agentid_protocol::caps::MAX_TOKENS + 1)
        .map(|(i, tok)| {
            let mut parts = tok.split('.');
            let header = parts.next().map(decode_part).unwrap_or(Value::Null);
            let claims = parts.next().map(decode_part).unwrap_or(Value::Null);
            json!({ "index": i, "bytes": tok.len(), "header": header, "claims": claims })
        })
        .collect()
}

fn decode_part(b64: &str) -> Value {
    let bytes = match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64) {
        Ok(b) => b,
        Err(_) => return json!({ "undecodable": "not base64url" }),
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => v,
        Err(_) => json!({ "undecodable": "not JSON" }),
    }
}
