//! Session caps per agent name and per task, and the idle timeout: one authenticated agent
//! cannot hold every slot, and idle sessions do not hold theirs forever.
#![cfg(test)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use agentid_transport::{
    AgentClient, AgentServer, ConnectionLimits, Error, MemoryCredentials, PeerPolicy,
    PeerVerification, Session,
};
use support::*;
use tokio::net::TcpStream;

struct World {
    a: Domain,
    cv: Arc<PeerVerification>,
    listener: agentid_transport::AgentListener,
    server: AgentServer,
}

fn world(limits: ConnectionLimits) -> World {
    let a = Domain::new("example.org");
    let server_creds = credentials(&a.ca, SERVER);
    let sv = verification(SERVER, &[&a], false);
    let cv = verification("spiffe://example.org/agent/x/task/y", &[&a], false);
    let server = AgentServer::builder(server_creds, sv, PeerPolicy::danger_any())
        .limits(limits)
        .build()
        .unwrap();
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let listener = server.listen(tokio::net::TcpListener::from_std(std_listener).unwrap());
    World {
        a,
        cv,
        listener,
        server,
    }
}

impl World {
    fn client(&self, agent: &str, task: &str) -> AgentClient {
        let id = format!("spiffe://example.org/agent/{agent}/task/{task}");
        let creds = Arc::new(MemoryCredentials::new(credential(
            &self.a.ca,
            &id,
            key(),
            &LeafOpts::default(),
        )));
        AgentClient::builder(creds, self.cv.clone(), PeerPolicy::danger_any())
            .limits(limits())
            .build()
            .unwrap()
    }

    /// Connects and waits until the server holds the session (or refused it).
    async fn open(
        &mut self,
        c: &AgentClient,
    ) -> agentid_transport::Result<(Session<TcpStream>, Session<TcpStream>)> {
        let addr = self.listener.local_addr().unwrap();
        let mut cs = tokio::time::timeout(T, c.connect(addr)).await.unwrap()?;
        cs.send(b"hi").await?;
        let (mut ss, _) = tokio::time::timeout(T, self.listener.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            &tokio::time::timeout(T, ss.recv()).await.unwrap()?.unwrap()[..],
            b"hi"
        );
        Ok((cs, ss))
    }
}

fn refused_with(r: agentid_transport::Result<impl std::fmt::Debug>, kind: &str) {
    match r {
        Err(Error::Rejected { code, message }) => {
            assert_eq!(code, "busy");
            assert!(message.contains(kind), "{message}");
        }
        other => panic!("expected a busy reject ({kind}), got {other:?}"),
    }
}

#[tokio::test]
async fn one_agent_at_its_maximum_leaves_room_for_the_others() {
    let mut w = world(ConnectionLimits {
        max_connections: 8,
        max_sessions_per_agent: 4,
        max_sessions_per_task: 2,
        ..limits()
    });
    let greedy = ["t1", "t2", "t3"].map(|t| w.client("greedy", t));
    let mut held = Vec::new();
    // Per task: the third session of one task is refused.
    held.push(w.open(&greedy[0]).await.unwrap());
    held.push(w.open(&greedy[0]).await.unwrap());
    refused_with(w.open(&greedy[0]).await, "per-task");
    // Per agent: minting more tasks (or children) does not get past the agent's cap.
    held.push(w.open(&greedy[1]).await.unwrap());
    held.push(w.open(&greedy[1]).await.unwrap());
    refused_with(w.open(&greedy[2]).await, "per-agent");
    assert_eq!(w.server.admission().sessions(), 4);
    // The others still get in, up to the server's cap.
    let others = ["a", "b"].map(|agent| w.client(agent, "t1"));
    let mut other_sessions = Vec::new();
    for c in &others {
        other_sessions.push(w.open(c).await.unwrap());
        other_sessions.push(w.open(c).await.unwrap());
    }
    assert_eq!(w.server.admission().sessions(), 8);
    refused_with(w.open(&w.client("late", "t1")).await, "session cap");
    // A session that ends gives its slot back.
    let (cs, ss) = held.pop().unwrap();
    cs.close("normal", "done").await.unwrap();
    drop(ss);
    held.push(w.open(&greedy[2]).await.unwrap());
}

#[tokio::test]
async fn an_idle_session_ends_but_a_producing_one_does_not() {
    let idle = Duration::from_millis(400);
    let mut w = world(ConnectionLimits {
        idle_timeout: Some(idle),
        ..limits()
    });
    let c = w.client("agent", "t1");

    // Idle: the server waits for a request that never comes.
    let (mut cs, mut ss) = w.open(&c).await.unwrap();
    let r = tokio::time::timeout(T, ss.recv()).await.unwrap();
    assert!(matches!(r, Err(Error::Idle)), "{r:?}");
    match tokio::time::timeout(T, cs.recv()).await.unwrap() {
        Err(Error::Closed { code, .. }) => assert_eq!(code, "idle"),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.server.admission().sessions(), 0);

    // Producing: the server streams for several idle periods while also waiting for the
    // client's next request (as an HTTP/2 server does); the client only reads.
    let (mut cs, mut ss) = w.open(&c).await.unwrap();
    let producer = tokio::spawn(async move {
        for i in 0..12u8 {
            ss.send(&[i]).await.unwrap();
            // Also waits for the peer meanwhile: the idle clock must not run out.
            match tokio::time::timeout(Duration::from_millis(100), ss.recv()).await {
                Err(_) => {}
                Ok(r) => panic!("the server's read ended: {r:?}"),
            }
        }
        ss
    });
    for i in 0..12u8 {
        let got = tokio::time::timeout(T, cs.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], &[i]);
    }
    let _ss = tokio::time::timeout(T, producer).await.unwrap().unwrap();
}

/// A timeout of `Duration::MAX` ("never", as a caller may well write it) is taken as a year, as
/// the HTTP binding's are: the timers built on it never overflow an `Instant`, which panicked
/// in every handshake the server accepted and in every session either side opened.
#[tokio::test]
async fn a_timeout_of_duration_max_is_taken_as_a_year() {
    let never = ConnectionLimits {
        handshake_timeout: Duration::MAX,
        client_hello_timeout: Duration::MAX,
        first_frame_timeout: Duration::MAX,
        idle_timeout: Some(Duration::MAX),
        ..limits()
    };
    let mut w = world(never.clone());
    let creds = Arc::new(MemoryCredentials::new(credential(
        &w.a.ca,
        "spiffe://example.org/agent/x/task/y",
        key(),
        &LeafOpts::default(),
    )));
    let c = AgentClient::builder(creds, w.cv.clone(), PeerPolicy::danger_any())
        .limits(never)
        .build()
        .unwrap();
    let (mut cs, mut ss) = w.open(&c).await.unwrap();
    ss.send(b"back").await.unwrap();
    let got = tokio::time::timeout(T, cs.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], b"back");
}
