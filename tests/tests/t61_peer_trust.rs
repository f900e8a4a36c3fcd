//! The peer port admits only the certificate the membership pins for a current member, on
//! real processes over real mutual TLS. Every kind of peer request is tried with four kinds
//! of stolen credentials — an expired unused pack's certificate, a consumed pack's
//! certificate used from a second process, a removed node's member certificate, and the old
//! certificate of a node id that joined again — and each is refused with the reason. The
//! cluster's data, term and audit are unchanged afterwards, and the refusals are counted.

use std::sync::Arc;
use std::time::Duration;

use coffer_raft::{
    Forwarder, MembershipChange, NodeAddr, PeerCaller, PeerIdentity, PeerNetwork, Txn,
};
use coffer_tests::procs::{block_on, ProcCluster};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{SnapshotMeta, Vote};
use serde_json::{json, Value};
use zeroize::Zeroizing;

/// A stolen credential: a certificate and key for node `id`.
struct Credential {
    name: &'static str,
    id: u64,
    cert_pem: String,
    key_pem: String,
    ca_pem: String,
}

impl Credential {
    fn identity(&self) -> Arc<PeerIdentity> {
        Arc::new(PeerIdentity {
            node_id: self.id,
            ca_pem: self.ca_pem.clone(),
            cert_pem: self.cert_pem.clone(),
            key_pem: Zeroizing::new(self.key_pem.clone()),
            source_ip: None,
        })
    }
}

/// Opens a pack file (whatever its expiry) and returns its registration credential.
fn pack_credential(
    name: &'static str,
    pack: &std::path::Path,
    pass: &std::path::Path,
) -> Credential {
    let bytes = std::fs::read(pack).unwrap();
    let pass = std::fs::read_to_string(pass).unwrap();
    let contents = coffer_vault::rules::pack::open_pack(&bytes, pass.trim(), 0).unwrap();
    Credential {
        name,
        id: contents.node_id,
        cert_pem: contents.node_cert_pem.clone(),
        key_pem: contents.node_key_pem.clone(),
        ca_pem: contents.ca_cert_pem.clone(),
    }
}

/// A node's member credential, read from its data directory.
fn member_credential(name: &'static str, dir: &std::path::Path, id: u64) -> Credential {
    let read = |f: &str| std::fs::read_to_string(dir.join("tls").join(f)).unwrap();
    Credential {
        name,
        id,
        cert_pem: read("node.pem"),
        key_pem: read("node-key.pem"),
        ca_pem: read("ca.pem"),
    }
}

/// Tries every kind of peer request against `target` with `cred`; returns each answer as
/// text (every one must be a refusal).
fn attack(cred: &Credential, target: u64, addr: &NodeAddr) -> Vec<(&'static str, String)> {
    let identity = cred.identity();
    let addr = addr.clone();
    let id = cred.id;
    block_on(async move {
        let mut out = Vec::new();
        let option = || RPCOption::new(Duration::from_secs(5));
        let vote = Vote::new_committed(1000, id);
        let mut raft = PeerNetwork::new(identity.clone())
            .new_client(target, &addr)
            .await;
        let append = AppendEntriesRequest {
            vote,
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        };
        out.push((
            "append_entries",
            format!("{:?}", raft.append_entries(append, option()).await),
        ));
        let mut raft = PeerNetwork::new(identity.clone())
            .new_client(target, &addr)
            .await;
        let ballot = VoteRequest::new(Vote::new(1000, id), None);
        out.push(("vote", format!("{:?}", raft.vote(ballot, option()).await)));
        let mut raft = PeerNetwork::new(identity.clone())
            .new_client(target, &addr)
            .await;
        let snapshot = InstallSnapshotRequest {
            vote,
            meta: SnapshotMeta {
                last_log_id: None,
                last_membership: Default::default(),
                snapshot_id: "stolen".into(),
            },
            offset: 0,
            data: vec![1, 2, 3],
            done: false,
        };
        out.push((
            "install_snapshot",
            format!("{:?}", raft.install_snapshot(snapshot, option()).await),
        ));
        let fw = Forwarder::new(identity.clone());
        let wipe = Txn::new().delete_prefix("kv/").delete_prefix("audit/");
        out.push((
            "forward",
            format!("{:?}", fw.write(target, &addr, wipe).await),
        ));
        out.push((
            "read_index",
            format!("{:?}", fw.read_index(target, &addr).await),
        ));
        out.push(("members", format!("{:?}", fw.members(target, &addr).await)));
        let change = MembershipChange::Remove { id: target };
        out.push((
            "membership",
            format!("{:?}", fw.membership(target, &addr, change).await),
        ));
        let origin = PeerCaller {
            node_id: id,
            cert_sha256: "00".repeat(32),
        };
        out.push((
            "app_relayed",
            format!(
                "{:?}",
                fw.app_relayed(target, &addr, origin, b"{}".to_vec()).await
            ),
        ));
        out.push((
            "roster",
            format!(
                "{:?}",
                fw.roster(target, &addr, Duration::from_secs(5)).await
            ),
        ));
        out
    })
}

fn assert_all_refused(answers: &[(&str, String)], cred: &Credential, reason: &str) {
    for (kind, answer) in answers {
        assert!(
            answer.contains(reason),
            "{}: {kind} was not refused with {reason:?}: {answer}",
            cred.name
        );
    }
}

