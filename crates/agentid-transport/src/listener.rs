//! The accept loop of an [`AgentServer`]: TCP accept with back-off, one task per handshake,
//! sessions handed over in arrival order.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::admission::accept_tcp;
use crate::server::AgentServer;
use crate::session::Session;

/// Established sessions waiting for [`AgentListener::next`] (each holds its session slot, so
/// the session cap bounds them too).
const QUEUE: usize = 64;

/// A listening [`AgentServer`] ([`AgentServer::listen`]). Dropping it stops accepting; sessions
/// already handed over live on.
#[derive(Debug)]
pub struct AgentListener {
    sessions: mpsc::Receiver<(Session<TcpStream>, SocketAddr)>,
    local_addr: Option<SocketAddr>,
    task: JoinHandle<()>,
}

impl AgentListener {
    pub(crate) fn new(server: AgentServer, listener: TcpListener) -> Self {
        let local_addr = listener.local_addr().ok();
        let (tx, sessions) = mpsc::channel(QUEUE);
        let task = tokio::spawn(async move {
            loop {
                let (tcp, from) = accept_tcp(&listener).await;
                if tx.is_closed() {
                    return;
                }
                let server = server.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match server.accept_from(tcp, Some(from)).await {
                        Ok(session) => {
                            // The listener is gone: the session is dropped (and closed).
                            let _ = tx.send((session, from)).await;
                        }
                        Err(e) => {
                            tracing::debug!(source = %from, reason = e.reason(), error = %e, "connection refused");
                        }
                    }
                });
            }
        });
        Self {
            sessions,
            local_addr,
            task,
        }
    }

    /// The next established session and its peer's address. `None` only if the accept loop
    /// stopped (it does not stop on accept errors, which are backed off).
    pub async fn next(&mut self) -> Option<(Session<TcpStream>, SocketAddr)> {
        self.sessions.recv().await
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }
}

impl Drop for AgentListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}
