//! Run-time configuration: where the cluster is, the consumer-group prefix and
//! which librdkafka properties to use, in layers where the later wins: code
//! (the `#[subscriber]` attribute, `App`/`Subscriber` setters), a properties
//! file (`--config`), `KCONC_*` environment variables, command-line flags.
//! Every layer is checked at start-up, and a bad setting fails naming where it
//! came from (`FILE:LINE`, the variable, the flag). Secret properties are
//! passed to librdkafka and never printed.

mod cli;
mod properties;

pub use cli::*;
pub(crate) use properties::*;

/// The value of `--brokers`/`KCONC_BROKERS` that starts the embedded cluster.
pub const EMBEDDED: &str = "embedded";
/// Where the cluster is when nothing says otherwise (as librdkafka and Spring do).
pub(crate) const DEFAULT_BROKERS: &str = "localhost:9092";

pub(crate) use crate::secret::is_secret;
use crate::secret::Redacted;

/// What the configuration's unit tests share.
#[cfg(test)]
mod test_util {
    use crate::error::Error;

    /// Properties from pairs.
    pub(super) fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    /// The error a configuration step returned, as text.
    pub(super) fn config_err(r: Result<impl std::fmt::Debug, Error>) -> String {
        match r {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(e) => e.to_string(),
        }
    }
}
