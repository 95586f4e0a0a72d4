//! OpenTelemetry (the `otel` feature): traces and metrics to the
//! semantic conventions for messaging (v1.44), exported over OTLP.
//!
//! `main!()` calls [`init_from_env`] when the feature is on, so a program
//! needs no code: the standard `OTEL_*` environment variables configure
//! the export (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`,
//! `OTEL_SDK_DISABLED`, ...). A program that builds its own exporters (or
//! a test, with the SDK's in-memory ones) calls [`init_with`] before it
//! starts an [`App`](crate::App).
//!
//! What kconc reports:
//! - a `process {topic}` span of kind CONSUMER per handler call (per batch
//!   for a batch handler), linked to the producer's span from the
//!   message's `traceparent` header (or its child, with
//!   `--trace-relation parent`);
//! - a `send {topic}` span of kind PRODUCER per reply (or `send_json`),
//!   whose context the reply carries on in its `traceparent` header;
//! - a `commit` span of kind CLIENT per offset commit (a settle
//!   operation);
//! - the metrics `messaging.process.duration`,
//!   `messaging.client.consumed.messages`,
//!   `messaging.client.operation.duration` (commits) and
//!   `messaging.client.sent.messages` (replies and sends).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

pub use opentelemetry;
pub use opentelemetry_sdk;

use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

use crate::error::Error;

/// The bucket boundaries the conventions advise for
/// `messaging.process.duration` and `messaging.client.operation.duration`
/// (seconds).
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// kconc's instruments, made once from the global meter provider.
pub(crate) struct Instruments {
    pub(crate) process_duration: Histogram<f64>,
    pub(crate) consumed: Counter<u64>,
    pub(crate) operation_duration: Histogram<f64>,
    pub(crate) sent: Counter<u64>,
}

static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

/// Whether a meter provider was installed ([`init_with`]): until then no
/// measurement is made (none would go anywhere).
static METERED: AtomicBool = AtomicBool::new(false);

/// kconc's instruments, made from the meter provider [`init_with`]
/// installed (install it before an app starts); `None` without one.
pub(crate) fn instruments() -> Option<&'static Instruments> {
    if !METERED.load(Ordering::Relaxed) {
        return None;
    }
    Some(INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("kconc");
        Instruments {
            process_duration: meter
                .f64_histogram("messaging.process.duration")
                .with_unit("s")
                .with_description("Duration of processing operation.")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            consumed: meter
                .u64_counter("messaging.client.consumed.messages")
                .with_unit("{message}")
                .with_description("Number of messages that were delivered to the application.")
                .build(),
            operation_duration: meter
                .f64_histogram("messaging.client.operation.duration")
                .with_unit("s")
                .with_description("Duration of messaging operation initiated by a producer or consumer client.")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            sent: meter
                .u64_counter("messaging.client.sent.messages")
                .with_unit("{message}")
                .with_description("Number of messages producer attempted to send to the broker.")
                .build(),
        }
    }))
}

/// How the span of a message's processing relates to its producer's
/// span, from now on (`main!()` sets `--trace-relation`'s).
pub fn set_trace_relation(relation: crate::TraceRelation) {
    crate::telemetry::set_relation(relation);
}

/// Keeps the exporters running; dropping it flushes what they hold and
/// shuts them down (`main!()` does so after the app has stopped).
#[must_use = "dropping the guard shuts the exporters down"]
#[derive(Debug, Default)]
pub struct OtelGuard {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

impl Drop for OtelGuard {
    fn drop(&mut self) {
        if let Some(p) = self.tracer_provider.take() {
            let _ = p.shutdown();
        }
        if let Some(p) = self.meter_provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the `tracing` subscriber `main!()` installs (log lines to
/// stderr, filtered by `log_filter`, else `RUST_LOG`, else `info`) with
/// spans going to `tracer_provider`, and makes `meter_provider` the global
/// one kconc's metrics go to. Either may be left out. Fails if a
/// subscriber is installed already, or on a bad filter.
///
/// The spans exported are kconc's (process, send, commit: at the `debug`
/// level of `kconc_runtime`) and every span and event at `info` or above,
/// the handlers' own among them (as children of the process span).
pub fn init_with(
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    log_filter: Option<&str>,
) -> Result<OtelGuard, Error> {
    let fmt = crate::config::log_lines(log_filter)?;
    let otel = tracer_provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("kconc"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_level(false)
            .with_target(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                *meta.level() <= tracing::Level::INFO || (meta.is_span() && meta.target().starts_with("kconc_runtime"))
            }))
    });
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| Error::Config(format!("cannot install the tracing subscriber: {e}")))?;
    if let Some(p) = &tracer_provider {
        opentelemetry::global::set_tracer_provider(p.clone());
    }
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    if let Some(p) = &meter_provider {
        opentelemetry::global::set_meter_provider(p.clone());
        METERED.store(true, Ordering::Relaxed);
    }
    Ok(OtelGuard {
        tracer_provider,
        meter_provider,
    })
}

