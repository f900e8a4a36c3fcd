//! A small mutational fuzzer for Coffer's parsers. Each target is a function of bytes that
//! must return for every input (see `vault/src/fuzz.rs`); this runs it on the seed corpus in
//! `fuzz/corpus/<target>/` and on inputs mutated from it — bit flips, interesting bytes,
//! insertions, deletions, duplications, splices and dictionary tokens — catching panics.
//! Runs are reproducible from their seed. CI runs a short pass (`t95_fuzz`); the
//! `coffer-fuzz` binary runs long ones.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A fuzz target.
pub struct Target {
    /// Its name (the corpus directory).
    pub name: &'static str,
    /// The code under test.
    pub run: fn(&[u8]),
    /// Tokens worth splicing in (keywords of the format).
    pub dictionary: &'static [&'static str],
}

const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "null",
    "true",
    "false",
    "-1",
    "1e999",
    "0",
    "18446744073709551616",
    "\"\\u0000\"",
    "\"data\"",
    "\"versions\"",
    "\"max_versions\"",
    "\"delete_version_after\"",
    "\"cas\"",
    "\"custom_metadata\"",
];

/// Every target.
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "policy",
            run: coffer_vault::fuzz::policy,
            dictionary: &[
                "path",
                "\"",
                "{",
                "}",
                "[",
                "]",
                "=",
                ",",
                "capabilities",
                "policy",
                "*",
                "+",
                "/",
                "deny",
                "sudo",
                "read",
                "list",
                "#",
                "//",
                "/*",
                "*/",
                "\\",
                "\n",
            ],
        },
        Target {
            name: "kv2",
            run: coffer_vault::fuzz::kv2,
            dictionary: JSON_TOKENS,
        },
        Target {
            name: "pack",
            run: coffer_vault::fuzz::pack,
            dictionary: &["COFFERPACK1\n", "\u{ff}\u{ff}\u{ff}\u{ff}", "\0\0\0\0"],
        },
        Target {
            name: "spool",
            run: coffer_vault::fuzz::spool_segment,
            dictionary: &[
                "\n",
                "{\"node\":1,\"seq\":",
                "\"prev_hash\":",
                "\"hash\":",
                "\"sealed\":",
                "\"event\":",
                "\"mac\":",
                "null",
                "}",
                "\"",
            ],
        },
        Target {
            name: "json_body",
            run: coffer_vault::fuzz::json_body,
            dictionary: JSON_TOKENS,
        },
        Target {
            name: "snapshot",
            run: coffer_raft::fuzz::snapshot,
            dictionary: &[
                "CFSNAP02",
                "\u{ff}\u{ff}\u{ff}\u{ff}",
                "\0\0\0\0",
                "\0\0\0\u{1}",
            ],
        },
        Target {
            name: "peer_frame",
            run: coffer_raft::fuzz::peer_frame,
            dictionary: &["\0", "\u{1}", "\u{ff}\u{ff}\u{ff}\u{ff}\u{f}"],
        },
        Target {
            name: "request",
            run: coffer_api::fuzz::request,
            dictionary: &[
                "GET",
                "LIST",
                "POST",
                "\n",
                "/v1/",
                "secret/data/",
                "%2F",
                "%2e%2e",
                "%",
                "//",
                "/../",
                "?list=true",
                "&version=",
                "X-Vault-Token: ",
                "Authorization: Bearer ",
                "\n\n",
                "?stale=1",
            ],
        },
    ]
}

/// Where the seed corpus lives.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// The seed corpus of `target` (at least one empty input).
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(corpus_dir(target))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    if out.is_empty() {
        out.push(Vec::new());
    }
    out
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    /// Inputs tried.
    pub inputs: u64,
    /// Inputs that panicked (first few kept).
    pub crashes: Vec<Vec<u8>>,
    /// How many panicked in all.
    pub crash_count: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Largest input tried (libFuzzer's default `-max_len`): bigger inputs only repeat the
/// same paths more slowly.
const MAX_INPUT: usize = 4096;

fn mutate(rng: &mut StdRng, input: &mut Vec<u8>, pool: &[Vec<u8>], dictionary: &[&str]) {
    const INTERESTING: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, b'"', b'\\', b'\n', b'{', b'}', b'/'];
    for _ in 0..rng.gen_range(1..=4) {
        let len = input.len();
        match rng.gen_range(0..8) {
            0 if len > 0 => {
                let i = rng.gen_range(0..len);
                input[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.gen_range(0..len);
                input[i] = INTERESTING[rng.gen_range(0..INTERESTING.len())];
            }
            2 => {
                let i = rng.gen_range(0..=len);
                let n = rng.gen_range(1..=8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                input.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.gen_range(0..len);
                let j = rng.gen_range(i..=len.min(i + 16));
                input.drain(i..j);
            }
            4 if len > 0 => {
                let i = rng.gen_range(0..len);
                let j = rng.gen_range(i..=len.min(i + 32));
                let copy = input[i..j].to_vec();
                let at = rng.gen_range(0..=len);
                input.splice(at..at, copy);
            }
            5 if !pool.is_empty() => {
                let other = &pool[rng.gen_range(0..pool.len())];
                if !other.is_empty() {
                    let i = rng.gen_range(0..other.len());
                    let j = rng.gen_range(i..=other.len());
                    let at = rng.gen_range(0..=len);
                    input.splice(at..at, other[i..j].iter().copied());
                }
            }
            6 if !dictionary.is_empty() => {
                let token = dictionary[rng.gen_range(0..dictionary.len())];
                let at = rng.gen_range(0..=len);
                input.splice(at..at, token.bytes());
            }
            _ if len > 4 => {
                // Overwrite a 4-byte field with a boundary number.
                let i = rng.gen_range(0..len - 3);
                let n: u32 = [0, 1, u32::MAX, u32::MAX / 2, 64 << 20][rng.gen_range(0..5)];
                input[i..i + 4].copy_from_slice(&n.to_be_bytes());
            }
            _ => input.push(rng.gen()),
        }
    }
    input.truncate(MAX_INPUT);
}

/// Runs `target` on its corpus, then on `iterations` mutated inputs from `seed`.
pub fn run(target: &Target, iterations: u64, seed: u64) -> Report {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pool = corpus(target.name);
    let seeds = pool.len();
    let mut report = Report {
        inputs: 0,
        crashes: Vec::new(),
        crash_count: 0,
        elapsed: Duration::ZERO,
    };
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let try_one = |input: &[u8], report: &mut Report| {
        report.inputs += 1;
        if std::panic::catch_unwind(|| (target.run)(input)).is_err() {
            report.crash_count += 1;
            if report.crashes.len() < 16 {
                report.crashes.push(input.to_vec());
            }
        }
    };
    for input in pool.clone() {
        try_one(&input, &mut report);
    }
    for _ in 0..iterations {
        let mut input = pool[rng.gen_range(0..pool.len())].clone();
        mutate(&mut rng, &mut input, &pool, target.dictionary);
        try_one(&input, &mut report);
        // Keep some mutants so that mutations compound (bounded).
        if rng.gen_range(0..16) == 0 {
            if pool.len() < seeds + 512 {
                pool.push(input);
            } else {
                let i = rng.gen_range(seeds..pool.len());
                pool[i] = input;
            }
        }
    }
    std::panic::set_hook(previous);
    report.elapsed = started.elapsed();
    report
}
