#!/usr/bin/env bash
# Benchmark of `kiln push` (issue 5): the ~500 MB, 8-layer benchmark image
# pushed to an empty loopback registry, kiln (from its store) vs
# `skopeo copy oci:LAYOUT docker://...` (from the same blobs in an OCI
# layout). Every run gets a registry with empty storage, so neither tool can
# skip or mount a blob. Results replace the "Push" section of
# docs/benchmarks.md.
#   bash bench/push.sh            (RUNS=5 by default)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

RUNS=${RUNS:-5}
bench_setup

bench_image         # $layout, $compressed
work=$BENCH_DIR/push-work; rm -rf "$work"; mkdir -p "$work"
# The image in a kiln store, loaded from a tar of the OCI layout (the same
# blobs a pull stores).
ref=localhost/bench:1
tar -C "$layout" -cf "$work/layout.tar" .
"$KILN" --root "$work/kiln" load -q -i "$work/layout.tar" -t "$ref" >/dev/null
rm -f "$work/layout.tar"

# empty_registry NAME: a registry with fresh storage (the previous one's
# removed and synced, untimed); sets $DEST and $dest_pid
empty_registry() {
  clean_slate "${work:?}/$1"
  serve_registry "$work/$1"
  DEST=$served dest_pid=$served_pid
}
stop_registry() { kill "$dest_pid" 2>/dev/null || true; wait "$dest_pid" 2>/dev/null || true; rm -rf "$work/$1"; }

kiln_push() { "$KILN" --root "$work/kiln" push --insecure -q "$ref" "$DEST/bench:1"; }
kiln_push_chunked() { "$KILN" --root "$work/kiln" push --insecure -q --chunk-size 16M "$ref" "$DEST/bench:1"; }
skopeo_push() { skopeo copy --quiet --dest-tls-verify=false "oci:$layout:bench" "docker://$DEST/bench:1"; }

kiln_times=(); chunked_times=(); skopeo_times=()
for _ in $(seq 1 "$RUNS"); do
  empty_registry kiln-dest; kiln_times+=("$(durable_seconds kiln_push)"); stop_registry kiln-dest
  empty_registry chunked-dest; chunked_times+=("$(durable_seconds kiln_push_chunked)"); stop_registry chunked-dest
  empty_registry skopeo-dest; skopeo_times+=("$(durable_seconds skopeo_push)"); stop_registry skopeo-dest
done
empty_registry rss-dest
kiln_rss=$(peak_rss_mb "$KILN" --root "$work/kiln" push --insecure -q "$ref" "$DEST/bench:1")
stop_registry rss-dest
empty_registry rss-dest
skopeo_rss=$(peak_rss_mb skopeo copy --quiet --dest-tls-verify=false "oci:$layout:bench" "docker://$DEST/bench:1")
stop_registry rss-dest

kiln_median=$(printf '%s\n' "${kiln_times[@]}" | median)
chunked_median=$(printf '%s\n' "${chunked_times[@]}" | median)
skopeo_median=$(printf '%s\n' "${skopeo_times[@]}" | median)
kiln_ratio=$(ratio "$kiln_median" "$skopeo_median")
verdict() { if [ "$(echo "$1" | bc -l)" = 1 ]; then echo pass; else echo FAIL; fi; }
body=$(mktemp)
{
  echo "Command: \`bash bench/push.sh\` (RUNS=$RUNS), $(date -u +%Y-%m-%d), $(machine)."
  echo
  echo "Image: 8 gzip layers, $((compressed / 1000000)) MB compressed, pushed to Debian's docker-registry at 127.0.0.1 with empty storage for every run (nothing to skip or mount; the previous run's storage removed and synced, untimed). Each run ends when what the registry wrote is on disk (the command, then \`sync\`, timed). kiln reads the blobs from its store; skopeo from an OCI layout of the same blobs."
  echo
  echo "| tool | median (s) | ratio to skopeo | peak RSS (MB) |"
  echo "|---|---|---|---|"
  echo "| kiln push (one PUT per blob: the default) | $kiln_median | $kiln_ratio | $kiln_rss |"
  echo "| kiln push --chunk-size 16M | $chunked_median | $(ratio "$chunked_median" "$skopeo_median") | - |"
  echo "| skopeo copy oci: → docker:// | $skopeo_median | 1.00 | $skopeo_rss |"
  echo
  echo "| target | measured | verdict |"
  echo "|---|---|---|"
  echo "| push ≤ 0.7× skopeo | ${kiln_ratio}× | $(verdict "$kiln_ratio <= 0.7") |"
  echo
  echo "Raw runs (s): kiln ${kiln_times[*]}; kiln chunked ${chunked_times[*]}; skopeo ${skopeo_times[*]}."
} >"$body"
cat "$body"
write_section "Push (issue 5)" "$body"
rm -f "$body"
