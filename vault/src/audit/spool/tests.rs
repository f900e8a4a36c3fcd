use std::fs::OpenOptions;
use std::io::Write;

use super::files::segment_name;
use super::*;
use crate::audit::record::chain;
use crate::audit::sealing::BatchSealer;

fn ev(i: usize) -> AuditEvent {
    AuditEvent {
        path: format!("secret/data/{i}"),
        operation: "read".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_appends_share_fsyncs_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path(), 3).unwrap());
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let s = spool.clone();
            tokio::spawn(async move { s.append(ev(i)).await.unwrap() })
        })
        .collect();
    let mut seqs: Vec<u64> = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().seq);
    }
    seqs.sort();
    assert_eq!(seqs, (1..=64).collect::<Vec<_>>());
    assert!(spool.stats().fsyncs.load(Ordering::Relaxed) <= 64);
    let read = spool.read_from(1, 1000, None).unwrap();
    assert_eq!(read.len(), 64);
    assert!(super::super::record::verify_chain(3, (0, GENESIS), &read).is_empty());
    assert!(read.iter().all(|r| r.epoch == spool.epoch()));
    let epoch = spool.epoch().to_string();
    drop(spool);

    let reopened = Spool::open(dir.path(), 3).unwrap();
    assert_eq!(reopened.last_seq(), 64);
    assert_eq!(reopened.epoch(), epoch, "the epoch survives a restart");
    let next = reopened.append(ev(99)).await.unwrap();
    assert_eq!(
        (next.seq, next.prev_hash.as_str()),
        (65, read[63].hash.as_str())
    );
}

#[tokio::test]
async fn bodies_are_sealed_once_a_recipient_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 2).unwrap();
    spool.append(ev(1)).await.unwrap();
    let key = SpoolKey::generate();
    spool.set_recipient(key.public());
    spool.append(ev(2)).await.unwrap();
    let text = std::fs::read_to_string(dir.path().join(segment_name(1))).unwrap();
    assert!(
        text.contains("secret/data/1"),
        "before a key exists bodies are clear"
    );
    assert!(
        !text.contains("secret/data/2"),
        "afterwards they are sealed"
    );
    assert!(
        spool.read_from(1, 10, None).is_err(),
        "a sealed node cannot read sealed bodies"
    );
    let read = spool.read_from(1, 10, Some(&key)).unwrap();
    assert_eq!(read[1].event.path, "secret/data/2");
    let v = spool.verify(Some(&key)).unwrap();
    assert_eq!((v.records, v.problems.len()), (2, 0), "{:?}", v.problems);
    drop(spool);
    let reopened = Spool::open(dir.path(), 2).unwrap();
    reopened.set_recipient(key.public());
    let next = reopened.append(ev(3)).await.unwrap();
    assert_eq!(
        (next.seq, next.prev_hash.as_str()),
        (3, read[1].hash.as_str())
    );
}

#[tokio::test]
async fn a_torn_tail_is_truncated_and_the_chain_continues() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1).unwrap();
    for i in 0..3 {
        spool.append(ev(i)).await.unwrap();
    }
    drop(spool);
    let seg = dir.path().join(segment_name(1));
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(br#"{"node":1,"seq":4,"ti"#).unwrap();
    drop(f);
    let spool = Spool::open(dir.path(), 1).unwrap();
    assert_eq!(spool.last_seq(), 3);
    assert_eq!(spool.append(ev(4)).await.unwrap().seq, 4);
    let v = spool.verify(None).unwrap();
    assert_eq!((v.records, v.problems.len()), (4, 0));
}

#[tokio::test]
async fn reads_resume_and_segments_roll_and_prune() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1).unwrap();
    let n = SEGMENT_RECORDS as usize + 10;
    for i in 0..n {
        spool.append(ev(i)).await.unwrap();
    }
    assert_eq!(list_segments(dir.path()).unwrap().len(), 2);
    let mut next = 1;
    while next <= n as u64 {
        let batch = spool.read_from(next, 256, None).unwrap();
        assert_eq!(batch[0].seq, next);
        next = batch.last().unwrap().seq + 1;
    }
    spool.prune_through(SEGMENT_RECORDS).unwrap();
    assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
    assert_eq!(
        spool.read_from(SEGMENT_RECORDS + 1, 5, None).unwrap()[0].seq,
        SEGMENT_RECORDS + 1
    );
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_failed_write_fails_closed_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1).unwrap();
    // The first segment is created on the first append; make it a disk that is full.
    std::os::unix::fs::symlink("/dev/full", dir.path().join(segment_name(1))).unwrap();
    let err = spool.append(ev(1)).await.unwrap_err().to_string();
    assert!(err.starts_with("audit spool unavailable: write:"), "{err}");
    assert_eq!(spool.failure().as_deref(), Some(err.as_str()));
    assert_eq!(
        spool.append(ev(2)).await.unwrap_err().to_string(),
        err,
        "refuses until restart"
    );
    assert_eq!(spool.last_seq(), 0, "nothing was acknowledged");
}

