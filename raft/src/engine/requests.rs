//! Writes and linearizable reads: proposed here when this node leads, forwarded to the leader
//! otherwise, and waited through a leader change without ever running a write twice.

use std::time::Duration;

use super::mode::NodeMode;
use super::{Engine, LEADER_CHANGE_WAIT};
use crate::errors::{proposal_error, read_index_error};
use crate::transport::ForwardError;
use crate::txn::{Txn, TxnResult};
use crate::types::Command;
use crate::EngineError;

/// How long a node waits to apply an index the leader gave it (a forwarded write's, or a
/// read index) before it reports that it is not caught up.
const APPLY_WAIT: Duration = Duration::from_secs(10);

/// While waiting for a new leader, the leader view is re-checked at least this often: a
/// leader that is known but unreachable may stay "current" for a while.
const LEADER_RECHECK: Duration = Duration::from_millis(100);

/// One attempt at a request that may have to wait for a new leader.
enum Attempt<T> {
    /// Finished (successfully or not).
    Done(Result<T, EngineError>),
    /// Not delivered to a leader (no leader known, it moved, or it was unreachable): try
    /// again once the leader changes.
    Retry(EngineError),
}

impl Engine {
    /// Runs `attempt` until it is delivered to a leader, waiting through a leader change for
    /// up to [`LEADER_CHANGE_WAIT`]. Only undelivered attempts are repeated (and `idempotent`
    /// ones abandoned because the leader changed), so a write is never run twice; a write
    /// abandoned in flight is [`EngineError::OutcomeUnknown`].
    async fn through_leader_changes<T, F, Fut>(
        &self,
        idempotent: bool,
        mut attempt: F,
    ) -> Result<T, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let deadline = tokio::time::Instant::now() + LEADER_CHANGE_WAIT;
        loop {
            // A standby refuses at once; one waiting for a leader stops when it turns standby.
            self.ensure_writable()?;
            let seen = self.metrics().borrow().current_leader;
            // Stop waiting on a request in flight when the node turns standby (a partition
            // just began) or the leader it went to is replaced: either way the old leader
            // cannot answer in time.
            let mut mode = self.mode.clone();
            let mut metrics = self.metrics();
            // A node still catching up after standby was let through by `ensure_writable`;
            // only a new entry into standby interrupts.
            let catching_up = *mode.borrow() == NodeMode::ReadOnly;
            let turns_standby = async {
                if catching_up {
                    std::future::pending::<()>().await;
                }
                let _ = mode.wait_for(|m| *m == NodeMode::ReadOnly).await;
            };
            let outcome = tokio::select! {
                a = attempt() => a,
                _ = turns_standby => {
                    if !idempotent {
                        return Err(EngineError::OutcomeUnknown(
                            "contact with the leader was lost while the write was in flight".into(),
                        ));
                    }
                    return Err(EngineError::ReadOnly {
                        last_contact_ms: self.contact_age_ms(),
                    });
                }
                _ = metrics.wait_for(|m| m.current_leader != seen) => {
                    if !idempotent {
                        return Err(EngineError::OutcomeUnknown(
                            "the leader changed while the write was in flight".into(),
                        ));
                    }
                    Attempt::Retry(EngineError::NoLeader("the leader changed".into()))
                }
            };
            match outcome {
                Attempt::Done(result) => return result,
                Attempt::Retry(e) => {
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        return Err(e);
                    }
                    let _ = self
                        .raft
                        .wait(Some((deadline - now).min(LEADER_RECHECK)))
                        .metrics(
                            |m| m.current_leader.is_some() && m.current_leader != seen,
                            "leader changed",
                        )
                        .await;
                }
            }
        }
    }

    /// Proposes `txn` and waits until it is committed and applied — here if this node leads,
    /// else on the leader through the forwarder (and then until applied here too, so a read
    /// on this node right after sees the write). Waits through a leader change.
    pub async fn write(&self, txn: Txn) -> Result<TxnResult, EngineError> {
        super::validate(&txn)?;
        self.through_leader_changes(false, || self.write_once(txn.clone()))
            .await
    }

    /// Leadership moved away from this node: with a forwarder the request goes to the new
    /// leader on the next attempt; without one the caller learns where the leader is.
    fn moved<T>(&self, e: EngineError) -> Attempt<T> {
        if self.forwarder.is_some() {
            Attempt::Retry(e)
        } else {
            Attempt::Done(Err(e))
        }
    }

    async fn write_once(&self, txn: Txn) -> Attempt<TxnResult> {
        if !self.is_leader() {
            if let Some(fw) = &self.forwarder {
                let Some((leader, addr)) = self.leader() else {
                    return Attempt::Retry(EngineError::NoLeader("no leader is known".into()));
                };
                return match fw.write(leader, &addr, txn).await {
                    Ok((result, index)) => {
                        // Committed: the answer is the leader's, even if this node is slow
                        // to apply it (a linearizable read here waits for it all the same).
                        if let Err(e) = self.wait_applied(index).await {
                            tracing::warn!(
                                index,
                                "a forwarded write committed but is not applied here yet: {e}"
                            );
                        }
                        Attempt::Done(Ok(result))
                    }
                    Err(e) => forward_attempt(e),
                };
            }
        }
        match self.raft.client_write(Command::Txn(txn)).await {
            Ok(resp) => Attempt::Done(Ok(resp.data)),
            Err(e) => match proposal_error(e) {
                e @ EngineError::NotLeader { .. } => self.moved(e),
                e => Attempt::Done(Err(e)),
            },
        }
    }

    /// Blocks until a read on this node reflects every write acknowledged before the call.
    /// The leader confirms its leadership with a quorum; a follower obtains that read index
    /// from the leader and waits until it has applied it. Waits through a leader change.
    pub async fn await_read_index(&self) -> Result<(), EngineError> {
        self.through_leader_changes(true, || self.read_index_once())
            .await
    }

    async fn read_index_once(&self) -> Attempt<()> {
        if !self.is_leader() {
            if let Some(fw) = &self.forwarder {
                if self.leader().is_none() {
                    return Attempt::Retry(EngineError::NoLeader("no leader is known".into()));
                }
                // Each round asks the leader of its moment (a round task outlives leaders
                // while reads keep coming).
                let (fw, engine) = (fw.clone(), self.clone());
                let confirm = move || {
                    let (fw, engine) = (fw.clone(), engine.clone());
                    async move {
                        let (leader, addr) = engine.leader().ok_or_else(|| {
                            ForwardError::Unreachable("no leader is known".into())
                        })?;
                        fw.read_index(leader, &addr).await
                    }
                };
                let dropped = || ForwardError::Unreachable("the read-index round stopped".into());
                return match self.forwarded_reads.read_index(confirm, dropped).await {
                    Ok(index) => Attempt::Done(self.wait_applied(index).await),
                    // A read changes nothing: an unanswered one is simply not confirmed.
                    Err(ForwardError::OutcomeUnknown(why)) => {
                        Attempt::Done(Err(EngineError::NoLeader(why)))
                    }
                    Err(e) => forward_attempt(e),
                };
            }
        }
        match self.leader_read_index().await {
            Ok(index) => Attempt::Done(self.wait_applied(index).await),
            Err(e) => match e {
                e @ EngineError::NotLeader { .. } => self.moved(e),
                // The quorum check timed out: still the leader as far as anyone knows.
                e @ EngineError::NoLeader(_) => Attempt::Retry(e),
                e => Attempt::Done(Err(e)),
            },
        }
    }

    /// On the leader: the index a read arriving now must see, confirmed with a quorum in a
    /// round shared with the reads that arrived with it (see [`super::read_batch`]).
    pub(super) async fn leader_read_index(&self) -> Result<u64, EngineError> {
        let raft = self.raft.clone();
        let confirm = move || {
            let raft = raft.clone();
            async move {
                match raft.get_read_log_id().await {
                    Ok((read, applied)) => Ok(read.max(applied).map_or(0, |l| l.index)),
                    Err(e) => Err(read_index_error(e)),
                }
            }
        };
        let dropped = || EngineError::NoLeader("the read-index round stopped".into());
        self.leader_reads.read_index(confirm, dropped).await
    }

    /// Waits until this node has applied `index`.
    async fn wait_applied(&self, index: u64) -> Result<(), EngineError> {
        if *self.applied.borrow() >= index {
            return Ok(());
        }
        self.raft
            .wait(Some(APPLY_WAIT))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map(|_| ())
            .map_err(|e| EngineError::NoLeader(format!("not caught up with the leader: {e}")))
    }
}

/// A forwarded request that never reached a leader is retried; anything else is final.
fn forward_attempt<T>(e: ForwardError) -> Attempt<T> {
    match e {
        ForwardError::NotLeader(_) | ForwardError::Unreachable(_) => Attempt::Retry(e.into()),
        other => Attempt::Done(Err(other.into())),
    }
}
