//! `labd fsck`: checking the store's invariants, and repairing what an
//! older labd left broken.
//!
//! Both run on the calling thread, on a store no daemon has open: `check`
//! only reads, and `repair` changes sled directly, in one transaction,
//! since no writer thread has anything queued on such a store. They live
//! apart from the handle's code because they restate every invariant the
//! rest of the store keeps, and read best as that list.

use super::{all_chunks, be_u64, dec, key2, segments, state_key, tx_err, Chunk, Store, StoreError};
use crate::model::{JobEvent, JobId, JobRecord, JobState};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

impl Store {
    /// Checks the store's invariants (for `labd fsck`, on a store no daemon
    /// has open) and says what is wrong, one line per problem: each job in
    /// exactly one state index entry that agrees with it, ids below the next
    /// id, no board with two unfinished jobs, every started job on a board,
    /// finished jobs with an end, log chunks without gaps or overlaps, and no
    /// events, logs or results of jobs that do not exist.
    pub fn check(&self) -> Result<Vec<String>, StoreError> {
        let t = self.trees();
        let mut problems = Vec::new();
        let next = t.meta.get("next_job_id")?.map_or(1, |v| be_u64(&v));
        let mut jobs = std::collections::BTreeMap::new();
        let mut on_board: std::collections::BTreeMap<String, Vec<JobId>> = Default::default();
        for kv in t.jobs.iter() {
            let (k, v) = kv?;
            let key = be_u64(&k);
            let j: JobRecord = match dec(&v) {
                Ok(j) => j,
                Err(e) => {
                    problems.push(format!("job {key}: unreadable record: {e}"));
                    continue;
                }
            };
            if j.id != key {
                problems.push(format!("job {key}: record says it is job {}", j.id));
            }
            if key >= next {
                problems.push(format!("job {key}: at or above the next job id {next}"));
            }
            if !t.by_state.contains_key(state_key(j.state, key))? {
                problems.push(format!(
                    "job {key}: {} but not in that state index",
                    j.state
                ));
            }
            match j.state {
                JobState::Scheduled | JobState::Running | JobState::Canceling => match &j.board {
                    Some(b) => on_board.entry(b.clone()).or_default().push(key),
                    None => problems.push(format!("job {key}: {} without a board", j.state)),
                },
                JobState::Finished if j.end_time.is_none() => {
                    problems.push(format!("job {key}: Finished without an end time"))
                }
                _ => {}
            }
            jobs.insert(key, j.state);
        }
        for (board, ids) in on_board {
            if ids.len() > 1 {
                problems.push(format!("board {board}: several unfinished jobs {ids:?}"));
            }
        }
        for kv in t.by_state.iter() {
            let (k, _) = kv?;
            let id = be_u64(&k[1..]);
            let state = JobState::ALL.into_iter().find(|s| s.tag() == k[0]);
            match (state, jobs.get(&id)) {
                (None, _) => problems.push(format!(
                    "state index: unknown state tag {} for job {id}",
                    k[0]
                )),
                (Some(s), None) => {
                    problems.push(format!("state index: job {id} ({s}) does not exist"))
                }
                (Some(s), Some(actual)) if s != *actual => problems.push(format!(
                    "state index: job {id} listed as {s} but is {actual}"
                )),
                _ => {}
            }
        }
        let mut log_end: Option<(JobId, u64)> = None;
        let mut seg_len: std::collections::HashMap<u32, Option<u64>> = Default::default();
        for c in all_chunks(t) {
            let (id, off, chunk) = c?;
            if let Chunk::Segment(loc) = &chunk {
                let len = *seg_len.entry(loc.seg).or_insert_with(|| {
                    std::fs::metadata(segments::path(&t.seg_dir, loc.seg))
                        .ok()
                        .map(|m| m.len())
                });
                match len {
                    None => problems.push(format!(
                        "log of job {id}: chunk at byte {off} in segment {}, which is missing",
                        loc.seg
                    )),
                    Some(n) if loc.pos + u64::from(loc.len) > n => problems.push(format!(
                        "log of job {id}: chunk at byte {off} ends past segment {}'s end",
                        loc.seg
                    )),
                    Some(_) => {}
                }
            }
            let expected = match log_end {
                Some((j, end)) if j == id => end,
                _ => {
                    if !jobs.contains_key(&id) {
                        problems.push(format!("log of job {id}, which does not exist"));
                    }
                    0
                }
            };
            if off != expected {
                problems.push(format!(
                    "log of job {id}: chunk at byte {off}, expected {expected} ({})",
                    if off > expected {
                        "a gap"
                    } else {
                        "an overlap"
                    }
                ));
            }
            log_end = Some((id, off + chunk.len()));
        }
        // Each finished job ended exactly once (its state events say so).
        let mut ends: std::collections::BTreeMap<JobId, usize> = Default::default();
        for kv in t.events.iter() {
            let (k, v) = kv?;
            if let Ok(ev) = dec::<JobEvent>(&v) {
                if ev.kind == "state" && ev.message.starts_with("Finished") {
                    *ends.entry(be_u64(&k[..8])).or_default() += 1;
                }
            }
        }
        for (id, state) in &jobs {
            let n = ends.get(id).copied().unwrap_or(0);
            let want = usize::from(*state == JobState::Finished);
            if n != want {
                problems.push(format!("job {id}: {state} with {n} Finished events"));
            }
        }
        for (name, tree) in [("events", &t.events), ("results", &t.results)] {
            let mut last = None;
            for kv in tree.iter() {
                let (k, _) = kv?;
                let id = be_u64(&k[..8]);
                if last != Some(id) && !jobs.contains_key(&id) {
                    problems.push(format!("{name} of job {id}, which does not exist"));
                }
                last = Some(id);
            }
        }
        Ok(problems)
    }

