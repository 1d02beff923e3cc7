//! `agentid cert issue` (a key made here) and `agentid cert sign` (a CSR made elsewhere).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use agentid::files::{
    read_chain, Holder, BUNDLE_FILE, BUNDLE_PEM_FILE, CERT_FILE, CHAIN_FILE, GRANT_FILE, KEY_FILE,
};
use agentid_ca::{
    CertificateAuthority, ChildRequest, IssuedCertificate, KeySource, OpenTaskRequest,
    ServiceRequest, TaskCredentials, TaskRequester,
};
use agentid_protocol::{AgentId, Chain, PeerId, ServiceId, TaskId, TaskIdentity, TaskKey};
use serde_json::{json, Value};

use super::grant_opts::{parse_task, GrantOpts};
use super::{cert_json, cert_text, make_csr, write_cert_and_bundles, CaDirArg, TtlArg, Written};
use crate::common::{key_type_parser, print_json, print_text, rfc3339, Format, FormatArg, KeyType};
use crate::error::{ArgContext, CliError, CliResult, Context};
use crate::files;

/// Arguments of `cert issue`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["agent", "service"])))]
pub struct IssueArgs {
    #[command(flatten)]
    pub ca: CaDirArg,
    /// The agent name: opens a task for it (with a grant), or with `--parent` issues a child.
    #[arg(long)]
    pub agent: Option<String>,
    /// A service name: a service certificate (`spiffe://TD/svc/NAME`), never with a grant.
    #[arg(long)]
    pub service: Option<String>,
    /// The parent's directory (its `cert.pem`, `key.pem`, and `chain.jwt` or `grant.jwt`): a
    /// child certificate in the parent's task, without a grant, never outliving the parent's
    /// chain.
    #[arg(
        long,
        value_name = "PARENT_DIR",
        requires = "agent",
        conflicts_with = "task"
    )]
    pub parent: Option<PathBuf>,
    /// The task id (default: generated, 128 random bits).
    #[arg(long)]
    pub task: Option<String>,
    #[command(flatten)]
    pub ttl: TtlArg,
    #[command(flatten)]
    pub grant: GrantOpts,
    /// Type of the key made here.
    #[arg(long, value_parser = key_type_parser(), default_value_t = KeyType::P256)]
    pub key_type: KeyType,
    /// Where to write the files (default: `./NAME`); never inside the CA directory.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Replace the credential files already in the output directory (a new key; the old
    /// key, certificate and chain files are replaced only once the new certificate is issued).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub format: FormatArg,
}

/// Arguments of `cert sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    #[command(flatten)]
    pub ca: CaDirArg,
    /// The PKCS#10 request (PEM or DER). Only its key is used; it may request no SAN or exactly
    /// the task identity as URI SAN, and nothing beyond `digitalSignature`, serverAuth/clientAuth.
    #[arg(long)]
    pub csr: PathBuf,
    /// The agent name.
    #[arg(long)]
    pub agent: String,
    /// The task id to open (default: generated, 128 random bits).
    #[arg(long)]
    pub task: Option<String>,
    #[command(flatten)]
    pub ttl: TtlArg,
    #[command(flatten)]
    pub grant: GrantOpts,
    /// Where to write `cert.pem`, `grant.jwt`, `bundle.pem` and `bundle.json` (default: `./NAME`);
    /// never inside the CA directory.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    #[command(flatten)]
    pub format: FormatArg,
}

