//! Commands that talk to the CA service (`spec/CA-API.md`): `agentid token create`,
//! `agentid enroll`, `agentid ca list` and `agentid revoke --ca-url`.
//!
//! Bootstrap tokens travel in token files (mode 0600), never on the command line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentid::files::{CredentialDir, BUNDLE_FILE, CERT_FILE, GRANT_FILE, KEY_FILE};
use agentid_api::{RevokeRequest, TokenFile, TokenRequest};
use agentid_protocol::TaskKey;
use agentid_transport::enroll::{CaClient, EnrollError};
use agentid_transport::PeerVerification;
use serde_json::json;

use crate::cert::grant_opts::parse_task;
use crate::common::{
    key_type_parser, parse_duration, print_json, print_text, rfc3339, Format, FormatArg, KeyType,
};
use crate::error::{ArgContext, CliError, CliResult, Context};
use crate::files;

/// How long a network command waits for the CA.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The environment variable that names a token file.
pub const TOKEN_FILE_ENV: &str = "AGENTID_TOKEN_FILE";

/// The caller's side of a call to the CA's mutual-TLS listener.
#[derive(Clone, Debug, clap::Args)]
pub struct RemoteArgs {
    /// The CA service's mutual-TLS listener, `https://HOST:PORT`.
    #[arg(long, value_name = "URL", value_parser = crate::common::parse_ca_url)]
    pub ca_url: Option<String>,
    /// The caller's credential directory (`cert.pem`, `key.pem`, `bundle.json`): a service's,
    /// or a task holder's.
    #[arg(long, value_name = "DIR", requires = "ca_url")]
    pub cred: Option<PathBuf>,
}

impl RemoteArgs {
    /// The `--ca-url`, for messages (empty when absent: [`RemoteArgs::client`] refuses then).
    pub(crate) fn url(&self) -> &str {
        self.ca_url.as_deref().unwrap_or_default()
    }

    pub(crate) fn client(&self) -> CliResult<CaClient> {
        let (Some(url), Some(dir)) = (&self.ca_url, &self.cred) else {
            return Err(CliError::usage("--ca-url needs --cred DIR"));
        };
        let cred = load_cred(dir)?;
        let verification = PeerVerification::new(
            cred.verifier_config()?
                // The CA itself is where revocations are made: it re-checks every caller.
                .danger_accept_missing_or_stale_revocations(),
        )
        .context("cannot build the verifier")?;
        let source = Arc::new(agentid_transport::MemoryCredentials::new(
            cred.credential()?,
        ));
        CaClient::new(url, source, verification, TIMEOUT).map_err(api_error(url))
    }
}

/// A failed call to the CA at `url`: its refusal as one line, `code: message (hint)` (under
/// `--format json` the CA's own code and hint); or, when the CA could not be reached or did not
/// answer, the URL and what to check.
pub(crate) fn api_error(url: &str) -> impl FnOnce(EnrollError) -> CliError + '_ {
    move |e| match e.api_error() {
        Some(api) => CliError::failed(e.to_string())
            .with_code(api.code.to_string())
            .with_hint(api.hint.clone()),
        None if unreachable(&e) => {
            let hint = "check the URL, and that `agentid ca serve` is running and listens there";
            CliError::failed(format!("cannot reach the CA at {url}: {e}: {hint}")).with_hint(hint)
        }
        None if enrollment_listener_answer(&e) => {
            let hint = "give the URL of the CA's mutual-TLS listener (`agentid ca serve --listen`), not its enrollment listener (`--enroll-listen`, the token file's `ca_url`)";
            CliError::failed(format!(
                "the CA at {url}: {e}: is that the enrollment listener? {hint}"
            ))
            .with_hint(hint)
        }
        None if matches!(
            e,
            EnrollError::Transport(agentid_transport::Error::NoCredential)
        ) =>
        {
            let hint = "the certificate expired before it could be renewed (the CA was out of reach past its end, or this machine slept): the CA renews only a certificate still valid, so enroll again with a new token (`agentid enroll --token-file FILE`), or have the operator run `agentid cert renew --ca CA_DIR`";
            CliError::failed(format!("the CA at {url}: {e}: {hint}")).with_hint(hint)
        }
        None if plain_text_answer(&e) => {
            let hint = "the server at that URL does not speak TLS: give the HTTPS address of `agentid ca serve` (not a plain-HTTP proxy or port)";
            CliError::failed(format!("the CA at {url}: {e}: {hint}")).with_hint(hint)
        }
        None => CliError::failed(format!("the CA at {url}: {e}")),
    }
}

/// Whether a request presenting the caller's credential was answered without the CA's proof,
/// as the enrollment listener (no client certificates, no agentid handshake) answers it. For a
/// hint only.
fn enrollment_listener_answer(e: &EnrollError) -> bool {
    matches!(
        e,
        EnrollError::Transport(agentid_transport::Error::HandshakeRefused(m))
            if m.contains("without its proof")
    )
}

/// Whether the TLS handshake failed on an answer that is not TLS (a plain-HTTP server answers
/// the ClientHello with text). Read from rustls' message, for a hint only.
fn plain_text_answer(e: &EnrollError) -> bool {
    e.to_string().contains("InvalidContentType")
}

/// Makes `dir` (0700 when made here) and checks that `names` in it can be written, before the
/// CA is asked for what goes there: what it issues or spends (a single-use token) is not asked
/// for again. Returns whether `dir` was made here (see [`remove_made_dir`]).
fn prepare_out_dir(dir: &Path, names: &[&str]) -> CliResult<bool> {
    let made = std::fs::symlink_metadata(dir).is_err();
    files::ensure_dir(dir)?;
    let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    files::check_public_destinations(&paths).inspect_err(|_| remove_made_dir(dir, made))?;
    Ok(made)
}

