//! Figure 8: a revocation list of 1,000,000 entries (700k keys, 200k token `jti`s, 50k tasks,
//! 50k agents): build and sign, verify and parse, lookups (hit and miss) against the same
//! lookups in a 1,000-entry list (O(1) means the same time), and memory: the RSS the verified
//! list keeps (target: at most 32 MiB), and the peak while verifying it.

use std::hint::black_box;
use std::time::Instant;

use agentid_protocol::{
    AgentId, Algorithm, AuthorityKey, BundleSet, JwsSigner, RevocationList, RevocationListBuilder,
    RevocationTarget, SpiffeId, TaskId, TrustBundle, TrustDomain,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::fixtures::{now, Res};
use crate::harness::{compare, Budget, Check};
use crate::net::{rss_kib, status_kib};
use crate::report::{Report, Target};

fn target(i: usize, td: &TrustDomain, iss: &SpiffeId) -> Res<RevocationTarget> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &(i as u64).to_le_bytes());
    Ok(match i % 20 {
        0..=13 => RevocationTarget::Key(URL_SAFE_NO_PAD.encode(digest.as_ref())),
        14..=17 => RevocationTarget::Jti {
            iss: iss.clone(),
            jti: URL_SAFE_NO_PAD.encode(digest.as_ref().get(..18).unwrap_or_default()),
        },
        18 => RevocationTarget::Task(TaskId::parse(&base32(
            digest.as_ref().get(..16).unwrap_or_default(),
        ))?),
        _ => RevocationTarget::Agent(AgentId::new(td, &format!("agent-{i}"))?),
    })
}

/// Lowercase RFC 4648 base32 without padding (task ids).
fn base32(bytes: &[u8]) -> String {
    const A: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(
                A.get(((buf >> bits) & 31) as usize)
                    .copied()
                    .unwrap_or(b'a'),
            ));
        }
    }
    if bits > 0 {
        out.push(char::from(
            A.get(((buf << (5 - bits)) & 31) as usize)
                .copied()
                .unwrap_or(b'a'),
        ));
    }
    out
}

fn sign_list(
    n: usize,
    key: &AuthorityKey,
    td: &TrustDomain,
    iss: &SpiffeId,
    t: u64,
) -> Res<String> {
    let mut b = RevocationListBuilder::new(td, 1, t, t + 600);
    for i in 0..n {
        b = b.entry(target(i, td, iss)?, t + 3600);
    }
    Ok(b.sign(key)?)
}

