//! Interop with an independent TLS stack: OpenSSL's `s_client`, holding agentid-issued
//! certificates, against an agentid server. A certificate from our CA completes the TLS 1.3
//! handshake (the server then waits for the agentid hello that `s_client` never sends: the
//! failure is NOT at the certificate stage), and `s_client` validates our server's chain with
//! only our root. A certificate from a foreign CA, or none, is refused by our server during the
//! TLS handshake.
//!
//! Without the `openssl` binary the test fails when `CI` is set, and prints SKIP otherwise.
#![cfg(test)]

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentid::transport::{
    AgentServer, CertError, ConnectionLimits, Error, MemoryCredentials, PeerPolicy, TimeoutKind,
};
use support::*;

/// The files `s_client` reads for one client identity.
struct ClientFiles {
    leaf: PathBuf,
    chain: PathBuf,
    key: PathBuf,
}

fn write_client_files(dir: &Path, name: &str, agent: &Agent) -> ClientFiles {
    let files = ClientFiles {
        leaf: dir.join(format!("{name}-leaf.pem")),
        chain: dir.join(format!("{name}-chain.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&files.leaf, pem("CERTIFICATE", &agent.cert.leaf.der)).unwrap();
    std::fs::write(
        &files.chain,
        pem("CERTIFICATE", &agent.cert.intermediate_der),
    )
    .unwrap();
    std::fs::write(&files.key, pem("PRIVATE KEY", &agent.key_der)).unwrap();
    files
}

/// Runs `s_client` against `port` and returns its stdout and stderr. It holds the connection
/// open (`-ign_eof`) until the server closes it; killed after 10 s at most.
fn s_client(port: u16, root: &Path, client: Option<&ClientFiles>) -> (String, String) {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-tls1_3",
        "-alpn",
        "agentid/1",
    ])
    .args([
        "-noservername",
        "-ign_eof",
        "-verify_return_error",
        "-CAfile",
    ])
    .arg(root);
    if let Some(f) = client {
        cmd.arg("-cert")
            .arg(&f.leaf)
            .arg("-cert_chain")
            .arg(&f.chain)
            .arg("-key")
            .arg(&f.key);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.wait();
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (out, err)
}

/// The server-side outcome expected for one `s_client` connection.
#[derive(Debug)]
enum Expect {
    /// The TLS handshake (certificates included) succeeded; the server then timed out waiting
    /// for the agentid hello.
    TlsCompleted,
    /// Refused during the TLS handshake by our certificate checks.
    Refused(fn(&CertError) -> bool),
    /// Refused during the TLS handshake: client certificates are mandatory.
    NoCertificate,
}

#[tokio::test]
async fn openssl_s_client_against_our_server() {
    if !agentid_test_support::openssl::available() {
        return;
    }
    let a = TestCa::new("example.org");
    let impostor = TestCa::new("example.org");
    let other = TestCa::new("other.org");
    let librarian = a.open_task("librarian", "repo:serve", 0, None);
    let planner = a.open_task("planner", "repo:read", 0, None);
    let search = a.service("search");
    let fake = impostor.open_task("planner", "repo:read", 0, None);
    let foreign = other.open_task("planner", "repo:read", 0, None);

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.pem");
    std::fs::write(&root, pem("CERTIFICATE", a.ca.root_der())).unwrap();
    let list = a.revocations();

    // (name, s_client's certificate, expected server outcome)
    let cases: Vec<(&str, Option<ClientFiles>, Expect)> = vec![
        (
            "agentid-issued task certificate",
            Some(write_client_files(dir.path(), "planner", &planner)),
            Expect::TlsCompleted,
        ),
        (
            "agentid-issued service certificate",
            Some(write_client_files(dir.path(), "search", &search)),
            Expect::TlsCompleted,
        ),
        (
            "our trust domain's ID from a foreign CA",
            Some(write_client_files(dir.path(), "fake", &fake)),
            Expect::Refused(|e| matches!(e, CertError::Chain(_))),
        ),
        (
            "a foreign trust domain's CA",
            Some(write_client_files(dir.path(), "foreign", &foreign)),
            Expect::Refused(|e| matches!(e, CertError::UnknownTrustDomain(_))),
        ),
        ("no client certificate", None, Expect::NoCertificate),
    ];
    for (name, files, expect) in cases {
        let sv = verification(&librarian.id, &[a.bundle()], &[&list]);
        let limits = ConnectionLimits {
            handshake_timeout: Duration::from_secs(5),
            first_frame_timeout: Duration::from_secs(1),
            ..ConnectionLimits::default()
        };
        let policy = PeerPolicy::agents_in(a.td.clone()).or(PeerPolicy::services_in(a.td.clone()));
        let server = AgentServer::builder(
            std::sync::Arc::new(MemoryCredentials::new(librarian.credential())),
            sv,
            policy,
        )
        .limits(limits)
        .build()
        .unwrap();
        let (addr, h) = serve(server, 1).await;
        let root = root.clone();
        let (out, err) =
            tokio::task::spawn_blocking(move || s_client(addr.port(), &root, files.as_ref()))
                .await
                .unwrap();
        let result = accepted(h).await;
        let transcript = format!("--- stdout\n{out}\n--- stderr\n{err}");
        match (&expect, &result) {
            (Expect::TlsCompleted, Err(Error::Timeout(TimeoutKind::FirstFrame))) => {
                // OpenSSL validated our server's chain with our root alone, over TLS 1.3 and ALPN.
                assert!(
                    out.contains("Verify return code: 0 (ok)"),
                    "{name}: {transcript}"
                );
                assert!(
                    out.contains("ALPN protocol: agentid/1"),
                    "{name}: {transcript}"
                );
                assert!(out.contains("TLSv1.3"), "{name}: {transcript}");
            }
            (Expect::Refused(f), Err(Error::Certificate(e))) => {
                assert!(f(e), "{name}: wrong refusal {e:?}")
            }
            (Expect::NoCertificate, Err(Error::Tls(rustls::Error::NoCertificatesPresented))) => {}
            (_, other) => panic!(
                "{name}: expected {expect:?}, server got {:?}\n{transcript}",
                other.as_ref().map(|s| s.peer().id.to_string())
            ),
        }
    }
}
