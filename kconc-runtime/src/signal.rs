//! Shutdown signals: the first SIGINT/SIGTERM starts a graceful shutdown, a
//! second one exits at once (committed offsets are still safe: only finished
//! prefixes were ever committed).

use crate::Error;

/// Waits for SIGINT or SIGTERM.
pub(crate) async fn wait_for_signal() -> Result<&'static str, Error> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(Error::Signal)?;
        let mut int = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
        tokio::select! {
            _ = term.recv() => Ok("SIGTERM"),
            _ = int.recv() => Ok("SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map_err(Error::Signal)?;
        Ok("Ctrl-C")
    }
}

/// After the first signal: exit the process on the next one.
pub(crate) fn exit_on_second_signal() {
    tokio::spawn(async {
        if let Ok(name) = wait_for_signal().await {
            tracing::warn!(signal = name, "second signal: exiting now without waiting for handlers");
            std::process::exit(130);
        }
    });
}
