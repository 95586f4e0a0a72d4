//! First polls on the poll thread (`first_poll = "poll_thread"` or
//! `"auto"`): the rule that keeps them there only while handlers end there
//! quickly, and the waker that hands a future over to its worker.

use std::sync::{Arc, Mutex};

use crate::subscriber::FirstPoll;

/// The waker of a first poll on the poll thread. Until a worker takes the
/// future up, a wake is remembered; afterwards it goes to the worker's own
/// waker for the future's place, so a future that registered only this
/// waker (once, on its first poll) is still woken on its worker.
#[derive(Debug, Default)]
pub(crate) struct Handover(Mutex<HandoverState>);

#[derive(Debug, Default)]
pub(super) struct HandoverState {
    pub(super) target: Option<std::task::Waker>,
    pub(super) woken: bool,
}

impl Handover {
    /// From now on, wakes go to `target` (and one that came before goes now).
    pub(super) fn connect(&self, target: &std::task::Waker) {
        let mut state = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.target = Some(target.clone());
        if std::mem::take(&mut state.woken) {
            target.wake_by_ref();
        }
    }
}

impl std::task::Wake for Handover {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &state.target {
            Some(target) => target.wake_by_ref(),
            None => state.woken = true,
        }
    }
}

/// How a first poll on the poll thread went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FirstPollEnd {
    /// The handler ended well.
    Ended,
    /// It has to wait: a worker takes it on.
    Waited,
    /// It failed or panicked there (it runs again on a worker).
    Failed,
}

/// Decides whether the poll thread polls new handlers once itself (see
/// [`FirstPoll::Auto`] for the rule). When it does not, messages go
/// straight to the workers and it tries again after `backoff` messages, a
/// wait that doubles each time the try fails. So handlers that wait for
/// I/O, or compute, or fail there, run on the workers, and the poll thread,
/// which also serves rebalances, is held up by at most one handler's first
/// poll per try.
#[derive(Debug)]
pub(super) struct Inline {
    pub(super) mode: FirstPoll,
    pub(super) on: bool,
    /// Messages left in this window (on) or until the next try (off).
    pub(super) left: u32,
    pub(super) waited: u32,
    pub(super) spent: std::time::Duration,
    pub(super) backoff: u32,
}

pub(super) const INLINE_WINDOW: u32 = 64;
const INLINE_BUDGET: std::time::Duration = std::time::Duration::from_micros(20);
const INLINE_MAX: std::time::Duration = std::time::Duration::from_micros(500);
const FIRST_BACKOFF: u32 = 256;
const MAX_BACKOFF: u32 = 1 << 16;

impl Inline {
    pub(super) fn new(mode: FirstPoll) -> Self {
        Self {
            mode,
            on: mode != FirstPoll::Worker,
            left: INLINE_WINDOW,
            waited: 0,
            spent: std::time::Duration::ZERO,
            backoff: FIRST_BACKOFF,
        }
    }

    /// Whether to begin the next message here; counts it when not.
    pub(super) fn on(&mut self) -> bool {
        if self.on {
            return true;
        }
        if self.mode == FirstPoll::Auto {
            self.left = self.left.saturating_sub(1);
            if self.left == 0 {
                self.on = true;
                self.open_window();
            }
        }
        false
    }

    /// Starts counting a new window of first polls here.
    pub(super) fn open_window(&mut self) {
        self.left = INLINE_WINDOW;
        self.waited = 0;
        self.spent = std::time::Duration::ZERO;
    }

