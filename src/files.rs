//! Loading the credential directory that `agentid cert issue --out-dir DIR` writes, for agents
//! that run as their own processes (see `examples/agent_server.rs` and `examples/agent_client.rs`).
//!
//! A directory holds:
//!
//! | file | contents |
//! |---|---|
//! | `cert.pem` | the leaf, then the issuing intermediate (PEM) |
//! | `key.pem` | the task key, PKCS#8 PEM, mode 0600 (refused when group or others can access it) |
//! | `bundle.json` | the SPIFFE bundle of the certificate's trust domain |
//! | `bundle.pem` | the same trust anchors as PEM, for tools such as OpenSSL (not read here) |
//! | `chain.jwt` | optional: the delegation chain (what `agentid delegate --out` writes) |
//! | `grant.jwt` | optional: the root grant (used when there is no `chain.jwt`) |
//!
//! This module is the one home of that layout: the file names below, the 0600 rule for the key
//! (through `agentid_fs`, which also does every read and write), and loading. The CLI writes and
//! reads directories with it; agents load them with [`CredentialDir`].
//!
//! Every file of a directory is read only if the reader holds it (`agentid_fs::read_held`):
//! the file and every directory and link on the way to it from `/` owned by the reader or root
//! (when root reads, also by the directory's owner: root acting for a service user, outside
//! directories others can write such as `/tmp`), no
//! directory on the way writable by group or others unless it has the sticky bit (as `/tmp`),
//! no file writable by them, and only regular files (a FIFO is refused without blocking).
//! Whoever could replace `bundle.json` could make the agent trust their CA; the refusal names
//! the entry, its owner or mode, and the `chmod` or `chown` to run.
//!
//! Loading checks everything it can before a single connection is made: the leaf is a valid
//! X509-SVID that certifies the key, the certificate chain validates against the bundle's
//! anchors now, and the delegation chain (if any) is held by this certificate's identity and
//! bound to its key. What it does not do is verify the delegation chain's signatures: that is
//! the peer's job.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentid_fs::FsError;
use agentid_protocol::{BundleSet, Chain, PeerId, TaskKey, TrustBundle, VerifierConfig};
use agentid_transport::{check_leaf, CertUsage, Credential, SvidInfo, TrustStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

/// The largest file read from a credential directory (certificates, bundles, chains, lists).
pub const MAX_FILE_BYTES: u64 = agentid_fs::MAX_FILE_BYTES;

/// The certificate file of a credential directory: the leaf, then the issuing intermediate.
pub const CERT_FILE: &str = "cert.pem";
/// The private key file of a credential directory (PKCS#8 PEM, mode 0600).
pub const KEY_FILE: &str = "key.pem";
/// The trust bundle file of a credential directory (SPIFFE bundle JSON).
pub const BUNDLE_FILE: &str = "bundle.json";
/// The trust anchors as PEM, for tools such as OpenSSL.
pub const BUNDLE_PEM_FILE: &str = "bundle.pem";
/// The delegation chain file (preferred over [`GRANT_FILE`]).
pub const CHAIN_FILE: &str = "chain.jwt";
/// The root grant file.
pub const GRANT_FILE: &str = "grant.jwt";

/// Why a credential directory or file could not be loaded. Every variant names the file.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file of the directory that others could have put there: it, or a directory or link
    /// on the way to it, is not held by the reader (`agentid_fs::FsError::NotHeld`).
    #[error(transparent)]
    NotHeld(FsError),
    /// The file was read but its contents are unusable.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl From<FsError> for FilesError {
    fn from(e: FsError) -> Self {
        let path = e.path().to_path_buf();
        let reason = match e {
            FsError::Io { path, source } => return FilesError::Io { path, source },
            e @ FsError::NotHeld { .. } => return FilesError::NotHeld(e),
            FsError::TooLarge { .. } => "larger than 1 MiB".to_owned(),
            FsError::InsecureMode { mode, .. } => format!(
                "mode {mode:03o}: a task key must not be accessible to group or others (chmod 600)"
            ),
            FsError::NotRegular { kind, .. } => format!("{kind}, not a regular file"),
            FsError::BadKey { reason, .. } => format!("not a PKCS#8 PEM private key: {reason}"),
            e => e.to_string(),
        };
        FilesError::Invalid { path, reason }
    }
}

