//! The commit stage's lanes: the records of one partition, in source order, of which only
//! the head publishes. Each lane moves on its own, so one long request does not hold up the
//! other partitions.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::task::Poll;

use bytes::Bytes;

use crate::contract::{Counts, DeadLetter, ResultEvent};
use crate::record::{Meta, SourceRef};
use crate::work::{Emitted, Pending, PendingBody};

/// The lanes, one per partition seen in this run.
#[derive(Default)]
pub(super) struct Lanes {
    lanes: Vec<Lane>,
    /// topic → partition → lane.
    index: HashMap<String, HashMap<i32, usize>>,
    /// Lanes whose head's stream yielded something in [`Lanes::ready`], not yet stepped.
    woken: Vec<usize>,
}

#[derive(Default)]
struct Lane {
    queue: VecDeque<Pending>,
    /// Progress events received from the head so far (published, or skipped on a re-read).
    progress: usize,
    /// Item counts of the progress events this run published for the head.
    counts: Counts,
    /// The unit holds events of the head that no position covers yet.
    unrecorded: bool,
    /// The head's stream ended without its terminal event (execution abandoned): the lane
    /// stops; nothing after the head may be marked done.
    abandoned: bool,
    /// What [`Lanes::ready`] received from the head's stream (`None` = the stream ended).
    peeked: Option<Option<Emitted>>,
}

/// What a lane's head can do now.
pub(super) enum Step {
    /// Nothing until its stream yields more (or the lane is stopped, or empty).
    Wait,
    /// Publish this event of the head; the head goes on.
    Event(Emitted, &'static str),
    /// Publish the head's last event, then mark it done (it left the lane).
    Last(ResultEvent, &'static str, Meta),
    /// The head is a dead letter (it left the lane): publish it, then mark it done.
    DeadLetter(Bytes, DeadLetter, Meta),
    /// The head's execution was abandoned; the lane stops (reported once).
    Abandoned(i64),
}

fn op_label(p: &Pending) -> &'static str {
    p.op.map(|o| o.as_str()).unwrap_or("none")
}

impl Lanes {
    /// Queues a record in its partition's lane; returns the lane.
    pub(super) fn push(&mut self, pending: Pending) -> usize {
        let s = &pending.meta.source;
        let lane = match self.index.get(&s.topic).and_then(|t| t.get(&s.partition)) {
            Some(&lane) => lane,
            None => {
                let lane = self.lanes.len();
                self.lanes.push(Lane::default());
                self.index
                    .entry(s.topic.clone())
                    .or_default()
                    .insert(s.partition, lane);
                lane
            }
        };
        self.lanes[lane].queue.push_back(pending);
        lane
    }

    /// The next step of lane `lane`'s head. Progress events a re-read must not publish again
    /// (`skip_progress`) are passed over here.
    pub(super) fn step(&mut self, lane: usize) -> Step {
        let l = &mut self.lanes[lane];
        loop {
            if l.abandoned {
                return Step::Wait;
            }
            let Some(head) = l.queue.front_mut() else {
                return Step::Wait;
            };
            let op = op_label(head);
            let next = match &mut head.body {
                PendingBody::Ready(_) | PendingBody::DeadLetter(..) => {
                    let head = l.queue.pop_front().expect("the head exists");
                    l.progress = 0;
                    l.counts = Counts::default();
                    l.unrecorded = false;
                    return match head.body {
                        PendingBody::Ready(event) => Step::Last(event, op, head.meta),
                        PendingBody::DeadLetter(raw, letter) => {
                            Step::DeadLetter(raw, letter, head.meta)
                        }
                        PendingBody::Stream(_) => unreachable!("matched above"),
                    };
                }
                PendingBody::Stream(rx) => match l.peeked.take() {
                    Some(next) => next,
                    None => match rx.try_recv() {
                        Ok(event) => Some(event),
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => return Step::Wait,
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => None,
                    },
                },
            };
            let Some(e) = next else {
                l.abandoned = true;
                return Step::Abandoned(head.meta.source.offset);
            };
            let ResultEvent::Progress(p) = &e.event else {
                let head = l.queue.pop_front().expect("the head exists");
                l.progress = 0;
                l.counts = Counts::default();
                l.unrecorded = false;
                return Step::Last(e.event, op, head.meta);
            };
            l.progress += 1;
            if p.chunk < head.meta.skip_progress {
                // Published and committed by an earlier run.
                continue;
            }
            l.unrecorded = true;
            for item in &p.items {
                l.counts.add(item.status);
            }
            return Step::Event(e, op);
        }
    }

    /// Unfinished heads whose events the unit holds without a position: where each resumes,
    /// how many progress events it has published and their item counts (an earlier run's
    /// included). They count as recorded afterwards.
    pub(super) fn partials(&mut self) -> Vec<(SourceRef, u64, usize, Counts)> {
        let mut out = Vec::new();
        for l in &mut self.lanes {
            if !l.unrecorded {
                continue;
            }
            l.unrecorded = false;
            if let Some(head) = l.queue.front() {
                let m = &head.meta;
                let mut counts = m.skip_counts.clone().unwrap_or_default();
                counts.merge(&l.counts);
                out.push((
                    m.source.clone(),
                    m.start_at,
                    l.progress.max(m.skip_progress),
                    counts,
                ));
            }
        }
        out
    }

    /// Waits until a head's stream yields an event or ends (cancel-safe: what it receives is
    /// kept for [`Lanes::step`]); the lanes concerned are then given by [`Lanes::take_woken`].
    pub(super) fn ready(&mut self) -> impl Future<Output = ()> + Send + '_ {
        std::future::poll_fn(move |cx| {
            let mut any = false;
            for (i, l) in self.lanes.iter_mut().enumerate() {
                if l.abandoned || l.peeked.is_some() {
                    continue;
                }
                if let Some(Pending {
                    body: PendingBody::Stream(rx),
                    ..
                }) = l.queue.front_mut()
                {
                    if let Poll::Ready(next) = rx.poll_recv(cx) {
                        l.peeked = Some(next);
                        self.woken.push(i);
                        any = true;
                    }
                }
            }
            if any {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// A lane [`Lanes::ready`] found ready.
    pub(super) fn take_woken(&mut self) -> Option<usize> {
        self.woken.pop()
    }

    /// Every lane is empty or stopped at an abandoned head.
    pub(super) fn settled(&self) -> bool {
        self.lanes.iter().all(|l| l.abandoned || l.queue.is_empty())
    }
}
