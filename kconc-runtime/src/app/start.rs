//! Starting: every check before anything connects, the embedded cluster,
//! the missing-topic check, one engine per subscriber, the watcher and the
//! HTTP endpoint.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::hooks::{Setup, StopHook};
use super::running::HttpServer;
use super::{App, Running, ShutdownHandle};
use crate::config::{self, EMBEDDED};
use crate::embedded::EmbeddedCluster;
use crate::engine;
use crate::error::Error;
use crate::health;
use crate::subscriber::Subscriber;
use crate::watch::{self, ClusterWatch, Watched};

/// An app checked and connected to its cluster (the embedded one started),
/// its consumers not yet created: where the start-up hooks run.
struct Prepared {
    runtime: tokio::runtime::Handle,
    subs: Vec<Subscriber>,
    listener: Option<(std::net::TcpListener, std::net::SocketAddr)>,
    /// The AsyncAPI document the HTTP endpoint serves, if there is one.
    asyncapi: Option<String>,
    embedded: Option<EmbeddedCluster>,
    bootstrap: String,
    configs: Vec<rdkafka::ClientConfig>,
    cluster: std::sync::Arc<ClusterWatch>,
    setup: Setup,
    thresholds: crate::health::HealthThresholds,
    stop_hooks: Vec<StopHook>,
    shutdown_timeout: std::time::Duration,
    /// Cancelled to shut down (a start-up hook may hold a handle on it).
    token: CancellationToken,
}

impl App {
    /// Starts every subscriber and returns at once. Must be called within a
    /// tokio runtime (handlers run on it). Fails, naming the setting, on
    /// invalid configuration; with `embedded` brokers it first starts the mock
    /// cluster and creates the subscribed topics on it. An app with start-up
    /// hooks ([`App::state_from`], [`App::on_start`]) starts with
    /// [`App::launch`] instead, which can await them.
    pub fn start(self) -> Result<Running, Error> {
        if !self.start_hooks.is_empty() {
            return Err(Error::Config(
                "App::start cannot run start-up hooks (App::state_from, App::on_start): \
                 start with App::launch().await or App::run().await"
                    .into(),
            ));
        }
        self.prepare()?.launch()
    }

    /// Starts every subscriber, as [`App::start`] does, after running the
    /// start-up hooks in order, each bounded by the longest
    /// `shutdown_timeout`: if one fails, start-up fails with its error
    /// (the embedded cluster, if any, is dropped) and nothing is consumed.
    pub async fn launch(mut self) -> Result<Running, Error> {
        let hooks = std::mem::take(&mut self.start_hooks);
        let mut prepared = self.prepare()?;
        for hook in hooks {
            let limit = prepared.shutdown_timeout;
            let states = match tokio::time::timeout(limit, hook(prepared.setup.clone())).await {
                Ok(Ok(states)) => states,
                Ok(Err(e)) => return Err(Error::StartHook(e)),
                Err(_) => {
                    return Err(Error::StartHook(
                        format!("did not finish within {limit:?} (the longest shutdown_timeout)").into(),
                    ))
                }
            };
            prepared.setup.states.extend(states);
        }
        prepared.launch()
    }

