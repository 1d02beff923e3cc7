//! Property tests for attenuation: any narrowing of a scope, an ID set or limits is accepted as
//! covered, any widening is not; and the covering relations agree with an independent model
//! written straight from spec/PROTOCOL.md section 7.
#![cfg(test)]
#![allow(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};

use agentid_protocol::{IdKind, IdSet, Limits, Scope, ScopeToken, SpiffeId};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Scopes
// ---------------------------------------------------------------------------------------------

/// Segments from a tiny alphabet, so that equal, prefix and case-variant segments collide often.
fn seg() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "ab", "A", "a.b", "a-b", "x_1"]).prop_map(String::from)
}

/// A token as (segments, trailing `:*`), or the bare `*` (empty segments).
fn token_spec() -> impl Strategy<Value = (Vec<String>, bool)> {
    prop_oneof![
        1 => Just((Vec::new(), true)),
        12 => (prop::collection::vec(seg(), 1..4), any::<bool>()),
    ]
}

fn render((segs, wild): &(Vec<String>, bool)) -> String {
    if segs.is_empty() {
        return "*".to_owned();
    }
    let mut s = segs.join(":");
    if *wild {
        s.push_str(":*");
    }
    s
}

/// The covering rule written from the spec: equal, or `*`, or `q:*` with t's segments strictly
/// extending q's.
fn model_token_covers(p: &str, t: &str) -> bool {
    if p == t || p == "*" {
        return true;
    }
    let p_segs: Vec<&str> = p.split(':').collect();
    if p_segs.last() != Some(&"*") {
        return false;
    }
    let q = &p_segs[..p_segs.len() - 1];
    let t_segs: Vec<&str> = t.split(':').collect();
    t_segs.len() > q.len() && t_segs[..q.len()] == *q
}

fn scope_of(tokens: &BTreeSet<String>) -> Scope {
    Scope::parse(&tokens.iter().cloned().collect::<Vec<_>>().join(" ")).unwrap()
}

