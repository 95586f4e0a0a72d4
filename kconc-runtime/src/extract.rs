//! Extractors: handler arguments that build themselves from the message.
//!
//! A handler takes any number (up to 16) of arguments, each implementing
//! [`FromMessage`], and at most one, the last, taking the whole [`Message`]:
//!
//! ```no_run
//! use kconc_runtime::{subscriber, Json, Key, Meta};
//!
//! #[derive(serde::Deserialize)]
//! struct Order { id: u64 }
//!
//! #[subscriber(topic = "orders", group = "billing")]
//! async fn bill(order: Json<Order>, customer: Key<String>, meta: Meta) -> anyhow::Result<()> {
//!     println!("order {} of {} at {}@{}", order.id, *customer, meta.partition, meta.offset);
//!     Ok(())
//! }
//! # fn main() {}
//! ```
//!
//! A message an extractor cannot build from (invalid JSON, a payload that is
//! not UTF-8, a missing key or payload) fails that message with a
//! [`PayloadError`] naming its topic, partition and offset; it goes to the
//! error policy like a handler error and never stops the consumer.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::context::Context;
use crate::message::{Header, Message, PayloadError};
use crate::state::StateRequirement;

/// Builds a handler argument from a message. Implement it for your own types
/// to take them as handler arguments.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an argument of a kconc handler",
    label = "not an extractor",
    note = "handler arguments are built from the message: use `Json<T>`, `Text`, `Bytes`, `Key<T>`, `Headers`, `Meta`, `Context`, \
            `Option<..>` of some of these, or `Message` as the last argument; or implement `kconc_runtime::FromMessage` for `{Self}`"
)]
pub trait FromMessage: Sized {
    /// Builds the value, or says why this message cannot give one.
    fn from_message(msg: &Message, cx: &Context) -> Result<Self, PayloadError>;
}

/// Builds the last handler argument, which may take the message itself.
/// Every [`FromMessage`] type is one; so is [`Message`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an argument of a kconc handler",
    label = "not an extractor",
    note = "handler arguments are built from the message: use `Message`, `Json<T>`, `Text`, `Bytes`, `Key<T>`, `Headers`, `Meta`, \
            `Context` or `Option<..>` of some of these; or implement `kconc_runtime::FromMessage` for `{Self}`"
)]
pub trait FromMessageOwned: Sized {
    /// Builds the value, consuming the message.
    fn from_message_owned(msg: Message, cx: &Context) -> Result<Self, PayloadError>;
}

impl<T: FromMessage> FromMessageOwned for T {
    fn from_message_owned(msg: Message, cx: &Context) -> Result<Self, PayloadError> {
        T::from_message(&msg, cx)
    }
}

impl FromMessageOwned for Message {
    fn from_message_owned(msg: Message, _: &Context) -> Result<Self, PayloadError> {
        // The handler owns it: not librdkafka's record (see `Message`).
        Ok(msg.detached())
    }
}

impl FromMessage for Context {
    fn from_message(_: &Message, cx: &Context) -> Result<Self, PayloadError> {
        Ok(cx.clone())
    }
}

