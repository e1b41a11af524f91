//! The first thing every request meets: strict HTTP/1.1 framing rules and the route allowlist,
//! matched on the raw path. Nothing that fails here is ever forwarded.

use axum::{
    extract::Request,
    http::{Method, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{
    error::GatewayError,
    paths::{PRESIGN_PATH, SUCCESS_PATH},
};

/// Middleware, the innermost: refuses bad framing (a URL as target, not one `Host`,
/// `Transfer-Encoding`), unknown paths and wrong methods before a handler runs.
pub async fn strict_http(request: Request, next: Next) -> Response {
    match check(&request) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

pub(crate) fn check(request: &Request) -> Result<(), GatewayError> {
    let uri = request.uri();
    if uri.scheme().is_some() || uri.authority().is_some() {
        return Err(GatewayError::AbsoluteFormTarget);
    }
    let headers = request.headers();
    let hosts = headers.get_all(header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && request.version() == http::Version::HTTP_11) {
        return Err(GatewayError::BadHostHeader);
    }
    // hyper drops Content-Length when Transfer-Encoding is present, so "both" cannot be seen
    // here; refusing every Transfer-Encoding refuses that combination too. Both routes take
    // small bodies that clients always send with Content-Length.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(GatewayError::TransferEncodingNotAccepted);
    }
    // HEAD is refused on the GET route too: it would presign without showing the answer.
    let (allowed, allow) = match uri.path() {
        PRESIGN_PATH => (Method::GET, "GET"),
        SUCCESS_PATH => (Method::POST, "POST"),
        _ => return Err(GatewayError::RouteNotFound),
    };
    if request.method() != allowed {
        return Err(GatewayError::MethodNotAllowed { allow });
    }
    Ok(())
}
