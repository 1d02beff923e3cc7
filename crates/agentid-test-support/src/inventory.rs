//! A synthetic task inventory for the CA stores' `GET /v1/tasks` page (spec/CA-API.md 3.11):
//! the rows of a trust domain with many agents (tasks, their holders' identities, child
//! identities, revocations of every kind the inventory checks, live and lapsed), written into
//! a store's tables by the test, and the answer the spec gives for it, computed here from the
//! rows alone.
//!
//! Task ids are spread so that the tasks of different agents interleave in task-id order (as
//! random ids do): a store that reads the tasks in id order and filters by agent visits the
//! whole table to find a few agents' tasks.

use std::collections::HashSet;

/// The trust domain of the identities.
pub const TRUST_DOMAIN: &str = "example.org";

/// A task and its root holder's identity row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRow {
    /// The task id.
    pub task: String,
    /// The holder's identity (`spiffe://example.org/agent/AGENT/task/TASK`).
    pub holder: String,
    /// The holder's agent name.
    pub agent: String,
    /// The holder's key thumbprint.
    pub jkt: String,
    /// The grant's `jti`.
    pub grant_jti: String,
    /// The grant's expiry.
    pub exp: u64,
}

/// A child's identity in another agent's task: an identity row that holds no task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildRow {
    /// `spiffe://example.org/agent/CHILD/task/TASK`.
    pub identity: String,
    /// The child's agent name.
    pub agent: String,
    /// The task it acts in (held by another agent).
    pub task: String,
    /// Its key thumbprint.
    pub jkt: String,
}

/// A revocation entry: kind (`task`, `agent`, `jkt`, `jti`), value, `exp`.
pub type RevocationRow = (&'static str, String, u64);

/// The rows of one synthetic trust domain.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    /// Every task, with its holder.
    pub tasks: Vec<TaskRow>,
    /// Child identities (holding no task).
    pub children: Vec<ChildRow>,
    /// Revocations, live and lapsed.
    pub revocations: Vec<RevocationRow>,
}

impl Inventory {
    /// `agents` agents named `{prefix}{i:04}`, `per_agent` tasks each, as of `now`: some
    /// expired (one exactly at `now`), some with their task, holder key or grant revoked, some
    /// revoked by an entry that has lapsed (still listed); agent 2 revoked, agent 3 revoked by
    /// a lapsed entry; and a child identity of the next agent in every third task. `seed` keeps
    /// the task ids of two inventories apart.
    pub fn generate(prefix: &str, agents: usize, per_agent: usize, now: u64, seed: u32) -> Self {
        let mut inv = Inventory::default();
        let agent = |i: usize| format!("{prefix}{i:04}");
        for i in 0..agents {
            for k in 0..per_agent {
                let n = u32::try_from(i * per_agent + k).unwrap();
                // A bijection of u32 (an odd multiplier), so ids are distinct and interleaved.
                let id = n.wrapping_mul(2_654_435_761).wrapping_add(seed);
                let task = format!("t{id:08x}{seed:x}");
                let a = agent(i);
                let holder = format!("spiffe://{TRUST_DOMAIN}/agent/{a}/task/{task}");
                let exp = match k % 5 {
                    0 => now - 10,
                    _ if k == 3 => now,
                    _ => now + 3600,
                };
                let row = TaskRow {
                    task: task.clone(),
                    holder,
                    agent: a,
                    jkt: format!("k{task}"),
                    grant_jti: format!("j{task}"),
                    exp,
                };
                if k % 7 == 1 {
                    inv.revocations.push(("task", task.clone(), now + 3600));
                }
                if k % 11 == 2 {
                    inv.revocations
                        .push(("jti", row.grant_jti.clone(), now + 3600));
                }
                if k % 13 == 4 {
                    inv.revocations.push(("jkt", row.jkt.clone(), now + 3600));
                }
                if k % 17 == 6 && k % 7 != 1 {
                    // Lapsed: the task is listed.
                    inv.revocations.push(("task", task.clone(), now));
                }
                if k % 3 == 0 && agents > 1 {
                    let child = agent((i + 1) % agents);
                    inv.children.push(ChildRow {
                        identity: format!("spiffe://{TRUST_DOMAIN}/agent/{child}/task/{task}"),
                        agent: child,
                        task: task.clone(),
                        jkt: format!("c{task}"),
                    });
                }
                inv.tasks.push(row);
            }
        }
        if agents > 3 {
            inv.revocations.push(("agent", agent(2), now + 3600));
            inv.revocations.push(("agent", agent(3), now - 1));
        }
        inv
    }

    /// The name of agent `i` of an inventory made with `prefix`.
    pub fn agent(prefix: &str, i: usize) -> String {
        format!("{prefix}{i:04}")
    }

    /// The live tasks of `agents` after `after` as of `now`, by task id (bytes), as CA-API.md
    /// 3.11 defines them: grant not expired; task, holder agent, holder key and grant not
    /// named by a revocation live at `now`. Each as (task, holder, agent, jkt, exp).
    pub fn expected(
        &self,
        agents: &[String],
        after: Option<&str>,
        now: u64,
    ) -> Vec<(String, String, String, String, u64)> {
        let revoked: HashSet<(&str, &str)> = self
            .revocations
            .iter()
            .filter(|(_, _, exp)| *exp > now)
            .map(|(k, v, _)| (*k, v.as_str()))
            .collect();
        let mut out: Vec<_> = self
            .tasks
            .iter()
            .filter(|t| agents.contains(&t.agent))
            .filter(|t| after.is_none_or(|a| t.task.as_str() > a))
            .filter(|t| t.exp > now)
            .filter(|t| {
                !revoked.contains(&("task", t.task.as_str()))
                    && !revoked.contains(&("agent", t.agent.as_str()))
                    && !revoked.contains(&("jkt", t.jkt.as_str()))
                    && !revoked.contains(&("jti", t.grant_jti.as_str()))
            })
            .map(|t| {
                (
                    t.task.clone(),
                    t.holder.clone(),
                    t.agent.clone(),
                    t.jkt.clone(),
                    t.exp,
                )
            })
            .collect();
        out.sort();
        out
    }
}