macro_rules! newtype {
    ($(#[$doc:meta])* $name:ident<$t:ident>) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct $name<$t>(pub $t);

        impl<$t> Deref for $name<$t> {
            type Target = $t;
            fn deref(&self) -> &$t {
                &self.0
            }
        }

        impl<$t> DerefMut for $name<$t> {
            fn deref_mut(&mut self) -> &mut $t {
                &mut self.0
            }
        }

        impl<$t> $name<$t> {
            /// The wrapped value.
            pub fn into_inner(self) -> $t {
                self.0
            }
        }
    };
    ($(#[$doc:meta])* $name:ident($t:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct $name(pub $t);

        impl Deref for $name {
            type Target = $t;
            fn deref(&self) -> &$t {
                &self.0
            }
        }

        impl $name {
            /// The wrapped value.
            pub fn into_inner(self) -> $t {
                self.0
            }
        }
    };
}

newtype! {
    /// The payload decoded from JSON with serde. A null payload or invalid
    /// JSON fails the message; `Option<Json<T>>` accepts a null payload.
    Json<T>
}

newtype! {
    /// The payload as UTF-8 text. A null payload or invalid UTF-8 fails the
    /// message; `Option<Text>` accepts a null payload.
    Text(String)
}

newtype! {
    /// The raw payload. A null payload fails the message; `Option<Bytes>`
    /// accepts a null payload (a tombstone).
    Bytes(Vec<u8>)
}

/// The raw payload (the same as [`Bytes`]).
pub type Payload = Bytes;

newtype! {
    /// The record's key: `Key<Vec<u8>>` raw, `Key<String>` as UTF-8 text,
    /// `Key<Json<K>>` decoded from JSON. A missing key fails the message;
    /// `Option<Key<T>>` accepts one.
    Key<T>
}

/// Where a message came from and which attempt this is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Meta {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
    /// The offset in the partition.
    pub offset: i64,
    /// Milliseconds since the Unix epoch, if the record has a timestamp.
    pub timestamp: Option<i64>,
    /// The consumer group.
    pub group: Arc<str>,
    /// 1 for the first delivery to a handler in this process; counts retries
    /// when an error policy retries.
    pub attempt: u32,
}

/// The record's headers, in the order they were sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<Header>);

impl Headers {
    /// The value of the first header with this name (`None` if absent or null).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().find(|h| h.key == name).and_then(|h| h.value.as_deref())
    }

    /// The value of the first header with this name as UTF-8 text.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every header.
    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.0.iter()
    }
}

fn json<T: DeserializeOwned>(msg: &Message, bytes: &[u8], what: &str) -> Result<T, PayloadError> {
    serde_json::from_slice(bytes).map_err(|e| {
        msg.payload_error(format!(
            "{what} is not valid JSON for `{}`: {e}",
            std::any::type_name::<T>()
        ))
    })
}

impl<T: DeserializeOwned> FromMessage for Json<T> {
    fn from_message(msg: &Message, _: &Context) -> Result<Self, PayloadError> {
        let bytes = msg.payload().ok_or_else(|| {
            msg.payload_error(
                "payload is null but the handler takes `Json<..>` (take `Option<Json<..>>` to accept tombstones)",
            )
        })?;
        json(msg, bytes, "payload").map(Json)
    }
}

impl<T: DeserializeOwned> FromMessage for Option<Json<T>> {
    fn from_message(msg: &Message, _: &Context) -> Result<Self, PayloadError> {
        msg.payload().map(|b| json(msg, b, "payload").map(Json)).transpose()
    }
}

fn text(msg: &Message, bytes: &[u8]) -> Result<String, PayloadError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|e| msg.payload_error(format!("payload is not valid UTF-8: {}", e.utf8_error())))
}

impl FromMessage for Text {
    fn from_message(msg: &Message, _: &Context) -> Result<Self, PayloadError> {
        let bytes = msg.payload().ok_or_else(|| {
            msg.payload_error("payload is null but the handler takes `Text` (take `Option<Text>` to accept tombstones)")
        })?;
        text(msg, bytes).map(Text)
    }
}

impl FromMessage for Option<Text> {
    fn from_message(msg: &Message, _: &Context) -> Result<Self, PayloadError> {
        msg.payload().map(|b| text(msg, b).map(Text)).transpose()
    }
}

impl FromMessage for Bytes {
    fn from_message(msg: &Message, _: &Context) -> Result<Self, PayloadError> {
        msg.payload().map(|b| Bytes(b.to_vec())).ok_or_else(|| {
            msg.payload_error(
                "payload is null but the handler takes `Bytes` (take `Option<Bytes>` to accept tombstones)",
            )
        })
    }
}

impl FromMessage for Option<Bytes> {
    fn from_message(msg: &Message, _: &Context) -> Result<Self, PayloadError> {
        Ok(msg.payload().map(|b| Bytes(b.to_vec())))
    }
}

/// How a key is read: implemented for `Vec<u8>` (raw), `String` (UTF-8) and
/// `Json<K>` (JSON).
pub trait FromKey: Sized {
    /// Reads the key's bytes.
    fn from_key(msg: &Message, key: &[u8]) -> Result<Self, PayloadError>;
}

impl FromKey for Vec<u8> {
    fn from_key(_: &Message, key: &[u8]) -> Result<Self, PayloadError> {
        Ok(key.to_vec())
    }
}