/// Removes `dir` again when [`prepare_out_dir`] made it (and it is still empty): a refused
/// request leaves nothing behind.
fn remove_made_dir(dir: &Path, made: bool) {
    if made {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Whether `e` says the CA could not be reached (no answer, no connection, a name that does not
/// resolve), as opposed to a TLS peer that failed verification or an answer that was refused.
fn unreachable(e: &EnrollError) -> bool {
    use std::io::ErrorKind as K;
    match e {
        // Name resolution and connecting.
        EnrollError::Io(_) | EnrollError::Timeout(_) => true,
        EnrollError::Transport(agentid_transport::Error::Io(io)) => matches!(
            io.kind(),
            K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::NotConnected
                | K::AddrNotAvailable
                | K::TimedOut
                | K::HostUnreachable
                | K::NetworkUnreachable
                | K::UnexpectedEof
                | K::BrokenPipe
        ),
        _ => false,
    }
}

pub(crate) fn runtime() -> CliResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

// ---- token create ----

/// `token` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a single-use bootstrap token and write its token file (0600): the token, the CA's
    /// enrollment URL, the SHA-256 of the root to pin, the identity and the expiry. For an
    /// agent's task (`--agent`): locally as the operator (`--ca DIR`), or through the CA service
    /// as a permitted service (`--ca-url`, `--cred`). For a service (`--service`): as the
    /// operator only; `agentid enroll` then gets a service certificate with the DNS names of the
    /// service's rule, which must list `bootstrap` among its requesters.
    Create(TokenCreateArgs),
}

/// Arguments of `token create`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["agent", "service"])))]
pub struct TokenCreateArgs {
    /// The CA directory (operator, local).
    #[arg(
        long = "ca",
        value_name = "DIR",
        conflicts_with = "ca_url",
        required_unless_present = "ca_url"
    )]
    pub ca: Option<PathBuf>,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// The URL written into the token file: the CA's enrollment listener, `https://HOST:PORT`.
    #[arg(long, value_name = "URL", value_parser = crate::common::parse_ca_url)]
    pub enroll_url: String,
    /// The CA's mutual-TLS listener written into the token file for renewals (default: the
    /// `--ca-url` of a service's request, else none).
    #[arg(long, value_name = "URL", value_parser = crate::common::parse_ca_url)]
    pub renew_url: Option<String>,
    /// The agent the token enrolls (a new task, with a grant).
    #[arg(long)]
    pub agent: Option<String>,
    /// The service the token enrolls (`spiffe://TD/svc/NAME`: a service certificate, no task,
    /// no grant). Operator only (`--ca DIR`).
    #[arg(long)]
    pub service: Option<String>,
    /// The task id (default: generated).
    #[arg(long)]
    pub task: Option<String>,
    /// The grant's scope (space-separated tokens); required with `--agent`.
    #[arg(long, required_unless_present = "service")]
    pub scope: Option<String>,
    /// An audience of the grant (repeatable).
    #[arg(long = "aud")]
    pub audience: Vec<String>,
    /// The grant's `max_depth`.
    #[arg(long)]
    pub max_depth: Option<u8>,
    /// Certificate lifetime.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub ttl: Option<Duration>,
    /// Grant (task) lifetime.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub task_ttl: Option<Duration>,
    /// How long the token stays redeemable.
    #[arg(long, value_parser = parse_duration, default_value = "10m", allow_hyphen_values = true)]
    pub expires_in: Duration,
    /// The token file to create (0600, never overwritten).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub format: FormatArg,
}

/// Runs a `token` subcommand.
pub fn run_token(cmd: &TokenCommand) -> CliResult {
    match cmd {
        TokenCommand::Create(a) => token_create(a),
    }
}

fn token_create(a: &TokenCreateArgs) -> CliResult {
    // clap does not check `--cred`'s `requires` once `--ca` is chosen: refused, not ignored.
    if a.ca.is_some() && a.remote.cred.is_some() {
        return Err(CliError::usage(
            "--cred goes with --ca-url; with --ca DIR the operator creates the token (drop --cred)",
        ));
    }
    // Refused before the token exists: a token whose file cannot be written would stay in the
    // store, redeemable until it expires, with nobody holding it.
    if std::fs::symlink_metadata(&a.out).is_ok() {
        return Err(CliError::failed(format!(
            "{} already exists: refusing to overwrite a token file",
            a.out.display()
        )));
    }
    files::check_output_destination(&a.out)?;
    agentid_fs::check_secret_dir(match a.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    })?;
    let file = match (&a.agent, &a.service) {
        (_, Some(service)) => service_token(a, service)?,
        (Some(agent), None) => agent_token(a, agent)?,
        // clap requires exactly one of them.
        (None, None) => return Err(CliError::usage("name --agent or --service")),
    };
    write_token_file(a, &file)
}

