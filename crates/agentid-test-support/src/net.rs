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

/// A direction a byte stream moves in: what [`Hooked`] counts, in bursts (a run of writes, or
/// of reads that returned data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Burst {
    /// Reads that returned data.
    Read,
    /// Writes (counted when called).
    Write,
}

/// A byte stream that runs a hook once, at a chosen point of a handshake: when it starts a
/// burst of `at` right after the bursts `after`, in that order (`at` is the other direction
/// than the last of `after`). The hook runs before that first read or write. For example, on a
/// TLS server `[Read, Write]` then `Read`: once its certificate went out, before the client's
/// answer is read; on a TLS client `[Write, Read]` then `Write`: once the server's certificate
/// was verified, before the handshake completes; `[Write, Read, Write]` then `Read`: once the
/// handshake ended and the first frame was written, while the answer to it is awaited.
pub struct Hooked<IO = TcpStream> {
    io: IO,
    after: Vec<Burst>,
    at: Burst,
    /// How many bursts of `after` were seen in order (`None`: the stream went another way).
    matched: Option<usize>,
    last: Option<Burst>,
    hook: Option<Box<dyn FnOnce() + Send>>,
}

impl<IO> Hooked<IO> {
    /// `io`, running `hook` as the type says.
    pub fn new(io: IO, after: &[Burst], at: Burst, hook: impl FnOnce() + Send + 'static) -> Self {
        Self {
            io,
            after: after.to_vec(),
            at,
            matched: Some(0),
            last: None,
            hook: Some(Box::new(hook)),
        }
    }

    /// Before a read or write in direction `dir`: runs the hook at its point.
    fn before(&mut self, dir: Burst) {
        if dir == self.at && self.last != Some(dir) && self.matched == Some(self.after.len()) {
            if let Some(hook) = self.hook.take() {
                hook();
            }
        }
    }

    /// A read that returned data, or a write, in direction `dir`.
    fn moved(&mut self, dir: Burst) {
        if self.last == Some(dir) {
            return;
        }
        self.last = Some(dir);
        self.matched = match self.matched {
            Some(n) if self.after.get(n) == Some(&dir) => Some(n + 1),
            _ => None,
        };
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Hooked<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.before(Burst::Read);
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved(Burst::Read);
        }
        r
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Hooked<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.before(Burst::Write);
        self.moved(Burst::Write);
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