impl FromKey for String {
    fn from_key(msg: &Message, key: &[u8]) -> Result<Self, PayloadError> {
        String::from_utf8(key.to_vec())
            .map_err(|e| msg.payload_error(format!("key is not valid UTF-8: {}", e.utf8_error())))
    }
}

impl<K: DeserializeOwned> FromKey for Json<K> {
    fn from_key(msg: &Message, key: &[u8]) -> Result<Self, PayloadError> {
        json(msg, key, "key").map(Json)
    }
}

impl<T: FromKey> FromMessage for Key<T> {
    fn from_message(msg: &Message, _: &Context) -> Result<Self, PayloadError> {
        let key = msg.key().ok_or_else(|| {
            msg.payload_error(
                "key is null but the handler takes `Key<..>` (take `Option<Key<..>>` to accept keyless messages)",
            )
        })?;
        T::from_key(msg, key).map(Key)
    }
}

impl<T: FromKey> FromMessage for Option<Key<T>> {
    fn from_message(msg: &Message, _: &Context) -> Result<Self, PayloadError> {
        msg.key().map(|k| T::from_key(msg, k).map(Key)).transpose()
    }
}

impl FromMessage for Headers {
    fn from_message(msg: &Message, _: &Context) -> Result<Self, PayloadError> {
        Ok(Headers(msg.headers().to_vec()))
    }
}

impl FromMessage for Meta {
    fn from_message(msg: &Message, cx: &Context) -> Result<Self, PayloadError> {
        Ok(Meta {
            topic: msg.topic_name(),
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp: msg.timestamp(),
            group: cx.group_name(),
            attempt: msg.attempt(),
        })
    }
}

/// A handler argument: the application's value of type `T`, cloned (wrap
/// what is expensive to clone in an `Arc`; pools and clients usually are
/// already).
///
/// ```no_run
/// use kconc_runtime::{subscriber, Json, State};
///
/// #[derive(Clone)]
/// struct Db { /* a pool */ }
///
/// #[derive(serde::Deserialize)]
/// struct Order { id: u64 }
///
/// #[subscriber(topic = "orders", group = "billing")]
/// async fn bill(State(db): State<Db>, Json(order): Json<Order>) {
///     let _ = (db, order.id);
/// }
///
/// async fn connect(_: kconc_runtime::Setup) -> Result<Db, std::io::Error> {
///     Ok(Db {})
/// }
///
/// kconc_runtime::main!(state = connect);
/// ```
#[derive(Clone, Debug)]
pub struct State<T>(pub T);

