//! The registry: every `#[subscriber]` in the program, collected at start-up
//! through `inventory`. Iteration order is unspecified; callers sort by name.

use std::time::Duration;

use crate::context::Context;
use crate::handler::HandlerFuture;
use crate::message::Message;
use crate::subscriber::Subscriber;

/// What `#[subscriber]` submits for one handler. Not public API: construct
/// subscribers in code with [`Subscriber::new`] instead.
#[doc(hidden)]
#[derive(Debug)]
pub struct Registration {
    /// The function's path, or the `name = ".."` given in the attribute.
    pub name: &'static str,
    /// The function's path (`module::function`), whatever its name.
    pub function: &'static str,
    /// The topics to consume.
    pub topics: &'static [&'static str],
    /// The consumer group.
    pub group: &'static str,
    /// `concurrency`, if given.
    pub concurrency: Option<usize>,
    /// `ordering`, if given.
    pub ordering: Option<crate::subscriber::Ordering>,
    /// `first_poll`, if given.
    pub first_poll: Option<crate::subscriber::FirstPoll>,
    /// `max_buffered`, if given.
    pub max_buffered: Option<usize>,
    /// `max_uncommitted`, if given.
    pub max_uncommitted: Option<usize>,
    /// `handler_timeout`, if given.
    pub handler_timeout: Option<Duration>,
    /// `commit_batch_size`, if given.
    pub commit_batch_size: Option<usize>,
    /// `commit_interval`, if given.
    pub commit_interval: Option<Duration>,
    /// `shutdown_timeout`, if given.
    pub shutdown_timeout: Option<Duration>,
    /// `retries`, if given.
    pub retries: Option<u32>,
    /// `backoff`, if given.
    pub backoff: Option<Duration>,
    /// `max_backoff`, if given.
    pub max_backoff: Option<Duration>,
    /// `on_error`, if given: `"skip"`, `"stop"` or `"dead_letter"`.
    pub on_error: Option<&'static str>,
    /// `dead_letter`, if given: the dead-letter topic.
    pub dead_letter: Option<&'static str>,
    /// The generated adapter that calls the user's function.
    pub handler: fn(Message, &Context) -> HandlerFuture,
    /// Where the attribute was written, for `--list` and diagnostics.
    pub file: &'static str,
    /// The line of the attribute.
    pub line: u32,
}

inventory::collect!(Registration);

/// Every subscriber registered with `#[subscriber]` in this program, sorted by name.
pub fn registered() -> Vec<Subscriber> {
    let mut regs: Vec<&Registration> = inventory::iter::<Registration>.into_iter().collect();
    regs.sort_by(|a, b| a.name.cmp(b.name));
    regs.into_iter().map(Subscriber::from_registration).collect()
}
