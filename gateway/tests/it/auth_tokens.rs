//! Tokens against a running gateway: each refusal's code on SSE (401) and the 4500 close on
//! WebSocket, RS256 through a JWKS served by the test with key rotation, audience and issuer,
//! the cookie, and a secret read from a file.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::jwt::{self, JwksServer, RsaKey};
use crate::common::*;

const SECRET: &str = "an-auth-tokens-test-secret";

fn gateway(env: &[(&str, &str)]) -> InProcess {
    let mut env = env.to_vec();
    env.push(("GATEWAY__PUBLISH__ALLOW_ANONYMOUS", "true"));
    InProcess::start(settings(None, &env), Default::default())
}

fn claims() -> Value {
    json!({"sub": "u1", "exp": jwt::now() + 600, "channels": ["news"]})
}

/// The status and error code of `GET /sse?channel=news` with `token` in the query and `headers`.
async fn sse_with(gw: &InProcess, token: Option<&str>, headers: &[(&str, &str)]) -> (u16, String) {
    let path = match token {
        Some(t) => format!("/sse?channel=news&token={t}"),
        None => "/sse?channel=news".to_owned(),
    };
    let mut req = http().get(gw.url(&path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.expect("SSE request");
    let status = res.status().as_u16();
    if status == 200 {
        return (200, String::new());
    }
    let body: Value = res.json().await.expect("a JSON error");
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn sse(gw: &InProcess, token: &str) -> (u16, String) {
    sse_with(gw, Some(token), &[]).await
}

/// Opens `/ws?token=...` and returns the close code and reason it gets, or `None` if it was
/// let in (answers a subscribe).
async fn ws(gw: &InProcess, token: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let url = if token.is_empty() {
        ws_url(gw.addr)
    } else {
        format!("{}?token={token}", ws_url(gw.addr))
    };
    let mut ws = Ws::try_connect(&url, headers).await.expect("upgrade");
    ws.send(json!({"type": "subscribe", "channel": "news"}))
        .await;
    match ws.recv().await {
        WsItem::Json(v) if v["type"] == "subscribed" => None,
        WsItem::Closed(frame) => frame,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_tokens_refusals_name_the_rule_on_sse_and_close_4500_on_ws() {
    // No first-message auth here: a WebSocket without a token is refused at once.
    let gw = gateway(&[
        ("GATEWAY__AUTH__JWT_SECRET", SECRET),
        ("GATEWAY__WS__AUTH_TIMEOUT_SECONDS", "0"),
    ]);
    let now = jwt::now();
    let good = jwt::hs256(SECRET, &claims());
    assert_eq!(sse(&gw, &good).await, (200, String::new()));
    assert_eq!(ws(&gw, &good, &[]).await, None);
    // Any aud is fine when no audience is configured.
    let with_aud = jwt::hs256(
        SECRET,
        &json!({"exp": now + 600, "aud": "app", "channels": ["news"]}),
    );
    assert_eq!(sse(&gw, &with_aud).await.0, 200);

    let cases = [
        ("unauthorized", String::new(), "required"),
        ("token_malformed", "not.a.token".to_owned(), "header"),
        (
            "token_bad_signature",
            jwt::hs256("another-secret-of-some-length", &claims()),
            "signature",
        ),
        (
            "token_expired",
            jwt::hs256(SECRET, &json!({"exp": now - 60, "channels": ["news"]})),
            "expired",
        ),
        (
            "token_not_yet_valid",
            jwt::hs256(
                SECRET,
                &json!({"exp": now + 600, "nbf": now + 300, "channels": ["news"]}),
            ),
            "nbf",
        ),
        (
            "token_algorithm_not_allowed",
            jwt::unsigned(&claims()),
            "alg",
        ),
        (
            "token_unsupported_crit",
            jwt::hs256_with_header(
                SECRET,
                &json!({"alg": "HS256", "crit": ["x-ext"], "x-ext": 1}),
                &claims(),
            ),
            "crit",
        ),
        (
            "token_malformed",
            jwt::hs256(SECRET, &json!({"channels": ["news"]})),
            "exp",
        ),
    ];
    for (code, token, words) in cases {
        let tok = (!token.is_empty()).then_some(token.as_str());
        assert_eq!(
            sse_with(&gw, tok, &[]).await,
            (401, code.to_owned()),
            "{code}"
        );
        let (close, reason) = ws(&gw, &token, &[]).await.expect("refused");
        assert_eq!(close, 4500, "{code}");
        assert!(reason.contains(words), "{code}: {reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_tokens_rs256_through_a_jwks_with_rotation() {
    let (k1, k2) = (RsaKey::generate(), RsaKey::generate());
    let server = JwksServer::start(vec![k1.jwk("k1")]);
    let url = server.url();
    let gw = gateway(&[
        ("GATEWAY__AUTH__JWKS_URL", url.as_str()),
        ("GATEWAY__AUTH__JWKS_REFRESH_SECONDS", "3600"),
        ("GATEWAY__AUTH__JWKS_COOLDOWN_SECONDS", "1"),
    ]);
    let by_k1 = k1.sign("k1", &claims());
    let by_k2 = k2.sign("k2", &claims());
    assert_eq!(sse(&gw, &by_k1).await.0, 200);
    assert_eq!(ws(&gw, &by_k1, &[]).await, None);
    assert_eq!(server.hits(), 1, "fetched once at start");
    // An HS256 token can never pass: no HMAC key is configured, whatever the kid says.
    let confused = jwt::hs256_with_header(
        &k1.public_pem,
        &json!({"alg": "HS256", "kid": "k1"}),
        &claims(),
    );
    assert_eq!(
        sse(&gw, &confused).await,
        (401, "token_algorithm_not_allowed".into())
    );

    // The identity provider adds k2: the first token naming it triggers a fetch.
    server.set(vec![k1.jwk("k1"), k2.jwk("k2")]);
    assert_eq!(sse(&gw, &by_k2).await, (401, "token_unknown_key".into()));
    eventually("k2 to be fetched", async || sse(&gw, &by_k2).await.0 == 200).await;
    assert_eq!(ws(&gw, &by_k2, &[]).await, None);
    assert_eq!(sse(&gw, &by_k1).await.0, 200, "k1 still published");
    assert!(server.hits() >= 2, "fetched on the unknown kid");
    // Let a fetch still asked for by the polling above happen before counting.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after_rotation = server.hits();

    // Made-up kids cannot make it fetch more than once per cooldown.
    for i in 0..20 {
        let made_up = k1.sign(&format!("made-up-{i}"), &claims());
        assert_eq!(sse(&gw, &made_up).await, (401, "token_unknown_key".into()));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let burst = server.hits() - after_rotation;
    assert!(
        (1..=2).contains(&burst),
        "{burst} fetches for 20 unknown kids"
    );

    // k1 is withdrawn: refused once a refresh has happened (here one asked for by a kid).
    server.set(vec![k2.jwk("k2")]);
    let _ = sse(&gw, &k2.sign("k3", &claims())).await;
    eventually("k1 to be dropped", async || {
        sse(&gw, &by_k1).await == (401, "token_unknown_key".into())
    })
    .await;
    assert_eq!(sse(&gw, &by_k2).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_tokens_jwks_refreshes_on_its_interval() {
    let (k1, k2) = (RsaKey::generate(), RsaKey::generate());
    let server = JwksServer::start(vec![k1.jwk("k1"), k2.jwk("k2")]);
    let url = server.url();
    let gw = gateway(&[
        ("GATEWAY__AUTH__JWKS_URL", url.as_str()),
        ("GATEWAY__AUTH__JWKS_REFRESH_SECONDS", "1"),
        ("GATEWAY__AUTH__JWKS_COOLDOWN_SECONDS", "1"),
    ]);
    let by_k1 = k1.sign("k1", &claims());
    assert_eq!(sse(&gw, &by_k1).await.0, 200);
    server.set(vec![k2.jwk("k2")]);
    eventually("k1 to be dropped by a periodic refresh", async || {
        sse(&gw, &by_k1).await.0 == 401
    })
    .await;
    assert_eq!(sse(&gw, &k2.sign("k2", &claims())).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_tokens_audience_and_issuer_must_match_when_configured() {
    let gw = gateway(&[
        ("GATEWAY__AUTH__JWT_SECRET", SECRET),
        ("GATEWAY__AUTH__AUDIENCE", "push-gateway"),
        ("GATEWAY__AUTH__ISSUER", "https://idp.test"),
    ]);
    let exp = jwt::now() + 600;
    let token = |aud: &str, iss: &str| {
        jwt::hs256(
            SECRET,
            &json!({"exp": exp, "aud": aud, "iss": iss, "channels": ["news"]}),
        )
    };
    assert_eq!(
        sse(&gw, &token("push-gateway", "https://idp.test")).await.0,
        200
    );
    let both = jwt::hs256(
        SECRET,
        &json!({"exp": exp, "aud": ["other", "push-gateway"], "iss": "https://idp.test", "channels": ["news"]}),
    );
    assert_eq!(sse(&gw, &both).await.0, 200);
    assert_eq!(
        sse(&gw, &token("other-app", "https://idp.test")).await,
        (401, "token_wrong_audience".into())
    );
    assert_eq!(
        sse(&gw, &token("push-gateway", "https://evil.test")).await,
        (401, "token_wrong_issuer".into())
    );
    let (close, reason) = ws(&gw, &token("other-app", "https://idp.test"), &[])
        .await
        .expect("refused");
    assert_eq!(close, 4500);
    assert!(reason.contains("aud"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_tokens_ride_in_a_cookie_after_header_and_query() {
    let gw = gateway(&[
        ("GATEWAY__AUTH__JWT_SECRET", SECRET),
        ("GATEWAY__AUTH__COOKIE_NAME", "gw_token"),
    ]);
    let good = jwt::hs256(SECRET, &claims());
    let cookie = format!("theme=dark; gw_token={good}");
    assert_eq!(sse_with(&gw, None, &[("cookie", &cookie)]).await.0, 200);
    assert_eq!(ws(&gw, "", &[("cookie", &cookie)]).await, None);
    // An explicit token wins over the ambient cookie, even when it is the bad one.
    let expired = jwt::hs256(SECRET, &json!({"exp": 1, "channels": ["news"]}));
    assert_eq!(
        sse_with(&gw, Some(&expired), &[("cookie", &cookie)]).await,
        (401, "token_expired".into())
    );
    let bearer = format!("Bearer {expired}");
    assert_eq!(
        sse_with(
            &gw,
            None,
            &[("cookie", &cookie), ("authorization", &bearer)]
        )
        .await,
        (401, "token_expired".into())
    );
    // Another cookie name is not read.
    let other = format!("session={good}");
    assert_eq!(
        sse_with(&gw, None, &[("cookie", &other)]).await,
        (401, "unauthorized".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_tokens_secret_from_a_file() {
    let dir = std::env::temp_dir().join(unique("gw-auth-secret-"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("secret");
    std::fs::write(&path, format!("{SECRET}\n")).expect("write secret");
    let gw = gateway(&[(
        "GATEWAY__AUTH__JWT_SECRET_FILE",
        path.to_str().expect("path"),
    )]);
    assert_eq!(sse(&gw, &jwt::hs256(SECRET, &claims())).await.0, 200);
    assert_eq!(
        sse(&gw, &jwt::hs256(&format!("{SECRET}\n"), &claims())).await,
        (401, "token_bad_signature".into())
    );
    std::fs::remove_dir_all(dir).ok();
}
