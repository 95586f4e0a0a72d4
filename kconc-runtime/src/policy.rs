//! The error policy: what happens to a message whose handler failed,
//! panicked, or could not extract its arguments. It is retried (with
//! exponential backoff and jitter) while attempts remain and the error is
//! retryable, then skipped, dead-lettered, or it stops its partition.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::context::Context;
use crate::handler::BoxError;
use crate::message::{Message, PayloadError, Undecodable};

/// What happens to a message that failed its last attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    /// Log it and count it as finished: its offset is committed (the default).
    #[default]
    Skip,
    /// Produce it to this topic (original key, payload and headers, plus
    /// `kconc-*` headers saying where it came from and why it failed), then
    /// count it as finished. Its offset is committed only once the broker
    /// has acknowledged the dead letter. A produce that failed for a reason
    /// retrying may fix (a broker down, a timeout) is retried with backoff;
    /// one that retrying cannot fix (the record too large for the topic, no
    /// right to write it, no such topic, the producer failed for good)
    /// stops the partition as [`OnError::Stop`] does, saying why.
    DeadLetter(String),
    /// Leave it unfinished and stop its partition: nothing after it in that
    /// partition starts or is committed until the partition is reassigned
    /// or the program restarts; the rest of the subscriber carries on. What
    /// came before it (messages still waiting behind a busy key, or for a
    /// retry) still runs and is committed, up to the failed offset.
    /// [`StatsHandle::stopped_partitions`](crate::StatsHandle::stopped_partitions)
    /// says which and why.
    Stop,
}

impl fmt::Display for OnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Skip => f.write_str("skip"),
            Self::DeadLetter(t) => write!(f, "dead_letter({t})"),
            Self::Stop => f.write_str("stop"),
        }
    }
}

/// `skip` or `stop`, as `--set NAME.on_error=..` writes them (a dead letter
/// is `--set NAME.dead_letter=TOPIC`).
impl std::str::FromStr for OnError {
    type Err = crate::error::SettingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "skip" => Ok(Self::Skip),
            "stop" => Ok(Self::Stop),
            other => Err(crate::error::SettingError::new(
                "on_error",
                format!(
                    "`on_error` takes `skip`, `stop`, or `dead_letter` where a dead-letter topic is set (`dead_letter=TOPIC` sets one), not `{other}`"
                ),
            )),
        }
    }
}

/// A handler error that retrying cannot fix (a validation failure, say):
/// the message goes straight to the dead-letter, skip or stop step, without
/// the remaining retries.
///
/// ```
/// # use kconc_runtime::NonRetryable;
/// # fn check(cents: i64) -> Result<(), NonRetryable> {
/// if cents < 0 {
///     return Err(NonRetryable::new(format!("negative amount {cents}")));
/// }
/// # Ok(()) }
/// ```
///
/// It is recognised anywhere in the error's `source()` chain, and through
/// `anyhow::Error` built from it. Payloads an extractor cannot decode are
/// never retried either.
#[derive(Debug)]
pub struct NonRetryable(Mark);

impl NonRetryable {
    /// Wraps an error (or a message) as not worth retrying.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Self(Mark(error.into()))
    }
}

impl fmt::Display for NonRetryable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0 .0.fmt(f)
    }
}

impl StdError for NonRetryable {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

/// The source of every [`NonRetryable`], which marks it even where the
/// wrapper itself is hidden: an `anyhow::Error` turned into a boxed error
/// shows the wrapped error's `source()`, not the wrapped error. Its own
/// source is the original error's.
#[derive(Debug)]
struct Mark(BoxError);

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not retryable")
    }
}

impl StdError for Mark {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

/// How many causes of an error [`error_chain`] names at most.
const ERROR_CHAIN_MAX: usize = 16;

/// An error and its causes (its `source()` chain) as one line, `: `-joined
/// as anyhow's `{:#}` shows them: "order 13 is invalid: negative amount
/// -5". A cause whose text already ends the line (an error that prints its
/// source itself) is not repeated; [`NonRetryable`]'s marker is not shown;
/// at most 16 causes are.
pub(crate) fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    let mut depth = 0;
    while let Some(c) = cause {
        cause = c.source();
        if c.is::<Mark>() {
            continue;
        }
        if depth == ERROR_CHAIN_MAX {
            text.push_str(": ...");
            break;
        }
        let said = c.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        depth += 1;
    }
    text
}

