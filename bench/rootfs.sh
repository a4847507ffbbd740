#!/usr/bin/env bash
# Benchmark of `kiln rootfs` and `kiln disk create` (issue 3), in one run:
#   - pull + ext4 of the ~500 MB benchmark image vs the peer pipeline
#     skopeo copy + umoci raw unpack + mke2fs -d, and vs podman pull;
#   - disk create from the cached ext4 vs cp --sparse=always of it;
#   - peak RSS of a conversion;
#   - the same two pipelines on a second image made of real files (this
#     machine's /usr and /etc: tens of thousands of files of every size),
#     where the benchmark image holds 16 large files of random bytes and
#     text, so that its time is all bandwidth (hashing, inflating, writing).
# Results replace the "Root filesystems and disks" section of docs/benchmarks.md.
#   bash bench/rootfs.sh          (RUNS=3, FILES_RUNS=3, DISK_RUNS=10 by default)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

RUNS=${RUNS:-3}
FILES_RUNS=${FILES_RUNS:-3}
DISK_RUNS=${DISK_RUNS:-10}
need bc bc
need /usr/bin/time time
need umoci umoci
need mke2fs e2fsprogs
need mkfs.erofs erofs-utils
ensure_kiln
bench_image
push_bench_image
files_image
skopeo copy --quiet --dest-tls-verify=false "oci:$files_layout:files" "docker://$REGISTRY/files:1" >/dev/null
work=$BENCH_DIR/work; mkdir -p "$work"

# kiln_convert FORMAT: a cold pull that builds FORMAT as the layers arrive
# (kiln pull --rootfs: each layer unpacked from the pull's own decompression).
kiln_convert() {
  "$KILN" --root "$work/kiln" pull --insecure -q --rootfs "$1" "$ref" >/dev/null
}
# kiln_two_steps FORMAT: a cold pull, then kiln rootfs from the stored
# layers; each step's time is appended to $work/split-FORMAT ("pull rootfs").
kiln_two_steps() {
  local t0 t1 t2
  fresh
  t0=$(date +%s.%N)
  "$KILN" --root "$work/kiln" pull --insecure -q "$ref" >/dev/null || return 1
  sync
  t1=$(date +%s.%N)
  "$KILN" --root "$work/kiln" rootfs --format "$1" "$ref" >/dev/null || return 1
  sync
  t2=$(date +%s.%N)
  echo "$(echo "$t1 - $t0" | bc -l) $(echo "$t2 - $t1" | bc -l)" >>"$work/split-$1"
}
kiln_ext4() { kiln_convert ext4; }
peer_ext4() {
  skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci:$work/oci:bench"
  umoci raw unpack --image "$work/oci:bench" "$work/unpacked" 2>/dev/null
  local kb; kb=$(du -sk "$work/unpacked" | cut -f1)
  mke2fs -q -F -t ext4 -d "$work/unpacked" "$work/peer.ext4" "$(( kb * 5 / 4 / 1024 + 64 ))M"
}
kiln_erofs() { kiln_convert erofs; }
peer_erofs() {
  skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci:$work/oci:bench"
  umoci raw unpack --image "$work/oci:bench" "$work/unpacked" 2>/dev/null
  mkfs.erofs --quiet "$work/peer.erofs" "$work/unpacked"
}
podman_pull() { podman --root "$work/podman" --runroot "$work/podman-run" --storage-driver vfs pull -q --tls-verify=false "$ref"; }
# fresh: (untimed, before every timed run) removes what any pipeline left —
# kiln's store, the peers' layout, tree and images, podman's image — and
# syncs, so no run pays for the cleanup or the writeback of the one before.
fresh() {
  podman --root "$work/podman" --runroot "$work/podman-run" --storage-driver vfs rmi -af >/dev/null 2>&1 || true
  clean_slate "$work/kiln" "$work/oci" "$work/unpacked" "$work/peer.ext4" "$work/peer.erofs"
}

