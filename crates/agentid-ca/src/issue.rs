//! Issuance: the four distinct cases.
//!
//! * [`CertificateAuthority::open_task`]: the one route to authority. The root holder (the
//!   operator, or a single-use bootstrap token bound to agent and task) gets a certificate and
//!   the task's grant, bound to the certificate's key.
//! * [`CertificateAuthority::issue_child`]: a certificate for a child agent in its parent's task,
//!   without a grant; it never outlives the parent's chain.
//! * [`CertificateAuthority::issue_service`]: a service certificate, without a grant.
//! * [`CertificateAuthority::renew`]: a new certificate for the same identity and key.

use std::time::{Duration, SystemTime};

use agentid_protocol::{
    AgentId, Chain, GrantBuilder, IdKind, IdSet, Limits, PeerId, Scope, Serial, ServiceId, TaskId,
    TaskIdentity,
};

use crate::audit::AuditEvent;
use crate::ca::{token_hash, CertificateAuthority};
use crate::csr::{parse_csr, RequestedKey};
use crate::error::{CaError, Result};
use crate::material;
use crate::policy::{AgentRule, RequesterKind};
use crate::profile::{sign_leaf, LeafCertificate, LeafSpec};
use crate::store::{
    Binding, BootstrapRecord, IdentityRecord, IssuanceCommit, IssuanceKind, IssuanceRecord,
    RevocationKind, TaskRecord,
};
use crate::util;

/// The requester an issuance for a bootstrap token records as its actor, and so does each
/// refusal of such a redemption (CA-API.md 4.1): the token's bearer has no identity of its own.
pub(crate) const BOOTSTRAP_ACTOR: &str = "bootstrap token";
/// Where the certified key comes from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// A PKCS#10 CSR (DER or PEM): the signature is verified and only the key is taken. This is
    /// the route for any request that crosses a trust boundary.
    Csr(Vec<u8>),
    /// A bare SubjectPublicKeyInfo DER, for a trusted local caller that holds the private key
    /// itself (the CLI's `cert issue`, which generates the key in its own process).
    Spki(Vec<u8>),
}

impl KeySource {
    fn resolve(&self, uri: &str) -> Result<RequestedKey> {
        match self {
            KeySource::Csr(csr) => parse_csr(csr, uri),
            KeySource::Spki(spki) => RequestedKey::from_spki_der(spki),
        }
    }
}

/// Who asks for a task to be opened.
#[derive(Clone)]
pub enum TaskRequester {
    /// The operator (may assert a principal).
    Operator,
    /// The holder of a bootstrap token bound to this agent and task.
    Bootstrap(String),
    /// A network service (`svc:NAME`, the name without the prefix) holding `open_task` for the
    /// agent (and `assert_principal` to name a principal) in `agents.NAME.permissions`.
    Service(String),
}

impl core::fmt::Debug for TaskRequester {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TaskRequester::Operator => f.write_str("Operator"),
            TaskRequester::Bootstrap(_) => f.write_str("Bootstrap(..)"),
            TaskRequester::Service(n) => write!(f, "Service({n:?})"),
        }
    }
}

/// A request to open a task for its root holder.
#[derive(Clone, Debug)]
pub struct OpenTaskRequest {
    /// The agent name (`spiffe://<td>/agent/<name>`).
    pub agent: String,
    /// The task id; generated (128 random bits) when `None`. A bootstrap token fixes it.
    pub task: Option<TaskId>,
    /// The holder's key.
    pub key: KeySource,
    /// Who asks.
    pub requester: TaskRequester,
    /// Certificate TTL (default: the policy's `defaults.ttl`, capped by the task's lifetime).
    pub ttl: Option<Duration>,
    /// Task (grant) lifetime (default: the policy's `defaults.task_ttl`).
    pub task_ttl: Option<Duration>,
    /// The grant's scope: concrete tokens covered by the agent's policy.
    pub scope: Scope,
    /// The grant's `aud` (default: none, meaning the trust domain).
    pub audience: Option<IdSet>,
    /// An RFC 9493 subject identifier the operator asserts: `mode` becomes `on_behalf_of`.
    pub principal: Option<serde_json::Value>,
    /// The grant's `max_depth` (default 0, sealed).
    pub max_depth: Option<u8>,
    /// The grant's `limits` (default: the policy's ceilings, if any).
    pub limits: Option<Limits>,
    /// The grant's `may_delegate_to` (default: the policy's list, if any).
    pub may_delegate_to: Option<IdSet>,
    /// The thumbprint of the key of the service that asked (over the API, or by making the
    /// bootstrap token being redeemed): the opening is refused while that key is revoked,
    /// checked in the issuance's own transaction (CA-API.md 3.4, 3.6).
    pub(crate) requester_jkt: Option<String>,
}

impl OpenTaskRequest {
    /// A request with defaults for everything but agent, key, requester and scope.
    pub fn new(
        agent: impl Into<String>,
        key: KeySource,
        requester: TaskRequester,
        scope: Scope,
    ) -> Self {
        OpenTaskRequest {
            agent: agent.into(),
            task: None,
            key,
            requester,
            ttl: None,
            task_ttl: None,
            scope,
            audience: None,
            principal: None,
            max_depth: None,
            limits: None,
            may_delegate_to: None,
            requester_jkt: None,
        }
    }
}

/// A request by a parent for a child agent's certificate in the parent's task.
#[derive(Clone, Debug)]
pub struct ChildRequest {
    /// The parent's task identity. The caller authenticates it (mTLS peer, or the CLI holding
    /// the parent's key); the CA authorizes it by policy and checks it holds a live certificate.
    pub parent: TaskIdentity,
    /// The parent's current chain, if the caller has it: its `exp` can only shorten the child's
    /// certificate (read unverified; it is never used to lengthen anything).
    pub parent_chain: Option<Chain>,
    /// The child's agent name.
    pub agent: String,
    /// The child's key.
    pub key: KeySource,
    /// Certificate TTL (default: the policy's `defaults.ttl`, capped by the parent's chain;
    /// an explicit TTL beyond the parent's chain is refused).
    pub ttl: Option<Duration>,
}

/// A request for a service certificate.
#[derive(Clone, Debug)]
pub struct ServiceRequest {
    /// The service name (`spiffe://<td>/svc/<name>`).
    pub service: String,
    /// The service's key.
    pub key: KeySource,
    /// Certificate TTL (default: the policy's `defaults.ttl`).
    pub ttl: Option<Duration>,
}

/// Who asks for a renewal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenewRequester {
    /// The operator.
    Operator,
    /// The identity itself (authenticated by the caller, e.g. by its current certificate).
    Holder,
}

