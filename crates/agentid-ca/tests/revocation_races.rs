//! Revocations racing issuances: a revocation committed while the CA is opening tasks must
//! still cover every certificate and grant it names, and a principal's revocation every task of
//! the principal that was opened (CA-API.md 3.4: "every task of that principal whose grant has
//! not expired is listed"; a revocation entry outlives what it covers by the skew allowance).
//! Run against SQLite, and against PostgreSQL with `AGENTID_TEST_STORE=postgres`.
#![cfg(test)]
#![allow(missing_docs)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentid_ca::{
    CaError, CertificateAuthority, KeyType, OpenTaskRequest, RevocationKind, RevokeTarget,
    TaskCredentials, TaskRequester,
};
use agentid_protocol::{Algorithm, Scope};
use common::*;

/// Rounds of one race each (one agent or principal per round).
const ROUNDS: usize = 12;
/// Threads opening tasks while the revocation runs.
const OPENERS: usize = 3;
/// Most tasks one opener opens in a round (a bound: the revocation ends the round sooner).
const MAX_PER_OPENER: u64 = 400;

fn policy() -> String {
    let mut p = String::from(
        r#"
[defaults]
ttl = "5m"
max_ttl = "15m"
task_ttl = "1h"
max_task_ttl = "8h"
"#,
    );
    for k in 0..ROUNDS {
        p.push_str(&format!(
            "\n[agents.racer{k}]\nscopes = [\"tickets:read\"]\nrequesters = [\"operator\"]\n"
        ));
    }
    p
}

/// The test CA reopened with [`policy`] (one agent per round).
fn race_ca(t: &TestCa) -> CertificateAuthority {
    std::fs::write(t.path().join("policy.toml"), policy()).unwrap();
    CertificateAuthority::open(t.path()).unwrap()
}

/// Opens tasks for `agent` (with `principal`) from [`OPENERS`] threads, each task living ten
/// seconds longer than the one before, and runs `revoke` once some are open; returns every task
/// the CA opened. Openers stop at the first `revoked` refusal.
fn race(
    ca: &CertificateAuthority,
    agent: &str,
    principal: Option<serde_json::Value>,
    revoke: impl FnOnce(),
) -> Vec<TaskCredentials> {
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let opened = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..OPENERS {
            s.spawn(|| {
                for _ in 0..MAX_PER_OPENER {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::AcqRel);
                    let mut req = OpenTaskRequest::new(
                        agent,
                        spki_key(Algorithm::Es256).1,
                        TaskRequester::Operator,
                        Scope::parse("tickets:read").unwrap(),
                    );
                    req.task_ttl = Some(Duration::from_secs(3600 + 10 * i));
                    req.principal = principal.clone();
                    match ca.open_task(&req, now()) {
                        Ok(c) => opened.lock().unwrap().push(c),
                        Err(CaError::Revoked { .. }) => break,
                        Err(e) => panic!("opening a task: {e}"),
                    }
                }
            });
        }
        // Revoke while the openers are busy (after a few tasks, bounded in time).
        let start = Instant::now();
        while opened.lock().unwrap().len() < 4 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        revoke();
        stop.store(true, Ordering::Release);
    });
    opened.into_inner().unwrap()
}

fn entry(ca: &CertificateAuthority, kind: RevocationKind, value: &str) -> Option<u64> {
    ca.revocations()
        .unwrap()
        .into_iter()
        .find(|r| r.kind == kind && r.value == value)
        .map(|r| r.exp)
}

fn task_of(c: &TaskCredentials) -> String {
    c.identity.task_id().as_str().to_owned()
}

#[test]
fn an_agent_revocation_outlives_every_certificate_and_grant_issued_concurrently() {
    let t = test_ca(KeyType::P256);
    let ca = race_ca(&t);
    let skew = ca.config().skew_secs;
    for k in 0..ROUNDS {
        let agent = format!("racer{k}");
        let opened = race(&ca, &agent, None, || {
            ca.revoke(&RevokeTarget::Agent(agent.clone()), None, "operator", now())
                .unwrap();
        });
        let exp = entry(&ca, RevocationKind::Agent, &agent).unwrap();
        for c in &opened {
            let latest = c.grant_exp.max(c.certificate.leaf.not_after);
            assert!(
                exp >= latest + skew,
                "round {k}: the entry for agent {agent} ends at {exp}, but task {} it revokes \
                 lives until {latest} (+{skew}s skew); {} task(s) opened",
                task_of(c),
                opened.len()
            );
        }
    }
}

#[test]
fn a_principal_revocation_lists_every_task_opened_concurrently() {
    let t = test_ca(KeyType::P256);
    let ca = race_ca(&t);
    for k in 0..ROUNDS {
        let agent = format!("racer{k}");
        let principal =
            serde_json::json!({"format": "email", "email": format!("p{k}@example.com")});
        let opened = race(&ca, &agent, Some(principal.clone()), || {
            ca.revoke(
                &RevokeTarget::Principal(principal.clone()),
                None,
                "operator",
                now(),
            )
            .unwrap();
        });
        for c in &opened {
            let task = task_of(c);
            let exp = entry(&ca, RevocationKind::Task, &task);
            assert!(
                exp.is_some_and(|e| e >= c.grant_exp),
                "round {k}: task {task} of the revoked principal is open (grant until {}) and \
                 not revoked ({exp:?}); {} task(s) opened",
                c.grant_exp,
                opened.len()
            );
        }
    }
}
