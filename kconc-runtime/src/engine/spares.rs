//! Vectors reused across threads (see [`Spares`]).

/// Emptied vectors passed back for reuse between two threads: the
/// hand-over's batches of `Start` (emptied by a worker, for the poll
/// thread's next flush), the workers' batches of events (emptied by the
/// poll thread, for a worker's next), and the positions of a commit
/// request (emptied by the committer, for the poll thread's next request).
/// Each vector is allocated once and then reused, so the poll thread does
/// not allocate per batch or per commit in the steady state (the hand-over's
/// batch grew from empty at every flush: 0.1 allocations per message). A
/// lock-free queue: no lock is shared on the message path.
pub(crate) struct Spares<T>(crossbeam_queue::ArrayQueue<Vec<T>>);

impl<T> Default for Spares<T> {
    fn default() -> Self {
        Self(crossbeam_queue::ArrayQueue::new(Self::KEEP))
    }
}

impl<T> std::fmt::Debug for Spares<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spares")
    }
}

impl<T> Spares<T> {
    /// Spare vectors kept, at most (a few per worker).
    const KEEP: usize = 16;
    /// A vector that grew past this many bytes (a burst, or a concurrency
    /// of thousands) is not kept: the pool holds at most `KEEP` times this.
    const LARGEST_BYTES: usize = 64 * 1024;

    /// An empty vector, a spare one if there is one.
    pub(crate) fn take(&self) -> Vec<T> {
        self.0.pop().unwrap_or_default()
    }

    /// Keeps `v`, emptied, for a later [`Spares::take`] (unless `KEEP` are
    /// kept already).
    pub(crate) fn put(&self, mut v: Vec<T>) {
        if v.capacity() == 0 || v.capacity().saturating_mul(std::mem::size_of::<T>()) > Self::LARGEST_BYTES {
            return;
        }
        v.clear();
        let _ = self.0.push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vector_put_back_is_taken_again_empty_with_its_capacity() {
        let spares: Spares<u64> = Spares::default();
        assert_eq!(spares.take().capacity(), 0, "none kept yet");
        let mut v = spares.take();
        v.extend(0..100);
        let (ptr, cap) = (v.as_ptr(), v.capacity());
        spares.put(v);
        let again = spares.take();
        assert!(again.is_empty());
        assert_eq!((again.as_ptr(), again.capacity()), (ptr, cap), "the same allocation");
        assert_eq!(spares.take().capacity(), 0, "taken once only");
    }

    #[test]
    fn no_empty_no_oversized_and_no_more_than_kept() {
        let spares: Spares<u8> = Spares::default();
        spares.put(Vec::new());
        assert_eq!(spares.take().capacity(), 0, "an unallocated vector is not kept");
        spares.put(Vec::with_capacity(Spares::<u8>::LARGEST_BYTES + 1));
        assert_eq!(spares.take().capacity(), 0, "a burst's vector is not kept");
        for _ in 0..Spares::<u8>::KEEP + 5 {
            spares.put(Vec::with_capacity(8));
        }
        let mut kept = 0;
        while spares.take().capacity() > 0 {
            kept += 1;
        }
        assert_eq!(kept, Spares::<u8>::KEEP);
    }
}