/// One narrowing step applied to a parent token: keep it, or (if it is a pattern) extend its
/// prefix by `extra` segments, keeping or dropping the trailing `*`.
fn narrow_token(parent: &(Vec<String>, bool), extra: &[String], wild: bool, keep: bool) -> String {
    let (segs, is_wild) = parent;
    if keep || !is_wild || extra.is_empty() {
        return render(parent);
    }
    let mut segs = segs.clone();
    segs.extend(extra.iter().cloned());
    render(&(segs, wild))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn token_covering_matches_the_model(p in token_spec(), t in token_spec()) {
        let (ps, ts) = (render(&p), render(&t));
        let (pt, tt) = (ScopeToken::parse(&ps).unwrap(), ScopeToken::parse(&ts).unwrap());
        prop_assert_eq!(pt.covers(&tt), model_token_covers(&ps, &ts), "{} covers {}", ps, ts);
    }

    #[test]
    fn token_covering_is_a_partial_order(a in token_spec(), b in token_spec(), c in token_spec()) {
        let [a, b, c] = [&a, &b, &c].map(|x| ScopeToken::parse(&render(x)).unwrap());
        prop_assert!(a.covers(&a));
        if a.covers(&b) && b.covers(&c) {
            prop_assert!(a.covers(&c), "transitivity: {} {} {}", a, b, c);
        }
        if a.covers(&b) && b.covers(&a) {
            prop_assert_eq!(&a, &b);
        }
    }

    #[test]
    fn any_narrowing_of_a_scope_is_covered(
        parent in prop::collection::vec(token_spec(), 1..8),
        steps in prop::collection::vec(
            (any::<prop::sample::Index>(), prop::collection::vec(seg(), 0..3), any::<bool>(),
             any::<bool>(), token_spec()),
            1..10,
        ),
    ) {
        let parent_tokens: BTreeSet<String> = parent.iter().map(render).collect();
        let parent_scope = scope_of(&parent_tokens);
        let mut child = BTreeSet::new();
        for (idx, extra, wild, keep, anything) in &steps {
            let p = idx.get(&parent);
            // Under `*`, anything at all is a narrowing.
            let t = if p.0.is_empty() && !keep { render(anything) } else {
                narrow_token(p, extra, *wild, *keep)
            };
            child.insert(t);
        }
        let child_scope = scope_of(&child);
        prop_assert!(parent_scope.covers(&child_scope), "{} covers {}", parent_scope, child_scope);
        // Every subset too, and the scope itself.
        prop_assert!(parent_scope.covers(&parent_scope));
        for t in child_scope.tokens() {
            prop_assert!(parent_scope.covers_token(t));
        }
    }

    #[test]
    fn any_widening_of_a_scope_is_not_covered(
        // Distinct first segments, no bare `*`: each token is the only one in its subtree.
        parent in prop::collection::btree_map(
            prop::sample::select(vec!["s0", "s1", "s2", "s3", "s4", "s5"]),
            (prop::collection::vec(seg(), 0..3), any::<bool>()),
            1..6,
        ),
        pick in any::<prop::sample::Index>(),
        op in 0u8..3,
    ) {
        let specs: Vec<(Vec<String>, bool)> = parent.iter().map(|(first, (rest, wild))| {
            let mut segs = vec![(*first).to_owned()];
            segs.extend(rest.iter().cloned());
            (segs, *wild)
        }).collect();
        let parent_tokens: BTreeSet<String> = specs.iter().map(render).collect();
        let parent_scope = scope_of(&parent_tokens);

        let victim = pick.get(&specs);
        let widened = match op {
            // Generalize one token by one level: `q:x` -> `q:*`, `r:y:*` -> `r:*`, `a`/`a:*` -> `*`.
            0 => {
                let mut segs = victim.0.clone();
                segs.pop();
                if segs.is_empty() { "*".to_owned() } else { render(&(segs, true)) }
            }
            // A new token in a subtree the parent does not hold.
            1 => "fresh:read".to_owned(),
            _ => "*".to_owned(),
        };
        let mut child = parent_tokens.clone();
        if op == 0 {
            child.remove(&render(victim));
        }
        child.insert(widened.clone());
        let child_scope = scope_of(&child);
        prop_assert!(!parent_scope.covers(&child_scope), "{} must not cover {}", parent_scope, child_scope);
        prop_assert!(!parent_scope.covers_token(&ScopeToken::parse(&widened).unwrap()));
        // It really is a widening: the child covers everything the parent had.
        prop_assert!(child_scope.covers(&parent_scope));
    }
}

// ---------------------------------------------------------------------------------------------
// ID sets
// ---------------------------------------------------------------------------------------------

/// Trust domains chosen so that one is a string prefix of another.
const TDS: [&str; 3] = ["ex", "ex.evil", "exa"];
const NAMES: [&str; 3] = ["a", "ab", "A"];
const TASKS: [&str; 2] = ["t", "tt"];

#[derive(Clone, Debug)]
enum IdSpec {
    Td(usize),
    Agent(usize, usize),
    Task(usize, usize, usize),
    Service(usize, usize),
}

fn id_spec() -> impl Strategy<Value = IdSpec> {
    prop_oneof![
        (0..TDS.len()).prop_map(IdSpec::Td),
        (0..TDS.len(), 0..NAMES.len()).prop_map(|(t, n)| IdSpec::Agent(t, n)),
        (0..TDS.len(), 0..NAMES.len(), 0..TASKS.len()).prop_map(|(t, n, k)| IdSpec::Task(t, n, k)),
        (0..TDS.len(), 0..NAMES.len()).prop_map(|(t, n)| IdSpec::Service(t, n)),
    ]
}

fn id_string(spec: &IdSpec) -> String {
    match *spec {
        IdSpec::Td(t) => format!("spiffe://{}", TDS[t]),
        IdSpec::Agent(t, n) => format!("spiffe://{}/agent/{}", TDS[t], NAMES[n]),
        IdSpec::Task(t, n, k) => {
            format!("spiffe://{}/agent/{}/task/{}", TDS[t], NAMES[n], TASKS[k])
        }
        IdSpec::Service(t, n) => format!("spiffe://{}/svc/{}", TDS[t], NAMES[n]),
    }
}

