//! `agentid cert inspect FILE`: what a certificate says, without judging it.

use std::path::PathBuf;

use agentid_protocol::{IdKind, PublicKey, SpiffeId};
use serde_json::{json, Value};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::common::{now_unix, print_json, print_text, relative, rfc3339, Format, FormatArg};
use crate::error::{CliError, CliResult};
use crate::files;

/// Arguments of `cert inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A PEM file; the first certificate is described (a `cert.pem` holds the leaf first).
    pub file: PathBuf,
    #[command(flatten)]
    pub format: FormatArg,
}

/// Runs `cert inspect`.
pub fn run(args: &InspectArgs) -> CliResult {
    let certs = files::read_certs(&args.file)?;
    let leaf = certs
        .first()
        .ok_or_else(|| CliError::failed("no certificate"))?;
    let mut info = describe(leaf.as_ref())
        .map_err(|e| CliError::failed(format!("{}: {e}", args.file.display())))?;
    let now = now_unix()?;
    if let Value::Object(m) = &mut info {
        m.insert("certificates_in_file".into(), json!(certs.len()));
        let nb = m.get("not_before").and_then(Value::as_u64).unwrap_or(0);
        let na = m.get("not_after").and_then(Value::as_u64).unwrap_or(0);
        let (status, left) = if now < nb {
            (
                "not_yet_valid",
                format!("not valid yet: valid {}", relative(nb, now)),
            )
        } else if now > na {
            ("expired", format!("expired {}", relative(na, now)))
        } else {
            ("valid", format!("expires {}", relative(na, now)))
        };
        m.insert("validity_status".into(), json!(status));
        m.insert("validity_now".into(), json!(left));
        m.insert(
            "seconds_left".into(),
            json!(i128::from(na) - i128::from(now)),
        );
    }
    match args.format.format {
        Format::Json => print_json(&info),
        Format::Text => print_text(&text(&info)),
    }
}

/// Describes one DER certificate as JSON (identity, task, serial, issuer, validity, key, SAN,
/// usages). Never fails on an unusual but parseable certificate: odd values are shown as such.
pub fn describe(der: &[u8]) -> Result<Value, String> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate".into());
    }
    let tbs = &cert.tbs_certificate;
    let dup = |e: x509_parser::error::X509Error| format!("bad extension: {e}");

    let mut sans = Vec::new();
    let mut uris = Vec::new();
    if let Some(san) = cert.subject_alternative_name().map_err(dup)? {
        for n in &san.value.general_names {
            match n {
                GeneralName::URI(u) => {
                    uris.push((*u).to_string());
                    sans.push(format!("URI:{u}"));
                }
                GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                GeneralName::RFC822Name(e) => sans.push(format!("email:{e}")),
                GeneralName::IPAddress(ip) => sans.push(format!("IP:{}", hex(ip))),
                other => sans.push(format!("{other}")),
            }
        }
    }
    // Identity: the single URI SAN, parsed as a SPIFFE ID when it is one.
    let (identity, kind, agent, task) = match uris.as_slice() {
        [one] => match SpiffeId::parse(one) {
            Ok(id) => {
                let segs: Vec<&str> = id.segments().collect();
                let (kind, agent, task) = match (id.kind(), segs.as_slice()) {
                    (IdKind::Task, ["agent", name, "task", t]) => ("task", Some(*name), Some(*t)),
                    (IdKind::Service, ["svc", name]) => ("service", Some(*name), None),
                    (IdKind::Agent, ["agent", name]) => ("agent", Some(*name), None),
                    (IdKind::TrustDomain, _) => ("trust_domain", None, None),
                    _ => ("other", None, None),
                };
                (
                    Value::from(id.as_str()),
                    kind,
                    agent.map(str::to_owned),
                    task.map(str::to_owned),
                )
            }
            Err(_) => (Value::Null, "not_spiffe", None, None),
        },
        [] => (Value::Null, "none", None, None),
        _ => (Value::Null, "multiple_uri_sans", None, None),
    };

    let bc = cert.basic_constraints().map_err(dup)?;
    let is_ca = bc.as_ref().is_some_and(|b| b.value.ca);
    let path_len = bc.as_ref().and_then(|b| b.value.path_len_constraint);
    let mut key_usage = Vec::new();
    if let Some(ku) = cert.key_usage().map_err(dup)? {
        let k = ku.value;
        for (on, name) in [
            (k.digital_signature(), "digitalSignature"),
            (k.non_repudiation(), "nonRepudiation"),
            (k.key_encipherment(), "keyEncipherment"),
            (k.data_encipherment(), "dataEncipherment"),
            (k.key_agreement(), "keyAgreement"),
            (k.key_cert_sign(), "keyCertSign"),
            (k.crl_sign(), "cRLSign"),
            (k.encipher_only(), "encipherOnly"),
            (k.decipher_only(), "decipherOnly"),
        ] {
            if on {
                key_usage.push(name);
            }
        }
    }
    let mut eku = Vec::new();
    if let Some(e) = cert.extended_key_usage().map_err(dup)? {
        let e = e.value;
        for (on, name) in [
            (e.any, "any"),
            (e.server_auth, "serverAuth"),
            (e.client_auth, "clientAuth"),
            (e.code_signing, "codeSigning"),
            (e.email_protection, "emailProtection"),
            (e.time_stamping, "timeStamping"),
            (e.ocsp_signing, "ocspSigning"),
        ] {
            if on {
                eku.push(name.to_owned());
            }
        }
        eku.extend(e.other.iter().map(|o| o.to_id_string()));
    }

    let spki = tbs.subject_pki.raw;
    let (key_type, jkt) = match PublicKey::from_spki_der(spki) {
        Ok(k) => (
            match k.algorithm() {
                agentid_protocol::Algorithm::Es256 => "P-256".to_owned(),
                agentid_protocol::Algorithm::Ed25519 => "Ed25519".to_owned(),
            },
            Value::from(k.thumbprint()),
        ),
        Err(_) => (
            format!(
                "unsupported ({})",
                tbs.subject_pki.algorithm.algorithm.to_id_string()
            ),
            Value::Null,
        ),
    };
    let nb = u64::try_from(tbs.validity.not_before.timestamp()).unwrap_or(0);
    let na = u64::try_from(tbs.validity.not_after.timestamp()).unwrap_or(0);
    Ok(json!({
        "identity": identity,
        "kind": kind,
        "agent": agent,
        "task": task,
        "serial": agentid_protocol::Serial::from_der_integer(tbs.raw_serial()).to_string(),
        "subject": tbs.subject.to_string(),
        "issuer": tbs.issuer.to_string(),
        "not_before": nb,
        "not_after": na,
        "not_before_rfc3339": rfc3339(nb),
        "not_after_rfc3339": rfc3339(na),
        "key_type": key_type,
        "jkt": jkt,
        "san": sans,
        "is_ca": is_ca,
        "path_len_constraint": path_len,
        "key_usage": key_usage,
        "extended_key_usage": eku,
        "signature_algorithm": signature_algorithm_name(&cert.signature_algorithm.algorithm.to_id_string()),
        "signature_algorithm_oid": cert.signature_algorithm.algorithm.to_id_string(),
    }))
}

