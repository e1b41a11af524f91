//! The two client-facing routes, one file each, and their typed inputs ([`extract`]). Each handler
//! reads top to bottom: authenticate, validate, quota and rate limit (one store step), forward,
//! record, audit.

pub mod confirm;
pub mod extract;
pub mod presign;

use axum::{
    http::header,
    response::{IntoResponse, Response},
};

use crate::{observability::access::Outcome, upstream::UpstreamAnswer};

/// The client's view of an upstream answer: its status, body and allowlisted headers.
fn upstream_response(answer: UpstreamAnswer, outcome: &'static str) -> Response {
    let UpstreamAnswer {
        status,
        headers,
        body,
    } = answer;
    let mut response = (status, body).into_response();
    response.headers_mut().extend(headers);
    response
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(header::HeaderValue::from_static("no-store"));
    response.extensions_mut().insert(Outcome(outcome));
    response
}
