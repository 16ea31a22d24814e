//! The scheduler: which queued job, or which health check, each free board
//! takes, and handing a job to its board.
//!
//! The decision is [`plan`], a pure function over plain data (the boards as
//! [`BoardView`]s, the queue as [`JobView`]s, the time), so that the rules
//! can be tested without an actor, a store or a clock. The actor's
//! [`LabActor::schedule`] builds the views, asks for a plan and applies it:
//! health checks first, then the jobs in queue order, each board reserved
//! as it is given its work. The queue's order is [`Rank`]'s.
//!
//! Invariants:
//! - A board takes work only when it is free: Idle, its health Good or
//!   Unknown, and no maintenance or retirement waiting for a job to end.
//! - A free board whose health check is due runs it before any user job.
//! - A plan gives each board at most one job, takes jobs in queue order
//!   (highest priority, then oldest, then lowest id) and gives each to the
//!   first free board, by name, of its device type with all its tags. A job
//!   no board can take does not hold up the jobs behind it.
//! - [`plan`] reads nothing but its arguments: it never looks at the
//!   actor, the store or the clock. With no free board it reads none of the
//!   queue, however long.
//! - Nothing is scheduled before the start-up reconcile has run, nor once
//!   the lab is draining.

use super::queue::Queued;
use super::LabActor;
use crate::board::StartJob;
use crate::job::JobDefinition;
use crate::model::{now_ms, BoardHealth, BoardState, ErrorClass, JobId, JobOutcome, JobState};
use crate::store::Refused;
use actix::prelude::*;
use std::cmp::Reverse;

/// The start error that means the board actor died while taking a job.
/// Why handing a job to its board failed.
#[derive(Debug, thiserror::Error)]
enum HandOver {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Board(#[from] crate::board::BoardError),
    /// The board actor's mailbox closed: it died taking the job, and its
    /// death report ends the job (as a Bug), not this path.
    #[error("board actor died")]
    BoardDied,
}

/// A queued job's place in line: the higher priority first, then the
/// older, then the lower id. Greater is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Rank(u8, Reverse<u64>, Reverse<JobId>);

impl Rank {
    pub(super) fn new(priority: u8, submit_time: u64, id: JobId) -> Rank {
        Rank(priority, Reverse(submit_time), Reverse(id))
    }
}

/// Where a job of rank `new` goes in a queue kept best first: after every
/// job ranked at least as high. A binary search finds it (usually the end
/// of its priority), however long the queue.
pub(super) fn place<T>(queue: &[T], rank: impl Fn(&T) -> Rank, new: Rank) -> usize {
    queue.partition_point(|o| rank(o) >= new)
}

/// What the scheduler needs of a queued job: where it can run.
#[derive(Debug, Clone, Copy)]
pub(super) struct JobView<'a> {
    pub device_type: &'a str,
    pub tags: &'a [String],
    /// The one board a lava-server's job runs on (its device's).
    pub board: Option<&'a str>,
}

impl<'a> JobView<'a> {
    pub(super) fn of(def: &'a JobDefinition) -> JobView<'a> {
        JobView {
            device_type: &def.device_type,
            tags: &def.tags,
            board: None,
        }
    }

    /// Whether board `b` may take the job: a lava-server's job only its
    /// device's board, any other job a board of its device type with its
    /// tags that no lava-server owns.
    pub(super) fn takes(&self, b: &BoardView) -> bool {
        match self.board {
            Some(name) => name == b.name,
            None => !b.lava_owned && self.fits(b.device_type, b.tags),
        }
    }

    /// A board of `device_type` with `tags` can run the job: the same
    /// device type, and every tag the job asks for.
    pub(super) fn fits(&self, device_type: &str, tags: &[String]) -> bool {
        device_type == self.device_type && self.tags.iter().all(|t| tags.contains(t))
    }
}

/// What the scheduler needs of a board.
#[derive(Debug, Clone, Copy)]
pub(super) struct BoardView<'a> {
    pub name: &'a str,
    pub device_type: &'a str,
    pub tags: &'a [String],
    pub state: BoardState,
    pub health: BoardHealth,
    /// A maintenance or retirement waits for the board's job to end.
    pub health_pending: bool,
    /// The board's device type has a health-check job.
    pub has_health_check: bool,
    /// When the board last passed a health check (ms since the epoch).
    pub last_health_check: Option<u64>,
    /// A lava-server's device (`lava_worker_device`): only that server's
    /// jobs run on it.
    pub lava_owned: bool,
}

