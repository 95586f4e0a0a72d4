//! A worker's futures in reusable places: polled only when woken, each
//! place's waker reused by the next future (an unordered set of futures
//! that allocates nothing per message once warm).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use super::complete::run_guarded;
use crate::stats::Stats;

/// The handlers one worker runs: a set of futures polled only when woken,
/// like `FuturesUnordered`, but whose places (the pinned box a future lives
/// in, and its waker) are made once and reused by later messages, so
/// running a message allocates nothing here. A future that finished stays
/// in its place (it must hold nothing more then; it is not polled again)
/// until [`Places::insert_with`] makes the next future of the place from it,
/// or [`Places::clear`] drops it.
pub(super) struct Places<F> {
    pub(super) places: Vec<Place<F>>,
    /// Places free for the next message.
    pub(super) free: Vec<usize>,
    /// Places to poll now: new futures, and those woken.
    pub(super) due: Vec<usize>,
    pub(super) woken: Arc<Woken>,
    /// Where each place's start time is published (see
    /// [`Stats::running_since`]), if anywhere.
    pub(super) stats: Option<Arc<Stats>>,
    /// The time stamped on the futures inserted next, in Unix milliseconds.
    pub(super) now_ms: u64,
}

pub(super) struct Place<F> {
    pub(super) future: std::pin::Pin<Box<Option<F>>>,
    /// Whether its future runs (one kept after it finished does not).
    pub(super) live: bool,
    pub(super) wake: Arc<SlotWake>,
    pub(super) waker: std::task::Waker,
    /// When its future began, in Unix milliseconds (0: free).
    pub(super) since: Arc<AtomicU64>,
}

/// The places woken since the worker last looked, and the worker's waker.
#[derive(Default)]
pub(super) struct Woken {
    pub(super) places: Mutex<Vec<usize>>,
    pub(super) worker: futures_util::task::AtomicWaker,
}

/// The waker of one place. `queued` keeps a place from being listed twice;
/// it is cleared just before each poll, so a wake during or after that poll
/// lists it again and none is lost. A wake meant for a place's previous
/// future only causes one spurious poll of the next.
pub(super) struct SlotWake {
    pub(super) place: usize,
    pub(super) queued: AtomicBool,
    pub(super) woken: Arc<Woken>,
}

impl std::task::Wake for SlotWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::SeqCst) {
            self.woken
                .places
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(self.place);
            self.woken.worker.wake();
        }
    }
}

impl<F: Future> Places<F> {
    pub(super) fn new() -> Self {
        Self {
            places: Vec::new(),
            free: Vec::new(),
            due: Vec::new(),
            woken: Arc::default(),
            stats: None,
            now_ms: 0,
        }
    }

    /// Publishes each place's start time in `stats`.
    pub(super) fn report_to(&mut self, stats: Arc<Stats>) {
        self.stats = Some(stats);
    }

    /// Makes `cx` the waker to call when a future here is woken.
    pub(super) fn register(&self, cx: &std::task::Context<'_>) {
        self.woken.worker.register(cx.waker());
    }

    pub(super) fn is_empty(&self) -> bool {
        self.free.len() == self.places.len()
    }

    /// Adds a future, to be polled first by the next [`Places::poll_woken`];
    /// returns its place.
    #[cfg(test)]
    pub(super) fn insert(&mut self, future: F) -> usize {
        let place = self.vacant();
        if let Some(slot) = self.places.get_mut(place) {
            slot.future.set(Some(future));
        }
        self.occupy(place);
        place
    }

    /// As [`Places::insert`], the future made where it lives by `fill`,
    /// from the future that ended in that place, or from nothing in a new
    /// place.
    pub(super) fn insert_with(&mut self, fill: impl FnOnce(&mut Option<F>)) -> usize
    where
        F: Unpin,
    {
        let place = self.vacant();
        if let Some(slot) = self.places.get_mut(place) {
            fill(&mut slot.future);
        }
        self.occupy(place);
        place
    }

    /// A free place, made if there is none.
    fn vacant(&mut self) -> usize {
        if let Some(place) = self.free.pop() {
            return place;
        }
        let place = self.places.len();
        let wake = Arc::new(SlotWake {
            place,
            queued: AtomicBool::new(false),
            woken: self.woken.clone(),
        });
        let since = Arc::new(AtomicU64::new(0));
        if let Some(list) = self.stats.as_ref().and_then(|s| s.running_since.lock().ok()).as_mut() {
            list.push(since.clone());
        }
        self.places.push(Place {
            future: Box::pin(None),
            live: false,
            waker: std::task::Waker::from(wake.clone()),
            wake,
            since,
        });
        place
    }

    /// Marks the future just put in `place` as running, to be polled.
    fn occupy(&mut self, place: usize) {
        if let Some(slot) = self.places.get_mut(place) {
            slot.live = true;
            slot.since.store(self.now_ms.max(1), Ordering::Relaxed);
        }
        self.due.push(place);
    }

