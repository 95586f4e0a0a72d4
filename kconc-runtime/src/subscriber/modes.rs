//! The ordering modes, where handlers run, and what commits record; their
//! names in the attribute, `--set` and `--list` come from the settings table
//! (`kconc_options::settings!`), as does their parsing.

use crate::error::SettingError;

/// How much order a subscriber's handlers keep (guarantee 4 of the design).
///
/// Within one partition, handlers always *start* in offset order; the modes
/// differ in what may run at the same time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OrderingMode {
    /// Any messages run concurrently, up to `concurrency` (the default).
    #[default]
    Unordered,
    /// Messages with the same key in the same partition run one after
    /// another, in offset order; different keys run concurrently. A message
    /// without a key is its own key: it runs concurrently with everything.
    Key,
    /// Each partition's messages run one after another, in offset order;
    /// partitions run concurrently.
    Partition,
}

/// Where a handler's code runs: on the tokio workers (the default), or, for
/// its first poll (the stretch up to its first `.await` that has to wait),
/// on the subscriber's poll thread.
///
/// The default, [`FirstPoll::Worker`], runs every handler inside a tokio
/// task on the runtime's workers, where everything tokio offers works and a
/// handler that blocks or computes holds up only its own worker. The other
/// two modes are an opt-in for handlers known to be short and
/// non-blocking: the poll thread runs the first poll itself, so a handler
/// that ends there costs no hand-over to a worker. Their trade-offs:
///
/// - The poll thread is the consumer's control path (rebalances, commits,
///   health): while a first poll runs, nothing else of the subscriber does.
///   A first poll that blocks (a lock, a synchronous DNS lookup,
///   `Handle::block_on`, which works there instead of panicking) stalls the
///   subscriber, and if it outlasts `max.poll.interval.ms` the member is
///   thrown out of its group. kconc cannot pre-empt it.
/// - The poll thread is not a tokio task: `tokio::task::id()` panics there,
///   task-locals set outside the handler are absent, and there is no coop
///   budget. A first poll that fails or panics on the poll thread is never
///   judged there: the message runs again, from the start, on a worker,
///   and only that run counts (so its side effects before the failure may
///   happen twice). `kconc_first_polls_rerun_on_worker_total` counts these.
/// - The waker of the first poll is not the worker's: a future must
///   register the waker of its latest poll (as the `Future` contract asks),
///   though kconc forwards wakes of the first one too.
/// - All first polls of a subscriber share one thread: CPU-bound handlers
///   get one core, whatever `concurrency` says.
///
/// Whatever the mode, no handler begins inside a rebalance callback (kept
/// partitions' messages started during a revoke go to the workers) or after
/// shutdown has begun.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FirstPoll {
    /// Every handler runs on the workers, inside a tokio task. The default.
    #[default]
    Worker,
    /// The poll thread runs every first poll (handlers that wait go on on a
    /// worker). For handlers known to be short; see the trade-offs above.
    PollThread,
    /// The poll thread runs first polls while, over a window of 64
    /// messages, none failed, at most half of the handlers had to wait and
    /// their first polls took under 20 µs on average (none over 500 µs);
    /// otherwise the workers run everything and the poll thread tries again
    /// after 256 messages, then 512, up to 65,536. A timing rule, so where
    /// a handler runs varies with load; see the trade-offs above.
    Auto,
}

/// What a commit writes into the offset's metadata.
///
/// With [`CommitMetadata::Finished`] (the default), each commit also
/// records which offsets above the committed one have finished (a compact
/// bitset or run list, at most 4,096 bytes), and a partition's next owner
/// (another member after a rebalance, this one after a restart or a crash)
/// reads it when the partition is assigned and does not hand those messages
/// to a handler again. Only kconc's own metadata of the committed offset is
/// used: anything else (another client's, damaged, another version) counts
/// as nothing finished. Offsets past what fits in 4,096 bytes are handled
/// again as without it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CommitMetadata {
    /// Record finished offsets above the committed one, and skip them on
    /// assignment. The default.
    #[default]
    Finished,
    /// Commit offsets only, with empty metadata: every message above the
    /// committed offset is handled again by the partition's next owner.
    None,
}

