//! A real Prometheus server (Debian's `prometheus` package) scraping given targets every
//! second, with its own config and TSDB in a temp directory; killed by PID on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{WAIT, free_port, http, unique};

/// The `prometheus` binary.
pub const PROMETHEUS: &str = "/usr/bin/prometheus";
/// Its companion `promtool` (rule checks, rule unit tests, metrics lint).
pub const PROMTOOL: &str = "/usr/bin/promtool";

/// A Prometheus process.
pub struct Prometheus {
    child: Option<Child>,
    dir: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`) as `job="gateway"` every second;
    /// returns once it is ready to answer queries.
    pub fn scraping(targets: &[String]) -> Self {
        let dir = std::env::temp_dir().join(unique("gw-prometheus-"));
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: gateway\n    scrape_timeout: 900ms\n    \
             static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus config");
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
        let child = Command::new(PROMETHEUS)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn prometheus (Debian package `prometheus`)");
        let mut me = Self {
            child: Some(child),
            dir,
            base: format!("http://127.0.0.1:{port}"),
        };
        me.wait_ready();
        me
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT * 3;
        let addr = self.base.trim_start_matches("http://").to_owned();
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let _ =
                    s.write_all(b"GET /-/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut reply = String::new();
                let _ = s.read_to_string(&mut reply);
                if reply.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// Runs an instant query; returns `data.result` (the series), panicking on an API error
    /// (a query that does not parse, a bad function).
    pub async fn query(&self, query: &str) -> Vec<serde_json::Value> {
        let res = http()
            .get(format!(
                "{}/api/v1/query?{}",
                self.base,
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("query", query)
                    .finish()
            ))
            .send()
            .await
            .expect("prometheus query");
        let body: serde_json::Value = res.json().await.expect("prometheus answer is JSON");
        assert_eq!(body["status"], "success", "query {query}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The value of a query that returns one series (`NaN` when it returns none).
    pub async fn value(&self, query: &str) -> f64 {
        self.query(query)
            .await
            .first()
            .and_then(|s| s["value"][1].as_str().and_then(|v| v.parse().ok()))
            .unwrap_or(f64::NAN)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
