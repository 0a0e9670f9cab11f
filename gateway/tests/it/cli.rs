//! The binary's command line: configuration errors, help, and `gateway publish` both straight
//! into Redis and through a running gateway's HTTP API.

use std::process::{Output, Stdio};

use shared::Position;

use crate::common::*;

/// Runs the gateway binary with exactly `env` (plus PATH) and returns once it exits.
async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        // A panic would print its backtrace; the tests assert none appears.
        .env("RUST_BACKTRACE", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("gateway {args:?} did not exit"))
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_no_panic(o: &Output) {
    let err = stderr(o);
    assert!(
        !err.contains("panicked") && !err.contains("backtrace") && o.status.code() != Some(101),
        "the binary panicked: {err}"
    );
}

/// Exit code 2 with a message naming `key`, for every entry point that reads settings.
async fn assert_config_error(args: &[&str], env: &[(&str, &str)], key: &str) {
    let out = run(args, env).await;
    assert_no_panic(&out);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
    assert!(
        err.contains(key),
        "{args:?} {env:?}: message must name {key:?}: {err}"
    );
    assert!(err.starts_with("gateway: "), "{err}");
    assert!(
        stdout(&out).is_empty(),
        "nothing on stdout: {}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_settings_exit_2_naming_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("GATEWAY__HISTORY__SIZE", "abc", "history.size"),
        ("GATEWAY__HISTORY__SIZE", "0", "history.size"),
        ("GATEWAY__HISTORY__SIZE", "-1", "history.size"),
        ("GATEWAY__SERVER__LISTEN", "nowhere", "server.listen"),
        ("GATEWAY__HISTORY__SIZEE", "1", "sizee"),
        ("GATEWAY__NOPE__X", "1", "nope"),
        ("GATEWAY__REDIS__URL", "http://localhost", "redis.url"),
        ("GATEWAY__REDIS__KEY_PREFIX", "a{b}", "redis.key_prefix"),
        (
            "GATEWAY__SERVER__MAX_CONNECTIONS",
            "0",
            "server.max_connections",
        ),
        ("GATEWAY__LOG__FORMAT", "xml", "log.format"),
        ("GATEWAY__COMPRESSION__LEVEL", "0", "compression.level"),
        ("GATEWAY__COMPRESSION__LEVEL", "10", "compression.level"),
        // Authenticated subscribers beside an open publish endpoint.
        (
            "GATEWAY__AUTH__JWT_SECRET",
            "a-secret-of-enough-length",
            "publish.api_key",
        ),
    ];
    for &(key, value, named) in cases {
        assert_config_error(&["check-config"], &[(key, value)], named).await;
    }
    // Serving (the default command) and publishing refuse the same way, before any I/O.
    for args in [
        &[][..],
        &["serve"],
        &["publish", "--channel", "a", "--data", "x"],
        &["redis-function"],
    ] {
        assert_config_error(args, &[("GATEWAY__HISTORY__SIZE", "abc")], "history.size").await;
        assert_config_error(
            args,
            &[("GATEWAY__SERVER__LISTEN", "nowhere")],
            "server.listen",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_files_exit_2() {
    let dir = std::env::temp_dir().join(unique("gw-cli-"));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("broken.toml");
    std::fs::write(&broken, "[history\nsize = ").unwrap();
    let wrong_type = dir.join("wrong-type.toml");
    std::fs::write(&wrong_type, "[history]\nsize = \"abc\"\n").unwrap();
    let unknown = dir.join("unknown.toml");
    std::fs::write(&unknown, "[history]\nsise = 5\n").unwrap();
    let missing = dir.join("missing.toml");
    let (broken, wrong_type, unknown, missing) = (
        broken.to_str().unwrap(),
        wrong_type.to_str().unwrap(),
        unknown.to_str().unwrap(),
        missing.to_str().unwrap(),
    );

    assert_config_error(&["--config", broken, "check-config"], &[], "broken.toml").await;
    assert_config_error(
        &["--config", wrong_type, "check-config"],
        &[],
        "history.size",
    )
    .await;
    assert_config_error(&["check-config", "-c", unknown], &[], "sise").await;
    assert_config_error(&["--config", missing, "check-config"], &[], "missing.toml").await;
    assert_config_error(&["--config", broken], &[], "broken.toml").await;

    // The environment overrides the file, and a good file passes.
    let good = dir.join("good.toml");
    std::fs::write(&good, "[history]\nsize = 7\n").unwrap();
    let out = run(
        &["--config", good.to_str().unwrap(), "check-config"],
        &[("GATEWAY__HISTORY__TTL_SECONDS", "9")],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("size = 7") && text.contains("ttl_seconds = 9"),
        "{text}"
    );
    // What it prints is itself a configuration file that loads.
    let printed = dir.join("printed.toml");
    std::fs::write(&printed, &text).unwrap();
    let out = run(
        &["--config", printed.to_str().unwrap(), "check-config"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), text);
    std::fs::remove_dir_all(dir).ok();
}

/// `check-config` prints every setting but no secret: API keys, the token secret and Redis
/// passwords (inline or from `*_file`) show as `<redacted>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_prints_no_secret() {
    let dir = std::env::temp_dir().join(unique("gw-cli-secrets-"));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("publish-key");
    std::fs::write(&key_file, "key-from-a-file-SECRET-3\n").unwrap();
    let file = dir.join("keys.toml");
    std::fs::write(
        &file,
        "[[publish.keys]]\nname = \"billing\"\nkey = \"inline-key-SECRET-4-long\"\n",
    )
    .unwrap();
    let out = run(
        &["--config", file.to_str().unwrap(), "check-config"],
        &[
            (
                "GATEWAY__AUTH__JWT_SECRET",
                "jwt-secret-SECRET-1-long-enough",
            ),
            ("GATEWAY__PUBLISH__API_KEY_FILE", key_file.to_str().unwrap()),
            (
                "GATEWAY__REDIS__URL",
                "redis://user:redis-SECRET-2@127.0.0.1:6379/0",
            ),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains("SECRET"), "a secret was printed:\n{text}");
    assert!(text.contains("<redacted>"), "{text}");
    assert!(
        text.contains("redis://user:<redacted>@127.0.0.1:6379/0"),
        "{text}"
    );
    assert!(text.contains("name = \"billing\""), "{text}");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_lists_the_subcommands() {
    let out = run(&["--help"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let help = stdout(&out);
    for sub in ["serve", "publish", "redis-function", "check-config"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(sub)),
            "--help does not list {sub}:\n{help}"
        );
    }
    let out = run(&["publish", "--help"], &[]).await;
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    for flag in ["--channel", "--data", "--event", "--json", "--url"] {
        assert!(help.contains(flag), "publish --help lacks {flag}:\n{help}");
    }
    // A usage error is clap's (exit 2), not a panic.
    let out = run(&["publish", "--channel", "a"], &[]).await;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--data"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_straight_into_redis_reaches_sse_clients() {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("t"));
    let gw = Gateway::on_redis(&redis, &prefix, &[]);
    let mut sse = Sse::connect(&gw.url("/sse?channel=cli-news"), None).await;
    sse.ready().await;

    let url = redis.url();
    // No --url: with a Redis URL configured the CLI writes to Redis itself (no gateway needed).
    let env = [
        ("GATEWAY__REDIS__URL", url.as_str()),
        ("GATEWAY__REDIS__KEY_PREFIX", prefix.as_str()),
    ];
    let out = run(
        &[
            "publish",
            "--channel",
            "cli-news",
            "--data",
            "hello\nworld",
            "--event",
            "note",
        ],
        &env,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id: Position = stdout(&out)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{:?}: {e}", stdout(&out)));
    assert_eq!(id.offset, 1);

    let e = sse.next().await;
    assert_eq!(
        (e.event.as_str(), e.data.as_str()),
        ("note", "hello\nworld")
    );
    assert_eq!(e.id, id.to_string());

    let out = run(
        &[
            "publish",
            "--channel",
            "cli-news",
            "--data",
            r#"{"n": [1, 2]}"#,
            "--json",
        ],
        &env,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim().parse::<Position>().unwrap(), id.next());
    let e = sse.next().await;
    assert_eq!(
        (e.event.as_str(), e.data.as_str()),
        ("message", r#"{"n":[1,2]}"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_through_a_gateway_url() {
    let gw = Gateway::spawn(&[]);
    let mut sse = Sse::connect(&gw.url("/sse?channel=via-http"), None).await;
    sse.ready().await;
    let base = format!("http://{}", gw.addr);
    let with_slash = format!("{base}/");

    let out = run(
        &[
            "publish",
            "--url",
            &base,
            "--channel",
            "via-http",
            "--data",
            "plain",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id: Position = stdout(&out).trim().parse().unwrap();
    assert_eq!(id.offset, 1);
    let e = sse.next().await;
    assert_eq!(
        (e.data.as_str(), e.id.as_str()),
        ("plain", id.to_string().as_str())
    );

    // Without --json the data is text, even when it looks like JSON.
    let out = run(
        &[
            "publish",
            "--url",
            &with_slash,
            "--channel",
            "via-http",
            "--data",
            r#"{"a": 1}"#,
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(sse.next().await.data, r#"{"a": 1}"#);

    // --json: objects become compact JSON, a JSON string becomes its text.
    for (data, expected) in [
        (r#"{ "a" : [1, 2] }"#, r#"{"a":[1,2]}"#),
        (r#""quoted""#, "quoted"),
        ("null", "null"),
    ] {
        let out = run(
            &[
                "publish",
                "--url",
                &base,
                "--channel",
                "via-http",
                "--data",
                data,
                "--json",
            ],
            &[],
        )
        .await;
        assert_eq!(out.status.code(), Some(0), "{data}: {}", stderr(&out));
        assert_eq!(sse.next().await.data, expected, "--json --data {data}");
    }

    let out = run(
        &[
            "publish",
            "--url",
            &base,
            "--channel",
            "via-http",
            "--data",
            "{nope",
            "--json",
        ],
        &[],
    )
    .await;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not valid JSON"), "{}", stderr(&out));

    // The gateway's validation errors come back to the user.
    let out = run(
        &["publish", "--url", &base, "--channel", "a b", "--data", "x"],
        &[],
    )
    .await;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("invalid_channel"), "{}", stderr(&out));
    sse.assert_quiet(std::time::Duration::from_millis(200))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_cli_sends_the_configured_api_key() {
    let gw = Gateway::spawn(&[("GATEWAY__PUBLISH__API_KEY", "cli-key")]);
    let base = format!("http://{}", gw.addr);
    let args = [
        "publish",
        "--url",
        base.as_str(),
        "--channel",
        "keyed",
        "--data",
        "x",
    ];
    let out = run(&args, &[("GATEWAY__PUBLISH__API_KEY", "cli-key")]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim().parse::<Position>().unwrap().offset, 1);
    let out = run(&args, &[]).await;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_cli_reports_unreachable_targets() {
    let closed = free_port();
    let redis_url = format!("redis://127.0.0.1:{closed}/");
    let out = run(
        &["publish", "--channel", "a", "--data", "x"],
        &[
            ("GATEWAY__REDIS__URL", &redis_url),
            ("GATEWAY__REDIS__TIMEOUT_SECONDS", "1"),
        ],
    )
    .await;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("gateway: publish failed"), "{err}");
    assert!(stdout(&out).is_empty());

    let url = format!("http://127.0.0.1:{closed}");
    let out = run(
        &["publish", "--url", &url, "--channel", "a", "--data", "x"],
        &[],
    )
    .await;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("publish failed") && err.contains("cannot reach"),
        "{err}"
    );
}

/// `gateway publish --batch FILE` publishes a JSON array in one call, through a gateway's URL
/// and straight into Redis, printing one id per line in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_cli_sends_batches() {
    let dir = std::env::temp_dir().join(unique("gw-cli-batch-"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("batch.json");
    std::fs::write(
        &file,
        r#"[{"channel":"b1","data":"one"},{"channel":"b1","data":{"n":2}}]"#,
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let redis = Redis::start();
    let prefix = format!("{}:", unique("clibatch"));
    let gw = Gateway::on_redis(&redis, &prefix, &[]);
    let mut sse = Sse::connect(&gw.url("/sse?channel=b1"), None).await;
    sse.ready().await;
    let base = format!("http://{}", gw.addr);
    let redis_url = redis.url();
    for env in [
        vec![],
        vec![
            ("GATEWAY__REDIS__URL", redis_url.as_str()),
            ("GATEWAY__REDIS__KEY_PREFIX", prefix.as_str()),
        ],
    ] {
        let args: Vec<&str> = if env.is_empty() {
            vec!["publish", "--url", &base, "--batch", file]
        } else {
            vec!["publish", "--batch", file]
        };
        let out = run(&args, &env).await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let ids: Vec<Position> = stdout(&out).lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(ids.len(), 2, "{}", stdout(&out));
        assert_eq!(ids[1].offset, ids[0].offset + 1);
        let got: Vec<String> = sse.take(2).await.into_iter().map(|e| e.data).collect();
        assert_eq!(got, ["one", r#"{"n":2}"#]);
    }
    let out = run(&["publish", "--batch", file, "--channel", "x"], &[]).await;
    assert_ne!(out.status.code(), Some(0), "--batch excludes --channel");
    std::fs::remove_dir_all(dir).ok();
}
