//! The run's results: one JSON line (stdout), a Markdown table (stderr), and with `--report DIR`
//! `summary.json`, `summary.md` and `latency.svg` (a hand-written chart). Also `combine`, which
//! merges the JSON lines of several loadtest processes into one.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

use crate::stats::new_histogram;

/// Rounds to three decimals (microsecond resolution for milliseconds).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Microseconds to milliseconds, rounded.
pub fn ms(us: u64) -> f64 {
    round3(us as f64 / 1000.0)
}

/// A finished run's results.
#[derive(Default)]
pub struct Report {
    /// Flat fields, in order; numbers, a few strings, and small objects of counts.
    pub fields: Map<String, Value>,
    /// End-to-end latency of the whole run.
    pub latency: Option<Histogram<u64>>,
    /// Latency series to chart (saturate: one per step); defaults to `latency`.
    pub series: Vec<(String, Histogram<u64>)>,
    /// Saturate steps, one row each.
    pub steps: Vec<Map<String, Value>>,
}

impl Report {
    /// A report for `scenario`.
    pub fn new(scenario: &str) -> Self {
        let mut r = Self::default();
        r.set("scenario", scenario);
        r
    }

    /// Sets a field (floats are rounded to 3 decimals; NaN and infinities become null).
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        let v = match value.into() {
            Value::Number(n) if n.is_f64() => n
                .as_f64()
                .filter(|f| f.is_finite())
                .map_or(Value::Null, |f| json!(round3(f))),
            v => v,
        };
        self.fields.insert(key.to_owned(), v);
    }

    /// Sets an optional float.
    pub fn set_opt(&mut self, key: &str, value: Option<f64>) {
        match value {
            Some(v) => self.set(key, v),
            None => self.set(key, Value::Null),
        }
    }

    /// Sets `<prefix>_p50_ms` ... `<prefix>_max_ms` from a histogram of microseconds.
    pub fn set_latency(&mut self, prefix: &str, h: &Histogram<u64>) {
        for (key, v) in latency_summary(h) {
            self.set(&format!("{prefix}_{key}_ms"), v);
        }
    }

    /// The JSON object (fields, steps, and the latency distribution for `combine`).
    pub fn to_json(&self) -> Value {
        let mut m = self.fields.clone();
        if !self.steps.is_empty() {
            m.insert(
                "steps".into(),
                Value::Array(self.steps.iter().cloned().map(Value::Object).collect()),
            );
        }
        if let Some(h) = &self.latency {
            m.insert("latency_hist_us".into(), json!(buckets(h)));
        }
        Value::Object(m)
    }

    /// A Markdown table of the scalar fields (and one of the steps, if any).
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let title = self
            .fields
            .get("scenario")
            .and_then(Value::as_str)
            .unwrap_or("run");
        let _ = writeln!(out, "### loadtest {title}\n\n| metric | value |\n|---|---|");
        for (k, v) in &self.fields {
            match v {
                Value::Object(inner) => {
                    for (ik, iv) in inner {
                        let _ = writeln!(out, "| {k}.{ik} | {} |", cell(iv));
                    }
                }
                Value::Array(_) => {}
                v => {
                    let _ = writeln!(out, "| {k} | {} |", cell(v));
                }
            }
        }
        if let Some(first) = self.steps.first() {
            let cols: Vec<&String> = first.keys().collect();
            let _ = writeln!(
                out,
                "\n| {} |\n|{}",
                cols.iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(" | "),
                "---|".repeat(cols.len())
            );
            for row in &self.steps {
                let cells: Vec<String> = cols
                    .iter()
                    .map(|c| row.get(*c).map_or_else(String::new, cell))
                    .collect();
                let _ = writeln!(out, "| {} |", cells.join(" | "));
            }
        }
        out
    }

    /// The latency chart.
    pub fn svg(&self) -> String {
        let mut series: Vec<(&str, &Histogram<u64>)> =
            self.series.iter().map(|(n, h)| (n.as_str(), h)).collect();
        if series.is_empty()
            && let Some(h) = &self.latency
        {
            series.push(("end-to-end latency", h));
        }
        let title = format!(
            "loadtest {}: publish-to-receive latency by percentile",
            self.fields
                .get("scenario")
                .and_then(Value::as_str)
                .unwrap_or("run")
        );
        latency_svg(&title, &series)
    }

    /// Writes `summary.json`, `summary.md` and `latency.svg` into `dir`.
    pub fn write_dir(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("summary.json"),
            serde_json::to_string_pretty(&self.to_json())? + "\n",
        )?;
        std::fs::write(dir.join("summary.md"), self.markdown())?;
        std::fs::write(dir.join("latency.svg"), self.svg())?;
        Ok(())
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// p50, p90, p99, p99.9 and max of a histogram of microseconds, in milliseconds (null when
/// empty).
pub fn latency_summary(h: &Histogram<u64>) -> Vec<(&'static str, Value)> {
    let q = |q: f64| {
        if h.is_empty() {
            Value::Null
        } else {
            json!(ms(h.value_at_quantile(q)))
        }
    };
    vec![
        ("p50", q(0.5)),
        ("p90", q(0.9)),
        ("p99", q(0.99)),
        ("p999", q(0.999)),
        (
            "max",
            if h.is_empty() {
                Value::Null
            } else {
                json!(ms(h.max()))
            },
        ),
    ]
}

