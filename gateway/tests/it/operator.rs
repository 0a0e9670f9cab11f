//! What an operator gets: the Grafana dashboard's queries return data from a real Prometheus
//! that scraped a live gateway under load, the alert rules pass `promtool` and each has a unit
//! test and a runbook section, `/metrics` passes `promtool check metrics`, and every line the
//! gateway prints (the start-up banner included) is a log line in the configured format.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::prometheus::{PROMTOOL, Prometheus};
use crate::common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Runs `promtool` with `args` in `deploy/prometheus`; panics with its output unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let out = Command::new(PROMTOOL)
        .args(args)
        .current_dir(repo().join("deploy/prometheus"))
        .output()
        .expect("run promtool (Debian package `prometheus`)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The values of `key: value` lines (YAML scalars this simple need no YAML parser).
fn yaml_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start().trim_start_matches("- ");
            l.strip_prefix(key)?
                .strip_prefix(':')
                .map(|v| v.trim().to_owned())
        })
        .collect()
}

/// GitHub's anchor of a Markdown heading: lower case, spaces to `-`, other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn alert_rules_pass_promtool_each_fires_in_a_unit_test_and_has_a_runbook_section() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts_test.yml"]);

    let rules_text =
        std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).expect("alerts.yml");
    let rules = yaml_values(&rules_text, "alert");
    assert!(rules.len() >= 10, "rules parsed: {rules:?}");

    // A rule is covered when some test case expects it to fire (a non-empty exp_alerts).
    let tests_text = std::fs::read_to_string(repo().join("deploy/prometheus/alerts_test.yml"))
        .expect("alerts_test.yml");
    let mut firing = BTreeSet::new();
    let mut current: Option<String> = None;
    for line in tests_text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(name.trim().to_owned());
        } else if line.starts_with("exp_alerts:") && line != "exp_alerts: []" {
            firing.extend(current.clone());
        }
    }
    let untested: Vec<_> = rules.iter().filter(|r| !firing.contains(*r)).collect();
    assert!(
        untested.is_empty(),
        "rules no unit test fires: {untested:?}"
    );

    // Each rule's runbook_url names a section of deploy/RUNBOOK.md titled with the rule.
    let runbook = std::fs::read_to_string(repo().join("deploy/RUNBOOK.md")).expect("RUNBOOK.md");
    let sections: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(anchor)
        .collect();
    let urls = yaml_values(&rules_text, "runbook_url");
    assert_eq!(urls.len(), rules.len(), "one runbook_url per rule");
    for (rule, url) in rules.iter().zip(&urls) {
        assert_eq!(
            url,
            &format!("deploy/RUNBOOK.md#{}", anchor(rule)),
            "runbook_url of {rule}"
        );
        assert!(
            sections.contains(&anchor(rule)),
            "deploy/RUNBOOK.md has no section {rule}"
        );
    }
}

/// Every `expr` in the dashboard (panel targets), and the instance variable's query.
fn dashboard_queries() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(repo().join("deploy/grafana/gateway.json"))
        .expect("deploy/grafana/gateway.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    // `label_values(METRIC, LABEL)` is Grafana's; Prometheus answers `METRIC` with the label.
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(def) = var["definition"].as_str() {
            let inner = def
                .strip_prefix("label_values(")
                .and_then(|d| d.strip_suffix(')'))
                .and_then(|d| d.rsplit_once(','))
                .map(|(metric, _label)| metric.trim().to_owned())
                .unwrap_or_else(|| panic!("unexpected variable query {def}"));
            out.push(inner);
        }
    }
    out
}

/// Grafana's variables, made concrete for one instance.
fn concrete(expr: &str, instance: &str) -> String {
    expr.replace("${instance}", instance)
        .replace("$instance", instance)
        .replace("$__rate_interval", "30s")
        .replace("$__interval", "5s")
        .replace("$__range", "1m")
}

/// Publishes on `channel` until `n` events, returning the first id.
async fn publish_n(base: &str, channel: &str, n: usize) -> String {
    let first = publish(base, channel, "0").await;
    for i in 1..n {
        publish(base, channel, &i.to_string()).await;
    }
    first
}

