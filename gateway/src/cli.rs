//! The command line: `gateway` serves; `gateway publish` publishes one event; `gateway
//! redis-function` prints the Redis library; `gateway check-config` validates settings.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::publish::{self, PublishBody};

/// Real-time push gateway: SSE and WebSocket fan-out over Redis with exact resume on any instance.
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
pub struct Cli {
    /// TOML settings file; GATEWAY__<SECTION>__<KEY> environment variables override it.
    #[arg(long, short, global = true, value_name = "FILE")]
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
    /// Publish one event: straight into Redis when configured, else via a running gateway's HTTP API.
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
    #[arg(long)]
    pub channel: String,
    /// Payload; published as text unless --json is given.
    #[arg(long)]
    pub data: String,
    /// Optional SSE event name.
    #[arg(long)]
    pub event: Option<String>,
    /// Parse --data as JSON: a JSON string is published as text, any other value as JSON.
    #[arg(long)]
    pub json: bool,
    /// Publish through this gateway's HTTP API (default without Redis: http://<server.listen>).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
}

/// Runs `gateway publish`; returns the new event's id.
pub async fn publish(settings: &Settings, args: PublishArgs) -> anyhow::Result<String> {
    let data = if args.json {
        serde_json::from_str(&args.data).context("--data is not valid JSON")?
    } else {
        serde_json::Value::String(args.data)
    };
    let body = PublishBody {
        channel: args.channel,
        data,
        event: args.event,
    };
    if args.url.is_none() && settings.redis.url.is_some() {
        let engine = crate::server::build_engine(settings, &Metrics::new())?;
        let position = publish::publish(&engine, body)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        return Ok(position.to_string());
    }
    let url = args
        .url
        .unwrap_or_else(|| format!("http://{}", settings.server.listen));
    http_publish(&url, settings.publish.api_key.as_deref(), &body).await
}

/// A minimal HTTP/1.1 POST, so the CLI needs no HTTP client library for one request.
async fn http_publish(
    url: &str,
    api_key: Option<&str>,
    body: &PublishBody,
) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .context("--url must start with http://")?;
    let (host, base) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let base = base.trim_end_matches('/');
    let path = if base.is_empty() {
        "/publish".to_owned()
    } else {
        format!("/{base}/publish")
    };
    let json = serde_json::to_vec(body)?;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        json.len()
    );
    if let Some(key) = api_key {
        request.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    request.push_str("\r\n");
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("cannot reach the gateway at {host}"))?;
    stream.write_all(request.as_bytes()).await?;
    stream.write_all(&json).await?;
    let mut response = Vec::new();
    stream.take(1 << 20).read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        bail!("the gateway answered {status}: {body}");
    }
    let reply: serde_json::Value =
        serde_json::from_str(body).context("unexpected response body")?;
    reply["id"]
        .as_str()
        .map(str::to_owned)
        .context("response without id")
}