/// Runs `cert issue`.
pub fn run_issue(args: &IssueArgs) -> CliResult {
    if (args.parent.is_some() || args.service.is_some()) && args.grant.any() {
        return Err(CliError::usage(
            "grant options (--scope, --aud, --principal, --max-depth, --task-ttl, --limit, --may-delegate-to) apply only when opening a task; a child gets its authority from `agentid delegate`, a service never holds one",
        ));
    }
    if args.service.is_some() && args.task.is_some() {
        return Err(CliError::usage("--task does not apply to a service"));
    }
    if args.service.is_some() && args.parent.is_some() {
        return Err(CliError::usage(
            "--parent opens a child in a task; a service has no parent (drop --parent)",
        ));
    }
    let ca = args.ca.open()?;
    let td = ca.trust_domain().clone();
    let name = args
        .agent
        .as_deref()
        .or(args.service.as_deref())
        .unwrap_or_default();
    let out = args.out_dir.clone().unwrap_or_else(|| PathBuf::from(name));
    refuse_inside_ca(&out, &args.ca.ca)?;
    let alg = args.key_type.algorithm();
    let new_key = NewKey {
        out: &out,
        alg,
        force: args.force,
    };

    if let Some(service) = &args.service {
        let id = ServiceId::new(&td, service).bad_arg("--service", service)?;
        let (cert, _lock) = new_key.issue(id.as_str(), |key_source| {
            ca.issue_service(
                &ServiceRequest {
                    service: service.clone(),
                    key: key_source,
                    ttl: args.ttl.ttl,
                },
                SystemTime::now(),
            )
            .map_err(CliError::from)
        })?;
        return finish(&ca, &out, &cert, None, args.format.format);
    }
    let agent = AgentId::new(&td, name).bad_arg("--agent", name)?;
    if let Some(parent_dir) = &args.parent {
        let parent = load_parent(parent_dir)?;
        let identity = TaskIdentity::new(&agent, &parent.identity.task_id())?;
        let (cert, _lock) = new_key.issue(identity.as_str(), |key_source| {
            let req = ChildRequest {
                parent: parent.identity.clone(),
                parent_chain: parent.chain.clone(),
                agent: name.to_owned(),
                key: key_source,
                ttl: args.ttl.ttl,
            };
            ca.issue_child(&req, SystemTime::now())
                .map_err(CliError::from)
        })?;
        return finish(&ca, &out, &cert, None, args.format.format);
    }
    let scope = args.grant.scope()?;
    let task = match &args.task {
        Some(t) => parse_task(t)?,
        None => TaskId::generate()?,
    };
    let identity = TaskIdentity::new(&agent, &task)?;
    let mut creds = None;
    let (_, _lock) = new_key.issue(identity.as_str(), |key_source| {
        let mut req =
            OpenTaskRequest::new(name, key_source, TaskRequester::Operator, scope.clone());
        req.task = Some(task.clone());
        req.ttl = args.ttl.ttl;
        args.grant.apply(&mut req)?;
        let c = ca.open_task(&req, SystemTime::now())?;
        let cert = c.certificate.clone();
        creds = Some(c);
        Ok(cert)
    })?;
    let creds = creds.ok_or_else(|| CliError::failed("no credentials returned"))?;
    finish(
        &ca,
        &out,
        &creds.certificate,
        Some(&creds),
        args.format.format,
    )
}

/// Runs `cert sign`.
pub fn run_sign(args: &SignArgs) -> CliResult {
    let scope = args.grant.scope()?;
    let task = match &args.task {
        Some(t) => parse_task(t)?,
        None => TaskId::generate()?,
    };
    let out = args
        .out_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.agent));
    refuse_inside_ca(&out, &args.ca.ca)?;
    let ca = args.ca.open()?;
    let csr = read_csr(&args.csr)?;
    let mut destinations = public_files(&out);
    destinations.push(out.join(GRANT_FILE));
    files::check_public_destinations(&destinations)?;
    // An existing directory is locked before anything is issued for it (see `NewKey::issue`).
    let held = if out.is_dir() {
        Some(files::lock_dir(&out)?)
    } else {
        None
    };
    // The certificate goes only beside the CSR's own key (as for `task open`).
    crate::net::check_out_dir_key(&out, &csr)?;
    let mut req = OpenTaskRequest::new(
        args.agent.clone(),
        KeySource::Csr(csr),
        TaskRequester::Operator,
        scope,
    );
    req.task = Some(task);
    req.ttl = args.ttl.ttl;
    args.grant.apply(&mut req)?;
    let creds = ca.open_task(&req, SystemTime::now())?;
    // Only now, with a certificate to put in it: a refused request leaves nothing behind.
    files::ensure_dir(&out)?;
    let _lock = match held {
        Some(l) => l,
        None => files::lock_dir(&out)?,
    };
    finish(
        &ca,
        &out,
        &creds.certificate,
        Some(&creds),
        args.format.format,
    )
}