/// A service's token: made by the operator only, binding no grant (CA-API 3.5).
fn service_token(a: &TokenCreateArgs, service: &str) -> CliResult<TokenFile> {
    if a.scope.is_some()
        || !a.audience.is_empty()
        || a.max_depth.is_some()
        || a.task.is_some()
        || a.task_ttl.is_some()
    {
        return Err(CliError::usage(
            "--scope, --aud, --max-depth, --task and --task-ttl bind an agent's task and grant; a service's token binds none (only --ttl, the certificate lifetime)",
        ));
    }
    let Some(dir) = &a.ca else {
        return Err(CliError::usage(
            "a service's token is made by the operator (--ca DIR); the CA service creates tokens for agents only",
        ));
    };
    let ca = crate::cert::CaDirArg { ca: dir.clone() }.open()?;
    let id = agentid_protocol::ServiceId::new(ca.trust_domain(), service)
        .bad_arg("--service", service)?;
    // Read before the token exists (one whose file cannot be written stays redeemable).
    let bundle_seq = ca.signed_bundle_seq()?;
    let (token, identity, expires) =
        ca.create_service_token(id.name(), a.ttl, a.expires_in, SystemTime::now())?;
    Ok(TokenFile {
        token,
        ca_url: a.enroll_url.clone(),
        root_sha256: agentid_ca::server::root_sha256(&ca),
        identity,
        // A service has no task: the token file names it as its store record does.
        agent: format!("svc:{}", id.name()),
        task: String::new(),
        expires,
        renew_url: a.renew_url.clone(),
        bundle_seq,
    })
}

/// An agent's token: locally as the operator, or through the CA service as a permitted service.
fn agent_token(a: &TokenCreateArgs, agent: &str) -> CliResult<TokenFile> {
    let audience = (!a.audience.is_empty()).then(|| a.audience.clone());
    let scope = a.scope.clone().unwrap_or_default();
    let file = if let Some(dir) = &a.ca {
        let ca = crate::cert::CaDirArg { ca: dir.clone() }.open()?;
        let binding = agentid_ca::TokenBinding {
            scope,
            audience,
            max_depth: a.max_depth,
            ttl_secs: a.ttl.map(|d| d.as_secs()),
            task_ttl_secs: a.task_ttl.map(|d| d.as_secs()),
            creator: Some("operator".into()),
            ..Default::default()
        };
        let task = a.task.as_deref().map(parse_task).transpose()?;
        // Read before the token exists (one whose file cannot be written stays redeemable).
        let bundle_seq = ca.signed_bundle_seq()?;
        let t = ca.create_bound_token(agent, task, &binding, a.expires_in, SystemTime::now())?;
        TokenFile {
            token: t.token.clone(),
            ca_url: a.enroll_url.clone(),
            root_sha256: agentid_ca::server::root_sha256(&ca),
            identity: t.identity.as_str().to_owned(),
            agent: t.identity.agent().name().to_owned(),
            task: t.identity.task_id().as_str().to_owned(),
            expires: t.expires,
            renew_url: a.renew_url.clone(),
            bundle_seq,
        }
    } else {
        let client = a.remote.client()?;
        let req = TokenRequest {
            agent: agent.to_owned(),
            task: a.task.clone(),
            scope: scope.split_whitespace().map(str::to_owned).collect(),
            audience,
            max_depth: a.max_depth,
            ttl_secs: a.ttl.map(|d| d.as_secs()),
            task_ttl_secs: a.task_ttl.map(|d| d.as_secs()),
            expires_in_secs: Some(a.expires_in.as_secs()),
            ..Default::default()
        };
        let r = runtime()?
            .block_on(client.create_token(&req))
            .map_err(api_error(a.remote.url()))?;
        let td = agentid_protocol::SpiffeId::parse(
            load_cred(a.remote.cred.as_deref().unwrap_or(Path::new(".")))?
                .identity
                .as_str(),
        )?
        .trust_domain();
        TokenFile {
            identity: answered_identity(&td, &r)?,
            token: r.token,
            ca_url: a.enroll_url.clone(),
            root_sha256: r.root_sha256,
            agent: r.agent,
            task: r.task,
            expires: r.expires,
            renew_url: a.renew_url.clone().or_else(|| a.remote.ca_url.clone()),
            // The CA's answer is not the operator's side: no floor from it (CA-API 3.6.1).
            bundle_seq: None,
        }
    };
    Ok(file)
}

/// The task identity a CA's token answer names (its agent is checked against the request by
/// `CaClient::create_token`), refused when its task is not a task id: it is written into the
/// token file and printed.
fn answered_identity(
    td: &agentid_protocol::TrustDomain,
    r: &agentid_api::TokenResponse,
) -> CliResult<String> {
    let identity = agentid_protocol::TaskId::parse(&r.task)
        .ok()
        .map(|_| format!("spiffe://{}/agent/{}/task/{}", td.as_str(), r.agent, r.task))
        .filter(|id| agentid_protocol::TaskIdentity::parse(id).is_ok());
    identity.ok_or_else(|| {
        CliError::failed(format!(
            "the CA answered a token for task {:?}, which is not a task id: no token file is written (the token is not used; unredeemed, it expires); ask again, and if it persists tell the CA's operator (a replica may be misconfigured)",
            agentid_protocol::clean_text(r.task.clone(), 128)
        ))
    })
}

/// Writes the token file (0600, never over an existing file) and reports it.
fn write_token_file(a: &TokenCreateArgs, file: &TokenFile) -> CliResult {
    let text = serde_json::to_vec_pretty(file).context("cannot encode the token file")?;
    agentid_fs::create_secret(&a.out, &text).map_err(|e| match e {
        agentid_fs::FsError::AlreadyExists { .. } => CliError::failed(format!(
            "{} already exists: refusing to overwrite a token file",
            a.out.display()
        )),
        e => e.into(),
    })?;
    match a.format.format {
        Format::Json => print_json(&json!({
            "token_file": a.out.display().to_string(),
            "identity": file.identity,
            "expires": file.expires,
            "root_sha256": file.root_sha256,
        })),
        Format::Text => print_text(&format!(
            "token file {} for {} (redeemable until {}); hand it to the {} as a file or through {TOKEN_FILE_ENV}, never on a command line\n",
            a.out.display(),
            file.identity,
            rfc3339(file.expires),
            if a.service.is_some() { "service" } else { "agent" }
        )),
    }
}

