//! Who may publish, and to which host the gateway answers, on every arrival: API keys with
//! channel patterns and rates, browsers' cross-site posts, and DNS rebinding.

use http::Method;

use super::assert_error;
use crate::common::arrival::*;
use crate::common::{Gateway, unique};

/// A settings file with two keys: `chat` limited to `chat:*` and 1 publish/s (burst 2), and
/// the default key for every channel; browsers of `https://app.example` may publish.
fn keys_file() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("gw-publish-keys-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        r#"
[publish]
api_key = "the-default-publish-key"

[[publish.keys]]
name = "chat"
key = "a-chat-only-key-0123456"
channels = ["chat:*"]
rate_per_second = 1

[cors]
allow_origins = ["https://app.example"]
"#,
    )
    .expect("settings file");
    path
}

async fn post(
    arrival: Arrival,
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Option<String>, serde_json::Value) {
    let reply = request(
        arrival,
        gw,
        Method::POST,
        path,
        headers,
        full(body.to_owned()),
    )
    .await
    .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let (status, retry) = (reply.status, reply.header("retry-after"));
    (status, retry, reply.json().await)
}

/// Every key publishes where its patterns allow (403 elsewhere), a wrong or missing key is 401,
/// and a key over its rate gets 429 with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_keys_grant_channels_and_rates_on_every_arrival() {
    let file = keys_file();
    let file = file.to_str().expect("path").to_owned();
    let dir = std::path::Path::new(&file).parent().map(|d| d.to_owned());
    each(&Arrival::ALL, move |arrival| {
        let file = file.clone();
        async move {
            let gw = arrival.gateway(&[("GATEWAY_CONFIG", &file)]).await;
            let json = ("content-type", "application/json");
            let body = |channel: &str| format!(r#"{{"channel":"{channel}","data":"x"}}"#);
            let default = ("authorization", "Bearer the-default-publish-key");
            let chat = ("authorization", "Bearer a-chat-only-key-0123456");

            let (status, _, reply) =
                post(arrival, &gw, "/publish", &[json, default], &body("news")).await;
            assert_eq!(status, 200, "{reply}");
            let (status, _, reply) =
                post(arrival, &gw, "/publish", &[json, chat], &body("news")).await;
            assert_eq!(status, 403, "{reply}");
            assert_error(&reply, "publish_forbidden");
            for headers in [&[json][..], &[json, ("authorization", "Bearer wrong")][..]] {
                let (status, _, reply) =
                    post(arrival, &gw, "/publish", headers, &body("news")).await;
                assert_eq!(status, 401, "{reply}");
                assert_error(&reply, "unauthorized");
            }
            // The refused publish above spent one of the chat key's two; one more passes.
            let (status, _, reply) =
                post(arrival, &gw, "/publish", &[json, chat], &body("chat:1")).await;
            assert_eq!(status, 200, "{reply}");
            let (status, retry, reply) =
                post(arrival, &gw, "/publish", &[json, chat], &body("chat:1")).await;
            assert_eq!(status, 429, "{reply}");
            assert_error(&reply, "rate_limited");
            assert_eq!(retry.as_deref(), Some("1"));
            // Other keys are not charged for it.
            let (status, _, reply) =
                post(arrival, &gw, "/publish", &[json, default], &body("chat:1")).await;
            assert_eq!(status, 200, "{reply}");
        }
    })
    .await;
    if let Some(dir) = dir {
        std::fs::remove_dir_all(dir).ok();
    }
}

/// A page on another site can make a browser POST `text/plain` without a preflight; such a
/// publish is refused unless its Origin is allowed, whatever its content type.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cross_site_publishes_are_refused_on_every_arrival() {
    each(&Arrival::ALL, |arrival| async move {
        let gw = arrival
            .gateway(&[("GATEWAY__CORS__ALLOW_ORIGINS", "https://app.example")])
            .await;
        let path = "/publish?channel=news";
        for content_type in ["text/plain", "application/octet-stream", "application/json"] {
            let body = if content_type == "application/json" {
                r#"{"channel":"news","data":"x"}"#
            } else {
                "x"
            };
            let ct = ("content-type", content_type);
            let evil = ("origin", "https://evil.example");
            let (status, _, reply) = post(arrival, &gw, path, &[ct, evil], body).await;
            assert_eq!(status, 403, "{content_type}: {reply}");
            assert_error(&reply, "origin_not_allowed");
            let fetch = ("sec-fetch-site", "cross-site");
            let (status, _, reply) = post(arrival, &gw, path, &[ct, fetch], body).await;
            assert_eq!(status, 403, "{content_type} without Origin: {reply}");
            let app = ("origin", "https://app.example");
            let (status, _, reply) = post(arrival, &gw, path, &[ct, app], body).await;
            assert_eq!(
                status, 200,
                "{content_type} from an allowed origin: {reply}"
            );
            let (status, _, reply) = post(arrival, &gw, path, &[ct], body).await;
            assert_eq!(status, 200, "{content_type} from a backend: {reply}");
        }
    })
    .await;
}

/// With `server.allowed_hosts`, a request naming another host (a rebound DNS name) is refused
/// 403 on every path but the probes; the listed host is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unlisted_hosts_are_refused_on_every_arrival() {
    each(&Arrival::ALL, |arrival| async move {
        // The test clients name the gateway 127.0.0.1:<port>.
        let gw = arrival
            .gateway(&[("GATEWAY__SERVER__ALLOWED_HOSTS", "gw.example")])
            .await;
        let reply = open_sse(arrival, &gw, "/sse?channel=c", &[]).await;
        assert_eq!(reply.status, 403);
        assert_error(&reply.json().await, "host_not_allowed");
        let (status, _, reply) = post(
            arrival,
            &gw,
            "/publish?channel=c",
            &[("content-type", "text/plain")],
            "x",
        )
        .await;
        assert_eq!(status, 403, "{reply}");
        let health = request(arrival, &gw, Method::GET, "/healthz", &[], empty())
            .await
            .expect("healthz");
        assert_eq!(health.status, 200, "probes reach any host");

        let gw = arrival
            .gateway(&[("GATEWAY__SERVER__ALLOWED_HOSTS", "gw.example, 127.0.0.1")])
            .await;
        sse(arrival, &gw, "/sse?channel=c", &[]).await.ready().await;
    })
    .await;
}
