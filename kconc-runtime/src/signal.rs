//! Shutdown signals: the first SIGINT/SIGTERM starts a graceful shutdown, a
//! second one exits at once (committed offsets are still safe: only finished
//! prefixes were ever committed).
//!
//! One task listens from start to end, so no signal falls between two
//! listeners: a signal that comes while a shutdown started in code
//! ([`ShutdownHandle`](crate::ShutdownHandle)) already drains counts as the
//! first, and the next one exits.

use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// The process's SIGTERM and SIGINT (Ctrl-C elsewhere), listened to from
/// the moment this is made.
pub(crate) struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening (installs tokio's handlers).
    pub(crate) fn listen() -> Result<Self, Error> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate()).map_err(Error::Signal)?,
                int: signal(SignalKind::interrupt()).map_err(Error::Signal)?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// The next signal's name and the status a process killed by it exits
    /// with (128 + its number, as shells report it).
    async fn next(&mut self) -> (&'static str, i32) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => ("SIGTERM", exit_status(libc_signal::SIGTERM)),
                _ = self.int.recv() => ("SIGINT", exit_status(libc_signal::SIGINT)),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            ("Ctrl-C", exit_status(libc_signal::SIGINT))
        }
    }

    /// Serves for the rest of the program: the first signal cancels
    /// `shutdown` (unless a shutdown already began), the next exits the
    /// process at once with 128 + its number (130 for SIGINT, 143 for
    /// SIGTERM).
    pub(crate) async fn serve(mut self, shutdown: CancellationToken) {
        let (first, _) = self.next().await;
        if shutdown.is_cancelled() {
            tracing::info!(
                signal = first,
                "already shutting down: draining in-flight handlers (send it again to exit at once)"
            );
        } else {
            tracing::info!(
                signal = first,
                "shutting down: draining in-flight handlers (send it again to exit at once)"
            );
            shutdown.cancel();
        }
        let (second, status) = self.next().await;
        tracing::warn!(
            signal = second,
            status,
            "second signal: exiting now without waiting for handlers"
        );
        std::process::exit(status);
    }
}

/// The signals' numbers (the same on every Unix tokio supports).
mod libc_signal {
    pub(super) const SIGINT: i32 = 2;
    pub(super) const SIGTERM: i32 = 15;
}

/// The exit status of a process that ends because of signal `number`.
fn exit_status(number: i32) -> i32 {
    128 + number
}