// ---- enroll ----

/// Arguments of `enroll`.
#[derive(Debug, clap::Args)]
pub struct EnrollArgs {
    /// The token file (default: the file `AGENTID_TOKEN_FILE` names).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Where to write `key.pem` (0600), `cert.pem`, `grant.jwt` and `bundle.json` (the pinned
    /// root only: no grant or revocation keys; `agentid bundle export` makes the full bundle;
    /// it starts at the token file's `bundle_seq`, so no older signed bundle is applied to it).
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Type of the key made here.
    #[arg(long, value_parser = key_type_parser(), default_value_t = KeyType::P256)]
    pub key_type: KeyType,
    #[command(flatten)]
    pub format: FormatArg,
}

/// Runs `enroll`: a key made here, a CSR sent to the CA pinned by the token file, the
/// credential written to `--out-dir`.
pub fn run_enroll(a: &EnrollArgs) -> CliResult {
    let path = match &a.token_file {
        Some(p) => p.clone(),
        None => std::env::var_os(TOKEN_FILE_ENV)
            .map(PathBuf::from)
            .ok_or_else(|| {
                CliError::usage(format!(
                    "name the token file: --token-file or {TOKEN_FILE_ENV}"
                ))
            })?,
    };
    // Read only if held: whoever could replace it would choose the CA (and the root pinned in
    // bundle.json) this agent enrolls with.
    let secret = agentid_fs::read_held_secret(&path, 64 * 1024).map_err(|e| match e {
        agentid_fs::FsError::InsecureMode { path, mode } => CliError::failed(format!(
            "{} has mode {mode:03o}: a token file holds a secret and must be readable by its owner only (chmod 600); if others may have read it, ask the operator for a new token",
            path.display()
        )),
        agentid_fs::FsError::Io { path, source }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            let hint = format!(
                "a token file is read by the user that enrolls (it keeps mode 600): give it to \
                 that user (`chown USER {}`) or run `agentid enroll` as its owner",
                path.display()
            );
            CliError::failed(format!(
                "cannot read {}: {source}; {hint}",
                path.display()
            ))
            .with_hint(hint)
        }
        e => e.into(),
    })?;
    let token = TokenFile::from_json(&secret)
        .map_err(|e| CliError::failed(format!("{}: {e}", path.display())))?;
    // Refuse before the token is spent: the key is written only after the CA answered, into a
    // directory made (and destinations checked) before it is asked.
    let key_path = a.out_dir.join(KEY_FILE);
    // A link (even a dangling one) counts: the key is never written through one.
    let no_key = || {
        if std::fs::symlink_metadata(&key_path).is_ok() {
            let hint = "the token is not spent: enroll into another --out-dir, one without \
                        key.pem";
            return Err(CliError::failed(format!(
                "{} already exists: refusing to overwrite a key; {hint}",
                key_path.display()
            ))
            .with_hint(hint));
        }
        Ok(())
    };
    no_key()?;
    let made = prepare_out_dir(&a.out_dir, &[CERT_FILE, BUNDLE_FILE, GRANT_FILE])?;
    // The key goes only where nobody else can replace it or the bundle beside it.
    agentid_fs::check_secret_dir(&a.out_dir).inspect_err(|_| remove_made_dir(&a.out_dir, made))?;
    // Held until the set is written (as `cert issue` holds it), and taken before the token is
    // spent: another command writing the directory meanwhile (`task open` between its key
    // check and its write) would mix its files with this key's. The key check runs again under
    // it (a command that held it may have written one since).
    let _lock = files::lock_dir(&a.out_dir)
        .and_then(|l| no_key().map(|()| l))
        .inspect_err(|_| remove_made_dir(&a.out_dir, made))?;
    let enrolled = TaskKey::generate(a.key_type.algorithm())
        .context("cannot make a key")
        .and_then(|key| {
            let pkcs8 = key.danger_pkcs8_der().to_vec();
            let enrolled = runtime()?
                .block_on(agentid_transport::enroll::enroll_with_token(
                    &token, key, TIMEOUT,
                ))
                .map_err(api_error(&token.ca_url))?;
            Ok((pkcs8, enrolled))
        });
    let (pkcs8, enrolled) = enrolled.inspect_err(|_| remove_made_dir(&a.out_dir, made))?;
    files::write_new_private_key(&key_path, &pkcs8)?;
    let pem: String = enrolled
        .credential
        .cert_chain()
        .iter()
        .map(|c| agentid_fs::pem_encode("CERTIFICATE", c.as_ref()))
        .collect();
    files::write_public(&a.out_dir.join(CERT_FILE), pem.as_bytes())?;
    files::write_public(&a.out_dir.join(BUNDLE_FILE), &enrolled.bundle_json)?;
    if let Some(g) = &enrolled.response.grant {
        files::write_public(&a.out_dir.join(GRANT_FILE), format!("{g}\n").as_bytes())?;
    }
    let r = &enrolled.response;
    match a.format.format {
        Format::Json => print_json(&json!({
            "identity": r.identity,
            "serial": r.serial,
            "not_after": r.not_after,
            "dir": a.out_dir.display().to_string(),
        })),
        Format::Text => print_text(&format!(
            "enrolled {} (serial {}, until {}) in {}\n",
            r.identity,
            r.serial,
            rfc3339(r.not_after),
            a.out_dir.display()
        )),
    }
}