/// Where a subscriber keeps its finished offsets (`store`).
///
/// With [`OffsetStore::Sql`] the handler takes a `Tx<Sqlite>` (or
/// `Tx<Postgres>`) argument: its writes and the message's offset are
/// committed in one SQL transaction, and the database, not Kafka, says
/// which messages are done (see the README's "Exactly once into a
/// database").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OffsetStore {
    /// Finished offsets are committed to Kafka only. The default.
    #[default]
    Kafka,
    /// Each finished offset is also recorded in the handler's database, in
    /// the transaction of its writes.
    Sql,
}

/// The consumer group protocol a subscriber's consumer speaks
/// (`group_protocol`; librdkafka's `group.protocol`).
///
/// Under [`GroupProtocol::Consumer`] (KIP-848, Kafka 4.0 or later) the
/// broker computes the assignment and rebalances are incremental: members
/// that keep their partitions go on reading while others join or leave.
/// The session timeout and heartbeat interval are then the broker's
/// settings, and a static member whose instance id is still in use is
/// refused (the new one is fenced, where the classic protocol fences the
/// old one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GroupProtocol {
    /// The classic protocol: the group leader assigns partitions
    /// (`cooperative-sticky`). The default.
    #[default]
    Classic,
    /// KIP-848: the broker assigns partitions (`group.remote.assignor`).
    Consumer,
}

/// `as_str`, `Display` and `FromStr` of each choice of the settings table,
/// with the names the table gives.
macro_rules! choices {
    ($({ key: $key:literal, setter: $setter:ident,
         kind: $kind:ident $(($ty:ident: $($name:literal => $variant:ident),*; $explain:literal))?,
         $($rest:tt)* })*) => {
        $($(choices!(@one $key, $ty, $($name => $variant),*);)?)*
    };
    (@one $key:literal, $ty:ident, $($name:literal => $variant:ident),*) => {
        impl $ty {
            /// The name the attribute, `--set` and `--list` use.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = SettingError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok(Self::$variant),)*
                    other => Err(SettingError::new(
                        $key,
                        format!("unknown {} `{other}`: use {}", $key, one_of(&[$($name),*])),
                    )),
                }
            }
        }
    };
}

kconc_options::settings!(choices);

/// `` `a`, `b` or `c` ``.
fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_choice_reads_back_its_name_and_a_wrong_one_lists_them_all() {
        for mode in [OrderingMode::Unordered, OrderingMode::Key, OrderingMode::Partition] {
            assert_eq!(mode.as_str().parse::<OrderingMode>().ok(), Some(mode));
            assert_eq!(mode.to_string(), mode.as_str());
        }
        for mode in [FirstPoll::Worker, FirstPoll::PollThread, FirstPoll::Auto] {
            assert_eq!(mode.as_str().parse::<FirstPoll>().ok(), Some(mode));
        }
        for mode in [CommitMetadata::Finished, CommitMetadata::None] {
            assert_eq!(mode.as_str().parse::<CommitMetadata>().ok(), Some(mode));
        }
        assert_eq!(
            "random".parse::<OrderingMode>().unwrap_err().to_string(),
            "unknown ordering `random`: use `unordered`, `key` or `partition`"
        );
        assert_eq!(
            "inline".parse::<FirstPoll>().unwrap_err().to_string(),
            "unknown first_poll `inline`: use `worker`, `poll_thread` or `auto`"
        );
        assert_eq!(
            "all".parse::<CommitMetadata>().unwrap_err().to_string(),
            "unknown commit_metadata `all`: use `finished` or `none`"
        );
        assert_eq!(one_of(&["a"]), "`a`");
        assert_eq!(one_of(&[]), "");
    }
}
