//! Three engines replicating over the real mutual-TLS peer transport on loopback: election,
//! replication, failover after the leader stops, and refusals of strangers and impostors.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use coffer_raft::{
    serve_peers, Engine, EngineConfig, NodeAddr, PeerIdentity, PeerNetwork, RaftTuning, Txn,
};
use coffer_tls::CertificateAuthority;
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use tokio::net::TcpListener;

struct Node {
    engine: Engine,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    addr: String,
    /// Fingerprint of the node's certificate, pinned in the membership.
    pin: String,
}

fn identity(ca: &CertificateAuthority, id: u64) -> PeerIdentity {
    let cert = ca.issue_node(id, &["127.0.0.1".to_string()]).unwrap();
    PeerIdentity {
        node_id: id,
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: cert.cert_pem.clone(),
        key_pem: cert.key_pem.clone(),
        source_ip: None,
    }
}

async fn start(
    ca: &CertificateAuthority,
    id: u64,
    listener: TcpListener,
    dir: &std::path::Path,
) -> Node {
    start_as(Arc::new(identity(ca, id)), listener, dir).await
}

/// Starts (or restarts) the node of `ident`, its data under `dir`.
async fn start_as(ident: Arc<PeerIdentity>, listener: TcpListener, dir: &std::path::Path) -> Node {
    let id = ident.node_id;
    let addr = listener.local_addr().unwrap().to_string();
    let tls =
        coffer_tls::peer_server_config(&ident.ca_pem, &ident.cert_pem, &ident.key_pem).unwrap();
    let config = EngineConfig {
        node_id: id,
        data_dir: dir.join(format!("n{id}")),
        tuning: RaftTuning::default(),
        storage: Default::default(),
    };
    let network = PeerNetwork::new(ident.clone());
    let contacts = network.contacts();
    let engine = Engine::open(config, network)
        .await
        .unwrap()
        .with_contacts(contacts);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_peers(listener, tls, engine.clone(), async move {
        let _ = stopped.await;
    }));
    Node {
        engine,
        stop: Some(stop),
        addr,
        pin: coffer_tls::fingerprint_pem(&ident.cert_pem).unwrap(),
    }
}

async fn wait_for<F: Fn() -> bool>(what: &str, f: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that a peer request failed with a message containing `want`.
fn refused<T: std::fmt::Debug, E: std::fmt::Display>(result: Result<T, E>, want: &str) {
    let err = result.unwrap_err().to_string();
    assert!(err.contains(want), "{err}");
}

fn leader_of(nodes: &[&Node]) -> Option<u64> {
    let leaders: Vec<Option<u64>> = nodes
        .iter()
        .map(|n| n.engine.leader().map(|(id, _)| id))
        .collect();
    let first = leaders[0]?;
    leaders.iter().all(|l| *l == Some(first)).then_some(first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_voters_elect_replicate_and_fail_over_over_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("t").unwrap();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        nodes.push(start(&ca, i as u64 + 1, l, dir.path()).await);
    }
    let members: BTreeMap<u64, NodeAddr> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                i as u64 + 1,
                NodeAddr {
                    api_addr: String::new(),
                    peer_addr: n.addr.clone(),
                    cert_sha256: n.pin.clone(),
                },
            )
        })
        .collect();
    nodes[0].engine.initialize_cluster(members).await.unwrap();

    let all: Vec<&Node> = nodes.iter().collect();
    wait_for("a leader all agree on", || leader_of(&all).is_some()).await;
    let leader = leader_of(&all).unwrap();
    let l = &nodes[leader as usize - 1];
    let res = l.engine.write(Txn::new().put("k", "v1")).await.unwrap();
    assert!(res.succeeded);
    let target = l.engine.applied_index();
    wait_for("every node to apply the write", || {
        nodes.iter().all(|n| n.engine.applied_index() >= target)
    })
    .await;
    for n in &nodes {
        assert_eq!(n.engine.get(b"k").unwrap().unwrap().value, b"v1");
    }

    // Stop the leader: its peer server and its Raft.
    let mut old = nodes.remove(leader as usize - 1);
    let _ = old.stop.take().unwrap().send(());
    old.engine.shutdown().await.unwrap();
    let rest: Vec<&Node> = nodes.iter().collect();
    wait_for("a new leader among the survivors", || {
        leader_of(&rest).is_some_and(|id| id != leader)
    })
    .await;
    let new_leader = leader_of(&rest).unwrap();
    let n = nodes
        .iter()
        .find(|n| n.engine.node_id() == new_leader)
        .unwrap();
    assert!(
        n.engine
            .write(Txn::new().put("k", "v2"))
            .await
            .unwrap()
            .succeeded
    );
    let target = n.engine.applied_index();
    wait_for("the survivors to apply", || {
        nodes.iter().all(|n| n.engine.applied_index() >= target)
    })
    .await;
    for n in &nodes {
        assert_eq!(n.engine.get(b"k").unwrap().unwrap().value, b"v2");
    }
}

