#!/usr/bin/env bash
# Benchmark of `kiln save` and `kiln load` (issue: load/save), in one run, on
# the ~500 MB benchmark image (8 gzip layers, bench/lib.sh):
#   - save: kiln save (docker format) from its store vs skopeo copy of the
#     same image from a local OCI layout to docker-archive:;
#   - load: kiln load of that archive (and of skopeo's) into an empty store vs
#     skopeo copy docker-archive: → oci: of skopeo's archive;
#   - peak RSS of kiln load.
# Results replace the "Load and save" section of docs/benchmarks.md.
#   bash bench/archive.sh          (RUNS=5 by default)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

RUNS=${RUNS:-5}
bench_setup
bench_image   # $layout, $compressed
work=$BENCH_DIR/work-archive; rm -rf "$work"; mkdir -p "$work"

# The image in a kiln store, loaded from a tar of the OCI layout.
tar -C "$layout" -cf "$work/layout.tar" .
"$KILN" --root "$work/store" load -q -i "$work/layout.tar" -t localhost/bench:1 >/dev/null
rm -f "$work/layout.tar"

kiln_save() { "$KILN" --root "$work/store" save -q localhost/bench:1 -o "$work/kiln.tar"; }
skopeo_save() { skopeo copy --quiet "oci:$layout:bench" "docker-archive:$work/skopeo.tar:localhost/bench:1"; }
kiln_load() { "$KILN" --root "$work/loaded" load -q -i "$work/kiln.tar" >/dev/null; }
kiln_load_skopeo() { "$KILN" --root "$work/loaded" load -q -i "$work/skopeo.tar" >/dev/null; }
skopeo_load() { skopeo copy --quiet "docker-archive:$work/skopeo.tar" "oci:$work/skopeo-oci:bench"; }

save_times=(); skopeo_save_times=(); load_times=(); load_skopeo_times=(); skopeo_load_times=()
# Every timed run starts from nothing: its previous output removed and
# `sync` run, untimed (clean_slate).
for _ in $(seq 1 "$RUNS"); do
  clean_slate "$work/kiln.tar"; save_times+=("$(durable_seconds kiln_save)")
  clean_slate "$work/skopeo.tar"; skopeo_save_times+=("$(durable_seconds skopeo_save)")
  clean_slate "$work/loaded"; load_times+=("$(durable_seconds kiln_load)")
  clean_slate "$work/loaded"; load_skopeo_times+=("$(durable_seconds kiln_load_skopeo)")
  clean_slate "$work/skopeo-oci"; skopeo_load_times+=("$(durable_seconds skopeo_load)")
done
save_median=$(printf '%s\n' "${save_times[@]}" | median)
skopeo_save_median=$(printf '%s\n' "${skopeo_save_times[@]}" | median)
load_median=$(printf '%s\n' "${load_times[@]}" | median)
load_skopeo_median=$(printf '%s\n' "${load_skopeo_times[@]}" | median)
skopeo_load_median=$(printf '%s\n' "${skopeo_load_times[@]}" | median)
kiln_archive=$(stat -c %s "$work/kiln.tar"); skopeo_archive=$(stat -c %s "$work/skopeo.tar")
clean_slate "$work/loaded"; load_rss=$(peak_rss_mb "$KILN" --root "$work/loaded" load -q -i "$work/kiln.tar")
save_rss=$(peak_rss_mb bash -c "rm -f '$work/kiln.tar'; exec '$KILN' --root '$work/store' save -q localhost/bench:1 -o '$work/kiln.tar'")

verdict() { if [ "$(echo "$1" | bc -l)" = 1 ]; then echo pass; else echo FAIL; fi; }
save_ratio=$(ratio "$save_median" "$skopeo_save_median")
load_ratio=$(ratio "$load_median" "$skopeo_load_median")
load_skopeo_ratio=$(ratio "$load_skopeo_median" "$skopeo_load_median")
body=$(mktemp)
{
  echo "Command: \`bash bench/archive.sh\` (RUNS=$RUNS), $(date -u +%Y-%m-%d), $(machine)."
  echo
  echo "Every timed run starts from nothing (its previous output removed and \`sync\` run, untimed) and ends when its output is on disk (the command, then \`sync\`, timed). Image: the pull benchmark's image (8 gzip layers, $((compressed / 1000000)) MB compressed). kiln's archive keeps the compressed blobs ($((kiln_archive / 1000000)) MB); skopeo's docker-archive holds the layers uncompressed, as docker's does ($((skopeo_archive / 1000000)) MB). kiln load verifies every blob digest and computes and checks every diff_id; skopeo copy from a docker-archive checks the layer digests it reads."
  echo
  echo "| operation | median (s) | ratio to skopeo | peak RSS (MB) |"
  echo "|---|---|---|---|"
  echo "| kiln save (docker format) from the store | $save_median | $save_ratio | $save_rss |"
  echo "| skopeo copy oci: → docker-archive: | $skopeo_save_median | 1.00 | - |"
  echo "| kiln load of kiln's archive, empty store | $load_median | $load_ratio | $load_rss |"
  echo "| kiln load of skopeo's docker-archive, empty store | $load_skopeo_median | $load_skopeo_ratio | - |"
  echo "| skopeo copy docker-archive: → oci: | $skopeo_load_median | 1.00 | - |"
  echo
  echo "| target | measured | verdict |"
  echo "|---|---|---|"
  echo "| save ≤ 0.7× skopeo | ${save_ratio}× | $(verdict "$save_ratio <= 0.7") |"
  echo "| load ≤ 0.7× skopeo | ${load_ratio}× (skopeo's archive: ${load_skopeo_ratio}×) | $(verdict "$load_ratio <= 0.7") |"
  echo
  echo "Raw runs (s): kiln save ${save_times[*]}; skopeo save ${skopeo_save_times[*]}; kiln load ${load_times[*]}; kiln load of skopeo's ${load_skopeo_times[*]}; skopeo load ${skopeo_load_times[*]}."
} >"$body"
cat "$body"
write_section "Load and save" "$body"
rm -f "$body"
rm -rf "$work"
