//! A new user's mistakes with the offline CA (`--ca DIR`): each refusal names a next step that
//! can work.
#![cfg(test)]

mod support;

use support::Env;

/// Renewing a child whose parent's certificate has already ended can never succeed with a
/// shorter `--ttl` (every lifetime ends after the parent's end, which is past): the refusal
/// says to issue the parent again first, as the README's two-terminal demo does.
#[test]
fn renewing_a_child_past_its_parents_end_names_the_parent_not_a_shorter_ttl() {
    let env = Env::new();
    env.ok("cert issue --ca ca --agent planner --scope tickets:read --max-depth 1 --ttl 2s --out-dir p");
    env.child("p", "c");
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let (_, line) = env.fails("cert renew --ca ca --dir c", 1, "parent");
    assert!(!line.contains("shorter --ttl"), "{line}");
    assert!(line.contains("--parent"), "{line}");
}
