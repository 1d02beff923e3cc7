//! Loopback servers and clients, every wait bounded by [`T`].

use std::net::SocketAddr;

use agentid_transport::{AgentClient, AgentServer, Session};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::T;

/// The server side of one connection.
pub type ServerResult = agentid_transport::Result<Session<TcpStream>>;

/// Binds 127.0.0.1:0 and accepts `n` connections with `server`, one after the other.
pub async fn serve(server: AgentServer, n: usize) -> (SocketAddr, JoinHandle<Vec<ServerResult>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h = tokio::spawn(async move {
        let mut out = Vec::new();
        for _ in 0..n {
            let (tcp, _) = tokio::time::timeout(T, listener.accept())
                .await
                .unwrap()
                .unwrap();
            out.push(server.accept(tcp).await);
        }
        out
    });
    (addr, h)
}

/// Binds 127.0.0.1:0 and accepts connections until the returned receiver is dropped, handing
/// each server-side result over as it comes.
pub async fn serve_each(
    server: AgentServer,
) -> (SocketAddr, tokio::sync::mpsc::Receiver<ServerResult>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if tx.send(server.accept(tcp).await).await.is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

/// The next server-side result of [`serve_each`] (bounded).
pub async fn next(rx: &mut tokio::sync::mpsc::Receiver<ServerResult>) -> ServerResult {
    tokio::time::timeout(T, rx.recv())
        .await
        .expect("accept timed out")
        .expect("server gone")
}

/// Connects `client` to `addr` (bounded).
pub async fn connect(client: &AgentClient, addr: SocketAddr) -> ServerResult {
    tokio::time::timeout(T, client.connect(addr))
        .await
        .expect("connect timed out")
}

/// The server side of one connection of [`serve`] (bounded).
pub async fn accepted(h: JoinHandle<Vec<ServerResult>>) -> ServerResult {
    tokio::time::timeout(T, h)
        .await
        .expect("accept timed out")
        .unwrap()
        .pop()
        .unwrap()
}

/// Sends `data` on `from` and returns what `to` receives (bounded).
pub async fn roundtrip(
    from: &mut Session<TcpStream>,
    to: &mut Session<TcpStream>,
    data: &[u8],
) -> Vec<u8> {
    tokio::time::timeout(T, from.send(data))
        .await
        .expect("send timed out")
        .unwrap();
    tokio::time::timeout(T, to.recv())
        .await
        .expect("recv timed out")
        .unwrap()
        .expect("peer closed")
        .to_vec()
}