/// A renewal: same identity, same key.
#[derive(Clone, Debug)]
pub struct RenewRequest {
    /// The identity to renew (a task identity or a service ID).
    pub identity: PeerId,
    /// The key: must be the one bound to the identity.
    pub key: KeySource,
    /// Who asks.
    pub requester: RenewRequester,
    /// Certificate TTL (default: the policy's `defaults.ttl`, capped by the task's chain).
    pub ttl: Option<Duration>,
}

/// A certificate as issued.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    /// The identity in the certificate's URI SAN.
    pub identity: PeerId,
    /// The leaf.
    pub leaf: LeafCertificate,
    /// RFC 7638 thumbprint of the certified key.
    pub jkt: String,
    /// The issuing intermediate, DER (send it along with the leaf).
    pub intermediate_der: Vec<u8>,
}

impl IssuedCertificate {
    /// `cert.pem`: the leaf, then the intermediate.
    pub fn chain_pem(&self) -> String {
        let mut s = material::cert_pem(&self.leaf.der);
        s.push_str(&material::cert_pem(&self.intermediate_der));
        s
    }
    /// The serial (hex).
    pub fn serial(&self) -> &str {
        &self.leaf.serial
    }
}

/// The credentials of a newly opened task: the holder's certificate and the grant.
#[derive(Clone, Debug)]
pub struct TaskCredentials {
    /// The certificate.
    pub certificate: IssuedCertificate,
    /// The task identity.
    pub identity: TaskIdentity,
    /// The grant (a chain of depth 0).
    pub grant: Chain,
    /// The grant's `jti`.
    pub grant_jti: String,
    /// The grant's `exp`, Unix seconds.
    pub grant_exp: u64,
}

/// The terms of a task's grant beyond its scope, checked against the agent's rule
/// ([`CertificateAuthority::check_grant_terms`]).
struct GrantTerms {
    max_depth: u8,
    audience: Option<IdSet>,
    may_delegate_to: Option<IdSet>,
    limits: Option<Limits>,
}

/// One issuance as [`CertificateAuthority::sign_and_commit`] commits it with the certificate
/// it signs: the issuance and identity records of every kind come from here
/// ([`Issuance::records`]), with the key binding, task, bootstrap token and revocation checks of
/// the kind.
struct Issuance<'a> {
    kind: IssuanceKind,
    /// The identity (the certificate's URI SAN).
    uri: &'a str,
    /// Agent name and task id (task identities only).
    agent: Option<String>,
    task: Option<String>,
    /// Who asked.
    requester: String,
    /// Thumbprint and SubjectPublicKeyInfo DER of the key bound to the identity.
    jkt: &'a str,
    spki: &'a [u8],
    /// The grant's `jti`, for task openings.
    grant_jti: Option<String>,
    /// The identity's cap; `None`: the new certificate's `notAfter`.
    cap: Option<u64>,
    binding: Binding,
    task_record: Option<TaskRecord>,
    /// The requester named the task id (see [`IssuanceCommit::chosen_task_id`]).
    chosen_task_id: bool,
    bootstrap: Option<BootstrapRecord>,
    /// Refused while any of these is revoked.
    refuse: Vec<(RevocationKind, String)>,
    /// When the key got its first certificate, if before now (a service key's age, see
    /// [`CertificateAuthority::key_bound_at`]); `None`: now.
    key_bound_at: Option<u64>,
}

impl Issuance<'_> {
    /// The issuance and identity records of `leaf`, issued at `now`.
    fn records(&self, leaf: &LeafCertificate, now: u64) -> (IssuanceRecord, IdentityRecord) {
        (
            IssuanceRecord {
                serial: leaf.serial.clone(),
                identity: self.uri.to_owned(),
                kind: self.kind,
                agent: self.agent.clone(),
                task: self.task.clone(),
                not_before: leaf.not_before,
                not_after: leaf.not_after,
                requester: self.requester.clone(),
                jkt: self.jkt.to_owned(),
                issued_at: now,
                grant_jti: self.grant_jti.clone(),
            },
            IdentityRecord {
                identity: self.uri.to_owned(),
                jkt: self.jkt.to_owned(),
                spki: self.spki.to_vec(),
                agent: self.agent.clone(),
                task: self.task.clone(),
                cap: self.cap.unwrap_or(leaf.not_after),
                // The store keeps the earlier time while the key stays the same.
                key_bound_at: Some(self.key_bound_at.unwrap_or(now)),
            },
        )
    }
}

fn secs(d: Duration) -> Result<u64> {
    if d.is_zero() {
        return Err(CaError::InvalidRequest("TTL must be positive".into()));
    }
    Ok(d.as_secs().max(1))
}

impl CertificateAuthority {
    pub(crate) fn check_td(&self, id: &agentid_protocol::SpiffeId) -> Result<()> {
        if id.trust_domain() != self.config.trust_domain {
            return Err(CaError::WrongTrustDomain {
                identity: id.as_str().to_string(),
                trust_domain: self.config.trust_domain.as_str().to_string(),
            });
        }
        Ok(())
    }

    /// notBefore/notAfter for a request: `not_after = min(now + ttl, cap, intermediate notAfter)`.
    /// An explicit TTL that `cap` (the requester's authority) cannot honour is refused; a
    /// defaulted TTL is shortened.
    pub(crate) fn validity(
        &self,
        now: u64,
        ttl: Option<Duration>,
        max_ttl: u64,
        cap: u64,
        rule: &str,
    ) -> Result<(u64, u64)> {
        let skew = self.config.skew_secs;
        let requested = match ttl {
            Some(d) => {
                let t = secs(d)?;
                if t > max_ttl {
                    return Err(self
                        .policy
                        .lifetime_refusal(rule, "certificate TTL", t, max_ttl));
                }
                t
            }
            None => self.policy.default_ttl.min(max_ttl),
        };
        let want = now.saturating_add(requested);
        if cap <= now {
            return Err(CaError::OutlivesParent {
                requested: want,
                parent_exp: cap,
            });
        }
        if ttl.is_some() && want > cap {
            return Err(CaError::OutlivesParent {
                requested: want,
                parent_exp: cap,
            });
        }
        let not_after = want.min(cap).min(self.intermediate_not_after);
        if not_after <= now {
            return Err(CaError::InvalidRequest(
                "the issuing CA certificate has expired".into(),
            ));
        }
        Ok((now.saturating_sub(skew), not_after))
    }

