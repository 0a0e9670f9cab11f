//! Unit tests of the metric set: zeros after start, build info, process metrics.

use super::labels::{EngineErrorKind, PublishApi, ResumeOutcome, ResyncReason, SeenBy, Transport};
use super::*;
use shared::{Disconnect, ErrorCode};

/// Whether `text` has a sample line `series 0` (`series` with its labels).
fn zero(text: &str, series: &str) -> bool {
    text.lines().any(|l| l == format!("{series} 0"))
}

#[test]
fn every_bounded_label_set_is_present_at_zero_after_start() {
    let text = Metrics::new().render();
    let mut want = Vec::new();
    for k in EngineErrorKind::ALL {
        want.push(format!(
            r#"gateway_engine_errors_total{{kind="{}"}}"#,
            k.as_str()
        ));
    }
    for c in ErrorCode::ALL {
        want.push(format!(
            r#"gateway_requests_rejected_total{{reason="{}"}}"#,
            c.as_str()
        ));
    }
    for d in Disconnect::ALL {
        want.push(format!(
            r#"gateway_disconnects_total{{reason="{}"}}"#,
            d.label()
        ));
        want.push(format!(r#"gateway_ws_closes_total{{code="{}"}}"#, d.code()));
    }
    for o in ResumeOutcome::ALL {
        want.push(format!(
            r#"gateway_resumes_total{{outcome="{}"}}"#,
            o.as_str()
        ));
    }
    for r in ResyncReason::ALL {
        want.push(format!(
            r#"gateway_channel_resyncs_total{{reason="{}"}}"#,
            r.as_str()
        ));
    }
    for s in SeenBy::ALL {
        want.push(format!(
            r#"gateway_history_lost_total{{seen_by="{}"}}"#,
            s.as_str()
        ));
    }
    for t in Transport::ALL {
        want.push(format!(
            r#"gateway_connections{{transport="{}"}}"#,
            t.as_str()
        ));
        want.push(format!(
            r#"gateway_messages_delivered_total{{transport="{}"}}"#,
            t.as_str()
        ));
    }
    for a in PublishApi::ALL {
        want.push(format!(
            r#"gateway_messages_published_total{{api="{}"}}"#,
            a.as_str()
        ));
    }
    want.push(r#"gateway_ws_closes_total{code="client"}"#.to_owned());
    want.push("gateway_engine_reconnects_total".to_owned());
    want.push("gateway_gaps_total".to_owned());
    for series in [
        "gateway_presence_entries",
        r#"gateway_presence_writes_total{outcome="ok"}"#,
        r#"gateway_presence_writes_total{outcome="failed"}"#,
        r#"gateway_presence_events_total{kind="join"}"#,
        r#"gateway_presence_events_total{kind="leave"}"#,
        "gateway_presence_events_failed_total",
        "gateway_presence_expired_total",
    ] {
        want.push(series.to_owned());
    }
    want.push("gateway_slow_consumer_disconnects_total".to_owned());
    want.push("gateway_publish_thread_connections_total".to_owned());
    for series in &want {
        assert!(
            zero(&text, series),
            "{series} is not at 0 after start:\n{text}"
        );
    }
}

#[test]
fn build_info_names_version_and_commit() {
    let text = Metrics::new().render();
    let line = format!(r#"gateway_build_info{{commit="{COMMIT}",version="{VERSION}"}} 1"#);
    assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    assert!(!COMMIT.is_empty());
}

#[cfg(target_os = "linux")]
#[test]
fn process_metrics_are_exported() {
    let text = Metrics::new().render();
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name} missing"
        );
    }
}