// ---- ca list ----

/// Arguments of `ca list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// The page of tasks after this task id: the `next` the page before it ended with (the
    /// CA answers at most 1000 tasks a page).
    #[arg(long, value_name = "TASK", value_parser = parse_after)]
    pub after: Option<String>,
    #[command(flatten)]
    pub format: FormatArg,
}

/// An `--after` value: a task id.
fn parse_after(s: &str) -> Result<String, String> {
    agentid_protocol::TaskId::parse(s)
        .map(|t| t.as_str().to_owned())
        .map_err(|e| format!("not a task id: {e}"))
}

/// Runs `ca list`: one page of the live tasks the caller (a service with `list`) may see, and
/// (in text) how to ask for the next one when more may follow.
pub fn run_list(a: &ListArgs) -> CliResult {
    if a.remote.ca_url.is_none() {
        return Err(CliError::usage("ca list needs --ca-url and --cred"));
    }
    let client = a.remote.client()?;
    let r = runtime()?
        .block_on(client.list_after(a.after.as_deref()))
        .map_err(api_error(a.remote.url()))?;
    match a.format.format {
        Format::Json => print_json(&serde_json::to_value(&r).context("cannot encode JSON")?),
        Format::Text => {
            let mut out = String::new();
            for t in &r.tasks {
                // The store's text: whoever can write the store must not write to the
                // operator's terminal (escapes, a line break and a forged entry).
                let holder = if agentid_protocol::SpiffeId::parse(&t.holder).is_ok() {
                    t.holder.clone()
                } else {
                    format!(
                        "{} (not a SPIFFE ID: the CA's store holds this text)",
                        agentid_protocol::clean_text(t.holder.clone(), 512)
                    )
                };
                out.push_str(&format!("{holder} until {}\n", rfc3339(t.exp)));
            }
            if r.tasks.is_empty() {
                out.push_str(if r.next.is_some() {
                    "no live tasks on this page\n"
                } else {
                    "no live tasks\n"
                });
            }
            // A task id (`CaClient::list_after` refuses any other `next`).
            if let Some(next) = &r.next {
                out.push_str(&format!(
                    "more tasks may follow: add --after {next} for the next page\n"
                ));
            }
            print_text(&out)
        }
    }
}

// ---- revoke --ca-url ----

/// `agentid revoke --ca-url`: the target sent to the CA service.
pub fn run_revoke_remote(args: &crate::revoke::RevokeArgs) -> CliResult {
    if args.iss.is_some() {
        return Err(CliError::usage(
            "--iss (a link) is revoked locally with --ca DIR; the CA service revokes grants, tasks, agents, keys and serials",
        ));
    }
    let client = args.remote.client()?;
    let req = RevokeRequest {
        task: args.task.clone(),
        agent: args.agent.clone(),
        serial: args.serial.clone(),
        jkt: args.jkt.clone(),
        jti: args.jti.clone(),
        iss: None,
        reason: args.reason.clone(),
    };
    let r = runtime()?
        .block_on(client.revoke(&req))
        .map_err(api_error(args.remote.url()))?;
    match args.format.format {
        Format::Json => print_json(&json!({"kind": r.kind, "value": r.value, "exp": r.exp})),
        Format::Text => print_text(&format!(
            "revoked {} {} (listed until {}; the CA refuses it for good); the CA publishes it at once\n",
            r.kind,
            r.value,
            rfc3339(r.exp)
        )),
    }
}

// ---- cert renew --ca-url [--daemon] ----

/// Whether `dir` holds a `key.pem` other than `key`: the one rule for every command that writes
/// `cert.pem` into a directory (a certificate of another key beside `key.pem` leaves a pair
/// nothing can use, in place of a working one). A directory without `key.pem` holds none.
fn holds_another_key(dir: &Path, key: &agentid_protocol::PublicKey) -> CliResult<bool> {
    let path = dir.join(KEY_FILE);
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(false);
    }
    let held = agentid::files::read_task_key(&path)?;
    Ok(held.public_key() != key)
}

/// Writes the renewed `cred` as `dir/cert.pem`, only beside its own key (`key.pem` may have been
/// replaced since the directory was read: the operator rotating it with `cert issue --force`).
fn write_cert(dir: &Path, cred: &agentid_transport::Credential) -> CliResult {
    // Held while the key is compared and the certificate written: a command replacing the key
    // (`cert issue --force` holds the directory) cannot do so in between.
    let _lock = files::lock_dir(dir)?;
    if holds_another_key(dir, &cred.info().public_key)? {
        return Err(CliError::failed(format!(
            "{} is no longer the key of {} (it was replaced since this command read {}): the \
             renewed certificate is not written, {} is left as it is; renew the new credential \
             (start `agentid cert renew` again)",
            dir.join(KEY_FILE).display(),
            cred.identity().as_str(),
            dir.display(),
            dir.join(CERT_FILE).display()
        )));
    }
    let pem: String = cred
        .cert_chain()
        .iter()
        .map(|c| agentid_fs::pem_encode("CERTIFICATE", c.as_ref()))
        .collect();
    files::write_public(&dir.join(CERT_FILE), pem.as_bytes())
}

fn print_renewed(cred: &agentid_transport::Credential, format: Format) -> CliResult {
    let info = cred.info();
    match format {
        Format::Json => print_json(&json!({
            "identity": cred.identity().as_str(),
            "serial": info.serial,
            "not_after": info.not_after,
        })),
        Format::Text => print_text(&format!(
            "renewed {} (serial {}, until {})\n",
            cred.identity().as_str(),
            info.serial,
            rfc3339(info.not_after)
        )),
    }
}