rm -f "$work/split-ext4" "$work/split-erofs"
kiln_times=(); peer_times=(); podman_times=(); kiln_erofs_times=(); peer_erofs_times=()
have_podman=false
command -v podman >/dev/null 2>&1 && have_podman=true
for _ in $(seq 1 "$RUNS"); do
  fresh; kiln_times+=("$(durable_seconds kiln_ext4)")
  fresh; peer_times+=("$(durable_seconds peer_ext4)")
  fresh; kiln_erofs_times+=("$(durable_seconds kiln_erofs)")
  fresh; peer_erofs_times+=("$(durable_seconds peer_erofs)")
  if $have_podman; then fresh; podman_times+=("$(durable_seconds podman_pull)"); fi
  kiln_two_steps ext4
  kiln_two_steps erofs
done

# The files image: the same one-command pipelines and peers (no podman, no
# two-command split: both as above).
bench_ref=$ref
ref=$REGISTRY/files:1
files_kiln=(); files_peer=(); files_kiln_erofs=(); files_peer_erofs=()
for _ in $(seq 1 "$FILES_RUNS"); do
  fresh; files_kiln+=("$(durable_seconds kiln_ext4)")
  fresh; files_peer+=("$(durable_seconds peer_ext4)")
  fresh; files_kiln_erofs+=("$(durable_seconds kiln_erofs)")
  fresh; files_peer_erofs+=("$(durable_seconds peer_erofs)")
done
# (fresh emptied kiln's store for the last peer run: pull the image again)
"$KILN" --root "$work/kiln" pull --insecure -q "$ref" >/dev/null
files_ext4_size=$(stat -c %s "$("$KILN" --root "$work/kiln" rootfs --format ext4 "$ref")")
files_files=$(find "$work/unpacked" -xdev -mindepth 1 | wc -l)
ref=$bench_ref
files_median() { printf '%s\n' "$@" | median; }
files_kiln_median=$(files_median "${files_kiln[@]}")
files_peer_median=$(files_median "${files_peer[@]}")
files_kiln_erofs_median=$(files_median "${files_kiln_erofs[@]}")
files_peer_erofs_median=$(files_median "${files_peer_erofs[@]}")
files_ratio_ext4=$(ratio "$files_kiln_median" "$files_peer_median")
files_ratio_erofs=$(ratio "$files_kiln_erofs_median" "$files_peer_erofs_median")

kiln_median=$(printf '%s\n' "${kiln_times[@]}" | median)
peer_median=$(printf '%s\n' "${peer_times[@]}" | median)
kiln_erofs_median=$(printf '%s\n' "${kiln_erofs_times[@]}" | median)
peer_erofs_median=$(printf '%s\n' "${peer_erofs_times[@]}" | median)
ratio_erofs=$(ratio "$kiln_erofs_median" "$peer_erofs_median")
fresh
rss_pull=$(peak_rss_mb "$KILN" --root "$work/kiln" pull --insecure -q --rootfs ext4 "$ref")
rss_convert=$(peak_rss_mb "$KILN" --root "$work/kiln" rootfs --format ext4 --size 2G "$ref")
rss=$(printf '%s\n' "$rss_pull" "$rss_convert" | sort -g | tail -1)

# Disks from the cached ext4 (the last kiln run left it in the store).
base=$("$KILN" --root "$work/kiln" rootfs --format ext4 "$ref")
base_size=$(stat -c %s "$base")
n=0
disk_once() { n=$((n + 1)); "$KILN" --root "$work/kiln" disk create "bench-$n" --image "$ref" >/dev/null; }
cp_once() { cp --sparse=always "$base" "$work/copy.ext4"; }
disk_ms=$(for _ in $(seq 1 "$DISK_RUNS"); do seconds disk_once; done | median | awk '{printf "%.1f", $1 * 1000}')
cp_ms=$(for _ in $(seq 1 "$DISK_RUNS"); do rm -f "$work/copy.ext4"; seconds cp_once; done | median | awk '{printf "%.1f", $1 * 1000}')
method=$("$KILN" --root "$work/kiln" disk ls --format json | jq -r '.[0].method')

