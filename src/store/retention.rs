//! Retention: which finished jobs' console logs to drop, and the log
//! segments that gives back.
//!
//! Console bytes are nearly all of what a lab stores, and a lab that runs
//! for months would fill its disk with them; the job records, events and
//! results are small and stay. A prune is a write like any other, applied
//! on the writer thread after every console byte queued before it (see
//! `writer`); the policy and its bookkeeping live here, apart from the
//! writer's ordering.

use super::{all_chunks, dec, enc, io_err, segments, Chunk, StoreError, Trees};
use crate::model::{JobId, JobRecord, JobState};

/// Which finished jobs' console logs to drop (the job records, events and
/// results stay): those that ended before `ended_before` (ms since the
/// epoch), then the oldest until the logs total at most `max_total_bytes`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention {
    pub ended_before: Option<u64>,
    pub max_total_bytes: Option<u64>,
}

/// What a prune did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub jobs: usize,
    pub bytes: u64,
    /// The console logs kept, in bytes.
    pub kept_bytes: u64,
}

impl Retention {
    /// The policy `cfg` sets, as of now: its age limit becomes a time.
    /// Here rather than in `config`, so the config knows nothing of the
    /// store.
    pub fn from_config(cfg: &crate::config::RetentionConfig) -> Self {
        Retention {
            ended_before: cfg
                .max_log_age_days
                .map(|d| crate::model::now_ms().saturating_sub(d.saturating_mul(86_400_000))),
            max_total_bytes: cfg.max_log_total_bytes,
        }
    }
}

/// Drops finished jobs' console logs as `r` says, oldest job first, and
/// reclaims the segments no kept log lies in; `current` is the segment
/// being appended to.
pub(super) fn prune(
    t: &Trees,
    current: Option<u32>,
    r: Retention,
) -> Result<PruneReport, StoreError> {
    // Log sizes per job, in id order (which is submit order), and the
    // segments each job's log lies in.
    let mut sizes: Vec<(JobId, u64, Vec<u32>)> = Vec::new();
    for c in all_chunks(t) {
        let (id, _, chunk) = c?;
        if !matches!(sizes.last(), Some((last, ..)) if *last == id) {
            sizes.push((id, 0, Vec::new()));
        }
        if let Some((_, n, segs)) = sizes.last_mut() {
            *n += chunk.len();
            if let Chunk::Segment(l) = chunk {
                if segs.last() != Some(&l.seg) {
                    segs.push(l.seg);
                }
            }
        }
    }
    let mut report = PruneReport {
        kept_bytes: sizes.iter().map(|(_, n, _)| n).sum(),
        ..Default::default()
    };
    let mut live = std::collections::BTreeSet::new();
    for (id, size, segs) in sizes {
        let over = r.max_total_bytes.is_some_and(|m| report.kept_bytes > m);
        let prunable = match t.jobs.get(id.to_be_bytes())? {
            Some(v) => {
                let j: JobRecord = dec(&v)?;
                j.end_time
                    .filter(|_| j.state == JobState::Finished)
                    .filter(|&end| over || r.ended_before.is_some_and(|b| end < b))
                    .map(|_| j)
            }
            // A log without its job (`check` reports it) is left alone.
            None => None,
        };
        let Some(mut j) = prunable else {
            live.extend(segs);
            continue;
        };
        for tree in [&t.log_index, &t.logs] {
            let mut batch = sled::Batch::default();
            for kv in tree.scan_prefix(id.to_be_bytes()) {
                batch.remove(kv?.0);
            }
            tree.apply_batch(batch)?;
        }
        j.log_pruned = true;
        t.jobs.insert(id.to_be_bytes(), enc(&j))?;
        report.jobs += 1;
        report.bytes += size;
        report.kept_bytes -= size;
    }
    reclaim_segments(t, current, &live)?;
    Ok(report)
}

