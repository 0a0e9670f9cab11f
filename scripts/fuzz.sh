#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (FUZZ_SECONDS each, default 30) starting from the
# committed corpus in fuzz/corpus/. Stable Rust: no sanitizer (-s none); libFuzzer still finds
# panics and failed assertions, and each target checks round-trip properties, not only "no crash".
# A failure leaves the crashing input in fuzz/artifacts/<target>/ and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

# Input size caps keep runs focused: cursors and commands are short by nature; a head is checked
# byte by byte against every split (quadratic), and a few KiB of frames cover every header form.
targets=(cursor:256 sse_framing:512 ws_commands:512 head_sniff:1024 ws_frames:2048)
cd fuzz
for entry in "${targets[@]}"; do
  target="${entry%%:*}"
  max_len="${entry##*:}"
  echo "== fuzz $target (${seconds}s)"
  # Work on a scratch copy so a CI run never rewrites the committed corpus.
  scratch="$(mktemp -d)"
  cp -r "corpus/$target/." "$scratch/"
  log="$scratch.log"
  status=0
  cargo fuzz run "$target" -s none "$scratch" -- \
    -max_total_time="$seconds" -max_len="$max_len" -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^(Done|stat::number_of_executed_units|thread '|SUMMARY|==[0-9]+== ERROR)" "$log" || true
  if [ "$status" -ne 0 ]; then tail -n 40 "$log" >&2; fi
  rm -rf "$scratch" "$log"
  if [ "$status" -ne 0 ]; then
    echo "fuzz target $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit "$status"
  fi
done
