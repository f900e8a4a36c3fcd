//! The writer thread: takes every append waiting, chains and writes them, fsyncs once, then
//! answers them all (group commit); rolls segments; fails closed on an I/O error.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use super::files::segment_name;
use super::line::SpoolLine;
use super::{Reply, Shared, SpoolError, MAX_GROUP, SEGMENT_RECORDS};
use crate::audit::record::{chain, AuditEvent, AuditRecord};
use crate::audit::sealing::BatchSealer;

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) node: u64,
    pub(super) epoch: String,
    pub(super) last_seq: u64,
    pub(super) last_hash: String,
    /// Current segment file and its first seq.
    pub(super) file: Option<(File, u64)>,
    pub(super) shared: Arc<Shared>,
}

impl Writer {
    pub(super) fn run(mut self, rx: mpsc::Receiver<(AuditEvent, Reply)>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            group.extend(rx.try_iter().take(MAX_GROUP - 1));
            self.commit(group);
        }
    }

    fn commit(&mut self, group: Vec<(AuditEvent, Reply)>) {
        let failed = self.shared.failure.lock().ok().and_then(|f| f.clone());
        if let Some(why) = failed {
            for (_, reply) in group {
                let _ = reply.send(Err(SpoolError::Unavailable(why.clone())));
            }
            return;
        }
        let (seq0, hash0) = (self.last_seq, self.last_hash.clone());
        let mut records = Vec::with_capacity(group.len());
        for (event, _) in &group {
            let rec = chain(
                self.node,
                &self.epoch,
                self.last_seq + 1,
                &self.last_hash,
                event.clone(),
            );
            self.last_seq = rec.seq;
            self.last_hash = rec.hash.clone();
            records.push(rec);
        }
        match self.write(&records) {
            Ok(()) => {
                if let Ok(mut head) = self.shared.head.lock() {
                    *head = (self.last_seq, self.last_hash.clone());
                }
                self.shared.durable.store(self.last_seq, Ordering::Release);
                self.shared
                    .stats
                    .appends
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                for ((_, reply), rec) in group.into_iter().zip(records) {
                    let _ = reply.send(Ok(rec));
                }
                self.shared.notify.notify_waiters();
            }
            Err(why) => {
                let err = SpoolError::Unavailable(why);
                tracing::error!("{err}; refusing requests until restart (fail closed)");
                (self.last_seq, self.last_hash) = (seq0, hash0);
                if let Ok(mut f) = self.shared.failure.lock() {
                    *f = Some(match &err {
                        SpoolError::Unavailable(why) => why.clone(),
                        other => other.to_string(),
                    });
                }
                for (_, reply) in group {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// Writes records (rolling segments as needed) and syncs once per touched file.
    fn write(&mut self, records: &[AuditRecord]) -> Result<(), String> {
        let recipient = *self.shared.recipient.lock().map_err(|e| e.to_string())?;
        let sealer = recipient.map(|r| BatchSealer::new(&r));
        let mac_key = self
            .shared
            .mac_key
            .lock()
            .map_err(|e| e.to_string())?
            .clone();
        if sealer.is_some() && self.shared.sealed_from.load(Ordering::Acquire) == 0 {
            if let Some(first) = records.first() {
                self.shared.sealed_from.store(first.seq, Ordering::Release);
            }
        }
        let mut buf = Vec::new();
        for rec in records {
            let needs_new = match &self.file {
                None => true,
                Some((_, first)) => rec.seq >= first + SEGMENT_RECORDS,
            };
            if needs_new {
                self.flush(&mut buf)?;
                self.roll(rec.seq)?;
            }
            let line = SpoolLine::of(rec, sealer.as_ref(), mac_key.as_deref());
            serde_json::to_writer(&mut buf, &line).map_err(|e| e.to_string())?;
            buf.push(b'\n');
        }
        self.flush(&mut buf)
    }

    fn flush(&mut self, buf: &mut Vec<u8>) -> Result<(), String> {
        if buf.is_empty() {
            return Ok(());
        }
        let (file, _) = self.file.as_mut().ok_or("no open spool segment")?;
        file.write_all(buf).map_err(|e| format!("write: {e}"))?;
        let t = Instant::now();
        file.sync_data().map_err(|e| format!("fsync: {e}"))?;
        let stats = &self.shared.stats;
        stats
            .fsync_nanos
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        buf.clear();
        Ok(())
    }

    /// Opens the segment for `seq`: the existing last one if it still has room, else a new
    /// one whose creation is made durable (directory fsync).
    fn roll(&mut self, seq: u64) -> Result<(), String> {
        let mut segments = self.shared.segments.lock().map_err(|e| e.to_string())?;
        if self.file.is_none() {
            if let Some((first, path)) = segments.iter().next_back() {
                if seq < first + SEGMENT_RECORDS {
                    let f = OpenOptions::new()
                        .append(true)
                        .open(path)
                        .map_err(|e| e.to_string())?;
                    self.file = Some((f, *first));
                    return Ok(());
                }
            }
        }
        let path = self.dir.join(segment_name(seq));
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("syncing {}: {e}", self.dir.display()))?;
        segments.insert(seq, path);
        self.file = Some((f, seq));
        Ok(())
    }
}
