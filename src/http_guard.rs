//! The first thing every request meets: strict HTTP/1.1 framing rules, the head limits and the
//! route allowlist, matched on the raw path. Nothing that fails here is ever forwarded.
//!
//! hyper reads heads up to twice the configured limits ([`hyper_max_header_bytes`]),
//! so that a head over a limit reaches this guard and gets a problem body naming the limit;
//! only a head beyond the doubled limits, or one hyper cannot parse, gets hyper's own bare
//! 400/414/431, written before any service runs.

use axum::{
    extract::{Request, State},
    http::{HeaderMap, Method, Uri, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{
    config::ServerConfig,
    error::GatewayError,
    paths::{PRESIGN_PATH, SUCCESS_PATH},
};

/// The longest request target (path and query) served, unless `server.max_header_bytes` is
/// smaller: the presign query's fields are far shorter, and 8 KiB is what proxies in front of
/// the gateway commonly allow for a request line.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;

/// The head limits of `server`, and what the guard does with preflights.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    max_header_bytes: usize,
    max_headers: usize,
    /// Whether a CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
    /// on a served path passes, to be answered by the CORS layer after this guard.
    preflights_pass: bool,
}

impl Guard {
    /// The guard of the innermost layer: every method but the route's own is refused.
    pub fn new(server: &ServerConfig) -> Self {
        Self {
            max_header_bytes: server.max_header_bytes,
            max_headers: server.max_headers,
            preflights_pass: false,
        }
    }

    /// The guard in front of the CORS layer, which checks only `OPTIONS` requests and lets the
    /// preflights on the two routes through to be answered.
    pub fn for_preflights(server: &ServerConfig) -> Self {
        Self {
            preflights_pass: true,
            ..Self::new(server)
        }
    }
}

/// The head size hyper reads at most, answering a bare 431 beyond it: twice
/// `server.max_header_bytes`, so that the guard sees and answers what is over the limit.
pub fn hyper_max_header_bytes(server: &ServerConfig) -> usize {
    server.max_header_bytes.saturating_mul(2)
}

/// The header lines hyper reads at most, answering a bare 431 beyond them: twice
/// `server.max_headers`.
pub fn hyper_max_headers(server: &ServerConfig) -> usize {
    server.max_headers.saturating_mul(2)
}

/// Middleware, the innermost: refuses bad framing (a URL or `*` as target, not one `Host`, a
/// `Transfer-Encoding` other than a confirmation's `chunked`), heads over the limits, unknown
/// paths and wrong methods before a handler runs.
pub async fn strict_http(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    match check(&request, &guard) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// Middleware in front of the CORS layer (installed only with CORS on): the same checks for
/// `OPTIONS` requests, so that the CORS layer answers preflights on the two routes only.
pub async fn preflight_gate(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    if request.method() != Method::OPTIONS {
        return next.run(request).await;
    }
    match check(&request, &guard) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

pub(crate) fn check(request: &Request, guard: &Guard) -> Result<(), GatewayError> {
    let uri = request.uri();
    if is_asterisk_form(uri) {
        return Err(GatewayError::AsteriskFormTarget);
    }
    if uri.scheme().is_some() || uri.authority().is_some() {
        return Err(GatewayError::AbsoluteFormTarget);
    }
    let headers = request.headers();
    check_head_size(request, guard)?;
    let hosts = headers.get_all(header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && request.version() == http::Version::HTTP_11) {
        return Err(GatewayError::BadHostHeader);
    }
    // HEAD is refused on the GET route too: it would presign without showing the answer.
    let (allowed, allow) = match uri.path() {
        PRESIGN_PATH => (Method::GET, "GET"),
        SUCCESS_PATH => (Method::POST, "POST"),
        _ => return Err(GatewayError::RouteNotFound),
    };
    let method = request.method();
    if *method == Method::OPTIONS && guard.preflights_pass && is_preflight(headers) {
        return Ok(());
    }
    if *method != allowed {
        return Err(GatewayError::MethodNotAllowed { allow });
    }
    check_transfer_encoding(method, headers)
}

/// A presign has no body; a confirmation may come chunked (what `fetch` sends for a stream
/// body), read under the same byte cap as one with `Content-Length`. hyper has already refused
/// a chunked encoding that is not the last one, and drops `Content-Length` when
/// `Transfer-Encoding` is present (RFC 9112: chunked wins, and hyper closes the connection after
/// the answer), so no ambiguous length reaches the handler.
fn check_transfer_encoding(method: &Method, headers: &HeaderMap) -> Result<(), GatewayError> {
    let mut encodings = headers.get_all(header::TRANSFER_ENCODING).iter();
    let Some(first) = encodings.next() else {
        return Ok(());
    };
    let only_chunked = encodings.next().is_none()
        && first
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked");
    if *method == Method::POST && only_chunked {
        Ok(())
    } else {
        Err(GatewayError::TransferEncodingNotAccepted)
    }
}

fn is_asterisk_form(uri: &Uri) -> bool {
    uri.authority().is_none() && uri.path() == "*"
}

fn is_preflight(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The head's size as it came on the wire in the canonical `name: value\r\n` layout (hyper does
/// not keep the raw length): request line, header lines and the blank line.
fn check_head_size(request: &Request, guard: &Guard) -> Result<(), GatewayError> {
    let target = request
        .uri()
        .path_and_query()
        .map_or(1, |p| p.as_str().len());
    let target_limit = MAX_TARGET_BYTES.min(guard.max_header_bytes);
    if target > target_limit {
        return Err(GatewayError::UriTooLong {
            limit: target_limit,
        });
    }
    let headers = request.headers();
    if headers.len() > guard.max_headers {
        return Err(GatewayError::HeadersTooLarge {
            what: format!("server.max_headers ({} header lines)", guard.max_headers),
        });
    }
    // "GET " + target + " HTTP/1.1\r\n", each "name: value\r\n", then "\r\n".
    let request_line = request.method().as_str().len() + 1 + target + 11;
    let header_lines: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    if request_line + header_lines + 2 > guard.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge {
            what: format!("server.max_header_bytes ({} bytes)", guard.max_header_bytes),
        });
    }
    Ok(())
}
