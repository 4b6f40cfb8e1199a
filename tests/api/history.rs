use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, now_ms, spawn_app};

const MIN: i64 = 60_000;

async fn start_at(app: &TestApp, user: &TestUser, minutes_ago: i64, extra: Value) -> String {
    let mut body = json!({"type": "RUN", "started_at": now_ms() - minutes_ago * MIN});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    app.start(user, body).await
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn my_history_pages_newest_first_and_stays_stable_while_i_add_more() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    // Started 50, 40, 30, 20, 10 minutes ago, created out of order.
    let mut by_age = Vec::new();
    for minutes_ago in [30, 10, 50, 20, 40] {
        by_age.push((
            minutes_ago,
            start_at(&app, &ann, minutes_ago, json!({})).await,
        ));
    }
    by_age.sort();
    let newest_first: Vec<String> = by_age.into_iter().map(|(_, id)| id).collect();

    let (status, page1) = app
        .get("/v1/activities?mode=mine&limit=2", &ann.token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&page1), newest_first[..2]);
    let cursor = page1["next_cursor"].as_str().unwrap().to_string();

    // A new activity appears at the top; the next page is unaffected.
    start_at(&app, &ann, 0, json!({})).await;
    let (_, page2) = app
        .get(
            &format!("/v1/activities?limit=2&cursor={cursor}"),
            &ann.token,
        )
        .await;
    assert_eq!(ids(&page2), newest_first[2..4]);
    let cursor = page2["next_cursor"].as_str().unwrap();
    let (_, page3) = app
        .get(
            &format!("/v1/activities?limit=2&cursor={cursor}"),
            &ann.token,
        )
        .await;
    assert_eq!(ids(&page3), newest_first[4..]);
    assert_eq!(page3["next_cursor"], Value::Null);
}

#[tokio::test]
async fn friends_feed_merges_friends_and_hides_private_and_strangers() {
    let app = spawn_app().await;
    let (me, bob, cat, sam) = (
        app.user("Me").await,
        app.user("Bob").await,
        app.user("Cat").await,
        app.user("Sam").await,
    );
    app.befriend(&me, &bob).await;
    app.befriend(&me, &cat).await;
    let b1 = start_at(&app, &bob, 40, json!({})).await;
    let c1 = start_at(&app, &cat, 30, json!({"visibility": "public"})).await;
    start_at(&app, &cat, 20, json!({"visibility": "private"})).await;
    let b2 = start_at(&app, &bob, 10, json!({})).await;
    start_at(&app, &sam, 5, json!({"visibility": "public"})).await;
    start_at(&app, &me, 1, json!({})).await;

    let (_, page1) = app
        .get("/v1/activities?mode=friends&limit=2", &me.token)
        .await;
    assert_eq!(ids(&page1), [b2.clone(), c1.clone()]);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = app
        .get(
            &format!("/v1/activities?mode=friends&limit=2&cursor={cursor}"),
            &me.token,
        )
        .await;
    assert_eq!(ids(&page2), [b1]);
    assert_eq!(page2["next_cursor"], Value::Null);
}

#[tokio::test]
async fn bad_list_parameters_are_400() {
    let app = spawn_app().await;
    let me = app.user("Me").await;
    for query in ["mode=everyone", "limit=0", "limit=1000", "cursor=garbage"] {
        let (status, body) = app.get(&format!("/v1/activities?{query}"), &me.token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body["error"]["code"].is_string());
    }
}
