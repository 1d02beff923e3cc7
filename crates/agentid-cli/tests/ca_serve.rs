//! `ca serve`: starts on 127.0.0.1, prints its address, accepts TLS; refuses to start without
//! the `[services.agentid-ca]` rule its own certificate needs.
#![cfg(test)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{Env, POLICY};

/// Kills the server when the test ends, whatever happens.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ca_serve_listens_and_prints_its_address() {
    let env = Env::new();
    let policy = format!("{POLICY}\n[services.agentid-ca]\nrequesters = [\"operator\"]\n");
    std::fs::write(env.path("ca/policy.toml"), policy).unwrap();
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_agentid"))
            .current_dir(env.path(""))
            .args(["ca", "serve", "--ca", "ca", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    // The listener accepts connections (the TLS routes are tested in agentid-ca's tests).
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the server is still running"
    );
}

#[test]
fn ca_serve_without_its_service_rule_refuses_to_start() {
    let env = Env::new();
    env.fails(
        "ca serve --ca ca --listen 127.0.0.1:0",
        1,
        "services.agentid-ca",
    );
}