impl<T: Clone + Send + Sync + 'static> FromMessage for State<T> {
    fn from_message(msg: &Message, cx: &Context) -> Result<Self, PayloadError> {
        cx.state::<T>().map(State).ok_or_else(|| {
            msg.payload_error(format!(
                "no state of type `{}`: the app provides none (App::state, main!(state = ..), or TestApp::state)",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// What the code `#[subscriber]` generates asks of each argument type: a
/// `State<T>` requires a `T`; any other type requires nothing. Resolved by
/// method lookup on the concrete type: `(&&StateProbe::<A>::new())` finds
/// [`TakesState`] by value when `A` is a `State<T>`, and [`TakesNoState`]
/// one dereference later otherwise; no bound is asked of `A`, so an
/// argument that is not an extractor gets no second error.
#[doc(hidden)]
#[derive(Debug)]
pub struct StateProbe<A>(PhantomData<A>);

impl<A> StateProbe<A> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        StateProbe(PhantomData)
    }
}

/// `State<T>` requires a `T`.
#[doc(hidden)]
pub trait TakesState {
    fn required_state(&self) -> Option<StateRequirement>;
}

impl<T: 'static> TakesState for &StateProbe<State<T>> {
    fn required_state(&self) -> Option<StateRequirement> {
        Some(StateRequirement::of::<T>())
    }
}

/// Every other argument requires nothing.
#[doc(hidden)]
pub trait TakesNoState {
    fn required_state(&self) -> Option<StateRequirement> {
        None
    }
}

impl<A> TakesNoState for StateProbe<A> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Order {
        id: u64,
    }

    fn cx() -> Context {
        Context::for_test("sub", "billing")
    }

    fn msg() -> Message {
        Message::new("orders", 3, 42)
    }

    #[test]
    fn json_decodes_and_names_the_message_when_it_cannot() {
        let ok = msg().with_payload(r#"{"id": 7}"#);
        assert_eq!(Json::<Order>::from_message(&ok, &cx()).unwrap().0, Order { id: 7 });

        let bad = msg().with_payload("{not json");
        let e = Json::<Order>::from_message(&bad, &cx()).unwrap_err().to_string();
        assert!(e.starts_with("orders[3]@42: payload is not valid JSON"), "{e}");

        let null = msg();
        let e = Json::<Order>::from_message(&null, &cx()).unwrap_err().to_string();
        assert!(e.contains("payload is null") && e.contains("Option<Json"), "{e}");
        assert_eq!(Option::<Json<Order>>::from_message(&null, &cx()).unwrap(), None);
        assert!(
            Option::<Json<Order>>::from_message(&bad, &cx()).is_err(),
            "Option<Json> must not hide invalid JSON"
        );
    }

    #[test]
    fn text_bytes_and_keys() {
        let m = msg().with_payload("héllo").with_key("customer-1");
        assert_eq!(Text::from_message(&m, &cx()).unwrap().0, "héllo");
        assert_eq!(Bytes::from_message(&m, &cx()).unwrap().0, "héllo".as_bytes());
        assert_eq!(Key::<String>::from_message(&m, &cx()).unwrap().0, "customer-1");
        assert_eq!(Key::<Vec<u8>>::from_message(&m, &cx()).unwrap().0, b"customer-1");

        let latin1 = msg().with_payload(vec![0xe9_u8]).with_key(vec![0xff_u8]);
        let e = Text::from_message(&latin1, &cx()).unwrap_err().to_string();
        assert!(e.contains("orders[3]@42") && e.contains("UTF-8"), "{e}");
        assert!(Key::<String>::from_message(&latin1, &cx())
            .unwrap_err()
            .to_string()
            .contains("key is not valid UTF-8"));

        let json_key = msg().with_key(r#"{"id": 9}"#);
        assert_eq!(
            Key::<Json<Order>>::from_message(&json_key, &cx()).unwrap().0 .0,
            Order { id: 9 }
        );

        let keyless = msg();
        assert!(Key::<String>::from_message(&keyless, &cx())
            .unwrap_err()
            .to_string()
            .contains("key is null"));
        assert_eq!(Option::<Key<String>>::from_message(&keyless, &cx()).unwrap(), None);
        assert_eq!(Option::<Text>::from_message(&keyless, &cx()).unwrap(), None);
        assert_eq!(Option::<Bytes>::from_message(&keyless, &cx()).unwrap(), None);
    }

    #[test]
    fn headers_meta_context_and_the_whole_message() {
        let m = msg()
            .with_header("traceparent", Some(b"00-abc".to_vec()))
            .with_header("empty", None);
        let h = Headers::from_message(&m, &cx()).unwrap();
        assert_eq!(h.get_str("traceparent"), Some("00-abc"));
        assert_eq!(h.get("empty"), None);
        assert_eq!(h.iter().count(), 2);

        let meta = Meta::from_message(&m, &cx()).unwrap();
        assert_eq!(
            (&*meta.topic, meta.partition, meta.offset, &*meta.group, meta.attempt),
            ("orders", 3, 42, "billing", 1)
        );

        assert_eq!(Context::from_message(&m, &cx()).unwrap().group(), "billing");
        assert_eq!(Message::from_message_owned(m.clone(), &cx()).unwrap().offset(), 42);
    }

    #[test]
    #[allow(clippy::needless_borrow)] // the borrows pick the trait
    fn the_probe_finds_state_arguments_only() {
        let state = (&&StateProbe::<State<u32>>::new()).required_state();
        assert_eq!(state.map(|r| r.type_name), Some("u32"));
        let other = (&&StateProbe::<Message>::new()).required_state();
        assert_eq!(other, None);
        let optional = (&&StateProbe::<Option<State<u32>>>::new()).required_state();
        assert_eq!(optional, None, "an optional state is not required");
    }
}