/// Whether `error` may be retried: not if it, or anything in its source
/// chain, is a [`NonRetryable`] or an undecodable payload.
pub(crate) fn is_retryable(error: &(dyn StdError + 'static)) -> bool {
    let mut e: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(err) = e {
        if err.is::<NonRetryable>() || err.is::<Mark>() || err.is::<PayloadError>() || err.is::<Undecodable>() {
            return false;
        }
        e = err.source();
    }
    true
}

/// A subscriber's error policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ErrorPolicy {
    pub(crate) retries: u32,
    pub(crate) backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) on_error: OnError,
}

impl OnError {
    /// The dead-letter topic, under `on_error = dead_letter`.
    pub(crate) fn dead_letter_topic(&self) -> Option<&String> {
        match self {
            OnError::DeadLetter(t) => Some(t),
            _ => None,
        }
    }
}

impl ErrorPolicy {
    /// Whether a failure of `attempt` (1-based) leaves a retry.
    pub(crate) fn retries_left(&self, attempt: u32) -> bool {
        attempt <= self.retries
    }

    /// Whether the handler task must keep a copy of the message before
    /// calling the handler (which consumes it): for a retry or a dead letter.
    pub(crate) fn keeps_copy(&self, attempt: u32) -> bool {
        self.retries_left(attempt) || matches!(self.on_error, OnError::DeadLetter(_))
    }

    /// The wait before the retry that follows a failure of `attempt`:
    /// `backoff * 2^(attempt-1)`, capped at `max_backoff`, with half of it
    /// random ("equal jitter") so retries of many messages spread out.
    pub(crate) fn delay(&self, attempt: u32, seed: u64) -> Duration {
        let exp = self
            .backoff
            .saturating_mul(1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX));
        let full = exp.min(self.max_backoff);
        let half = full / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(if nanos == 0 { 0 } else { mix(seed) % nanos })
    }
}

/// A cheap, well-spread hash (splitmix64), for jitter.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Why a dead letter was not acknowledged, and whether trying again may
/// help.
#[derive(Debug)]
pub(crate) struct DeadLetterFailed {
    pub(crate) reason: String,
    /// Retrying cannot fix it (the record is too large, the topic is
    /// missing or not ours to write, the producer failed for good).
    pub(crate) permanent: bool,
}

/// Whether a produce that failed with `code` can succeed if tried again.
/// librdkafka retries what is transient itself until `message.timeout.ms`;
/// what it reports at once or gives up on for these reasons stays so.
fn permanent(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageSizeTooLarge
            | C::MessageBatchTooLarge
            | C::InvalidRecord
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::PolicyViolation
            | C::InvalidTimestamp
            | C::InvalidRequiredAcks
            | C::UnsupportedForMessageFormat
            | C::UnsupportedCompressionType
            | C::OutOfOrderSequenceNumber
            | C::Fatal
            | C::PurgeQueue
            | C::PurgeInflight
            | C::InvalidArgument
            | C::UnknownTopic
            | C::UnknownTopicOrPartition
    )
}

/// The longest `kconc-error` header a dead letter carries (an error's
/// text can be arbitrarily long; the rest is cut off).
const ERROR_HEADER_MAX: usize = 4096;