/// Loads the credential directory a network command presents to the CA. An expired
/// certificate is named with its date and the next step: the CA service renews only a
/// certificate that is still valid, so only the operator can renew it now.
pub(crate) fn load_cred(dir: &Path) -> CliResult<CredentialDir> {
    // A directory missing a file (`task open` leaves none of the key) says what it lacks and
    // what a credential directory is, not only "No such file or directory".
    let missing: Vec<&str> = [CERT_FILE, KEY_FILE, BUNDLE_FILE]
        .into_iter()
        .filter(|f| std::fs::symlink_metadata(dir.join(f)).is_err())
        .collect();
    if !missing.is_empty() {
        let hint = format!(
            "a credential directory holds {CERT_FILE}, {KEY_FILE} (0600) and {BUNDLE_FILE}, as `agentid cert issue` and `agentid enroll` write them; after `agentid task open`, put the agent's key there as {KEY_FILE} and the CA's bundle as {BUNDLE_FILE}"
        );
        let paths: Vec<String> = missing
            .iter()
            .map(|f| dir.join(f).display().to_string())
            .collect();
        return Err(CliError::failed(format!(
            "{} is not a credential directory: no {}: {hint}",
            dir.display(),
            paths.join(", ")
        ))
        .with_hint(hint));
    }
    CredentialDir::load(dir).map_err(|e| {
        let expired = agentid::files::Holder::load(dir)
            .ok()
            .map(|h| h.leaf.not_after)
            .filter(|&not_after| crate::common::now_unix().is_ok_and(|now| not_after <= now));
        match expired {
            Some(not_after) => {
                let hint = format!(
                    "it expired at {}, and the CA service renews only a certificate still valid: run `agentid cert renew --ca CA_DIR --dir {}` as the operator, or enroll again",
                    rfc3339(not_after),
                    dir.display()
                );
                CliError::failed(format!("{e}: {hint}")).with_hint(hint)
            }
            None => CliError::from(e),
        }
    })
}

/// `agentid cert renew --ca-url URL --dir DIR [--daemon]`.
pub fn run_renew_remote(args: &crate::cert::renew::RenewArgs) -> CliResult {
    let Some(url) = &args.ca_url else {
        return Err(CliError::usage("name the CA: --ca DIR or --ca-url URL"));
    };
    let cred = load_cred(&args.dir)?;
    let verification = PeerVerification::new(
        cred.verifier_config()?
            .danger_accept_missing_or_stale_revocations(),
    )
    .context("cannot build the verifier")?;
    let held = cred.credential_with_chain()?;
    // Until when the certificate in `cert.pem` is valid (what every reader of the directory
    // uses, whatever this daemon holds in memory).
    let mut on_disk_until = held.info().not_after;
    let enroller =
        agentid_transport::enroll::Enroller::from_credential(url, held, verification, TIMEOUT)
            .with_ttl(args.ttl.ttl);
    let rt = runtime()?;
    if !args.daemon {
        let renewed = rt.block_on(enroller.renew()).map_err(api_error(url))?;
        write_cert(&args.dir, &renewed)?;
        return print_renewed(&renewed, args.format.format);
    }
    let source = enroller.credentials();
    let mut changes = agentid_transport::CredentialSource::subscribe(source.as_ref())
        .ok_or_else(|| CliError::failed("the credential source signals no changes"))?;
    rt.block_on(async {
        // Once at start, so that a mistake shows now, not silently at the renewal point: a
        // refusal (a `--ttl` the policy refuses, a revoked name) ends the daemon (status 1); a
        // CA it cannot reach now (a wrong `--ca-url`, or the CA restarting: the two look alike)
        // is said at once on stderr, and the daemon keeps running and retries at the renewal
        // point, as a daemon must outlive a CA restart. The renewed certificate is written (and
        // `--exec` run) by the loop below, as every later one.
        match enroller.renew().await {
            Ok(_) => {}
            Err(e) if e.is_transient() => {
                let e = api_error(url)(e);
                tracing::error!(
                    "{e}; the daemon keeps running and tries again at the renewal point (stop it and correct --ca-url if the URL is wrong)"
                );
            }
            Err(e) => return Err(api_error(url)(e)),
        }
        let run = enroller.run();
        tokio::pin!(run);
        // A renewed certificate `cert.pem` could not take yet (a full disk, a permission): kept
        // here and written again every few seconds, while the daemon goes on renewing.
        let mut unwritten: Option<std::sync::Arc<agentid_transport::Credential>> = None;
        let mut retry = tokio::time::interval(WRITE_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // `--exec` runs beside the renewals, never in their way (a slow command must not let
        // the certificate expire): one at a time, and a renewal written while it runs runs it
        // once more when it ends.
        let mut exec = crate::exec::Hook::new(&args.exec);
        loop {
            tokio::select! {
                r = &mut run => {
                    return r.map_err(api_error(url));
                }
                () = exec.finished() => {}
                c = changes.changed() => {
                    if c.is_err() {
                        return Err(CliError::failed("the credential source closed"));
                    }
                    unwritten = agentid_transport::CredentialSource::current(source.as_ref());
                    retry.reset_immediately();
                }
                _ = retry.tick(), if unwritten.is_some() => {
                    let Some(cur) = unwritten.take() else { continue };
                    match write_cert(&args.dir, &cur) {
                        Ok(()) => {
                            on_disk_until = cur.info().not_after;
                            // A report: a stdout that cannot take it (a log file on a full
                            // disk) must not stop the renewals, nor the command after them.
                            if let Err(e) = print_renewed(&cur, args.format.format) {
                                tracing::error!(error = %e, "the renewal could not be reported on stdout; the daemon goes on");
                            }
                            exec.renewed();
                        }
                        // The directory's key was replaced: what this daemon renews is no
                        // longer its credential, now or later.
                        Err(e)
                            if holds_another_key(&args.dir, &cur.info().public_key)
                                .unwrap_or(false) =>
                        {
                            return Err(e);
                        }
                        // Renewing in memory is of no use to the directory's readers once the
                        // certificate they read has expired: stop, so that whatever supervises
                        // the daemon sees it (as when renewals themselves keep failing).
                        Err(e) if crate::common::now_unix().is_ok_and(|now| now >= on_disk_until) => {
                            return Err(CliError::failed(format!(
                                "{e}; the certificate in {} expired at {} and no renewed one could be written since: stopping",
                                args.dir.join(CERT_FILE).display(),
                                rfc3339(on_disk_until)
                            ))
                            .with_hint("make cert.pem writable (a regular file of the user running the daemon, not a link) and start the daemon again"));
                        }
                        Err(e) => {
                            tracing::error!(error = %e, retry_secs = WRITE_RETRY.as_secs(), "the renewed certificate could not be written; the daemon keeps it and tries again");
                            unwritten = Some(cur);
                        }
                    }
                }
            }
        }
    })
}

/// How often the renewal daemon tries again to write a renewed certificate it could not write.
const WRITE_RETRY: Duration = Duration::from_secs(5);

// ---- task open / task child ----

/// `task` subcommands: certificates from the CA service for a CSR made elsewhere (the agent
/// keeps its key).
#[derive(Debug, clap::Subcommand)]
pub enum TaskCommand {
    /// Open a task for an agent from the agent's CSR, as a service with `open_task`.
    Open(TaskOpenArgs),
    /// Ask for a child in the caller's own task from the child's CSR, as the parent (a task
    /// holder the child's rule lists as `parent:AGENT`).
    Child(TaskChildArgs),
}

/// Arguments of `task open`.
#[derive(Debug, clap::Args)]
pub struct TaskOpenArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// The agent's PKCS#10 request (PEM or DER): only its key is used.
    #[arg(long)]
    pub csr: PathBuf,
    /// The agent.
    #[arg(long)]
    pub agent: String,
    /// The task id (default: generated).
    #[arg(long)]
    pub task: Option<String>,
    /// The grant's scope (space-separated tokens).
    #[arg(long)]
    pub scope: String,
    /// The grant's `max_depth` (default 0: a sealed task, with no delegation and no children).
    #[arg(long)]
    pub max_depth: Option<u8>,
    /// Certificate lifetime.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub ttl: Option<Duration>,
    /// Grant (task) lifetime.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub task_ttl: Option<Duration>,
    /// Where to write `cert.pem` and `grant.jwt` for the agent.
    #[arg(long)]
    pub out_dir: PathBuf,
    #[command(flatten)]
    pub format: FormatArg,
}

