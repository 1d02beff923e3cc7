//! Pieces shared by the commands: output format, time arguments, key types.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::error::{CliError, CliResult, Context};

/// How a command prints its data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON document on stdout.
    Json,
}

/// The `--format` flag of data-printing commands.
#[derive(Clone, Debug, clap::Args)]
pub struct FormatArg {
    /// Output format: `text` for people, `json` for programs (logs always go to stderr).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Key type of `--key-type`: the one of the CA crate, with its spelling (`p256`, `ed25519`) and
/// its JWS algorithm ([`KeyType::algorithm`]).
pub use agentid_ca::KeyType;

/// The value parser of `--key-type`: one of the [`KeyType`] names, each with its help line.
pub fn key_type_parser() -> impl clap::builder::TypedValueParser<Value = KeyType> {
    use clap::builder::TypedValueParser as _;
    let values = KeyType::ALL.map(|k| {
        clap::builder::PossibleValue::new(k.as_str()).help(match k {
            KeyType::P256 => "ECDSA P-256 (widest interoperability)",
            KeyType::Ed25519 => "Ed25519",
        })
    });
    clap::builder::PossibleValuesParser::new(values).try_map(|s| s.parse::<KeyType>())
}

/// Prints a JSON document on stdout.
pub fn print_json(v: &Value) -> CliResult<()> {
    let text = serde_json::to_string_pretty(v).context("cannot encode JSON")?;
    crate::files::write_output(None, &text)
}

/// Prints text lines on stdout.
pub fn print_text(text: &str) -> CliResult<()> {
    crate::files::write_output(None, text)
}

/// Unix seconds of a system time.
pub fn unix(t: SystemTime) -> CliResult<u64> {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| CliError::failed("the system clock is before 1970"))
}

/// The current time, in Unix seconds.
pub fn now_unix() -> CliResult<u64> {
    unix(SystemTime::now())
}

/// Parses a `--ttl` style duration (`30s`, `5m`, `1h30m`), at least one second.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("a duration needs a unit: {t}s, {t}m or {t}h"));
    }
    if let Some(rest) = t.strip_prefix('-') {
        return Err(format!(
            "a duration is never negative (did you mean {rest}?)"
        ));
    }
    let d = humantime::parse_duration(t).map_err(|e| format!("{e} (examples: 30s, 5m, 1h)"))?;
    if d.as_secs() == 0 {
        return Err(format!("{t} is less than the smallest duration, 1s"));
    }
    Ok(Duration::from_secs(d.as_secs()))
}

/// A duration as people write it (`15m`, `1h 30m`), for messages.
pub fn human_duration(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// A rough duration for "in ..." and "... ago": whole days past two days, else whole minutes
/// past an hour, else exact.
fn rough_duration(secs: u64) -> String {
    if secs >= 2 * 86_400 {
        format!("{} days", secs / 86_400)
    } else if secs >= 3600 {
        human_duration(secs - secs % 60)
    } else {
        human_duration(secs)
    }
}

/// Checks a `--ca-url` style URL (`https://HOST:PORT`) on the command line (status 2).
pub fn parse_ca_url(s: &str) -> Result<String, String> {
    agentid_transport::enroll::check_ca_url(s)
        .map(|()| s.to_owned())
        .map_err(|e| format!("{e} (e.g. https://127.0.0.1:8443)"))
}

/// Parses an `--at` time: RFC 3339 (`2026-01-02T03:04:05Z`), a date (`2026-01-02`, midnight
/// UTC), Unix seconds, or a duration from now (`+10m`).
pub fn parse_time(s: &str) -> Result<u64, String> {
    // spec/PROTOCOL.md section 3.3: a time is at most 2^53 - 1 (`now` beyond it is
    // `bad_config`, never a value to verify with).
    let t = parse_any_time(s)?;
    if t > agentid_protocol::caps::MAX_LIMIT_VALUE {
        return Err(format!(
            "{t} is after the last time the protocol can express (2^53 - 1 seconds)"
        ));
    }
    Ok(t)
}

fn parse_any_time(s: &str) -> Result<u64, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().map_err(|e| format!("bad Unix time: {e}"));
    }
    if let Some(rel) = s.strip_prefix('+') {
        let d = parse_duration(rel)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "the system clock is before 1970".to_owned())?;
        return Ok(now.as_secs().saturating_add(d.as_secs()));
    }
    // A bare date is midnight UTC of that day.
    let full = if s.len() == 10 && s.bytes().filter(|b| *b == b'-').count() == 2 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_owned()
    };
    let t = time::OffsetDateTime::parse(&full, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            format!(
                "{e}: expected RFC 3339 (2030-01-01T00:00:00Z), a date (2030-01-01), Unix seconds or +DURATION (+10m)"
            )
        })?;
    u64::try_from(t.unix_timestamp()).map_err(|_| "times before 1970 are not supported".into())
}

/// How far `t` is from `now`, for people: `in 4m 12s` or `4m 12s ago`.
pub fn relative(t: u64, now: u64) -> String {
    if t >= now {
        format!("in {}", rough_duration(t - now))
    } else {
        format!("{} ago", rough_duration(now - t))
    }
}

/// RFC 3339 (UTC) form of Unix seconds, for display.
pub fn rfc3339(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}