impl BoardView<'_> {
    /// Idle, in service, and not about to go to maintenance.
    pub(super) fn free(&self) -> bool {
        self.state == BoardState::Idle && self.health.schedulable() && !self.health_pending
    }

    /// Whether the board's device type has a health check and the board
    /// needs it: health Unknown, or no pass within `every_ms` of `now`.
    pub(super) fn health_check_due(&self, now: u64, every_ms: u64) -> bool {
        self.has_health_check
            && (self.health == BoardHealth::Unknown
                || self
                    .last_health_check
                    .is_none_or(|t| now.saturating_sub(t) >= every_ms))
    }
}

/// What one scheduling pass does.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Plan {
    /// Boards that run their health check now, by name.
    pub health_checks: Vec<String>,
    /// Queued jobs to start, as (position in the queue, board), in queue
    /// order.
    pub jobs: Vec<(usize, String)>,
}

/// Decides a scheduling pass: the free boards whose health check is due
/// (health checks run every `every_ms`) take it; then the queue, best
/// first, goes to the other free boards, each job to the first board in
/// `boards`' order that fits it.
pub(super) fn plan<'j>(
    boards: &[BoardView],
    queue: impl IntoIterator<Item = JobView<'j>>,
    now: u64,
    every_ms: u64,
) -> Plan {
    let mut plan = Plan::default();
    // Which boards may still take a user job in this pass.
    let mut open = Vec::with_capacity(boards.len());
    for b in boards {
        let due = b.health_check_due(now, every_ms);
        if b.free() && due {
            plan.health_checks.push(b.name.to_owned());
        }
        open.push(b.free() && !due);
    }
    let mut left = open.iter().filter(|o| **o).count();
    // With every board taken (the usual state of a loaded lab) there is
    // nothing more to look for in the queue, however long it is: no more
    // of it is read.
    let mut queue = queue.into_iter().enumerate();
    while left > 0 {
        let Some((i, job)) = queue.next() else {
            break;
        };
        let fits = |k: &usize| open[*k] && job.takes(&boards[*k]);
        if let Some(k) = (0..boards.len()).find(fits) {
            open[k] = false;
            left -= 1;
            plan.jobs.push((i, boards[k].name.to_owned()));
        }
    }
    plan
}

impl LabActor {
    /// Gives queued jobs to idle boards: highest priority first, then
    /// oldest; a board that must prove itself runs its health check before
    /// any user job.
    pub(super) fn schedule(&mut self, ctx: &mut Context<Self>) {
        if self.draining {
            self.notify_if_drained();
            return;
        }
        if !self.ready {
            return;
        }
        let every = self
            .cfg
            .health_checks
            .frequency_hours
            .saturating_mul(3_600_000);
        let boards: Vec<BoardView> = self
            .boards
            .iter()
            .map(|(name, s)| BoardView {
                name,
                device_type: &s.cfg.device_type,
                tags: &s.cfg.tags,
                state: s.state,
                health: s.health,
                health_pending: s.pending_health.is_some(),
                has_health_check: self.health_checks.contains_key(&s.cfg.device_type),
                last_health_check: s.last_health_check,
                lava_owned: s.cfg.lava_worker_device.is_some(),
            })
            .collect();
        let queue = self.queue.iter().map(|q| JobView {
            board: q.lava.as_ref().map(|l| l.board.as_str()),
            ..JobView::of(&q.def)
        });
        let plan = plan(&boards, queue, now_ms(), every);
        for name in plan.health_checks {
            self.start_health_check(name, ctx);
        }
        // Out of the queue from the back, so the positions still hold;
        // started front first, in queue order.
        let mut starts = Vec::with_capacity(plan.jobs.len());
        for (i, board) in plan.jobs.into_iter().rev() {
            starts.push((self.queue.remove(i), board));
        }
        for (q, board) in starts.into_iter().rev() {
            self.assign(q, board, ctx);
        }
    }

