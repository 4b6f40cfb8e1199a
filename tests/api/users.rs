use reqwest::{Method, StatusCode, header};
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn sign_up_returns_a_token_that_identifies_the_user() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    assert!(ann.token.len() >= 40);
    let (status, me) = app.get("/v1/me", &ann.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me, json!({"id": ann.id, "name": "Ann"}));
}

#[tokio::test]
async fn missing_or_wrong_tokens_get_401_with_a_challenge() {
    let app = spawn_app().await;
    app.user("Ann").await;
    let (status, body) = app.call(Method::GET, "/v1/me", None, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let resp = app
        .client
        .get(format!("{}/v1/me", app.base))
        .bearer_auth("tc_not_a_real_token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
}

#[tokio::test]
async fn names_must_be_reasonable() {
    let app = spawn_app().await;
    for name in ["", "   ", &"x".repeat(65)] {
        let (status, body) = app
            .call(Method::POST, "/v1/users", None, Some(json!({"name": name})))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["error"]["code"], "invalid_name");
    }
}

#[tokio::test]
async fn friendship_needs_both_sides_and_ends_for_both() {
    let app = spawn_app().await;
    let (ann, bob) = (app.user("Ann").await, app.user("Bob").await);
    let (status, body) = app
        .put(&format!("/v1/friends/{}", bob.id), &ann.token)
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("requested"))
    );
    assert_eq!(
        app.get("/v1/friends", &ann.token).await.1,
        json!({"items": []})
    );

    let (_, body) = app
        .put(&format!("/v1/friends/{}", ann.id), &bob.token)
        .await;
    assert_eq!(body["status"], "friends");
    assert_eq!(
        app.get("/v1/friends", &ann.token).await.1,
        json!({"items": [{"id": bob.id, "name": "Bob"}]})
    );
    assert_eq!(
        app.get("/v1/friends", &bob.token).await.1,
        json!({"items": [{"id": ann.id, "name": "Ann"}]})
    );

    let (status, _) = app
        .delete(&format!("/v1/friends/{}", ann.id), &bob.token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.get("/v1/friends", &ann.token).await.1,
        json!({"items": []})
    );
    assert_eq!(
        app.get("/v1/friends", &bob.token).await.1,
        json!({"items": []})
    );
}

#[tokio::test]
async fn befriending_unknown_users_or_yourself_fails() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let (status, _) = app
        .put(&format!("/v1/friends/{}", uuid::Uuid::now_v7()), &ann.token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app
        .put(&format!("/v1/friends/{}", ann.id), &ann.token)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_friend"))
    );
}

#[tokio::test]
async fn each_token_is_rate_limited_with_429_and_retry_after() {
    let app = crate::helpers::spawn_app_with(|c| {
        c.rate_limit = 1.0;
        c.rate_burst = 3.0;
    })
    .await;
    let (ann, bob) = (app.user("Ann").await, app.user("Bob").await);
    for _ in 0..3 {
        assert_eq!(app.get("/v1/me", &ann.token).await.0, StatusCode::OK);
    }
    let resp = app
        .client
        .get(format!("{}/v1/me", app.base))
        .bearer_auth(&ann.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(
        app.get("/v1/me", &bob.token).await.0,
        StatusCode::OK,
        "other tokens are not affected"
    );
}
