//! Issuance policy from `policy.toml`: who may obtain which identities, scopes and lifetimes.
//!
//! Nothing is allowed unless a rule allows it. Every refusal names the rule it applied, e.g.
//! `policy: agent "planner" may not hold scope "payments:write" (rule agents.planner.scopes)`.

use std::collections::BTreeMap;
use std::path::Path;

use agentid_protocol::{caps, IdSet, Limits, Scope, ScopeToken, SpiffeId};
use serde::Deserialize;

use crate::error::{CaError, Result};

/// Longest grant lifetime allowed by the protocol (spec/PROTOCOL.md section 6.1: grant
/// `exp - iat` <= 86400 s, 24 h): the protocol's [`caps::MAX_TOKEN_LIFETIME`].
pub const MAX_GRANT_LIFETIME_SECS: u64 = caps::MAX_TOKEN_LIFETIME;
/// The CA service's own name (`spiffe://<td>/svc/agentid-ca`): it is issued to nobody else and
/// holds no permissions.
pub const RESERVED_SERVICE: &str = "agentid-ca";
/// Deepest chain allowed by the protocol.
pub use agentid_protocol::caps::MAX_DEPTH;

/// Who asks the CA for a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequesterKind {
    /// The operator running the CA (offline issuance, the CLI).
    Operator,
    /// A holder of a single-use bootstrap token bound to the agent and task.
    Bootstrap,
    /// A task identity of the named agent, requesting for a child in its own task.
    Parent(String),
}

/// `Ok` if `requester` is one of the `requesters` a rule lists, else `Unauthorized` naming
/// `who`, the `subject` asked for and the `rule`.
fn listed(
    requesters: &[RequesterKind],
    requester: &RequesterKind,
    who: &str,
    subject: &str,
    rule: impl FnOnce() -> String,
) -> Result<()> {
    if requesters.contains(requester) {
        Ok(())
    } else {
        Err(CaError::Unauthorized {
            requester: who.to_string(),
            subject: subject.to_string(),
            rule: rule(),
        })
    }
}

impl RequesterKind {
    fn parse(s: &str, rule: &str) -> Result<Self> {
        match s {
            "operator" => Ok(RequesterKind::Operator),
            "bootstrap" => Ok(RequesterKind::Bootstrap),
            _ => match s.strip_prefix("parent:") {
                Some(name) if !name.is_empty() => Ok(RequesterKind::Parent(name.to_string())),
                _ => Err(CaError::policy(
                    rule,
                    format!("unknown requester {s:?} (operator, bootstrap or parent:<agent>)"),
                )),
            },
        }
    }
}

/// What a network requester (`svc:NAME`) may do for an agent, granted per agent rule in
/// `[agents.NAME.permissions]` (`"svc:platform" = ["open_task", "list"]`). Nothing is allowed
/// unless listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Open a task for the agent from the agent's CSR (`POST /v1/tasks`).
    OpenTask,
    /// Create a bootstrap token for the agent (`POST /v1/tokens`).
    CreateToken,
    /// Name a principal in those requests.
    AssertPrincipal,
    /// Revoke the agent, its tasks, keys and certificates (`POST /v1/revoke`).
    Revoke,
    /// List the agent's live tasks (`GET /v1/tasks`).
    List,
}

impl Permission {
    /// The name used in `policy.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::OpenTask => "open_task",
            Permission::CreateToken => "create_token",
            Permission::AssertPrincipal => "assert_principal",
            Permission::Revoke => "revoke",
            Permission::List => "list",
        }
    }
    fn parse(s: &str, rule: &str) -> Result<Self> {
        Ok(match s {
            "open_task" => Permission::OpenTask,
            "create_token" => Permission::CreateToken,
            "assert_principal" => Permission::AssertPrincipal,
            "revoke" => Permission::Revoke,
            "list" => Permission::List,
            other => {
                return Err(CaError::policy(
                    rule,
                    format!(
                        "unknown permission {other:?} (open_task, create_token, assert_principal, revoke, list)"
                    ),
                ))
            }
        })
    }
}

