//! Tests that run the `openssl` binary (an independent verifier and TLS peer).

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Whether `openssl` can be run. Without it the calling test FAILS under CI (environment
/// variable `CI` set) and prints a SKIP line and returns `false` elsewhere.
pub fn available() -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "openssl is required under CI (apt-get install openssl)"
        );
        eprintln!("SKIP: the openssl binary is not installed");
    }
    ok
}

/// Runs `openssl ARGS` in `dir` (the current directory when `None`) and returns its output,
/// whatever the exit status.
pub fn run(dir: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new("openssl");
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    cmd.args(args).output().expect("run openssl")
}

/// Runs `openssl ARGS` in `dir`, which must succeed; returns stdout.
pub fn run_ok(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = run(Some(dir), args);
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
