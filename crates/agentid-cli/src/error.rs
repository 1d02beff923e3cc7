//! The CLI's failure type: an exit status and a one-line reason.

use core::fmt;

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
}

impl CliError {
    /// A failure (status 1).
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            exit: Exit::Failed,
            message: message.into(),
        }
    }

    /// A command-line mistake (status 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            exit: Exit::Usage,
            message: message.into(),
        }
    }

    /// A negative verification result (status 3).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            exit: Exit::Invalid,
            message: message.into(),
        }
    }

    /// The reason, collapsed to one line.
    pub fn one_line(&self) -> String {
        one_line(&self.message)
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
        CliError::failed(e.to_string())
    }
}

impl From<agentid::files::FilesError> for CliError {
    fn from(e: agentid::files::FilesError) -> Self {
        match e {
            agentid::files::FilesError::Io { path, source } => {
                CliError::failed(format!("cannot read {}: {source}", path.display()))
            }
            e => CliError::failed(e.to_string()),
        }
    }
}

impl From<agentid_fs::FsError> for CliError {
    fn from(e: agentid_fs::FsError) -> Self {
        CliError::failed(e.to_string())
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