    /// Turns every gap in a console log (chunks after a lost one, left by
    /// a labd older than the truncation marks) into a mark saying how many
    /// bytes are missing there, and moves the chunks after it to follow the
    /// mark: the whole log reads again and nothing stored is dropped. For
    /// `labd fsck --repair`, on a store no daemon has open. Says what it
    /// did, one line per gap.
    pub fn repair(&self) -> Result<Vec<String>, StoreError> {
        let t = self.trees();
        let mut done = Vec::new();
        // Each moved chunk: its tree (segment index or inline), old and new key, value.
        let mut moves: Vec<(bool, [u8; 16], [u8; 16], sled::IVec)> = Vec::new();
        let mut marks: Vec<([u8; 16], Vec<u8>)> = Vec::new();
        // The job being walked, where its next byte should be, and how far
        // its later chunks move.
        let mut at: Option<(JobId, u64, i128)> = None;
        for c in all_chunks(t) {
            let (id, off, chunk) = c?;
            let (expected, shift) = match at {
                Some((j, end, shift)) if j == id => (end, shift),
                _ => (0, 0),
            };
            let mut shift = shift;
            let mut new_off = (i128::from(off) + shift) as u64;
            if new_off > expected {
                let missing = new_off - expected;
                let note = format!(
                    "\r\n[labd: {missing} bytes of this console log are missing here (a gap left by an older labd, marked by labd fsck --repair)]\r\n"
                )
                .into_bytes();
                done.push(format!(
                    "log of job {id}: {missing} missing bytes at byte {expected} marked"
                ));
                let after = expected + note.len() as u64;
                marks.push((key2(id, expected), note));
                shift += i128::from(after) - i128::from(new_off);
                new_off = after;
            }
            if new_off != off {
                let (inline, v) = match &chunk {
                    Chunk::Inline(v) => (true, v.clone()),
                    Chunk::Segment(l) => (false, sled::IVec::from(&l.encode()[..])),
                };
                moves.push((inline, key2(id, off), key2(id, new_off), v));
            }
            at = Some((id, new_off + chunk.len(), shift));
        }
        if done.is_empty() {
            return Ok(done);
        }
        // All at once: a crash leaves the log as it was, or repaired.
        (&t.log_index, &t.logs)
            .transaction(|(index, inline)| {
                for (is_inline, old, _, _) in &moves {
                    let tree = if *is_inline { inline } else { index };
                    tree.remove(&old[..])?;
                }
                for (is_inline, _, new, v) in &moves {
                    let tree = if *is_inline { inline } else { index };
                    tree.insert(&new[..], v.clone())?;
                }
                for (k, note) in &marks {
                    inline.insert(&k[..], &note[..])?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_err)?;
        t.db.flush()?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::enc;
    use crate::store::tests::{finish, record};

    /// A gap an older labd left (a chunk written after a lost one) made
    /// the whole log unreadable; `repair` turns it into a mark saying how
    /// many bytes are missing, the bytes after it follow the mark, and the
    /// store checks clean.
    #[tokio::test]
    async fn repair_turns_a_log_gap_into_a_mark_and_keeps_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, Default::default()).unwrap();
        let a = store.insert_job(record("a")).await.unwrap().id;
        let b = store.insert_job(record("b")).await.unwrap().id;
        store.append_log(a, 0, b"U-Boot".to_vec()).await.unwrap();
        // Bytes 6..4469 were lost; the next chunks went on being stored.
        store
            .append_log(a, 4469, b" login:".to_vec())
            .await
            .unwrap();
        store.append_log(a, 4476, b" root".to_vec()).await.unwrap();
        store.append_log(b, 0, b"sound".to_vec()).await.unwrap();
        assert!(matches!(
            store.log(a, 0, 1 << 20).await,
            Err(StoreError::Corrupt(m)) if m.contains("log gap at 6")
        ));
        assert_eq!(store.check().unwrap().len(), 1);
        let done = store.repair().unwrap();
        assert_eq!(
            done,
            vec![format!(
                "log of job {a}: 4463 missing bytes at byte 6 marked"
            )]
        );
        assert_eq!(store.check().unwrap(), Vec::<String>::new());
        let (log, end) = store.log(a, 0, 1 << 20).await.unwrap();
        let note = "\r\n[labd: 4463 bytes of this console log are missing here (a gap left by an older labd, marked by labd fsck --repair)]\r\n";
        assert_eq!(
            String::from_utf8(log).unwrap(),
            format!("U-Boot{note} login: root")
        );
        assert_eq!(end, (6 + note.len() + 12) as u64);
        assert_eq!(store.log(b, 0, 100).await.unwrap().0, b"sound");
        assert!(store.repair().unwrap().is_empty(), "nothing left to repair");
    }

    #[tokio::test]
    async fn check_finds_broken_invariants_and_nothing_in_a_sound_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, Default::default()).unwrap();
        let a = store.insert_job(record("a")).await.unwrap();
        let b = store.insert_job(record("b")).await.unwrap();
        store
            .update_job(a.id, |j| {
                j.state = JobState::Running;
                j.board = Some("sim-01".into());
                Ok(())
            })
            .await
            .unwrap();
        store.append_log(a.id, 0, b"U-Boot".to_vec()).await.unwrap();
        store.append_log(a.id, 6, b" 2023".to_vec()).await.unwrap();
        finish(&store, b.id).await;
        assert_eq!(store.check().unwrap(), Vec::<String>::new());

