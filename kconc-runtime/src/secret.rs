//! Secrets: which librdkafka properties hold one, and formatting that
//! never shows their values. Logs, `--help`, `--list`, health and metrics
//! print properties only through these.

/// Whether a librdkafka property holds a secret that must never be printed.
pub(crate) fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "ssl.key",
        "keystore",
        "oauthbearer.config",
        "sasl.jaas",
        "token",
        "credential",
        "private",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// Formats properties with the values of secret ones replaced by `***`.
pub(crate) struct Redacted<'a>(pub(crate) &'a [(String, String)]);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(k, v)| (k, if is_secret(k) { "***" } else { v.as_str() })),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_recognised() {
        for k in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.location",
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.client.secret",
            "SASL.PASSWORD",
        ] {
            assert!(is_secret(k), "{k}");
        }
        for k in ["bootstrap.servers", "security.protocol", "sasl.username"] {
            assert!(!is_secret(k), "{k}");
        }
    }
}
