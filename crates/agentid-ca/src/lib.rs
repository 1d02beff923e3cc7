//! # agentid-ca
//!
//! The certificate authority of agentid: per-task X509-SVIDs issued from CSRs, the root grants
//! that start delegation chains, service certificates, revocation lists, trust bundles, an audit
//! log and a durable store.
//!
//! ## Security model
//!
//! * **One route to authority.** A grant is minted only by [`CertificateAuthority::open_task`],
//!   for a task's root holder (the operator, or a single-use bootstrap token bound to agent and
//!   task). A child's certificate ([`CertificateAuthority::issue_child`]) carries no grant: its
//!   authority comes only from links its parent signs, and it never outlives the parent's chain.
//! * **Only the key is taken from a CSR.** The leaf is built from the CA's own X509-SVID profile
//!   (one critical URI SAN, empty subject, `cA=false`, digitalSignature, serverAuth+clientAuth,
//!   random 128-bit serial). CSRs that ask for more (a CA flag, other names, other key usages)
//!   are refused, each with its own error.
//! * **One key per identity.** A task identity keeps its key for its life; a key once bound to
//!   an identity is refused for any other (enforced by the store's primary key too).
//! * **Recorded before returned.** Every certificate is committed to the store (SQLite, WAL,
//!   `synchronous=FULL`) before it is handed out, with its audit record in the same transaction
//!   (no record, no certificate): one hash chain per writer, with checkpoints signed by the
//!   audit key ([`audit`]).
//! * **Policy decides.** Nothing is issued unless `policy.toml` allows it, and a refusal names
//!   the rule. Revoked agents, tasks and keys get nothing more.
//! * Private key files are created 0600 and refused when group or world can read them. The
//!   issuing key sits behind [`X509Signer`] and the authority keys behind
//!   [`agentid_protocol::JwsSigner`], so a KMS or HSM can hold them.
//! * Time is a parameter (`now: SystemTime`) of every decision.
//!
//! ## Example: a CA in a directory, a task, a renewal, a revocation
//!
//! [`init_ca`] makes the CA's keys and store in a directory (`agentid ca init`); the agent
//! makes its own key and the CA certifies its public half for a task ([`open_task`]), with the
//! root grant. Certificates live minutes: the agent renews for the same identity and key
//! ([`renew`]) and publishes the renewed credential to its transport through a
//! `CredentialSource` (here agentid-transport's `MemoryCredentials`), which every new handshake
//! reads while live sessions stay up. Revoking writes the store; the signed list the CA then
//! publishes ([`revocation_list`]) is what peers apply.
//!
//! [`open_task`]: CertificateAuthority::open_task
//! [`renew`]: CertificateAuthority::renew
//! [`revocation_list`]: CertificateAuthority::revocation_list
//!
//! ```
//! use std::time::SystemTime;
//!
//! use agentid_ca::{
//!     init_ca, CertificateAuthority, InitOptions, KeySource, OpenTaskRequest, Policy,
//!     RenewRequest, RenewRequester, RevokeTarget, TaskRequester,
//! };
//! use agentid_protocol::{Algorithm, PeerId, Scope, TaskKey, TrustDomain};
//! use agentid_transport::{Credential, CredentialSource, MemoryCredentials, TrustStore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let td = TrustDomain::parse("example.org")?;
//! init_ca(dir.path(), &InitOptions::new(td.clone()), SystemTime::now())?;
//! let mut ca = CertificateAuthority::open(dir.path())?;
//! ca.set_policy(Policy::from_toml(
//!     r#"
//!     [agents.coder]
//!     scopes = ["repo:read"]
//!     requesters = ["operator"]
//!     "#,
//! )?);
//!
//! // The agent's key; the CA sees only its public half.
//! let key = TaskKey::generate(Algorithm::Es256)?;
//! let spki = KeySource::Spki(key.public_key().to_spki_der());
//! let scope = Scope::parse("repo:read")?;
//! let request = OpenTaskRequest::new("coder", spki.clone(), TaskRequester::Operator, scope);
//! let task = ca.open_task(&request, SystemTime::now())?;
//! let chain = |issued: &agentid_ca::IssuedCertificate| {
//!     vec![issued.leaf.der.clone().into(), issued.intermediate_der.clone().into()]
//! };
//! let credential = Credential::new(chain(&task.certificate), key)?;
//! let credentials = MemoryCredentials::new(credential.with_chain(task.grant.as_str()));
//!
//! // Renewal: same identity, same key, a new certificate, rotated in for new handshakes.
//! let renewal = RenewRequest {
//!     identity: PeerId::Task(task.identity.clone()),
//!     key: spki,
//!     requester: RenewRequester::Operator,
//!     ttl: None,
//! };
//! let renewed = ca.renew(&renewal, SystemTime::now())?;
//! assert_ne!(renewed.serial(), task.certificate.serial());
//! let mut trust = TrustStore::new(); // the anchors a rotation is checked against
//! for anchor in ca.trust_bundle()?.x509_authorities() {
//!     trust.add_authority(&td, &anchor.der)?;
//! }
//! let current = credentials.current().ok_or("no credential")?;
//! credentials.rotate(current.renewed(chain(&renewed))?, &trust)?;
//!
//! // Revocation: the agent gets nothing more, and the next published list names it.
//! let coder = RevokeTarget::Agent("coder".into());
//! ca.revoke(&coder, Some("task done"), "operator", SystemTime::now())?;
//! assert!(ca.renew(&renewal, SystemTime::now()).is_err());
//! let list: String = ca.revocation_list(SystemTime::now())?; // what peers apply
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod agentid_bundle;
pub mod audit;
mod ca;
pub mod config;
pub mod csr;
pub mod error;
pub mod hierarchy;
mod issue;
pub mod material;
#[cfg(feature = "server")]
pub mod metrics;
pub mod migrate;
pub mod policy;
pub mod profile;
#[cfg(feature = "server")]
pub mod publication;
pub mod request_body;
#[cfg(feature = "server")]
pub mod server;
pub mod signer;
pub mod store;
pub mod token;
mod util;

pub use audit::{AuditEvent, AuditLog};
pub use ca::{
    BootstrapToken, CaParts, CertificateAuthority, RevokeTarget, BUNDLE_REFRESH_HINT_SECS,
    DEFAULT_MAX_TOKENS_PER_SERVICE, TOKEN_RETENTION_SECS,
};
pub use config::CaConfig;
pub use csr::{parse_csr, RequestedKey};
pub use error::{CaError, Result};
pub use hierarchy::{init_ca, InitOptions};
pub use issue::{
    parse_principal, ChildRequest, IssuedCertificate, KeySource, OpenTaskRequest, RenewRequest,
    RenewRequester, ServiceRequest, TaskCredentials, TaskRequester,
};
pub use policy::Policy;
pub use profile::LeafCertificate;
pub use signer::{FileX509Signer, KeyType, X509Signer};
pub use store::PublishedList;
pub use store::{
    IssuanceKind, IssuanceRecord, RevocationKind, RevocationRecord, SqliteStore, Store,
};
pub use token::{BootstrapState, EnrollError, Redeemed, TokenBinding};
