//! Loopback servers and clients, every wait bounded by [`T`].

use std::net::SocketAddr;
use std::sync::Arc;

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

/// A TCP proxy on 127.0.0.1 to `upstream` (one connection) that forwards the server's bytes
/// freely and the client's TLS records with a lag of one once the client's encrypted records
/// start: when the client goes quiet for 300 ms, its last record is held, `held` is notified,
/// and the record goes on once `release` is notified. With a small `max_fragment_size` that
/// record is the tail of the client's Finished (the server has checked the client's certificate
/// but not finished the handshake); with the framed transport it is the client's hello (the
/// handshake is done, the hello not yet read).
pub async fn holding_proxy(
    upstream: SocketAddr,
    held: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
        client.set_nodelay(true).unwrap();
        server.set_nodelay(true).unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut sr, &mut cw).await;
        });
        let mut buf = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        loop {
            // Whole TLS records: type, version (2 bytes), length (2 bytes), body.
            while let Some(&[typ, _, _, hi, lo]) = buf.get(..5) {
                let len = 5 + usize::from(u16::from_be_bytes([hi, lo]));
                if buf.len() < len {
                    break;
                }
                let rec: Vec<u8> = buf.drain(..len).collect();
                if typ == 23 {
                    if let Some(prev) = last.replace(rec) {
                        sw.write_all(&prev).await.unwrap();
                    }
                } else {
                    sw.write_all(&rec).await.unwrap();
                }
            }
            let mut chunk = [0u8; 4096];
            let read = if last.is_some() {
                match tokio::time::timeout(
                    std::time::Duration::from_millis(300),
                    cr.read(&mut chunk),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => {
                        // Quiet: the flight is complete, hold its last record.
                        eprintln!("proxy: holding the client's last record");
                        held.notify_one();
                        release.notified().await;
                        sw.write_all(&last.take().unwrap()).await.unwrap();
                        sw.write_all(&buf).await.unwrap();
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                        return;
                    }
                }
            } else {
                cr.read(&mut chunk).await
            };
            let n = read.unwrap();
            if n == 0 {
                return;
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    });
    addr
}