fn sid(spec: &IdSpec) -> SpiffeId {
    SpiffeId::parse(&id_string(spec)).unwrap()
}

/// The `aud` rule on the specs themselves (no strings involved).
fn model_id_covers(e: &IdSpec, x: &IdSpec) -> bool {
    use IdSpec::*;
    match (e, x) {
        (Td(a), Td(b)) => a == b,
        (Td(a), Agent(b, _) | Task(b, _, _) | Service(b, _)) => a == b,
        (Agent(t, n), Agent(u, m)) => (t, n) == (u, m),
        (Agent(t, n), Task(u, m, _)) => (t, n) == (u, m),
        (Task(t, n, k), Task(u, m, l)) => (t, n, k) == (u, m, l),
        (Service(t, n), Service(u, m)) => (t, n) == (u, m),
        _ => false,
    }
}

fn id_set(specs: &[IdSpec]) -> IdSet {
    let mut seen = BTreeSet::new();
    let ids: Vec<SpiffeId> = specs
        .iter()
        .map(sid)
        .filter(|i| seen.insert(i.clone()))
        .take(16)
        .collect();
    IdSet::new(ids).unwrap()
}

/// One narrowing of an entry: a trust domain narrows to anything inside it, an agent to one of
/// its tasks, everything else only to itself.
fn narrow_id(e: &IdSpec, keep: bool, inner: &IdSpec, task: usize) -> IdSpec {
    if keep {
        return e.clone();
    }
    match *e {
        IdSpec::Td(t) => match *inner {
            IdSpec::Td(_) => IdSpec::Td(t),
            IdSpec::Agent(_, n) => IdSpec::Agent(t, n),
            IdSpec::Task(_, n, k) => IdSpec::Task(t, n, k),
            IdSpec::Service(_, n) => IdSpec::Service(t, n),
        },
        IdSpec::Agent(t, n) => IdSpec::Task(t, n, task % TASKS.len()),
        _ => e.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn id_covering_matches_the_model(e in id_spec(), x in id_spec()) {
        let (ei, xi) = (sid(&e), sid(&x));
        prop_assert_eq!(ei.covers(&xi), model_id_covers(&e, &x), "{} covers {}", ei, xi);
        // Prefix is necessary but never sufficient (`ex` vs `ex.evil`, `a` vs `ab`).
        if ei.covers(&xi) {
            prop_assert!(xi.as_str().starts_with(ei.as_str()));
        }
    }

    #[test]
    fn any_narrowing_of_an_id_set_is_covered(
        parent in prop::collection::vec(id_spec(), 1..10),
        steps in prop::collection::vec(
            (any::<prop::sample::Index>(), any::<bool>(), id_spec(), 0..TASKS.len()),
            1..10,
        ),
    ) {
        let parent_set = id_set(&parent);
        // Only entries that made it into the set (the first 16 distinct) may be narrowed.
        let kept: Vec<IdSpec> = parent.iter().filter(|s| parent_set.ids().contains(&sid(s))).cloned().collect();
        let child: Vec<IdSpec> = steps
            .iter()
            .map(|(i, keep, inner, task)| narrow_id(i.get(&kept), *keep, inner, *task))
            .collect();
        let child_set = id_set(&child);
        prop_assert!(parent_set.covers(&child_set), "{:?} covers {:?}", parent_set, child_set);
        prop_assert!(parent_set.covers(&parent_set));
        for id in child_set.ids() {
            prop_assert!(parent_set.covers_id(id));
        }
    }

    #[test]
    fn any_widening_of_an_id_set_is_not_covered(
        // Only tasks and services, so nothing in the parent covers an agent or a trust domain.
        parent in prop::collection::vec(
            prop_oneof![
                (0..TDS.len(), 0..NAMES.len(), 0..TASKS.len()).prop_map(|(t, n, k)| IdSpec::Task(t, n, k)),
                (0..TDS.len(), 0..NAMES.len()).prop_map(|(t, n)| IdSpec::Service(t, n)),
            ],
            1..10,
        ),
        pick in any::<prop::sample::Index>(),
        op in 0u8..3,
    ) {
        let parent_set = id_set(&parent);
        let victim = pick.get(parent_set.ids()).clone();
        let widened = match op {
            // To the victim's whole trust domain.
            0 => victim.trust_domain().id(),
            // A task to its agent; a service to its trust domain.
            1 => match victim.kind() {
                IdKind::Task => {
                    let segs: Vec<&str> = victim.segments().collect();
                    SpiffeId::parse(&format!("spiffe://{}/agent/{}", victim.trust_domain_str(), segs[1])).unwrap()
                }
                _ => victim.trust_domain().id(),
            },
            // A trust domain that has a parent domain as a string prefix.
            _ => SpiffeId::parse(&format!("spiffe://{}x/agent/a/task/t", victim.trust_domain_str())).unwrap(),
        };
        let mut child: Vec<SpiffeId> = parent_set.ids().iter().filter(|i| **i != widened).cloned().collect();
        child.truncate(15);
        child.push(widened.clone());
        let child_set = IdSet::new(child).unwrap();
        prop_assert!(!parent_set.covers_id(&widened), "{:?} must not cover {}", parent_set, widened);
        prop_assert!(!parent_set.covers(&child_set));
    }
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

fn limit_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["calls", "bytes", "tokens", "cost.usd", "a_b-c"])
        .prop_map(String::from)
}

