//! The command line: `gateway` serves; `gateway publish` publishes one event (or a batch);
//! `gateway redis-function` prints the Redis library; `gateway check-config` validates settings.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::publish::{self, PublishBody};

/// Real-time push gateway: SSE and WebSocket fan-out over Redis with exact resume on any instance.
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
pub struct Cli {
    /// TOML settings file (or `GATEWAY_CONFIG`); GATEWAY__<SECTION>__<KEY> environment
    /// variables override it.
    #[arg(
        long,
        short,
        global = true,
        value_name = "FILE",
        env = "GATEWAY_CONFIG"
    )]
    pub config: Option<PathBuf>,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve clients (the default).
    Serve,
    /// Publish one event (or a batch with --batch): straight into Redis when configured, else via a running gateway's HTTP API.
    Publish(PublishArgs),
    /// Print the Redis Functions library the gateway loads (for FUNCTION LOAD by hand).
    RedisFunction,
    /// Validate the settings and print them.
    CheckConfig,
}

/// `gateway publish` arguments.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Channel to publish to.
    #[arg(long, required_unless_present = "batch")]
    pub channel: Option<String>,
    /// Payload; published as text unless --json is given.
    #[arg(long, required_unless_present = "batch")]
    pub data: Option<String>,
    /// Optional SSE event name.
    #[arg(long)]
    pub event: Option<String>,
    /// Parse --data as JSON: a JSON string is published as text, any other value as JSON.
    #[arg(long)]
    pub json: bool,
    /// Publish through this gateway's HTTP API (default without Redis: http://<server.listen>).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Publish a batch in one call: a file (`-`: stdin) holding a JSON array of
    /// `{"channel", "data", "event"?}` objects, as `POST /publish` takes; prints one id per line.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["channel", "data", "event", "json"])]
    pub batch: Option<PathBuf>,
}

/// Runs `gateway publish`; returns the new event's id (a batch's, one per line).
pub async fn publish(settings: &Settings, args: PublishArgs) -> anyhow::Result<String> {
    if let Some(path) = &args.batch {
        return publish_batch(settings, path, args.url.as_deref()).await;
    }
    let (Some(channel), Some(data)) = (args.channel, args.data) else {
        bail!("--channel and --data are required");
    };
    let data = if args.json {
        serde_json::from_str(&data).context("--data is not valid JSON")?
    } else {
        serde_json::Value::String(data)
    };
    let body = PublishBody {
        channel,
        data,
        event: args.event,
    };
    if args.url.is_none() && settings.redis.enabled() {
        let engine = crate::server::build_engine(settings, &Metrics::new())?;
        let request = publish::validate(body).map_err(|e| anyhow::anyhow!("{e}"))?;
        let position = publish::publish(&engine, request, None)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        return Ok(position.to_string());
    }
    let url = args
        .url
        .unwrap_or_else(|| format!("http://{}", settings.server.listen));
    let reply = http_publish(&url, api_key(settings), &body).await?;
    reply["id"]
        .as_str()
        .map(str::to_owned)
        .context("the gateway's answer has no id")
}

/// The key the CLI presents: `publish.api_key`, else the first of `publish.keys`.
fn api_key(settings: &Settings) -> Option<&str> {
    (settings.publish.api_key.iter())
        .chain(settings.publish.keys.iter().filter_map(|k| k.key.as_ref()))
        .next()
        .map(crate::config::Secret::expose)
}

/// `gateway publish --batch FILE`: into Redis in one round trip when configured, else one
/// `POST /publish` with the array.
async fn publish_batch(
    settings: &Settings,
    path: &std::path::Path,
    url: Option<&str>,
) -> anyhow::Result<String> {
    let raw = if path == std::path::Path::new("-") {
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut raw).context("reading stdin")?;
        raw
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    let ids: Vec<String> = if url.is_none() && settings.redis.enabled() {
        let requests = publish::batch::parse(&raw, settings.publish.max_batch)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let engine = crate::server::build_engine(settings, &Metrics::new())?;
        let results = publish::batch::publish(&engine, &requests, None)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut ids = Vec::with_capacity(results.len());
        for (i, r) in results.into_iter().enumerate() {
            ids.push(r.map_err(|e| anyhow::anyhow!("item {i}: {e}"))?.to_string());
        }
        ids
    } else {
        let body: serde_json::Value =
            serde_json::from_slice(&raw).context("the batch is not JSON")?;
        let url = url.map_or_else(
            || format!("http://{}", settings.server.listen),
            str::to_owned,
        );
        let reply = http_publish(&url, api_key(settings), &body).await?;
        let results = reply["results"]
            .as_array()
            .context("the gateway's answer has no results")?;
        results
            .iter()
            .map(|r| {
                r["id"]
                    .as_str()
                    .map(str::to_owned)
                    .context("an item has no id")
            })
            .collect::<anyhow::Result<_>>()?
    };
    Ok(ids.join("\n"))
}

/// `POST <url>/publish` with an HTTP client (reqwest, plain `http://`: the CLI talks to a
/// gateway on its own network; a TLS-only gateway is published to through Redis or any HTTPS
/// client).
async fn http_publish(
    url: &str,
    api_key: Option<&str>,
    body: &impl serde::Serialize,
) -> anyhow::Result<serde_json::Value> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .context("cannot build the HTTP client")?;
    let endpoint = format!("{}/publish", url.trim_end_matches('/'));
    let mut request = client.post(&endpoint).json(body);
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {url}"))?;
    let status = response.status();
    let text = response.text().await.context("cannot read the answer")?;
    if !status.is_success() {
        bail!("the gateway answered {}: {text}", status.as_u16());
    }
    serde_json::from_str(&text).context("unexpected response body")
}
