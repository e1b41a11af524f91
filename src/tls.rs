//! The one process-wide rustls crypto provider, shared by every TLS client of the gateway (the
//! upstream, the JWKS fetcher, Redis, the OTLP exporter).

use std::sync::Once;

/// Installs aws-lc-rs, the provider jsonwebtoken verifies with, once per process.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}