/// What `main!()` installs with the `otel` feature: [`init_with`] OTLP
/// exporters over HTTP (protobuf) configured by the standard environment
/// variables. `OTEL_SDK_DISABLED=true` leaves both out, and
/// `OTEL_TRACES_EXPORTER=none` / `OTEL_METRICS_EXPORTER=none` one of
/// them. The service name is `OTEL_SERVICE_NAME`, else that of
/// `OTEL_RESOURCE_ATTRIBUTES`, else the program's. Fails naming the
/// variable that asks for what is not built in (the `grpc` and
/// `http/json` protocols, other exporters).
pub fn init_from_env(log_filter: Option<&str>) -> Result<OtelGuard, Error> {
    init_from(log_filter, &|name| std::env::var(name).ok())
}

fn init_from(log_filter: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Result<OtelGuard, Error> {
    let wanted = Wanted::from_env(env)?;
    let resource = resource(env);
    let tracer_provider = match wanted.traces {
        false => None,
        true => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
                .map_err(|e| Error::Config(format!("OpenTelemetry span exporter: {e}")))?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource.clone())
                    .build(),
            )
        }
    };
    let meter_provider = match wanted.metrics {
        false => None,
        true => {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .build()
                .map_err(|e| Error::Config(format!("OpenTelemetry metric exporter: {e}")))?;
            Some(
                SdkMeterProvider::builder()
                    .with_periodic_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
    };
    init_with(tracer_provider, meter_provider, log_filter)
}

/// Which signals the environment asks to export.
#[derive(Debug, PartialEq, Eq)]
struct Wanted {
    traces: bool,
    metrics: bool,
}

impl Wanted {
    fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, Error> {
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(Wanted {
                traces: false,
                metrics: false,
            });
        }
        let exporter = |name: &str| -> Result<bool, Error> {
            match env(name).as_deref().map(str::trim) {
                None | Some("") | Some("otlp") => Ok(true),
                Some("none") => Ok(false),
                Some(other) => Err(Error::Config(format!(
                    "{name}={other}: kconc exports over OTLP only; use `otlp` or `none`"
                ))),
            }
        };
        for name in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        ] {
            match env(name).as_deref().map(str::trim) {
                None | Some("") | Some("http/protobuf") => {}
                Some(other) => {
                    return Err(Error::Config(format!(
                        "{name}={other}: kconc's OTLP exporter speaks `http/protobuf` only \
                         (an OpenTelemetry Collector takes it on port 4318)"
                    )))
                }
            }
        }
        Ok(Wanted {
            traces: exporter("OTEL_TRACES_EXPORTER")?,
            metrics: exporter("OTEL_METRICS_EXPORTER")?,
        })
    }
}

/// The SDK's resource from the environment, named after the program when
/// the environment gives no service name.
fn resource(env: &dyn Fn(&str) -> Option<String>) -> opentelemetry_sdk::Resource {
    let named = env("OTEL_SERVICE_NAME").is_some_and(|n| !n.trim().is_empty())
        || env("OTEL_RESOURCE_ATTRIBUTES")
            .is_some_and(|a| a.split(',').any(|kv| kv.trim_start().starts_with("service.name=")));
    let builder = opentelemetry_sdk::Resource::builder();
    if named {
        builder.build()
    } else {
        builder.with_service_name(crate::asyncapi::program_title()).build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn the_environment_chooses_the_signals() {
        let both = Wanted {
            traces: true,
            metrics: true,
        };
        assert_eq!(Wanted::from_env(&env(&[])).ok(), Some(both));
        let none = Wanted::from_env(&env(&[("OTEL_SDK_DISABLED", "true")])).ok();
        assert_eq!(
            none,
            Some(Wanted {
                traces: false,
                metrics: false
            })
        );
        let metrics_only = Wanted::from_env(&env(&[("OTEL_TRACES_EXPORTER", "none")])).ok();
        assert_eq!(
            metrics_only,
            Some(Wanted {
                traces: false,
                metrics: true
            })
        );
    }

    #[test]
    fn what_is_not_built_in_is_refused_naming_the_variable() {
        for (vars, needle) in [
            (
                &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")][..],
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")][..],
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/json",
            ),
            (
                &[("OTEL_METRICS_EXPORTER", "prometheus")][..],
                "OTEL_METRICS_EXPORTER=prometheus",
            ),
        ] {
            let vars: &'static [(&'static str, &'static str)] = vars;
            match Wanted::from_env(&env(vars)) {
                Err(e) => assert!(e.to_string().contains(needle), "{e}"),
                Ok(w) => panic!("{needle}: accepted as {w:?}"),
            }
        }
    }

    #[test]
    fn the_service_is_named_after_the_program_unless_the_environment_names_it() {
        let name = |vars: &'static [(&'static str, &'static str)]| {
            resource(&env(vars))
                .get(&opentelemetry::Key::from_static_str("service.name"))
                .map(|v| v.to_string())
        };
        assert_eq!(name(&[]), Some(crate::asyncapi::program_title()));
        assert_ne!(
            name(&[("OTEL_SERVICE_NAME", "billing")]),
            Some(crate::asyncapi::program_title())
        );
    }
}