    fn sign_and_commit(
        &self,
        dns: &[String],
        key: &RequestedKey,
        validity: (u64, u64),
        issuance: Issuance<'_>,
        now: u64,
    ) -> Result<LeafCertificate> {
        let leaf = sign_leaf(
            &LeafSpec {
                uri: issuance.uri,
                dns,
                spki_der: &key.spki_der,
                not_before: validity.0,
                not_after: validity.1,
            },
            &self.intermediate_der,
            self.issuer.as_ref(),
        )?;
        let (record, identity) = issuance.records(&leaf, now);
        let Issuance {
            binding,
            task_record: task,
            chosen_task_id,
            bootstrap,
            refuse,
            ..
        } = issuance;
        // The issuance's audit record, committed with it.
        let audit = AuditEvent {
            ts: now,
            kind: format!("issue.{}", record.kind.as_str()),
            actor: record.requester.clone(),
            subject: Some(record.identity.clone()),
            task: record.task.clone(),
            serial: Some(record.serial.clone()),
            jti: record.grant_jti.clone(),
            outcome: "ok".into(),
            reason: None,
            exp: None,
            expanded: None,
        };
        let c = IssuanceCommit {
            record: &record,
            identity: &identity,
            binding,
            task: task.as_ref(),
            chosen_task_id,
            bootstrap: bootstrap.as_ref(),
            refuse_if_revoked: &refuse,
            audit: &audit,
            now,
        };
        // Durable before the certificate is returned; without the store's lock when the store
        // commits on its own (group commit).
        match &self.committer {
            Some(committer) => committer.commit_issuance(&c)?,
            None => self.store()?.commit_issuance(&c)?,
        }
        self.audit.record(&audit);
        Ok(leaf)
    }

    /// After an issuance: a success was recorded with it (a checkpoint may be due); a refusal
    /// is recorded now, on its own (nothing was issued).
    pub(crate) fn audit_issue(
        &self,
        kind: IssuanceKind,
        now: u64,
        actor: &str,
        subject: &str,
        task: Option<&str>,
        res: &core::result::Result<(String, Option<String>), String>,
    ) {
        match res {
            Ok(_) => {
                tracing::info!(kind = kind.as_str(), subject, "certificate issued");
                self.after_audit(now);
            }
            Err(e) => {
                // The identity asked for, as the refusal's record names it: only one of this
                // trust domain that parses as an agent, task or service identity (CA-API.md
                // 4.1). The requester's name for it is not (a child's agent is whatever the
                // parent sent); the reason says what was wrong with it, bounded.
                let subject = agentid_protocol::SpiffeId::parse(subject)
                    .ok()
                    .filter(|id| {
                        id.trust_domain_str() == self.config.trust_domain.as_str()
                            && matches!(id.kind(), IdKind::Agent | IdKind::Task | IdKind::Service)
                    });
                let subject = subject.as_ref().map(agentid_protocol::SpiffeId::as_str);
                tracing::warn!(
                    kind = kind.as_str(),
                    subject = subject.unwrap_or(""),
                    error = %e,
                    "issuance refused"
                );
                self.record_refusal(AuditEvent {
                    ts: now,
                    kind: format!("issue.{}", kind.as_str()),
                    actor: actor.to_string(),
                    subject: subject.map(str::to_owned),
                    task: task.map(str::to_string),
                    outcome: "denied".into(),
                    reason: Some(e.clone()),
                    ..AuditEvent::default()
                });
            }
        }
    }

    /// Opens a task for its root holder: the certificate and the grant, recorded before they
    /// are returned.
    pub fn open_task(&self, req: &OpenTaskRequest, now: SystemTime) -> Result<TaskCredentials> {
        let now_s = util::unix(now)?;
        let service_actor;
        let actor = match &req.requester {
            TaskRequester::Operator => "operator",
            TaskRequester::Bootstrap(_) => BOOTSTRAP_ACTOR,
            TaskRequester::Service(n) => {
                service_actor = format!("svc:{n}");
                service_actor.as_str()
            }
        };
        let task = match (&req.task, &req.requester) {
            (Some(t), _) => Ok(t.clone()),
            // A bootstrap token is bound to its task: the requester must name it.
            (None, TaskRequester::Bootstrap(_)) => Err(CaError::BootstrapToken(
                "the request must name the task the token is bound to",
            )),
            (None, TaskRequester::Operator | TaskRequester::Service(_)) => {
                TaskId::generate().map_err(CaError::from)
            }
        };
        let subject = match &task {
            Ok(t) => format!(
                "spiffe://{}/agent/{}/task/{}",
                self.config.trust_domain.as_str(),
                req.agent,
                t.as_str()
            ),
            Err(_) => format!(
                "spiffe://{}/agent/{}",
                self.config.trust_domain.as_str(),
                req.agent
            ),
        };
        let res = task.and_then(|t| self.open_task_inner(req, t, now_s));
        let summary = res
            .as_ref()
            .map(|c| (c.certificate.leaf.serial.clone(), Some(c.grant_jti.clone())))
            .map_err(|e| e.to_string());
        self.audit_issue(
            IssuanceKind::Task,
            now_s,
            actor,
            &subject,
            req.task.as_ref().map(TaskId::as_str),
            &summary,
        );
        res
    }

    /// The steps of a task opening, in the order they run: identity and rule, the requester,
    /// its bootstrap token, the grant's terms, the lifetimes, the key, the grant, then the
    /// certificate signed and committed with the task's records.
    fn open_task_inner(
        &self,
        req: &OpenTaskRequest,
        task: TaskId,
        now: u64,
    ) -> Result<TaskCredentials> {
        let agent = AgentId::new(&self.config.trust_domain, &req.agent)?;
        let identity = TaskIdentity::new(&agent, &task)?;
        let name = agent.name();
        let rule = self.policy.agent(name)?;
        let who = self.check_task_requester(req, name, &identity)?;
        let bootstrap = self.check_bootstrap_token(req, name, &task, now)?;
        let terms = self.check_grant_terms(req, name, rule)?;
        let (grant_exp, validity) = self.task_lifetimes(req, name, rule, now)?;

        let uri = identity.as_str().to_string();
        let key = req.key.resolve(&uri)?;
        let jkt = key.thumbprint();

        let max_depth = terms.max_depth;
        let (grant, jti) = self.sign_grant(req, &identity, &key, terms, now, grant_exp)?;
        let principal = req
            .principal
            .as_ref()
            .map(crate::store::canonical_principal)
            .transpose()?;
        let mut refuse = vec![
            (RevocationKind::Agent, name.to_string()),
            (RevocationKind::Task, task.as_str().to_string()),
            (RevocationKind::Jkt, jkt.clone()),
        ];
        // No new task for a revoked principal (the CA keeps the entry past its `exp`).
        if let Some(p) = &principal {
            refuse.push((RevocationKind::Principal, p.clone()));
        }
        // Nor for a service whose key is revoked, nor from a token such a key made.
        if let Some(k) = &req.requester_jkt {
            refuse.push((RevocationKind::Jkt, k.clone()));
        }

        let leaf = self.sign_and_commit(
            &[],
            &key,
            validity,
            Issuance {
                kind: IssuanceKind::Task,
                uri: &uri,
                agent: Some(name.to_string()),
                task: Some(task.as_str().to_string()),
                requester: who,
                jkt: &jkt,
                spki: &key.spki_der,
                grant_jti: Some(jti.clone()),
                cap: Some(grant_exp),
                binding: Binding::Fresh,
                task_record: Some(TaskRecord {
                    task: task.as_str().to_string(),
                    holder: uri.clone(),
                    grant_jti: jti.clone(),
                    exp: grant_exp,
                    created: now,
                    principal,
                    max_depth: Some(max_depth),
                }),
                // A generated id is no other's; a token's was checked when the token was made.
                chosen_task_id: req.task.is_some() && bootstrap.is_none(),
                bootstrap,
                refuse,
                key_bound_at: None,
            },
            now,
        )?;
        Ok(TaskCredentials {
            certificate: self.issued(PeerId::Task(identity.clone()), leaf, jkt),
            identity,
            grant,
            grant_jti: jti,
            grant_exp,
        })
    }