    /// Every check, then the embedded cluster and the subscribed topics'
    /// existence: everything before a consumer is created.
    fn prepare(self) -> Result<Prepared, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let subs = self.preflight()?;
        // Bound before anything connects, so a bad or busy address fails
        // with nothing to tear down.
        let listener = match &self.http {
            Some(addr) => Some(health::bind(addr)?),
            None => None,
        };
        let asyncapi = listener
            .is_some()
            .then(|| self.asyncapi_of(&crate::asyncapi::program_title(), &subs).to_string());
        // The prefixed group is the one the consumer joins, commits under and logs.
        let subs: Vec<Subscriber> = subs
            .into_iter()
            .map(|s| {
                let mut s = s.clone();
                s.group = self.group_of(&s);
                s
            })
            .collect();
        let brokers = self.brokers_in_use().to_owned();
        let (embedded, bootstrap) = if brokers == EMBEDDED {
            let mut cluster = EmbeddedCluster::start(1)?;
            let partitions = self.embedded_partitions.unwrap_or(4);
            let mut topics: Vec<&str> = subs
                .iter()
                .flat_map(|s| {
                    s.topics
                        .iter()
                        .chain(s.settings.on_error.dead_letter_topic())
                        .chain(&s.settings.reply)
                })
                .chain(&self.embedded_topics)
                .map(String::as_str)
                .collect();
            topics.sort_unstable();
            topics.dedup();
            for t in topics {
                cluster.create_topic(t, partitions)?;
            }
            tracing::warn!(
                "EMBEDDED BROKER: using librdkafka's in-process mock cluster, NOT a real Kafka cluster; \
                 data lives in memory and vanishes when the process exits. Set --brokers or KCONC_BROKERS for a real one."
            );
            tracing::info!(
                "embedded broker at {b} (a main!() program sends to it with: --brokers {b} produce TOPIC KEY=VALUE)",
                b = cluster.bootstrap_servers()
            );
            if let Some(path) = &self.embedded_address_file {
                cluster.write_address_file(path)?;
            }
            let b = cluster.bootstrap_servers().to_owned();
            (Some(cluster), b)
        } else {
            (None, brokers)
        };
        let configs: Vec<rdkafka::ClientConfig> = subs
            .iter()
            .map(|s| config::consumer_config(&bootstrap, s, &self.properties, &self.run_properties))
            .collect();
        let cluster = ClusterWatch::new(&bootstrap);
        if !self.wait_for_topics {
            check_topics_exist(&subs, &configs, &cluster)?;
        }
        let shutdown_timeout = subs
            .iter()
            .map(|s| s.settings.shutdown_timeout)
            .max()
            .unwrap_or_default();
        let token = CancellationToken::new();
        let setup = Setup {
            bootstrap: bootstrap.clone(),
            embedded: embedded.is_some(),
            properties: config::merge_properties(&[&self.properties, &self.run_properties]),
            states: self.states,
            shutdown: ShutdownHandle { token: token.clone() },
        };
        Ok(Prepared {
            runtime,
            subs,
            listener,
            asyncapi,
            embedded,
            bootstrap,
            configs,
            cluster,
            setup,
            thresholds: self.thresholds,
            stop_hooks: self.stop_hooks,
            shutdown_timeout,
            token,
        })
    }
}

impl Prepared {
    /// Creates the consumers and starts their engines, the watcher and the
    /// HTTP endpoint.
    fn launch(self) -> Result<Running, Error> {
        let Prepared {
            runtime,
            mut subs,
            listener,
            asyncapi,
            embedded,
            bootstrap,
            configs,
            cluster,
            setup,
            thresholds,
            stop_hooks,
            shutdown_timeout,
            token,
        } = self;
        for s in &mut subs {
            s.states = setup.states.clone();
        }
        let mut runners = Vec::new();
        for (s, cfg) in subs.iter().zip(configs.iter().cloned()) {
            match engine::start(s, cfg, token.child_token(), runtime.clone(), cluster.clone()) {
                Ok(r) => runners.push(r),
                Err(e) => {
                    token.cancel();
                    return Err(e);
                }
            }
        }
        let watched: Vec<Watched> = runners
            .iter()
            .zip(&subs)
            .map(|(r, s)| Watched {
                name: r.name.clone(),
                group: s.group.clone(),
                topics: s.topics.clone(),
                produces_to: s.produces_to(),
                stats: r.stats.clone(),
                cluster: cluster.clone(),
            })
            .collect();
        if let Some(first) = configs.into_iter().next() {
            watch::spawn(first, cluster, watched.clone(), token.clone(), &runtime);
        }
        let http = match listener {
            None => None,
            Some(listener) => {
                let stop = CancellationToken::new();
                let asyncapi = asyncapi.unwrap_or_default();
                match health::serve(
                    listener,
                    watched.clone(),
                    (thresholds, asyncapi),
                    stop.clone(),
                    &runtime,
                ) {
                    Ok((local, task)) => Some(HttpServer { local, task, stop }),
                    Err(e) => {
                        token.cancel();
                        return Err(e);
                    }
                }
            }
        };
        Ok(Running {
            token,
            runners,
            shutdown_timeout,
            embedded,
            bootstrap,
            watched,
            thresholds,
            http,
            stop_hooks,
            setup,
        })
    }
}

