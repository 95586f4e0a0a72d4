//! Application state: values built once (a connection pool, an HTTP client,
//! a cache) that handlers take as a `State<T>` argument (an extractor, in
//! `extract`).
//!
//! An app holds at most one value per type. `#[subscriber]` records which
//! `State<T>` types each handler takes, and `App::start` refuses to start,
//! naming the handler and the type, when one is not provided: a missing
//! state is never found at the first message.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

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

impl StateRequirement {
    pub(crate) fn of<T: 'static>() -> Self {
        StateRequirement {
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