    /// The checks of a task opening that depend only on what it asks for (not on who asks,
    /// the key or the store): the scope and the grant's terms within the agent's rule, and the
    /// lifetimes at `now`. A bootstrap token's binding passes them when the token is made.
    pub(crate) fn check_task_terms(&self, req: &OpenTaskRequest, now: u64) -> Result<()> {
        let rule = self.policy.agent(&req.agent)?;
        self.check_grant_terms(req, &req.agent, rule)?;
        self.task_lifetimes(req, &req.agent, rule, now)?;
        Ok(())
    }

    /// The requester may open tasks for agent `name`: `agents.NAME.requesters` lists the
    /// operator or `bootstrap`; a service holds `open_task` in `agents.NAME.permissions`, and
    /// `assert_principal` too when the request names a principal. Returns the requester as the
    /// issuance records it.
    fn check_task_requester(
        &self,
        req: &OpenTaskRequest,
        name: &str,
        identity: &TaskIdentity,
    ) -> Result<String> {
        Ok(match &req.requester {
            TaskRequester::Operator => {
                self.policy.check_agent_requester(
                    name,
                    &RequesterKind::Operator,
                    "operator",
                    identity.as_str(),
                )?;
                "operator".to_owned()
            }
            TaskRequester::Bootstrap(_) => {
                self.policy.check_agent_requester(
                    name,
                    &RequesterKind::Bootstrap,
                    "bootstrap token",
                    identity.as_str(),
                )?;
                BOOTSTRAP_ACTOR.to_owned()
            }
            TaskRequester::Service(svc) => {
                self.policy
                    .check_permission(name, svc, crate::policy::Permission::OpenTask)?;
                if req.principal.is_some() {
                    self.policy.check_permission(
                        name,
                        svc,
                        crate::policy::Permission::AssertPrincipal,
                    )?;
                }
                format!("svc:{svc}")
            }
        })
    }

    /// A bootstrap requester's token: a principal the request names must be the one the
    /// token's creator bound; the token must be known and unused, bound to this agent and task,
    /// and unexpired. Returns its record, consumed in the issuance's own transaction (`None`
    /// for the operator and services).
    fn check_bootstrap_token(
        &self,
        req: &OpenTaskRequest,
        name: &str,
        task: &TaskId,
        now: u64,
    ) -> Result<Option<BootstrapRecord>> {
        let TaskRequester::Bootstrap(token) = &req.requester else {
            return Ok(None);
        };
        let hash = token_hash(token);
        if req.principal.is_some() {
            // Only the principal the token's creator bound (and was allowed to assert).
            let bound = self
                .store()?
                .bootstrap_state(&hash)?
                .and_then(|s| s.binding)
                .and_then(|b| serde_json::from_str::<crate::TokenBinding>(&b).ok())
                .and_then(|b| b.principal);
            if bound != req.principal {
                return Err(CaError::InvalidRequest(
                    "a principal comes from the operator, a permitted service, or the token that binds it".into(),
                ));
            }
        }
        let rec = self
            .store()?
            .bootstrap(&hash)?
            .ok_or(CaError::BootstrapToken("unknown or already used"))?;
        if rec.agent != name || rec.task != task.as_str() {
            return Err(CaError::BootstrapToken("bound to another agent or task"));
        }
        if rec.expires <= now {
            return Err(CaError::BootstrapToken("expired"));
        }
        Ok(Some(rec))
    }

    /// The grant's contents within agent `name`'s rule, in this order: the scope, `max_depth`,
    /// each `aud` entry (`audiences`, or the trust domain without it), `may_delegate_to` and
    /// `limits` (the rule's lists or ceilings apply where the request names none; a ceiling the
    /// request omits still caps it).
    fn check_grant_terms(
        &self,
        req: &OpenTaskRequest,
        name: &str,
        rule: &AgentRule,
    ) -> Result<GrantTerms> {
        // The grant will carry it: a principal that is not a subject identifier of
        // PROTOCOL.md 6.1.1 is refused now (`bad_request`), also when a token binds it.
        if let Some(p) = &req.principal {
            agentid_protocol::check_principal(p)?;
        }
        self.policy.check_scope(name, &req.scope)?;
        let max_depth = req.max_depth.unwrap_or(0);
        if max_depth > rule.max_depth {
            return Err(CaError::policy(
                format!("agents.{name}.max_depth"),
                format!(
                    "agent {name:?} may not hold max_depth {max_depth} (max {})",
                    rule.max_depth
                ),
            ));
        }
        // A request naming no audience gets the rule's list: a grant without `aud` is
        // `[iss]`, the whole trust domain, which the rule's list may not cover.
        let audience = match (&req.audience, &rule.audiences) {
            (Some(aud), _) => Some(aud.clone()),
            (None, allowed) => allowed.clone(),
        };
        if let Some(aud) = &req.audience {
            for id in aud.ids() {
                let ok = match &rule.audiences {
                    Some(allowed) => allowed.covers_id(id),
                    None => self.config.trust_domain.id().covers(id),
                };
                if !ok {
                    return Err(CaError::policy(
                        format!("agents.{name}.audiences"),
                        format!("agent {name:?} may not address audience {id}"),
                    ));
                }
            }
        }
        let may_delegate_to = match (&req.may_delegate_to, &rule.may_delegate_to) {
            (Some(req_set), Some(allowed)) => {
                if !allowed.covers(req_set) {
                    return Err(CaError::policy(
                        format!("agents.{name}.may_delegate_to"),
                        format!("agent {name:?} may not delegate that widely"),
                    ));
                }
                Some(req_set.clone())
            }
            (Some(req_set), None) => Some(req_set.clone()),
            (None, allowed) => allowed.clone(),
        };
        let limits = match (&req.limits, &rule.limits) {
            (Some(l), Some(ceil)) => {
                l.narrows(ceil).map_err(|n| {
                    CaError::policy(
                        format!("agents.{name}.limits"),
                        format!("limit {n:?} above the ceiling"),
                    )
                })?;
                // Names the policy caps but the request omits keep the policy's ceiling.
                Some(ceil.merge_min(l))
            }
            (Some(l), None) => Some(l.clone()),
            (None, ceil) => ceil.clone(),
        };
        Ok(GrantTerms {
            max_depth,
            audience,
            may_delegate_to,
            limits,
        })
    }

