//! The librdkafka calls kconc makes itself, where rdkafka's wrappers drop
//! what the engine needs: every `unsafe` block of the runtime is here.
//!
//! A partition's own queue is read with the event API, as rdkafka does,
//! but an error event keeps what rdkafka's `PartitionQueue::poll` throws
//! away: the offset it is about. librdkafka reports a record batch it
//! cannot read (corrupt, or compressed with a codec it cannot decompress)
//! as an error at the batch's first offset, and does not move past it
//! (it fetches it again and reports it again); the engine routes it
//! through the error policy instead of passing it over or stalling.

#![allow(unsafe_code)]

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::NonNull;
use std::sync::Arc;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::RDKafkaErrorCode;

use crate::message::{Header, Message};

/// What one poll of a partition's queue gave.
#[derive(Debug)]
pub(crate) enum Polled {
    /// A record, and the leader epoch it was written in (-1: not known).
    Message(Message, i32),
    /// librdkafka reported an error for the partition: its code, the
    /// offset it is about (for an unreadable batch its first offset; for
    /// a fetch error the fetch position), and its text.
    Error {
        code: RDKafkaErrorCode,
        offset: Option<i64>,
        reason: String,
    },
    /// Nothing is waiting.
    Empty,
}

type Callback = Box<dyn Fn() + Send + Sync>;

/// One assigned partition's own librdkafka queue, split off the consumer's
/// so that its messages are read only here, when the engine has room.
pub(crate) struct PartitionQueue {
    queue: NonNull<rd::rd_kafka_queue_t>,
    /// The client the queue belongs to, kept alive while the queue is.
    _consumer: Arc<dyn std::any::Any + Send + Sync>,
    /// Called by librdkafka when the queue becomes non-empty (boxed twice:
    /// librdkafka keeps a thin pointer to it).
    callback: Option<Box<Callback>>,
}

// SAFETY: librdkafka's queue handles may be used from any thread; the
// callback is `Send + Sync`.
unsafe impl Send for PartitionQueue {}

impl std::fmt::Debug for PartitionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionQueue").finish_non_exhaustive()
    }
}

/// Splits `topic[partition]`'s queue off the consumer's (before it is
/// assigned, so none of its messages reach the consumer's queue). `None`
/// if librdkafka has no such partition queue.
pub(crate) fn split<C: ConsumerContext + 'static>(
    consumer: &Arc<BaseConsumer<C>>,
    topic: &str,
    partition: i32,
) -> Option<PartitionQueue> {
    let topic_c = CString::new(topic).ok()?;
    // SAFETY: the client pointer is live while `consumer` is; the topic is a
    // NUL-terminated string for the call's duration. The queue returned is
    // a new reference, ours to destroy (in `Drop`).
    let queue = NonNull::new(unsafe {
        rd::rd_kafka_queue_get_partition(consumer.client().native_ptr(), topic_c.as_ptr(), partition)
    })?;
    // SAFETY: the queue is live; forwarding it to nothing stops it from
    // feeding the consumer's queue.
    unsafe { rd::rd_kafka_queue_forward(queue.as_ptr(), std::ptr::null_mut()) };
    Some(PartitionQueue {
        queue,
        _consumer: consumer.clone(),
        callback: None,
    })
}

impl PartitionQueue {
    /// Calls `f` (on a librdkafka thread) whenever the queue becomes
    /// non-empty. `f` must be quick and must not panic.
    pub(crate) fn set_nonempty_callback(&mut self, f: impl Fn() + Send + Sync + 'static) {
        unsafe extern "C" fn call(_: *mut rd::rd_kafka_t, opaque: *mut c_void) {
            // SAFETY: `opaque` is the `Callback` box registered below, alive
            // until the callback is disabled (in `Drop`, or when replaced).
            let f = unsafe { &*(opaque as *const Callback) };
            // A panic must not unwind into librdkafka.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        }
        let f: Box<Callback> = Box::new(Box::new(f));
        // SAFETY: the queue is live; `f` outlives its registration: it is
        // kept in `self.callback` and unregistered before being dropped.
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(self.queue.as_ptr(), Some(call), &*f as *const Callback as *mut c_void);
        }
        self.callback = Some(f);
    }