/// `text` with its control characters (line breaks, terminal escapes) replaced by U+FFFD: the
/// certificate's own strings (subject, issuer, SANs) must not write to the terminal, nor print
/// lines that look like the fields around them.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

fn text(info: &Value) -> String {
    let s = |k: &str| match info.get(k) {
        Some(Value::String(v)) => printable(v),
        Some(Value::Null) | None => "-".to_owned(),
        Some(v) => v.to_string(),
    };
    let list = |k: &str| match info.get(k) {
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|v| v.as_str().map(printable).unwrap_or_else(|| v.to_string()))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "-".to_owned(),
    };
    format!(
        "Identity:       {}\nKind:           {}\nAgent:          {}\nTask:           {}\nSerial:         {}\nSubject:        {}\nIssuer:         {}\nNot before:     {}\nNot after:      {} ({})\nKey type:       {}\nKey jkt:        {}\nSignature:      {}\nSAN:            {}\nCA:             {}\nKey usage:      {}\nExt. key usage: {}\n",
        s("identity"),
        s("kind"),
        s("agent"),
        s("task"),
        s("serial"),
        s("subject"),
        s("issuer"),
        s("not_before_rfc3339"),
        s("not_after_rfc3339"),
        s("validity_now"),
        s("key_type"),
        s("jkt"),
        s("signature_algorithm"),
        list("san"),
        s("is_ca"),
        list("key_usage"),
        list("extended_key_usage"),
    )
}

/// The name of a certificate signature algorithm (RFC 5758, RFC 8410, RFC 4055), or the OID
/// when it is none of those.
fn signature_algorithm_name(oid: &str) -> String {
    match oid {
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256",
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384",
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512",
        "1.3.101.112" => "Ed25519",
        "1.3.101.113" => "Ed448",
        "1.2.840.113549.1.1.11" => "sha256WithRSAEncryption",
        "1.2.840.113549.1.1.12" => "sha384WithRSAEncryption",
        "1.2.840.113549.1.1.13" => "sha512WithRSAEncryption",
        "1.2.840.113549.1.1.10" => "RSASSA-PSS",
        other => return other.to_owned(),
    }
    .to_owned()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