verdict() { if [ "$(echo "$1" | bc -l)" = 1 ]; then echo pass; else echo FAIL; fi; }
ratio_ext4=$(ratio "$kiln_median" "$peer_median")
body=$(mktemp)
{
  echo "Command: \`bash bench/rootfs.sh\` (RUNS=$RUNS, DISK_RUNS=$DISK_RUNS), $(date -u +%Y-%m-%d), $(machine)."
  echo
  echo "Every pipeline run (first table) starts from nothing (the previous outputs removed and \`sync\` run, untimed) and ends when its output is on disk (the command, then \`sync\`, timed); the disk timings (second table) stop when the command exits. Image: the pull benchmark's 8 gzip layers, $((compressed / 1000000)) MB compressed; ext4 image $((base_size / 1000000)) MB."
  echo
  echo "| pipeline | median (s) | ratio to the peer pipeline |"
  echo "|---|---|---|"
  echo "| kiln pull --rootfs ext4 (cold store) | $kiln_median | $ratio_ext4 |"
  echo "| skopeo copy + umoci raw unpack + mke2fs -d | $peer_median | 1.00 |"
  echo "| kiln pull --rootfs erofs (cold store) | $kiln_erofs_median | $ratio_erofs (to the EROFS pipeline) |"
  echo "| skopeo copy + umoci raw unpack + mkfs.erofs | $peer_erofs_median | 1.00 (EROFS) |"
  if $have_podman; then
    podman_median=$(printf '%s\n' "${podman_times[@]}" | median)
    echo "| podman pull (vfs: pulls and unpacks) | $podman_median | $(ratio "$podman_median" "$peer_median") |"
  fi
  echo
  echo "On the files image ($((files_compressed / 1000000)) MB compressed in 8 gzip layers, $files_files files, directories and links; ext4 image $((files_ext4_size / 1000000)) MB; FILES_RUNS=$FILES_RUNS):"
  echo
  echo "| pipeline (files image) | median (s) | ratio to the peer pipeline |"
  echo "|---|---|---|"
  echo "| kiln pull --rootfs ext4 (cold store) | $files_kiln_median | $files_ratio_ext4 |"
  echo "| skopeo copy + umoci raw unpack + mke2fs -d | $files_peer_median | 1.00 |"
  echo "| kiln pull --rootfs erofs (cold store) | $files_kiln_erofs_median | $files_ratio_erofs (to the EROFS pipeline) |"
  echo "| skopeo copy + umoci raw unpack + mkfs.erofs | $files_peer_erofs_median | 1.00 (EROFS) |"
  echo
  split_median() { awk -v c="$2" '{print $c}' "$work/split-$1" | median; }
  echo "The same in two commands (medians): kiln pull $(split_median ext4 1) s, then kiln rootfs --format ext4 $(split_median ext4 2) s; kiln pull $(split_median erofs 1) s, then kiln rootfs --format erofs $(split_median erofs 2) s."
  echo
  echo "| disk from the cached ext4 | median (ms) |"
  echo "|---|---|"
  echo "| kiln disk create (method here: $method) | $disk_ms |"
  echo "| cp --sparse=always | $cp_ms |"
  echo
  echo "| target | measured | verdict |"
  echo "|---|---|---|"
  echo "| pull + ext4 ≤ 0.25× the skopeo+umoci+mke2fs pipeline | ${ratio_ext4}× | $(verdict "$ratio_ext4 <= 0.25") |"
  echo "| pull + EROFS ≤ 0.25× the skopeo+umoci+mkfs.erofs pipeline | ${ratio_erofs}× | $(verdict "$ratio_erofs <= 0.25") |"
  echo "| the same on the files image (ext4) | ${files_ratio_ext4}× | $(verdict "$files_ratio_ext4 <= 0.25") |"
  echo "| the same on the files image (EROFS) | ${files_ratio_erofs}× | $(verdict "$files_ratio_erofs <= 0.25") |"
  echo "| disk create ≤ 50 ms | ${disk_ms} ms | $(verdict "$disk_ms <= 50") |"
  echo "| peak RSS of a conversion ≤ 200 MB | ${rss} MB (pull --rootfs ext4 ${rss_pull} MB; rootfs --format ext4 --size 2G ${rss_convert} MB) | $(verdict "$rss <= 200") |"
  echo
  echo "Raw runs (s): kiln ext4 ${kiln_times[*]}; peer ext4 ${peer_times[*]}; kiln erofs ${kiln_erofs_times[*]}; peer erofs ${peer_erofs_times[*]}${podman_times:+; podman ${podman_times[*]}}; files image: kiln ext4 ${files_kiln[*]}, peer ext4 ${files_peer[*]}, kiln erofs ${files_kiln_erofs[*]}, peer erofs ${files_peer_erofs[*]}."
} >"$body"
cat "$body"
write_section "Root filesystems and disks (issue 3)" "$body"
rm -f "$body"