fn invalid(path: &Path, reason: impl std::fmt::Display) -> FilesError {
    FilesError::Invalid {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads a file of a credential directory: only one the reader holds (see the module's
/// documentation).
fn read_held(path: &Path) -> Result<Vec<u8>, FilesError> {
    Ok(agentid_fs::read_held(path, MAX_FILE_BYTES)?)
}

/// Reads a text file holding one compact token or chain (a revocation list, `chain.jwt`,
/// `grant.jwt`), with surrounding whitespace removed, only if the reader holds it as a
/// credential directory's files are held (see the module's documentation): whoever could write
/// a revocation list could put back an older one, genuinely signed, and hide the revocations
/// made since.
pub fn read_token_file(path: &Path) -> Result<String, FilesError> {
    token_of(path, read_held(path)?)
}

fn token_of(path: &Path, bytes: Vec<u8>) -> Result<String, FilesError> {
    let text = String::from_utf8(bytes).map_err(|_| invalid(path, "not UTF-8 text"))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid(path, "empty file"));
    }
    Ok(text.to_owned())
}

/// Reads a credential directory's task key (PKCS#8 PEM), refusing a file that group or others
/// can access (a task key stays with its holder), or that others could have put there, as every
/// file of a credential directory.
pub fn read_task_key(path: &Path) -> Result<TaskKey, FilesError> {
    let der = agentid_fs::read_held_private_key(path)?;
    TaskKey::from_pkcs8_der(&der).map_err(|e| invalid(path, format!("unusable task key: {e}")))
}

/// Reads every certificate of a PEM file (at least one), in file order. Any readable file is
/// taken: certificates read this way are what is to be checked or shown (`cert verify`, `cert
/// inspect`), never trust anchors.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, FilesError> {
    certs_of(path, &agentid_fs::read_bounded(path, MAX_FILE_BYTES)?)
}

/// Every certificate of the PEM bytes `pem`, read from `path` (at least one), in file order:
/// [`read_certs`]'s parsing, for a caller that read the file under a rule of its own.
pub fn certs_of(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, FilesError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// The certificate and the key of a credential directory, checked to belong together: the
/// leaf is an X509-SVID (client and server usage are both checked by [`CredentialDir::load`];
/// this checks the client profile) and the key is the one it certifies. Neither the time nor
/// the issuer is checked: renewing an expired certificate starts here.
pub struct Holder {
    /// What the leaf says: identity, key, validity, serial.
    pub leaf: SvidInfo,
    /// The certificate chain, leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    key: TaskKey,
}

impl std::fmt::Debug for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Holder")
            .field("identity", &self.leaf.id.to_string())
            .field("serial", &self.leaf.serial)
            .finish_non_exhaustive()
    }
}

impl Holder {
    /// Loads `DIR/cert.pem` and `DIR/key.pem` and checks that the key is the certified one.
    pub fn load(dir: &Path) -> Result<Self, FilesError> {
        let cert_path = dir.join(CERT_FILE);
        let cert_chain = certs_of(&cert_path, &read_held(&cert_path)?)?;
        let leaf = cert_chain
            .first()
            .ok_or_else(|| invalid(&cert_path, "no certificate"))?;
        let leaf =
            check_leaf(leaf.as_ref(), CertUsage::ClientAuth).map_err(|e| invalid(&cert_path, e))?;
        let key_path = dir.join(KEY_FILE);
        let key = read_task_key(&key_path)?;
        if key.public_key() != &leaf.public_key {
            return Err(invalid(
                &key_path,
                format!(
                    "does not hold the key certified by {} (the key does not match the certificate)",
                    cert_path.display()
                ),
            ));
        }
        Ok(Self {
            leaf,
            cert_chain,
            key,
        })
    }

    /// The task key.
    pub fn key(&self) -> &TaskKey {
        &self.key
    }
}

/// Reads the delegation chain of a credential directory, without verifying it: `chain.jwt`,
/// else `grant.jwt`, else none (a file the reader does not hold is refused). Returns the file
/// it came from.
pub fn read_chain(dir: &Path) -> Result<Option<(PathBuf, Chain)>, FilesError> {
    for name in [CHAIN_FILE, GRANT_FILE] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let text = token_of(&path, read_held(&path)?)?;
        let chain = Chain::parse_unverified(&text)
            .map_err(|e| invalid(&path, format!("not a chain: {e}")))?;
        return Ok(Some((path, chain)));
    }
    Ok(None)
}

/// A loaded credential directory.
pub struct CredentialDir {
    /// The directory.
    pub dir: PathBuf,
    /// The identity of the certificate's URI SAN.
    pub identity: PeerId,
    /// The certificate chain, leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The leaf's serial (lowercase hex).
    pub serial: String,
    /// The leaf's `notAfter`, Unix seconds.
    pub not_after: u64,
    /// The SPIFFE bundle of the certificate's trust domain.
    pub bundle: TrustBundle,
    /// The delegation chain (from `chain.jwt`, else `grant.jwt`), if the directory holds one.
    pub chain: Option<Chain>,
    /// The file the chain came from.
    pub chain_file: Option<PathBuf>,
    key: TaskKey,
}

