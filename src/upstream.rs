//! The Kizen upstream. Every call is *constructed*: fixed method and path, re-encoded validated
//! parameters, the server-held credentials, and only allowlisted client headers. Answers are read
//! with a size cap, scanned for a leaked API key (also JSON-escaped or percent-encoded), and
//! reduced to allowlisted headers.

pub(crate) mod echo;

use std::{sync::Arc, time::Duration};

use axum::http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header,
    uri::{Authority, PathAndQuery, Scheme},
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use crate::{
    auth::AuthenticatedUser,
    config::UpstreamConfig,
    domain::IssuedUpload,
    observability::{
        access::X_REQUEST_ID,
        metrics::{Metrics, RouteLabels},
        traces,
    },
    paths::{PRESIGN_PATH, SUCCESS_PATH},
    secrets::SecretHeaderValue,
    tls,
    validate::{ConfirmInput, PresignInput},
};

/// Why an upstream call failed, in linkerd's fixed vocabulary: 502 for a bad or refused answer,
/// 504 for no answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// No connection could be made, or it broke before an answer.
    Unreachable,
    /// No answer within `upstream.request_timeout`.
    Timeout,
    /// Not JSON, missing fields, too large, a redirect, or a leaked secret.
    BadResponse,
    /// Upstream 5xx.
    ServerError,
    /// Upstream 401/403: the gateway's own credentials are wrong.
    CredentialsRejected,
    /// The call could not be built from what the gateway holds (a bug, or a user id claim that is
    /// not a header value); nothing was sent.
    RequestNotBuilt,
}

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static X_BUSINESS_ID: HeaderName = HeaderName::from_static("x-business-id");
static X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");

/// Upstream response headers a client may see. Everything else (hop-by-hop, cookies, `Location`,
/// anything that could name a secret) is dropped.
const RESPONSE_HEADER_ALLOWLIST: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    header::CONTENT_LANGUAGE,
    header::EXPIRES,
];

/// An upstream answer the client may see: 2xx, or a 4xx that describes the client's input.
#[derive(Debug, Clone)]
pub struct UpstreamAnswer {
    /// Kizen's status: 2xx, or a 4xx other than 401/403.
    pub status: StatusCode,
    /// Kizen's response headers, only those on the allowlist and naming no secret.
    pub headers: HeaderMap,
    /// Kizen's body, at most `upstream.max_response_bytes` and never holding the API key.
    pub body: Bytes,
}

impl UpstreamAnswer {
    /// Kizen's `Content-Type`, when it sent a readable one.
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

/// The query of a forwarded presign: the validated fields, re-encoded (never the client's raw
/// query string).
pub fn presign_query(input: &PresignInput) -> String {
    form_urlencoded::Serializer::new(String::with_capacity(128))
        .append_pair("contenttype", &input.contenttype)
        .append_pair("filename", &input.filename)
        .append_pair("source", &input.source)
        .finish()
}

/// Pooled keep-alive HTTP/1.1 client straight on hyper: no redirect, retry or proxy layers, and
/// no URL parsing per call (the base is parsed once; each call only appends its path and query).
type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

static USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("kizen-gateway/", env!("CARGO_PKG_VERSION")));

/// The client of the Kizen API: injects the server-held credentials into the presign and confirm
/// calls, and vets every answer before a client sees it.
pub struct UpstreamClient {
    client: HttpClient,
    scheme: Scheme,
    authority: Authority,
    /// The base URL's path without its trailing `/` ("" for a bare host).
    base_path: String,
    request_timeout: Duration,
    credentials: std::sync::RwLock<Arc<Credentials>>,
    forward_headers: Vec<HeaderName>,
    max_response_bytes: usize,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("authority", &self.authority.as_str())
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// Loads the secrets and builds the pooled client. Errors name the option, never a value.
    pub fn new(config: &UpstreamConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        tls::install_crypto_provider();
        let base: Uri = config
            .base_url
            .as_str()
            .parse()
            .map_err(|e| format!("upstream.base_url: {e}"))?;
        let (Some(scheme), Some(authority)) = (base.scheme().cloned(), base.authority().cloned())
        else {
            return Err("upstream.base_url: must be an absolute http(s) URL".into());
        };
        let tls_config = {
            use rustls_platform_verifier::BuilderVerifierExt;
            rustls::ClientConfig::builder()
                .with_platform_verifier()
                .map_err(|e| format!("upstream: cannot load the TLS roots: {e}"))?
                .with_no_client_auth()
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Self {
            client,
            scheme,
            authority,
            base_path: base.path().trim_end_matches('/').to_owned(),
            request_timeout: config.request_timeout,
            credentials: std::sync::RwLock::new(Arc::new(Credentials::load(config)?)),
            forward_headers: config
                .forward_headers
                .iter()
                .map(|header| header.0.clone())
                .collect(),
            max_response_bytes: config.max_response_bytes,
            metrics,
        })
    }

    /// Forwards a validated presign (`GET /api/s3/presigned-post`) for `user`.
    pub async fn presign(
        &self,
        input: &PresignInput,
        user: &AuthenticatedUser,
        client_headers: &HeaderMap,
        request_id: &str,
    ) -> Result<UpstreamAnswer, UpstreamFailure> {
        let query = presign_query(input);
        let span = upstream_span("presign");
        let credentials = self.credentials();
        let headers =
            span.in_scope(|| self.headers(&credentials, user, client_headers, request_id))?;
        let request = self.request(Method::GET, PRESIGN_PATH, &query, headers, Bytes::new())?;
        tracing::Instrument::instrument(self.send(&credentials, "presign", request), span).await
    }

