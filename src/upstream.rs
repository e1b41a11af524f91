//! The Kizen upstream. Every call is *constructed*: fixed method and path, re-encoded validated
//! parameters, the server-held credentials, and only allowlisted client headers. Answers are read
//! with a size cap, scanned for a leaked API key (also JSON-escaped or percent-encoded), and
//! reduced to allowlisted headers.

mod echo;

use std::sync::Once;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use bytes::{Bytes, BytesMut};
use reqwest::Url;

use crate::{
    auth::AuthenticatedUser,
    config::UpstreamConfig,
    error::{GatewayError, UpstreamFailure},
    secrets::SecretHeaderValue,
    store::IssuedUpload,
    validate::{ConfirmInput, PresignInput},
};

pub const PRESIGN_PATH: &str = "/api/s3/presigned-post";
pub const SUCCESS_PATH: &str = "/api/s3/success";

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static X_BUSINESS_ID: HeaderName = HeaderName::from_static("x-business-id");
static X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Upstream response headers a client may see. Everything else (hop-by-hop, cookies, `Location`,
/// anything that could name a secret) is dropped.
const RESPONSE_HEADER_ALLOWLIST: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    header::CONTENT_LANGUAGE,
    header::EXPIRES,
];

/// rustls needs one process-wide crypto provider: aws-lc-rs, the one jsonwebtoken verifies with.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// An upstream answer the client may see: 2xx, or a 4xx that describes the client's input.
#[derive(Debug, Clone)]
pub struct UpstreamAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl UpstreamAnswer {
    pub fn content_type(&self) -> Option<&str> {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
    }
}

/// The server-held credentials. Replaced whole when their files change (see [`crate::reload`]).
#[derive(Debug)]
pub struct Credentials {
    api_key: SecretHeaderValue,
    business_id: SecretHeaderValue,
    /// `None` when X-USER-ID comes from a claim of the end user's token.
    user_id: Option<SecretHeaderValue>,
}

impl Credentials {
    /// Reads every secret now. Errors name the option, never a value.
    pub fn load(config: &UpstreamConfig) -> Result<Self, String> {
        let user_id = match &config.user_id_claim {
            Some(_) => None,
            None => Some(
                config
                    .user_id
                    .load_header_value()
                    .map_err(|e| format!("upstream.user_id: {e}"))?,
            ),
        };
        Ok(Self {
            api_key: config
                .api_key
                .load_header_value()
                .map_err(|e| format!("upstream.api_key: {e}"))?,
            business_id: config
                .business_id
                .load_header_value()
                .map_err(|e| format!("upstream.business_id: {e}"))?,
            user_id,
        })
    }

