//! kizen-gateway: an authenticating reverse proxy that lets browsers upload files through the
//! Kizen API without ever holding the Kizen secrets.
//!
//! # The two request paths
//! - **Presign**, `GET /api/s3/presigned-post` ([`routes::presign`]): authenticate
//!   ([`auth`]), validate the query ([`validate`]), check the tier's quotas and spend the presign
//!   budget in one store step ([`quota`], [`rate_limit`], [`store`]), forward ([`upstream`]),
//!   record the issued upload ([`store`]), audit ([`observability::audit`]).
//! - **Confirm**, `POST /api/s3/success` ([`routes::confirm`]): authenticate, validate the form,
//!   spend the confirmation budget and claim the upload in one store step, forward, settle the
//!   claim ([`settle`]), audit.
//!
//! # Layers, each using only those below it
//! 1. Leaves: [`config`], [`secrets`], [`clock`], [`tls`], [`paths`], [`domain`] (an issued upload,
//!    its confirmation window, the quotas), [`observability`] (logs, metrics, traces, audit).
//! 2. Services, each with its own error type: [`auth`] (`AuthFailure`), [`validate`]
//!    (`FieldError`), [`quota`] (`QuotaExceeded`), [`rate_limit`], [`store`] (`StoreError`),
//!    [`upstream`] (`UpstreamFailure`), and [`settle`] and [`reload`] built on them.
//! 3. [`error`]: every service error mapped to one HTTP problem, from one table of codes.
//! 4. HTTP: [`state`] (`AppState(Arc<App>)`), [`http_guard`] (strict framing, the route
//!    allowlist), [`routes`] (the handlers and their typed extractors), [`router`] (every
//!    middleware in order), [`admin`] (health, readiness, metrics, OpenAPI), [`server`] (the accept
//!    loop), [`run`] (listeners, background tasks, shutdown).
//! 5. Dev mode ([`dev`], with the local stand-in of the Kizen API, [`standin`]), behind the
//!    `dev` feature, on by default.
//! 6. `fuzzing`: the entry points of the fuzz targets (`fuzz/`) and of the corpus replay test,
//!    above every layer, behind the `fuzzing` feature (never in a production build).
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod clock;
pub mod config;
#[cfg(feature = "dev")]
pub mod dev;
pub mod domain;
pub mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod http_guard;
pub mod observability;
pub mod paths;
pub mod quota;
pub mod rate_limit;
pub mod reload;
pub mod router;
pub mod routes;
pub mod run;
pub mod secrets;
pub mod server;
pub mod settle;
#[cfg(feature = "dev")]
pub mod standin;
pub mod state;
pub mod store;
pub mod tls;
pub mod upstream;
pub mod validate;

#[cfg(test)]
pub(crate) mod testing;

pub use config::Config;
pub use router::app;
pub use run::{run, run_with_admin, shutdown_signal};
pub use state::{App, AppState};