impl App {
    /// Starts every subscriber and runs until SIGINT or SIGTERM, then shuts
    /// down gracefully (a second signal exits at once).
    pub async fn run(self) -> Result<(), Error> {
        self.launch().await?.run_until_signal().await
    }
}

impl Running {
    /// Runs until SIGINT or SIGTERM (or a [`ShutdownHandle::shutdown`](crate::ShutdownHandle::shutdown)),
    /// then shuts down gracefully; a second signal exits at once. What
    /// [`App::run`] does after [`App::start`], for a program that wants the
    /// [`Running`] handle (its stats, its assignment) meanwhile.
    ///
    /// Returns once every subscriber has stopped, or at the latest
    /// [`SHUTDOWN_MARGIN`](crate::SHUTDOWN_MARGIN) after the longest `shutdown_timeout` since the
    /// shutdown began. If it cannot listen for signals, it shuts down
    /// first and then returns the error.
    pub async fn run_until_signal(self) -> Result<(), Error> {
        let signals = match crate::signal::Signals::listen() {
            Ok(signals) => signals,
            Err(e) => {
                self.shutdown().await;
                return Err(e);
            }
        };
        // The listener serves until the process exits; should it die (a
        // panic), signals would be ignored: the app shuts down instead.
        let listener = tokio::spawn(signals.serve(self.token.clone()));
        let (token, died) = (self.token.clone(), Arc::new(AtomicBool::new(false)));
        let watch = died.clone();
        tokio::spawn(async move {
            if listener.await.is_err_and(|e| e.is_panic()) {
                tracing::error!("the shutdown signal listener panicked: shutting down");
                watch.store(true, Ordering::Relaxed);
                token.cancel();
            }
        });
        let result = self.finish().await.1;
        if died.load(Ordering::Relaxed) {
            return result.and(Err(Error::Signal(std::io::Error::other(
                "the signal listener panicked",
            ))));
        }
        result
    }
}

/// The start-up check of [`App::wait_for_topics`]: fails naming every topic
/// the cluster says does not exist among those the subscribers consume
/// (unless a subscriber's consumer may create it,
/// `allow.auto.create.topics`), reply to and dead-letter to: a reply or a
/// dead letter to a missing topic is never acknowledged, so each message
/// would fail at its first reply or dead letter instead.
fn check_topics_exist(
    subs: &[Subscriber],
    configs: &[rdkafka::ClientConfig],
    cluster: &std::sync::Arc<ClusterWatch>,
) -> Result<(), Error> {
    let mut topics: Vec<String> = subs
        .iter()
        .zip(configs)
        .filter(|(_, c)| c.get("allow.auto.create.topics") != Some("true"))
        .flat_map(|(s, _)| s.topics.iter().cloned())
        .chain(subs.iter().flat_map(Subscriber::produces_to))
        .collect();
    topics.sort();
    topics.dedup();
    let Some(config) = configs.first() else {
        return Ok(());
    };
    if topics.is_empty() {
        return Ok(());
    }
    let Some(missing) = watch::missing_at_start(config, cluster, &topics) else {
        return Ok(());
    };
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::MissingTopics {
        missing: missing
            .into_iter()
            .map(|topic| {
                let uses = subs.iter().flat_map(|s| s.uses_of(&topic)).collect();
                (topic, uses)
            })
            .collect(),
        brokers: cluster.brokers().to_owned(),
    })
}