/// Rules for one agent name.
#[derive(Clone, Debug)]
pub struct AgentRule {
    /// Scope patterns the agent may hold in a grant.
    pub scopes: Vec<ScopeToken>,
    /// Longest certificate TTL, seconds.
    pub max_ttl: u64,
    /// Longest grant (task) lifetime, seconds.
    pub max_task_ttl: u64,
    /// Longest time a bootstrap token for it stays redeemable, seconds (`max_token_ttl`, at
    /// most and by default [`MAX_TOKEN_TTL`]): checked when the token is made, by the operator
    /// or by a service.
    pub max_token_ttl: u64,
    /// Largest `max_depth` a grant may carry.
    pub max_depth: u8,
    /// Who may request its certificates.
    pub requesters: Vec<RequesterKind>,
    /// Allowed `aud` entries (absent: the CA's own trust domain only); applied when the request
    /// names none.
    pub audiences: Option<IdSet>,
    /// Allowed `may_delegate_to` entries; applied when the request names none.
    pub may_delegate_to: Option<IdSet>,
    /// Limit ceilings; applied when the request names none.
    pub limits: Option<Limits>,
    /// Network requesters' permissions: service name (without `svc:`) to what it may do.
    pub permissions: BTreeMap<String, Vec<Permission>>,
}

/// Rules for one service name.
#[derive(Clone, Debug)]
pub struct ServiceRule {
    /// Longest certificate TTL, seconds.
    pub max_ttl: u64,
    /// Who may request its certificates (the operator only, for now).
    pub requesters: Vec<RequesterKind>,
    /// DNS names its certificates carry besides the URI SAN, exactly as listed (no wildcards;
    /// a name belongs to one service).
    pub dns: Vec<String>,
    /// How long one key may hold the service's name, seconds (`max_key_age`, default
    /// [`DEFAULT_MAX_KEY_AGE`]): counted from the first certificate for that key, no
    /// certificate for the key ends after it, and past it the key gets none (renewal keeps the
    /// key, so a service must enroll again with a new one).
    pub max_key_age: u64,
    /// Longest time one of its bootstrap tokens stays redeemable, seconds (`max_token_ttl`, at
    /// most and by default [`MAX_TOKEN_TTL`]).
    pub max_token_ttl: u64,
}

/// The longest a bootstrap token stays redeemable, whoever makes it: 7 days (the most a rule's
/// `max_token_ttl` may say, and what applies when none does; CA-API.md 3.6).
pub const MAX_TOKEN_TTL: u64 = 7 * 24 * 3600;

/// A service key's longest life when its rule sets no `max_key_age`: 30 days.
pub const DEFAULT_MAX_KEY_AGE: u64 = 30 * 86_400;

/// The parsed, validated policy.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Certificate TTL when a request names none, seconds (default 5 min).
    pub default_ttl: u64,
    /// Grant lifetime when a request names none, seconds (default 1 h).
    pub default_task_ttl: u64,
    agents: BTreeMap<String, AgentRule>,
    services: BTreeMap<String, ServiceRule>,
    /// The rule paths (`agents.NAME.max_ttl`, ...) a rule leaves to `[defaults]`: a refusal
    /// names the rule that decided.
    inherited: std::collections::BTreeSet<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    ttl: Option<String>,
    max_ttl: Option<String>,
    task_ttl: Option<String>,
    max_task_ttl: Option<String>,
    max_token_ttl: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    #[serde(default)]
    scopes: Vec<String>,
    max_ttl: Option<String>,
    max_task_ttl: Option<String>,
    max_token_ttl: Option<String>,
    max_depth: Option<u8>,
    #[serde(default)]
    requesters: Vec<String>,
    audiences: Option<Vec<SpiffeId>>,
    may_delegate_to: Option<Vec<SpiffeId>>,
    limits: Option<BTreeMap<String, u64>>,
    #[serde(default)]
    permissions: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    max_ttl: Option<String>,
    max_key_age: Option<String>,
    max_token_ttl: Option<String>,
    #[serde(default)]
    requesters: Vec<String>,
    #[serde(default)]
    dns: Vec<String>,
}

/// A DNS name as a service certificate may carry it: lowercase LDH labels of 1..63 bytes joined
/// by single dots, at most 253 bytes, no wildcard, no trailing dot, not all-numeric (no IP
/// addresses: certificates carry no IP SANs).
pub(crate) fn check_dns_name(name: &str) -> core::result::Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("a DNS name has 1 to 253 bytes");
    }
    if name.contains('*') {
        return Err("no wildcards");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("labels have 1 to 63 bytes (no empty label, no trailing dot)");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err("labels are lowercase letters, digits and '-'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label neither starts nor ends with '-'");
        }
    }
    if name
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("an IP address is not a DNS name");
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    agents: BTreeMap<String, RawAgent>,
    #[serde(default)]
    services: BTreeMap<String, RawService>,
}

