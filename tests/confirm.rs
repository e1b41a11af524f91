//! The confirmation rules: only the user an upload was issued to, only with its exact key, only
//! within its window, exactly once.

mod common;

use common::*;

#[tokio::test]
async fn presign_then_confirm_forwards_once_with_server_held_business_id() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;

    let response = gw
        .confirm_form(
            &token,
            &[
                ("uuid", &issued.s3object_id),
                ("key", &issued.key),
                ("name", "photo.png"),
                ("etag", "\"abc\""),
                ("business_id", "someone-elses-business"),
            ],
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["id"], issued.s3object_id.as_str());

    let forwarded = gw.forwarded(SUCCESS);
    assert_eq!(forwarded.len(), 1);
    let form = forwarded[0].form();
    assert_eq!(form["business_id"], BUSINESS_ID);
    assert_eq!(form["uuid"], issued.s3object_id);
    assert_eq!(form["key"], issued.key);
    assert_eq!(form["is_public"], "false");
    assert_eq!(
        forwarded[0].query_pairs(),
        vec![("source".to_owned(), "field_value".to_owned())]
    );
}
