//! In-process cluster harness: real engines on real RocksDB, talking over the real mutual-TLS
//! peer transport on loopback, through a network wrapper the test controls — isolate a node,
//! cut one link, drop a share of RPCs — and helpers that wait on Raft metrics, never on sleeps.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coffer_raft::{
    serve_peers, Engine, EngineConfig, Forwarder, NodeAddr, NodeId, PeerIdentity, PeerNetwork,
    RaftTuning, TypeConfig,
};
use coffer_tls::CertificateAuthority;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use rand::Rng;
use tokio::net::TcpListener;

/// What the test has done to the network.
#[derive(Default)]
pub struct Faults {
    /// Directed links (from, to) that carry nothing.
    cut: Mutex<HashSet<(NodeId, NodeId)>>,
    /// Share of RPCs dropped, per mille.
    drop_permille: AtomicU32,
    /// Added to every RPC before it is sent, in milliseconds.
    delay_ms: AtomicU32,
}

impl Faults {
    fn blocks(&self, from: NodeId, to: NodeId) -> bool {
        if self
            .cut
            .lock()
            .map(|c| c.contains(&(from, to)))
            .unwrap_or(false)
        {
            return true;
        }
        let p = self.drop_permille.load(Ordering::Relaxed);
        p > 0 && rand::thread_rng().gen_range(0..1000) < p
    }
}

/// openraft's network for one node, through the faults.
pub struct FaultyNetwork {
    from: NodeId,
    inner: PeerNetwork,
    faults: Arc<Faults>,
}

/// A client to one peer, through the faults.
pub struct FaultyClient {
    from: NodeId,
    to: NodeId,
    inner: coffer_raft::transport::client::PeerClient,
    faults: Arc<Faults>,
}

impl RaftNetworkFactory<TypeConfig> for FaultyNetwork {
    type Network = FaultyClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> FaultyClient {
        FaultyClient {
            from: self.from,
            to: target,
            inner: self.inner.new_client(target, node).await,
            faults: self.faults.clone(),
        }
    }
}

type RpcErr<E = RaftError<NodeId>> = RPCError<NodeId, NodeAddr, E>;

impl FaultyClient {
    // The error type is openraft's, fixed by the RaftNetwork trait this feeds.
    #[allow(clippy::result_large_err)]
    fn check<E: std::error::Error>(&self) -> Result<(), RpcErr<E>> {
        // A cut in either direction loses the request or its answer.
        if self.faults.blocks(self.from, self.to) || self.faults.blocks(self.to, self.from) {
            let e =
                std::io::Error::other(format!("harness: link {}->{} is cut", self.from, self.to));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        }
        Ok(())
    }

    /// The configured network delay.
    async fn delay(&self) {
        let ms = self.faults.delay_ms.load(Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(u64::from(ms))).await;
        }
    }
}

