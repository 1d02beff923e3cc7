//! `config.toml`: the CA's fixed settings.

use std::path::{Path, PathBuf};

use agentid_protocol::TrustDomain;
use serde::{Deserialize, Serialize};

use crate::error::{CaError, Result};
use crate::signer::KeyType;

/// Default clock skew allowance, seconds: certificates are back-dated by it and revocation
/// entries outlive what they cover by it.
pub const DEFAULT_SKEW_SECS: u64 = 60;
/// Default revocation list refresh: `next_update = iat + 10 min`.
pub const DEFAULT_NEXT_UPDATE_SECS: u64 = 600;

/// The CA's configuration, written by `ca init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// The trust domain this CA issues for.
    pub trust_domain: TrustDomain,
    /// Key type of the CA hierarchy and authority keys.
    pub key_type: KeyType,
    /// Clock skew allowance in seconds.
    #[serde(default = "default_skew")]
    pub skew_secs: u64,
    /// Seconds from a revocation list's `iat` to its `next_update`.
    #[serde(default = "default_next_update")]
    pub revocation_next_update_secs: u64,
    /// Where the records are kept: absent or `"sqlite"` for `ca.db` in the CA directory (the
    /// default), or `"postgres://USER@HOST[:PORT]/DB"` for a PostgreSQL database that several
    /// CA replicas share (agentid built with the `postgres` feature). Never a password in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// A file holding the PostgreSQL password alone, readable by its owner only (mode 0600);
    /// relative to the CA directory. Without it the password comes from the file `PGPASSFILE`
    /// names, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_password_file: Option<PathBuf>,
    /// PEM file of the CA that issued the PostgreSQL server's certificate; relative to the CA
    /// directory. Required (TLS is) unless the database is on loopback or a Unix socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_ca_file: Option<PathBuf>,
}

/// Which store a configuration chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind<'a> {
    /// `ca.db` in the CA directory.
    Sqlite,
    /// A PostgreSQL database, by URL (checked to carry no password).
    Postgres(&'a str),
}

/// Whether a `postgres://` URL carries a password (in its user info or as a `password`
/// parameter). Such a URL is refused: it would sit in `config.toml` or a command line.
pub fn url_has_password(url: &str) -> bool {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .unwrap_or(url);
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = before_query.split('/').next().unwrap_or("");
    let in_userinfo = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let in_query = query.split('&').any(|kv| {
        kv.split('=')
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case("password"))
    });
    in_userinfo || in_query
}

/// Checks a `store` setting: `sqlite`, or a `postgres://` URL without a password.
pub fn check_store(store: &str) -> Result<StoreKind<'_>> {
    if store == "sqlite" {
        return Ok(StoreKind::Sqlite);
    }
    if !(store.starts_with("postgres://") || store.starts_with("postgresql://")) {
        return Err(CaError::InvalidRequest(format!(
            "store must be \"sqlite\" or a postgres://USER@HOST/DB URL, not {store:?}"
        )));
    }
    if url_has_password(store) {
        return Err(CaError::InvalidRequest(
            "store: the PostgreSQL URL carries a password; put the password in a file readable \
             only by its owner (store_password_file in config.toml, or PGPASSFILE) instead"
                .into(),
        ));
    }
    #[cfg(feature = "postgres")]
    crate::store::postgres::parse_url(store)?;
    Ok(StoreKind::Postgres(store))
}

fn default_skew() -> u64 {
    DEFAULT_SKEW_SECS
}
fn default_next_update() -> u64 {
    DEFAULT_NEXT_UPDATE_SECS
}

/// The SQLite store of the CA directory `dir`, which must exist and not be empty.
fn sqlite_db(dir: &Path) -> Result<PathBuf> {
    let db = crate::material::join(dir, crate::material::files::DB);
    // `agentid ca init` makes the store; a CA directory without it (deleted, not restored, or
    // a `store` line removed from config.toml) must not start over with an empty one: its
    // revocations, bindings, tokens and audit chain would be gone, and its revocation list
    // would restart at seq 1.
    match std::fs::metadata(&db) {
        // Whoever could write the store (or a directory above it) would write the CA's
        // tokens, bindings and revocations: it is opened only if held, as every file of the
        // CA directory is read.
        Ok(m) if m.len() > 0 => crate::material::check_held(&db).map(|()| db),
        Ok(_) => Err(missing_db(&db, "is empty")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing_db(&db, "is missing")),
        Err(e) => Err(CaError::io(&db, e)),
    }
}

