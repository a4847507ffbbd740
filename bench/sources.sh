#!/usr/bin/env bash
# Cache hits of a checksum-catalog image (docs/sources.md): a 1 GB ext4
# rootfs pulled once, then `kiln pull` again (stat-stamp check, no hashing),
# against the peer check a cache without stamps does — `sha256sum` of the
# file — in the same run. Also the cost after the file's ctime changes (one
# re-hash) and after the stamp is refreshed.
#
#   bash bench/sources.sh            # KILN=path/to/kiln to pick the binary
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ensure_kiln
need mke2fs e2fsprogs

work=$dir/sources
rm -rf "$work" && mkdir -p "$work"
head -c 70000 /dev/urandom >"$work/vmlinux"
truncate -s 1G "$work/rootfs.ext4"
mke2fs -q -F -t ext4 "$work/rootfs.ext4" >/dev/null
# Fill it so the file is 1 GB of data, not holes.
dd if=/dev/urandom of="$work/rootfs.ext4" bs=1M seek=64 count=900 conv=notrunc status=none
cat >"$work/catalog.json" <<JSON
{"version":1,"images":{"big":{"architectures":{"x86_64":{
 "kernel":{"url":"vmlinux","sha256":"$(sha256sum "$work/vmlinux" | cut -c1-64)"},
 "rootfs":{"url":"rootfs.ext4","sha256":"$(sha256sum "$work/rootfs.ext4" | cut -c1-64)"}}}}}}
JSON
k() { "$KILN" --root "$work/root" --config "$work/config.toml" "$@"; }
k sources add bench "$work/catalog.json" --type catalog 2>/dev/null
k pull -q bench://big >/dev/null

ms() { # command... -> milliseconds of one run
  local start end
  start=$(date +%s%N); "$@" >/dev/null; end=$(date +%s%N)
  echo $(((end - start) / 1000000))
}
runs=10
hit_total=0; peer_total=0
for _ in $(seq $runs); do
  hit_total=$((hit_total + $(ms k pull -q bench://big)))
  peer_total=$((peer_total + $(ms sha256sum "$work/rootfs.ext4")))
done
hit=$((hit_total / runs)); peer=$((peer_total / runs))
blob=$(k inspect --format json bench://big | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["source"]["paths"]["rootfs"])')
chmod u+w "$blob"; chmod u-w "$blob"          # ctime changes, content does not
rehash=$(ms k pull -q bench://big)
again=$(ms k pull -q bench://big)
ratio=$(python3 -c "print(f'{$hit / max($peer, 1):.3f}')")
echo "cached pull ${hit} ms (mean of $runs) vs sha256sum ${peer} ms -> ${ratio}x; after a ctime change ${rehash} ms, then ${again} ms"
