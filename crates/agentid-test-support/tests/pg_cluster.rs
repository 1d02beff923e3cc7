//! The `PgCluster` guard: a server of the test's own that serves SQL, survives an immediate stop
//! with its committed data, and is gone when the guard drops.
#![cfg(test)]

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use agentid_test_support::pg::PgCluster;
use agentid_test_support::T;

async fn client(url: &str) -> tokio_postgres::Client {
    let (client, conn) =
        tokio::time::timeout(T, tokio_postgres::connect(url, tokio_postgres::NoTls))
            .await
            .expect("connect timed out")
            .expect("connect");
    tokio::spawn(conn);
    client
}

fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_serves_survives_an_immediate_stop_and_stops_on_drop() {
    let Some(pg) = tokio::task::spawn_blocking(PgCluster::start).await.unwrap() else {
        return;
    };
    let port = pg.port();
    let pg = tokio::task::spawn_blocking(move || {
        pg.create_database("guard_test");
        pg
    })
    .await
    .unwrap();
    let url = pg.url("guard_test");
    let c = client(&url).await;
    c.batch_execute("CREATE TABLE t (v BIGINT PRIMARY KEY); INSERT INTO t VALUES (42)")
        .await
        .unwrap();
    // Its log went to a file in its own directory, not to this process's pipes.
    assert!(pg.dir().join("server.log").is_file());

    let mut pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.stop();
        pg
    })
    .await
    .unwrap();
    assert!(!pg.is_running());
    assert!(!accepts(port), "the server still accepts after stop");
    let err = tokio::time::timeout(T, c.query_one("SELECT v FROM t", &[]))
        .await
        .expect("a query to a stopped server hung");
    assert!(err.is_err(), "a stopped server answered");

    pg = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .unwrap();
    assert_eq!(pg.port(), port, "restarted on another port");
    let c = client(&url).await;
    let v: i64 = c.query_one("SELECT v FROM t", &[]).await.unwrap().get(0);
    assert_eq!(v, 42, "a committed row was lost by the immediate stop");
    drop(c);

    let dir = pg.dir().to_path_buf();
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
    assert!(
        !accepts(port),
        "the server still accepts after the guard dropped"
    );
    assert!(!dir.exists(), "the temporary directory is left behind");
}