impl RaftNetwork<TypeConfig> for FaultyClient {
    fn backoff(&self) -> openraft::network::Backoff {
        coffer_raft::transport::client::backoff()
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        self.check()?;
        self.delay().await;
        self.inner.append_entries(rpc, option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<RaftError<NodeId, InstallSnapshotError>>>
    {
        self.check()?;
        self.delay().await;
        self.inner.install_snapshot(rpc, option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.check()?;
        self.delay().await;
        self.inner.vote(rpc, option).await
    }
}

/// A running member of the harness cluster.
pub struct Member {
    /// Its engine.
    pub engine: Engine,
    /// Stops its peer listener.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// An in-process cluster.
pub struct Cluster {
    /// Members by id; `None` while stopped.
    pub members: BTreeMap<NodeId, Option<Member>>,
    /// Peer addresses by id (stable across restarts).
    pub addrs: BTreeMap<NodeId, String>,
    faults: Arc<Faults>,
    ca: CertificateAuthority,
    /// Each node's peer identity, made once: a restarted node keeps the certificate the
    /// membership pins for it.
    identities: Mutex<BTreeMap<NodeId, Arc<PeerIdentity>>>,
    dir: tempfile::TempDir,
    tuning: RaftTuning,
}

impl Cluster {
    /// Starts `n` voters (ids 1..=n) and initializes them as one cluster.
    pub async fn start(n: u64, tuning: RaftTuning) -> Cluster {
        Self::start_with_learners(n, 0, tuning).await
    }

    /// Starts `voters` voters (ids 1..=voters) and `learners` learners (the ids after), and
    /// waits until every learner has joined.
    pub async fn start_with_learners(voters: u64, learners: u64, tuning: RaftTuning) -> Cluster {
        let cluster = Self::start_voters(voters, learners, tuning).await;
        let all: Vec<NodeId> = (1..=voters).collect();
        let leader = cluster.wait_leader(&all, None).await;
        for id in voters + 1..=voters + learners {
            let addr = NodeAddr {
                api_addr: String::new(),
                peer_addr: cluster.addrs[&id].clone(),
                cert_sha256: cluster.pin(id),
            };
            cluster
                .engine(leader)
                .change_membership(coffer_raft::MembershipChange::AddLearner { id, addr })
                .await
                .expect("add learner");
        }
        let index = cluster.engine(leader).applied_index();
        let everyone = cluster.running();
        cluster.wait_applied(&everyone, index).await;
        cluster
    }

    async fn start_voters(n: u64, learners: u64, tuning: RaftTuning) -> Cluster {
        let mut cluster = Cluster {
            members: BTreeMap::new(),
            addrs: BTreeMap::new(),
            faults: Arc::default(),
            ca: CertificateAuthority::generate("harness").expect("CA"),
            identities: Mutex::default(),
            dir: tempfile::tempdir().expect("tempdir"),
            tuning,
        };
        for id in 1..=n + learners {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            cluster
                .addrs
                .insert(id, listener.local_addr().expect("addr").to_string());
            let member = cluster.start_member(id, listener).await;
            cluster.members.insert(id, Some(member));
        }
        let voters = cluster
            .addrs
            .iter()
            .filter(|(id, _)| **id <= n)
            .map(|(id, a)| {
                (
                    *id,
                    NodeAddr {
                        api_addr: String::new(),
                        peer_addr: a.clone(),
                        cert_sha256: cluster.pin(*id),
                    },
                )
            })
            .collect();
        cluster
            .engine(1)
            .initialize_cluster(voters)
            .await
            .expect("initialize");
        cluster
    }

    /// Node `id`'s peer identity (issued on first use, then the same).
    pub fn identity(&self, id: NodeId) -> Arc<PeerIdentity> {
        let mut known = self.identities.lock().expect("identities");
        known
            .entry(id)
            .or_insert_with(|| {
                let cert = self
                    .ca
                    .issue_node(id, &["127.0.0.1".to_string()])
                    .expect("cert");
                Arc::new(PeerIdentity {
                    node_id: id,
                    ca_pem: self.ca.cert_pem().to_string(),
                    cert_pem: cert.cert_pem.clone(),
                    key_pem: cert.key_pem.clone(),
                    source_ip: None,
                })
            })
            .clone()
    }

    /// The fingerprint the membership pins for node `id`.
    pub fn pin(&self, id: NodeId) -> String {
        coffer_tls::fingerprint_pem(&self.identity(id).cert_pem).expect("fingerprint")
    }

    /// The cluster CA (tests issue stray certificates from it).
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    async fn start_member(&self, id: NodeId, listener: TcpListener) -> Member {
        let ident = self.identity(id);
        let tls = coffer_tls::peer_server_config(&ident.ca_pem, &ident.cert_pem, &ident.key_pem)
            .expect("tls");
        let inner = PeerNetwork::new(ident.clone());
        let contacts = inner.contacts();
        let network = FaultyNetwork {
            from: id,
            inner,
            faults: self.faults.clone(),
        };
        let config = EngineConfig {
            node_id: id,
            data_dir: self.data_dir(id),
            tuning: self.tuning.clone(),
            storage: Default::default(),
        };
        let engine = Engine::open(config, network)
            .await
            .expect("engine")
            .with_forwarder(Arc::new(Forwarder::new(ident)))
            .with_contacts(contacts);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve_peers(listener, tls, engine.clone(), async move {
            let _ = stopped.await;
        }));
        Member {
            engine,
            stop: Some(stop),
        }
    }

    fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    /// The engine of a running member.
    pub fn engine(&self, id: NodeId) -> &Engine {
        &self.members[&id]
            .as_ref()
            .expect("member is running")
            .engine
    }

    /// Running members.
    pub fn running(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|(_, m)| m.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Waits until the given members agree on one leader among them, and returns it.
    pub async fn wait_leader(&self, among: &[NodeId], not: Option<NodeId>) -> NodeId {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let leaders: Vec<Option<NodeId>> = among
                .iter()
                .map(|id| self.engine(*id).leader().map(|(l, _)| l))
                .collect();
            if let Some(Some(l)) = leaders.first() {
                let agreed = leaders.iter().all(|x| *x == Some(*l));
                if agreed && among.contains(l) && Some(*l) != not && self.engine(*l).is_leader() {
                    return *l;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no agreed leader among {among:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until each of `ids` has applied at least `index`.
    pub async fn wait_applied(&self, ids: &[NodeId], index: u64) {
        for id in ids {
            self.engine(*id)
                .raft()
                .wait(Some(Duration::from_secs(20)))
                .applied_index_at_least(Some(index), "catch up")
                .await
                .unwrap_or_else(|e| panic!("node {id} did not apply {index}: {e}"));
        }
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: NodeId) {
        let mut cut = self.faults.cut.lock().expect("faults");
        for other in self.addrs.keys().filter(|o| **o != id) {
            cut.insert((id, *other));
            cut.insert((*other, id));
        }
    }

    /// Cuts the link between `a` and `b`, both directions.
    pub fn cut(&self, a: NodeId, b: NodeId) {
        let mut cut = self.faults.cut.lock().expect("faults");
        cut.insert((a, b));
        cut.insert((b, a));
    }

    /// Drops this share (per mille) of all RPCs.
    pub fn drop_per_mille(&self, p: u32) {
        self.faults.drop_permille.store(p, Ordering::Relaxed);
    }

    /// Delays every Raft RPC by `ms` milliseconds (a slow WAN link).
    pub fn delay_ms(&self, ms: u32) {
        self.faults.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.faults.cut.lock().expect("faults").clear();
        self.faults.drop_permille.store(0, Ordering::Relaxed);
        self.faults.delay_ms.store(0, Ordering::Relaxed);
    }

    /// Stops a member: its peer listener and its Raft. Its data stays.
    pub async fn stop(&mut self, id: NodeId) {
        if let Some(mut m) = self.members.get_mut(&id).and_then(Option::take) {
            if let Some(stop) = m.stop.take() {
                let _ = stop.send(());
            }
            m.engine.shutdown().await.expect("shutdown");
        }
    }

    /// Starts a new node `id` and adds it as a learner through the current leader.
    pub async fn add_learner(&mut self, id: NodeId) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        self.addrs
            .insert(id, listener.local_addr().expect("addr").to_string());
        let member = self.start_member(id, listener).await;
        self.members.insert(id, Some(member));
        let running = self.running();
        let voters: Vec<NodeId> = running.iter().copied().filter(|n| *n != id).collect();
        let leader = self.wait_leader(&voters, None).await;
        let addr = NodeAddr {
            api_addr: String::new(),
            peer_addr: self.addrs[&id].clone(),
            cert_sha256: self.pin(id),
        };
        self.engine(leader)
            .change_membership(coffer_raft::MembershipChange::AddLearner { id, addr })
            .await
            .expect("add learner");
    }

    /// Restarts a stopped member from its data directory on its old address.
    pub async fn restart(&mut self, id: NodeId) {
        let listener = TcpListener::bind(&self.addrs[&id])
            .await
            .expect("rebind the peer address");
        let member = self.start_member(id, listener).await;
        self.members.insert(id, Some(member));
    }
}