    /// How many events (fetched records, errors) wait in the queue.
    pub(crate) fn len(&self) -> usize {
        // SAFETY: the queue is live.
        unsafe { rd::rd_kafka_queue_length(self.queue.as_ptr()) }
    }

    /// The next record or error of the queue, without waiting. With
    /// `hold`, a record's message keeps librdkafka's event instead of a
    /// copy (see [`Held`]).
    pub(crate) fn poll(&self, topic: &Arc<str>, hold: bool) -> Polled {
        loop {
            // SAFETY: the queue is live; a zero timeout never blocks; the
            // event returned is ours, destroyed by its guard.
            let Some(event) = NonNull::new(unsafe { rd::rd_kafka_queue_poll(self.queue.as_ptr(), 0) }) else {
                return Polled::Empty;
            };
            let event = EventGuard(event);
            // SAFETY: the event is live until its guard drops: after the
            // message it holds has been copied, or with the `Held` it moved
            // into.
            match unsafe { rd::rd_kafka_event_type(event.0.as_ptr()) } {
                rd::RD_KAFKA_EVENT_FETCH => {
                    // SAFETY: as above; the message belongs to the event.
                    let Some(m) = (unsafe { rd::rd_kafka_event_message_next(event.0.as_ptr()).as_ref() }) else {
                        continue;
                    };
                    if m.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                        return Polled::Error {
                            code: m.err.into(),
                            offset: (m.offset >= 0).then_some(m.offset),
                            // SAFETY: rd_kafka_err2str returns a static string.
                            reason: unsafe { owned(rd::rd_kafka_err2str(m.err)) },
                        };
                    }
                    // SAFETY: `m` is a live message of a fetch event.
                    let epoch = unsafe { rd::rd_kafka_message_leader_epoch(m) };
                    let msg = if hold {
                        let msg = NonNull::from(m);
                        // SAFETY: `msg` belongs to `event`, which the
                        // `Held` owns from here on.
                        unsafe { held(topic, event, msg) }
                    } else {
                        // SAFETY: `m` is a live message of a fetch event.
                        unsafe { detach(topic, m) }
                    };
                    return Polled::Message(msg, epoch);
                }
                rd::RD_KAFKA_EVENT_ERROR => {
                    let ev = event.0.as_ptr();
                    // SAFETY: the event is live; the topic partition returned
                    // is a copy, ours to destroy.
                    let (code, offset, reason) = unsafe {
                        let code = rd::rd_kafka_event_error(ev);
                        let tp = rd::rd_kafka_event_topic_partition(ev);
                        let offset = tp.as_ref().map(|tp| tp.offset).filter(|o| *o >= 0);
                        if !tp.is_null() {
                            rd::rd_kafka_topic_partition_destroy(tp);
                        }
                        (code, offset, owned(rd::rd_kafka_event_error_string(ev)))
                    };
                    return Polled::Error {
                        code: code.into(),
                        offset,
                        reason,
                    };
                }
                _ => continue,
            }
        }
    }
}

impl Drop for PartitionQueue {
    fn drop(&mut self) {
        // SAFETY: the queue is live until destroyed here; the callback is
        // unregistered before its box is dropped (after this function).
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(self.queue.as_ptr(), None, std::ptr::null_mut());
            rd::rd_kafka_queue_destroy(self.queue.as_ptr());
        }
    }
}

/// Destroys an event when dropped.
struct EventGuard(NonNull<rd::rd_kafka_event_t>);

impl Drop for EventGuard {
    fn drop(&mut self) {
        // SAFETY: the event was returned by rd_kafka_queue_poll and is
        // destroyed once, here.
        unsafe { rd::rd_kafka_event_destroy(self.0.as_ptr()) };
    }
}

