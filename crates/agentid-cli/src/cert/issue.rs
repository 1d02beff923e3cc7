//! `agentid cert issue` (a key made here) and `agentid cert sign` (a CSR made elsewhere).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use agentid::files::{read_chain, Holder, GRANT_FILE, KEY_FILE};
use agentid_ca::{
    CertificateAuthority, ChildRequest, IssuedCertificate, KeySource, OpenTaskRequest,
    ServiceRequest, TaskCredentials, TaskRequester,
};
use agentid_protocol::{AgentId, Chain, PeerId, ServiceId, TaskId, TaskIdentity, TaskKey};
use serde_json::{json, Value};

use super::grant_opts::{parse_task, GrantOpts};
use super::{cert_json, cert_text, make_csr, write_cert_and_bundles, CaDirArg, TtlArg, Written};
use crate::common::{print_json, print_text, rfc3339, Format, FormatArg, KeyType};
use crate::error::{CliError, CliResult, Context};
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
    #[arg(long, value_enum, default_value_t = KeyType::P256)]
    pub key_type: KeyType,
    /// Where to write the files (default: `./NAME`).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
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
    /// The task id to open.
    #[arg(long)]
    pub task: String,
    #[command(flatten)]
    pub ttl: TtlArg,
    #[command(flatten)]
    pub grant: GrantOpts,
    /// Where to write `cert.pem`, `grant.jwt`, `bundle.pem` and `bundle.json` (default: `./NAME`).
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
    let ca = args.ca.open()?;
    let td = ca.trust_domain().clone();
    let name = args
        .agent
        .as_deref()
        .or(args.service.as_deref())
        .unwrap_or_default();
    let out = args.out_dir.clone().unwrap_or_else(|| PathBuf::from(name));
    let alg = args.key_type.algorithm();

    if let Some(service) = &args.service {
        let id = ServiceId::new(&td, service).context(format!("bad --service {service:?}"))?;
        let cert = with_new_key(&out, alg, id.as_str(), |key_source| {
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
    let agent = AgentId::new(&td, name).context(format!("bad --agent {name:?}"))?;
    if let Some(parent_dir) = &args.parent {
        let parent = load_parent(parent_dir)?;
        let identity = TaskIdentity::new(&agent, &parent.identity.task_id())?;
        let cert = with_new_key(&out, alg, identity.as_str(), |key_source| {
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
    with_new_key(&out, alg, identity.as_str(), |key_source| {
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
    let ca = args.ca.open()?;
    let scope = args.grant.scope()?;
    let task = parse_task(&args.task)?;
    let csr = files::read(&args.csr)?;
    let out = args
        .out_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.agent));
    files::ensure_dir(&out)?;
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
    finish(
        &ca,
        &out,
        &creds.certificate,
        Some(&creds),
        args.format.format,
    )
}

/// Makes a task key, writes it to `OUT/key.pem` (0600, never overwriting) before asking the CA,
/// and removes it again if the CA refuses: no key is left behind for a certificate that was not
/// issued, and no certificate is issued for a key that could not be stored.
fn with_new_key(
    out: &Path,
    alg: agentid_protocol::Algorithm,
    uri: &str,
    issue: impl FnOnce(KeySource) -> CliResult<IssuedCertificate>,
) -> CliResult<IssuedCertificate> {
    files::ensure_dir(out)?;
    let key_path = out.join(KEY_FILE);
    let key = TaskKey::generate(alg)?;
    let csr = make_csr(&key, uri)?;
    files::write_new_private_key(&key_path, key.danger_pkcs8_der())?;
    match issue(KeySource::Csr(csr)) {
        Ok(c) => Ok(c),
        Err(e) => {
            let _ = std::fs::remove_file(&key_path);
            Err(e)
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