/// A new leader whose followers hold part of its log sends the part they hold as ids and
/// only the rest whole; every node ends with the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_sends_held_entries_as_ids_and_the_rest_whole() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("t").unwrap();
    let idents: Vec<Arc<PeerIdentity>> = (1..=3).map(|id| Arc::new(identity(&ca, id))).collect();
    let mut addrs = Vec::new();
    let mut nodes: Vec<Option<Node>> = Vec::new();
    for ident in &idents {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        nodes.push(Some(start_as(ident.clone(), listener, dir.path()).await));
    }
    let members: BTreeMap<u64, NodeAddr> = nodes
        .iter()
        .flatten()
        .map(|n| {
            (
                n.engine.node_id(),
                NodeAddr {
                    api_addr: String::new(),
                    peer_addr: n.addr.clone(),
                    cert_sha256: n.pin.clone(),
                },
            )
        })
        .collect();
    nodes[0]
        .as_ref()
        .unwrap()
        .engine
        .initialize_cluster(members)
        .await
        .unwrap();
    let live = |nodes: &[Option<Node>]| -> Option<u64> {
        let up: Vec<&Node> = nodes.iter().flatten().collect();
        leader_of(&up)
    };
    wait_for("a leader", || live(&nodes).is_some()).await;
    let leader = live(&nodes).unwrap();
    let at = |id: u64| (id - 1) as usize;
    let value = vec![7u8; 2048];
    let write = |engine: Engine, from: usize, to: usize| {
        let value = value.clone();
        async move {
            for i in from..to {
                let txn = Txn::new().put(format!("k{i:04}"), value.clone());
                assert!(engine.write(txn).await.unwrap().succeeded);
            }
        }
    };
    write(nodes[at(leader)].as_ref().unwrap().engine.clone(), 0, 300).await;
    // One follower stops; the other keeps the quorum and gets 100 more entries. (The new
    // leader's first probe starts half-way through its log of about 400 entries: the other
    // follower holds the first hundred entries probed and lacks the rest.)
    let behind = (1..=3).find(|id| *id != leader).unwrap();
    let ahead = (1..=3).find(|id| *id != leader && *id != behind).unwrap();
    let target = nodes[at(leader)].as_ref().unwrap().engine.applied_index();
    wait_for("the followers to apply", || {
        nodes
            .iter()
            .flatten()
            .all(|n| n.engine.applied_index() >= target)
    })
    .await;
    let stop = |nodes: &mut Vec<Option<Node>>, id: u64| {
        let mut node = nodes[at(id)].take().unwrap();
        let _ = node.stop.take().unwrap().send(());
        node.engine
    };
    stop(&mut nodes, behind).shutdown().await.unwrap();
    write(nodes[at(leader)].as_ref().unwrap().engine.clone(), 300, 400).await;
    let target = nodes[at(leader)].as_ref().unwrap().engine.applied_index();
    wait_for("the other follower to apply", || {
        nodes[at(ahead)].as_ref().unwrap().engine.applied_index() >= target
    })
    .await;
    // The leader goes; the lagging follower comes back. Only the follower that kept up can
    // win (it has the longer log), and it finds the other's log matching up to where it
    // stopped: those entries go as ids, the rest whole.
    stop(&mut nodes, leader).shutdown().await.unwrap();
    let listener = TcpListener::bind(addrs[at(behind)]).await.unwrap();
    nodes[at(behind)] = Some(start_as(idents[at(behind)].clone(), listener, dir.path()).await);
    wait_for("the follower that kept up leading", || {
        live(&nodes) == Some(ahead)
    })
    .await;
    let new = nodes[at(ahead)].as_ref().unwrap();
    write(new.engine.clone(), 400, 401).await;
    let target = new.engine.applied_index();
    wait_for("the returning follower to apply everything", || {
        nodes[at(behind)].as_ref().unwrap().engine.applied_index() >= target
    })
    .await;
    let (whole, as_ids) = new.engine.entries_sent();
    assert!(as_ids > 0, "no entries went as ids ({whole} whole)");
    assert!(
        whole >= 100,
        "the entries the follower lacked went whole ({whole})"
    );
    for id in [behind, ahead] {
        let engine = &nodes[at(id)].as_ref().unwrap().engine;
        let keys = engine.scan(b"k", None, 1000).unwrap();
        assert_eq!(keys.len(), 401, "node {id}");
        assert!(keys.iter().all(|(_, e)| e.value == value), "node {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strangers_and_impostors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("t").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = start(&ca, 1, listener, dir.path()).await;
    let addr = NodeAddr {
        api_addr: String::new(),
        peer_addr: node.addr.clone(),
        cert_sha256: node.pin.clone(),
    };
    // Node 1's cluster has two voters: itself and node 2 with this certificate.
    let two = Arc::new(identity(&ca, 2));
    let pin2 = coffer_tls::fingerprint_pem(&two.cert_pem).unwrap();
    let members = BTreeMap::from([
        (1, addr.clone()),
        (
            2,
            NodeAddr {
                api_addr: String::new(),
                peer_addr: "127.0.0.1:9".into(),
                cert_sha256: pin2,
            },
        ),
    ]);
    node.engine.initialize_cluster(members).await.unwrap();
    let vote =
        |claimed: u64| openraft::raft::VoteRequest::new(openraft::Vote::new(5, claimed), None);
    let option = || RPCOption::new(Duration::from_secs(2));

    // Node 2's genuine certificate, but the vote claims node 3.
    let mut impostor = PeerNetwork::new(two.clone()).new_client(1, &addr).await;
    refused(
        impostor.vote(vote(3), option()).await,
        "peer certificate is for node 2 but the request claims node 3",
    );
    // The same node speaking for itself is answered.
    let mut genuine = PeerNetwork::new(two.clone()).new_client(1, &addr).await;
    assert!(genuine.vote(vote(2), option()).await.is_ok());

    // A certificate the CA issued for a node that is not a member (a pack's, a removed
    // node's) is refused for every Raft RPC.
    let mut outsider = PeerNetwork::new(Arc::new(identity(&ca, 3)))
        .new_client(1, &addr)
        .await;
    refused(
        outsider.vote(vote(3), option()).await,
        "node 3 is not a member of this cluster",
    );
    // Another certificate for member 2 (an old one, or a copy of a pack's) is refused too.
    let mut revoked = PeerNetwork::new(Arc::new(identity(&ca, 2)))
        .new_client(1, &addr)
        .await;
    refused(
        revoked.vote(vote(2), option()).await,
        "node 2 is a member, but not with this certificate",
    );
    // Dialing node 1 while pinning another certificate for it fails our own handshake.
    let mut pinned_wrong = PeerNetwork::new(two.clone())
        .new_client(
            1,
            &NodeAddr {
                cert_sha256: "00".repeat(32),
                ..addr.clone()
            },
        )
        .await;
    refused(
        pinned_wrong.vote(vote(2), option()).await,
        "not the one the cluster pins",
    );

    // A certificate from another CA never gets a TLS session.
    let other = CertificateAuthority::generate("other").unwrap();
    let mut stranger = PeerNetwork::new(Arc::new(identity(&other, 2)))
        .new_client(1, &addr)
        .await;
    let err = stranger
        .vote(vote(2), option())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("UnknownIssuer") || err.contains("TLS"),
        "{err}"
    );

    // Dialing node 1 while expecting node 3 is refused by our own verifier.
    let mut confused = PeerNetwork::new(Arc::new(identity(&ca, 2)))
        .new_client(3, &addr)
        .await;
    refused(
        confused.vote(vote(2), option()).await,
        "peer certificate is for node 1, expected node 3",
    );
    // An append large enough to go as entry ids first (`AppendKnown`) is admitted the same
    // way: from a member's pinned certificate, for the node it binds.
    let append = |claimed: u64| openraft::raft::AppendEntriesRequest {
        vote: openraft::Vote::new_committed(5, claimed),
        prev_log_id: None,
        leader_commit: None,
        entries: (1..=4)
            .map(|i| openraft::Entry {
                log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(5, claimed), i),
                payload: openraft::EntryPayload::Normal(coffer_raft::Command::Txn(
                    Txn::new().put(format!("k{i}"), vec![0u8; 32 << 10]),
                )),
            })
            .collect(),
    };
    let mut impostor = PeerNetwork::new(two.clone()).new_client(1, &addr).await;
    refused(
        impostor.append_entries(append(3), option()).await,
        "peer certificate is for node 2 but the request claims node 3",
    );
    let mut non_member = PeerNetwork::new(Arc::new(identity(&ca, 3)))
        .new_client(1, &addr)
        .await;
    refused(
        non_member.append_entries(append(3), option()).await,
        "node 3 is not a member of this cluster",
    );
    assert!(node.engine.get(b"k1").unwrap().is_none(), "nothing applied");
    let counts: BTreeMap<&str, u64> = node.engine.refusals().snapshot().into_iter().collect();
    assert_eq!(counts["claims_other_node"], 2, "{counts:?}");
    assert_eq!(counts["not_member"], 2, "{counts:?}");
    assert_eq!(counts["revoked_certificate"], 1, "{counts:?}");
    assert!(counts["tls_handshake"] >= 1, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stranger_gets_one_small_request_per_connection_and_few_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("t").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = start(&ca, 1, listener, dir.path()).await;
    let addr = NodeAddr {
        api_addr: String::new(),
        peer_addr: node.addr.clone(),
        cert_sha256: node.pin.clone(),
    };
    node.engine
        .initialize_cluster(BTreeMap::from([(1, addr.clone())]))
        .await
        .unwrap();
    // A certificate from the CA that is no member's (a pack's).
    let stranger = coffer_raft::Forwarder::new(Arc::new(identity(&ca, 9)));
    // A registration-sized message is heard (the vault would judge it)…
    let small = stranger.app(1, &addr, vec![0u8; 1024]).await;
    assert!(
        !format!("{small:?}").contains("too many"),
        "the first attempt is heard: {small:?}"
    );
    // …a large one is cut off before anything is allocated for it.
    let large = stranger.app(1, &addr, vec![0u8; 1 << 20]).await;
    assert!(large.is_err(), "{large:?}");
    // Attempts beyond the per-minute budget are refused. (Some calls fail before reaching
    // the server: the dialer reuses a connection the server has just closed.)
    let (mut heard, mut refused) = (0, false);
    let identity = Arc::new(identity(&ca, 9));
    for _ in 0..200 {
        // A fresh dialer each time: the server closes a stranger's connection after one
        // request, and a pooled one may not know it yet.
        let fresh = coffer_raft::Forwarder::new(identity.clone());
        match fresh.app(1, &addr, b"{}".to_vec()).await {
            Err(e) if e.to_string().contains("too many registration attempts") => {
                refused = true;
                break;
            }
            Err(e) if e.to_string().contains("still starting") => heard += 1,
            _ => {}
        }
    }
    assert!(refused, "never refused ({heard} heard)");
    assert_eq!(heard, 30, "the budget is 30 a minute");
}
