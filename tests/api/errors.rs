//! Every refusal has the JSON error shape, whichever layer produced it.

use reqwest::{Method, StatusCode, header};
use serde_json::Value;

use crate::helpers::spawn_app;

async fn raw(
    app: &crate::helpers::TestApp,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = app
        .client
        .request(method, format!("{}{path}", app.base))
        .body(body);
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    assert!(
        resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{path}: not JSON"
    );
    (status, resp.json().await.unwrap())
}

fn code(body: &Value) -> &str {
    assert!(body["error"]["message"].is_string(), "{body}");
    body["error"]["code"].as_str().unwrap()
}

#[tokio::test]
async fn malformed_wrong_type_too_large_unknown_and_wrong_method_are_all_json() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let json = Some("application/json");
    let t = Some(ann.token.as_str());

    let (s, b) = raw(
        &app,
        Method::POST,
        "/v1/activities",
        json,
        b"{\"type\":".to_vec(),
        t,
    )
    .await;
    assert_eq!((s, code(&b)), (StatusCode::BAD_REQUEST, "malformed_json"));

    let (s, b) = raw(
        &app,
        Method::POST,
        "/v1/activities",
        Some("text/plain"),
        b"{}".to_vec(),
        t,
    )
    .await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );

    let (s, b) = raw(
        &app,
        Method::POST,
        "/v1/activities",
        json,
        b"{\"visibility\": \"friends\"}".to_vec(),
        t,
    )
    .await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body")
    );

    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(5 * 1024 * 1024));
    let (s, b) = raw(
        &app,
        Method::POST,
        "/v1/users",
        json,
        big.into_bytes(),
        None,
    )
    .await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );

    let (s, b) = raw(&app, Method::GET, "/v2/nothing", None, vec![], t).await;
    assert_eq!((s, code(&b)), (StatusCode::NOT_FOUND, "not_found"));

    let (s, b) = raw(&app, Method::DELETE, "/v1/activities", None, vec![], t).await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );

    let (s, b) = raw(
        &app,
        Method::GET,
        "/v1/activities/not-a-uuid",
        None,
        vec![],
        t,
    )
    .await;
    assert_eq!((s, code(&b)), (StatusCode::BAD_REQUEST, "bad_request"));

    let (s, b) = raw(&app, Method::GET, "/v1/activities", None, vec![], None).await;
    assert_eq!((s, code(&b)), (StatusCode::UNAUTHORIZED, "unauthorized"));
}
