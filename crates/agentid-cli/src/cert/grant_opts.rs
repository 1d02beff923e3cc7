//! The grant options of `cert issue` and `cert sign`: what the operator asks the CA to grant.

use std::time::Duration;

use agentid_ca::OpenTaskRequest;
use agentid_protocol::TaskId;
use serde_json::{json, Value};

use crate::common::parse_duration;
use crate::delegate::{parse_audience, parse_id_set, parse_limits, parse_scope};
use crate::error::{ArgContext, CliError, CliResult};

/// What the task's grant carries.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct GrantOpts {
    /// Scope token to grant (repeatable; each allowed by the agent's policy).
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// Audience entry of the grant (repeatable; default: the agent rule's `audiences`, else the
    /// trust domain).
    #[arg(long = "aud")]
    pub audience: Vec<String>,
    /// The principal the agent acts for, asserted by the operator (RFC 9493):
    /// `email:alice@example.com`, `phone:+12025550100`, `uri:https://...`, `acct:user@host`,
    /// `opaque:ID`, or a JSON subject identifier object. Sets mode `on_behalf_of`.
    #[arg(long)]
    pub principal: Option<String>,
    /// How many links may follow the grant (default 0: sealed).
    #[arg(long)]
    pub max_depth: Option<u8>,
    /// Grant (task) lifetime, e.g. `1h` (default: the policy's `defaults.task_ttl`).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub task_ttl: Option<Duration>,
    /// A limit ceiling `NAME=N` (repeatable).
    #[arg(long = "limit", value_name = "NAME=N")]
    pub limits: Vec<String>,
    /// Whom the chain may be delegated to (repeatable IDs).
    #[arg(long = "may-delegate-to", value_name = "ID")]
    pub may_delegate_to: Vec<String>,
}

impl GrantOpts {
    /// Whether any grant option was given (they are refused where no grant is made).
    pub fn any(&self) -> bool {
        !self.scopes.is_empty()
            || !self.audience.is_empty()
            || self.principal.is_some()
            || self.max_depth.is_some()
            || self.task_ttl.is_some()
            || !self.limits.is_empty()
            || !self.may_delegate_to.is_empty()
    }

    /// Fills an open-task request (agent, key and requester already set).
    pub fn apply(&self, req: &mut OpenTaskRequest) -> CliResult<()> {
        req.audience = parse_audience(&self.audience)?;
        req.principal = self.principal.as_deref().map(parse_principal).transpose()?;
        req.max_depth = self.max_depth;
        req.task_ttl = self.task_ttl;
        req.limits = parse_limits(&self.limits)?;
        req.may_delegate_to = parse_id_set(&self.may_delegate_to, "--may-delegate-to")?;
        Ok(())
    }

    /// The scope to grant: required when opening a task.
    pub fn scope(&self) -> CliResult<agentid_protocol::Scope> {
        if self.scopes.is_empty() {
            return Err(CliError::usage("opening a task needs at least one --scope"));
        }
        parse_scope(&self.scopes)
    }
}

/// Parses `--task ID`.
pub fn parse_task(s: &str) -> CliResult<TaskId> {
    TaskId::parse(s).bad_arg("--task", s)
}

/// Parses a `--principal` into an RFC 9493 subject identifier.
pub fn parse_principal(s: &str) -> CliResult<Value> {
    let bad = |why: &str| CliError::usage(format!("bad --principal {s:?}: {why}"));
    if s.trim_start().starts_with('{') {
        let v: Value = serde_json::from_str(s).map_err(|_| bad("not a JSON object"))?;
        if !v.get("format").is_some_and(Value::is_string) {
            return Err(bad("a subject identifier needs a string `format`"));
        }
        return Ok(v);
    }
    let (kind, value) = s
        .split_once(':')
        .ok_or_else(|| bad("expected FORMAT:VALUE, e.g. email:alice@example.com"))?;
    if value.is_empty() {
        return Err(bad("empty value"));
    }
    Ok(match kind {
        "email" => {
            if !value.contains('@') {
                return Err(bad("not an email address"));
            }
            json!({ "format": "email", "email": value })
        }
        "phone" => json!({ "format": "phone_number", "phone_number": value }),
        "uri" => json!({ "format": "uri", "uri": value }),
        "acct" => json!({ "format": "account", "uri": s }),
        "opaque" => json!({ "format": "opaque", "id": value }),
        _ => {
            return Err(bad(
                "unknown format (email, phone, uri, acct, opaque, or a JSON object)",
            ))
        }
    })
}