    /// Forwards the confirmation of `upload`, whose claim the caller holds, with the stored key and
    /// the server-held `business_id` (`POST /api/s3/success`).
    pub async fn confirm(
        &self,
        input: &ConfirmInput,
        upload: &IssuedUpload,
        is_public: bool,
        user: &AuthenticatedUser,
        client_headers: &HeaderMap,
        request_id: &str,
    ) -> Result<UpstreamAnswer, UpstreamFailure> {
        let credentials = self.credentials();
        let query = form_urlencoded::Serializer::new(String::with_capacity(48))
            .append_pair("source", &upload.source)
            .finish();
        let body = form_urlencoded::Serializer::new(String::with_capacity(256))
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
        let request = self.request(Method::POST, SUCCESS_PATH, &query, headers, body.into())?;
        tracing::Instrument::instrument(self.send(&credentials, "confirm", request), span).await
    }

    /// The request to `path?query` under the base URL: the path and query are the only parts
    /// parsed per call (by `http`'s cheap URI parser; both are fixed or re-encoded already).
    fn request(
        &self,
        method: Method,
        path: &str,
        query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, UpstreamFailure> {
        let mut path_and_query =
            String::with_capacity(self.base_path.len() + path.len() + 1 + query.len());
        path_and_query.push_str(&self.base_path);
        path_and_query.push_str(path);
        path_and_query.push('?');
        path_and_query.push_str(query);
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(
                PathAndQuery::try_from(path_and_query)
                    .map_err(|_| UpstreamFailure::RequestNotBuilt)?,
            )
            .build()
            .map_err(|_| UpstreamFailure::RequestNotBuilt)?;
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        request
            .headers_mut()
            .insert(header::USER_AGENT, USER_AGENT.clone());
        Ok(request)
    }

    /// The credentials in force now (one snapshot per upstream call).
    pub fn credentials(&self) -> Arc<Credentials> {
        self.credentials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts new credentials in force for every call that starts from now on.
    pub fn replace_credentials(&self, credentials: Credentials) {
        *self.credentials.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(credentials);
    }

    fn headers(
        &self,
        credentials: &Credentials,
        user: &AuthenticatedUser,
        client: &HeaderMap,
        request_id: &str,
    ) -> Result<HeaderMap, UpstreamFailure> {
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
                let mut value = HeaderValue::from_str(from_claim)
                    .map_err(|_| UpstreamFailure::RequestNotBuilt)?;
                value.set_sensitive(true);
                value
            }
            (None, None) => return Err(UpstreamFailure::RequestNotBuilt),
        };
        headers.insert(X_USER_ID.clone(), user_id);
        traces::propagate(&mut headers, client);
        Ok(headers)
    }

    async fn send(
        &self,
        credentials: &Credentials,
        route: &'static str,
        request: Request<Full<Bytes>>,
    ) -> Result<UpstreamAnswer, UpstreamFailure> {
        let started = std::time::Instant::now();
        // One deadline for the whole exchange, answer body included.
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                // hyper's errors name the peer at most, never the request's headers.
                tracing::warn!(route, connect = e.is_connect(), error = %e, "upstream call failed");
                UpstreamFailure::Unreachable
            })?;
            let (parts, body) = response.into_parts();
            let body = self.read_body(route, &parts.headers, body).await?;
            Ok::<_, UpstreamFailure>((parts.status, parts.headers, body))
        };
        let (status, upstream_headers, body) =
            match tokio::time::timeout(self.request_timeout, exchange).await {
                Ok(exchange) => exchange?,
                Err(_) => {
                    tracing::warn!(
                        route,
                        timeout_ms = self.request_timeout.as_millis() as u64,
                        "upstream call timed out"
                    );
                    return Err(UpstreamFailure::Timeout);
                }
            };
        let headers = filter_headers(credentials, &upstream_headers);
        self.metrics
            .upstream_duration
            .get_or_create(&RouteLabels { route })
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
            return Err(UpstreamFailure::BadResponse);
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
                Err(UpstreamFailure::CredentialsRejected)
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
                Err(UpstreamFailure::BadResponse)
            }
            500..=599 => {
                tracing::warn!(route, status = status.as_u16(), "upstream server error");
                Err(UpstreamFailure::ServerError)
            }
            _ => Err(UpstreamFailure::BadResponse),
        }
    }

    async fn read_body(
        &self,
        route: &'static str,
        headers: &HeaderMap,
        body: hyper::body::Incoming,
    ) -> Result<Bytes, UpstreamFailure> {
        let too_large = || {
            tracing::warn!(
                route,
                limit = self.max_response_bytes,
                "upstream answer too large"
            );
            UpstreamFailure::BadResponse
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_response_bytes as u64) {
            return Err(too_large());
        }
        match Limited::new(body, self.max_response_bytes).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Err(error) => {
                tracing::warn!(route, %error, "reading the upstream answer failed");
                Err(UpstreamFailure::BadResponse)
            }
        }
    }
}

/// A client span per Kizen call; its context is what `traceparent` carries upstream.
fn upstream_span(route: &'static str) -> tracing::Span {
    if !traces::spans_consumed() {
        return tracing::Span::none();
    }
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
