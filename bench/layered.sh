#!/usr/bin/env bash
# Storage of layered EROFS (issue 3, optional part): two images that share
# all but their top layer — the files image (8 layers of this machine's
# /usr and /etc, see lib.sh) and a sibling with another top layer — each
# converted flattened (`kiln rootfs --format erofs`) and layered
# (`--layered`: a metadata image plus one data file per layer, shared by
# the images that have the layer). Bytes on disk are counted once per file
# (the store is content-addressed). Results replace the "Layered EROFS
# (issue 3)" section of docs/benchmarks.md.
#   bash bench/layered.sh
set -euo pipefail
. "$(dirname "$0")/lib.sh"

bench_setup
files_image   # $files_layout
work=$BENCH_DIR/layered-work; rm -rf "$work"; mkdir -p "$work"

# The sibling: the files image's manifest with its top layer swapped.
layout=$work/layout
cp -al "$files_layout" "$layout"
manifest=$(jq -r '.manifests[0].digest' "$layout/index.json" | sed 's/sha256://')
config=$(jq -r '.config.digest' "$layout/blobs/sha256/$manifest" | sed 's/sha256://')
mkdir -p "$work/top/etc/sibling"
echo "the sibling image" >"$work/top/etc/sibling/README"
head -c 3000000 /dev/urandom >"$work/top/etc/sibling/data.bin"
layer_tar "$work/top" "$work/top.tar"
diff_id="sha256:$(sha256sum "$work/top.tar" | cut -d' ' -f1)"
read -r layer_digest layer_size < <(add_blob "$layout" "$(compress "$work/top.tar" gzip)")
jq --arg d "$diff_id" '.rootfs.diff_ids[-1] = $d' "$layout/blobs/sha256/$config" >"$work/config.json"
read -r config_digest config_size < <(add_blob "$layout" "$work/config.json")
jq --arg d "$layer_digest" --argjson s "$layer_size" --arg c "$config_digest" --argjson cs "$config_size" \
  '.layers[-1].digest = $d | .layers[-1].size = $s | .config.digest = $c | .config.size = $cs' \
  "$layout/blobs/sha256/$manifest" >"$work/manifest.json"
read -r sibling_digest sibling_size < <(add_blob "$layout" "$work/manifest.json")
add_to_index "$layout" sibling application/vnd.oci.image.manifest.v1+json "$sibling_digest" "$sibling_size" amd64

store=$work/kiln
kiln() { "$KILN" --root "$store" "$@"; }
tar -C "$layout" -cf "$work/layout.tar" .
kiln load -q -i "$work/layout.tar" >/dev/null
rm -f "$work/layout.tar"
a=$(jq -r '.manifests[0].digest' "$layout/index.json")
b=$sibling_digest

# bytes FILE...: their sizes, each file counted once
bytes() { printf '%s\n' "$@" | sort -u | xargs stat -c %s | awk '{s += $1} END {printf "%.0f\n", s}'; }
flat_a=$(kiln rootfs --format erofs "$a")
flat_b=$(kiln rootfs --format erofs "$b")
mapfile -t layered_a < <(kiln rootfs --format erofs --layered "$a")
start=$(date +%s.%N)
mapfile -t layered_b < <(kiln rootfs --format erofs --layered "$b")
end=$(date +%s.%N)
reused=$(comm -12 <(printf '%s\n' "${layered_a[@]:1}" | sort) <(printf '%s\n' "${layered_b[@]:1}" | sort) | wc -l)
flat_one=$(bytes "$flat_a")
flat_both=$(bytes "$flat_a" "$flat_b")
layered_one=$(bytes "${layered_a[@]}")
layered_both=$(bytes "${layered_a[@]}" "${layered_b[@]}")
mb() { echo "scale=1; $1 / 1000000" | bc -l; }
body=$(mktemp)
{
  echo "Command: \`bash bench/layered.sh\`, $(date -u +%Y-%m-%d), $(machine)."
  echo
  echo "Two images sharing their first 7 layers: the files image (8 gzip layers of this machine's /usr and /etc) and a sibling whose top layer is another (3 MB). Bytes on disk of the root filesystems, each file counted once (the store keeps one copy of a file both images have)."
  echo
  echo "| root filesystems | one image (MB) | both images (MB) |"
  echo "|---|---|---|"
  echo "| flattened EROFS (\`--format erofs\`) | $(mb "$flat_one") | $(mb "$flat_both") |"
  echo "| layered EROFS (\`--format erofs --layered\`) | $(mb "$layered_one") | $(mb "$layered_both") |"
  echo
  echo "The second image's layered EROFS added $(mb $((layered_both - layered_one))) MB ($(( ${#layered_b[@]} - 1 )) devices; its metadata image $(mb "$(bytes "${layered_b[0]}")") MB) where its flattened EROFS added $(mb $((flat_both - flat_one))) MB: $(echo "scale=1; 100 * ($flat_both - $layered_both) / $flat_both" | bc -l)% less for the two. Converting it took $(printf '%.2f' "$(echo "$end - $start" | bc -l)") s: its layers are all read again for its tree, but the $reused data files it shares with the first image were found in the store by their layer, not written again."
} >"$body"
cat "$body"
write_section "Layered EROFS (issue 3)" "$body"
rm -f "$body"