/// Produces `msg` to the dead-letter `topic` and waits for the broker's
/// acknowledgement. The record keeps the original key, payload and headers
/// and adds `kconc-original-topic`, `-partition`, `-offset`, `-timestamp`,
/// `kconc-group`, `kconc-attempts` and `kconc-error` (at most 4 KiB of it).
pub(crate) async fn dead_letter(cx: &Context, topic: &str, msg: &Message, error: &str) -> Result<(), DeadLetterFailed> {
    let producer = cx.producer().map_err(|e| DeadLetterFailed {
        reason: e.to_string(),
        permanent: true,
    })?;
    let mut cut = error.len().min(ERROR_HEADER_MAX);
    while !error.is_char_boundary(cut) {
        cut -= 1;
    }
    let error = &error[..cut];
    let partition = msg.partition().to_string();
    let offset = msg.offset().to_string();
    let timestamp = msg.timestamp().map(|t| t.to_string());
    let attempts = msg.attempt().to_string();
    let mut headers = OwnedHeaders::new_with_capacity(msg.headers().len() + 7);
    for h in msg.headers() {
        headers = headers.insert(KafkaHeader {
            key: &h.key,
            value: h.value.as_deref(),
        });
    }
    for (key, value) in [
        ("kconc-original-topic", Some(msg.topic())),
        ("kconc-original-partition", Some(partition.as_str())),
        ("kconc-original-offset", Some(offset.as_str())),
        ("kconc-original-timestamp", timestamp.as_deref()),
        ("kconc-group", Some(cx.group())),
        ("kconc-attempts", Some(attempts.as_str())),
        ("kconc-error", Some(error)),
    ] {
        headers = headers.insert(KafkaHeader { key, value });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
    if let Some(k) = msg.key() {
        record = record.key(k);
    }
    if let Some(p) = msg.payload() {
        record = record.payload(p);
    }
    producer
        .send(record, rdkafka::util::Timeout::Never)
        .await
        .map(|_| ())
        .map_err(|(e, _)| DeadLetterFailed {
            permanent: e.rdkafka_error_code().is_some_and(permanent),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_half_of_it_jitter() {
        let p = ErrorPolicy {
            retries: 10,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            on_error: OnError::Skip,
        };
        for seed in 0..50 {
            let d1 = p.delay(1, seed);
            assert!(
                d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
                "{d1:?}"
            );
            let d3 = p.delay(3, seed);
            assert!(
                d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400),
                "{d3:?}"
            );
            let d9 = p.delay(9, seed);
            assert!(
                d9 >= Duration::from_millis(500) && d9 <= Duration::from_secs(1),
                "{d9:?}"
            );
            assert!(p.delay(40, seed) <= Duration::from_secs(1));
        }
        assert_ne!(p.delay(2, 1), p.delay(2, 2), "no jitter");
    }

    /// An error that says `text` and is caused by `cause`.
    #[derive(Debug)]
    struct Caused(String, Option<BoxError>);

    impl fmt::Display for Caused {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl StdError for Caused {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn StdError + 'static))
        }
    }

    #[test]
    fn an_error_is_told_with_its_causes() {
        let inner = NonRetryable::new("negative amount -5");
        let e = Caused("order 13 is invalid".into(), Some(Box::new(inner)));
        assert_eq!(error_chain(&e), "order 13 is invalid: negative amount -5");
        // A cause the error already prints is not repeated.
        let e = Caused(
            "bad: io failed".into(),
            Some(Box::new(Caused("io failed".into(), None))),
        );
        assert_eq!(error_chain(&e), "bad: io failed");
        // Through anyhow, with its own context.
        let e: BoxError = anyhow::Error::from(Caused("io failed".into(), None))
            .context("loading order 7")
            .into();
        assert_eq!(error_chain(&*e), "loading order 7: io failed");
        // A chain is cut after 16 causes.
        let mut e = Caused("cause 40".into(), None);
        for i in (0..40).rev() {
            e = Caused(format!("cause {i}"), Some(Box::new(e)));
        }
        let text = error_chain(&e);
        assert_eq!(text.matches("cause").count(), 17, "{text}");
        assert!(text.starts_with("cause 0: cause 1: "), "{text}");
        assert!(text.ends_with(": ..."), "{text}");
    }

    #[test]
    fn non_retryable_is_found_in_the_chain_and_through_anyhow() {
        let plain: BoxError = "boom".into();
        assert!(is_retryable(&*plain));
        let direct: BoxError = NonRetryable::new("bad amount").into();
        assert!(!is_retryable(&*direct));
        #[derive(Debug)]
        struct Outer(NonRetryable);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("outer")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let nested: BoxError = Outer(NonRetryable::new("inner")).into();
        assert!(!is_retryable(&*nested));
        let via_anyhow: BoxError = anyhow::Error::from(NonRetryable::new("x")).into();
        assert!(!is_retryable(&*via_anyhow));
        let payload: BoxError = Message::new("t", 0, 1).payload_error("not JSON").into();
        assert!(!is_retryable(&*payload));
    }

    #[test]
    fn a_copy_is_kept_only_when_a_retry_or_a_dead_letter_needs_it() {
        let skip = crate::subscriber::Settings::default().policy();
        assert!(!skip.keeps_copy(1));
        let retry = ErrorPolicy {
            retries: 2,
            ..crate::subscriber::Settings::default().policy()
        };
        assert!(retry.keeps_copy(1) && retry.keeps_copy(2) && !retry.keeps_copy(3));
        let dlq = ErrorPolicy {
            on_error: OnError::DeadLetter("d".into()),
            ..crate::subscriber::Settings::default().policy()
        };
        assert!(dlq.keeps_copy(1));
    }
}
