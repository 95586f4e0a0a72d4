//! The registry: every `#[subscriber]` in the program, collected at start-up
//! through `inventory`. Iteration order is unspecified; callers sort by name.

use crate::context::Context;
use crate::handler::{FutureSlot, Handler};
use crate::message::Message;
use crate::subscriber::Subscriber;

/// What `#[subscriber]` submits for one handler: a function that builds
/// its [`Subscriber`] with the runtime's own builder, one call per option
/// of the attribute. Not public API: construct subscribers in code with
/// [`Subscriber::new`] instead.
#[doc(hidden)]
#[derive(Debug)]
pub struct Registration {
    /// Builds the subscriber.
    pub build: fn() -> Subscriber,
}

/// The subscriber of a `#[subscriber]` function, before its options are
/// applied: what the code the attribute generates starts from. Not public
/// API: generated code names it through `__private`.
#[doc(hidden)]
pub fn registered_subscriber(
    name: &str,
    function: &str,
    topics: &[&str],
    group: &str,
    handler: fn(Message, &Context, &mut FutureSlot),
    file: &str,
    line: u32,
) -> Subscriber {
    declared(name, function, topics, group, Handler::from_fn(handler), (file, line))
}

/// A subscriber of a batch handler, as `#[subscriber]` registers it (see
/// [`registered_subscriber`]).
#[doc(hidden)]
pub fn registered_batch_subscriber(
    name: &str,
    function: &str,
    topics: &[&str],
    group: &str,
    handler: fn(Vec<Message>, &Context) -> crate::batch::BatchFuture,
    file: &str,
    line: u32,
) -> Subscriber {
    declared(
        name,
        function,
        topics,
        group,
        Handler::from_batch_fn(handler),
        (file, line),
    )
}

/// A registered subscriber of `handler`, declared as `function` at
/// `file:line` (for errors).
fn declared(
    name: &str,
    function: &str,
    topics: &[&str],
    group: &str,
    handler: Handler,
    (file, line): (&str, u32),
) -> Subscriber {
    let mut s = Subscriber::with_handler(
        name.to_owned(),
        topics.iter().map(|t| (*t).to_owned()).collect(),
        group.to_owned(),
        handler,
    );
    s.origin = Some(format!("`{function}` ({file}:{line})"));
    s
}

inventory::collect!(Registration);

/// Every subscriber registered with `#[subscriber]` in this program, sorted by name.
pub(crate) fn registered() -> Vec<Subscriber> {
    let mut subs: Vec<Subscriber> = inventory::iter::<Registration>
        .into_iter()
        .map(|r| (r.build)())
        .collect();
    subs.sort_by(|a, b| a.name.cmp(&b.name));
    subs
}