/// The distribution as `[value_us, count]` pairs, values rounded up onto a 1% geometric grid
/// (a few hundred pairs at most); enough to merge runs and recompute percentiles within 1%.
pub fn buckets(h: &Histogram<u64>) -> Vec<[u64; 2]> {
    let mut out: Vec<[u64; 2]> = Vec::new();
    for v in h.iter_recorded() {
        let value = round_up_1pct(h.highest_equivalent(v.value_iterated_to()));
        match out.last_mut() {
            Some(last) if last[0] == value => last[1] += v.count_at_value(),
            _ => out.push([value, v.count_at_value()]),
        }
    }
    out
}

/// Rounds up onto the grid 1.01^k (values up to 100 stay exact).
fn round_up_1pct(v: u64) -> u64 {
    if v <= 100 {
        return v;
    }
    let k = ((v as f64).ln() / 1.01f64.ln()).ceil() as i32;
    let g = 1.01f64.powi(k).ceil() as u64;
    g.max(v)
}

/// Rebuilds a histogram from [`buckets`] output.
pub fn from_buckets(pairs: &[Value]) -> Histogram<u64> {
    let mut h = new_histogram();
    for p in pairs {
        if let (Some(v), Some(c)) = (
            p.get(0).and_then(Value::as_u64),
            p.get(1).and_then(Value::as_u64),
        ) {
            let _ = h.record_n(v.clamp(1, crate::stats::MAX_LATENCY_US), c);
        }
    }
    h
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Latency (log scale, ms) against percentile on a "nines" axis: x = log10(1 / (1 - q)), so
/// 90%, 99%, 99.9% ... are evenly spaced and the tail gets the room it deserves.
pub fn latency_svg(title: &str, series: &[(&str, &Histogram<u64>)]) -> String {
    let (w, h) = (860.0, 480.0);
    let (left, right, top, bottom) = (80.0, 30.0, 50.0, 60.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>
"#,
        w / 2.0,
        esc(title)
    );
    let nonempty: Vec<&(&str, &Histogram<u64>)> =
        series.iter().filter(|(_, h)| !h.is_empty()).collect();
    if nonempty.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">no latency recorded</text></svg>"#,
            w / 2.0,
            h / 2.0
        );
        return svg;
    }
    let count = nonempty.iter().map(|(_, h)| h.len()).max().unwrap_or(1);
    let xmax = ((count as f64).log10().ceil()).clamp(2.0, 6.0);
    let lo_us = nonempty
        .iter()
        .map(|(_, h)| h.min().max(1))
        .min()
        .unwrap_or(1);
    let hi_us = nonempty
        .iter()
        .map(|(_, h)| h.max().max(2))
        .max()
        .unwrap_or(2);
    let ymin = (lo_us as f64 / 1000.0).log10().floor();
    let mut ymax = (hi_us as f64 / 1000.0).log10().ceil();
    if ymax <= ymin {
        ymax = ymin + 1.0;
    }
    let px = |x: f64| left + x / xmax * pw;
    let py = |ms: f64| top + ph - (ms.max(1e-9).log10() - ymin) / (ymax - ymin) * ph;
    // Grid and axes.
    let _ = writeln!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
    );
    let mut ticks: Vec<(f64, String)> = vec![(0.0, "0%".into()), (2f64.log10(), "50%".into())];
    for n in 1..=(xmax as i32) {
        let pct = 100.0 - 100.0 * 10f64.powi(-n);
        let label = format!("{pct:.*}%", (n - 2).max(0) as usize);
        ticks.push((f64::from(n), label));
    }
    for (x, label) in &ticks {
        let _ = writeln!(
            svg,
            r##"<line x1="{0}" y1="{top}" x2="{0}" y2="{1}" stroke="#ddd"/><text x="{0}" y="{2}" text-anchor="middle">{3}</text>"##,
            px(*x),
            top + ph,
            top + ph + 18.0,
            label
        );
    }
    let mut d = ymin as i32;
    while f64::from(d) <= ymax {
        let v = 10f64.powi(d);
        let label = if v >= 1000.0 {
            format!("{} s", v / 1000.0)
        } else {
            format!("{v} ms")
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="#ddd"/><text x="{2}" y="{3}" text-anchor="end">{4}</text>"##,
            py(v),
            left + pw,
            left - 6.0,
            py(v) + 4.0,
            label
        );
        d += 1;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        left + pw / 2.0,
        h - 16.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">latency</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    // One line per series, then the legend on top of them.
    let mut legend = String::new();
    for (i, (name, hist)) in nonempty.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut points = String::new();
        let steps = 400;
        for s in 0..=steps {
            let x = xmax * f64::from(s) / f64::from(steps);
            let q = 1.0 - 10f64.powf(-x);
            let v = if s == steps {
                hist.max()
            } else {
                hist.value_at_quantile(q)
            };
            let _ = write!(points, "{:.1},{:.1} ", px(x), py(v.max(1) as f64 / 1000.0));
        }
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.trim_end()
        );
        let ly = top + 16.0 + 16.0 * i as f64;
        let _ = writeln!(
            legend,
            r#"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="{color}" stroke-width="3"/><text x="{3}" y="{4}">{5} (n={6}, p99 {7} ms, max {8} ms)</text>"#,
            left + 12.0,
            ly,
            left + 36.0,
            left + 42.0,
            ly + 4.0,
            esc(name),
            hist.len(),
            ms(hist.value_at_quantile(0.99)),
            ms(hist.max())
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="white" fill-opacity="0.9" stroke="#bbb"/>"##,
        left + 6.0,
        top + 4.0,
        pw * 0.62,
        16.0 * nonempty.len() as f64 + 8.0
    );
    svg.push_str(&legend);
    svg.push_str("</svg>\n");
    svg
}