/// A C string as an owned `String` (empty for a null pointer).
///
/// # Safety
/// `s` is null or a valid NUL-terminated string for the call's duration.
unsafe fn owned(s: *const c_char) -> String {
    if s.is_null() {
        return String::new();
    }
    // SAFETY: per this function's contract.
    unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
}

/// A fetched record that was not copied: librdkafka's fetch event, owned,
/// lending its key and payload to the [`Message`] that holds it, and its
/// headers parsed only when read. It pins the fetch response the record
/// came in, and `rd_kafka_destroy` may wait for it: the engine holds one only
/// while the record waits in read order, and never gives one to user code
/// (a `Message` holding one is copied when cloned or handed over by value:
/// see `Message::detached`).
pub(crate) struct Held {
    /// Owned for its drop, which releases the record.
    _event: EventGuard,
    /// The event's message, alive as long as the event is.
    msg: NonNull<rd::rd_kafka_message_t>,
    headers: std::sync::OnceLock<Option<Arc<[Header]>>>,
}

// SAFETY: the event is owned by this value alone; librdkafka's message may
// be read from any thread, and the one call that changes it (parsing its
// headers, `rd_kafka_message_headers`) runs inside a `OnceLock`, once.
unsafe impl Send for Held {}
// SAFETY: as above: shared access only reads, or parses the headers once.
unsafe impl Sync for Held {}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").finish_non_exhaustive()
    }
}

impl Held {
    fn message(&self) -> &rd::rd_kafka_message_t {
        // SAFETY: the message belongs to the event this value owns.
        unsafe { self.msg.as_ref() }
    }

    fn bytes(&self, p: *mut c_void, len: usize) -> Option<&[u8]> {
        // SAFETY: a non-null key or payload pointer of a live message is
        // valid for its length while the message (its event) is.
        (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p as *const u8, len) })
    }

    /// The record's key, lent.
    pub(crate) fn key(&self) -> Option<&[u8]> {
        let m = self.message();
        self.bytes(m.key, m.key_len)
    }

    /// The record's payload, lent.
    pub(crate) fn payload(&self) -> Option<&[u8]> {
        let m = self.message();
        self.bytes(m.payload, m.len)
    }

    /// The record's headers, parsed on the first call.
    pub(crate) fn headers(&self) -> &Option<Arc<[Header]>> {
        // SAFETY: the message is live; only this call parses its headers.
        self.headers
            .get_or_init(|| unsafe { headers(self.message()) }.map(Into::into))
    }
}

/// A fetched record as a [`Message`] holding its event (see [`Held`]).
///
/// # Safety
/// `msg` is the message of the fetch event `event`.
unsafe fn held(topic: &Arc<str>, event: EventGuard, msg: NonNull<rd::rd_kafka_message_t>) -> Message {
    let held = Held {
        _event: event,
        msg,
        headers: std::sync::OnceLock::new(),
    };
    let m = held.message();
    let (partition, offset) = (m.partition, m.offset);
    // SAFETY: `m` is live.
    let timestamp = unsafe { timestamp(m) };
    Message::from_held(topic.clone(), partition, offset, timestamp, held)
}

/// A record's timestamp, if it has one.
///
/// # Safety
/// `m` is a live message.
unsafe fn timestamp(m: &rd::rd_kafka_message_t) -> Option<i64> {
    let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
    // SAFETY: `m` is live; `kind` is valid for writes.
    let ts = unsafe { rd::rd_kafka_message_timestamp(m, &mut kind) };
    (kind != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE).then_some(ts)
}

/// Copies a fetched record into an owned [`Message`].
///
/// # Safety
/// `m` is a live message of a fetch event (its pointers valid for their
/// lengths).
unsafe fn detach(topic: &Arc<str>, m: &rd::rd_kafka_message_t) -> Message {
    let bytes = |p: *mut c_void, len: usize| {
        // SAFETY: per this function's contract, non-null pointers are valid
        // for `len` bytes.
        (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p as *const u8, len) })
    };
    // SAFETY: `m` is live.
    let (timestamp, headers) = unsafe { (timestamp(m), headers(m)) };
    Message::from_parts(
        topic.clone(),
        m.partition,
        m.offset,
        timestamp,
        bytes(m.key, m.key_len),
        bytes(m.payload, m.len),
        headers,
    )
}

