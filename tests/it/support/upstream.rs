//! Answers to script the recording Kizen stand-in with (`gw.standin.script(endpoint, answer)`).

use kizen_gateway::standin::Scripted;
use serde_json::{Value, json};

/// Kizen answers `status` with these headers and this body.
pub fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<String>) -> Scripted {
    Scripted::Respond {
        status,
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        body: body.into(),
    }
}

/// A presign answer the gateway accepts, for the upload `s3object_id`.
pub fn presign_answer(s3object_id: &str) -> Value {
    json!({
        "url": "https://bucket.example/upload",
        "fields": {
            "key": format!("uploads/{s3object_id}/photo.png"),
            "Content-Type": "image/png",
            "policy": "p",
            "x-amz-signature": "s",
        },
        "s3object_id": s3object_id,
        "max_file_size": 1024,
        "expires_at": "2099-01-01T00:00:00Z",
    })
}