/// Keys summed when combining processes (each process has its own connections and channels).
const SUMMED: &[&str] = &[
    "conns",
    "count",
    "attempted",
    "connect_per_s",
    "loadtest_rss_kib",
    "channels",
    "rate",
    "connections_ok",
    "connections_failed",
    "alive",
    "alive_after_hold",
    "disconnects",
    "reconnects",
    "reconnect_failures",
    "resumed",
    "published",
    "publish_failed",
    "publish_rate",
    "publishes_per_s",
    "deliveries",
    "expected_deliveries",
    "deliveries_per_s",
    "lost",
    "duplicated",
    "reordered",
    "id_jumps",
    "gaps",
    "malformed",
    "other_events",
    "ws_errors",
    "loadtest_cpu_cores",
];

/// Merges the JSON lines of several processes run side by side: counts and rates are summed,
/// times take the maximum, latency percentiles are recomputed from the merged distributions,
/// and server measurements (taken by whichever processes had `--server-pid`) take the maximum,
/// since those processes watched the same server over overlapping windows.
pub fn combine(lines: &[Value]) -> Value {
    let mut out = Map::new();
    let Some(Value::Object(first)) = lines.first() else {
        return Value::Object(out);
    };
    out.insert(
        "scenario".into(),
        first.get("scenario").cloned().unwrap_or(Value::Null),
    );
    out.insert("processes".into(), json!(lines.len()));
    let objects: Vec<&Map<String, Value>> = lines.iter().filter_map(Value::as_object).collect();
    let mut keys: Vec<&String> = Vec::new();
    for o in &objects {
        for k in o.keys() {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let nums = |k: &str| -> Vec<f64> {
        objects
            .iter()
            .filter_map(|o| o.get(k).and_then(Value::as_f64))
            .collect()
    };
    for k in keys {
        if matches!(k.as_str(), "scenario" | "latency_hist_us" | "steps") {
            continue;
        }
        let values = nums(k);
        if values.is_empty() {
            // Strings (transport, publisher) and objects of counts.
            if let Some(v) = objects.iter().find_map(|o| o.get(k.as_str())) {
                let merged = match v {
                    Value::Object(_) => {
                        let mut m = Map::new();
                        for o in &objects {
                            if let Some(Value::Object(inner)) = o.get(k.as_str()) {
                                for (ik, iv) in inner {
                                    let sum = m.get(ik).and_then(Value::as_f64).unwrap_or(0.0)
                                        + iv.as_f64().unwrap_or(0.0);
                                    m.insert(ik.clone(), json!(sum as u64));
                                }
                            }
                        }
                        Value::Object(m)
                    }
                    v => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            continue;
        }
        let v = if SUMMED.contains(&k.as_str()) {
            values.iter().sum::<f64>()
        } else {
            values.iter().copied().fold(f64::MIN, f64::max)
        };
        let v = if v.fract() == 0.0 && v.abs() < 9e15 {
            json!(v as i64)
        } else {
            json!(round3(v))
        };
        out.insert(k.clone(), v);
    }
    // Latency from the merged distributions, when every line has one.
    let hists: Vec<&Vec<Value>> = objects
        .iter()
        .filter_map(|o| o.get("latency_hist_us").and_then(Value::as_array))
        .collect();
    if !hists.is_empty() && hists.len() == objects.len() {
        let mut merged = new_histogram();
        for pairs in hists {
            let _ = merged.add(from_buckets(pairs));
        }
        for (key, v) in latency_summary(&merged) {
            out.insert(format!("latency_{key}_ms"), v);
        }
        out.insert("latency_hist_us".into(), json!(buckets(&merged)));
    }
    // Server memory per connection over all processes' connections: the widest RSS window
    // (processes started together, --start-at lining up the reading after everyone connected).
    let before = nums("server_rss_kib_before").into_iter().reduce(f64::min);
    let after = nums("server_rss_kib_after").into_iter().reduce(f64::max);
    let conns: f64 = nums("connections_ok").iter().sum();
    if let (Some(b), Some(a)) = (before, after)
        && conns > 0.0
    {
        out.insert("server_rss_kib_before".into(), json!(round3(b)));
        out.insert(
            "server_rss_kib_per_conn".into(),
            json!(round3((a - b) / conns)),
        );
    }
    // Events per read over all processes.
    let reads: f64 = objects
        .iter()
        .filter_map(|o| Some(o.get("deliveries")?.as_f64()? / o.get("events_per_read")?.as_f64()?))
        .filter(|r| r.is_finite())
        .sum();
    if reads > 0.0 {
        out.insert(
            "events_per_read".into(),
            json!(round3(nums("deliveries").iter().sum::<f64>() / reads)),
        );
    }
    // CPU cost per delivery over all processes.
    let cpu: f64 = objects
        .iter()
        .filter_map(|o| Some(o.get("loadtest_cpu_cores")?.as_f64()? * o.get("window_s")?.as_f64()?))
        .sum();
    let deliveries: f64 = nums("deliveries").iter().sum();
    if deliveries > 0.0 {
        out.insert(
            "loadtest_cpu_us_per_delivery".into(),
            json!(round3(cpu * 1e6 / deliveries)),
        );
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> Histogram<u64> {
        let mut h = new_histogram();
        for &v in values {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn fields_round_and_markdown_lists_them() {
        let mut r = Report::new("fanout");
        r.set("lost", 0);
        r.set("deliveries_per_s", 1234.56789);
        r.set("nan", f64::NAN);
        r.set_opt("server_cpu_cores", None);
        r.set("connect_failures", json!({"status_503": 2}));
        r.set_latency("latency", &hist(&[1000, 1500, 2000]));
        let line = r.to_json();
        assert_eq!(line["deliveries_per_s"], json!(1234.568));
        assert_eq!(line["nan"], Value::Null);
        assert_eq!(line["latency_p50_ms"], json!(1.5));
        assert_eq!(line["latency_max_ms"], json!(2.0));
        let md = r.markdown();
        assert!(md.contains("| lost | 0 |"), "{md}");
        assert!(md.contains("| server_cpu_cores | – |"), "{md}");
        assert!(md.contains("| connect_failures.status_503 | 2 |"), "{md}");
        assert!(!md.contains("latency_hist_us"));
    }

    #[test]
    fn steps_get_their_own_table() {
        let mut r = Report::new("saturate");
        let mut row = Map::new();
        row.insert("rate".into(), json!(100));
        row.insert("ok".into(), json!(true));
        r.steps.push(row);
        let md = r.markdown();
        assert!(md.contains("| rate | ok |"), "{md}");
        assert!(md.contains("| 100 | true |"), "{md}");
    }

    #[test]
    fn buckets_are_compact_and_round_trip_percentiles() {
        let values: Vec<u64> = (1..=100_000).map(|i| i * 7 % 90_000 + 50).collect();
        let h = hist(&values);
        let b = buckets(&h);
        assert!(b.len() < 800, "{}", b.len());
        assert_eq!(b.iter().map(|p| p[1]).sum::<u64>(), h.len());
        let back = from_buckets(
            &serde_json::to_value(&b)
                .unwrap()
                .as_array()
                .unwrap()
                .clone(),
        );
        for q in [0.5, 0.9, 0.99, 0.999] {
            let (a, c) = (
                h.value_at_quantile(q) as f64,
                back.value_at_quantile(q) as f64,
            );
            assert!((c - a) / a < 0.011 && c >= a * 0.999, "q {q}: {a} vs {c}");
        }
        assert_eq!(round_up_1pct(99), 99);
        let mut prev = 0;
        for v in (100..2_000_000).step_by(997) {
            let g = round_up_1pct(v);
            assert!(
                g >= v && (g as f64) <= v as f64 * 1.0101 + 1.0,
                "{v} -> {g}"
            );
            assert!(g >= prev);
            prev = g;
        }
    }

    #[test]
    fn svg_is_well_formed() {
        let h1 = hist(&[500, 800, 1200, 90_000]);
        let h2 = hist(&[2_000_000]);
        let svg = latency_svg("t <&>", &[("a", &h1), ("b", &h2)]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("t &lt;&amp;&gt;"));
        assert!(svg.contains("99%"));
        assert!(!svg.contains("NaN"));
        let empty = latency_svg("x", &[("a", &new_histogram())]);
        assert!(empty.contains("no latency recorded"));
    }

    #[test]
    fn combine_sums_counts_and_merges_latency() {
        let mut a = Report::new("fanout");
        a.set("conns", 100);
        a.set("deliveries", 1000);
        a.set("deliveries_per_s", 500.0);
        a.set("lost", 1);
        a.set("wall_s", 10.0);
        a.set("loadtest_cpu_cores", 0.5);
        a.set("window_s", 2.0);
        a.set("server_cpu_cores", 1.2);
        a.set("server_rss_kib_before", 1000.0);
        a.set("server_rss_kib_after", 2500.0);
        a.set("connections_ok", 100);
        a.set("events_per_read", 2.0);
        a.set("transport", "sse");
        a.set("connect_failures", json!({"timeout": 1}));
        a.latency = Some(hist(&[1000; 10]));
        let mut b = Report::new("fanout");
        b.set("conns", 50);
        b.set("deliveries", 3000);
        b.set("deliveries_per_s", 1500.0);
        b.set("lost", 0);
        b.set("wall_s", 12.5);
        b.set("loadtest_cpu_cores", 0.25);
        b.set("window_s", 2.0);
        b.set("server_cpu_cores", Value::Null);
        b.set("connections_ok", 50);
        b.set("events_per_read", 1.0);
        b.set("connect_failures", json!({"timeout": 2, "status_503": 1}));
        b.latency = Some(hist(&[1900; 90]));
        let c = combine(&[a.to_json(), b.to_json()]);
        assert_eq!(c["processes"], json!(2));
        assert_eq!(c["conns"], json!(150));
        assert_eq!(c["deliveries_per_s"], json!(2000));
        assert_eq!(c["lost"], json!(1));
        assert_eq!(c["wall_s"], json!(12.5));
        assert_eq!(c["server_cpu_cores"], json!(1.2));
        assert_eq!(c["server_rss_kib_per_conn"], json!(10.0));
        // 500 reads + 3000 reads for 4000 deliveries.
        assert_eq!(c["events_per_read"], json!(round3(4000.0 / 3500.0)));
        assert_eq!(c["transport"], json!("sse"));
        assert_eq!(
            c["connect_failures"],
            json!({"timeout": 3, "status_503": 1})
        );
        // 1900 µs is on the 1% grid's way up: within 1%.
        let p50 = c["latency_p50_ms"].as_f64().unwrap();
        assert!((1.9..=1.92).contains(&p50), "{p50}");
        assert_eq!(c["latency_p50_ms"], c["latency_max_ms"]);
        // (0.5 * 2 + 0.25 * 2) s of CPU for 4000 deliveries.
        assert_eq!(c["loadtest_cpu_us_per_delivery"], json!(375.0));
    }
}
