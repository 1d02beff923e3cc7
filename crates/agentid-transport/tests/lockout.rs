//! Availability under unauthenticated load: silent sockets from many source addresses cannot
//! keep a legitimate client out (the handshake rules of `ConnectionLimits`).
//!
//! Sized by `AGENTID_LOAD` (`ci`, the default, or `full`).
#![cfg(test)]

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentid_transport::{AgentServer, ConnectionLimits, PeerPolicy};
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;

struct Load {
    /// Attacker source addresses, 127.0.0.2 and up.
    sources: usize,
    /// Silent sockets per source address.
    per_source: usize,
    /// Legitimate connections attempted (from 127.0.0.1) while the attack runs.
    attempts: usize,
}

fn load() -> Load {
    match std::env::var("AGENTID_LOAD").as_deref() {
        Ok("full") => Load {
            sources: 100,
            per_source: 10,
            attempts: 1000,
        },
        _ => Load {
            sources: 100,
            per_source: 10,
            attempts: 100,
        },
    }
}

/// Raises the soft file limit toward the hard one (the test holds both ends of every socket).
fn raise_file_limit(want: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let l = getrlimit(Resource::Nofile);
    if l.current.is_some_and(|c| c < want) {
        let target = l.maximum.map_or(want, |m| m.min(want));
        let _ = setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(target),
                maximum: l.maximum,
            },
        );
    }
}

/// One attacker socket: connect from `source`, send nothing, and when the server drops it,
/// connect again (after a short pause), until `stop`.
async fn silent_socket(
    source: IpAddr,
    server: SocketAddr,
    stop: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    connects: Arc<AtomicUsize>,
) {
    // Bounded: the test stops it long before this many rounds.
    for _ in 0..10_000 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let Ok(Ok(mut tcp)) = tokio::time::timeout(T, socket.connect(server)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        held.fetch_add(1, Ordering::Relaxed);
        connects.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 64];
        // Silent until the server closes (ClientHello deadline, or a newer handshake took the
        // slot), checking the stop flag now and then.
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await {
                Err(_) => continue,
                Ok(Ok(n)) if n > 0 => continue,
                Ok(_) => break,
            }
        }
        held.fetch_sub(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_from_many_sources_do_not_lock_out_a_client() {
    let load = load();
    let attackers = load.sources * load.per_source;
    raise_file_limit((attackers as u64) * 2 + 1024);

    let a = Domain::new("example.org");
    let server_creds = credentials(&a.ca, SERVER);
    let client_creds = credentials(&a.ca, CLIENT);
    let sv = verification(SERVER, &[&a], false);
    let cv = verification(CLIENT, &[&a], false);
    // The library's defaults: the defence must hold without tuning.
    let limits = ConnectionLimits::default();
    let srv = AgentServer::builder(server_creds, sv, PeerPolicy::danger_any())
        .limits(limits.clone())
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut sessions = srv.listen(listener);
    let addr = sessions.local_addr().unwrap();
    // Echo one message per session.
    let echo = tokio::spawn(async move {
        while let Some((mut s, _)) = sessions.next().await {
            tokio::spawn(async move {
                if let Ok(Ok(Some(m))) = tokio::time::timeout(T, s.recv()).await {
                    let _ = s.send(&m).await;
                }
            });
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicUsize::new(0));
    let connects = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..load.sources {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8));
        for _ in 0..load.per_source {
            tasks.push(tokio::spawn(silent_socket(
                source,
                addr,
                stop.clone(),
                held.clone(),
                connects.clone(),
            )));
        }
    }
    // Wait (bounded) until the attack is in place: every socket connected at least once.
    for _ in 0..100 {
        if connects.load(Ordering::Relaxed) >= attackers {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = connects.load(Ordering::Relaxed);
    assert!(
        n >= attackers,
        "the attack did not start: {n} connections of {attackers}"
    );
    let mut busiest = srv.admission().pending_handshakes();

    let c = client(client_creds, cv, PeerPolicy::danger_any());
    let mut ok = 0;
    let mut failures = Vec::new();
    for i in 0..load.attempts {
        let attempt = async {
            let mut s = c.connect(addr).await?;
            let msg = format!("request {i}");
            s.send(msg.as_bytes()).await?;
            let reply = s.recv().await?;
            Ok::<_, agentid_transport::Error>(reply.as_deref() == Some(msg.as_bytes()))
        };
        match tokio::time::timeout(T, attempt).await {
            Ok(Ok(true)) => ok += 1,
            Ok(Ok(false)) => failures.push("wrong reply".to_owned()),
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(_) => failures.push("timeout".to_owned()),
        }
        busiest = busiest.max(srv.admission().pending_handshakes());
    }
    let still_held = held.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(T, t).await;
    }
    echo.abort();

    let rate = ok as f64 / load.attempts as f64;
    eprintln!(
        "lock-out: {attackers} silent sockets from {} sources ({still_held} open at the end, {} connections made, up to {busiest} pending handshakes); legitimate: {ok}/{} ({:.1}%); failures: {:?}",
        load.sources,
        connects.load(Ordering::Relaxed),
        load.attempts,
        rate * 100.0,
        failures.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        rate >= 0.99,
        "{ok}/{} legitimate connections succeeded under attack: {failures:?}",
        load.attempts
    );
}

/// An IPv6 host is given a /64, not one address: the addresses of one /64 are one source for
/// the per-source cap of unauthenticated handshakes, as an IPv4 address is. Else one host takes
/// the whole pool with addresses of its own /64 (a new address per handshake), and its flood
/// pushes out the handshakes of everyone else instead of its own oldest.
#[tokio::test]
async fn the_addresses_of_one_ipv6_64_are_one_source_of_handshakes() {
    let a = Domain::new("example.org");
    let k = key();
    let config = raw_server_config(
        &verification(SERVER, &[&a], false),
        leaf(&a.ca, SERVER, &k, &LeafOpts::default()),
        &k,
    );
    let admission = agentid_transport::Admission::new(ConnectionLimits {
        max_handshakes: 16,
        max_pending_per_source: 2,
        client_hello_timeout: Duration::from_secs(60),
        handshake_timeout: Duration::from_secs(60),
        ..ConnectionLimits::default()
    })
    .unwrap();
    // Silent handshakes from 2001:db8::1, ::2 and ::3, one after the other: each its own
    // address, all in 2001:db8::/64.
    let mut clients = Vec::new();
    let mut handshakes = Vec::new();
    for (n, source) in ["2001:db8::1", "2001:db8::2", "2001:db8::3"]
        .iter()
        .enumerate()
    {
        let (client, server) = tokio::io::duplex(4096);
        clients.push(client);
        let (pool, config) = (admission.clone(), config.clone());
        let source: IpAddr = source.parse().unwrap();
        handshakes.push(tokio::spawn(async move {
            pool.tls_accept(server, Some(source), config).await
        }));
        // Until it holds its place in the pool (or took the place of the oldest).
        for _ in 0..200 {
            if admission.pending_handshakes() >= (n + 1).min(2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        admission.pending_handshakes(),
        2,
        "three handshakes from one /64 held the pool at once (cap 2 per source)"
    );
    let first = tokio::time::timeout(Duration::from_secs(10), handshakes.remove(0))
        .await
        .expect("the oldest handshake of the /64 was not dropped")
        .unwrap();
    assert!(
        matches!(
            first,
            Err(agentid_transport::Error::Busy(
                agentid_transport::BusyKind::Handshakes
            ))
        ),
        "{first:?}"
    );
    drop(clients);
}
