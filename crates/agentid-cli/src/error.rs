//! The CLI's failure type: an exit status and a one-line reason, with a stable code and the
//! next step when known (for `--format json`: `{"error": {"code", "message", "hint"}}`).

use core::fmt;

use serde_json::{json, Value};

/// Exit status of a failed command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The command could not do its job (bad input, refused by the CA, I/O): status 1.
    Failed,
    /// The command line is wrong: status 2 (as clap).
    Usage,
    /// A verification ran and said "invalid" (`cert verify`, `chain verify`): status 3.
    Invalid,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Invalid => 3,
        }
    }
}

/// A failed command: printed as `agentid: <reason>` on one line of stderr.
#[derive(Debug)]
pub struct CliError {
    /// The exit status.
    pub exit: Exit,
    message: String,
    /// A stable short name (`policy_refused`, the CA's own code); default: from the status.
    code: Option<String>,
    /// What to do next, when known apart from the message (the message holds it too).
    hint: Option<String>,
    /// The command already printed its JSON report (a verification verdict).
    reported: bool,
}

impl CliError {
    /// A failure (status 1).
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            exit: Exit::Failed,
            message: message.into(),
            code: None,
            hint: None,
            reported: false,
        }
    }

    /// A command-line mistake (status 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            exit: Exit::Usage,
            message: message.into(),
            code: None,
            hint: None,
            reported: false,
        }
    }

    /// A negative verification result (status 3).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            exit: Exit::Invalid,
            message: message.into(),
            code: None,
            hint: None,
            reported: false,
        }
    }

    /// Sets the stable short name of the failure.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// Records the next step (already part of the message) for the JSON form.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        let hint = hint.into();
        self.hint = (!hint.is_empty()).then_some(hint);
        self
    }

    /// Marks the failure as already reported on stdout (a verdict printed as JSON).
    pub fn reported(mut self) -> Self {
        self.reported = true;
        self
    }

    /// The stable short name: the one set, else `failed`, `usage` or `invalid`.
    pub fn code(&self) -> &str {
        match (&self.code, self.exit) {
            (Some(c), _) => c,
            (None, Exit::Failed) => "failed",
            (None, Exit::Usage) => "usage",
            (None, Exit::Invalid) => "invalid",
        }
    }

    /// The reason, collapsed to one line.
    pub fn one_line(&self) -> String {
        one_line(&self.message)
    }

    /// The JSON document printed on stdout under `--format json`: `{"error": {"code",
    /// "message", "hint"}}`, the message as on stderr. `None` when the command already printed
    /// its report.
    pub fn to_json(&self) -> Option<Value> {
        (!self.reported).then(|| {
            json!({ "error": {
                "code": self.code(),
                "message": self.one_line(),
                "hint": self.hint.as_deref().map(one_line),
            }})
        })
    }
}

/// Collapses any whitespace run containing a line break into one space.
pub fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

impl From<agentid_ca::CaError> for CliError {
    fn from(e: agentid_ca::CaError) -> Self {
        use agentid_ca::CaError as E;
        // A file of the CA directory that others could have put there: said as every file
        // the reader does not hold is, its next step as the hint.
        let e = match e {
            E::NotHeld(e) => return e.into(),
            e => e,
        };
        let code = match &e {
            E::Policy { .. } => "policy_refused",
            E::Unauthorized { .. } => "unauthorized",
            E::Revoked { .. } => "revoked",
            E::IdentityExists(_) | E::TaskIdTaken(_) => "identity_exists",
            E::UnknownIdentity(_) | E::NotFound { .. } => "not_found",
            E::KeyInUse { .. } | E::KeyMismatch { .. } => "key_conflict",
            E::WrongTrustDomain { .. } => "wrong_trust_domain",
            E::InsecureKeyFile { .. } => "insecure_key_file",
            E::AlreadyInitialized { .. } => "already_initialized",
            _ => "failed",
        };
        // A local policy refusal: the operator can act on the rule it names.
        match e.policy_rule() {
            Some(rule) => {
                let hint = format!(
                    "check the request against {rule} in the CA's policy.toml, or change that rule"
                );
                CliError::failed(format!("{e}: {hint}"))
                    .with_code(code)
                    .with_hint(hint)
            }
            None => match e.next_step() {
                Some(hint) => CliError::failed(format!("{e}: {hint}"))
                    .with_code(code)
                    .with_hint(hint),
                None => CliError::failed(e.to_string()).with_code(code),
            },
        }
    }
}

impl From<agentid::files::FilesError> for CliError {
    fn from(e: agentid::files::FilesError) -> Self {
        match e {
            agentid::files::FilesError::Io { path, source } => {
                CliError::failed(format!("cannot read {}: {source}", path.display()))
            }
            agentid::files::FilesError::NotHeld(e) => e.into(),
            e => CliError::failed(e.to_string()),
        }
    }
}

impl From<agentid_fs::FsError> for CliError {
    fn from(e: agentid_fs::FsError) -> Self {
        match e.next_step() {
            Some(hint) => CliError::failed(e.to_string()).with_hint(hint),
            None => CliError::failed(e.to_string()),
        }
    }
}

impl From<agentid_protocol::Error> for CliError {
    fn from(e: agentid_protocol::Error) -> Self {
        CliError::failed(e.to_string())
    }
}

/// Result of a command.
pub type CliResult<T = ()> = Result<T, CliError>;

/// Adds what was being done to an error, as `what: error`.
pub trait Context<T> {
    /// Wraps the error as a failure (status 1) prefixed with `what`.
    fn context(self, what: impl fmt::Display) -> CliResult<T>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl fmt::Display) -> CliResult<T> {
        self.map_err(|e| CliError::failed(format!("{what}: {e}")))
    }
}

/// A malformed value given on the command line (status 2): `bad FLAG "VALUE": why`.
pub fn bad_arg(flag: &str, value: &str, why: impl fmt::Display) -> CliError {
    CliError::usage(format!("bad {flag} {value:?}: {why}"))
}

/// Parses a command-line value, turning a parse error into [`bad_arg`] (status 2).
pub trait ArgContext<T> {
    /// Wraps the error as a command-line mistake about `flag` and its `value`.
    fn bad_arg(self, flag: &str, value: &str) -> CliResult<T>;
}

impl<T, E: fmt::Display> ArgContext<T> for Result<T, E> {
    fn bad_arg(self, flag: &str, value: &str) -> CliResult<T> {
        self.map_err(|e| bad_arg(flag, value, e))
    }
}