    /// The task's lifetime within `agents.NAME.max_task_ttl` (default `defaults.task_ttl`),
    /// then the certificate's within `agents.NAME.max_ttl` and the task's end. Returns the
    /// grant's `exp` and the certificate's validity.
    fn task_lifetimes(
        &self,
        req: &OpenTaskRequest,
        name: &str,
        rule: &AgentRule,
        now: u64,
    ) -> Result<(u64, (u64, u64))> {
        let task_ttl = match req.task_ttl {
            Some(d) => secs(d)?,
            None => self.policy.default_task_ttl.min(rule.max_task_ttl),
        };
        if task_ttl > rule.max_task_ttl {
            return Err(self.policy.lifetime_refusal(
                &format!("agents.{name}.max_task_ttl"),
                "task lifetime",
                task_ttl,
                rule.max_task_ttl,
            ));
        }
        let grant_exp = now.saturating_add(task_ttl);
        if let Some(d) = req.ttl {
            self.policy.check_agent_ttl(name, secs(d)?)?;
        }
        let validity = self.validity(
            now,
            req.ttl,
            rule.max_ttl,
            grant_exp,
            &format!("agents.{name}.max_ttl"),
        )?;
        Ok((grant_exp, validity))
    }

    /// The task's grant (a chain of depth 0), bound to the certificate's key, with the checked
    /// `terms`, valid from `now` to `grant_exp`. Returns it with its fresh `jti`.
    fn sign_grant(
        &self,
        req: &OpenTaskRequest,
        identity: &TaskIdentity,
        key: &RequestedKey,
        terms: GrantTerms,
        now: u64,
        grant_exp: u64,
    ) -> Result<(Chain, String)> {
        self.sign_grant_with(
            self.grant_signer.as_ref(),
            req,
            identity,
            key,
            terms,
            now,
            grant_exp,
        )
    }

    /// A bootstrap token's terms make a grant that can be signed (CA-API.md 3.6: a token no
    /// enrollment could redeem is refused when made): the grant for task `task` is built as
    /// the enrollment will build it, for a P-256 holder key (whose JWK is the larger) and
    /// with a placeholder of the signature's length, so nothing is signed. A grant over the
    /// chain token's size (8 KiB) is refused `InvalidRequest`.
    pub(crate) fn check_grant_fits(
        &self,
        req: &OpenTaskRequest,
        task: &TaskId,
        now: u64,
    ) -> Result<()> {
        let rule = self.policy.agent(&req.agent)?;
        let terms = self.check_grant_terms(req, &req.agent, rule)?;
        let (grant_exp, _) = self.task_lifetimes(req, &req.agent, rule, now)?;
        let agent = AgentId::new(&self.config.trust_domain, &req.agent)?;
        let identity = TaskIdentity::new(&agent, task)?;
        let holder = agentid_protocol::TaskKey::generate(agentid_protocol::Algorithm::Es256)?;
        let key = RequestedKey::from_spki_der(&holder.public_key().to_spki_der())?;
        let sizer = SizeOnly(self.grant_signer.as_ref());
        self.sign_grant_with(&sizer, req, &identity, &key, terms, now, grant_exp)
            .map(|_| ())
            .map_err(|e| match e {
                CaError::Protocol(e) => CaError::InvalidRequest(format!(
                    "the task's grant would not fit a chain token ({e}): bind fewer or shorter scopes, audiences or limits"
                )),
                other => other,
            })
    }

    #[allow(clippy::too_many_arguments)]
    fn sign_grant_with(
        &self,
        signer: &dyn agentid_protocol::JwsSigner,
        req: &OpenTaskRequest,
        identity: &TaskIdentity,
        key: &RequestedKey,
        terms: GrantTerms,
        now: u64,
        grant_exp: u64,
    ) -> Result<(Chain, String)> {
        let jti = util::random_jti()?;
        let mut g = GrantBuilder::new(
            &self.config.trust_domain,
            identity,
            &key.public_key,
            req.scope.clone(),
        )
        .max_depth(terms.max_depth)
        .validity(now, now, grant_exp)
        .jti(jti.clone());
        if let Some(aud) = terms.audience {
            g = g.audience(aud);
        }
        if let Some(p) = &req.principal {
            g = g.on_behalf_of(p.clone());
        }
        if let Some(l) = terms.limits {
            g = g.limits(l);
        }
        if let Some(m) = terms.may_delegate_to {
            g = g.may_delegate_to(m);
        }
        let grant = g.sign(signer)?;
        Ok((grant, jti))
    }

    /// The answer of an issuance: `leaf`, with the issuing intermediate.
    fn issued(&self, identity: PeerId, leaf: LeafCertificate, jkt: String) -> IssuedCertificate {
        IssuedCertificate {
            identity,
            leaf,
            jkt,
            intermediate_der: self.intermediate_der.clone(),
        }
    }

    /// Issues a child agent's certificate in its parent's task, without a grant. The child's
    /// authority comes only from links its parent signs; its certificate never outlives the
    /// parent's chain.
    pub fn issue_child(&self, req: &ChildRequest, now: SystemTime) -> Result<IssuedCertificate> {
        let now_s = util::unix(now)?;
        let task = req.parent.task_id();
        let subject = format!(
            "spiffe://{}/agent/{}/task/{}",
            self.config.trust_domain.as_str(),
            req.agent,
            task.as_str()
        );
        let res = self.issue_child_inner(req, now_s);
        let summary = res
            .as_ref()
            .map(|c| (c.leaf.serial.clone(), None))
            .map_err(|e| e.to_string());
        self.audit_issue(
            IssuanceKind::Child,
            now_s,
            req.parent.as_str(),
            &subject,
            Some(task.as_str()),
            &summary,
        );
        res
    }