fn limits() -> impl Strategy<Value = Limits> {
    prop::collection::btree_map(limit_name(), 0u64..=(1 << 53) - 1, 1..5)
        .prop_map(|m| Limits::new(m).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_narrowing_of_limits_narrows(
        effective in limits(),
        cuts in prop::collection::btree_map(limit_name(), any::<prop::sample::Index>(), 0..5),
        added in prop::collection::btree_map(
            prop::sample::select(vec!["new1", "new2"]).prop_map(String::from),
            0u64..=(1 << 53) - 1,
            0..3,
        ),
    ) {
        // Lower (or keep) some existing ceilings, drop others, and add new ones.
        let mut m = BTreeMap::new();
        for (name, value) in effective.iter() {
            if let Some(i) = cuts.get(name) {
                m.insert(name.to_owned(), i.index(usize::try_from(value).unwrap().saturating_add(1)) as u64);
            }
        }
        m.extend(added);
        prop_assume!(!m.is_empty());
        let link = Limits::new(m).unwrap();
        prop_assert_eq!(link.narrows(&effective), Ok(()));
        let merged = effective.merge_min(&link);
        for (name, v) in merged.iter() {
            let e = effective.get(name);
            let l = link.get(name);
            prop_assert!(e.is_some() || l.is_some());
            prop_assert_eq!(Some(v), [e, l].into_iter().flatten().min());
        }
        // The effective limits after the link narrow both inputs.
        prop_assert_eq!(merged.narrows(&effective), Ok(()));
        prop_assert_eq!(merged.narrows(&link), Ok(()));
    }

    #[test]
    fn any_raised_limit_is_an_escalation(
        effective in limits(),
        pick in any::<prop::sample::Index>(),
        raise in 1u64..1000,
    ) {
        let names: Vec<(String, u64)> = effective.iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let (name, value) = pick.get(&names).clone();
        prop_assume!(value < (1 << 53) - 1);
        let raised = (value + raise).min((1 << 53) - 1);
        let mut m: BTreeMap<String, u64> = effective.iter().map(|(k, v)| (k.to_owned(), v)).collect();
        m.insert(name.clone(), raised);
        let link = Limits::new(m).unwrap();
        prop_assert_eq!(link.narrows(&effective), Err(name.clone()));
        // The merge never lets the raise through.
        prop_assert_eq!(effective.merge_min(&link).get(&name), Some(value));
    }

    #[test]
    fn merge_min_is_a_meet(a in limits(), b in limits(), c in limits()) {
        prop_assert_eq!(a.merge_min(&b), b.merge_min(&a));
        prop_assert_eq!(a.merge_min(&a), a.clone());
        prop_assert_eq!(a.merge_min(&b).merge_min(&c), a.merge_min(&b.merge_min(&c)));
        prop_assert_eq!(a.merge_min(&Limits::none()), a.clone());
    }
}
