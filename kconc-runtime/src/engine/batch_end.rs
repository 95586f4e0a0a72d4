//! Finding where a record batch librdkafka cannot read ends. librdkafka
//! reports such a batch at its first offset and does not say where it
//! ends; a fetch anywhere inside it returns the whole batch again, and a
//! fetch past it returns what follows. So the end is searched for by moving
//! the fetch: doubling the step from the last offset known inside while the
//! batch comes back, then halving the gap between the last offset known
//! inside and the first known past it. A batch of `n` records costs about
//! `2 log2 n` fetches instead of `n`, and no readable record after it is
//! passed over: a fetch that lands past the end is not taken, and the
//! search goes back below it.

/// The search for the end of one unreadable batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct BatchEnd {
    /// The highest offset known to be inside the batch.
    inside: i64,
    /// The lowest offset known to be past it, once one is.
    past: Option<i64>,
    /// How far past `inside` the next probe goes while no end is known.
    step: i64,
    /// Where the partition's log ended when the batch was fetched: no probe
    /// goes beyond it. Unknown, the search moves one offset at a time.
    log_end: Option<i64>,
}

impl BatchEnd {
    /// A search from `inside`, an offset of the batch, in a partition
    /// whose log ends at `end` (its high watermark when the batch was
    /// fetched, if known): the batch ends there at the latest, and no fetch
    /// goes beyond it (one past the log's end would be out of range, and
    /// reset the position).
    pub(super) fn from(inside: i64, end: Option<i64>) -> Self {
        Self {
            inside,
            past: None,
            step: 1,
            log_end: end,
        }
    }

    /// Where to fetch next.
    pub(super) fn probe(&self) -> i64 {
        match self.past {
            Some(past) => self.inside + ((past - self.inside) / 2).max(1),
            None => {
                let next = self.inside.saturating_add(self.step);
                // At most the log's last record (a fetch at its end waits for
                // new records, and tells nothing until some come).
                self.log_end
                    .map_or(next, |end| next.min((end - 1).max(self.inside + 1)))
            }
        }
    }

    /// A fetch at `probe` returned the batch again: `probe` is inside it.
    /// Returns where to fetch next.
    pub(super) fn inside(&mut self, probe: i64) -> i64 {
        if probe > self.inside {
            self.inside = probe;
            if self.past.is_none() && self.log_end.is_some() {
                self.step = self.step.saturating_mul(2);
            }
        }
        self.probe()
    }

    /// A fetch at `probe` returned something after the batch (a record, or
    /// another batch): `probe` is past it. Returns `None` when `probe` is
    /// where the batch ends (what the fetch returned is what follows it),
    /// else where to fetch next (what it returned is not taken).
    pub(super) fn past(&mut self, probe: i64) -> Option<i64> {
        if probe <= self.inside + 1 {
            return None;
        }
        self.past = Some(self.past.map_or(probe, |p| p.min(probe)));
        Some(self.probe())
    }
}

#[cfg(test)]
mod tests {
    use super::BatchEnd;

    /// Runs the search against a batch of `[start, end)`: returns the end
    /// it found and how many fetches it took.
    fn search(start: i64, end: i64, log_end: Option<i64>) -> (i64, u32) {
        let mut s = BatchEnd::from(start, log_end);
        let mut probe = s.probe();
        let mut fetches = 1;
        loop {
            assert!(
                log_end.is_none_or(|e| probe < e || probe == end),
                "a probe at or past the log's end, not where the batch ends"
            );
            let next = if probe < end {
                Some(s.inside(probe))
            } else {
                s.past(probe)
            };
            match next {
                None => return (probe, fetches),
                Some(next) => {
                    assert!(next > start, "never back into what was routed");
                    probe = next;
                    fetches += 1;
                }
            }
        }
    }

    #[test]
    fn the_end_is_found_exactly_in_about_two_log2_n_fetches() {
        for n in [1, 2, 3, 7, 8, 9, 100, 1000, 50_000] {
            for log_end in [None, Some(500 + n), Some(500 + n + 5), Some(500 + 3 * n)] {
                let (end, fetches) = search(500, 500 + n, log_end);
                assert_eq!(end, 500 + n, "a batch of {n}, the log ending at {log_end:?}");
                let bound = match log_end {
                    Some(_) => 2 * (64 - (n as u64).leading_zeros()) + 2,
                    // One offset at a time: no probe may pass an unknown end.
                    None => n as u32,
                };
                assert!(fetches <= bound, "a batch of {n}: {fetches} fetches, more than {bound}");
            }
        }
        assert_eq!(
            search(0, 1, None),
            (1, 1),
            "a batch of one record: the first probe is its end"
        );
        let (end, fetches) = search(500, 503, Some(10_000_000));
        assert_eq!(end, 503);
        assert!(fetches <= 6, "a short batch in a long log: {fetches} fetches");
    }
}