/// Validates every query with promtool: as the expressions of recording rules in a temp rules
/// file (`promtool check rules` parses each one as PromQL). A JSON string is a YAML scalar.
fn promtool_validates(queries: &[String], instance: &str) {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in queries.iter().enumerate() {
        let expr = serde_json::Value::String(concrete(expr, instance));
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {expr}\n"
        ));
    }
    let path = std::env::temp_dir().join(format!("{}.yml", unique("gw-dashboard-rules-")));
    std::fs::write(&path, rules).expect("dashboard rules file");
    let checked = promtool(&["check", "rules", &path.display().to_string()]);
    let _ = std::fs::remove_file(&path);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{checked}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_prometheus_scraping_a_live_gateway() {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("ops"));
    let gw = Gateway::on_redis(
        &redis,
        &prefix,
        &[
            ("GATEWAY__HISTORY__SIZE", "10"),
            ("GATEWAY__WS__ALLOW_PUBLISH", "true"),
        ],
    );
    let base = gw.url("");
    let instance = gw.addr.to_string();
    let prom = Prometheus::scraping(std::slice::from_ref(&instance));

    // The live scrape passes promtool's metrics lint.
    let text = metrics_text(&base).await;
    let mut lint = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    lint.stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let lint = lint.wait_with_output().expect("promtool check metrics");
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // A small load: an SSE and a WebSocket client, publishes over HTTP and WebSocket, a
    // recovered resume, a gap, a bad cursor and a request without a channel.
    let mut sse = Sse::connect(&gw.url("/sse?channel=ops"), None).await;
    sse.ready().await;
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.subscribe("ops", None).await;
    publish_n(&base, "ops", 20).await;
    assert_eq!(sse.take(20).await.len(), 20);
    assert_eq!(ws.event_data(20).await.len(), 20);
    let mut writer = Ws::connect(&ws_url(gw.addr)).await;
    writer
        .send(serde_json::json!({"type": "publish", "channel": "ops", "data": "from ws"}))
        .await;
    writer.expect("published").await;
    let resume_from = sse.take(1).await[0].id.clone();
    drop(sse);
    publish(&base, "ops", "while away").await;
    let mut resumed = Sse::connect(&gw.url("/sse?channel=ops"), Some(&resume_from)).await;
    assert_eq!(resumed.next().await.data, "while away");
    let old = publish_n(&base, "trimmed", 300).await;
    let mut gapped = Sse::connect(&gw.url("/sse?channel=trimmed"), Some(&old)).await;
    assert_gap(&gapped.next().await, "trimmed");
    let client = http();
    let no_channel = client.get(gw.url("/sse")).send().await.expect("GET /sse");
    assert_eq!(no_channel.status(), 400);
    let bad_cursor = client
        .get(gw.url("/sse?channel=ops"))
        .header("Last-Event-ID", "not-a-cursor")
        .send()
        .await
        .expect("GET /sse with a bad cursor");
    assert_eq!(bad_cursor.status(), 400);

    // Prometheus has scraped the load, several times.
    let started = Instant::now();
    eventually("Prometheus to scrape the load", async || {
        prom.value(&format!(
            r#"gateway_resumes_total{{instance="{instance}",outcome="gap"}}"#
        ))
        .await
            >= 1.0
            && prom
                .value(&format!(
                    r#"count_over_time(up{{instance="{instance}"}}[1m])"#
                ))
                .await
                >= 3.0
    })
    .await;
    let scraped_in = started.elapsed();

    let queries = dashboard_queries();
    assert!(queries.len() >= 25, "queries found: {queries:#?}");
    promtool_validates(&queries, &instance);
    let mut empty = Vec::new();
    for expr in &queries {
        let query = concrete(expr, &instance);
        assert!(!query.contains('$'), "unsubstituted variable in {query}");
        if prom.query(&query).await.is_empty() {
            empty.push(query);
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}\nPrometheus log:\n{}",
        empty.join("\n"),
        prom.log()
    );

    // The load is what Prometheus saw (not just zeros).
    for (series, at_least) in [
        (r#"gateway_resumes_total{outcome="recovered"}"#, 1.0),
        (
            r#"gateway_requests_rejected_total{reason="missing_channel"}"#,
            1.0,
        ),
        (r#"gateway_resumes_total{outcome="bad_cursor"}"#, 1.0),
        (r#"gateway_messages_published_total{api="ws"}"#, 1.0),
        (r#"gateway_connections_accepted_total{transport="ws"}"#, 1.0),
        (r#"gateway_messages_delivered_total{transport="sse"}"#, 20.0),
        ("gateway_delivery_latency_seconds_count", 20.0),
        ("process_resident_memory_bytes", 1.0),
    ] {
        let got = prom.value(series).await;
        assert!(got >= at_least, "{series} = {got}, want >= {at_least}");
    }
    eprintln!(
        "operator: {} dashboard queries returned data; Prometheus had the load after {scraped_in:?}",
        queries.len()
    );
    drop((resumed, gapped, ws, writer));
}

#[test]
fn the_banner_and_every_other_line_are_json_logs_with_log_format_json() {
    let address_file = std::env::temp_dir().join(unique("gw-address-"));
    let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GATEWAY__SERVER__LISTEN", "127.0.0.1:0")
        .env("GATEWAY__SERVER__WORKERS", "1")
        .env("GATEWAY__SERVER__SHUTDOWN_TIMEOUT_SECONDS", "1")
        .env("GATEWAY__SERVER__ADDRESS_FILE", &address_file)
        .env("GATEWAY__LOG__FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gateway");
    let deadline = Instant::now() + WAIT;
    let line = loop {
        if let Ok(line) = std::fs::read_to_string(&address_file) {
            break line;
        }
        assert!(Instant::now() < deadline, "no address file");
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = std::fs::remove_file(&address_file);
    let line = line.trim_end();
    assert!(
        line.starts_with("listening on http://127.0.0.1:") && line.ends_with("(engine: memory)"),
        "{line}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().expect("gateway output");
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8(out.stderr).expect("logs are UTF-8");
    let logs: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let banner = logs
        .iter()
        .find(|l| l["fields"]["message"] == line)
        .unwrap_or_else(|| panic!("no banner log line {line:?} in:\n{stderr}"));
    assert_eq!(banner["level"], "INFO");
    assert_eq!(banner["fields"]["engine"], "memory");
    assert_eq!(banner["fields"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        banner["fields"]["commit"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );
}
