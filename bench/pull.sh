#!/usr/bin/env bash
# Benchmark of `kiln pull` (issue 2): an ~8-layer, ~500 MB image on a loopback
# registry; cold kiln pull vs skopeo copy (and podman pull when installed),
# cached kiln pull, peak RSS. Results replace the "Pull" section of
# docs/benchmarks.md.
#   bash bench/pull.sh            (RUNS=5 CACHED_RUNS=20 by default)
#   BENCH_INSTALL_PODMAN=1 installs podman (apt) to measure it too; otherwise it is skipped if missing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

RUNS=${RUNS:-5}
CACHED_RUNS=${CACHED_RUNS:-20}
bench_setup

bench_image   # $layout, $compressed
push_bench_image   # $REGISTRY, $ref
work=$BENCH_DIR/work; mkdir -p "$work"

kiln_cold() { "$KILN" --root "$work/kiln" pull --insecure -q "$ref"; }
kiln_inline_cold() { "$KILN" --root "$work/kiln" pull --insecure -q --inline-diff-id "$ref"; }
skopeo_cold() { skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci:$work/skopeo:bench"; }
podman_cold() { podman --root "$work/podman" --runroot "$work/podman-run" --storage-driver vfs pull -q --tls-verify=false "$ref"; }
# fresh: (untimed, before every cold run) nothing left from any earlier run.
fresh() {
  podman --root "$work/podman" --runroot "$work/podman-run" --storage-driver vfs rmi -af >/dev/null 2>&1 || true
  clean_slate "$work/kiln" "$work/skopeo"
}

kiln_times=(); inline_times=(); skopeo_times=(); podman_times=()
have_podman=false
if ! command -v podman >/dev/null 2>&1 && [ "${BENCH_INSTALL_PODMAN:-0}" = 1 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman >/dev/null
fi
command -v podman >/dev/null 2>&1 && podman --version >/dev/null 2>&1 && have_podman=true
$have_podman || echo "note: podman is not installed; skipping it (BENCH_INSTALL_PODMAN=1 installs it)" >&2
for _ in $(seq 1 "$RUNS"); do
  fresh; kiln_times+=("$(durable_seconds kiln_cold)")
  fresh; inline_times+=("$(durable_seconds kiln_inline_cold)")
  fresh; skopeo_times+=("$(durable_seconds skopeo_cold)")
  if $have_podman; then fresh; podman_times+=("$(durable_seconds podman_cold)"); fi
done
kiln_median=$(printf '%s\n' "${kiln_times[@]}" | median)
skopeo_median=$(printf '%s\n' "${skopeo_times[@]}" | median)
inline_median=$(printf '%s\n' "${inline_times[@]}" | median)

# Cached: the root is populated by a cold run.
fresh; kiln_cold >/dev/null
cached_ms=$(millis "$CACHED_RUNS" "$KILN" --root "$work/kiln" pull --insecure -q "$ref")

fresh; kiln_rss=$(peak_rss_mb "$KILN" --root "$work/kiln" pull --insecure -q "$ref")
fresh; skopeo_rss=$(peak_rss_mb skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci:$work/skopeo:bench")

verdict() { if [ "$(echo "$1" | bc -l)" = 1 ]; then echo pass; else echo FAIL; fi; }
kiln_ratio=$(ratio "$kiln_median" "$skopeo_median")
body=$(mktemp)
{
  echo "Command: \`bash bench/pull.sh\` (RUNS=$RUNS, CACHED_RUNS=$CACHED_RUNS), $(date -u +%Y-%m-%d), $(machine)."
  echo
  echo "Image: 8 gzip layers, $((compressed / 1000000)) MB compressed, on Debian's docker-registry at 127.0.0.1. Cold runs start from nothing (the previous run's output removed and \`sync\` run, untimed) and end when the output is on disk (the command, then \`sync\`, timed); kiln verifies every blob digest and every layer's diff_id against the config."
  echo
  echo "| tool | median (s) | ratio to skopeo | peak RSS (MB) |"
  echo "|---|---|---|---|"
  echo "| kiln pull (cold, diff_id on its own thread: the default) | $kiln_median | $kiln_ratio | $kiln_rss |"
  echo "| kiln pull (cold, diff_id on the writing thread) | $inline_median | $(ratio "$inline_median" "$skopeo_median") | - |"
  echo "| skopeo copy docker:// → oci: | $skopeo_median | 1.00 | $skopeo_rss |"
  if $have_podman; then
    podman_median=$(printf '%s\n' "${podman_times[@]}" | median)
    echo "| podman pull (vfs) | $podman_median | $(ratio "$podman_median" "$skopeo_median") | - |"
  else
    echo "| podman pull | not installed in this run | | |"
  fi
  echo
  echo "Cached \`kiln pull\` (policy missing, no network): median ${cached_ms} ms over $CACHED_RUNS runs."
  echo
  echo "| target | measured | verdict |"
  echo "|---|---|---|"
  echo "| cold pull ≤ 0.6× skopeo | ${kiln_ratio}× | $(verdict "$kiln_ratio <= 0.6") |"
  echo "| cached pull ≤ 20 ms | ${cached_ms} ms | $(verdict "$cached_ms <= 20") |"
  echo "| peak RSS ≤ 100 MB | ${kiln_rss} MB | $(verdict "$kiln_rss <= 100") |"
  echo
  echo "Raw runs (s): kiln ${kiln_times[*]}; kiln inline ${inline_times[*]}; skopeo ${skopeo_times[*]}${podman_times:+; podman ${podman_times[*]}}."
} >"$body"
cat "$body"
write_section "Pull (issue 2)" "$body"
rm -f "$body"