fn missing_db(db: &Path, what: &str) -> CaError {
    CaError::material(
        db,
        format!(
            "the CA store {what}: restore it (with its -wal file) from a backup; if this CA \
             used a shared database, put its `store` line back in config.toml"
        ),
    )
}

impl CaConfig {
    /// A configuration with default skew and refresh interval.
    pub fn new(trust_domain: TrustDomain, key_type: KeyType) -> Self {
        CaConfig {
            trust_domain,
            key_type,
            skew_secs: DEFAULT_SKEW_SECS,
            revocation_next_update_secs: DEFAULT_NEXT_UPDATE_SECS,
            store: None,
            store_password_file: None,
            store_ca_file: None,
        }
    }

    /// Reads and validates `config.toml`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::material::read_config_text(path)?;
        let cfg: CaConfig =
            toml::from_str(&text).map_err(|e| CaError::material(path, e.to_string()))?;
        if cfg.skew_secs > 120 {
            return Err(CaError::material(path, "skew_secs must be at most 120"));
        }
        if cfg.revocation_next_update_secs == 0 {
            return Err(CaError::material(
                path,
                "revocation_next_update_secs must be positive",
            ));
        }
        cfg.store_kind()
            .map_err(|e| CaError::material(path, e.to_string()))?;
        Ok(cfg)
    }

    /// The store this configuration chooses (SQLite when `store` is absent).
    pub fn store_kind(&self) -> Result<StoreKind<'_>> {
        match &self.store {
            None => Ok(StoreKind::Sqlite),
            Some(s) => check_store(s),
        }
    }

    /// Opens the store this configuration chooses for the CA directory `dir`, with `writer`
    /// as its audit chain's writer id.
    pub fn open_store(&self, dir: &Path, writer: &str) -> Result<Box<dyn crate::store::Store>> {
        self.open_store_with(dir, writer, false)
    }

    /// [`CaConfig::open_store`] for `agentid ca init`, which makes the shared database's
    /// schema; [`CaConfig::open_store`] refuses a database without it.
    pub(crate) fn create_store(
        &self,
        dir: &Path,
        writer: &str,
    ) -> Result<Box<dyn crate::store::Store>> {
        self.open_store_with(dir, writer, true)
    }

    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    fn open_store_with(
        &self,
        dir: &Path,
        writer: &str,
        create: bool,
    ) -> Result<Box<dyn crate::store::Store>> {
        match self.store_kind()? {
            StoreKind::Sqlite => {
                let db = sqlite_db(dir)?;
                Ok(Box::new(crate::store::SqliteStore::open_as(&db, writer)?))
            }
            #[cfg(feature = "postgres")]
            StoreKind::Postgres(url) => {
                let rel = |p: &Option<PathBuf>| p.as_ref().map(|p| dir.join(p));
                let settings = crate::store::PgSettings::from_url(
                    url,
                    rel(&self.store_password_file).as_deref(),
                    rel(&self.store_ca_file).as_deref(),
                )?;
                Ok(Box::new(if create {
                    crate::store::PgStore::open_as(settings, writer)?
                } else {
                    crate::store::PgStore::open_existing(settings, writer)?
                }))
            }
            #[cfg(not(feature = "postgres"))]
            StoreKind::Postgres(_) => Err(CaError::InvalidRequest(
                "store: this agentid was built without PostgreSQL support (feature `postgres`)"
                    .into(),
            )),
        }
    }

    /// The audit snapshot of the store of `dir`, read without writing to it: SQLite's `ca.db`
    /// through a read-only connection, never migrated (see
    /// [`crate::store::read_audit_snapshot`]).
    pub fn read_audit_snapshot(
        &self,
        dir: &Path,
        since: Option<u64>,
    ) -> Result<crate::audit::AuditSnapshot> {
        match self.store_kind()? {
            StoreKind::Sqlite => crate::store::read_audit_snapshot(&sqlite_db(dir)?, since),
            _ => self
                .open_store(dir, crate::audit::DEFAULT_WRITER)?
                .audit_snapshot(since),
        }
    }

    /// [`CaConfig::read_audit_snapshot`] streamed to `visitor` ([`crate::store::Store::audit_visit`];
    /// SQLite's `ca.db` through a read-only connection, [`crate::store::read_audit_visit`]).
    pub fn visit_audit(
        &self,
        dir: &Path,
        since: Option<u64>,
        visitor: &mut dyn crate::audit::AuditVisitor,
    ) -> Result<()> {
        match self.store_kind()? {
            StoreKind::Sqlite => crate::store::read_audit_visit(&sqlite_db(dir)?, since, visitor),
            _ => self
                .open_store(dir, crate::audit::DEFAULT_WRITER)?
                .audit_visit(since, visitor),
        }
    }

    pub(crate) fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| CaError::InvalidRequest(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_the_store_url_is_refused() {
        for url in [
            "postgres://ca:secret@db.example.org/agentid",
            "postgresql://ca:@127.0.0.1/agentid",
            "postgres://ca@db.example.org/agentid?password=secret",
            "postgres://ca@db.example.org/agentid?sslmode=require&PASSWORD=x",
        ] {
            assert!(url_has_password(url), "{url}");
            let e = check_store(url).unwrap_err().to_string();
            assert!(e.contains("password"), "{url}: {e}");
        }
        for url in [
            "postgres://ca@db.example.org/agentid",
            "postgres://ca@db.example.org:5432/agentid?sslmode=require",
            "postgres://127.0.0.1/agentid",
        ] {
            assert!(!url_has_password(url), "{url}");
        }
    }

    #[test]
    fn the_store_is_sqlite_by_default_or_a_postgres_url() {
        let cfg = CaConfig::new(TrustDomain::parse("example.org").unwrap(), KeyType::P256);
        assert_eq!(cfg.store_kind().unwrap(), StoreKind::Sqlite);
        assert_eq!(check_store("sqlite").unwrap(), StoreKind::Sqlite);
        assert!(check_store("mysql://db/agentid").is_err());
        assert!(check_store("/var/lib/agentid/ca.db").is_err());
        let url = "postgres://ca@127.0.0.1/agentid";
        assert_eq!(check_store(url).unwrap(), StoreKind::Postgres(url));
    }

    #[test]
    fn a_config_with_a_password_in_its_store_url_does_not_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "trust_domain = \"example.org\"\nkey_type = \"p256\"\nstore = \"postgres://ca:pw@db/agentid\"\n",
        )
        .unwrap();
        let e = CaConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("password"), "{e}");
    }

    /// A CA directory copied from elsewhere (evidence for `audit verify`) is read, not trusted:
    /// a FIFO at `config.toml` or `policy.toml` is refused rather than waited on for ever, and a
    /// file over 1 MiB is refused rather than read into memory.
    #[test]
    fn a_config_or_policy_that_is_a_fifo_or_huge_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["config.toml", "policy.toml"] {
            let path = dir.path().join(name);
            let made = std::process::Command::new("mkfifo")
                .arg(&path)
                .status()
                .unwrap();
            assert!(made.success());
            let (tx, rx) = std::sync::mpsc::channel();
            let p = path.clone();
            std::thread::spawn(move || {
                let e = if name == "config.toml" {
                    CaConfig::load(&p).map(|_| ())
                } else {
                    crate::Policy::load(&p).map(|_| ())
                };
                let _ = tx.send(e.map_err(|e| e.to_string()));
            });
            let e = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("reading a FIFO blocked")
                .unwrap_err();
            assert!(
                e.contains("FIFO") || e.contains("fifo") || e.contains("regular"),
                "{e}"
            );
            std::fs::remove_file(&path).unwrap();
            let big = format!("# {}\n", "x".repeat(2 * 1024 * 1024));
            std::fs::write(&path, big).unwrap();
            let e = if name == "config.toml" {
                CaConfig::load(&path).map(|_| ()).unwrap_err()
            } else {
                crate::Policy::load(&path).map(|_| ()).unwrap_err()
            };
            assert!(
                e.to_string().contains("larger") || e.to_string().contains("large"),
                "{e}"
            );
        }
    }
}
