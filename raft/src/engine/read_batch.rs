//! Read-index batching (etcd's ReadIndex batching): concurrent linearizable reads share one
//! confirmation of leadership instead of each running its own quorum round.
//!
//! A read may only use a confirmation that *started after the read arrived*: one that
//! started earlier could predate a write the reader has already seen acknowledged. So a
//! read that arrives while a round is in flight waits for the next one, and one round runs
//! at a time: a round takes every read queued when it starts, confirms once (on the leader,
//! a heartbeat round to a quorum; on a follower, one read-index request to the leader), and
//! answers them all with the same index. Under load a round serves everyone who arrived
//! during the previous one, so the number of rounds per second stays near one per round
//! trip, whatever the number of readers.
//!
//! Rounds run in their own task, so a reader that gives up (its client went away) never
//! stalls the others.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// One queued read: where its round's answer goes.
type Waiter<E> = oneshot::Sender<Result<u64, E>>;

/// Shares confirmations among concurrent reads. `E` is the confirmation's error, handed to
/// every read of the round.
pub(crate) struct ReadBatcher<E> {
    queue: Mutex<Queue<E>>,
    /// Confirmations run.
    rounds: AtomicU64,
    /// Reads answered by them.
    reads: AtomicU64,
}

struct Queue<E> {
    /// A round task is running (it takes what is queued when each round starts).
    running: bool,
    waiting: Vec<Waiter<E>>,
}

impl<E> Default for ReadBatcher<E> {
    fn default() -> Self {
        Self {
            queue: Mutex::new(Queue {
                running: false,
                waiting: Vec::new(),
            }),
            rounds: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        }
    }
}

impl<E: Clone + Send + 'static> ReadBatcher<E> {
    /// The read index for a read arriving now: from the first confirmation that starts after
    /// this call. `confirm` runs a round (it is used if this call starts the round task);
    /// `dropped` is the error a read gets if its round task went away.
    pub(crate) async fn read_index<F, Fut>(
        self: &Arc<Self>,
        confirm: F,
        dropped: impl FnOnce() -> E,
    ) -> Result<u64, E>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<u64, E>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.waiting.push(tx);
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            tokio::spawn(self.clone().run(confirm));
        }
        rx.await.unwrap_or_else(|_| Err(dropped()))
    }

    /// Runs rounds while reads are queued.
    async fn run<F, Fut>(self: Arc<Self>, confirm: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<u64, E>> + Send + 'static,
    {
        loop {
            let batch = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if queue.waiting.is_empty() {
                    queue.running = false;
                    return;
                }
                std::mem::take(&mut queue.waiting)
            };
            let result = confirm().await;
            self.rounds.fetch_add(1, Ordering::Relaxed);
            self.reads.fetch_add(batch.len() as u64, Ordering::Relaxed);
            for waiter in batch {
                let _ = waiter.send(result.clone());
            }
        }
    }

    /// (reads answered, confirmations run) since start.
    pub(crate) fn stats(&self) -> (u64, u64) {
        (
            self.reads.load(Ordering::Relaxed),
            self.rounds.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Many concurrent reads share few rounds, and every one is answered.
    #[tokio::test]
    async fn concurrent_reads_share_rounds() {
        let batcher = Arc::new(ReadBatcher::<String>::default());
        let counter = Arc::new(AtomicU64::new(0));
        let mut reads = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let (batcher, counter) = (batcher.clone(), counter.clone());
            reads.spawn(async move {
                batcher
                    .read_index(
                        move || {
                            let counter = counter.clone();
                            async move {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                                Ok(counter.fetch_add(1, Ordering::SeqCst) + 1)
                            }
                        },
                        || "dropped".to_string(),
                    )
                    .await
            });
        }
        while let Some(r) = reads.join_next().await {
            assert!(r.unwrap().unwrap() >= 1);
        }
        let (answered, rounds) = batcher.stats();
        assert_eq!(answered, 200);
        assert!(rounds < 20, "{rounds} rounds for 200 concurrent reads");
    }

    /// A read that arrives while a round is in flight is answered by a later round, never
    /// by the one that started before it (which could predate a write it saw).
    #[tokio::test]
    async fn a_read_never_uses_a_round_that_started_before_it() {
        let batcher = Arc::new(ReadBatcher::<String>::default());
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let round = Arc::new(AtomicU64::new(0));
        let confirm = {
            let round = round.clone();
            move || {
                let (round, mut release) = (round.clone(), release_rx.clone());
                async move {
                    let n = round.fetch_add(1, Ordering::SeqCst) + 1;
                    let _ = release.wait_for(|r| *r).await;
                    Ok(n)
                }
            }
        };
        let first = tokio::spawn({
            let (batcher, confirm) = (batcher.clone(), confirm.clone());
            async move { batcher.read_index(confirm, || "dropped".into()).await }
        });
        // Round 1 is in flight (its confirmation waits for the release).
        while round.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let second = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.read_index(confirm, || "dropped".into()).await }
        });
        tokio::task::yield_now().await;
        release_tx.send_replace(true);
        assert_eq!(first.await.unwrap(), Ok(1));
        assert_eq!(
            second.await.unwrap(),
            Ok(2),
            "the later read waited for round 2"
        );
    }

    /// A failed round fails every read of it, and the next read starts a fresh round.
    #[tokio::test]
    async fn a_failed_round_fails_its_reads_only() {
        let batcher = Arc::new(ReadBatcher::<String>::default());
        let failing = batcher
            .read_index(
                || async { Err("no quorum".to_string()) },
                || "dropped".into(),
            )
            .await;
        assert_eq!(failing, Err("no quorum".to_string()));
        let ok = batcher
            .read_index(|| async { Ok(7) }, || "dropped".into())
            .await;
        assert_eq!(ok, Ok(7));
    }
}
