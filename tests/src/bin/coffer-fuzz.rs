//! Long fuzz runs: `coffer-fuzz [--iterations N] [--seed S] [--write-seeds] [TARGET…]`.
//! Prints inputs, rate and panics per target; writes each panicking input to
//! `fuzz/crashes/<target>-<n>`. `--write-seeds` regenerates the seed corpus files that need
//! real formats (a pack, a snapshot, a spool segment, peer frames).

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut iterations = 1_000_000u64;
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    let mut names = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iterations" => {
                iterations = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(iterations)
            }
            "--seed" => seed = args.next().and_then(|v| v.parse().ok()).unwrap_or(seed),
            "--write-seeds" => {
                coffer_tests::fuzz_seeds::write_all();
                return;
            }
            other => names.push(other.to_string()),
        }
    }
    println!("seed {seed}, {iterations} mutated inputs per target");
    let mut failed = false;
    for target in coffer_tests::fuzz::targets() {
        if !names.is_empty() && !names.iter().any(|n| n == target.name) {
            continue;
        }
        let report = coffer_tests::fuzz::run(&target, iterations, seed);
        let rate = report.inputs as f64 / report.elapsed.as_secs_f64().max(1e-9);
        println!(
            "{:<12} {:>9} inputs  {:>8.0}/s  {:>7.1} s  {} panics",
            target.name,
            report.inputs,
            rate,
            report.elapsed.as_secs_f64(),
            report.crash_count
        );
        for (i, crash) in report.crashes.iter().enumerate() {
            let dir = coffer_tests::fuzz::corpus_dir(target.name).join("../../crashes");
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(dir.join(format!("{}-{i}", target.name)), crash);
        }
        failed |= report.crash_count > 0;
    }
    std::process::exit(i32::from(failed));
}