/// `coffer_peer_refusals_total{reason=…}` on node `id`.
fn refusals(c: &ProcCluster, id: u64, reason: &str) -> f64 {
    let client = c.client(id);
    let text = block_on(async move {
        client
            .get_text("sys/metrics?format=prometheus")
            .await
            .unwrap()
    });
    let prefix = format!("coffer_peer_refusals_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn leader_addr(c: &ProcCluster) -> NodeAddr {
    NodeAddr {
        api_addr: c.addrs[&1].api.clone(),
        peer_addr: c.addrs[&1].peer.clone(),
        // The attacker does not care whom it talks to.
        cert_sha256: String::new(),
    }
}

fn read_secret(c: &ProcCluster) -> Value {
    let client = c.client(1);
    block_on(async move {
        client
            .request("GET", "secret/data/crown", None)
            .await
            .unwrap()
            .body
    })
}

fn term(c: &ProcCluster) -> f64 {
    c.metric(1, "coffer_raft_term").expect("term")
}

#[test]
fn stolen_and_stale_certificates_are_refused_for_every_peer_request() {
    let mut c = ProcCluster::found();
    let client = c.client(1);
    block_on(async move {
        client
            .request(
                "POST",
                "secret/data/crown",
                Some(&json!({"data": {"jewel": "ruby"}})),
            )
            .await
            .unwrap();
    });
    c.add_node(1, 2, true);
    let before = read_secret(&c);
    let term_before = term(&c);
    let addr = leader_addr(&c);

    // 1. An unused pack, expired.
    let (expired_pack, expired_pass) = c.pack(1, 9, false, &["--ttl", "1s"]);
    let expired = pack_credential("expired pack", &expired_pack, &expired_pass);
    c.wait(Duration::from_secs(10), "the pack to expire", |_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            > coffer_vault::rules::pack::open_pack(
                &std::fs::read(&expired_pack).unwrap(),
                std::fs::read_to_string(&expired_pass).unwrap().trim(),
                0,
            )
            .unwrap()
            .expires_at
    });
    assert_all_refused(&attack(&expired, 1, &addr), &expired, "not a member");

    // 2. A pack that node 3 used; a second process holds a copy of it.
    let (pack3, pass3) = c.pack(1, 3, false, &[]);
    let copy = pack_credential("consumed pack (second process)", &pack3, &pass3);
    let (code, _, err) = c.join(3, &pack3, &pass3);
    assert_eq!(code, 0, "{err}");
    c.start(3);
    c.wait(Duration::from_secs(60), "node 3 a learner", |c| {
        c.members(1)
            .is_some_and(|m| m.iter().any(|x| x["node_id"].as_u64() == Some(3)))
    });
    // Node 3 is a member now, but with the certificate issued at registration for its own
    // key: the pack's certificate is not it.
    assert_all_refused(
        &attack(&copy, 1, &addr),
        &copy,
        "node 3 is a member, but not with this certificate",
    );
    // Registering with the copy again (another `operator join`) is refused too.
    let (code, _, err) = c.join_into(3, "node3-copy", &pack3, &pass3);
    assert_ne!(code, 0);
    assert!(err.contains("pack already used"), "{err}");

    // 3. Node 2 removed: its member certificate no longer opens anything.
    let removed = member_credential("removed node", &c.data_dir(2), 2);
    let (code, _, err) = c.cli(1, &["operator", "remove-node", "2"]);
    assert_eq!(code, 0, "{err}");
    c.kill(2);
    assert_all_refused(&attack(&removed, 1, &addr), &removed, "not a member");

    // 4. Node id 2 joins again from a new pack (a fresh machine): the old certificate of
    // node 2 stays refused, the new node works.
    std::fs::rename(c.data_dir(2), c.dir.path().join("node2-removed")).unwrap();
    let (pack2, pass2) = c.pack(1, 2, false, &[]);
    let (code, _, err) = c.join(2, &pack2, &pass2);
    assert_eq!(code, 0, "{err}");
    c.start(2);
    c.wait(Duration::from_secs(60), "the new node 2 caught up", |c| {
        c.members(1).is_some_and(|m| {
            m.iter().any(|x| {
                x["node_id"].as_u64() == Some(2) && x["lag"].as_u64().is_some_and(|l| l < 5)
            })
        })
    });
    assert_all_refused(
        &attack(&removed, 1, &addr),
        &removed,
        "not with this certificate",
    );

    // Nothing changed: the data, the term (no stolen vote counted), the audit chain.
    assert_eq!(read_secret(&c)["data"], before["data"]);
    assert!(
        term(&c) < 1000.0 && term(&c) <= term_before + 2.0,
        "the term was pushed: {} -> {}",
        term_before,
        term(&c)
    );
    let (code, out, err) = c.cli(1, &["audit", "verify"]);
    assert_eq!(code, 0, "audit verify: {out}{err}");
    assert!(refusals(&c, 1, "not_member") >= 18.0);
    assert!(refusals(&c, 1, "revoked_certificate") >= 18.0);
    assert!(refusals(&c, 1, "registration") >= 1.0);
}
