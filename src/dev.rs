//! Dev mode: the gateway in front of the local stand-in, with a fresh HS256 key, a token for a
//! dev user and the three curl steps of an upload. No Kizen account needed; nothing leaves the
//! machine.
//!
//! Beside the Kizen endpoints, the stand-in's listener serves dev-only helpers for browser tests:
//! `GET /_dev/token?sub=<user>` (a token for any user, signed with the dev key) and the stand-in's
//! inspection routes ([`Standin::inspection_router`]).

use std::{fmt::Write as _, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;
use tokio::net::TcpListener;

use crate::{
    App, Config,
    clock::seconds_since_epoch,
    standin::{Standin, StandinConfig},
};

/// Everything dev mode needs, bound and built, ready to run.
pub struct DevSetup {
    /// The gateway, configured against the stand-in with a throwaway HS256 key and API key.
    pub app: App,
    /// The gateway's public listener, already bound.
    pub gateway: TcpListener,
    /// The local stand-in of the Kizen API, holding the same credentials as the gateway.
    pub standin: Standin,
    /// The stand-in's listener, already bound; its URL is the gateway's `upstream.base_url`.
    pub standin_listener: TcpListener,
    /// What to serve on the stand-in's listener: the stand-in, its inspection routes and the
    /// dev token route.
    pub standin_router: Router,
    /// What to print: the URLs, the dev token and the three curl steps of an upload.
    pub instructions: String,
}

/// The `sub` of the dev token printed in the instructions.
pub const DEV_USER: &str = "dev-user";
/// Marks the copy-and-paste block of the instructions (tests run exactly what is printed).
pub const STEPS_BEGIN: &str = "# ---- steps: paste into a shell ----";
/// Ends the copy-and-paste block of the instructions.
pub const STEPS_END: &str = "# ---- end of steps ----";

/// Binds both listeners and builds the gateway and the stand-in, sharing fresh secrets, and signs
/// a dev token valid for 12 hours. `allowed_origins` are the browser origins the gateway answers
/// CORS for (a test page's, a local frontend's).
pub async fn setup(
    gateway_addr: SocketAddr,
    standin_addr: SocketAddr,
    allowed_origins: &[String],
) -> Result<DevSetup, String> {
    let gateway = TcpListener::bind(gateway_addr)
        .await
        .map_err(|e| format!("cannot bind {gateway_addr}: {e}"))?;
    let standin_listener = TcpListener::bind(standin_addr)
        .await
        .map_err(|e| format!("cannot bind {standin_addr}: {e}"))?;
    let gateway_url = format!(
        "http://{}",
        gateway.local_addr().map_err(|e| e.to_string())?
    );
    let standin_url = format!(
        "http://{}",
        standin_listener.local_addr().map_err(|e| e.to_string())?
    );

    let hmac_secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let api_key = format!("dev-api-key-{}", uuid::Uuid::new_v4().simple());
    let business_id = "dev-business".to_owned();

    // JSON strings are TOML basic strings.
    let origins = serde_json::to_string(allowed_origins).map_err(|e| e.to_string())?;
    let config = Config::from_toml(&format!(
        r#"
        [server]
        listen = "{gateway_addr}"
        [cors]
        allowed_origins = {origins}
        [upstream]
        base_url = "{standin_url}"
        api_key = "value:{api_key}"
        business_id = "value:{business_id}"
        user_id = "value:dev-kizen-user"
        [[auth.keys]]
        algorithm = "HS256"
        secret = "value:{hmac_secret}"
        "#
    ))
    .map_err(|e| e.to_string())?;
    let app = App::from_config(config).await?;

    let standin = Standin::new(StandinConfig {
        api_key,
        business_id,
        user_id: Some("dev-kizen-user".into()),
        public_base: standin_url.clone(),
        max_file_size: 10 * 1024 * 1024,
        upload_ttl: Duration::from_secs(300),
    });

    let signer = DevTokens(Arc::new(EncodingKey::from_secret(hmac_secret.as_bytes())));
    let token = signer.token(DEV_USER)?;
    let standin_router = standin.router().merge(standin.inspection_router()).merge(
        Router::new()
            .route("/_dev/token", get(dev_token))
            .with_state(signer),
    );

    Ok(DevSetup {
        app,
        gateway,
        standin,
        standin_listener,
        standin_router,
        instructions: instructions(&gateway_url, &standin_url, &token),
    })
}

/// Signs dev tokens with the gateway's throwaway HS256 key.
#[derive(Clone)]
struct DevTokens(Arc<EncodingKey>);

impl DevTokens {
    /// A token for `sub`, valid for 12 hours.
    fn token(&self, sub: &str) -> Result<String, String> {
        let now = seconds_since_epoch();
        encode(
            &Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({ "sub": sub, "iat": now, "exp": now + Duration::from_secs(12 * 3600).as_secs() }),
            &self.0,
        )
        .map_err(|e| format!("cannot sign the dev token: {e}"))
    }
}

/// `GET /_dev/token?sub=<user>`: a dev token for that user, as text.
async fn dev_token(State(signer): State<DevTokens>, request: Request) -> Response {
    let sub = form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
        .find(|(name, _)| name == "sub")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    if sub.is_empty() {
        return (StatusCode::BAD_REQUEST, "sub is required").into_response();
    }
    match signer.token(&sub) {
        Ok(token) => token.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

fn instructions(gateway: &str, standin: &str, token: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "=================================================================="
    );
    let _ = writeln!(
        out,
        " DEV MODE: the gateway talks to a LOCAL STAND-IN of the Kizen API,"
    );
    let _ = writeln!(
        out,
        " not to Kizen. Keys and secrets are throwaway. Never use in production."
    );
    let _ = writeln!(
        out,
        "=================================================================="
    );
    let _ = writeln!(out, " gateway:  {gateway}");
    let _ = writeln!(out, " stand-in: {standin}  (files kept in memory)");
    let _ = writeln!(
        out,
        " dev-only helpers: {standin}/_dev/token?sub=<user> (a token for any user),"
    );
    let _ = writeln!(
        out,
        "   {standin}/_dev/requests, /_dev/objects?key=<key>, POST /_dev/script"
    );
    let _ = writeln!(
        out,
        " dev token for user \"{DEV_USER}\", valid 12 hours (needs curl and jq):"
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "{STEPS_BEGIN}");
    let _ = writeln!(out, "export TOKEN='{token}'");
    let _ = writeln!(
        out,
        "# 1. presign: the gateway checks the token and asks Kizen for an upload URL"
    );
    let _ = writeln!(
        out,
        "curl -sf -H \"Authorization: Bearer $TOKEN\" '{gateway}/api/s3/presigned-post?contenttype=text/plain&filename=hello.txt&source=field_value' > presign.json && cat presign.json && echo"
    );
    let _ = writeln!(
        out,
        "# 2. upload: straight to the storage URL, every presigned field first, the file last"
    );
    let _ = writeln!(out, "echo 'hello, kizen' > hello.txt");
    let _ = writeln!(
        out,
        "curl -sf -D upload-headers.txt -o /dev/null $(jq -r '.fields | to_entries[] | \"--form-string \\(.key)=\\(.value)\"' presign.json) -F file=@hello.txt \"$(jq -r .url presign.json)\""
    );
    let _ = writeln!(
        out,
        "export ETAG=$(grep -i '^etag:' upload-headers.txt | cut -d' ' -f2 | tr -d '\\r\"')"
    );
    let _ = writeln!(
        out,
        "# 3. confirm: the gateway forwards it only for the user it issued the upload to, once"
    );
    let _ = writeln!(
        out,
        "curl -sf -H \"Authorization: Bearer $TOKEN\" --data-urlencode \"uuid=$(jq -r .s3object_id presign.json)\" --data-urlencode \"key=$(jq -r .fields.key presign.json)\" --data-urlencode name=hello.txt --data-urlencode \"etag=$ETAG\" {gateway}/api/s3/success && echo"
    );
    let _ = writeln!(out, "{STEPS_END}");
    out
}
