//! A throw-away PostgreSQL server for tests: [`PgCluster`].
//!
//! The binaries (`initdb`, `pg_ctl`, `postgres`) are looked up on `PATH`, then in Debian's
//! `/usr/lib/postgresql/<major>/bin` (newest major first). When the tests run as root the server
//! runs as the `postgres` user (through `runuser`), since PostgreSQL refuses to run as root; the
//! temporary directory is then handed to that user. The server listens on 127.0.0.1 on a free
//! port and on a Unix socket in the temporary directory, trusts local connections (the
//! directory is private to the test), writes its log to `server.log` there (no pipe of the test
//! process is inherited), and is stopped (`pg_ctl stop -m immediate`) when the guard drops.
//!
//! Without PostgreSQL, [`PgCluster::start`] fails the test under CI (`CI` set) and returns
//! `None` with a printed SKIP line elsewhere.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `pg_ctl` may wait for the server to start or stop, seconds.
const PG_CTL_WAIT_SECS: u64 = 60;

/// The PostgreSQL binaries a cluster needs.
#[derive(Clone, Debug)]
pub struct PgBinaries {
    /// The directory holding `initdb`, `pg_ctl` and `postgres`.
    pub bin_dir: PathBuf,
}

impl PgBinaries {
    /// Finds the binaries on `PATH` or in `/usr/lib/postgresql/<major>/bin`.
    pub fn find() -> Option<Self> {
        let has_all = |d: &Path| {
            ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|b| d.join(b).is_file())
        };
        if let Some(path) = std::env::var_os("PATH") {
            for d in std::env::split_paths(&path) {
                if has_all(&d) {
                    return Some(PgBinaries { bin_dir: d });
                }
            }
        }
        let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| {
                let e = e.ok()?;
                let major: u32 = e.file_name().to_str()?.parse().ok()?;
                Some((major, e.path().join("bin")))
            })
            .filter(|(_, d)| has_all(d))
            .collect();
        majors.sort();
        majors.pop().map(|(_, bin_dir)| PgBinaries { bin_dir })
    }
}

