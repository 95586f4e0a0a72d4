//! What a handler's arguments say about the messages it reads, for the
//! AsyncAPI document: the payload's type (`Json<T>`, `Option<Json<T>>`,
//! `Batch<Json<T>>`) and the key's (`Key<T>`), each with its JSON schema
//! where the type derives `schemars::JsonSchema`, and by name where it
//! does not (the build never fails for want of a schema).
//!
//! `#[subscriber]` asks each argument type through [`DescribeProbe`],
//! resolved by method lookup on the concrete type, as `StateProbe` is:
//! `(&&&DescribeProbe::<A>::new()).describes()` finds
//! [`DescribedWithSchema`] by value when `A` is one of those types and its
//! `T` has a schema, [`DescribedWithoutSchema`] one dereference later when
//! it has none, and [`DescribesNothing`] for every other argument.

use std::marker::PhantomData;

use schemars::{JsonSchema, Schema, SchemaGenerator};

use crate::batch::Batch;
use crate::extract::{Json, Key};

/// The type a part of the message (payload or key) is decoded to, and how
/// to make its schema if it has one.
#[derive(Clone, Copy)]
pub struct Part {
    pub(crate) type_name: &'static str,
    pub(crate) schema: Option<fn(&mut SchemaGenerator) -> Schema>,
}

impl std::fmt::Debug for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Part")
            .field("type_name", &self.type_name)
            .field("schema", &self.schema.is_some())
            .finish()
    }
}

impl Part {
    fn with_schema<T: JsonSchema>() -> Self {
        Part {
            type_name: std::any::type_name::<T>(),
            schema: Some(|generator| generator.subschema_for::<T>()),
        }
    }

    fn named<T>() -> Self {
        Part {
            type_name: std::any::type_name::<T>(),
            schema: None,
        }
    }
}

/// What one handler argument (or, with `reply`, its return type) says of
/// the messages.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub enum Describes {
    Payload(Part),
    Key(Part),
    Reply(Part),
}

/// What a subscriber's handler says of the messages it reads and, with
/// `reply`, of those it publishes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Described {
    pub(crate) payload: Option<Part>,
    pub(crate) key: Option<Part>,
    pub(crate) reply: Option<Part>,
}

impl Described {
    pub(crate) fn add(&mut self, what: Describes) {
        match what {
            Describes::Payload(p) => self.payload = Some(p),
            Describes::Key(k) => self.key = Some(k),
            Describes::Reply(r) => self.reply = Some(r),
        }
    }

    pub(crate) fn payload<T: JsonSchema>(&mut self) {
        self.payload = Some(Part::with_schema::<T>());
    }
}

/// See the module's documentation.
#[doc(hidden)]
#[derive(Debug)]
pub struct DescribeProbe<A>(PhantomData<A>);

impl<A> DescribeProbe<A> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        DescribeProbe(PhantomData)
    }
}

/// A payload or key type with a schema.
#[doc(hidden)]
pub trait DescribedWithSchema {
    fn describes(&self) -> Option<Describes>;
}

/// A payload or key type without one: named only.
#[doc(hidden)]
pub trait DescribedWithoutSchema {
    fn describes(&self) -> Option<Describes>;
}

/// Every other argument.
#[doc(hidden)]
pub trait DescribesNothing {
    fn describes(&self) -> Option<Describes> {
        None
    }
}

impl<A> DescribesNothing for DescribeProbe<A> {}

/// [`DescribeProbe`] for the return type of a handler with `reply`.
#[doc(hidden)]
#[derive(Debug)]
pub struct ReplyProbe<A>(PhantomData<A>);

impl<A> ReplyProbe<A> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        ReplyProbe(PhantomData)
    }
}

impl<A> DescribesNothing for ReplyProbe<A> {}

/// The impls of both levels for a type whose `T` is the payload, key or
/// reply (`$probe` the probe it is asked through).
macro_rules! describe {
    ($($probe:ident[$arg:ty] => $part:ident),* $(,)?) => {
        $(
            impl<T: JsonSchema> DescribedWithSchema for &&$probe<$arg> {
                fn describes(&self) -> Option<Describes> {
                    Some(Describes::$part(Part::with_schema::<T>()))
                }
            }

            impl<T> DescribedWithoutSchema for &$probe<$arg> {
                fn describes(&self) -> Option<Describes> {
                    Some(Describes::$part(Part::named::<T>()))
                }
            }
        )*
    };
}

describe! {
    DescribeProbe[Json<T>] => Payload,
    DescribeProbe[Option<Json<T>>] => Payload,
    DescribeProbe[Batch<Json<T>>] => Payload,
    DescribeProbe[Key<T>] => Key,
}

/// A reply's payload: what `Json<T>` publishes, alone or in a `Result` (its
/// `Ok`), an `Option` or a `Vec`.
macro_rules! describe_reply {
    ($($arg:ty),* $(,)?) => {
        $(
            impl<T: JsonSchema, E> DescribedWithSchema for &&ReplyProbe<$arg> {
                fn describes(&self) -> Option<Describes> {
                    Some(Describes::Reply(Part::with_schema::<T>()))
                }
            }

            impl<T, E> DescribedWithoutSchema for &ReplyProbe<$arg> {
                fn describes(&self) -> Option<Describes> {
                    Some(Describes::Reply(Part::named::<T>()))
                }
            }
        )*
    };
}

describe! {
    ReplyProbe[Json<T>] => Reply,
    ReplyProbe[Option<Json<T>>] => Reply,
    ReplyProbe[Vec<Json<T>>] => Reply,
}

describe_reply! {
    Result<Json<T>, E>,
    Result<Option<Json<T>>, E>,
    Result<Vec<Json<T>>, E>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(schemars::JsonSchema)]
    #[allow(dead_code)]
    struct WithSchema {
        id: u64,
    }

    #[allow(dead_code)]
    struct WithoutSchema;

    fn payload_of(d: Option<Describes>) -> Option<(&'static str, bool)> {
        match d {
            Some(Describes::Payload(p)) => Some((p.type_name, p.schema.is_some())),
            _ => None,
        }
    }

    // The borrows are the point: they pick the trait, as in generated code.
    #[allow(clippy::needless_borrow)]
    #[test]
    fn each_argument_type_says_what_it_is() {
        let with = (&&&DescribeProbe::<Json<WithSchema>>::new()).describes();
        assert_eq!(payload_of(with).map(|(_, s)| s), Some(true));
        let without = (&&&DescribeProbe::<Json<WithoutSchema>>::new()).describes();
        assert_eq!(payload_of(without).map(|(_, s)| s), Some(false));
        let batch = (&&&DescribeProbe::<Batch<Json<WithSchema>>>::new()).describes();
        assert_eq!(payload_of(batch).map(|(_, s)| s), Some(true));
        let key = (&&&DescribeProbe::<Key<String>>::new()).describes();
        assert!(matches!(key, Some(Describes::Key(Part { schema: Some(_), .. }))));
        let other = (&&&DescribeProbe::<crate::Meta>::new()).describes();
        assert!(other.is_none());
        let reply = (&&&ReplyProbe::<Result<Json<WithSchema>, std::io::Error>>::new()).describes();
        assert!(matches!(reply, Some(Describes::Reply(Part { schema: Some(_), .. }))));
        let reply = (&&&ReplyProbe::<Vec<Json<WithoutSchema>>>::new()).describes();
        assert!(matches!(reply, Some(Describes::Reply(Part { schema: None, .. }))));
        let bytes = (&&&ReplyProbe::<crate::Bytes>::new()).describes();
        assert!(bytes.is_none());
    }
}
