//! Rotation without restart: the files behind `file:` secrets and the JWT key files are re-read
//! when their content changes (a Kubernetes Secret update swaps them) or on SIGHUP. Everything is
//! loaded first and swapped together; a broken new file keeps the old values in force and is
//! reported once in the log and in `kizen_gateway_reloads_total{result="failure"}`.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    path::PathBuf,
    sync::Mutex,
};

use crate::{
    auth::Verifier,
    config::Config,
    observability::metrics::{Metrics, ReloadLabels},
    secrets::SecretSource,
    upstream::{Credentials, UpstreamClient},
};

/// What a reload attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The files are as they were at the last look: nothing was loaded.
    Unchanged,
    /// New secrets and keys were loaded and put in force.
    Reloaded,
    /// Loading failed; the previous secrets and keys stay in force.
    Failed,
}

/// Remembers what the watched files held at the last look.
#[derive(Debug)]
pub struct Reloader {
    files: Vec<PathBuf>,
    last_seen: Mutex<u64>,
}

impl Reloader {
    /// Watches the files behind the configuration's `file:` secrets and its JWT public key files,
    /// taking their current content as already loaded.
    pub fn new(config: &Config) -> Self {
        let files = watched_files(config);
        let last_seen = Mutex::new(fingerprint(&files));
        Self { files, last_seen }
    }

    /// Whether there is any file to watch (otherwise the periodic check is not worth running).
    pub fn watches_files(&self) -> bool {
        !self.files.is_empty()
    }
}

fn watched_files(config: &Config) -> Vec<PathBuf> {
    let upstream = &config.upstream;
    let secrets = [&upstream.api_key, &upstream.business_id, &upstream.user_id]
        .into_iter()
        .chain(config.auth.keys.iter().filter_map(|k| k.secret.as_ref()));
    let mut files: Vec<PathBuf> = secrets
        .filter_map(|source| match source {
            SecretSource::File(path) => Some(path.clone()),
            _ => None,
        })
        .collect();
    files.extend(
        config
            .auth
            .keys
            .iter()
            .filter_map(|k| k.public_key_file.clone()),
    );
    files
}

/// A hash of the files' contents (an unreadable file hashes as such): cheap enough to take
/// every few seconds, as the files are a few bytes to a few kilobytes.
fn fingerprint(files: &[PathBuf]) -> u64 {
    let mut hasher = DefaultHasher::new();
    for path in files {
        std::fs::read(path).ok().hash(&mut hasher);
    }
    hasher.finish()
}

/// What a reload replaces: the upstream credentials and the verifier's static keys.
pub struct ReloadTargets<'a> {
    /// The configuration naming the secrets and key files to load.
    pub config: &'a Config,
    /// Receives the new Kizen credentials.
    pub upstream: &'a UpstreamClient,
    /// Receives the new static keys (and flushes its verified-token cache).
    pub verifier: &'a Verifier,
    /// Counts the attempt in `kizen_gateway_reloads_total`.
    pub metrics: &'a Metrics,
}

impl Reloader {
    /// Reloads secrets and keys when their files changed since the last look (or always, when
    /// `force`: SIGHUP). All or nothing.
    pub fn reload(
        &self,
        targets: ReloadTargets<'_>,
        source: &'static str,
        force: bool,
    ) -> ReloadOutcome {
        let ReloadTargets {
            config,
            upstream,
            verifier,
            metrics,
        } = targets;
        let seen = fingerprint(&self.files);
        {
            let mut last = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen == *last && !force {
                return ReloadOutcome::Unchanged;
            }
            // Remembered even when the load fails: a broken file is reported once, not per tick.
            *last = seen;
        }
        let loaded = Credentials::load(&config.upstream)
            .and_then(|credentials| Ok((credentials, verifier.load_static_keys(&config.auth)?)));
        let outcome = match loaded {
            Ok((credentials, keys)) => {
                upstream.replace_credentials(credentials);
                verifier.replace_static_keys(keys);
                tracing::info!(source, "secrets and keys reloaded");
                ReloadOutcome::Reloaded
            }
            Err(error) => {
                tracing::error!(source, %error, "reload failed; the previous secrets and keys stay in force");
                ReloadOutcome::Failed
            }
        };
        let result = if outcome == ReloadOutcome::Reloaded {
            "success"
        } else {
            "failure"
        };
        metrics
            .reloads
            .get_or_create(&ReloadLabels { source, result })
            .inc();
        outcome
    }
}
