//! Application state: values built once (a connection pool, an HTTP client,
//! a cache) that handlers take as a [`State<T>`] argument.
//!
//! An app holds at most one value per type. `#[subscriber]` records which
//! `State<T>` types each handler takes, and `App::start` refuses to start,
//! naming the handler and the type, when one is not provided: a missing
//! state is never found at the first message.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::context::Context;
use crate::extract::FromMessage;
use crate::message::{Message, PayloadError};

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

/// The values an app provides, one per type.
#[derive(Clone, Default)]
pub(crate) struct States(HashMap<TypeId, (&'static str, Arc<dyn Any + Send + Sync>)>);

impl std::fmt::Debug for States {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.values().map(|(name, _)| name)).finish()
    }
}

impl States {
    pub(crate) fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        self.0
            .insert(TypeId::of::<T>(), (std::any::type_name::<T>(), Arc::new(value)));
    }

    pub(crate) fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.0
            .get(&TypeId::of::<T>())
            .and_then(|(_, v)| v.downcast_ref::<T>())
            .cloned()
    }

    pub(crate) fn has(&self, required: &StateRequirement) -> bool {
        self.0.contains_key(&required.type_id)
    }

    pub(crate) fn extend(&mut self, other: States) {
        self.0.extend(other.0);
    }
}

/// A state type a handler takes, as `#[subscriber]` records it.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateRequirement {
    pub(crate) type_id: TypeId,
    /// The type's name, for the start-up error.
    pub(crate) type_name: &'static str,
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

impl StateRequirement {
    pub(crate) fn of<T: 'static>() -> Self {
        StateRequirement {
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
        }
    }
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

    #[test]
    fn a_state_is_found_by_its_type() {
        let mut s = States::default();
        s.insert(7u32);
        s.insert(String::from("x"));
        assert_eq!(s.get::<u32>(), Some(7));
        assert_eq!(s.get::<String>().as_deref(), Some("x"));
        assert_eq!(s.get::<u64>(), None);
    }
}
