//! `agentid revocations list --ca-url`: the revocation list the CA service serves now, verified
//! against the caller's trust bundle before anything of it is printed.

use agentid_protocol::RevocationList;
use serde_json::{json, Value};

use crate::common::{print_json, print_text, rfc3339, Format, FormatArg};
use crate::error::{CliError, CliResult, Context};
use crate::net::RemoteArgs;

/// Arguments of `revocations list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(flatten)]
    pub format: FormatArg,
}

/// One entry of a verified list, for display.
struct Entry {
    kind: &'static str,
    value: String,
    iss: Option<String>,
    exp: u64,
}

/// Runs `revocations list`.
pub fn run_list(a: &ListArgs) -> CliResult {
    let Some(dir) = &a.remote.cred else {
        return Err(CliError::usage(
            "revocations list needs --ca-url and --cred",
        ));
    };
    let config = crate::net::load_cred(dir)?.verifier_config()?;
    // `enroll` writes the pinned X.509 bundle only: no list could verify against it, and
    // saying so beats blaming the CA for a list "that does not verify".
    if config
        .bundles()
        .iter()
        .all(|b| b.revocation_keys().is_empty())
    {
        let bundle = dir.join(agentid::files::BUNDLE_FILE);
        let hint = format!(
            "put the CA's agentid bundle there (the operator runs `agentid bundle export --ca CA_DIR --out {}`)",
            bundle.display()
        );
        return Err(CliError::failed(format!(
            "{} holds no revocation key (an X.509-only bundle, as `agentid enroll` writes), so no revocation list can be verified with it: {hint}",
            bundle.display()
        ))
        .with_hint(hint));
    }
    let client = a.remote.client()?;
    let served = crate::net::runtime()?
        .block_on(client.revocations())
        .map_err(crate::net::api_error(a.remote.url()))?;
    // Signature, issuer and claims first: nothing unverified is printed.
    let list = RevocationList::verify(served.list(), config.bundles())
        .context("the CA served a revocation list that does not verify")?;
    if list.seq() != served.seq {
        return Err(CliError::failed(format!(
            "the CA said seq {} for a list whose seq is {}",
            served.seq,
            list.seq()
        )));
    }
    let entries = entries(served.list())?;
    if entries.len() != list.len() {
        return Err(CliError::failed("the list's entries could not be read"));
    }
    // A list past its `next_update` (plus the skew) is one no verifier accepts any more: said
    // so, not printed as if it were current.
    let stale = list.is_stale(crate::common::now_unix()?, config.skew_seconds());
    if stale {
        eprintln!(
            "agentid: warning: this list is stale (its next update, {}, has passed): verifiers refuse it (revocation_stale) until the CA publishes a newer one",
            rfc3339(list.next_update())
        );
    }
    match a.format.format {
        Format::Json => print_json(&json!({
            "issuer": list.issuer().as_str(),
            "seq": list.seq(),
            "iat": list.iat(),
            "next_update": list.next_update(),
            "stale": stale,
            "entries": entries.iter().map(|e| {
                let mut v = json!({"kind": e.kind, "value": e.value, "exp": e.exp});
                if let (Some(iss), Value::Object(m)) = (&e.iss, &mut v) {
                    m.insert("iss".into(), iss.clone().into());
                }
                v
            }).collect::<Vec<_>>(),
        })),
        Format::Text => {
            let mut out = format!(
                "revocation list of {} seq {} (issued {}, next update {}{}), {} entries\n",
                list.issuer().as_str(),
                list.seq(),
                rfc3339(list.iat()),
                rfc3339(list.next_update()),
                if stale { ": STALE" } else { "" },
                entries.len()
            );
            if !entries.is_empty() {
                out.push_str(&format!("{:<6} {:<22} {}\n", "KIND", "UNTIL", "VALUE"));
            }
            for e in &entries {
                let value = match &e.iss {
                    Some(iss) => format!("{} (issuer {iss})", e.value),
                    None => e.value.clone(),
                };
                out.push_str(&format!("{:<6} {:<22} {value}\n", e.kind, rfc3339(e.exp)));
            }
            print_text(&out)
        }
    }
}

/// What a list this CA just signed says, for the export's feedback.
pub struct Summary {
    /// Its sequence number.
    pub seq: u64,
    /// When it was signed.
    pub iat: u64,
    /// When verifiers stop accepting it.
    pub next_update: u64,
    /// How many entries it holds.
    pub entries: usize,
}

/// Reads the claims of a list the CA itself just signed (nothing here is trusted input).
pub fn summary(compact: &str) -> CliResult<Summary> {
    let bad = || CliError::failed("the CA signed a revocation list that cannot be read back");
    let payload = compact.split('.').nth(1).ok_or_else(bad)?;
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
        .map_err(|_| bad())?;
    let claims: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let n = |k: &str| claims.get(k).and_then(Value::as_u64).ok_or_else(bad);
    Ok(Summary {
        seq: n("seq")?,
        iat: n("iat")?,
        next_update: n("next_update")?,
        entries: claims
            .get("entries")
            .and_then(Value::as_array)
            .map_or(0, Vec::len),
    })
}

/// The entries of a list that [`RevocationList::verify`] accepted (its payload is then known
/// to be a signed, well-formed claims object; the verified list keeps only digests).
fn entries(compact: &str) -> CliResult<Vec<Entry>> {
    let bad = || CliError::failed("the list's entries could not be read");
    let payload = compact.split('.').nth(1).ok_or_else(bad)?;
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
        .map_err(|_| bad())?;
    let claims: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let items = claims
        .get("entries")
        .and_then(Value::as_array)
        .ok_or_else(bad)?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let m = item.as_object().ok_or_else(bad)?;
        let exp = m.get("exp").and_then(Value::as_u64).ok_or_else(bad)?;
        let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
        let entry = if let Some(jti) = s("jti") {
            Entry {
                kind: "jti",
                value: jti,
                iss: s("iss"),
                exp,
            }
        } else {
            let (kind, value) = ["task", "agent", "jkt"]
                .into_iter()
                .find_map(|k| s(k).map(|v| (k, v)))
                .ok_or_else(bad)?;
            Entry {
                kind,
                value,
                iss: None,
                exp,
            }
        };
        out.push(entry);
    }
    Ok(out)
}
