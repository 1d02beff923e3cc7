//! `ca init`: the root, the issuing intermediate, and the two authority keys.

use std::path::Path;
use std::time::{Duration, SystemTime};

use agentid_protocol::{AuthorityKey, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyUsagePurpose,
    SerialNumber,
};

use crate::config::CaConfig;
use crate::error::{CaError, Result};
use crate::material::{self, files, join};
use crate::signer::{FileX509Signer, KeyType, RcgenSigner, X509Signer};
use crate::util;

/// Default root lifetime: 10 years.
pub const DEFAULT_ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Default intermediate lifetime: 1 year.
pub const DEFAULT_INTERMEDIATE_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// Options of [`init_ca`].
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// The trust domain the CA issues for.
    pub trust_domain: TrustDomain,
    /// Key type of the hierarchy and the authority keys (P-256 by default).
    pub key_type: KeyType,
    /// Root certificate lifetime.
    pub root_validity: Duration,
    /// Intermediate certificate lifetime (capped by the root's).
    pub intermediate_validity: Duration,
    /// The store (`config.toml`'s `store`): `None` for SQLite's `ca.db`, or a
    /// `postgres://USER@HOST/DB` URL (without a password).
    pub store: Option<String>,
    /// `config.toml`'s `store_password_file`.
    pub store_password_file: Option<std::path::PathBuf>,
    /// `config.toml`'s `store_ca_file`.
    pub store_ca_file: Option<std::path::PathBuf>,
}

impl InitOptions {
    /// Defaults: P-256, 10-year root, 1-year intermediate.
    pub fn new(trust_domain: TrustDomain) -> Self {
        InitOptions {
            trust_domain,
            key_type: KeyType::P256,
            root_validity: DEFAULT_ROOT_VALIDITY,
            intermediate_validity: DEFAULT_INTERMEDIATE_VALIDITY,
            store: None,
            store_password_file: None,
            store_ca_file: None,
        }
    }
}

/// The default `policy.toml` written by `ca init`: it allows nothing until the operator edits it.
pub const DEFAULT_POLICY: &str = r#"# agentid issuance policy. Nothing is allowed unless a rule below allows it.
#
# [defaults]
# ttl = "5m"          # certificate TTL when the request names none
# max_ttl = "15m"     # longest certificate TTL
# task_ttl = "1h"     # grant lifetime when the request names none
# max_task_ttl = "8h" # longest grant lifetime (at most 24h)
# max_token_ttl = "7d" # longest a bootstrap token stays redeemable (at most 7d; a rule below
#                      # may set its own: tokens for it, the operator's or a service's)
#
# [agents.planner]
# scopes = ["tickets:read", "tickets:comment:*"]   # patterns the agent may hold
# max_ttl = "10m"
# max_token_ttl = "15m" # its bootstrap tokens are redeemable at most this long
# max_depth = 2
# requesters = ["operator", "bootstrap"]          # who may open a task for it
#
# [agents.summarizer]
# scopes = ["tickets:read"]
# requesters = ["parent:planner"]                  # a planner task may request its children
#
# [services.search]
# max_ttl = "1h"
# max_key_age = "30d" # one key holds the name this long, then the service enrolls with a new key
# requesters = ["operator"]
"#;