/// Resets the peak RSS (VmHWM) of this process: write "5" to /proc/self/clear_refs.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Figure 8.
pub fn run(quick: bool, budget: Budget, report: &mut Report) -> Res<()> {
    let n = 1_000_000usize;
    report.section("8. revocation list of 1,000,000 entries");
    let td = TrustDomain::parse("bench.example")?;
    let iss = SpiffeId::parse("spiffe://bench.example/agent/a/task/aaaaaaaaaaaaaaaaaaaaaaaaaa")?;
    let key = AuthorityKey::generate(Algorithm::Es256)?;
    let mut bundles = BundleSet::new();
    bundles
        .insert(TrustBundle::new(td.clone(), 1).add_revocation_key(JwsSigner::public_key(&key)))?;
    let t = now();

    let small = sign_list(1000, &key, &td, &iss, t)?;
    let small = RevocationList::verify(&small, &bundles)?;

    let start = Instant::now();
    let compact = sign_list(n, &key, &td, &iss, t)?;
    let build = start.elapsed().as_secs_f64();
    // Verify in a fresh child process, so that the memory the build left behind in this one
    // does not blur the figure: it reads the list, verifies it, and reports its RSS.
    let bytes = compact.len();
    let file = tempfile::NamedTempFile::new()?;
    let bundle = TrustBundle::new(td.clone(), 1).add_revocation_key(JwsSigner::public_key(&key));
    std::fs::write(file.path(), format!("{compact}\n{}", bundle.to_json()))?;
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("--revocation-child")
        .arg(file.path())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let nums: Vec<f64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [verify, retained, peak, _len] = nums.as_slice() else {
        return Err(format!(
            "revocation child failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    };
    let (verify, retained, peak) = (*verify, *retained as u64, *peak as u64);
    let before = 0u64;
    // This process's own copy, for the lookups.
    let list = RevocationList::verify(&compact, &bundles)?;
    drop(compact);
    if list.len() != n {
        return Err("the list lost entries".into());
    }

    // Lookups: entries present (hits) and absent (misses), each in the big and the small list.
    let hits: Vec<RevocationTarget> = (0..1000)
        .map(|i| target(i * 997, &td, &iss))
        .collect::<Res<_>>()?;
    let misses: Vec<RevocationTarget> = (0..1000)
        .map(|i| target(n + i, &td, &iss))
        .collect::<Res<_>>()?;
    let small_hits: Vec<RevocationTarget> = (0..1000)
        .map(|i| target(i, &td, &iss))
        .collect::<Res<_>>()?;
    let (mut i, mut j, mut k) = (0usize, 0usize, 0usize);
    let ok = Check::new();
    let r = compare(
        budget.scaled(if quick { 0.5 } else { 1.0 }),
        &mut [
            &mut || {
                i = (i + 1) % 1000;
                ok.and(
                    small_hits
                        .get(i)
                        .is_some_and(|x| small.revokes(black_box(x), t)),
                );
            },
            &mut || {
                j = (j + 1) % 1000;
                ok.and(hits.get(j).is_some_and(|x| list.revokes(black_box(x), t)));
            },
            &mut || {
                k = (k + 1) % 1000;
                ok.and(
                    misses
                        .get(k)
                        .is_some_and(|x| !list.revokes(black_box(x), t)),
                );
            },
        ],
    );
    if !ok.get() {
        return Err("revocation lookups gave wrong answers".into());
    }
    let get = |x: usize| r.get(x).copied().unwrap_or(0.0);
    report.line(
        "fig8.list_bytes",
        bytes as f64 / 1_048_576.0,
        "MiB compact JWS",
        1.0,
        "signed list",
        Target::None,
    );
    report.line(
        "fig8.build_and_sign",
        build,
        "s",
        build * 1e9 / n as f64 / 1000.0,
        "us per entry",
        Target::None,
    );
    report.line(
        "fig8.verify_and_parse",
        verify,
        "s",
        verify * 1e9 / n as f64 / 1000.0,
        "us per entry",
        Target::None,
    );
    report.baseline("fig8.lookup.1k_list_hit", get(0), "lookup");
    report.time(
        "fig8.lookup.1m_list_hit",
        get(1),
        "lookup",
        get(1) / get(0),
        "1k-entry list: O(1) if ~1",
        Target::AtMost(2.0),
    );
    report.time(
        "fig8.lookup.1m_list_miss",
        get(2),
        "lookup",
        get(2) / get(0),
        "1k-entry list hit",
        Target::AtMost(2.0),
    );
    let retained_mib = retained as f64 / 1024.0;
    report.line(
        "fig8.memory_retained",
        retained_mib,
        "MiB",
        retained_mib / 32.0,
        "of 32 MiB (RSS kept by the verified list)",
        Target::AtMost(1.0),
    );
    let peak_mib = peak.saturating_sub(before) as f64 / 1024.0;
    report.line(
        "fig8.memory_peak_while_verifying",
        peak_mib,
        "MiB",
        peak_mib / (bytes as f64 / 1_048_576.0),
        "the compact list's size, above the list already in memory",
        Target::None,
    );
    drop(list);
    Ok(())
}

/// `--profile-revocation ENTRIES LOOKUPS`: builds and verifies a list of ENTRIES, then makes
/// LOOKUPS lookups (hits and misses in turn) in [`lookups`], for `valgrind --tool=callgrind
/// --collect-atstart=no --toggle-collect='*revocation::lookups*'` (the instructions of the
/// lookups alone).
pub fn profile(args: &[String]) -> Res<()> {
    let n: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let count: usize = args
        .get(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let td = TrustDomain::parse("bench.example")?;
    let iss = SpiffeId::parse("spiffe://bench.example/agent/a/task/aaaaaaaaaaaaaaaaaaaaaaaaaa")?;
    let key = AuthorityKey::generate(Algorithm::Es256)?;
    let mut bundles = BundleSet::new();
    bundles
        .insert(TrustBundle::new(td.clone(), 1).add_revocation_key(JwsSigner::public_key(&key)))?;
    let t = now();
    let list = RevocationList::verify(&sign_list(n, &key, &td, &iss, t)?, &bundles)?;
    // 500 present entries spread over the list, 500 absent ones, with every list size holding
    // the same mix of entry kinds (the kind is the index modulo 20).
    let step = (n / 500).max(1);
    let targets: Vec<(RevocationTarget, bool)> = (0..1000)
        .map(|i| {
            let k = i / 2;
            if i % 2 == 0 {
                let j = (k * step / 20 * 20 + k % 20) % n.max(1);
                target(j, &td, &iss).map(|x| (x, true))
            } else {
                target(n + i, &td, &iss).map(|x| (x, false))
            }
        })
        .collect::<Res<_>>()?;
    let right = lookups(&list, &targets, count, t);
    println!(
        "{right} of {count} lookups right in a list of {}",
        list.len()
    );
    Ok(())
}

/// `count` lookups of `targets` in turn; how many gave the expected answer.
#[inline(never)]
fn lookups(
    list: &RevocationList,
    targets: &[(RevocationTarget, bool)],
    count: usize,
    t: u64,
) -> usize {
    targets
        .iter()
        .cycle()
        .take(count)
        .filter(|(x, hit)| list.revokes(black_box(x), t) == *hit)
        .count()
}

/// `--revocation-child FILE`: reads a signed list (first line) and the bundle holding its key
/// (second line), verifies the list, and prints
/// `<verify seconds> <retained KiB> <peak KiB above the list in memory> <entries>`.
pub fn child(path: &std::path::Path) -> Res<()> {
    let text = std::fs::read_to_string(path)?;
    let (compact, bundle) = text.split_once('\n').ok_or("no bundle")?;
    let td = TrustDomain::parse("bench.example")?;
    let mut bundles = BundleSet::new();
    bundles.insert(TrustBundle::parse(&td, bundle.as_bytes())?)?;
    let compact = compact.to_owned();
    drop(text);
    let base = rss_kib();
    let list_kib = (compact.len() / 1024) as u64;
    reset_peak();
    let start = Instant::now();
    let list = RevocationList::verify(&compact, &bundles)?;
    let secs = start.elapsed().as_secs_f64();
    let peak = status_kib("VmHWM:").saturating_sub(base);
    drop(compact);
    let retained = rss_kib().saturating_sub(base.saturating_sub(list_kib));
    println!("{secs} {retained} {peak} {}", list.len());
    Ok(())
}