    /// The latest a child of `req.parent` (in task `task`) may hold its certificate until, with
    /// the parent's bound key thumbprint and the parent's ancestors: the parent's cap, its task's expiry, its current
    /// certificate's `notAfter` (CA-API.md 3.8: a child never outlives the parent's certificate)
    /// and, if the parent sent its chain, the chain's expiry. The parent must be a live identity
    /// of this CA, in a task this CA opened.
    fn child_cap(&self, req: &ChildRequest, task: &TaskId, now: u64) -> Result<ChildCap> {
        let not_active = || CaError::ParentNotActive(req.parent.as_str().to_string());
        let (parent_rec, task_rec, parent_cert, ancestors) = {
            let store = self.store()?;
            let p = store
                .identity(req.parent.as_str())?
                .ok_or_else(not_active)?;
            let t = store.task(task.as_str())?.ok_or_else(not_active)?;
            let c = store.latest_not_after(&p.jkt)?.ok_or_else(not_active)?;
            let ancestors = ancestors_of(&**store, &p.identity, &p.jkt, &t, not_active)?;
            // The child sits one below its parent, which sits one below each of its ancestors
            // down from the root holder (depth 0).
            if let Some(max_depth) = t.max_depth {
                let depth = u32::try_from(ancestors.len())
                    .unwrap_or(u32::MAX)
                    .saturating_add(1);
                if depth > u32::from(max_depth) {
                    return Err(CaError::ChildTooDeep { depth, max_depth });
                }
            }
            (p, t, c, ancestors)
        };
        let mut cap = parent_rec.cap.min(task_rec.exp).min(parent_cert);
        if let Some(chain) = &req.parent_chain {
            // Only ever shortens: safe to read unverified.
            let read = chain.read_unverified()?;
            let holder = read.holder();
            if *holder != req.parent {
                return Err(CaError::InvalidRequest(format!(
                    "the parent chain's holder is {holder}, not {}",
                    req.parent
                )));
            }
            cap = cap.min(read.expires());
        }
        if cap <= now {
            return Err(not_active());
        }
        Ok(ChildCap {
            parent_jkt: parent_rec.jkt,
            grant_jti: task_rec.grant_jti,
            cap,
            ancestors,
        })
    }

    fn issue_child_inner(&self, req: &ChildRequest, now: u64) -> Result<IssuedCertificate> {
        let td = &self.config.trust_domain;
        self.check_td(req.parent.as_spiffe_id())?;
        let task = req.parent.task_id();
        let agent = AgentId::new(td, &req.agent)?;
        let identity = TaskIdentity::new(&agent, &task)?;
        if identity == req.parent {
            return Err(CaError::InvalidRequest(
                "a parent cannot request a child with its own identity".into(),
            ));
        }
        let name = agent.name();
        // An agent without a rule is refused as one whose rule does not list the parent: a
        // task holder learns no agent names from the answer (CA-API.md 3.8).
        let Ok(rule) = self.policy.agent(name) else {
            return Err(CaError::Unauthorized {
                requester: req.parent.as_str().to_owned(),
                subject: identity.as_str().to_owned(),
                rule: format!("agents.{name}.requesters"),
            });
        };
        let parent_agent = req.parent.agent();
        self.policy.check_agent_requester(
            name,
            &RequesterKind::Parent(parent_agent.name().to_string()),
            req.parent.as_str(),
            identity.as_str(),
        )?;
        let ChildCap {
            parent_jkt,
            grant_jti,
            cap,
            ancestors,
        } = self.child_cap(req, &task, now)?;
        let validity = self.validity(
            now,
            req.ttl,
            rule.max_ttl,
            cap,
            &format!("agents.{name}.max_ttl"),
        )?;
        let uri = identity.as_str().to_string();
        let key = req.key.resolve(&uri)?;
        let jkt = key.thumbprint();
        let leaf = self.sign_and_commit(
            &[],
            &key,
            validity,
            Issuance {
                kind: IssuanceKind::Child,
                uri: &uri,
                agent: Some(name.to_string()),
                task: Some(task.as_str().to_string()),
                requester: req.parent.as_str().to_string(),
                jkt: &jkt,
                spki: &key.spki_der,
                grant_jti: None,
                cap: Some(cap),
                binding: Binding::FreshOrSameKey,
                task_record: None,
                chosen_task_id: false,
                bootstrap: None,
                key_bound_at: None,
                refuse: [
                    (RevocationKind::Agent, name.to_string()),
                    (RevocationKind::Agent, parent_agent.name().to_string()),
                    (RevocationKind::Task, task.as_str().to_string()),
                    (RevocationKind::Jti, grant_jti),
                    (RevocationKind::Jkt, jkt.clone()),
                    (RevocationKind::Jkt, parent_jkt),
                ]
                .into_iter()
                .chain(ancestor_refusals(&ancestors))
                .collect(),
            },
            now,
        )?;
        Ok(self.issued(PeerId::Task(identity), leaf, jkt))
    }

    /// Issues a service certificate (operator only), without a grant. A service may rotate its
    /// key; every key it ever used stays bound to it.
    pub fn issue_service(
        &self,
        req: &ServiceRequest,
        now: SystemTime,
    ) -> Result<IssuedCertificate> {
        self.issue_service_audited(req, now, None)
    }

    /// Issues a service certificate for a bootstrap token bound to the service (`rec`): the
    /// service's rule must list `bootstrap` among its requesters, and the token is consumed in
    /// the issuance's own transaction (nothing is issued if it was used meanwhile).
    pub(crate) fn issue_service_bootstrap(
        &self,
        req: &ServiceRequest,
        rec: &BootstrapRecord,
        now: SystemTime,
    ) -> Result<IssuedCertificate> {
        self.issue_service_audited(req, now, Some(rec))
    }

    /// A service certificate, by the operator or for the bootstrap token `bootstrap`, with its
    /// audit record (the issuance or the refusal) either way.
    fn issue_service_audited(
        &self,
        req: &ServiceRequest,
        now: SystemTime,
        bootstrap: Option<&BootstrapRecord>,
    ) -> Result<IssuedCertificate> {
        let now_s = util::unix(now)?;
        let subject = format!(
            "spiffe://{}/svc/{}",
            self.config.trust_domain.as_str(),
            req.service
        );
        let res = self.issue_service_inner(req, now_s, bootstrap);
        let summary = res
            .as_ref()
            .map(|c| (c.leaf.serial.clone(), None))
            .map_err(|e| e.to_string());
        let actor = match bootstrap {
            None => "operator",
            Some(_) => BOOTSTRAP_ACTOR,
        };
        self.audit_issue(
            IssuanceKind::Service,
            now_s,
            actor,
            &subject,
            None,
            &summary,
        );
        res
    }