/// Arguments of `task child`.
#[derive(Debug, clap::Args)]
pub struct TaskChildArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// The child's PKCS#10 request (PEM or DER): only its key is used.
    #[arg(long)]
    pub csr: PathBuf,
    /// The child agent.
    #[arg(long)]
    pub agent: String,
    /// Certificate lifetime (never beyond the parent's chain).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub ttl: Option<Duration>,
    /// Where to write the child's `cert.pem`.
    #[arg(long)]
    pub out_dir: PathBuf,
    #[command(flatten)]
    pub format: FormatArg,
}

/// Runs a `task` subcommand.
pub fn run_task(cmd: &TaskCommand) -> CliResult {
    match cmd {
        TaskCommand::Open(a) => task_open(a),
        TaskCommand::Child(a) => task_child(a),
    }
}

/// A CSR file's DER (PEM `CERTIFICATE REQUEST` or DER); a private key or a certificate given
/// by mistake is refused before anything is sent.
fn read_csr(path: &Path) -> CliResult<Vec<u8>> {
    let bytes = crate::cert::issue::read_csr(path)?;
    let text = String::from_utf8_lossy(&bytes);
    if let Some(body) = text
        .split("-----BEGIN CERTIFICATE REQUEST-----")
        .nth(1)
        .and_then(|r| r.split("-----END CERTIFICATE REQUEST-----").next())
    {
        let b64: String = body.split_whitespace().collect();
        return base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
            .context(format!("{}: bad PEM", path.display()));
    }
    Ok(bytes)
}

fn b64url(d: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, d)
}

/// Before `task open`, `task child` or `cert sign` asks the CA: `out_dir` may hold a `key.pem`
/// only if it is the key of `csr` (DER, or PEM as `cert sign` passes it to the CA), the key the
/// certificate written there will certify. A CSR that does not parse is left to the CA to refuse
/// (`bad_csr`).
pub(crate) fn check_out_dir_key(out_dir: &Path, csr: &[u8]) -> CliResult {
    use rustls_pki_types::pem::PemObject as _;
    use x509_parser::prelude::FromDer;
    let pem = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr).ok();
    let der = pem.as_ref().map_or(csr, |d| d.as_ref());
    let Some(key) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
        .ok()
        .and_then(|(_, req)| {
            agentid_protocol::PublicKey::from_spki_der(
                req.certification_request_info.subject_pki.raw,
            )
            .ok()
        })
    else {
        return Ok(());
    };
    if holds_another_key(out_dir, &key)? {
        return Err(CliError::failed(format!(
            "{} holds another key than the CSR's: the certificate written there would not match \
             it; nothing was sent to the CA; choose another --out-dir (or the directory of the \
             CSR's key)",
            out_dir.join(KEY_FILE).display()
        )));
    }
    Ok(())
}

