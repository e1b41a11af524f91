//! The typed inputs of the two handlers, each rejecting with the gateway's own problem answers:
//! the bearer token's user, the presign query and the confirmation form.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{HeaderMap, header, request::Parts},
};

use crate::{
    auth::{AuthFailure, AuthenticatedUser},
    error::GatewayError,
    observability::access::RequestUser,
    state::AppState,
    validate::{self, ConfirmInput, PresignInput},
};

/// `Authorization: Bearer <JWT>`, verified. The access line learns the user's id, and the
/// metrics the user's quota tier (as configured: an unknown claimed tier is the default one).
impl FromRequestParts<AppState> for AuthenticatedUser {
    type Rejection = GatewayError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers)?;
        let user = state.verifier.verify(token).await?;
        if let Some(slot) = parts.extensions.get::<RequestUser>() {
            slot.set(&user.id);
            slot.set_tier(state.config.quotas.tier(user.tier.as_deref()).0);
        }
        Ok(user)
    }
}

/// The token of the one `Authorization` header, which must use the Bearer scheme.
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthFailure> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthFailure::Missing)?;
    if values.next().is_some() {
        return Err(AuthFailure::Malformed);
    }
    let value = value.to_str().map_err(|_| AuthFailure::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthFailure::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::Missing);
    }
    Ok(token.trim_matches(' '))
}

/// The presign query, every field valid (see [`validate::presign`]).
pub struct PresignQuery(pub PresignInput);

impl FromRequestParts<AppState> for PresignQuery {
    type Rejection = GatewayError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(validate::presign(
            parts.uri.query(),
            &state.config.presign,
        )?))
    }
}

/// The confirmation form: `application/x-www-form-urlencoded`, within the route's body limit
/// (`confirm.max_body_bytes`), every field valid (see [`validate::confirm`]).
pub struct ConfirmForm(pub ConfirmInput);

impl FromRequest<AppState> for ConfirmForm {
    type Rejection = GatewayError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let headers = request.headers();
        if !validate::is_form_content_type(headers.get(header::CONTENT_TYPE)) {
            return Err(GatewayError::UnsupportedMediaType);
        }
        let limit = state.config.confirm.max_body_bytes;
        // Refused before any byte is read when the declared length says it already.
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(GatewayError::PayloadTooLarge { limit });
        }
        // The route's `DefaultBodyLimit` bounds what is read.
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|_| GatewayError::PayloadTooLarge { limit })?;
        Ok(Self(validate::confirm(&body)?))
    }
}