    /// Gives a job to a board: the board is Reserved at once, the job is
    /// Scheduled in the store, then Running once the board has taken it.
    pub(super) fn assign(&mut self, q: Queued, board: String, ctx: &mut Context<Self>) {
        let Some(slot) = self.boards.get_mut(&board) else {
            return;
        };
        slot.state = BoardState::Reserved;
        slot.job = Some(q.id);
        slot.job_since = Some(now_ms());
        slot.lava_job = q.lava.as_ref().map(|l| l.id);
        let addr = slot.addr.clone();
        let store = self.store.clone();
        let id = q.id;
        self.metrics.queue_waited(std::time::Duration::from_millis(
            now_ms().saturating_sub(q.submit_time),
        ));
        let bn = board.clone();
        let fut = async move {
            store
                .update_job(id, move |j| {
                    if j.state != JobState::Submitted {
                        return Err(Refused(format!("job {id} is {} already", j.state)));
                    }
                    j.state = JobState::Scheduled;
                    j.board = Some(bn);
                    Ok(())
                })
                .await?;
            addr.send(StartJob {
                id,
                def: q.def,
                reader: q.reader,
            })
            .await
            .map_err(|_| HandOver::BoardDied)??;
            store
                .update_job(id, |j| {
                    if j.state == JobState::Scheduled {
                        j.state = JobState::Running;
                    }
                    j.start_time = Some(now_ms());
                    Ok(())
                })
                .await?;
            Ok::<(), HandOver>(())
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(move |res: Result<(), HandOver>, act, ctx| {
                    if let Some(s) = act.boards.get_mut(&board) {
                        if s.job == Some(id) && s.state == BoardState::Reserved {
                            s.state = BoardState::Running;
                        }
                    }
                    if let Some(e) = res.err().filter(|e| !matches!(e, HandOver::BoardDied)) {
                        tracing::error!(job = id, %board, error = %e, "starting job failed");
                        act.finish(
                            id,
                            &board,
                            JobOutcome::incomplete(
                                ErrorClass::Infrastructure,
                                format!("could not start: {e}"),
                            ),
                            ctx,
                        );
                    }
                }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;
    const NOW: u64 = 1_000 * HOUR;

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    /// An idle, Good board of `device_type` without a health check.
    fn board<'a>(name: &'a str, device_type: &'a str, tags: &'a [String]) -> BoardView<'a> {
        BoardView {
            name,
            device_type,
            tags,
            state: BoardState::Idle,
            health: BoardHealth::Good,
            health_pending: false,
            has_health_check: false,
            last_health_check: None,
            lava_owned: false,
        }
    }

    fn job<'a>(device_type: &'a str, tags: &'a [String]) -> JobView<'a> {
        JobView {
            device_type,
            tags,
            board: None,
        }
    }

    /// A lava-server's job goes to its device's board alone, even past a
    /// free board of its type; a board a lava-server owns takes no other
    /// job, even one of its device type.
    #[test]
    fn a_lava_job_takes_its_board_and_a_lava_board_takes_only_lava_jobs() {
        let none = tags(&[]);
        let boards = [
            BoardView {
                lava_owned: true,
                ..board("a", "bbb", &none)
            },
            BoardView {
                lava_owned: true,
                ..board("b", "bbb", &none)
            },
            board("c", "bbb", &none),
        ];
        let local = job("bbb", &none);
        let lava = JobView {
            board: Some("b"),
            ..job("bbb", &none)
        };
        let p = plan(&boards, [local, lava, local], NOW, 24 * HOUR);
        assert_eq!(jobs(&p), [(0, "c"), (1, "b")]);
    }

    fn jobs(plan: &Plan) -> Vec<(usize, &str)> {
        plan.jobs.iter().map(|(i, b)| (*i, b.as_str())).collect()
    }

    #[test]
    fn jobs_go_in_queue_order_to_the_first_free_board_by_name() {
        let none = tags(&[]);
        let boards = [board("a", "bbb", &none), board("b", "bbb", &none)];
        let queue = [job("bbb", &none), job("bbb", &none), job("bbb", &none)];
        let p = plan(&boards, queue, NOW, 24 * HOUR);
        assert_eq!(jobs(&p), [(0, "a"), (1, "b")]);
        assert!(p.health_checks.is_empty());
    }

    #[test]
    fn the_queue_is_ranked_by_priority_then_submit_time_then_id() {
        // (priority, submit time, id), in the order they are queued.
        let arrivals = [
            (50, 10, 1),
            (50, 20, 2),
            (100, 30, 3),
            (0, 5, 4),
            (50, 10, 5),
            (100, 25, 6),
            (50, 15, 7),
        ];
        let mut queue: Vec<(u8, u64, JobId)> = Vec::new();
        for a in arrivals {
            let rank = |j: &(u8, u64, JobId)| Rank::new(j.0, j.1, j.2);
            let at = place(&queue, rank, rank(&a));
            queue.insert(at, a);
        }
        let ids: Vec<JobId> = queue.iter().map(|j| j.2).collect();
        assert_eq!(ids, [6, 3, 1, 5, 7, 2, 4]);
    }

    #[test]
    fn a_new_job_goes_after_the_jobs_of_its_priority_before_the_lower_ones() {
        let queue = [
            Rank::new(100, 1, 1),
            Rank::new(50, 2, 2),
            Rank::new(50, 3, 3),
            Rank::new(0, 4, 4),
        ];
        assert_eq!(place(&queue, |r| *r, Rank::new(50, 9, 9)), 3);
        assert_eq!(place(&queue, |r| *r, Rank::new(100, 9, 9)), 1);
        assert_eq!(place(&queue, |r| *r, Rank::new(0, 9, 9)), 4);
        assert_eq!(place(&queue, |r| *r, Rank::new(255, 9, 9)), 0);
    }

    #[test]
    fn a_job_runs_only_on_its_device_type_with_all_its_tags() {
        let none = tags(&[]);
        let usb = tags(&["usb"]);
        let usb_hdmi = tags(&["hdmi", "usb"]);
        let boards = [
            board("a", "rpi4", &usb_hdmi),
            board("b", "bbb", &none),
            board("c", "bbb", &usb),
        ];
        let queue = [job("bbb", &usb_hdmi), job("bbb", &usb), job("rpi4", &none)];
        let p = plan(&boards, queue, NOW, 24 * HOUR);
        // The first asks for a tag no bbb has; the rpi4 job takes a board
        // with more tags than it asks for.
        assert_eq!(jobs(&p), [(1, "c"), (2, "a")]);
        assert!(!job("bbb", &none).fits("rpi4", &none));
        assert!(job("bbb", &none).fits("bbb", &usb));
        assert!(!job("bbb", &usb).fits("bbb", &none));
    }

    #[test]
    fn a_job_no_free_board_fits_does_not_hold_up_the_queue() {
        let none = tags(&[]);
        let boards = [board("a", "bbb", &none)];
        let queue = [job("rpi4", &none), job("rpi4", &none), job("bbb", &none)];
        let p = plan(&boards, queue, NOW, 24 * HOUR);
        assert_eq!(jobs(&p), [(2, "a")]);
    }

    #[test]
    fn busy_boards_are_skipped() {
        let none = tags(&[]);
        let mut reserved = board("a", "bbb", &none);
        reserved.state = BoardState::Reserved;
        let mut running = board("b", "bbb", &none);
        running.state = BoardState::Running;
        let idle = board("c", "bbb", &none);
        let p = plan(
            &[reserved, running, idle],
            [job("bbb", &none); 3],
            NOW,
            24 * HOUR,
        );
        assert_eq!(jobs(&p), [(0, "c")]);
    }

    #[test]
    fn only_good_and_unknown_boards_take_jobs() {
        let none = tags(&[]);
        let healths = [
            ("a", BoardHealth::Bad),
            ("b", BoardHealth::Maintenance),
            ("c", BoardHealth::Retired),
            ("d", BoardHealth::Unknown),
            ("e", BoardHealth::Good),
        ];
        let boards: Vec<BoardView> = healths
            .iter()
            .map(|(name, health)| BoardView {
                health: *health,
                ..board(name, "bbb", &none)
            })
            .collect();
        let p = plan(&boards, [job("bbb", &none); 5], NOW, 24 * HOUR);
        assert_eq!(jobs(&p), [(0, "d"), (1, "e")]);
    }

    #[test]
    fn a_board_going_to_maintenance_after_its_job_is_skipped() {
        let none = tags(&[]);
        let pending = BoardView {
            health_pending: true,
            ..board("a", "bbb", &none)
        };
        let p = plan(
            &[pending, board("b", "bbb", &none)],
            [job("bbb", &none); 2],
            NOW,
            24 * HOUR,
        );
        assert_eq!(jobs(&p), [(0, "b")]);
    }

    #[test]
    fn a_due_health_check_goes_before_any_user_job() {
        let none = tags(&[]);
        let unknown = BoardView {
            health: BoardHealth::Unknown,
            has_health_check: true,
            ..board("a", "bbb", &none)
        };
        let p = plan(
            &[unknown, board("b", "bbb", &none)],
            [job("bbb", &none); 2],
            NOW,
            24 * HOUR,
        );
        assert_eq!(p.health_checks, ["a"]);
        assert_eq!(jobs(&p), [(0, "b")]);
    }

    #[test]
    fn a_board_that_is_not_free_gets_no_health_check() {
        let none = tags(&[]);
        let due = BoardView {
            health: BoardHealth::Unknown,
            has_health_check: true,
            ..board("a", "bbb", &none)
        };
        let busy = BoardView {
            state: BoardState::Running,
            ..due
        };
        let bad = BoardView {
            health: BoardHealth::Bad,
            ..due
        };
        let maintenance = BoardView {
            health: BoardHealth::Maintenance,
            ..due
        };
        let pending = BoardView {
            health_pending: true,
            ..due
        };
        for b in [busy, bad, maintenance, pending] {
            let p = plan(&[b], [job("bbb", &none)], NOW, 24 * HOUR);
            assert_eq!(p, Plan::default(), "{b:?}");
        }
    }

    #[test]
    fn when_a_health_check_is_due() {
        let none = tags(&[]);
        let every = 24 * HOUR;
        let checked = |health, last| BoardView {
            health,
            last_health_check: last,
            has_health_check: true,
            ..board("a", "bbb", &none)
        };
        // Without a health check for the device type, never.
        let unchecked = BoardView {
            health: BoardHealth::Unknown,
            ..board("a", "bbb", &none)
        };
        assert!(!unchecked.health_check_due(NOW, every));
        // Unknown health: always, however recent the last pass.
        assert!(checked(BoardHealth::Unknown, Some(NOW)).health_check_due(NOW, every));
        // Good: when it never passed one, or its pass is a period old.
        assert!(checked(BoardHealth::Good, None).health_check_due(NOW, every));
        assert!(!checked(BoardHealth::Good, Some(NOW - every + 1)).health_check_due(NOW, every));
        assert!(checked(BoardHealth::Good, Some(NOW - every)).health_check_due(NOW, every));
        // A pass stamped after `now` (a clock step back) is recent.
        assert!(!checked(BoardHealth::Good, Some(NOW + HOUR)).health_check_due(NOW, every));
        // A zero frequency makes every free board check before each job.
        assert!(checked(BoardHealth::Good, Some(NOW)).health_check_due(NOW, 0));
    }

    #[test]
    fn a_good_board_with_a_recent_check_takes_user_jobs() {
        let none = tags(&[]);
        let recent = BoardView {
            has_health_check: true,
            last_health_check: Some(NOW - HOUR),
            ..board("a", "bbb", &none)
        };
        let p = plan(&[recent], [job("bbb", &none)], NOW, 24 * HOUR);
        assert!(p.health_checks.is_empty());
        assert_eq!(jobs(&p), [(0, "a")]);
    }

    #[test]
    fn no_more_of_the_queue_is_read_once_every_board_is_taken() {
        let none = tags(&[]);
        let busy = BoardView {
            state: BoardState::Running,
            ..board("a", "bbb", &none)
        };
        let mut read = 0;
        let queue = std::iter::repeat_n(job("bbb", &none), 1_000).inspect(|_| read += 1);
        assert_eq!(plan(&[busy], queue, NOW, 24 * HOUR), Plan::default());
        assert_eq!(read, 0);

        let mut read = 0;
        let boards = [board("a", "bbb", &none), board("b", "rpi4", &none)];
        let queue = [job("bbb", &none), job("rpi4", &none), job("bbb", &none)];
        let p = plan(
            &boards,
            queue.into_iter().inspect(|_| read += 1),
            NOW,
            24 * HOUR,
        );
        assert_eq!(jobs(&p), [(0, "a"), (1, "b")]);
        assert_eq!(read, 2);
    }
}