/// A record's headers (`None` when it has none).
///
/// # Safety
/// `m` is a live message.
unsafe fn headers(m: &rd::rd_kafka_message_t) -> Option<Vec<Header>> {
    let mut hdrs = std::ptr::null_mut();
    // SAFETY: `m` is live; `hdrs` is valid for writes. The headers belong
    // to the message.
    let err = unsafe { rd::rd_kafka_message_headers(m, &mut hdrs) };
    if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || hdrs.is_null() {
        return None;
    }
    let mut out = Vec::new();
    for idx in 0.. {
        let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
        // SAFETY: `hdrs` is live with the message; the out-pointers are
        // valid for writes; name and value stay valid with the message.
        let err = unsafe { rd::rd_kafka_header_get_all(hdrs, idx, &mut name, &mut value, &mut size) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            break;
        }
        out.push(Header {
            // SAFETY: a header's name is a NUL-terminated string.
            key: unsafe { owned(name) },
            // SAFETY: a non-null value is valid for `size` bytes.
            value: (!value.is_null()).then(|| unsafe { std::slice::from_raw_parts(value as *const u8, size) }.to_vec()),
        });
    }
    (!out.is_empty()).then_some(out)
}

/// The high watermark librdkafka last saw in a fetch response for the
/// partition (`rd_kafka_get_watermark_offsets`: local, never a request),
/// `None` before the first fetch. rdkafka wraps only the querying variant.
pub(crate) fn cached_high_watermark<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = CString::new(topic).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: the client pointer is live while `consumer` is borrowed; the
    // topic is a valid NUL-terminated string for the call's duration; low
    // and high are valid for writes. The call only reads librdkafka's cache.
    let err = unsafe {
        rd::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

/// Makes a mock cluster form consumer groups at once, without its usual 3 s
/// initial rebalance delay. `client` must have been created with
/// `test.mock.num.brokers` (it owns the cluster); otherwise nothing happens.
pub(crate) fn no_initial_rebalance_delay(client: &rdkafka::client::Client<impl rdkafka::ClientContext>) {
    // SAFETY: the client is live while borrowed, so the cluster it owns
    // (checked non-null) is too; the setter only stores an integer in the
    // cluster under its lock.
    unsafe {
        let cluster = rd::rd_kafka_handle_mock_cluster(client.native_ptr());
        if !cluster.is_null() {
            rd::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
        }
    }
}

/// Sets a mock cluster's (owned by `client`, see
/// [`no_initial_rebalance_delay`]) session timeout and heartbeat interval
/// of KIP-848 consumer groups (`group.protocol=consumer`), which are the
/// broker's under that protocol: rdkafka's `MockCluster` does not expose
/// them.
pub(crate) fn mock_consumer_group_timing(
    client: &rdkafka::client::Client<impl rdkafka::ClientContext>,
    session_timeout_ms: i32,
    heartbeat_interval_ms: i32,
) {
    // SAFETY: as in `no_initial_rebalance_delay`: the setters store
    // integers in the live cluster under its lock.
    unsafe {
        let cluster = rd::rd_kafka_handle_mock_cluster(client.native_ptr());
        if !cluster.is_null() {
            rd::rd_kafka_mock_set_group_consumer_session_timeout_ms(cluster, session_timeout_ms);
            rd::rd_kafka_mock_set_group_consumer_heartbeat_interval_ms(cluster, heartbeat_interval_ms);
        }
    }
}

/// Makes a mock cluster (owned by `client`, see
/// [`no_initial_rebalance_delay`]) leave API `api_key` out of its
/// ApiVersions answers, as a broker without it would: for the APIs
/// rdkafka's `RDKafkaApiKey` does not list (ConsumerGroupHeartbeat, 68).
pub(crate) fn mock_without_api(client: &rdkafka::client::Client<impl rdkafka::ClientContext>, api_key: i16) {
    // SAFETY: as in `no_initial_rebalance_delay`: the setter hands the
    // live cluster a command and waits for it to be applied; an unknown
    // key is refused with an error, which is ignored (nothing changes).
    unsafe {
        let cluster = rd::rd_kafka_handle_mock_cluster(client.native_ptr());
        if !cluster.is_null() {
            let _ = rd::rd_kafka_mock_set_apiversion(cluster, api_key, -1, -1);
        }
    }
}

/// Makes a mock cluster (owned by `client`, see
/// [`no_initial_rebalance_delay`]) answer the next requests of API
/// `api_key` with `errors`, one each: for the APIs rdkafka's
/// `RDKafkaApiKey` does not list (ConsumerGroupHeartbeat, 68).
pub(crate) fn mock_request_errors(
    client: &rdkafka::client::Client<impl rdkafka::ClientContext>,
    api_key: i16,
    errors: &[rd::rd_kafka_resp_err_t],
) {
    // SAFETY: as in `no_initial_rebalance_delay`; the errors are copied
    // by the call.
    unsafe {
        let cluster = rd::rd_kafka_handle_mock_cluster(client.native_ptr());
        if !cluster.is_null() {
            rd::rd_kafka_mock_push_request_errors_array(cluster, api_key, errors.len(), errors.as_ptr());
        }
    }
}

/// Each partition of `tpl` (as the committed offsets come back): topic,
/// partition, offset, and its metadata as bytes. rdkafka's
/// `TopicPartitionListElem::metadata` panics on metadata that is not UTF-8,
/// which any client may have committed.
pub(crate) fn committed_metadata(tpl: &rdkafka::TopicPartitionList) -> Vec<(String, i32, i64, Vec<u8>)> {
    let list = tpl.ptr();
    // SAFETY: `tpl` owns a valid list for as long as it is borrowed here;
    // `elems` holds `cnt` elements, each with a NUL-terminated topic and
    // `metadata_size` bytes at `metadata` (or a null pointer).
    unsafe {
        let Some(list) = list.as_ref() else {
            return Vec::new();
        };
        let count = usize::try_from(list.cnt).unwrap_or(0);
        if list.elems.is_null() || count == 0 {
            return Vec::new();
        }
        std::slice::from_raw_parts(list.elems, count)
            .iter()
            .map(|el| {
                let topic = if el.topic.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(el.topic).to_string_lossy().into_owned()
                };
                let metadata = if el.metadata.is_null() || el.metadata_size == 0 {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(el.metadata.cast::<u8>(), el.metadata_size).to_vec()
                };
                (topic, el.partition, el.offset, metadata)
            })
            .collect()
    }
}

