//! The owned message a handler receives.

use std::sync::Arc;

use crate::engine::Held;

thread_local! {
    /// Where a record's key and payload are joined before they are shared.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One Kafka record, detached from the consumer so a handler task can own it.
///
/// Built by the runtime from each fetched record; the payload, key and headers
/// are copies, so the handler may keep them as long as it likes. Cloning a
/// message is cheap: clones share the key, payload and headers (which never
/// change once read), so the runtime keeps one for a retry or a dead letter
/// without copying the record.
///
/// (Inside the engine, a record may wait for its handler without being
/// copied, holding librdkafka's own: such a message is copied before any
/// user code can own one. Extractors only borrow it, and a clone of it is a
/// copy.)
#[derive(Debug)]
pub struct Message {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    data: Data,
    /// Which attempt at handling this record this is (1 for the first).
    attempt: u32,
}

/// A record's key, payload and headers, copied.
#[derive(Clone, Debug)]
struct Copied {
    /// The key's bytes followed by the payload's, in one allocation.
    bytes: Arc<[u8]>,
    /// The key's length; `None` for a null key.
    key_len: Option<usize>,
    /// `false` for a null payload (a tombstone).
    has_payload: bool,
    /// `None` when the record has no headers (no allocation then).
    headers: Option<Arc<[Header]>>,
}

/// Where a message's key, payload and headers are.
#[derive(Debug)]
enum Data {
    /// Copied: shared by the message's clones.
    Copied(Copied),
    /// Still librdkafka's (see `engine::ffi::Held`).
    Held(Held),
}

impl Clone for Message {
    /// A clone shares a copied record; a held one is copied.
    fn clone(&self) -> Self {
        Self {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            timestamp: self.timestamp,
            data: match &self.data {
                Data::Copied(c) => Data::Copied(c.clone()),
                Data::Held(held) => copied(held.key(), held.payload(), held.headers().clone()),
            },
            attempt: self.attempt,
        }
    }
}

/// One record header: a name and an optional value.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Header {
    /// The header's name.
    pub key: String,
    /// The header's value; `None` for a header sent with a null value.
    pub value: Option<Vec<u8>>,
}

impl Message {
    /// Builds a message by hand, for tests of handlers outside a consumer.
    pub fn new(topic: &str, partition: i32, offset: i64) -> Self {
        Self {
            topic: Arc::from(topic),
            partition,
            offset,
            timestamp: None,
            data: copied(None, None, None),
            attempt: 1,
        }
    }

    /// Sets the key (builder style, for tests).
    #[must_use]
    pub fn with_key(self, key: impl Into<Vec<u8>>) -> Self {
        let payload = self.payload().map(<[u8]>::to_vec);
        let data = copied(Some(&key.into()), payload.as_deref(), self.shared_headers());
        self.with_data(data)
    }

    /// Sets the payload (builder style, for tests).
    #[must_use]
    pub fn with_payload(self, payload: impl Into<Vec<u8>>) -> Self {
        let key = self.key().map(<[u8]>::to_vec);
        let data = copied(key.as_deref(), Some(&payload.into()), self.shared_headers());
        self.with_data(data)
    }

    /// Adds a header (builder style, for tests).
    #[must_use]
    pub fn with_header(self, key: impl Into<String>, value: Option<Vec<u8>>) -> Self {
        let mut headers = self.headers().to_vec();
        headers.push(Header { key: key.into(), value });
        let data = copied(self.key(), self.payload(), Some(headers.into()));
        self.with_data(data)
    }

    fn with_data(mut self, data: Data) -> Self {
        self.data = data;
        self
    }

    /// The headers, shared (`None` when there are none).
    fn shared_headers(&self) -> Option<Arc<[Header]>> {
        match &self.data {
            Data::Copied(c) => c.headers.clone(),
            Data::Held(held) => held.headers().clone(),
        }
    }

    /// A fetched record's parts, copied (see `engine::ffi`). `topic` is
    /// shared between the messages of one partition.
    pub(crate) fn from_parts(
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        timestamp: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<Vec<Header>>,
    ) -> Self {
        Self {
            topic,
            partition,
            offset,
            timestamp,
            data: copied(key, payload, headers.map(Into::into)),
            attempt: 1,
        }
    }

    /// A fetched record, not copied (see `engine::ffi::Held`).
    pub(crate) fn from_held(topic: Arc<str>, partition: i32, offset: i64, timestamp: Option<i64>, held: Held) -> Self {
        Self {
            topic,
            partition,
            offset,
            timestamp,
            data: Data::Held(held),
            attempt: 1,
        }
    }

    /// The message as user code may own it: a held record is copied (and
    /// librdkafka's released); a copied one is returned as it is.
    pub(crate) fn detached(self) -> Self {
        match self.data {
            Data::Copied(_) => self,
            Data::Held(_) => self.clone(),
        }
    }

    /// Which attempt at handling this record this is: 1, then 2 on the
    /// first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The same record for the next attempt.
    pub(crate) fn next_attempt(mut self) -> Self {
        self.attempt += 1;
        self
    }

    /// The topic's name, shared with the other messages of its partition.
    pub(crate) fn topic_name(&self) -> Arc<str> {
        self.topic.clone()
    }

