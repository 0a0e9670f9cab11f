//! Turning the command line into a publish target and a subscriber plan.

use anyhow::{Context, ensure};

use crate::cli::{Common, PubOpts, PublishVia, SubOpts};
use crate::conn::{SubPlan, Transport};
use crate::net::TlsClient;
use crate::publish::PubTarget;
use crate::target::{Url, parse_sources, parse_url};

pub(super) fn channel_prefix(common: &Common) -> String {
    common
        .channel_prefix
        .clone()
        .unwrap_or_else(|| format!("lt-{}-{:04x}-", std::process::id(), fastrand::u16(..)))
}

/// The TLS client, built when any URL of the run is `https://` (one configuration for all).
pub(super) fn tls_client(
    common: &Common,
    subs: Option<&SubOpts>,
    p: &PubOpts,
    storm: &[String],
) -> anyhow::Result<Option<TlsClient>> {
    let any_tls = common
        .urls
        .iter()
        .chain(&p.publish_url)
        .chain(subs.and_then(|s| s.sub_url.as_ref()))
        .chain(storm)
        .any(|u| parse_url(u).is_ok_and(|u| u.is_tls()));
    if !any_tls {
        return Ok(None);
    }
    Ok(Some(TlsClient::new(common.ca.as_deref(), common.insecure)?))
}

pub(super) fn tls_for(url: &Url, tls: Option<&TlsClient>) -> anyhow::Result<Option<TlsClient>> {
    if !url.is_tls() {
        return Ok(None);
    }
    tls.cloned()
        .map(Some)
        .context("https:// needs --ca or --insecure")
}

pub(super) fn pub_target(
    common: &Common,
    p: &PubOpts,
    tls: Option<&TlsClient>,
) -> anyhow::Result<PubTarget> {
    if let Some(t) = &p.publish_url {
        ensure!(
            p.publish == PublishVia::Http,
            "--publish-url is an HTTP template; it cannot be combined with --publish redis"
        );
        let url = parse_url(t)?;
        ensure!(url.is_http(), "--publish-url must be http:// or https://");
        return Ok(PubTarget::Template {
            tls: tls_for(&url, tls)?,
            url,
            body: p.publish_body.clone(),
        });
    }
    let batched = p.publish_batch > 1;
    ensure!(
        !batched || p.publish == PublishVia::Http,
        "--publish-batch needs --publish http"
    );
    match p.publish {
        PublishVia::Redis if !p.redis_cluster.is_empty() => {
            for u in &p.redis_cluster {
                ensure!(
                    parse_url(u)?.scheme == "redis",
                    "--redis-cluster nodes must be redis://"
                );
            }
            Ok(PubTarget::RedisCluster {
                nodes: p.redis_cluster.clone(),
                prefix: p.key_prefix.clone(),
            })
        }
        PublishVia::Redis => {
            let url = p
                .redis_url
                .clone()
                .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
            ensure!(
                parse_url(&url)?.scheme == "redis",
                "--redis-url must be redis://"
            );
            Ok(PubTarget::Redis {
                url,
                prefix: p.key_prefix.clone(),
            })
        }
        PublishVia::Http => {
            let first = common.urls.first().context("no --url")?;
            let url = parse_url(first)?;
            ensure!(url.is_http(), "--url must be http:// or https://");
            Ok(PubTarget::Gateway {
                tls: tls_for(&url, tls)?,
                url,
                batch: usize::from(p.publish_batch),
            })
        }
    }
}

pub(super) fn sub_plan(
    common: &Common,
    s: &SubOpts,
    storm: &[String],
    tls: Option<&TlsClient>,
) -> anyhow::Result<SubPlan> {
    let template = s.sub_url.is_some();
    ensure!(
        !s.http2 || s.transport == Transport::Sse,
        "--http2 is for SSE subscribers (the gateway's WebSocket is HTTP/1.1 only)"
    );
    ensure!(
        s.streams_per_conn >= 1,
        "--streams-per-conn must be at least 1"
    );
    let targets = match &s.sub_url {
        Some(t) => {
            ensure!(
                s.transport == Transport::Sse,
                "--sub-url subscribes over SSE; --transport ws needs the gateway (--url)"
            );
            ensure!(
                t.contains("{channel}"),
                "--sub-url needs a {{channel}} placeholder"
            );
            vec![parse_url(t)?]
        }
        None => common
            .urls
            .iter()
            .map(|u| parse_url(u))
            .collect::<anyhow::Result<_>>()?,
    };
    let storm_targets = storm
        .iter()
        .map(|u| parse_url(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut any_tls = false;
    for u in targets.iter().chain(&storm_targets) {
        ensure!(
            u.is_http(),
            "subscriber URLs must be http:// or https:// ({})",
            u.host
        );
        any_tls |= u.is_tls();
    }
    ensure!(
        !s.compressed || !s.http2,
        "--compressed is for SSE over HTTP/1.1 and WebSocket"
    );
    ensure!(
        !s.inflate_once || s.compressed,
        "--inflate-once is for --compressed subscribers"
    );
    ensure!(
        !s.ws_no_server_context || (s.compressed && s.transport == Transport::Ws),
        "--ws-no-server-context is for --compressed WebSocket subscribers"
    );
    Ok(SubPlan {
        transport: s.transport,
        targets,
        storm_targets,
        template,
        sources: parse_sources(&s.source_ips)?,
        reconnect: !s.no_reconnect,
        tls: if any_tls {
            Some(tls.cloned().context("https:// needs --ca or --insecure")?)
        } else {
            None
        },
        http2: s.http2,
        streams_per_conn: s.streams_per_conn,
        compressed: s.compressed,
        inflate_once: s.inflate_once,
        ws_no_server_context: s.ws_no_server_context,
    })
}