fn duration(v: Option<&str>, default: u64, rule: &str) -> Result<u64> {
    match v {
        None => Ok(default),
        Some(s) => {
            let d = humantime::parse_duration(s)
                .map_err(|e| CaError::policy(rule, format!("bad duration {s:?}: {e}")))?;
            if d.as_secs() == 0 {
                return Err(CaError::policy(rule, "duration must be at least 1s"));
            }
            Ok(d.as_secs())
        }
    }
}

/// A `max_token_ttl`: a duration of at most [`MAX_TOKEN_TTL`].
fn token_ttl(v: Option<&str>, default: u64, rule: &str) -> Result<u64> {
    let t = duration(v, default, rule)?;
    if t > MAX_TOKEN_TTL {
        return Err(CaError::policy(rule, "at most 7d"));
    }
    Ok(t)
}

impl Policy {
    /// Reads `policy.toml`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::material::read_config_text(path)?;
        Self::from_toml(&text)
    }

    /// Parses and validates a policy document.
    pub fn from_toml(text: &str) -> Result<Self> {
        let raw: RawPolicy =
            toml::from_str(text).map_err(|e| CaError::policy("policy.toml", e.to_string()))?;
        let d = &raw.defaults;
        let default_ttl = duration(d.ttl.as_deref(), 300, "defaults.ttl")?;
        let default_max_ttl = duration(d.max_ttl.as_deref(), 900, "defaults.max_ttl")?;
        let default_task_ttl = duration(d.task_ttl.as_deref(), 3600, "defaults.task_ttl")?;
        let default_max_task_ttl =
            duration(d.max_task_ttl.as_deref(), 8 * 3600, "defaults.max_task_ttl")?;
        if default_max_task_ttl > MAX_GRANT_LIFETIME_SECS {
            return Err(CaError::policy("defaults.max_task_ttl", "at most 24h"));
        }
        let default_max_token_ttl = token_ttl(
            d.max_token_ttl.as_deref(),
            MAX_TOKEN_TTL,
            "defaults.max_token_ttl",
        )?;
        let mut agents = BTreeMap::new();
        let mut inherited = std::collections::BTreeSet::new();
        for (name, a) in raw.agents {
            let base = format!("agents.{name}");
            if a.max_ttl.is_none() {
                inherited.insert(format!("{base}.max_ttl"));
            }
            if a.max_task_ttl.is_none() {
                inherited.insert(format!("{base}.max_task_ttl"));
            }
            if a.max_token_ttl.is_none() {
                inherited.insert(format!("{base}.max_token_ttl"));
            }
            let scopes = a
                .scopes
                .iter()
                .map(|s| {
                    ScopeToken::parse(s).map_err(|e| {
                        CaError::policy(format!("{base}.scopes"), format!("bad scope {s:?}: {e}"))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let max_task_ttl = duration(
                a.max_task_ttl.as_deref(),
                default_max_task_ttl,
                &format!("{base}.max_task_ttl"),
            )?;
            if max_task_ttl > MAX_GRANT_LIFETIME_SECS {
                return Err(CaError::policy(
                    format!("{base}.max_task_ttl"),
                    "at most 24h",
                ));
            }
            let max_depth = a.max_depth.unwrap_or(0);
            if max_depth > MAX_DEPTH {
                return Err(CaError::policy(
                    format!("{base}.max_depth"),
                    format!("at most {MAX_DEPTH}"),
                ));
            }
            let requesters = a
                .requesters
                .iter()
                .map(|r| RequesterKind::parse(r, &format!("{base}.requesters")))
                .collect::<Result<Vec<_>>>()?;
            let idset = |v: Option<Vec<SpiffeId>>, rule: &str| -> Result<Option<IdSet>> {
                v.map(|ids| {
                    IdSet::new(ids)
                        .map_err(|e| CaError::policy(format!("{base}.{rule}"), e.to_string()))
                })
                .transpose()
            };
            let mut permissions = BTreeMap::new();
            for (who, perms) in &a.permissions {
                let r = format!("{base}.permissions");
                let svc = match who.strip_prefix("svc:") {
                    Some(n) if !n.is_empty() && n != RESERVED_SERVICE => n,
                    _ => {
                        return Err(CaError::policy(
                            r,
                            format!("{who:?}: permissions are given to services, as \"svc:NAME\" (not agentid-ca)"),
                        ))
                    }
                };
                let list = perms
                    .iter()
                    .map(|p| Permission::parse(p, &r))
                    .collect::<Result<Vec<_>>>()?;
                permissions.insert(svc.to_owned(), list);
            }
            let rule = AgentRule {
                permissions,
                scopes,
                max_ttl: duration(
                    a.max_ttl.as_deref(),
                    default_max_ttl,
                    &format!("{base}.max_ttl"),
                )?,
                max_task_ttl,
                max_token_ttl: token_ttl(
                    a.max_token_ttl.as_deref(),
                    default_max_token_ttl,
                    &format!("{base}.max_token_ttl"),
                )?,
                max_depth,
                requesters,
                audiences: idset(a.audiences, "audiences")?,
                may_delegate_to: idset(a.may_delegate_to, "may_delegate_to")?,
                limits: a
                    .limits
                    .map(|l| {
                        Limits::new(l)
                            .map_err(|e| CaError::policy(format!("{base}.limits"), e.to_string()))
                    })
                    .transpose()?,
            };
            agents.insert(name, rule);
        }
        let mut services = BTreeMap::new();
        let mut dns_owner: BTreeMap<String, String> = BTreeMap::new();
        for (name, s) in raw.services {
            let base = format!("services.{name}");
            for d in &s.dns {
                check_dns_name(d)
                    .map_err(|e| CaError::policy(format!("{base}.dns"), format!("{d:?}: {e}")))?;
                if let Some(other) = dns_owner.insert(d.clone(), name.clone()) {
                    return Err(CaError::policy(
                        format!("{base}.dns"),
                        format!("{d:?} is already a name of service {other:?}"),
                    ));
                }
            }
            let requesters = s
                .requesters
                .iter()
                .map(|r| RequesterKind::parse(r, &format!("{base}.requesters")))
                .collect::<Result<Vec<_>>>()?;
            if requesters
                .iter()
                .any(|r| !matches!(r, RequesterKind::Operator | RequesterKind::Bootstrap))
            {
                return Err(CaError::policy(
                    format!("{base}.requesters"),
                    "service certificates are requested by the operator, or with a bootstrap token the operator made",
                ));
            }
            // The CA's own name is issued to nobody else (CA-API.md 1.1): only the operator's
            // issuance (the service's own certificate) may ask for it, never a bootstrap token.
            if name == RESERVED_SERVICE && requesters.contains(&RequesterKind::Bootstrap) {
                return Err(CaError::policy(
                    format!("{base}.requesters"),
                    "the CA service's own name is issued to nobody else: requesters = [\"operator\"] only",
                ));
            }
            if s.max_ttl.is_none() {
                inherited.insert(format!("{base}.max_ttl"));
            }
            if s.max_token_ttl.is_none() {
                inherited.insert(format!("{base}.max_token_ttl"));
            }
            services.insert(
                name,
                ServiceRule {
                    max_ttl: duration(
                        s.max_ttl.as_deref(),
                        default_max_ttl,
                        &format!("{base}.max_ttl"),
                    )?,
                    requesters,
                    dns: s.dns,
                    max_key_age: duration(
                        s.max_key_age.as_deref(),
                        DEFAULT_MAX_KEY_AGE,
                        &format!("{base}.max_key_age"),
                    )?,
                    max_token_ttl: token_ttl(
                        s.max_token_ttl.as_deref(),
                        default_max_token_ttl,
                        &format!("{base}.max_token_ttl"),
                    )?,
                },
            );
        }
        Ok(Policy {
            default_ttl,
            default_task_ttl,
            agents,
            services,
            inherited,
        })
    }

    /// The refusal of a lifetime above its cap, the same wherever it is checked (issuance,
    /// renewal, the service): the rule that decided (`defaults.max_ttl` when `rule` sets none)
    /// and both durations as written in policy.toml (`1h`, `15m`).
    pub(crate) fn lifetime_refusal(&self, rule: &str, what: &str, asked: u64, max: u64) -> CaError {
        let human =
            |s: u64| humantime::format_duration(std::time::Duration::from_secs(s)).to_string();
        let (used, note) = match rule.rsplit_once('.') {
            Some((base, key)) if self.inherited.contains(rule) => (
                format!("defaults.{key}"),
                format!(" ({base} sets no {key})"),
            ),
            _ => (rule.to_owned(), String::new()),
        };
        CaError::policy(
            used,
            format!(
                "{what} {} exceeds the maximum of {}{note}; ask for {} or less",
                human(asked),
                human(max),
                human(max)
            ),
        )
    }

    /// The rule for an agent name, or the refusal naming the missing rule.
    pub fn agent(&self, name: &str) -> Result<&AgentRule> {
        self.agents.get(name).ok_or_else(|| {
            CaError::policy(
                format!("agents.{name}"),
                format!("no rule for agent {name:?}"),
            )
        })
    }

    /// The rule for a service name.
    pub fn service(&self, name: &str) -> Result<&ServiceRule> {
        self.services.get(name).ok_or_else(|| {
            CaError::policy(
                format!("services.{name}"),
                format!("no rule for service {name:?}"),
            )
        })
    }

    /// Checks how long a bootstrap token stays redeemable against `max` (a rule's
    /// `max_token_ttl`, `rule` its path): refused naming the rule that decided.
    pub(crate) fn check_token_ttl(
        &self,
        rule: &str,
        ttl: std::time::Duration,
        max: u64,
    ) -> Result<()> {
        if ttl > std::time::Duration::from_secs(max) {
            let asked = ttl
                .as_secs()
                .saturating_add(u64::from(ttl.subsec_nanos() > 0));
            return Err(self.lifetime_refusal(rule, "bootstrap token expiry", asked, max));
        }
        Ok(())
    }

    /// Checks a certificate TTL against the agent's `max_ttl`.
    pub(crate) fn check_agent_ttl(&self, name: &str, ttl: u64) -> Result<()> {
        let rule = self.agent(name)?;
        if ttl > rule.max_ttl {
            return Err(self.lifetime_refusal(
                &format!("agents.{name}.max_ttl"),
                "certificate TTL",
                ttl,
                rule.max_ttl,
            ));
        }
        Ok(())
    }

    /// Checks a requested grant scope: concrete and covered by the agent's patterns.
    pub(crate) fn check_scope(&self, name: &str, scope: &Scope) -> Result<()> {
        let rule = self.agent(name)?;
        let r = format!("agents.{name}.scopes");
        for t in scope.tokens() {
            if t.is_wildcard() {
                return Err(CaError::policy(
                    r,
                    format!(
                        "requested scope {:?} contains a wildcard; request concrete scopes",
                        t.as_str()
                    ),
                ));
            }
            if !rule.scopes.iter().any(|p| p.covers(t)) {
                return Err(CaError::policy(
                    r,
                    format!("agent {name:?} may not hold scope {:?}", t.as_str()),
                ));
            }
        }
        Ok(())
    }

    /// Whether `requester` is listed for the agent.
    pub(crate) fn check_agent_requester(
        &self,
        name: &str,
        requester: &RequesterKind,
        who: &str,
        subject: &str,
    ) -> Result<()> {
        let rule = self.agent(name)?;
        listed(&rule.requesters, requester, who, subject, || {
            format!("agents.{name}.requesters")
        })
    }

    /// Whether service `service` holds `permission` for agent `name` (rule
    /// `agents.NAME.permissions`).
    pub fn check_permission(
        &self,
        name: &str,
        service: &str,
        permission: Permission,
    ) -> Result<()> {
        // An agent without a rule is refused as one whose rule gives the service nothing: a
        // service learns no agent names from the answer (CA-API.md 3.12).
        let ok = self
            .agents
            .get(name)
            .and_then(|rule| rule.permissions.get(service))
            .is_some_and(|p| p.contains(&permission));
        if ok {
            Ok(())
        } else {
            Err(CaError::policy(
                format!("agents.{name}.permissions"),
                format!(
                    "service {service:?} does not hold {:?} for agent {name:?}",
                    permission.as_str()
                ),
            ))
        }
    }

    /// The agents for which service `service` holds `permission`.
    pub fn agents_permitting(&self, service: &str, permission: Permission) -> Vec<&str> {
        self.agents
            .iter()
            .filter(|(_, r)| {
                r.permissions
                    .get(service)
                    .is_some_and(|p| p.contains(&permission))
            })
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// Whether `requester` is listed for the service.
    pub(crate) fn check_service_requester(
        &self,
        name: &str,
        requester: &RequesterKind,
        who: &str,
        subject: &str,
    ) -> Result<()> {
        let rule = self.service(name)?;
        listed(&rule.requesters, requester, who, subject, || {
            format!("services.{name}.requesters")
        })
    }
}