/// Deletes the log segments outside `live` (those kept logs lie in): all
/// their jobs' logs pruned, or bytes never indexed. Never the one being
/// appended to, and only once the removals that freed them are durable.
fn reclaim_segments(
    t: &Trees,
    current: Option<u32>,
    live: &std::collections::BTreeSet<u32>,
) -> Result<(), StoreError> {
    let dead: Vec<u32> = segments::list(&t.seg_dir)
        .map_err(io_err)?
        .into_iter()
        .filter(|s| Some(*s) != current && !live.contains(s))
        .collect();
    if dead.is_empty() {
        return Ok(());
    }
    t.db.flush()?;
    for s in dead {
        if let Err(e) = std::fs::remove_file(segments::path(&t.seg_dir, s)) {
            tracing::warn!(segment = s, error = %e, "removing a log segment failed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{finish, record};
    use crate::store::Store;

    #[tokio::test]
    async fn prune_by_age_drops_only_finished_jobs_logs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, Default::default()).unwrap();
        let done = store.insert_job(record("done")).await.unwrap();
        let running = store.insert_job(record("running")).await.unwrap();
        for id in [done.id, running.id] {
            store.append_log(id, 0, vec![b'x'; 1000]).await.unwrap();
        }
        finish(&store, done.id).await;
        store
            .update_job(running.id, |j| {
                j.state = JobState::Running;
                j.board = Some("b".into());
                Ok(())
            })
            .await
            .unwrap();
        let keep = Retention {
            ended_before: Some(1),
            max_total_bytes: None,
        };
        assert_eq!(store.prune_logs(keep).await.unwrap().jobs, 0);
        let all = Retention {
            ended_before: Some(u64::MAX),
            max_total_bytes: None,
        };
        let r = store.prune_logs(all).await.unwrap();
        assert_eq!((r.jobs, r.bytes, r.kept_bytes), (1, 1000, 1000));
        assert!(store.log(done.id, 0, 10).await.unwrap().0.is_empty());
        assert_eq!(store.log(running.id, 0, 10).await.unwrap().0.len(), 10);
        assert!(store.job(done.id).await.unwrap().log_pruned);
        assert_eq!(store.check().unwrap(), Vec::<String>::new());
    }

    /// A segment goes once every log in it is pruned, and not before; the
    /// segment being appended to stays. `check` notices a missing segment.
    #[tokio::test]
    async fn pruned_logs_give_their_segments_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, Default::default()).unwrap();
        let seg_dir = dir.path().join("logs");
        let half = vec![b'x'; (segments::SEGMENT_BYTES / 2 + 1) as usize];
        let done = store.insert_job(record("done")).await.unwrap().id;
        let running = store.insert_job(record("running")).await.unwrap().id;
        // Segment 1: done's log and the start of running's; segment 2: the
        // rest of running's.
        store.append_log(done, 0, half.clone()).await.unwrap();
        store
            .append_log(running, 0, b"boot".to_vec())
            .await
            .unwrap();
        store.append_log(running, 4, half.clone()).await.unwrap();
        assert_eq!(segments::list(&seg_dir).unwrap(), vec![1, 2]);
        finish(&store, done).await;
        let all = Retention {
            ended_before: Some(u64::MAX),
            max_total_bytes: None,
        };
        assert_eq!(store.prune_logs(all).await.unwrap().jobs, 1);
        assert_eq!(
            segments::list(&seg_dir).unwrap(),
            vec![1, 2],
            "running's first chunk keeps segment 1"
        );
        finish(&store, running).await;
        let before = segments::disk_bytes(&seg_dir);
        assert!(
            store.disk_bytes() > before,
            "the store's size counts its segments"
        );
        assert_eq!(store.prune_logs(all).await.unwrap().jobs, 1);
        assert_eq!(
            segments::list(&seg_dir).unwrap(),
            vec![2],
            "segment 1 went, the one appended to stays"
        );
        assert_eq!(
            segments::disk_bytes(&seg_dir),
            before - half.len() as u64 - 4
        );
        assert_eq!(store.check().unwrap(), Vec::<String>::new());

        let next = store.insert_job(record("next")).await.unwrap().id;
        store.append_log(next, 0, b"=> ".to_vec()).await.unwrap();
        std::fs::remove_file(segments::path(&seg_dir, 2)).unwrap();
        let p = store.check().unwrap();
        assert!(
            p.iter()
                .any(|l| l.contains("chunk at byte 0 in segment 2, which is missing")),
            "{p:?}"
        );
        assert!(matches!(
            store.log(next, 0, 10).await,
            Err(StoreError::Corrupt(m)) if m.contains("unreadable")
        ));
    }
}
