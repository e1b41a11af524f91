//! The gateway's public surface: the only two paths it serves, which are also the Kizen paths it
//! calls, and the fixed label each one has in logs and metrics.

/// Step 1 of an upload: `GET`, answered with a presigned POST.
pub const PRESIGN_PATH: &str = "/api/s3/presigned-post";
/// Step 3 of an upload: `POST`, the confirmation.
pub const SUCCESS_PATH: &str = "/api/s3/success";

/// A fixed label per route: raw client paths never reach the logs or the metrics.
pub fn route_label(path: &str) -> &'static str {
    match path {
        PRESIGN_PATH => "presign",
        SUCCESS_PATH => "confirm",
        _ => "other",
    }
}