/// Creates a CA in `dir`: root and intermediate certificates and keys, grant and revocation
/// keys, the audit checkpoint key, `config.toml`, a deny-all `policy.toml` and the store (which
/// holds the audit chain).
///
/// Refuses to touch a directory that already holds any of these files. Private keys are
/// created with mode 0600.
pub fn init_ca(dir: &Path, opts: &InitOptions, now: SystemTime) -> Result<CaConfig> {
    let now_s = util::unix(now)?;
    let mut config = CaConfig::new(opts.trust_domain.clone(), opts.key_type);
    config.store = opts.store.clone();
    config.store_password_file = opts.store_password_file.clone();
    config.store_ca_file = opts.store_ca_file.clone();
    config.store_kind()?;
    for name in [
        files::ROOT_CERT,
        files::ROOT_KEY,
        files::INTERMEDIATE_CERT,
        files::INTERMEDIATE_KEY,
        files::GRANT_KEY,
        files::REVOCATION_KEY,
        files::AUDIT_KEY,
        files::AUDIT_PUB,
        files::BUNDLE_SIGNING_KEY,
        files::BUNDLE_SIGNING_PUB,
        files::AGENTID_BUNDLE,
        files::CONFIG,
        files::DB,
    ] {
        let p = join(dir, name);
        if p.exists() {
            return Err(CaError::AlreadyInitialized { path: p });
        }
    }

    // A shared database is reached (and its schema made) before any key is written, so that a
    // wrong URL, password or TLS setting leaves no half-made CA directory behind.
    if matches!(config.store_kind()?, crate::config::StoreKind::Postgres(_)) {
        drop(config.create_store(dir, crate::audit::DEFAULT_WRITER)?);
    }

    // Whoever can read the directory is the operator: 0700, every file in it 0600.
    material::private_dir(dir)?;
    let td = opts.trust_domain.as_str();
    let not_before = now_s.saturating_sub(config.skew_secs);
    let root_end = now_s.saturating_add(opts.root_validity.as_secs());
    let int_end = now_s
        .saturating_add(opts.intermediate_validity.as_secs())
        .min(root_end);

    let root_key = FileX509Signer::generate(opts.key_type)?;
    let mut root_params = ca_params(&format!("agentid root CA {td}"), not_before, root_end, None)?;
    root_params.use_authority_key_identifier_extension = false;
    let root_cert = root_params
        .self_signed(root_key.key_pair())
        .map_err(|e| CaError::CertificateGeneration(e.to_string()))?;

    let int_key = FileX509Signer::generate(opts.key_type)?;
    let mut int_params = ca_params(
        &format!("agentid issuing CA {td}"),
        not_before,
        int_end,
        Some(0),
    )?;
    int_params.use_authority_key_identifier_extension = true;
    let root_issuer = Issuer::new(root_params, RcgenSigner::new(&root_key));
    let int_cert = int_params
        .signed_by(int_key.key_pair(), &root_issuer)
        .map_err(|e| CaError::CertificateGeneration(e.to_string()))?;

    let alg = opts.key_type.algorithm();
    let grant_key = AuthorityKey::generate(alg)?;
    let revocation_key = AuthorityKey::generate(alg)?;

    material::write_private_key(&join(dir, files::ROOT_KEY), root_key.pkcs8_der())?;
    material::write_private_key(&join(dir, files::INTERMEDIATE_KEY), int_key.pkcs8_der())?;
    material::write_private_key(&join(dir, files::GRANT_KEY), grant_key.pkcs8_der())?;
    material::write_private_key(
        &join(dir, files::REVOCATION_KEY),
        revocation_key.pkcs8_der(),
    )?;
    material::write_public_file(
        &join(dir, files::ROOT_CERT),
        material::cert_pem(root_cert.der()).as_bytes(),
    )?;
    material::write_public_file(
        &join(dir, files::INTERMEDIATE_CERT),
        material::cert_pem(int_cert.der()).as_bytes(),
    )?;
    material::write_public_file(&join(dir, files::CONFIG), config.to_toml()?.as_bytes())?;
    crate::ca::load_or_create_audit_key(dir, alg, None)?;
    let bundle_key = AuthorityKey::generate(alg)?;
    material::write_private_key(
        &join(dir, files::BUNDLE_SIGNING_KEY),
        bundle_key.pkcs8_der(),
    )?;
    material::write_public_file(
        &join(dir, files::BUNDLE_SIGNING_PUB),
        material::public_key_pem(
            &agentid_protocol::JwsSigner::public_key(&bundle_key).to_spki_der(),
        )
        .as_bytes(),
    )?;
    let policy_path = join(dir, files::POLICY);
    if !policy_path.exists() {
        material::write_public_file(&policy_path, DEFAULT_POLICY.as_bytes())?;
    }
    // Create the store now so that a broken directory fails at init, not at first issuance;
    // sign the first agentid bundle while the offline key is here. The database file is made
    // 0600 before SQLite opens it (SQLite gives its journal files the database's mode).
    if !matches!(config.store_kind()?, crate::config::StoreKind::Postgres(_)) {
        material::write_public_file(&join(dir, files::DB), b"")?;
        drop(crate::store::SqliteStore::open(&join(dir, files::DB))?);
    }
    let ca = crate::CertificateAuthority::open(dir)?;
    crate::agentid_bundle::sign_dir(&ca, dir, now_s)?;
    tracing::info!(trust_domain = td, key_type = %opts.key_type, dir = %dir.display(), "CA initialized");
    Ok(config)
}

fn ca_params(
    cn: &str,
    not_before: u64,
    not_after: u64,
    path_len: Option<u8>,
) -> Result<CertificateParams> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "agentid");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.not_before = util::datetime(not_before)?;
    p.not_after = util::datetime(not_after)?;
    p.serial_number = Some(SerialNumber::from_slice(&util::random_serial()?));
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.name_constraints = None;
    Ok(p)
}

/// Checks that the public key of an issuing signer is the one certified by the intermediate.
pub(crate) fn check_signer_matches(signer: &dyn X509Signer, intermediate_der: &[u8]) -> Result<()> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(intermediate_der)
        .map_err(|e| CaError::CertificateGeneration(format!("intermediate: {e}")))?;
    let spki_key: &[u8] = cert
        .tbs_certificate
        .subject_pki
        .subject_public_key
        .data
        .as_ref();
    if spki_key != signer.public_key_raw().as_slice() {
        return Err(CaError::IssuerKeyMismatch);
    }
    Ok(())
}