    /// The topic the record was read from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition the record was read from.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The record's offset in its partition.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The record's timestamp in milliseconds since the Unix epoch, if it has one.
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }

    /// The record's key, if it has one.
    pub fn key(&self) -> Option<&[u8]> {
        match &self.data {
            Data::Copied(c) => c.key_len.and_then(|n| c.bytes.get(..n)),
            Data::Held(held) => held.key(),
        }
    }

    /// The record's payload; `None` for a tombstone (null value).
    pub fn payload(&self) -> Option<&[u8]> {
        match &self.data {
            Data::Copied(c) if c.has_payload => c.bytes.get(c.key_len.unwrap_or(0)..),
            Data::Copied(_) => None,
            Data::Held(held) => held.payload(),
        }
    }

    /// The record's headers, in the order they were sent.
    pub fn headers(&self) -> &[Header] {
        match &self.data {
            Data::Copied(c) => c.headers.as_deref().unwrap_or_default(),
            Data::Held(held) => held.headers().as_deref().unwrap_or_default(),
        }
    }

    /// The first header with this name, if any.
    pub fn header(&self, key: &str) -> Option<&Header> {
        self.headers().iter().find(|h| h.key == key)
    }

    /// The value of the first header with this name, as text: `None` when
    /// there is no such header, its value is null or not UTF-8
    /// (`m.header_str("kconc-error")` for a dead letter's reason).
    pub fn header_str(&self, key: &str) -> Option<&str> {
        self.header(key)?
            .value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The payload as UTF-8 text.
    ///
    /// Fails with a [`PayloadError`] naming the topic, partition and offset when
    /// the payload is missing or not valid UTF-8.
    pub fn payload_str(&self) -> Result<&str, PayloadError> {
        let bytes = self.payload().ok_or_else(|| self.payload_error("payload is null"))?;
        std::str::from_utf8(bytes).map_err(|e| self.payload_error(format!("payload is not valid UTF-8: {e}")))
    }

    /// The key as UTF-8 text.
    ///
    /// Fails with a [`PayloadError`] when the key is missing or not valid UTF-8.
    pub fn key_str(&self) -> Result<&str, PayloadError> {
        let bytes = self.key().ok_or_else(|| self.payload_error("key is null"))?;
        std::str::from_utf8(bytes).map_err(|e| self.payload_error(format!("key is not valid UTF-8: {e}")))
    }

    /// An error about this message's content, carrying where the message is.
    pub fn payload_error(&self, what: impl Into<String>) -> PayloadError {
        PayloadError {
            topic: self.topic.to_string(),
            partition: self.partition,
            offset: self.offset,
            what: what.into(),
        }
    }
}

/// A record's parts, copied.
fn copied(key: Option<&[u8]>, payload: Option<&[u8]>, headers: Option<Arc<[Header]>>) -> Data {
    Data::Copied(Copied {
        bytes: joined(key, payload),
        key_len: key.map(<[u8]>::len),
        has_payload: payload.is_some(),
        headers,
    })
}

/// The key's bytes followed by the payload's, in one allocation (the
/// only one a record's copy makes): with a key, the two are put side by
/// side in this thread's scratch buffer first (two memcpys; an iterator
/// over both would copy byte by byte).
fn joined(key: Option<&[u8]>, payload: Option<&[u8]>) -> Arc<[u8]> {
    let (k, p) = (key.unwrap_or_default(), payload.unwrap_or_default());
    if k.is_empty() {
        return Arc::from(p);
    }
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        buf.clear();
        buf.extend_from_slice(k);
        buf.extend_from_slice(p);
        let data = Arc::from(&buf[..]);
        // A large record's buffer is not kept for ever.
        if buf.capacity() > 64 * 1024 {
            *buf = Vec::new();
        }
        data
    })
}

/// A message whose content cannot be used as the handler asked (null payload,
/// invalid UTF-8, ...). It is a per-message error: it goes to the error policy
/// like any handler error and never stops the consumer.
#[derive(Debug, thiserror::Error)]
#[error("{topic}[{partition}]@{offset}: {what}")]
pub struct PayloadError {
    /// The topic of the message.
    pub topic: String,
    /// The partition of the message.
    pub partition: i32,
    /// The offset of the message.
    pub offset: i64,
    /// What was wrong with it.
    pub what: String,
}

/// A message whose arguments could not be extracted for its handler, which
/// therefore did not run: it fails with this, for the policy and the log to
/// tell it from a handler's own error.
#[derive(Debug)]
pub(crate) struct Undecodable(pub(crate) PayloadError);

impl std::fmt::Display for Undecodable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Undecodable {}

#[cfg(test)]
mod tests {
    use super::Message;

    #[test]
    fn key_and_payload_share_a_buffer_but_read_apart() {
        let m = Message::new("t", 0, 0);
        assert_eq!((m.key(), m.payload()), (None, None));
        let m = Message::new("t", 0, 0).with_payload("p1");
        assert_eq!((m.key(), m.payload()), (None, Some(&b"p1"[..])));
        let m = m.with_key("key");
        assert_eq!((m.key(), m.payload()), (Some(&b"key"[..]), Some(&b"p1"[..])));
        let m = m.with_payload("");
        assert_eq!((m.key(), m.payload()), (Some(&b"key"[..]), Some(&b""[..])));
        let m = Message::new("t", 0, 0).with_key("");
        assert_eq!((m.key(), m.payload()), (Some(&b""[..]), None));
        let m = m.with_payload("x").with_key("kk");
        assert_eq!((m.key(), m.payload()), (Some(&b"kk"[..]), Some(&b"x"[..])));
    }
}
