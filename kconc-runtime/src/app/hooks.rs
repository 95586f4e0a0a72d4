//! Start-up and shutdown hooks: code that runs once before consuming
//! starts (building the app's state, seeding a demo) and once after the
//! drain and final commit (closing what the state holds).

use std::future::Future;
use std::pin::Pin;

use rdkafka::ClientConfig;

use super::{App, ShutdownHandle};
use crate::handler::BoxError;
use crate::state::{StateRequirement, States};

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
pub(crate) type StartHook = Box<dyn FnOnce(Setup) -> BoxFuture<Result<States, BoxError>> + Send>;
pub(crate) type StopHook = Box<dyn FnOnce(Setup) -> BoxFuture<Result<(), BoxError>> + Send>;

/// What a hook is given: where the cluster is (the embedded one's address
/// when the brokers are `embedded`), the app's librdkafka properties, and
/// the state built so far.
#[derive(Clone)]
pub struct Setup {
    pub(crate) bootstrap: String,
    pub(crate) embedded: bool,
    pub(crate) properties: Vec<(String, String)>,
    pub(crate) states: States,
    pub(crate) shutdown: ShutdownHandle,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("bootstrap", &self.bootstrap)
            .field("embedded", &self.embedded)
            .field("properties", &crate::secret::Redacted(&self.properties))
            .field("states", &self.states)
            .finish()
    }
}

impl Setup {
    /// The bootstrap servers the subscribers connect to.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Whether they are the embedded (in-process mock) cluster's.
    pub fn is_embedded(&self) -> bool {
        self.embedded
    }

    /// A client configuration for the same cluster: the bootstrap servers
    /// and the app-wide librdkafka properties (security settings included),
    /// for a producer or admin client of the hook's own.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// A handle that starts the app's graceful shutdown (a demo that stops
    /// once its work is done, say).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// The app's state of type `T` (given with [`App::state`], or built by
    /// an earlier [`App::state_from`]).
    pub fn state<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.states.get::<T>()
    }
}

impl App {
    /// Builds a state value at start-up, before any consumer joins its
    /// group: after the configuration is resolved and (with `embedded`
    /// brokers) the embedded cluster started. `f` gets the [`Setup`]; if
    /// it fails, or takes longer than the longest `shutdown_timeout`,
    /// start-up fails with its error and nothing is consumed. Handlers
    /// take the value as a [`State<T>`](crate::State). What
    /// `main!(state = f)` calls.
    ///
    /// Hooks run in the order they were added, each seeing the state
    /// built before it.
    #[must_use]
    pub fn state_from<F, Fut, T, E>(mut self, f: F) -> Self
    where
        F: FnOnce(Setup) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Clone + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        self.promised_states.push(StateRequirement::of::<T>());
        self.start_hooks.push(Box::new(move |setup| {
            Box::pin(async move {
                let value = f(setup).await.map_err(Into::into)?;
                let mut states = States::default();
                states.insert(value);
                Ok(states)
            })
        }));
        self
    }

    /// Runs `f` once at start-up, as [`App::state_from`] does, for work
    /// that builds no state (seeding a demo, checking a dependency). What
    /// `main!(on_start = f)` calls.
    #[must_use]
    pub fn on_start<F, Fut, E>(mut self, f: F) -> Self
    where
        F: FnOnce(Setup) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.start_hooks.push(Box::new(move |setup| {
            Box::pin(async move {
                f(setup).await.map_err(Into::into)?;
                Ok(States::default())
            })
        }));
        self
    }

    /// Runs `f` once at shutdown, after every subscriber has drained,
    /// made its final commit and closed (to flush and close what the state
    /// holds), in what is left of the shutdown's one deadline (the longest
    /// `shutdown_timeout` plus half of [`SHUTDOWN_MARGIN`](crate::SHUTDOWN_MARGIN)
    /// from the shutdown's start, shared with the drain and with the other
    /// hooks): a hook still running then is dropped, and that is logged. If
    /// it fails (or runs out of time), the later hooks still run (in what
    /// is left), and
    /// [`Running::run_until_signal`](crate::Running::run_until_signal) (and
    /// so a `main!()` program's exit code) reports the first failure. It
    /// runs when the app is stopped through
    /// [`Running::shutdown`](crate::Running::shutdown),
    /// [`Running::wait`](crate::Running::wait) or a signal, not when a
    /// `Running` is dropped. What `main!(on_stop = f)` calls.
    #[must_use]
    pub fn on_stop<F, Fut, E>(mut self, f: F) -> Self
    where
        F: FnOnce(Setup) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.stop_hooks.push(Box::new(move |setup| {
            Box::pin(async move { f(setup).await.map_err(Into::into) })
        }));
        self
    }
}
