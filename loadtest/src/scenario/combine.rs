//! `combine`: merging the JSON lines of several processes.

use anyhow::{Context, bail};
use serde_json::Value;

/// `combine`: reads JSON lines and prints the merged one.
pub fn combine(files: &[std::path::PathBuf]) -> anyhow::Result<Value> {
    let mut text = String::new();
    if files.is_empty() {
        use std::io::Read;
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        for f in files {
            text.push_str(
                &std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
            );
            text.push('\n');
        }
    }
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("every line must be a loadtest JSON line")?;
    if lines.is_empty() {
        bail!("no JSON lines to combine");
    }
    Ok(crate::report::combine(&lines))
}