/// Rewrites line `seq` of the first segment with `edit` applied to its parsed form.
fn rewrite(dir: &Path, seq: u64, edit: impl Fn(&mut SpoolLine)) {
    let seg = dir.join(segment_name(1));
    let text = std::fs::read_to_string(&seg).unwrap();
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let mut line: SpoolLine = serde_json::from_str(l).unwrap();
            if line.seq == seq {
                edit(&mut line);
            }
            serde_json::to_string(&line).unwrap()
        })
        .collect();
    std::fs::write(&seg, lines.join("\n") + "\n").unwrap();
}

#[tokio::test]
async fn without_the_mac_key_nobody_rewrites_a_record_undetected() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1).unwrap();
    let key = SpoolKey::generate();
    spool.set_recipient(key.public());
    spool.set_mac_key(Some(Zeroizing::new([7u8; 32])));
    for i in 0..4 {
        spool.append(ev(i)).await.unwrap();
    }
    let epoch = spool.epoch().to_string();
    // Someone with disk access (the spool's public key is public) forges record 2: a
    // new body, sealed to the public key, with a hash that fits the chain.
    rewrite(dir.path(), 2, |line| {
        let mut forged = ev(999);
        forged.path = "secret/data/innocent".into();
        let rec = chain(1, &epoch, 2, &line.prev_hash, forged);
        let sealer = BatchSealer::new(&key.public());
        *line = SpoolLine::of(&rec, Some(&sealer), None);
        line.mac = Some("00".repeat(32));
    });
    let err = spool.read_from(1, 10, Some(&key)).unwrap_err().to_string();
    assert!(err.contains("record 2 fails its MAC"), "{err}");
    let v = spool.verify(Some(&key)).unwrap();
    assert!(
        v.problems
            .iter()
            .any(|p| p.seq == 2 && p.kind == "tampered" && p.detail.contains("MAC")),
        "{:?}",
        v.problems
    );
    // A sealed body turned clear is refused even where no MAC can be checked.
    spool.set_mac_key(None);
    rewrite(dir.path(), 3, |line| {
        line.sealed = None;
        line.mac = None;
        line.event = Some(ev(3));
    });
    let err = spool.read_from(3, 10, Some(&key)).unwrap_err().to_string();
    assert!(err.contains("clear body after"), "{err}");
}

#[tokio::test]
async fn records_written_while_sealed_are_reported_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1).unwrap();
    let key = SpoolKey::generate();
    spool.set_recipient(key.public());
    spool.set_mac_key(Some(Zeroizing::new([7u8; 32])));
    spool.append(ev(1)).await.unwrap();
    spool.set_mac_key(None);
    spool.append(ev(2)).await.unwrap();
    spool.set_mac_key(Some(Zeroizing::new([7u8; 32])));
    let v = spool.verify(Some(&key)).unwrap();
    assert_eq!((v.records, v.unauthenticated, v.problems.len()), (2, 1, 0));
    assert_eq!(spool.head().0, 2);
}

#[tokio::test]
async fn a_flipped_byte_is_reported_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1).unwrap();
    for i in 0..5 {
        spool.append(ev(i)).await.unwrap();
    }
    let seg = dir.path().join(segment_name(1));
    let mut bytes = std::fs::read(&seg).unwrap();
    let third = bytes
        .split(|b| *b == b'\n')
        .take(2)
        .map(|l| l.len() + 1)
        .sum::<usize>();
    let pos = third
        + bytes[third..]
            .windows(11)
            .position(|w| w == b"secret/data")
            .unwrap();
    bytes[pos] ^= 0x20;
    std::fs::write(&seg, bytes).unwrap();
    let problems = spool.verify(None).unwrap().problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        (problems[0].seq, problems[0].kind.as_str()),
        (3, "tampered")
    );
}

#[tokio::test]
async fn an_append_after_a_waiter_enabled_itself_wakes_it() {
    // The shipper registers before it looks at the spool; a record made while it ships must
    // wake it, not wait for its retry timer.
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1).unwrap();
    let changed = spool.changed();
    tokio::pin!(changed);
    changed.as_mut().enable();
    spool.append(ev(1)).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(30), changed)
        .await
        .expect("the append woke the waiter");
}