    fn issue_service_inner(
        &self,
        req: &ServiceRequest,
        now: u64,
        bootstrap: Option<&BootstrapRecord>,
    ) -> Result<IssuedCertificate> {
        let svc = ServiceId::new(&self.config.trust_domain, &req.service)?;
        let name = svc.name();
        let rule = self.policy.service(name)?;
        let (kind, who) = match bootstrap {
            None => (RequesterKind::Operator, "operator"),
            Some(rec) => {
                if rec.agent != format!("svc:{name}") {
                    return Err(CaError::BootstrapToken("bound to another service"));
                }
                if rec.expires <= now {
                    return Err(CaError::BootstrapToken("expired"));
                }
                (RequesterKind::Bootstrap, BOOTSTRAP_ACTOR)
            }
        };
        self.policy
            .check_service_requester(name, &kind, who, svc.as_str())?;
        let validity = self.validity(
            now,
            req.ttl,
            rule.max_ttl,
            u64::MAX,
            &format!("services.{name}.max_ttl"),
        )?;
        let uri = svc.as_str().to_string();
        let key = req.key.resolve(&uri)?;
        let jkt = key.thumbprint();
        let bound = self.store()?.identity(&uri)?;
        let (validity, key_bound_at) =
            self.within_key_age(name, rule, &jkt, bound.as_ref(), validity, now)?;
        let leaf = self.sign_and_commit(
            &rule.dns,
            &key,
            validity,
            Issuance {
                kind: IssuanceKind::Service,
                uri: &uri,
                agent: None,
                task: None,
                requester: who.into(),
                jkt: &jkt,
                spki: &key.spki_der,
                grant_jti: None,
                cap: None,
                binding: Binding::Rebind,
                task_record: None,
                chosen_task_id: false,
                bootstrap: bootstrap.cloned(),
                refuse: vec![(RevocationKind::Jkt, jkt.clone())],
                key_bound_at: Some(key_bound_at),
            },
            now,
        )?;
        Ok(self.issued(PeerId::Service(svc), leaf, jkt))
    }

    /// Re-issues a certificate for the same identity and the same key; another key is refused.
    /// A task identity's certificate never outlives its task's chain.
    pub fn renew(&self, req: &RenewRequest, now: SystemTime) -> Result<IssuedCertificate> {
        let now_s = util::unix(now)?;
        let actor = match req.requester {
            RenewRequester::Operator => "operator".to_string(),
            RenewRequester::Holder => req.identity.as_str().to_string(),
        };
        let task = match &req.identity {
            PeerId::Task(t) => Some(t.task_id().as_str().to_string()),
            PeerId::Service(_) => None,
        };
        let res = self.renew_inner(req, &actor, now_s);
        let summary = res
            .as_ref()
            .map(|c| (c.leaf.serial.clone(), None))
            .map_err(|e| e.to_string());
        self.audit_issue(
            IssuanceKind::Renewal,
            now_s,
            &actor,
            req.identity.as_str(),
            task.as_deref(),
            &summary,
        );
        res
    }

    fn renew_inner(&self, req: &RenewRequest, actor: &str, now: u64) -> Result<IssuedCertificate> {
        self.check_td(req.identity.as_spiffe_id())?;
        let uri = req.identity.as_str().to_string();
        let bound = self
            .store()?
            .identity(&uri)?
            .ok_or_else(|| CaError::UnknownIdentity(uri.clone()))?;
        let key = req.key.resolve(&uri)?;
        let jkt = key.thumbprint();
        if jkt != bound.jkt {
            return Err(CaError::KeyMismatch {
                identity: uri,
                bound: bound.jkt,
                requested: jkt,
            });
        }
        let mut limits = self.renewal_limits(&req.identity, bound.cap, &bound.jkt)?;
        limits.refuse.push((RevocationKind::Jkt, jkt.clone()));
        let mut validity = self.validity(now, req.ttl, limits.max_ttl, limits.cap, &limits.rule)?;
        let mut key_bound_at = None;
        if let PeerId::Service(s) = &req.identity {
            let rule = self.policy.service(s.name())?;
            let (v, at) = self.within_key_age(s.name(), rule, &jkt, Some(&bound), validity, now)?;
            (validity, key_bound_at) = (v, Some(at));
        }
        let leaf = self.sign_and_commit(
            &limits.dns,
            &key,
            validity,
            Issuance {
                kind: IssuanceKind::Renewal,
                uri: &uri,
                // Services: the cap follows the newest certificate; tasks keep theirs.
                cap: limits.task.is_some().then_some(bound.cap),
                agent: limits.agent,
                task: limits.task,
                requester: actor.to_string(),
                jkt: &jkt,
                spki: &bound.spki,
                grant_jti: None,
                binding: Binding::SameKey,
                task_record: None,
                chosen_task_id: false,
                bootstrap: None,
                refuse: limits.refuse,
                key_bound_at,
            },
            now,
        )?;
        Ok(self.issued(req.identity.clone(), leaf, jkt))
    }

    /// When the key `jkt` got its first certificate: `bound`'s `key_bound_at` when `jkt` is the
    /// key bound to the name now; else the key's first certificate as its binding keeps it (a
    /// key is bound to one identity for ever, so that is for this name: an old key bound again
    /// does not start again, also once its issuances are pruned); else now (a new key).
    fn key_bound_at(
        &self,
        jkt: &str,
        bound: Option<&crate::store::IdentityRecord>,
        now: u64,
    ) -> Result<u64> {
        if let Some(at) = bound.filter(|b| b.jkt == jkt).and_then(|b| b.key_bound_at) {
            return Ok(at);
        }
        Ok(self
            .store()?
            .key_first_issued_at(jkt)?
            .map_or(now, |first| first.min(now)))
    }

    /// A service certificate's validity within its key's `max_key_age` (design: services
    /// renew with the same key, so without a bound one key would hold the name for ever), and
    /// when the key got its first certificate ([`Self::key_bound_at`], what the age counts
    /// from). Past it the key gets no certificate; before it the certificate ends by then at
    /// the latest.
    fn within_key_age(
        &self,
        name: &str,
        rule: &crate::policy::ServiceRule,
        jkt: &str,
        bound: Option<&crate::store::IdentityRecord>,
        (not_before, not_after): (u64, u64),
        now: u64,
    ) -> Result<((u64, u64), u64)> {
        let bound_at = self.key_bound_at(jkt, bound, now)?;
        let key_end = bound_at.saturating_add(rule.max_key_age);
        if key_end <= now {
            let human = |s: u64| humantime::format_duration(Duration::from_secs(s)).to_string();
            return Err(CaError::policy(
                format!("services.{name}.max_key_age"),
                format!(
                    "this key has held svc/{name} for {}, past its max_key_age of {}: it gets no more certificates. Enroll the service again with a new key (agentid token create --service {name}, then agentid enroll with that token file)",
                    human(now.saturating_sub(bound_at)),
                    human(rule.max_key_age),
                ),
            ));
        }
        if not_after > key_end {
            tracing::warn!(
                service = name,
                key_end,
                "agentid ca: the certificate of svc/{name} is shortened to its key's max_key_age; enroll the service again with a new key before then"
            );
        }
        Ok(((not_before, not_after.min(key_end)), bound_at))
    }