    /// Records how a first poll here went.
    pub(super) fn record(&mut self, took: std::time::Duration, end: FirstPollEnd) {
        if self.mode != FirstPoll::Auto {
            return;
        }
        self.spent += took;
        self.waited += u32::from(end == FirstPollEnd::Waited);
        if end == FirstPollEnd::Failed
            || took > INLINE_MAX
            || self.waited > INLINE_WINDOW / 2
            || self.spent > INLINE_BUDGET * INLINE_WINDOW
        {
            self.on = false;
            self.left = self.backoff;
            self.backoff = self.backoff.saturating_mul(2).min(MAX_BACKOFF);
            return;
        }
        self.left = self.left.saturating_sub(1);
        if self.left == 0 {
            self.open_window();
            self.backoff = FIRST_BACKOFF;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::task::Waker;

    use super::super::test_util::Count;

    #[test]
    fn a_handover_waker_remembers_an_early_wake_and_forwards_later_ones() {
        let handover = Arc::new(Handover::default());
        let waker = Waker::from(handover.clone());
        waker.wake_by_ref();
        let worker = Arc::new(Count(AtomicU64::new(0)));
        handover.connect(&Waker::from(worker.clone()));
        assert_eq!(worker.0.load(Ordering::SeqCst), 1, "the early wake is passed on");
        waker.wake();
        assert_eq!(worker.0.load(Ordering::SeqCst), 2, "a later wake goes to the worker");
    }

    /// Feeds `n` first polls of `took` each, `waited` or not, counting how
    /// many the rule let begin here.
    fn feed(inline: &mut Inline, n: u32, took: std::time::Duration, waited: bool) -> u32 {
        let mut here = 0;
        for _ in 0..n {
            if inline.on() {
                here += 1;
                let end = if waited {
                    FirstPollEnd::Waited
                } else {
                    FirstPollEnd::Ended
                };
                inline.record(took, end);
            }
        }
        here
    }

    #[test]
    fn first_polls_stay_on_the_poll_thread_only_while_handlers_end_there_quickly() {
        let quick = std::time::Duration::from_micros(2);
        let mut auto = Inline::new(FirstPoll::Auto);
        assert_eq!(
            feed(&mut auto, 10_000, quick, false),
            10_000,
            "quick handlers that end stay here"
        );

        // Handlers that wait: the window gives up after half of it waited,
        // then tries again after 256, 512, 1,024 ... messages.
        let mut waits = Inline::new(FirstPoll::Auto);
        assert_eq!(
            feed(&mut waits, INLINE_WINDOW / 2 + 1, quick, true),
            INLINE_WINDOW / 2 + 1
        );
        assert!(!waits.on);
        assert_eq!(feed(&mut waits, FIRST_BACKOFF - 1, quick, true), 0);
        assert_eq!(
            feed(&mut waits, 1, quick, true),
            0,
            "the 256th message is counted, then a try"
        );
        assert!(waits.on);
        assert_eq!(
            feed(&mut waits, INLINE_WINDOW / 2 + 1, quick, true),
            INLINE_WINDOW / 2 + 1
        );
        assert_eq!(waits.left, 2 * FIRST_BACKOFF, "the wait doubles after a failed try");
        let here = feed(&mut waits, 100_000, quick, true);
        assert!(here < 1_000, "{here} of 100,000 waiting handlers began here");

        // One slow first poll stops it at once; a good window afterwards
        // resets the wait.
        let mut slow = Inline::new(FirstPoll::Auto);
        assert_eq!(feed(&mut slow, 1, INLINE_MAX * 2, false), 1);
        assert!(!slow.on);
        assert_eq!(feed(&mut slow, FIRST_BACKOFF, quick, false), 0);
        assert!(slow.on);
        assert_eq!(feed(&mut slow, INLINE_WINDOW, quick, false), INLINE_WINDOW);
        assert_eq!(slow.backoff, FIRST_BACKOFF);

        // Steady work over budget (here 40 µs each) stops it within a window.
        let mut busy = Inline::new(FirstPoll::Auto);
        let here = feed(&mut busy, INLINE_WINDOW, INLINE_BUDGET * 2, false);
        assert!(here <= INLINE_WINDOW / 2 + 1 && !busy.on, "{here}");

        // One first poll that failed there stops it at once.
        let mut failing = Inline::new(FirstPoll::Auto);
        assert!(failing.on());
        failing.record(quick, FirstPollEnd::Failed);
        assert!(!failing.on, "a failed first poll keeps Auto on");

        let mut always = Inline::new(FirstPoll::PollThread);
        assert_eq!(feed(&mut always, 1_000, INLINE_MAX * 2, true), 1_000);
        let mut never = Inline::new(FirstPoll::Worker);
        assert_eq!(feed(&mut never, 100_000, quick, false), 0);
    }
}
