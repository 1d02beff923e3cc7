//! `ca init --store`: a PostgreSQL URL never carries a password, and a refused store leaves no
//! CA material behind.
#![cfg(test)]

mod support;

use support::Env;

#[test]
fn ca_init_refuses_a_password_in_the_store_url_and_writes_nothing() {
    let env = Env::empty();
    for url in [
        "postgres://ca:secret@127.0.0.1/agentid",
        "postgres://ca@127.0.0.1/agentid?password=secret",
    ] {
        env.fails_args(
            &[
                "ca",
                "init",
                "--trust-domain",
                "example.org",
                "--dir",
                "ca",
                "--store",
                url,
            ],
            1,
            "password",
        );
        assert!(
            !env.path("ca/root.key").exists(),
            "{url}: a key was written"
        );
        assert!(!env.path("ca/config.toml").exists(), "{url}");
    }
    env.fails_args(
        &[
            "ca",
            "init",
            "--trust-domain",
            "example.org",
            "--dir",
            "ca",
            "--store",
            "mysql://db/agentid",
        ],
        1,
        "postgres://",
    );
    assert!(!env.path("ca/root.key").exists());
}
