//! The registry: every `#[subscriber]` in the program, collected at start-up
//! through `inventory`. Iteration order is unspecified; callers sort by name.

use std::time::Duration;

use crate::context::Context;
use crate::handler::{Handler, HandlerFuture};
use crate::message::Message;
use crate::policy::OnError;
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

impl Registration {
    /// The subscriber this registration describes.
    fn subscriber(&self) -> Subscriber {
        let reg = self;
        let mut s = Subscriber::with_handler(
            reg.name.to_owned(),
            reg.topics.iter().map(|t| (*t).to_owned()).collect(),
            reg.group.to_owned(),
            Handler::from_fn(reg.handler),
        );
        s.origin = Some(format!("`{}` ({}:{})", reg.function, reg.file, reg.line));
        if let Some(c) = reg.concurrency {
            s.concurrency = c;
        }
        if let Some(o) = reg.ordering {
            s.ordering = o;
        }
        if let Some(f) = reg.first_poll {
            s.first_poll = f;
        }
        if let Some(n) = reg.max_buffered {
            s.max_buffered = Some(n);
        }
        if let Some(n) = reg.max_uncommitted {
            s.max_uncommitted = n;
        }
        if let Some(d) = reg.handler_timeout {
            s.handler_timeout = Some(d);
        }
        if let Some(n) = reg.commit_batch_size {
            s.commit_batch_size = n;
        }
        if let Some(d) = reg.commit_interval {
            s.commit_interval = d;
        }
        if let Some(d) = reg.shutdown_timeout {
            s.shutdown_timeout = d;
        }
        if let Some(n) = reg.retries {
            s.policy.retries = n;
        }
        if let Some(d) = reg.backoff {
            s.policy.backoff = d;
        }
        if let Some(d) = reg.max_backoff {
            s.policy.max_backoff = d;
        }
        match (reg.on_error, reg.dead_letter) {
            (_, Some(topic)) => s.policy.on_error = OnError::DeadLetter(topic.to_owned()),
            (Some("stop"), None) => s.policy.on_error = OnError::Stop,
            _ => {}
        }
        s
    }
}

inventory::collect!(Registration);

/// Every subscriber registered with `#[subscriber]` in this program, sorted by name.
pub fn registered() -> Vec<Subscriber> {
    let mut regs: Vec<&Registration> = inventory::iter::<Registration>.into_iter().collect();
    regs.sort_by(|a, b| a.name.cmp(b.name));
    regs.into_iter().map(Registration::subscriber).collect()
}
