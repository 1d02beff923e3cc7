//! Bootstrap tokens that bind what the task will hold, and enrollment with them
//! (`spec/CA-API.md` 3.5): the request carries only the token and a CSR; agent, task, scope,
//! audience, depth and lifetimes all come from what the token binds.

use std::time::{Duration, SystemTime};

use agentid_protocol::{IdSet, Scope, TaskId};
use serde::{Deserialize, Serialize};

use crate::ca::token_hash;
use crate::error::{CaError, Result};
use crate::issue::{KeySource, OpenTaskRequest, TaskCredentials, TaskRequester};
use crate::store::{BootstrapRecord, IssuanceKind};
use crate::{BootstrapToken, CertificateAuthority};

/// A stored bootstrap token, used or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapState {
    /// Agent, task and expiry.
    pub record: BootstrapRecord,
    /// When it was redeemed, Unix seconds.
    pub used_at: Option<u64>,
    /// What it binds (JSON of [`TokenBinding`]); `None` for tokens made before schema version 1.
    pub binding: Option<String>,
}

/// What a bootstrap token binds beyond agent and task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBinding {
    /// The grant's scope (space-separated scope tokens).
    pub scope: String,
    /// The grant's audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Vec<String>>,
    /// The grant's `max_depth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u8>,
    /// Certificate lifetime, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Grant lifetime, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_ttl_secs: Option<u64>,
    /// The grant's `may_delegate_to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub may_delegate_to: Option<Vec<String>>,
    /// The grant's limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<std::collections::BTreeMap<String, u64>>,
    /// The grant's principal (`on_behalf_of`), asserted by the token's creator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<serde_json::Value>,
    /// Who created the token: `operator` or `svc:NAME`. `None` reads as `operator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<String>,
    /// A service token: the service it enrolls (a service certificate, no task, no grant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The thumbprint (`jkt`) of the key a service created the token with. Once that key is
    /// revoked (by `jkt` or by any serial of it), the token can no longer be redeemed: revoking
    /// a compromised service also stops the tokens it handed out. `None` for the operator's
    /// tokens and for tokens made before this member existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator_jkt: Option<String>,
}

/// What a redeemed bootstrap token gave.
#[derive(Debug)]
pub enum Redeemed {
    /// A task's first certificate and grant.
    Task(TaskCredentials),
    /// A service certificate.
    Service(crate::IssuedCertificate),
}

impl TokenBinding {
    /// The opening of `agent`'s task this binding asks for, with `key` and `requester` (the
    /// task id is the token's, set by the caller).
    fn task_request(
        &self,
        agent: &str,
        key: KeySource,
        requester: TaskRequester,
    ) -> Result<OpenTaskRequest> {
        let mut req = OpenTaskRequest::new(agent, key, requester, Scope::parse(&self.scope)?);
        req.ttl = self.ttl_secs.map(Duration::from_secs);
        req.task_ttl = self.task_ttl_secs.map(Duration::from_secs);
        req.max_depth = self.max_depth;
        req.audience = self.audience.as_deref().map(parse_audience).transpose()?;
        req.may_delegate_to = self
            .may_delegate_to
            .as_deref()
            .map(parse_audience)
            .transpose()?;
        req.limits = self
            .limits
            .clone()
            .map(agentid_protocol::Limits::new)
            .transpose()?;
        req.principal = self.principal.clone();
        Ok(req)
    }

    /// The service that created the token, if a service did.
    pub fn creator_service(&self) -> Option<&str> {
        self.creator.as_deref().and_then(|c| c.strip_prefix("svc:"))
    }