    fn secrets(&self) -> impl Iterator<Item = &str> {
        [
            Some(&self.api_key),
            Some(&self.business_id),
            self.user_id.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(SecretHeaderValue::expose)
    }

    /// Whether a header value holds one of the secrets, as is or encoded (see [`echo`]).
    fn names_a_secret(&self, bytes: &[u8]) -> bool {
        let mut secrets: [&[u8]; 3] = [&[]; 3];
        for (slot, secret) in secrets.iter_mut().zip(self.secrets()) {
            *slot = secret.as_bytes();
        }
        echo::names_any(bytes, &secrets)
    }

    /// Bodies are scanned for the API key only, as is or encoded (see [`echo`]): the ids may
    /// legitimately appear in Kizen's data (the business in every S3 key it issues, the employee
    /// of an S3Object), the key never does.
    fn leaks_api_key(&self, body: &[u8]) -> bool {
        echo::names_any(body, &[self.api_key.expose().as_bytes()])
    }
}

pub struct UpstreamClient {
    client: reqwest::Client,
    presign_url: Url,
    success_url: Url,
    credentials: std::sync::RwLock<std::sync::Arc<Credentials>>,
    forward_headers: Vec<HeaderName>,
    max_response_bytes: usize,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("presign_url", &self.presign_url.as_str())
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// Loads the secrets and builds the pooled client. Errors name the option, never a value.
    pub fn new(
        config: &UpstreamConfig,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Result<Self, String> {
        install_crypto_provider();
        let base = config.base_url.trim_end_matches('/');
        let url = |path: &str| {
            Url::parse(&format!("{base}{path}")).map_err(|e| format!("upstream.base_url: {e}"))
        };
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .tcp_nodelay(true)
            .user_agent(concat!("kizen-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("upstream: cannot build HTTP client: {e}"))?;
        Ok(Self {
            client,
            presign_url: url(PRESIGN_PATH)?,
            success_url: url(SUCCESS_PATH)?,
            credentials: std::sync::RwLock::new(std::sync::Arc::new(Credentials::load(config)?)),
            forward_headers: config
                .forward_headers
                .iter()
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .collect(),
            max_response_bytes: config.max_response_bytes,
            metrics,
        })
    }

    pub async fn presign(
        &self,
        input: &PresignInput,
        user: &AuthenticatedUser,
        client_headers: &HeaderMap,
        request_id: &str,
    ) -> Result<UpstreamAnswer, GatewayError> {
        let mut url = self.presign_url.clone();
        url.query_pairs_mut()
            .append_pair("contenttype", &input.contenttype)
            .append_pair("filename", &input.filename)
            .append_pair("source", &input.source);
        let span = upstream_span("presign");
        let credentials = self.credentials();
        let headers =
            span.in_scope(|| self.headers(&credentials, user, client_headers, request_id))?;
        let request = self.client.get(url).headers(headers);
        tracing::Instrument::instrument(self.send(&credentials, "presign", request), span).await
    }

    pub async fn confirm(
        &self,
        input: &ConfirmInput,
        upload: &IssuedUpload,
        is_public: bool,
        user: &AuthenticatedUser,
        client_headers: &HeaderMap,
        request_id: &str,
    ) -> Result<UpstreamAnswer, GatewayError> {
        let credentials = self.credentials();
        let mut url = self.success_url.clone();
        url.query_pairs_mut().append_pair("source", &upload.source);
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("uuid", &upload.s3object_id.to_string())
            .append_pair("key", &upload.key)
            .append_pair("name", &input.name)
            .append_pair("etag", &input.etag)
            .append_pair("is_public", if is_public { "true" } else { "false" })
            .append_pair("business_id", credentials.business_id.expose())
            .finish();
        let span = upstream_span("confirm");
        let mut headers =
            span.in_scope(|| self.headers(&credentials, user, client_headers, request_id))?;
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let request = self.client.post(url).headers(headers).body(body);
        tracing::Instrument::instrument(self.send(&credentials, "confirm", request), span).await
    }

    /// The credentials in force now (one snapshot per upstream call).
    pub fn credentials(&self) -> std::sync::Arc<Credentials> {
        self.credentials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts new credentials in force for every call that starts from now on.
    pub fn replace_credentials(&self, credentials: Credentials) {
        *self.credentials.write().unwrap_or_else(|p| p.into_inner()) =
            std::sync::Arc::new(credentials);
    }

    fn headers(
        &self,
        credentials: &Credentials,
        user: &AuthenticatedUser,
        client: &HeaderMap,
        request_id: &str,
    ) -> Result<HeaderMap, GatewayError> {
        let mut headers = HeaderMap::with_capacity(8);
        // Headers the client named in `Connection` are hop-by-hop: never passed on.
        let hop_by_hop: Vec<String> = client
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .collect();
        for name in &self.forward_headers {
            if hop_by_hop.iter().any(|h| h == name.as_str()) {
                continue;
            }
            for value in client.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if let Ok(value) = HeaderValue::from_str(request_id) {
            headers.insert(X_REQUEST_ID.clone(), value);
        }
        headers.insert(
            X_API_KEY.clone(),
            credentials.api_key.header_value().clone(),
        );
        headers.insert(
            X_BUSINESS_ID.clone(),
            credentials.business_id.header_value().clone(),
        );
        let user_id = match (&credentials.user_id, &user.upstream_user_id) {
            (Some(constant), _) => constant.header_value().clone(),
            (None, Some(from_claim)) => {
                let mut value =
                    HeaderValue::from_str(from_claim).map_err(|_| GatewayError::Internal)?;
                value.set_sensitive(true);
                value
            }
            (None, None) => return Err(GatewayError::Internal),
        };
        headers.insert(X_USER_ID.clone(), user_id);
        crate::telemetry::propagate(&mut headers, client);
        Ok(headers)
    }

    async fn send(
        &self,
        credentials: &Credentials,
        route: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<UpstreamAnswer, GatewayError> {
        let started = std::time::Instant::now();
        let response = request.send().await.map_err(|e| {
            let failure = if e.is_timeout() {
                UpstreamFailure::Timeout
            } else {
                UpstreamFailure::Unreachable
            };
            tracing::warn!(route, error = %e.without_url(), "upstream call failed");
            GatewayError::Upstream(failure)
        })?;
        let status = response.status();
        let headers = filter_headers(credentials, response.headers());
        let body = self.read_body(route, response).await?;
        self.metrics
            .upstream_duration
            .get_or_create(&crate::metrics::RouteLabels { route })
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            route,
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "upstream answered"
        );

        if credentials.leaks_api_key(&body) {
            tracing::error!(
                route,
                status = status.as_u16(),
                "upstream answer contained the API key; withheld"
            );
            return Err(GatewayError::Upstream(UpstreamFailure::BadResponse));
        }
        match status.as_u16() {
            200..=299 => Ok(UpstreamAnswer {
                status,
                headers,
                body,
            }),
            401 | 403 => {
                tracing::error!(
                    route,
                    status = status.as_u16(),
                    "upstream refused the gateway's credentials: check upstream.api_key, business_id and user_id"
                );
                Err(GatewayError::Upstream(UpstreamFailure::CredentialsRejected))
            }
            400..=499 => Ok(UpstreamAnswer {
                status,
                headers,
                body,
            }),
            300..=399 => {
                tracing::error!(
                    route,
                    status = status.as_u16(),
                    "upstream answered with a redirect; not followed"
                );
                Err(GatewayError::Upstream(UpstreamFailure::BadResponse))
            }
            500..=599 => {
                tracing::warn!(route, status = status.as_u16(), "upstream server error");
                Err(GatewayError::Upstream(UpstreamFailure::ServerError))
            }
            _ => Err(GatewayError::Upstream(UpstreamFailure::BadResponse)),
        }
    }

    async fn read_body(
        &self,
        route: &'static str,
        mut response: reqwest::Response,
    ) -> Result<Bytes, GatewayError> {
        let too_large = || {
            tracing::warn!(
                route,
                limit = self.max_response_bytes,
                "upstream answer too large"
            );
            GatewayError::Upstream(UpstreamFailure::BadResponse)
        };
        if response
            .content_length()
            .is_some_and(|len| len > self.max_response_bytes as u64)
        {
            return Err(too_large());
        }
        let mut body = BytesMut::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.max_response_bytes {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body.freeze()),
                Err(e) => {
                    let failure = if e.is_timeout() {
                        UpstreamFailure::Timeout
                    } else {
                        UpstreamFailure::BadResponse
                    };
                    tracing::warn!(route, error = %e.without_url(), "reading the upstream answer failed");
                    return Err(GatewayError::Upstream(failure));
                }
            }
        }
    }
}

/// A client span per Kizen call; its context is what `traceparent` carries upstream.
fn upstream_span(route: &'static str) -> tracing::Span {
    tracing::info_span!("upstream", otel.name = %format_args!("kizen {route}"), otel.kind = "client", route)
}

fn filter_headers(credentials: &Credentials, upstream: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for name in &RESPONSE_HEADER_ALLOWLIST {
        if let Some(value) = upstream.get(name)
            && !credentials.names_a_secret(value.as_bytes())
        {
            kept.insert(name.clone(), value.clone());
        }
    }
    kept
}