/// Writes `cert.pem` (and `grant.jwt`) of a CA response into `dir`.
fn write_response(dir: &Path, r: &agentid_api::CertificateResponse) -> CliResult {
    let mut pem = String::new();
    for c in &r.certs {
        let der = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, c)
            .context("the CA's certificate is not base64url")?;
        pem.push_str(&agentid_fs::pem_encode("CERTIFICATE", &der));
    }
    files::ensure_dir(dir)?;
    files::write_public(&dir.join(CERT_FILE), pem.as_bytes())?;
    if let Some(g) = &r.grant {
        files::write_public(&dir.join(GRANT_FILE), format!("{g}\n").as_bytes())?;
    }
    Ok(())
}

fn print_issued(r: &agentid_api::CertificateResponse, dir: &Path, format: Format) -> CliResult {
    match format {
        Format::Json => print_json(&json!({
            "identity": r.identity,
            "serial": r.serial,
            "not_after": r.not_after,
            "dir": dir.display().to_string(),
        })),
        Format::Text => print_text(&format!(
            "issued {} (serial {}, until {}) in {}\n",
            r.identity,
            r.serial,
            rfc3339(r.not_after),
            dir.display()
        )),
    }
}

fn task_open(a: &TaskOpenArgs) -> CliResult {
    // Malformed values are the command line's (status 2), before any file or connection.
    if let Some(t) = &a.task {
        parse_task(t)?;
    }
    crate::delegate::parse_scope(std::slice::from_ref(&a.scope))?;
    let client = a.remote.client()?;
    let csr = read_csr(&a.csr)?;
    let req = agentid_api::OpenTaskRequest {
        csr: b64url(&csr),
        task: TokenRequest {
            agent: a.agent.clone(),
            task: a.task.clone(),
            scope: a.scope.split_whitespace().map(str::to_owned).collect(),
            max_depth: a.max_depth,
            ttl_secs: a.ttl.map(|d| d.as_secs()),
            task_ttl_secs: a.task_ttl.map(|d| d.as_secs()),
            ..Default::default()
        },
    };
    let made = prepare_out_dir(&a.out_dir, &[CERT_FILE, GRANT_FILE])?;
    // Held until the response is written (as `cert issue` holds it): the key compared below
    // stays the directory's.
    let _lock = files::lock_dir(&a.out_dir).inspect_err(|_| remove_made_dir(&a.out_dir, made))?;
    check_out_dir_key(&a.out_dir, &csr).inspect_err(|_| remove_made_dir(&a.out_dir, made))?;
    let r = runtime()?
        .block_on(client.open_task(&req))
        .map_err(api_error(a.remote.url()))
        .inspect_err(|_| remove_made_dir(&a.out_dir, made))?;
    write_response(&a.out_dir, &r)?;
    print_issued(&r, &a.out_dir, a.format.format)
}

fn task_child(a: &TaskChildArgs) -> CliResult {
    let client = a.remote.client()?;
    let csr = read_csr(&a.csr)?;
    let req = agentid_api::ChildRequest {
        agent: a.agent.clone(),
        csr: b64url(&csr),
        ttl_secs: a.ttl.map(|d| d.as_secs()),
        parent_chain: None,
    };
    let made = prepare_out_dir(&a.out_dir, &[CERT_FILE])?;
    // Held until the response is written (as `cert issue` holds it): the key compared below
    // stays the directory's.
    let _lock = files::lock_dir(&a.out_dir).inspect_err(|_| remove_made_dir(&a.out_dir, made))?;
    check_out_dir_key(&a.out_dir, &csr).inspect_err(|_| remove_made_dir(&a.out_dir, made))?;
    let r = runtime()?
        .block_on(client.issue_child(&req))
        .map_err(api_error(a.remote.url()))
        .inspect_err(|_| remove_made_dir(&a.out_dir, made))?;
    write_response(&a.out_dir, &r)?;
    print_issued(&r, &a.out_dir, a.format.format)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA answer (a faulty replica, whoever holds the CA service's TLS key) whose `task` is
    /// not a task id: written into the token file as the identity, and printed with its
    /// terminal escapes, or making another identity (`t1/task/t2`).
    #[test]
    fn a_token_answer_naming_no_task_id_is_refused() {
        let td = agentid_protocol::TrustDomain::parse("example.org").unwrap();
        let mut r = agentid_api::TokenResponse {
            token: "secret".into(),
            agent: "planner".into(),
            task: "t1".into(),
            expires: 0,
            root_sha256: String::new(),
        };
        assert_eq!(
            answered_identity(&td, &r).unwrap(),
            "spiffe://example.org/agent/planner/task/t1"
        );
        for bad in ["", "t1\u{1b}[2J\nforged", "t1/task/t2", "../x", "t 1"] {
            r.task = bad.into();
            let e = answered_identity(&td, &r).unwrap_err().to_string();
            assert!(!e.chars().any(char::is_control), "{e:?}");
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn an_expired_credential_is_told_with_the_way_back() {
        let e = api_error("https://127.0.0.1:1")(EnrollError::Transport(
            agentid_transport::Error::NoCredential,
        ));
        let shown = format!("{e}");
        assert!(
            shown.contains("expired before it could be renewed"),
            "{shown}"
        );
        assert!(shown.contains("agentid enroll --token-file"), "{shown}");
    }
}