fn is_root() -> bool {
    // The effective uid without libc: /proc/self/status is there on Linux.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A PostgreSQL server of the test's own, stopped when dropped.
#[derive(Debug)]
pub struct PgCluster {
    bins: PgBinaries,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres_user: bool,
    running: bool,
    fsync: bool,
}

impl PgCluster {
    /// Starts a new server (`fsync=off`: a crash of the server process loses nothing that was
    /// committed, only an operating-system crash would), or returns `None` after printing why
    /// when PostgreSQL is not installed and `CI` is not set. Under CI a missing PostgreSQL
    /// fails the test.
    pub fn start() -> Option<Self> {
        Self::start_with(false)
    }

    /// [`PgCluster::start`] with `fsync=on` (durable commits, for benchmarks).
    pub fn start_durable() -> Option<Self> {
        Self::start_with(true)
    }

    fn start_with(fsync: bool) -> Option<Self> {
        let Some(bins) = PgBinaries::find() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL is required under CI (apt-get install -y postgresql): no initdb, \
                 pg_ctl and postgres on PATH or in /usr/lib/postgresql/<major>/bin"
            );
            eprintln!("SKIP: PostgreSQL is not installed (no initdb/pg_ctl/postgres found)");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("agentid-pg-")
            .tempdir()
            .unwrap();
        let as_postgres_user = is_root();
        let mut c = PgCluster {
            bins,
            dir,
            port: 0,
            as_postgres_user,
            running: false,
            fsync,
        };
        if as_postgres_user {
            c.chown_to_postgres(c.dir.path());
        }
        let out = c.run(
            "initdb",
            &[
                "-D",
                c.data_dir().to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            "initdb.log",
        );
        assert!(out, "initdb failed: {}", c.log("initdb.log"));
        // A port that is free now; a lost race is retried with another.
        for attempt in 0..5 {
            c.port = free_port();
            if c.pg_ctl_start() {
                c.running = true;
                return Some(c);
            }
            eprintln!(
                "PostgreSQL did not start on port {} (attempt {attempt}): {}",
                c.port,
                c.log("server.log")
            );
        }
        panic!("PostgreSQL did not start: {}", c.log("server.log"));
    }

    /// The temporary directory (data directory, socket, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A `postgres://` URL for `db` over TCP on 127.0.0.1 as the `postgres` superuser (trust
    /// authentication, no password).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Whether the server is running (as far as this guard knows).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Creates a database (bounded by [`crate::T`]).
    pub fn create_database(&self, name: &str) {
        assert!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "database name {name:?}"
        );
        let sql = format!("CREATE DATABASE {name}");
        with_client(&self.url("postgres"), |client| async move {
            tokio::time::timeout(crate::T, client.batch_execute(&sql))
                .await
                .expect("CREATE DATABASE timed out")
                .expect("CREATE DATABASE");
        });
    }

    /// Stops the server at once (`-m immediate`: like a crash; committed transactions survive
    /// through the WAL). The guard can [`PgCluster::restart`] it on the same port.
    pub fn stop(&mut self) {
        if self.running {
            let data = self.data_dir();
            let ok = self.run(
                "pg_ctl",
                &[
                    "stop",
                    "-D",
                    data.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    &PG_CTL_WAIT_SECS.to_string(),
                ],
                "pg_ctl-stop.log",
            );
            if !ok {
                eprintln!("pg_ctl stop failed: {}", self.log("pg_ctl-stop.log"));
            }
            self.running = false;
        }
    }

    /// Starts the stopped server again on the same port (bounded wait).
    pub fn restart(&mut self) {
        assert!(!self.running, "the server is running");
        let deadline = Instant::now() + Duration::from_secs(PG_CTL_WAIT_SECS);
        // The port may still be in TIME_WAIT for a moment on some systems: retry, bounded.
        while !self.pg_ctl_start() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not restart: {}",
                self.log("server.log")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        self.running = true;
    }

    fn pg_ctl_start(&self) -> bool {
        let data = self.data_dir();
        let sock = self.dir.path().to_str().unwrap().to_owned();
        let opts = format!(
            "-p {} -h 127.0.0.1 -k {sock} -c fsync={} -c synchronous_commit=on \
             -c max_connections=200 -c shared_buffers=32MB",
            self.port,
            if self.fsync { "on" } else { "off" },
        );
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "start",
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                &PG_CTL_WAIT_SECS.to_string(),
                "-o",
                &opts,
            ],
            "pg_ctl-start.log",
        )
    }

    fn chown_to_postgres(&self, path: &Path) {
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "chown postgres {}", path.display());
    }

    /// Runs one of the binaries (as `postgres` when we are root), its output to `log` in the
    /// temporary directory; whether it succeeded.
    fn run(&self, bin: &str, args: &[&str], log: &str) -> bool {
        let log_path = self.dir.path().join(log);
        let out = File::create(&log_path).unwrap();
        let err = out.try_clone().unwrap();
        let exe = self.bins.bin_dir.join(bin);
        let mut cmd = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let status = cmd
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .status();
        if self.as_postgres_user {
            // Logs written by root stay readable; files made by postgres stay its own.
            let _ = std::fs::set_permissions(
                &log_path,
                std::os::unix::fs::PermissionsExt::from_mode(0o644),
            );
        }
        status.is_ok_and(|s| s.success())
    }

    /// The content of one of the logs in the temporary directory (for failure messages).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `f` with a client connected to `url` (within [`crate::T`]), on a runtime of its own
/// thread, so that a test's synchronous code can read or change the database; returns what `f`
/// returns, once the client `f` took is dropped and its connection closed (within
/// [`crate::T`]).
pub fn with_client<T, F, Fut>(url: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce(tokio_postgres::Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio::time::timeout(
                crate::T,
                tokio_postgres::connect(&url, tokio_postgres::NoTls),
            )
            .await
            .expect("connect to PostgreSQL timed out")
            .expect("connect to PostgreSQL");
            let conn = tokio::spawn(conn);
            let out = f(client).await;
            let _ = tokio::time::timeout(crate::T, conn).await;
            out
        })
    })
    .join()
    .unwrap()
}