    /// What bounds the renewal of `identity` (whose binding's cap is `bound_cap` and key
    /// `bound_jkt`): a task by its agent's rule and its task's expiry, a service by its rule
    /// (and its DNS names). A task identity is refused while its agent, task or task grant is
    /// revoked, and a child also while the agent or key of its parent, or of
    /// any ancestor up to the root holder, is revoked, as a new child of that parent would be.
    fn renewal_limits(
        &self,
        identity: &PeerId,
        bound_cap: u64,
        bound_jkt: &str,
    ) -> Result<RenewalLimits> {
        match identity {
            PeerId::Task(t) => {
                let name = t.agent().name().to_string();
                let rule = self.policy.agent(&name)?;
                let task = t.task_id();
                let mut refuse = vec![
                    (RevocationKind::Agent, name.clone()),
                    (RevocationKind::Task, task.as_str().to_string()),
                ];
                let task_exp = {
                    let store = self.store()?;
                    let record = store
                        .task(task.as_str())?
                        .ok_or_else(|| CaError::UnknownIdentity(identity.as_str().to_string()))?;
                    let ancestors =
                        ancestors_of(&**store, identity.as_str(), bound_jkt, &record, || {
                            CaError::ParentNotActive(identity.as_str().to_string())
                        })?;
                    refuse.push((RevocationKind::Jti, record.grant_jti.clone()));
                    refuse.extend(ancestor_refusals(&ancestors));
                    record.exp
                };
                Ok(RenewalLimits {
                    max_ttl: rule.max_ttl,
                    cap: bound_cap.min(task_exp),
                    rule: format!("agents.{name}.max_ttl"),
                    refuse,
                    agent: Some(name),
                    task: Some(task.as_str().to_string()),
                    dns: Vec::new(),
                })
            }
            PeerId::Service(s) => {
                let rule = self.policy.service(s.name())?;
                Ok(RenewalLimits {
                    max_ttl: rule.max_ttl,
                    cap: u64::MAX,
                    rule: format!("services.{}.max_ttl", s.name()),
                    refuse: Vec::new(),
                    agent: None,
                    task: None,
                    dns: rule.dns.clone(),
                })
            }
        }
    }

    /// Looks up the issuance record of a serial (parsed from any formatting: colons, upper case,
    /// leading `00`).
    pub fn find_serial(&self, serial: &Serial) -> Result<Option<IssuanceRecord>> {
        self.store()?.issuance(serial.as_str())
    }
}

/// Parses an operator-asserted principal written `FORMAT:VALUE` into an RFC 9493 subject
/// identifier: `email:alice@example.com` -> `{"format":"email","email":"alice@example.com"}`;
/// also `uri:...` and `opaque:...`.
pub fn parse_principal(s: &str) -> Result<serde_json::Value> {
    let (format, value) = s.split_once(':').ok_or_else(|| {
        CaError::InvalidRequest(format!("principal {s:?}: expected FORMAT:VALUE"))
    })?;
    if value.is_empty() {
        return Err(CaError::InvalidRequest(format!(
            "principal {s:?}: empty value"
        )));
    }
    let member = match format {
        "email" => {
            if !value.contains('@') {
                return Err(CaError::InvalidRequest(format!(
                    "principal {s:?}: not an email address"
                )));
            }
            "email"
        }
        "uri" => "uri",
        "opaque" => "id",
        other => {
            return Err(CaError::InvalidRequest(format!(
                "principal format {other:?} (email, uri or opaque)"
            )))
        }
    };
    Ok(serde_json::json!({ "format": format, member: value }))
}

/// The grant signer's algorithm and key, signing nothing: a placeholder of a JWS signature's
/// length (64 bytes for both `ES256` and `EdDSA`), to learn a grant's size without signing it
/// ([`CertificateAuthority::check_grant_fits`]).
struct SizeOnly<'a>(&'a dyn agentid_protocol::JwsSigner);

impl agentid_protocol::JwsSigner for SizeOnly<'_> {
    fn algorithm(&self) -> agentid_protocol::Algorithm {
        self.0.algorithm()
    }

    fn public_key(&self) -> agentid_protocol::PublicKey {
        self.0.public_key()
    }

    fn sign(&self, _signing_input: &[u8]) -> agentid_protocol::Result<Vec<u8>> {
        Ok(vec![0; 64])
    }
}

/// What bounds a renewal ([`CertificateAuthority::renewal_limits`]).
struct RenewalLimits {
    /// The rule's longest certificate lifetime, seconds.
    max_ttl: u64,
    /// No certificate outlives this (Unix seconds).
    cap: u64,
    /// The rule's name, for a refusal.
    rule: String,
    /// Revocations that refuse the renewal.
    refuse: Vec<(RevocationKind, String)>,
    /// The agent and task of a task's renewal.
    agent: Option<String>,
    task: Option<String>,
    /// A service's DNS names.
    dns: Vec<String>,
}

/// What bounds a new child (see [`CertificateAuthority::child_cap`]).
struct ChildCap {
    /// The parent's bound key.
    parent_jkt: String,
    /// The task grant's `jti`: its revocation refuses the child.
    grant_jti: String,
    /// The latest the child's certificate may end.
    cap: u64,
    /// The parent's ancestors, up to the root holder.
    ancestors: Vec<crate::store::IdentityRecord>,
}

/// The ancestors of the task identity `identity` (bound to the key `jkt`) in task `task`: its
/// parent first, up to and including the task's root holder; none for the root holder itself.
/// Each is found by its key's first issuance, a `Child` issuance whose requester is the parent.
/// A record that does not fit (no such issuance, another kind, a walk longer than any
/// `max_depth`) is `not_active`.
///
/// A child's authority comes from its parent's links, so whatever is revoked of an ancestor
/// (its key, its agent) ends the child's requests at the CA as it ends the child's chain at
/// every verifier: issuance of a child (CA-API.md 3.8), renewal (3.9) and the re-check of
/// every caller walk the same line.
pub(crate) fn ancestors_of(
    store: &dyn crate::store::Store,
    identity: &str,
    jkt: &str,
    task: &TaskRecord,
    not_active: impl Fn() -> CaError,
) -> Result<Vec<crate::store::IdentityRecord>> {
    let mut out: Vec<crate::store::IdentityRecord> = Vec::new();
    let (mut identity, mut jkt) = (identity, jkt);
    while identity != task.holder {
        if out.len() > usize::from(u8::MAX) {
            return Err(not_active());
        }
        let first = store.first_issuance_of_key(jkt)?.ok_or_else(&not_active)?;
        if first.kind != IssuanceKind::Child || first.identity != identity {
            return Err(not_active());
        }
        out.push(store.identity(&first.requester)?.ok_or_else(&not_active)?);
        let up = out.last().ok_or_else(&not_active)?;
        (identity, jkt) = (up.identity.as_str(), up.jkt.as_str());
    }
    Ok(out)
}

/// The revocations that refuse anything of a descendant of `ancestors`: each one's key and
/// agent.
fn ancestor_refusals(ancestors: &[crate::store::IdentityRecord]) -> Vec<(RevocationKind, String)> {
    let mut refuse = Vec::with_capacity(2 * ancestors.len());
    for a in ancestors {
        refuse.extend(a.agent.clone().map(|n| (RevocationKind::Agent, n)));
        refuse.push((RevocationKind::Jkt, a.jkt.clone()));
    }
    refuse
}
