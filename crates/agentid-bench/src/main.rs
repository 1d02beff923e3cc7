//! # agentid-bench
//!
//! The cost of agent authentication, measured against its physical limits and against the peers a
//! user would pick instead, side by side in one process and one run.
//!
//! ```sh
//! cargo run --release -p agentid-bench -- --quick   # under a minute on 2 cores
//! cargo run --release -p agentid-bench              # the full run (a few minutes)
//! cargo run --release -p agentid-bench -- --only 2,4
//! ```
//!
//! Every figure prints one line, `name: value unit  (ratio to its baseline ...)`, and every
//! baseline is measured in the same run. See BENCHMARKS.md at the repository root.
#![forbid(unsafe_code)]

mod ca;
mod ca_replicas;
mod ca_revocation;
mod ca_service;
mod chains;
mod fixtures;
mod harness;
mod http;
mod net;
mod peers;
mod report;
mod revocation;
mod session;
mod sigops;

use std::collections::BTreeSet;
use std::time::Instant;

use agentid_protocol::Algorithm;

use crate::fixtures::Res;
use crate::harness::Budget;
use crate::report::Report;

const USAGE: &str =
    "usage: agentid-bench [--quick] [--only N[,N...]]  (figures 1-13; 14 only with --only)";

fn main() {
    if let Err(e) = run() {
        eprintln!("agentid-bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--memory-client") {
        return memory_client(&args);
    }
    if args.first().map(String::as_str) == Some("--revocation-child") {
        let path = args.get(1).ok_or("--revocation-child FILE")?;
        return revocation::child(std::path::Path::new(path));
    }
    if args.first().map(String::as_str) == Some("--ca-service") {
        let [_, dir, writer] = args.as_slice() else {
            return Err("--ca-service DIR WRITER".into());
        };
        return ca_service::child(std::path::Path::new(dir), writer);
    }
    if args.first().map(String::as_str) == Some("--revocation-sessions") {
        let [_, dir, addr] = args.as_slice() else {
            return Err("--revocation-sessions DIR ADDR".into());
        };
        return ca_revocation::clients(std::path::Path::new(dir), addr.parse()?);
    }
    if args.first().map(String::as_str) == Some("--profile-chain") {
        return chains::profile(&args);
    }
    if args.first().map(String::as_str) == Some("--profile-http") {
        return http::profile(&args);
    }
    if args.first().map(String::as_str) == Some("--profile-session") {
        return session::profile(&args);
    }
    if args.first().map(String::as_str) == Some("--profile-peer") {
        return peers::profile(&args);
    }
    if args.first().map(String::as_str) == Some("--profile-ca-service") {
        return ca_service::profile(&args);
    }
    if args.first().map(String::as_str) == Some("--profile-revocation") {
        return revocation::profile(&args);
    }
    let mut quick = false;
    let mut only: BTreeSet<u32> = (1..=13).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--only" => {
                let list = it.next().ok_or(USAGE)?;
                only = list
                    .split(',')
                    .map(|s| s.trim().parse::<u32>())
                    .collect::<Result<_, _>>()?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}; {USAGE}").into()),
        }
    }
    let started = Instant::now();
    let budget = Budget::new(quick);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "# agentid-bench {} mode, {} CPUs, load average {}",
        if quick { "quick" } else { "full" },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut report = Report::default();
    let pki = fixtures::Pki::new()?;
    let ops = sigops::measure(budget)?;
    if only.contains(&1) || only.contains(&3) {
        session::run(&pki, &ops, budget, &mut report)?;
    }
    if only.contains(&2) || only.contains(&4) {
        let es = chains::Synth::new(Algorithm::Es256)?;
        let ed = chains::Synth::new(Algorithm::Ed25519)?;
        if only.contains(&2) {
            chains::run(&[&es, &ed], budget, &mut report)?;
        }
        if only.contains(&4) {
            peers::run(&es, &ed, budget, &mut report)?;
        }
    }
    if only.contains(&5) {
        ca::run(&pki, &ops, quick, &mut report)?;
    }
    if only.contains(&6) {
        net::throughput(&pki, quick, &mut report)?;
    }
    if only.contains(&7) {
        net::memory(&pki, quick, &mut report)?;
    }
    if only.contains(&8) {
        revocation::run(quick, budget, &mut report)?;
    }
    if [9, 10, 11].iter().any(|f| only.contains(f)) {
        http::run(&pki, &ops, budget, &only, &mut report)?;
    }
    if only.contains(&12) {
        ca_service::run(&ops, quick, &mut report)?;
    }
    if only.contains(&13) {
        ca_revocation::run(quick, &mut report)?;
    }
    if only.contains(&14) {
        ca_replicas::run(quick, &mut report)?;
    }
    report.summary();
    println!("# finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `--memory-client DIR ADDR COUNT raw|agentid`: the child process of figure 7.
fn memory_client(args: &[String]) -> Res<()> {
    let [_, dir, addr, count, mode] = args else {
        return Err("--memory-client DIR ADDR COUNT raw|agentid".into());
    };
    let mode = match mode.as_str() {
        "raw" => net::Mode::Raw,
        _ => net::Mode::Agentid,
    };
    net::memory_client(
        std::path::Path::new(dir),
        addr.parse()?,
        count.parse()?,
        mode,
    )
}