        // Break it the ways a bug or a torn write could.
        let t = store.trees();
        t.by_state
            .remove(state_key(JobState::Running, a.id))
            .unwrap();
        t.by_state
            .insert(state_key(JobState::Submitted, 99), &[])
            .unwrap();
        t.logs.insert(key2(a.id, 20), &b"late"[..]).unwrap();
        let mut c = record("c");
        c.id = 7;
        c.state = JobState::Running;
        c.board = Some("sim-01".into());
        t.jobs.insert(7u64.to_be_bytes(), enc(&c)).unwrap();
        t.by_state
            .insert(state_key(JobState::Running, 7), &[])
            .unwrap();
        let p = store.check().unwrap();
        let has = |s: &str| p.iter().any(|l| l.contains(s));
        assert!(has("job 1: Running but not in that state index"), "{p:?}");
        assert!(
            has("state index: job 99 (Submitted) does not exist"),
            "{p:?}"
        );
        assert!(
            has("log of job 1: chunk at byte 20, expected 11 (a gap)"),
            "{p:?}"
        );
        assert!(has("job 7: at or above the next job id"), "{p:?}");
        assert!(has("board sim-01: several unfinished jobs [1, 7]"), "{p:?}");
        assert_eq!(p.len(), 5, "{p:?}");
    }
}