    /// Drops every future (where a panic in a `Drop` cannot escape).
    pub(super) fn clear(&mut self) {
        for slot in &mut self.places {
            let future = &mut slot.future;
            run_guarded(|| future.set(None));
            slot.live = false;
            slot.since.store(0, Ordering::Relaxed);
        }
    }

    /// The waker of a place.
    pub(super) fn waker(&self, place: usize) -> Option<&std::task::Waker> {
        self.places.get(place).map(|slot| &slot.waker)
    }

    /// Polls the new futures and those woken since the last call; pushes
    /// the outputs of those that finished onto `ended`.
    pub(super) fn poll_woken(&mut self, ended: &mut Vec<F::Output>) {
        self.due.append(
            &mut self
                .woken
                .places
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for place in self.due.drain(..) {
            let Some(slot) = self.places.get_mut(place) else {
                continue;
            };
            slot.wake.queued.store(false, Ordering::SeqCst);
            if !slot.live {
                continue; // already finished: a late or repeated wake
            }
            let Some(future) = slot.future.as_mut().as_pin_mut() else {
                continue;
            };
            if let Poll::Ready(out) = future.poll(&mut std::task::Context::from_waker(&slot.waker)) {
                slot.live = false;
                slot.since.store(0, Ordering::Relaxed);
                self.free.push(place);
                ended.push(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::BoxFuture;
    use futures_util::FutureExt as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::task::{Context, Waker};

    use super::super::test_util::Count;

    fn waiting(rx: tokio::sync::oneshot::Receiver<u32>) -> BoxFuture<'static, u32> {
        async move { rx.await.unwrap_or(0) }.boxed()
    }

    #[test]
    fn slots_poll_what_was_woken_reuse_places_and_lose_no_wake_after_a_stale_one() {
        let worker = Arc::new(Count(AtomicU64::new(0)));
        let waker = Waker::from(worker.clone());
        let mut slots = Places::new();
        slots.register(&Context::from_waker(&waker));
        let mut ended = Vec::new();

        let (tx_a, rx_a) = tokio::sync::oneshot::channel();
        slots.insert(waiting(rx_a));
        slots.insert(async { 7 }.boxed());
        slots.poll_woken(&mut ended);
        assert_eq!(ended, [7], "a ready future ends on its first poll");
        assert!(!slots.is_empty());

        // The finished future's place is taken by the next one.
        let (tx_c, rx_c) = tokio::sync::oneshot::channel();
        slots.insert(waiting(rx_c));
        assert_eq!(slots.places.len(), 2);
        slots.poll_woken(&mut ended);
        assert_eq!(ended, [7], "nothing was woken");
        let _ = tx_c.send(5);
        assert_eq!(worker.0.load(Ordering::SeqCst), 1, "a wake wakes the worker");
        slots.poll_woken(&mut ended);
        assert_eq!(ended, [7, 5]);

        // A late wake for a finished future, then a new future in its place:
        // the new future's own wake must still get through.
        let place = slots.free[0];
        slots.places[place].waker.wake_by_ref();
        let (tx_e, rx_e) = tokio::sync::oneshot::channel();
        slots.insert(waiting(rx_e));
        slots.poll_woken(&mut ended);
        assert_eq!(ended, [7, 5], "a spurious poll ends nothing");
        let _ = tx_e.send(9);
        slots.poll_woken(&mut ended);
        assert_eq!(ended, [7, 5, 9]);

        let _ = tx_a.send(3);
        slots.poll_woken(&mut ended);
        assert_eq!(ended, [7, 5, 9, 3]);
        assert!(slots.is_empty());
        assert_eq!(slots.places.len(), 2, "two places served four futures");
    }

    #[test]
    fn a_reusing_set_keeps_an_ended_future_for_the_next_and_polls_it_no_more() {
        let worker = Arc::new(Count(AtomicU64::new(0)));
        let waker = Waker::from(worker.clone());
        let mut slots = Places::new();
        slots.register(&Context::from_waker(&waker));
        let mut ended = Vec::new();
        let mut kept = Vec::new();
        let place = slots.insert_with(|f| {
            kept.push(f.is_some());
            *f = Some(async { 1 }.boxed());
        });
        slots.poll_woken(&mut ended);
        assert_eq!(ended, [1]);
        // Woken late: the ended future, kept, is not polled again.
        slots.places[place].waker.wake_by_ref();
        slots.poll_woken(&mut ended);
        assert_eq!(ended, [1], "an ended future is not polled");
        assert!(slots.is_empty());
        let again = slots.insert_with(|f| {
            kept.push(f.is_some());
            *f = Some(async { 2 }.boxed());
        });
        assert_eq!(again, place, "the place is reused");
        assert_eq!(kept, [false, true], "the second fill is given the ended future");
        slots.poll_woken(&mut ended);
        assert_eq!(ended, [1, 2]);
        slots.clear();
        assert!(slots.places[place].future.is_none(), "clear drops what was kept");
    }
}