/// Sets the leader epoch of the element at `index` of `tpl` (KIP-320:
/// committed with its offset); rdkafka does not wrap it. Out of range: nothing.
pub(crate) fn set_leader_epoch(tpl: &mut rdkafka::TopicPartitionList, index: usize, epoch: i32) {
    // SAFETY: `tpl` owns a valid list for as long as it is borrowed here;
    // `elems` holds `cnt` elements and `index` is checked against it.
    unsafe {
        let Some(list) = tpl.ptr().as_ref() else {
            return;
        };
        if list.elems.is_null() || index >= usize::try_from(list.cnt).unwrap_or(0) {
            return;
        }
        rd::rd_kafka_topic_partition_set_leader_epoch(list.elems.add(index), epoch);
    }
}

/// The leader epoch of each element of `tpl`, in order (-1 where none).
#[cfg(test)]
pub(crate) fn leader_epochs(tpl: &rdkafka::TopicPartitionList) -> Vec<i32> {
    // SAFETY: as in `set_leader_epoch`.
    unsafe {
        let Some(list) = tpl.ptr().as_ref() else {
            return Vec::new();
        };
        (0..usize::try_from(list.cnt).unwrap_or(0))
            .map(|i| rd::rd_kafka_topic_partition_get_leader_epoch(list.elems.add(i)))
            .collect()
    }
}
