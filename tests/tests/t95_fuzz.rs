//! A short fuzz pass on every CI run: each parser on its seed corpus and a few thousand
//! mutated inputs, none of which may panic. The seed is printed (set COFFER_FUZZ_SEED to
//! replay it); long runs are `cargo run --release -p coffer-tests --bin coffer-fuzz`.

use coffer_tests::fuzz::{run, targets};

#[test]
fn no_input_panics_a_parser() {
    let seed = std::env::var("COFFER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        });
    eprintln!("fuzz seed {seed} (COFFER_FUZZ_SEED={seed} replays it)");
    let iterations = std::env::var("COFFER_FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    for target in targets() {
        let report = run(&target, iterations, seed);
        eprintln!(
            "{}: {} inputs in {:?}, {} panics",
            target.name, report.inputs, report.elapsed, report.crash_count
        );
        assert_eq!(
            report.crash_count,
            0,
            "{} panicked (seed {seed}) on: {:?}",
            target.name,
            report
                .crashes
                .iter()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
        );
    }
}