impl std::fmt::Debug for CredentialDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key, never the chain's tokens.
        f.debug_struct("CredentialDir")
            .field("dir", &self.dir)
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial)
            .field("chain_file", &self.chain_file)
            .finish_non_exhaustive()
    }
}

impl CredentialDir {
    /// Loads and checks `dir` at the current time.
    pub fn load(dir: &Path) -> Result<Self, FilesError> {
        Self::load_at(dir, SystemTime::now())
    }

    /// Loads and checks `dir`; the certificate chain must validate against the bundle at `now`.
    pub fn load_at(dir: &Path, now: SystemTime) -> Result<Self, FilesError> {
        let Holder {
            leaf: info,
            cert_chain,
            key,
        } = Holder::load(dir)?;
        let cert_path = dir.join(CERT_FILE);
        let (leaf, intermediates) = cert_chain
            .split_first()
            .ok_or_else(|| invalid(&cert_path, "no certificate"))?;
        let td = info.id.trust_domain();

        let bundle_path = dir.join(BUNDLE_FILE);
        let bundle = TrustBundle::parse(&td, &read_held(&bundle_path)?)
            .map_err(|e| invalid(&bundle_path, format!("not a SPIFFE bundle of {td}: {e}")))?;
        let mut trust = TrustStore::new();
        for authority in bundle.x509_authorities() {
            trust
                .add_authority(&td, &authority.der)
                .map_err(|e| invalid(&bundle_path, e))?;
        }
        let now_unix =
            UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO));
        for usage in [CertUsage::ClientAuth, CertUsage::ServerAuth] {
            trust
                .verify(leaf, intermediates, now_unix, usage)
                .map_err(|e| {
                    invalid(
                        &cert_path,
                        format!("does not validate against {}: {e}", bundle_path.display()),
                    )
                })?;
        }

        let (chain_file, chain) = match read_chain(dir)? {
            Some((path, chain)) => {
                let read = chain
                    .read_unverified()
                    .map_err(|e| invalid(&path, format!("no holder: {e}")))?;
                let holder = read.holder();
                if holder.as_spiffe_id() != info.id.as_spiffe_id() {
                    return Err(invalid(
                        &path,
                        format!("is held by {holder}, not by this certificate's {}", info.id),
                    ));
                }
                // Rule 7.1 at every peer: the chain's last `cnf` is the certificate's key.
                if read.holder_key() != &info.public_key {
                    return Err(invalid(
                        &path,
                        format!(
                            "is bound to the key {}, not to the key certified by {} ({}): every peer would refuse it (possession_mismatch)",
                            read.holder_key().thumbprint(),
                            cert_path.display(),
                            info.public_key.thumbprint()
                        ),
                    ));
                }
                (Some(path), Some(chain))
            }
            None => (None, None),
        };

        Ok(Self {
            dir: dir.to_path_buf(),
            identity: info.id,
            cert_chain,
            serial: info.serial,
            not_after: info.not_after,
            bundle,
            chain,
            chain_file,
            key,
        })
    }

    /// A transport credential (certificate chain and task key) without a delegation chain.
    pub fn credential(&self) -> Result<Credential, FilesError> {
        let key = TaskKey::from_pkcs8_der(self.key.danger_pkcs8_der())
            .map_err(|e| invalid(&self.dir.join(KEY_FILE), format!("unusable task key: {e}")))?;
        Credential::new(self.cert_chain.clone(), key)
            .map_err(|e| invalid(&self.dir.join(CERT_FILE), e))
    }

    /// A transport credential that presents the directory's delegation chain, if it has one.
    pub fn credential_with_chain(&self) -> Result<Credential, FilesError> {
        let credential = self.credential()?;
        Ok(match &self.chain {
            Some(chain) => credential.with_chain(chain.as_str()),
            None => credential,
        })
    }

    /// A verifier configuration for this identity that trusts the directory's bundle (and only
    /// it). Revocation lists are required by default: apply one, or opt out explicitly with
    /// [`VerifierConfig::danger_accept_missing_or_stale_revocations`].
    pub fn verifier_config(&self) -> Result<VerifierConfig, FilesError> {
        let mut bundles = BundleSet::new();
        bundles
            .insert(self.bundle.clone())
            .map_err(|e| invalid(&self.dir.join(BUNDLE_FILE), e))?;
        Ok(VerifierConfig::new(
            self.identity.as_spiffe_id().clone(),
            bundles,
        ))
    }
}
