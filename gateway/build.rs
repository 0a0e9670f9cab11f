//! Build script: the commit the binary is built from, for `gateway_build_info` — from git when
//! building in a checkout, else from `GATEWAY_COMMIT` (container builds have no `.git`), else
//! `unknown`. Never fails: a build without git is an ordinary build.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=GATEWAY_COMMIT");
    // Re-run when HEAD moves (commit, checkout): git appends to logs/HEAD each time.
    for path in ["HEAD", "logs/HEAD"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path])
            && std::path::Path::new(&p).exists()
        {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    let commit = git(&["rev-parse", "--short", "HEAD"])
        .or_else(|| {
            std::env::var("GATEWAY_COMMIT")
                .ok()
                .filter(|c| !c.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=GATEWAY_COMMIT={commit}");
}