/// Refuses an output directory inside the CA directory (status 2): an agent's directory is
/// handed to the agent, and must never hold or sit among the CA's keys.
fn refuse_inside_ca(out: &Path, ca: &Path) -> CliResult<()> {
    let Ok(ca_abs) = ca.canonicalize() else {
        return Ok(()); // no CA there: opening it fails with the reason
    };
    // The deepest existing ancestor of `out`, resolved, then the rest as written.
    let mut existing = out.to_path_buf();
    let mut rest = Vec::new();
    let resolved = loop {
        match existing.canonicalize() {
            Ok(p) => break Some(p),
            Err(_) => match (existing.file_name(), existing.parent()) {
                (Some(n), Some(parent)) => {
                    rest.push(n.to_owned());
                    existing = if parent.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        parent.to_path_buf()
                    };
                }
                _ => break None,
            },
        }
    };
    if resolved.is_some_and(|p| p.starts_with(&ca_abs)) {
        return Err(CliError::usage(format!(
            "--out-dir {} is inside the CA directory {}: an agent's files must never sit among the CA's keys; choose a directory outside it",
            out.display(),
            ca.display()
        )));
    }
    Ok(())
}

/// Reads a CSR file, telling a private key (PEM, or DER: PKCS#8, SEC1 or PKCS#1) or a
/// certificate given by mistake from a request; what it refuses is never sent anywhere. The
/// file may be another user's (the agent that made it), but one that others could have
/// replaced is refused ([`files::read_handed`]).
pub(crate) fn read_csr(path: &Path) -> CliResult<Vec<u8>> {
    let bytes = files::read_handed(path)?;
    let text = String::from_utf8_lossy(&bytes);
    let what = if text.contains("-----BEGIN") && !text.contains("CERTIFICATE REQUEST-----") {
        Some(if text.contains("PRIVATE KEY-----") {
            "a private key"
        } else if text.contains("-----BEGIN CERTIFICATE-----") {
            "a certificate"
        } else {
            "PEM that is not a certification request"
        })
    } else if rustls_pki_types::PrivateKeyDer::try_from(bytes.as_slice()).is_ok() {
        // Every private key format starts SEQUENCE { INTEGER; a request, SEQUENCE { SEQUENCE.
        Some("a private key")
    } else {
        None
    };
    if let Some(what) = what {
        return Err(CliError::failed(format!(
            "{}: {what}, not a CSR; make one with `openssl req -new -key KEY -subj / -out req.csr` and pass it as --csr",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The public files [`finish`] writes into every output directory (`grant.jwt`, written for a
/// task only, is checked by the commands that write it).
fn public_files(out: &Path) -> Vec<PathBuf> {
    [CERT_FILE, BUNDLE_PEM_FILE, BUNDLE_FILE]
        .map(|f| out.join(f))
        .to_vec()
}

/// Where a new task key goes, and whether it may replace the credential files there.
struct NewKey<'a> {
    out: &'a Path,
    alg: agentid_protocol::Algorithm,
    force: bool,
}

impl NewKey<'_> {
    /// Makes a task key, writes it (0600, never over another file) before asking the CA, and
    /// removes it again if the CA refuses: no key is left behind for a certificate that was not
    /// issued, no certificate is issued for a key that could not be stored, and an output
    /// directory made for a refused request is removed too. With `force`, the new key waits
    /// beside the old one and replaces it (and a chain of the old key) once issued. The
    /// directory stays locked ([`files::DirLock`], returned) until the caller has written the
    /// certificate beside the key.
    fn issue(
        &self,
        uri: &str,
        issue: impl FnOnce(KeySource) -> CliResult<IssuedCertificate>,
    ) -> CliResult<(IssuedCertificate, files::DirLock)> {
        let out = self.out;
        // Refused before anything is issued and before a key is replaced: a certificate that
        // cannot be written must not cost the directory the key its certificate matches.
        files::check_public_destinations(&public_files(out))?;
        let created_dir = !out.exists();
        files::ensure_dir(out)?;
        // Before anything in it is read or replaced: the staged key's name below is the same
        // for every run, and the key, certificate and grant written must be one run's set.
        let lock = match files::lock_dir(out) {
            Ok(l) => l,
            Err(e) => {
                if created_dir {
                    let _ = std::fs::remove_dir(out);
                }
                return Err(e);
            }
        };
        let key_path = out.join(KEY_FILE);
        let replacing = self.force && key_path.exists();
        let staged = if replacing {
            out.join(format!(".{KEY_FILE}.new"))
        } else {
            key_path.clone()
        };
        if replacing {
            // A leftover of an interrupted --force run (never a key in use).
            let _ = std::fs::remove_file(&staged);
        }
        let cleanup = || {
            let _ = std::fs::remove_file(&staged);
            if created_dir {
                let _ = std::fs::remove_dir(out);
            }
        };
        let key = TaskKey::generate(self.alg)?;
        let csr = make_csr(&key, uri)?;
        if let Err(e) = files::write_new_private_key(&staged, key.danger_pkcs8_der()) {
            if created_dir {
                let _ = std::fs::remove_dir(out);
            }
            return Err(if key_path.exists() && !self.force {
                CliError::failed(format!(
                    "{}: refusing to overwrite a key; pass --force to replace the credentials in {}, or choose another --out-dir",
                    key_path.display(),
                    out.display()
                ))
            } else {
                e
            });
        }
        match issue(KeySource::Csr(csr)) {
            Ok(c) => {
                if replacing {
                    std::fs::rename(&staged, &key_path)
                        .context(format!("cannot replace {}", key_path.display()))?;
                    // Chains bound to the old key are of no use to the new one (a new
                    // task's grant is written next).
                    for stale in [CHAIN_FILE, GRANT_FILE] {
                        let _ = std::fs::remove_file(out.join(stale));
                    }
                }
                Ok((c, lock))
            }
            Err(e) => {
                cleanup();
                Err(e)
            }
        }
    }
}

/// The parent a child certificate is requested for.
struct Parent {
    identity: TaskIdentity,
    chain: Option<Chain>,
}

/// Loads the parent's identity from its certificate, proves the caller holds the parent's key
/// (the key file must match the certificate), and reads its chain (only ever used to shorten the
/// child's certificate).
fn load_parent(dir: &Path) -> CliResult<Parent> {
    let holder = Holder::load(dir)?;
    let PeerId::Task(identity) = holder.leaf.id else {
        return Err(CliError::failed(format!(
            "{}: the parent must be an agent's task identity, not a service",
            dir.display()
        )));
    };
    let chain = read_chain(dir)?.map(|(_, chain)| chain);
    Ok(Parent { identity, chain })
}

fn finish(
    ca: &CertificateAuthority,
    out: &Path,
    cert: &IssuedCertificate,
    creds: Option<&TaskCredentials>,
    format: Format,
) -> CliResult {
    let mut written = Written::default();
    if out.join(KEY_FILE).exists() {
        written.0.push(out.join(KEY_FILE));
    }
    write_cert_and_bundles(ca, cert, out, &mut written)?;
    if let Some(c) = creds {
        written.public(out.join(GRANT_FILE), format!("{}\n", c.grant).as_bytes())?;
    }
    let task = match &cert.identity {
        PeerId::Task(t) => Value::from(t.task_id().as_str()),
        PeerId::Service(_) => Value::Null,
    };
    match format {
        Format::Json => {
            let mut v = cert_json(cert);
            if let Value::Object(m) = &mut v {
                m.insert("task".into(), task);
                m.insert("out_dir".into(), Value::from(out.display().to_string()));
                m.insert("files".into(), written.json());
                m.insert(
                    "grant".into(),
                    creds.map_or(
                        Value::Null,
                        |c| json!({ "jti": c.grant_jti, "exp": c.grant_exp }),
                    ),
                );
            }
            print_json(&v)
        }
        Format::Text => {
            let mut s = cert_text(cert);
            if let Some(c) = creds {
                s.push_str(&format!(
                    "grant:     jti {} until {}\n",
                    c.grant_jti,
                    rfc3339(c.grant_exp)
                ));
            }
            s.push_str(&format!(
                "wrote:     {}\n",
                written
                    .0
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            print_text(&s)
        }
    }
}
