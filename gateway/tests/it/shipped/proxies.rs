//! nginx and HAProxy started from the files in deploy/ exactly as shipped: addresses go in
//! through the variables those files read (envsubst over the nginx template, as the official
//! nginx image does; HAProxy's own `${VAR}` expansion), never by editing them. Each runs under
//! a given descriptor limit (`prlimit`, soft = hard), as a container would give it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{WAIT, free_port, unique};

/// The variables the nginx template reads; the official image's entrypoint is told to replace
/// only these (`NGINX_ENVSUBST_FILTER=^NGINX_` in docker-compose.yml).
pub const NGINX_VARIABLES: [&str; 5] = [
    "NGINX_LISTEN",
    "NGINX_GATEWAY",
    "NGINX_RESOLVER",
    "NGINX_RESOLVER_VALID",
    "NGINX_WORKER_CONNECTIONS",
];

/// A running proxy started from a shipped file.
pub struct Proxy {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// Where its own messages go (start-up warnings, errors).
    log: PathBuf,
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn binary(name: &str) -> String {
    ["/usr/sbin/", "/usr/bin/", "/usr/local/sbin/"]
        .iter()
        .map(|dir| format!("{dir}{name}"))
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| name.to_owned())
}

fn private_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir).expect("proxy dir");
    // nginx workers run as an unprivileged user when nginx starts as root: they must be able to
    // enter the prefix to reach their temp directories.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// `prlimit --nofile=N:N -- PROGRAM`: the descriptor limit a container would set.
fn limited(nofile: u64, program: &str) -> Command {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}:{nofile}"))
        .arg("--")
        .arg(program);
    cmd
}

impl Proxy {
    /// deploy/nginx/nginx.conf.template through envsubst with `vars` (every one of
    /// [`NGINX_VARIABLES`] must be given), then nginx on it under `nofile` descriptors, with
    /// only a private prefix, pid file and start-up log given on the command line.
    pub fn nginx(vars: &[(&str, String)], nofile: u64) -> Self {
        let dir = private_dir("gw-shipped-nginx-");
        let port = free_port();
        let list: Vec<String> = NGINX_VARIABLES
            .iter()
            .map(|v| format!("${{{v}}}"))
            .collect();
        let template = std::fs::File::open(repo_file("deploy/nginx/nginx.conf.template"))
            .expect("deploy/nginx/nginx.conf.template");
        let mut envsubst = Command::new("envsubst");
        envsubst.arg(list.join(" ")).env_clear().stdin(template);
        envsubst.env("NGINX_LISTEN", format!("127.0.0.1:{port}"));
        for (k, v) in vars {
            envsubst.env(k, v);
        }
        let out = envsubst
            .output()
            .expect("envsubst (gettext-base) must be installed");
        assert!(out.status.success(), "envsubst failed");
        let conf = String::from_utf8(out.stdout).expect("UTF-8 config");
        assert!(
            !conf.contains("${"),
            "the template reads a variable that is not in NGINX_VARIABLES"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let log = dir.join("stderr.log");
        let prefix = format!("{}/", dir.display());
        let child = limited(nofile, &binary("nginx"))
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-g")
            .arg(format!("pid {}/nginx.pid; daemon off;", dir.display()))
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("nginx must be installed (scripts/test.sh installs it)");
        Self::started(child, port, dir, log)
    }

    /// deploy/haproxy/haproxy.cfg as it is, under `nofile` descriptors, listening on a free
    /// port, resolving `gateway` (host:port) through `dns`.
    pub fn haproxy(gateway: &str, dns: SocketAddr, nofile: u64) -> Self {
        let dir = private_dir("gw-shipped-haproxy-");
        let port = free_port();
        let log = dir.join("haproxy.log");
        let output = std::fs::File::create(&log).expect("log file");
        let child = limited(nofile, &binary("haproxy"))
            .arg("-db")
            .arg("-f")
            .arg(repo_file("deploy/haproxy/haproxy.cfg"))
            .env_clear()
            .env("HAPROXY_BIND", format!("127.0.0.1:{port}"))
            .env("HAPROXY_GATEWAY", gateway)
            .env("HAPROXY_DNS", dns.to_string())
            .stdout(output.try_clone().expect("log file"))
            .stderr(output)
            .spawn()
            .expect("haproxy must be installed (scripts/test.sh installs it)");
        Self::started(child, port, dir, log)
    }

    fn started(mut child: Child, port: u16, dir: PathBuf, log: PathBuf) -> Self {
        let deadline = Instant::now() + WAIT;
        // Built first, so that a failed start still removes the directory (on drop).
        let mut proxy = Self {
            child: None,
            port,
            dir,
            log,
        };
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("proxy did not start ({exited:?}):\n{}", proxy.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy.child = Some(child);
        proxy
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// `ws://127.0.0.1:<port>/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// What the proxy wrote about itself so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process and its children (nginx's workers), each with its (soft, hard) descriptor
    /// limit as the kernel has it now.
    pub fn descriptor_limits(&self) -> Vec<(u32, u64, u64)> {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return Vec::new();
        };
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        std::iter::once(pid)
            .chain(children.split_whitespace().filter_map(|p| p.parse().ok()))
            .filter_map(|p| {
                let limits = std::fs::read_to_string(format!("/proc/{p}/limits")).ok()?;
                let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
                let mut numbers = line.split_whitespace().filter_map(|w| w.parse().ok());
                Some((p, numbers.next()?, numbers.next()?))
            })
            .collect()
    }

    /// How many worker processes the proxy has started (nginx; 0 for HAProxy).
    pub fn children(&self) -> usize {
        self.descriptor_limits().len().saturating_sub(1)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::common::nginx::stop_master(child);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