    /// Checks the binding's creator against policy: a service needs `create_token` for the
    /// agent, and `assert_principal` when the binding names a principal.
    pub fn check_creator(&self, policy: &crate::Policy, agent: &str) -> Result<()> {
        use crate::policy::Permission;
        match (self.creator.as_deref(), self.creator_service()) {
            (None | Some("operator"), _) => Ok(()),
            (_, Some(svc)) => {
                policy.check_permission(agent, svc, Permission::CreateToken)?;
                if self.principal.is_some() {
                    policy.check_permission(agent, svc, Permission::AssertPrincipal)?;
                }
                Ok(())
            }
            (Some(other), None) => Err(CaError::InvalidRequest(format!(
                "unknown token creator {other:?}"
            ))),
        }
    }
}

/// Why an enrollment was refused before or instead of an issuance.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// Unknown or malformed token, or one that binds nothing.
    #[error("bootstrap token not recognised")]
    TokenInvalid,
    /// Already redeemed: nothing was issued.
    #[error("bootstrap token already redeemed")]
    TokenUsed,
    /// Past its expiry.
    #[error("bootstrap token expired")]
    TokenExpired,
    /// The CA refused the issuance.
    #[error("{0}")]
    Ca(#[from] CaError),
}

impl CertificateAuthority {
    /// Creates a single-use bootstrap token for `agent`'s task `task` (generated when `None`),
    /// binding what the task will hold. The binding is checked against policy now (scope,
    /// depth, audience, delegation, limits, lifetimes: what the task opening checks), and the
    /// agent, the task, the principal and the creator's key against the revocations, and again
    /// at enrollment.
    pub fn create_bound_token(
        &self,
        agent: &str,
        task: Option<TaskId>,
        binding: &TokenBinding,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<BootstrapToken> {
        binding.check_creator(self.policy(), agent)?;
        // Everything the enrollment will ask for, checked now as it will be then (scope, depth,
        // audience, delegation, limits, lifetimes): a token no enrollment could redeem is
        // refused here, naming the rule, rather than handed out.
        let req =
            binding.task_request(agent, KeySource::Spki(Vec::new()), TaskRequester::Operator)?;
        let now_s = crate::util::unix(now)?;
        self.check_task_terms(&req, now_s)?;
        // The grant's size, for the task id named or one as long as a generated id.
        let sized = match &task {
            Some(t) => t.clone(),
            None => TaskId::generate()?,
        };
        self.check_grant_fits(&req, &sized, now_s)?;
        // A revoked agent, task, principal or creator key: its enrollment would be refused
        // `revoked`, as every issuance is, whatever the entry's `exp` (that bounds the
        // published list only).
        let principal = binding
            .principal
            .as_ref()
            .map(crate::store::canonical_principal)
            .transpose()?;
        let mut targets = vec![(crate::RevocationKind::Agent, agent)];
        if let Some(task) = &task {
            targets.push((crate::RevocationKind::Task, task.as_str()));
        }
        if let Some(p) = principal.as_deref() {
            targets.push((crate::RevocationKind::Principal, p));
        }
        if let Some(jkt) = binding.creator_jkt.as_deref() {
            targets.push((crate::RevocationKind::Jkt, jkt));
        }
        if let Some((kind, value)) = self.store()?.revoked_among(&targets, 0)? {
            return Err(CaError::Revoked {
                kind: kind.as_str(),
                value,
            });
        }
        let json =
            serde_json::to_string(binding).map_err(|e| CaError::InvalidRequest(e.to_string()))?;
        let creator = binding.creator.as_deref().unwrap_or("operator");
        self.create_bootstrap_token_as(agent, task, ttl, now, creator, Some(&json))
    }

    /// Redeems a bootstrap token of an agent ([`CertificateAuthority::enroll`]) or of a
    /// service ([`CertificateAuthority::create_service_token`]): a service token gives a service
    /// certificate for the key of `csr`, the token consumed in the issuance's transaction.
    pub fn redeem(
        &self,
        token: &str,
        csr: Vec<u8>,
        now: SystemTime,
    ) -> std::result::Result<Redeemed, EnrollError> {
        self.redeem_recorded(token, csr, now).map_err(|(e, _)| e)
    }

    /// [`CertificateAuthority::redeem`], and with a refusal whether it is in the audit chain:
    /// every refusal of a token the store knows is (as the issuance it asked for, `denied`);
    /// an unknown token's is not (anyone can send one).
    pub(crate) fn redeem_recorded(
        &self,
        token: &str,
        csr: Vec<u8>,
        now: SystemTime,
    ) -> std::result::Result<Redeemed, (EnrollError, bool)> {
        let hash = token_hash(token);
        let state = self
            .store()
            .and_then(|s| s.bootstrap_state(&hash))
            .map_err(|e| (EnrollError::Ca(e), false))?
            .ok_or((EnrollError::TokenInvalid, false))?;
        self.redeem_known(token, &hash, state, csr, now)
            .map_err(|e| (e, true))
    }

    /// [`CertificateAuthority::redeem`] of a token the store knows (`state`, `hash` its
    /// SHA-256).
    fn redeem_known(
        &self,
        token: &str,
        hash: &str,
        state: BootstrapState,
        csr: Vec<u8>,
        now: SystemTime,
    ) -> std::result::Result<Redeemed, EnrollError> {
        let service = state
            .binding
            .as_deref()
            .and_then(|b| serde_json::from_str::<TokenBinding>(b).ok())
            .and_then(|b| b.service.map(|s| (s, b.ttl_secs)));
        let Some((service, ttl)) = service else {
            return self
                .enroll_with_state(token, hash, state, csr, now)
                .map(Redeemed::Task);
        };
        let now_s = crate::util::unix(now)?;
        let early = if state.used_at.is_some() {
            Some(EnrollError::TokenUsed)
        } else if state.record.expires <= now_s {
            Some(EnrollError::TokenExpired)
        } else {
            None
        };
        if let Some(e) = early {
            let subject = format!(
                "spiffe://{}/svc/{service}",
                self.config.trust_domain.as_str()
            );
            self.audit_token_refusal(IssuanceKind::Service, &subject, None, now_s, &e);
            return Err(e);
        }
        let req = crate::ServiceRequest {
            service,
            key: KeySource::Csr(csr),
            ttl: ttl.map(Duration::from_secs),
        };
        match self.issue_service_bootstrap(&req, &state.record, now) {
            Ok(c) => Ok(Redeemed::Service(c)),
            Err(e) if self.consumed_meanwhile(hash) => {
                tracing::debug!(error = %e, "bootstrap token redeemed concurrently");
                Err(EnrollError::TokenUsed)
            }
            Err(e) => Err(EnrollError::Ca(e)),
        }
    }

    /// Redeems a bootstrap token for a task's first certificate and grant, the key taken from
    /// `csr` and everything else from what the token binds. A refused enrollment issues
    /// nothing; a token refused for any reason but [`EnrollError::TokenUsed`] stays redeemable.
    /// A service's token is refused here ([`EnrollError::TokenInvalid`], not consumed): use
    /// [`CertificateAuthority::redeem`].
    pub fn enroll(
        &self,
        token: &str,
        csr: Vec<u8>,
        now: SystemTime,
    ) -> std::result::Result<TaskCredentials, EnrollError> {
        let hash = token_hash(token);
        let state = self
            .store()?
            .bootstrap_state(&hash)?
            .ok_or(EnrollError::TokenInvalid)?;
        self.enroll_with_state(token, &hash, state, csr, now)
    }

    /// [`CertificateAuthority::enroll`] with the token's stored state (`hash` its SHA-256)
    /// already read.
    fn enroll_with_state(
        &self,
        token: &str,
        hash: &str,
        state: BootstrapState,
        csr: Vec<u8>,
        now: SystemTime,
    ) -> std::result::Result<TaskCredentials, EnrollError> {
        let now_s = crate::util::unix(now)?;
        let req = match self.task_request(token, &state, csr, now_s) {
            Ok(req) => req,
            Err(e) => {
                // A token the store knows, refused before any issuance: recorded here, since
                // no issuance records it (an unknown token is not: anyone can send one).
                let subject = format!(
                    "spiffe://{}/agent/{}/task/{}",
                    self.config.trust_domain.as_str(),
                    state.record.agent,
                    state.record.task
                );
                let task = Some(state.record.task.as_str());
                self.audit_token_refusal(IssuanceKind::Task, &subject, task, now_s, &e);
                return Err(e);
            }
        };
        match self.open_task(&req, now) {
            Ok(c) => Ok(c),
            Err(e) if self.consumed_meanwhile(hash) => {
                tracing::debug!(error = %e, "bootstrap token redeemed concurrently");
                Err(EnrollError::TokenUsed)
            }
            Err(e) => Err(EnrollError::Ca(e)),
        }
    }

    /// Whether the token whose SHA-256 is `hash` is used now, after this redemption's issuance
    /// failed (and rolled back, consuming nothing): a concurrent redemption spent it, whichever
    /// step this one lost on (the token itself, or the identity or key binding the other had
    /// just committed), so the answer is `token_used` (CA-API.md 1.3).
    fn consumed_meanwhile(&self, hash: &str) -> bool {
        self.store()
            .ok()
            .and_then(|s| s.bootstrap_state(hash).ok().flatten())
            .is_some_and(|s| s.used_at.is_some())
    }

    /// The audit record of a stored token refused before its issuance ran (used, expired, a
    /// binding its creator may no longer make, a revoked creator): the refusal record its
    /// issuance would have made (`issue.task` or `issue.service`, `denied`), with that
    /// issuance's actor (`bootstrap token`) and the identity the token binds as
    /// subject.
    fn audit_token_refusal(
        &self,
        kind: IssuanceKind,
        subject: &str,
        task: Option<&str>,
        now: u64,
        e: &EnrollError,
    ) {
        self.audit_issue(
            kind,
            now,
            crate::issue::BOOTSTRAP_ACTOR,
            subject,
            task,
            &Err(e.to_string()),
        );
    }

    /// The task a stored token (`state`) opens, as the request for [`CertificateAuthority::open_task`]
    /// with the key from `csr`: refused when the token was used or expired, binds a service or
    /// nothing readable, or its creator may no longer make it (its rule, its revoked key).
    fn task_request(
        &self,
        token: &str,
        state: &BootstrapState,
        csr: Vec<u8>,
        now_s: u64,
    ) -> std::result::Result<OpenTaskRequest, EnrollError> {
        if state.used_at.is_some() {
            return Err(EnrollError::TokenUsed);
        }
        if state.record.expires <= now_s {
            return Err(EnrollError::TokenExpired);
        }
        let binding: TokenBinding = state
            .binding
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
            .ok_or(EnrollError::TokenInvalid)?;
        if binding.service.is_some() {
            return Err(EnrollError::TokenInvalid);
        }
        binding.check_creator(self.policy(), &state.record.agent)?;
        if let Some(jkt) = binding.creator_jkt.as_deref() {
            let hit = self
                .store()?
                .revoked_among(&[(crate::RevocationKind::Jkt, jkt)], now_s)?;
            if let Some((kind, value)) = hit {
                return Err(EnrollError::Ca(CaError::Revoked {
                    kind: kind.as_str(),
                    value,
                }));
            }
        }
        let mut req = binding.task_request(
            &state.record.agent,
            KeySource::Csr(csr),
            TaskRequester::Bootstrap(token.to_owned()),
        )?;
        req.task = Some(TaskId::parse(&state.record.task).map_err(CaError::from)?);
        // Checked again in the issuance's transaction: a revocation of the creator's key that
        // commits first refuses the redemption.
        req.requester_jkt = binding.creator_jkt.clone();
        Ok(req)
    }
}

fn parse_audience(aud: &[String]) -> Result<IdSet> {
    let ids = aud
        .iter()
        .map(|s| agentid_protocol::SpiffeId::parse(s))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(IdSet::new(ids)?)
}
