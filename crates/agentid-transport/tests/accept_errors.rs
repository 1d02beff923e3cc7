//! Accept errors are backed off, never fatal: a listener that runs out of file descriptors
//! (`EMFILE`) serves again as soon as descriptors are free. Alone in its test binary because it
//! lowers the process's file limit.
#![cfg(test)]

mod support;

use std::time::Duration;

use agentid_transport::{AgentServer, PeerPolicy};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use support::*;
use tokio::net::TcpSocket;

/// Descriptors open now (the directory listing's own descriptor not counted).
fn open_files() -> u64 {
    (std::fs::read_dir("/proc/self/fd").unwrap().count() as u64).saturating_sub(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accept_loop_survives_running_out_of_file_descriptors() {
    if !std::path::Path::new("/proc/self/fd").exists() {
        eprintln!("skipped: no /proc/self/fd to count open files");
        return;
    }
    let a = Domain::new("example.org");
    let server_creds = credentials(&a.ca, SERVER);
    let client_creds = credentials(&a.ca, CLIENT);
    let sv = verification(SERVER, &[&a], false);
    let cv = verification(CLIENT, &[&a], false);
    let srv = AgentServer::builder(server_creds, sv, PeerPolicy::danger_any())
        .limits(limits())
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut sessions = srv.listen(listener);
    let addr = sessions.local_addr().unwrap();

    // Sockets made while descriptors are available; connected once none are left, so that
    // the server's accept fails with EMFILE for each of them.
    let sockets: Vec<TcpSocket> = (0..8).map(|_| TcpSocket::new_v4().unwrap()).collect();
    let saved = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            // Below the count: no new descriptor, even if a few close meanwhile.
            current: Some(open_files().saturating_sub(4)),
            maximum: saved.maximum,
        },
    )
    .unwrap();
    let mut held = Vec::new();
    for s in sockets {
        held.push(
            tokio::time::timeout(T, s.connect(addr))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // The accept loop is failing (and backing off) now: nothing reaches the handshake.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pending_while_out = srv.admission().pending_handshakes();
    setrlimit(Resource::Nofile, saved).unwrap();
    assert_eq!(
        pending_while_out, 0,
        "accepts succeeded without descriptors"
    );
    drop(held);

    // Descriptors are back: the same listener serves a client.
    let c = client(client_creds, cv, PeerPolicy::danger_any());
    let served = tokio::spawn(async move {
        let (mut s, _) = tokio::time::timeout(T, sessions.next())
            .await
            .unwrap()
            .unwrap();
        let m = s.recv().await.unwrap().unwrap();
        s.send(&m).await.unwrap();
    });
    let mut cs = tokio::time::timeout(T, c.connect(addr))
        .await
        .unwrap()
        .unwrap();
    cs.send(b"still serving").await.unwrap();
    let reply = tokio::time::timeout(T, cs.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&reply[..], b"still serving");
    tokio::time::timeout(T, served).await.unwrap().unwrap();
}
