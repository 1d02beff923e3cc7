//! A throw-away PKI for the protocol examples: one trust domain with its X.509 root, grant key and
//! revocation key, made in memory with rcgen so that each example runs on its own.
//!
//! Real deployments get the same pieces from the CA (`agentid cert issue`, `agentid delegate`,
//! `agentid revocations export`, or the CA service) and load them with the facade's
//! `agentid::files::CredentialDir`.
#![allow(dead_code, reason = "each example uses a subset")]

#[cfg(feature = "tonic")]
pub mod grpc;

use std::sync::Arc;

use agentid_protocol::{
    Algorithm, AuthorityKey, BundleSet, GrantBuilder, RevocationListBuilder, Scope, SpiffeId,
    TaskIdentity, TaskKey, TrustBundle, TrustDomain, VerifierConfig,
};
use agentid_transport::{Credential, MemoryCredentials, PeerVerification};
use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

/// Runs an example's steps (`run`) for at most 30 seconds: exit status 0 if every step went as
/// described, else 1 with the reason, after `name`, on stderr.
pub async fn exit_status(
    name: &str,
    run: impl std::future::Future<Output = Result<()>>,
) -> std::process::ExitCode {
    match tokio::time::timeout(std::time::Duration::from_secs(30), run).await {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("{name}: timed out");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn rcgen_key(k: &TaskKey) -> Result<KeyPair> {
    Ok(KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(k.danger_pkcs8_der().to_vec()),
        &PKCS_ECDSA_P256_SHA256,
    )?)
}

fn serial() -> Result<SerialNumber> {
    let k = TaskKey::generate(Algorithm::Es256)?;
    let mut s = k
        .public_key()
        .raw_bytes()
        .get(1..17)
        .context("key")?
        .to_vec();
    if let Some(b) = s.first_mut() {
        *b = (*b & 0x7f) | 0x01;
    }
    Ok(SerialNumber::from(s))
}

/// One trust domain: its root certificate and key, grant key and revocation key.
pub struct Domain {
    /// The trust domain.
    pub td: TrustDomain,
    root_key: TaskKey,
    root: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    grant_key: AuthorityKey,
    rev_key: AuthorityKey,
    seq: std::sync::atomic::AtomicU64,
}

impl Domain {
    /// A new trust domain named `td` with a root valid for a day.
    pub fn new(td: &str) -> Result<Self> {
        let root_key = TaskKey::generate(Algorithm::Es256)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, format!("{td} demo root"));
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(1);
        p.serial_number = Some(serial()?);
        let kp = rcgen_key(&root_key)?;
        let root = p.self_signed(&kp)?.der().clone();
        Ok(Self {
            td: TrustDomain::parse(td)?,
            root_key,
            root,
            issuer: Issuer::new(p, kp),
            grant_key: AuthorityKey::generate(Algorithm::Es256)?,
            rev_key: AuthorityKey::generate(Algorithm::Es256)?,
            seq: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The domain's trust bundle (root, grant key, revocation key).
    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::new(self.td.clone(), 1)
            .add_x509_authority(self.root.to_vec(), self.root_key.public_key())
            .add_grant_key(self.grant_key.public_key().clone())
            .add_revocation_key(self.rev_key.public_key().clone())
    }

    /// A 5-minute X509-SVID for `id` (one critical URI SAN, both EKUs) with a fresh key.
    pub fn credential(&self, id: &str) -> Result<(Credential, TaskKey)> {
        let key = TaskKey::generate(Algorithm::Es256)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI(id.try_into()?)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let n = time::OffsetDateTime::now_utc();
        p.not_before = n - time::Duration::seconds(60);
        p.not_after = n + time::Duration::seconds(300);
        p.serial_number = Some(serial()?);
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&rcgen_key(&key)?, &self.issuer)?.der().clone();
        let copy = TaskKey::from_pkcs8_der(key.danger_pkcs8_der())?;
        Ok((Credential::new(vec![cert], copy)?, key))
    }

    /// A task credential for `id` holding a root grant of `scope` (10 minutes).
    pub fn task(&self, id: &str, scope: &str) -> Result<Arc<MemoryCredentials>> {
        let (cred, key) = self.credential(id)?;
        let holder = TaskIdentity::parse(id)?;
        let n = now();
        let grant = GrantBuilder::new(&self.td, &holder, key.public_key(), Scope::parse(scope)?)
            .max_depth(1)
            .validity(n - 5, n - 5, n + 600)
            .sign(&self.grant_key)?;
        Ok(Arc::new(MemoryCredentials::new(
            cred.with_chain(grant.as_str().to_owned()),
        )))
    }

    /// A service credential for `id` (no chain).
    pub fn service(&self, id: &str) -> Result<Arc<MemoryCredentials>> {
        Ok(Arc::new(MemoryCredentials::new(self.credential(id)?.0)))
    }

    /// A signed revocation list revoking the tasks of `revoked` (identities), with the next
    /// sequence number.
    pub fn revocation_list(&self, revoked: &[&str]) -> Result<String> {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let n = now();
        let mut b = RevocationListBuilder::new(&self.td, seq, n, n + 600);
        for id in revoked {
            b = b.revoke_task(&TaskIdentity::parse(id)?.task_id(), n + 600);
        }
        Ok(b.sign(&self.rev_key)?)
    }

    /// Verification state for `own`, trusting this domain, with a current (empty) revocation
    /// list applied: revocation checking stays on.
    pub fn verification(&self, own: &str) -> Result<Arc<PeerVerification>> {
        let mut bundles = BundleSet::new();
        bundles.insert(self.bundle())?;
        let mut config = VerifierConfig::new(SpiffeId::parse(own)?, bundles);
        config.apply_revocation_list(&self.revocation_list(&[])?)?;
        Ok(PeerVerification::new(config)?)
    }
}
