#!/usr/bin/env bash
# The test environment: four docker-registry servers on 127.0.0.1 (plain
# HTTP; basic auth; TLS with a private CA; token auth with the token server
# .ci/token-server.py) holding fixture images built offline from
# busybox-static.
#
#   bash .ci/testenv.sh up DIR       start everything, write DIR/env and DIR/digests.json
#   bash .ci/testenv.sh down DIR     stop every process it started (by PID)
#   bash .ci/testenv.sh digests DIR  rewrite DIR/digests.json from the running registries
#
# Tests read DIR/env (export lines) and DIR/digests.json (for each fixture in
# KILN_TEST_REGISTRY: the manifest digest as served, config, layer digests,
# diff_ids; for multiarch:1 the index digest and one entry per platform).
# Every process started is listed in DIR/pids and stopped by `down`.
set -euo pipefail

cmd=${1:-}
dir=${2:-/tmp/kiln-testenv}
dir=$(realpath -m "$dir")   # absolute: it is in every registry's command line, which down checks

log() { printf 'testenv: %s\n' "$*" >&2; }

# is_ours PID: a live process whose command line names $dir/ (a PID in
# $dir/pids may have been reused by an unrelated process since `up`)
is_ours() {
  [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$dir/"
}

# down: TERM every process in $dir/pids, KILL what is left after 5 s.
down() {
  [ -f "$dir/pids" ] || return 0
  local pid live=()
  while read -r pid; do
    [[ $pid =~ ^[0-9]+$ ]] && is_ours "$pid" && live+=("$pid")
  done <"$dir/pids"
  if [ ${#live[@]} -gt 0 ]; then
    kill -TERM "${live[@]}" 2>/dev/null || true
    for _ in $(seq 1 50); do
      local left=()
      for pid in "${live[@]}"; do is_ours "$pid" && left+=("$pid"); done
      [ ${#left[@]} -eq 0 ] && break
      sleep 0.1
    done
    for pid in "${live[@]}"; do
      if is_ours "$pid"; then log "pid $pid ignored TERM, sending KILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    done
  fi
  rm -f "$dir/pids"
}

free_ports() { # N distinct free ports on 127.0.0.1
  python3 -c 'import socket,sys
socks=[socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1",0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

start_registry() { # name port extra-http-yaml extra-top-yaml
  local name=$1 port=$2 http_extra=$3 top_extra=$4
  mkdir -p "$dir/$name/storage"
  cat >"$dir/$name/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/$name/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
$http_extra
$top_extra
YAML
  docker-registry serve "$dir/$name/config.yml" >"$dir/$name.log" 2>&1 &
  echo $! >>"$dir/pids"
  echo $! >"$dir/$name/pid"
}

wait_registry() { # name url [curl args]: up to 20 s for GET /v2/ to answer 200 or 401
  local name=$1 url=$2 code pid; shift 2
  pid=$(cat "$dir/$name/pid")
  for _ in $(seq 1 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$@" "$url" || true)
    if [ "$code" = 200 ] || [ "$code" = 401 ]; then return 0; fi
    is_ours "$pid" || break   # exited: no point waiting
    sleep 0.2
  done
  log "registry $name ($url, pid $pid) did not come up; $dir/$name.log:"
  cat "$dir/$name.log" >&2; return 1
}

. "$(dirname "${BASH_SOURCE[0]}")/lib/oci.sh"

build_fixtures() {
  local src=$dir/src layouts=$dir/layouts
  rm -rf "$src" "$layouts"; mkdir -p "$src" "$layouts"

  # Layer 1: a busybox-static root filesystem.
  local base=$src/base
  mkdir -p "$base/bin" "$base/etc" "$base/tmp" "$base/root" "$base/sbin"
  cp /bin/busybox "$base/bin/busybox"
  for applet in sh ls cat echo mount uname poweroff; do ln -s busybox "$base/bin/$applet"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n' >"$base/etc/passwd"
  printf 'root:x:0:\nuser:x:1000:\n' >"$base/etc/group"
  chmod 1777 "$base/tmp"; chmod 700 "$base/root"
  chown -R 0:0 "$base"

  # Layer 2: files, a hardlink, a symlink, a directory, setuid, other owner.
  local extra=$src/extra
  mkdir -p "$extra/data/dir"
  echo "file a" >"$extra/data/a.txt"; echo "file b" >"$extra/data/b.txt"
  ln "$extra/data/a.txt" "$extra/data/hard"
  ln -s a.txt "$extra/data/link"
  echo x >"$extra/data/dir/x"; echo y >"$extra/data/dir/y"
  printf '#!/bin/sh\necho suid\n' >"$extra/data/suid"
  echo "owned by 1000" >"$extra/data/owned"; chown -R 0:0 "$extra"; chown 1000:1000 "$extra/data/owned"
  chmod 4755 "$extra/data/suid"   # after chown, which clears setuid
  mknod "$extra/data/null" c 1 3; mknod "$extra/data/loop9" b 7 9; mkfifo "$extra/data/fifo"
  # xattrs: a user one on a hardlinked file, a file capability (cap_net_raw+p,
  # v2), one too large for an ext4 inode (it goes to an xattr block).
  setfattr -n user.kiln -v hello "$extra/data/a.txt"
  setfattr -n security.capability -v 0x0100000200200000000000000000000000000000 "$extra/data/suid"
  setfattr -n user.big -v "$(head -c 300 /dev/zero | tr '\0' k)" "$extra/data/owned"

  # Layer 3: a whiteout and an opaque directory.
  local wh=$src/whiteouts
  mkdir -p "$wh/data/dir"
  : >"$wh/data/.wh.b.txt"; : >"$wh/data/dir/.wh..wh..opq"; echo z >"$wh/data/dir/z"
  chown -R 0:0 "$wh"

  # shared:1's own layer.
  mkdir -p "$src/shared"; echo "shared image" >"$src/shared/shared.txt"

  # big:1's layers: incompressible data.
  for n in 1 2 3; do
    mkdir -p "$src/big$n"; head -c 25165824 /dev/urandom >"$src/big$n/blob$n.bin"
  done

  # boot:1's init: prints a marker, powers the VM off.
  mkdir -p "$src/boot"
  printf '#!/bin/sh\nmount -t proc proc /proc 2>/dev/null\necho KILN-BOOT-OK "$(cat /etc/kiln-marker)"\npoweroff -f\n' >"$src/boot/init"
  chmod 755 "$src/boot/init"; mkdir -p "$src/boot/etc" "$src/boot/proc" "$src/boot/dev" "$src/boot/sys"
  echo "from-the-image" >"$src/boot/etc/kiln-marker"

  # symlinked:1: a usrmerge-style layer (lib -> usr/lib, an absolute and a
  # climbing symlink), then a layer written by hand, as tools other than
  # docker write them, whose paths go through those symlinks: a file, a new
  # directory, a whiteout, a climb that must stay inside, a hardlink target.
  local merged=$src/usrmerge
  mkdir -p "$merged/usr/lib"; echo old >"$merged/usr/lib/old"; echo keep >"$merged/usr/lib/keep"
  ln -s usr/lib "$merged/lib"; ln -s /usr/lib "$merged/abs"; ln -s ../../.. "$merged/up"
  chown -R 0:0 "$merged"
  python3 - "$src/through.tar" <<'PY'
import io, sys, tarfile
out = tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT)
def add(name, data=None, kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name); info.type = kind; info.linkname = link
    info.mtime = 1700000000; info.mode = 0o644
    body = io.BytesIO(data) if data is not None else None
    info.size = len(data) if data is not None else 0
    out.addfile(info, body)
add("lib/added", b"added through lib\n")
add("lib/.wh.old", b"")
add("abs/sub/deeper", b"through an absolute symlink\n")
add("up/climbed", b"stays inside\n")
add("hard", kind=tarfile.LNKTYPE, link="lib/added")
out.close()
PY

  # hostile:1: a layer, as an attacker writes it, that climbs out of the root.
  python3 - "$src/hostile.tar" <<'PY'
import io, sys, tarfile
out = tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT)
for name, data in [("fine", b"fine\n"), ("../kiln-escape", b"escaped\n")]:
    info = tarfile.TarInfo(name); info.size = len(data); info.mtime = 1700000000
    out.addfile(info, io.BytesIO(data))
out.close()
PY

  # arch marker layers.
  for arch in amd64 arm64; do mkdir -p "$src/arch-$arch"; echo "$arch" >"$src/arch-$arch/arch"; done

  local L=$layouts/images
  build_image "$L" busybox-1 amd64 gzip "$base" >/dev/null
  build_image "$L" busybox-multi amd64 gzip "$base" "$extra" "$wh" >/dev/null
  build_image "$L" busybox-zstd amd64 zstd "$base" "$extra" "$wh" >/dev/null
  build_image "$L" busybox-plain amd64 none "$base" "$extra" "$wh" >/dev/null
  build_image "$L" shared-1 amd64 gzip "$base" "$src/shared" >/dev/null
  build_image "$L" big-1 amd64 gzip "$base" "$src/big1" "$src/big2" "$src/big3" >/dev/null
  build_image "$L" boot-1 amd64 gzip "$base" "$src/boot" >/dev/null
  build_image "$L" symlinked-1 amd64 gzip "$base" "$merged" "$src/through.tar" >/dev/null
  build_image "$L" hostile-1 amd64 gzip "$base" "$src/hostile.tar" >/dev/null

  # A two-platform index.
  local M=$layouts/multiarch
  read -r amd amdsize < <(build_image "$M" amd64 amd64 gzip "$base" "$src/arch-amd64")
  read -r arm armsize < <(build_image "$M" arm64 arm64 gzip "$base" "$src/arch-arm64")
  jq -n --arg a "$amd" --argjson asz "$amdsize" --arg r "$arm" --argjson rs "$armsize" '{
      schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [
        {mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $a, size: $asz, platform: {os: "linux", architecture: "amd64"}},
        {mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $r, size: $rs, platform: {os: "linux", architecture: "arm64", variant: "v8"}}]}' >"$dir/index.json"
  read -r idx idxsize < <(add_blob "$M" "$dir/index.json")
  jq --arg d "$idx" --argjson s "$idxsize" '.manifests += [{mediaType:"application/vnd.oci.image.index.v1+json", digest:$d, size:$s, annotations:{"org.opencontainers.image.ref.name":"multiarch"}}]' \
    "$M/index.json" >"$M/index.json.new" && mv "$M/index.json.new" "$M/index.json"
}

# describe REGISTRY REPO REF -> JSON of a manifest as the registry serves it:
# {digest, mediaType, size, config, layers, layer_media_types, diff_ids}, or
# for an index {digest, mediaType, size, manifests: {"os/arch[/variant]": {...}}}.
accept_all='application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.list.v2+json,application/vnd.docker.distribution.manifest.v2+json'
describe() {
  local registry=$1 repo=$2 ref=$3 body headers digest served
  body=$(mktemp "$dir/manifest.XXXX"); headers=$(mktemp "$dir/headers.XXXX")
  # (explicit `|| return`: set -e does not apply inside `v=$(describe ...) || ...`)
  curl -fsS -H "Accept: $accept_all" -D "$headers" -o "$body" "http://$registry/v2/$repo/manifests/$ref" || return 1
  digest=sha256:$(sha256sum "$body" | cut -d' ' -f1)
  served=$(tr -d '\r' <"$headers" | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: //p')
  if [ -n "$served" ] && [ "$served" != "$digest" ]; then
    log "$repo:$ref: Docker-Content-Digest $served but the body hashes to $digest"; return 1
  fi
  local media size; media=$(jq -r .mediaType "$body"); size=$(stat -c %s "$body")
  case $media in
    *index*|*manifest.list*)
      local entries='{}' key child v
      while IFS=$'\t' read -r key child; do
        v=$(describe "$registry" "$repo" "$child") || return 1
        entries=$(jq -c --arg k "$key" --argjson v "$v" '.[$k] = $v' <<<"$entries")
      done < <(jq -r '.manifests[] | [(.platform | [.os, .architecture, .variant // empty] | join("/")), .digest] | @tsv' "$body")
      [ "$entries" != '{}' ] || return 1
      jq -n --arg d "$digest" --arg m "$media" --argjson s "$size" --argjson e "$entries" \
        '{digest: $d, mediaType: $m, size: $s, manifests: $e}' ;;
    *)
      local config; config=$(jq -r .config.digest "$body")
      curl -fsS "http://$registry/v2/$repo/blobs/$config" >"$body.config" || return 1
      jq -c --arg d "$digest" --arg m "$media" --argjson s "$size" --slurpfile man "$body" '{
          digest: $d, mediaType: $m, size: $s, config: $man[0].config.digest,
          layers: [$man[0].layers[].digest], layer_media_types: [$man[0].layers[].mediaType],
          diff_ids: .rootfs.diff_ids, platform: ([.os, .architecture, .variant // empty] | join("/"))}' "$body.config" || return 1 ;;
  esac
  rm -f "$body" "$body.config" "$headers"
}

fixtures="busybox:1 busybox:multi busybox:zstd busybox:plain busybox:docker multiarch:1 shared:1 big:1 boot:1 symlinked:1 hostile:1"

# write_digests REGISTRY: $dir/digests.json, {"repo:tag": describe, ...}
write_digests() {
  local all='{}' ref v
  for ref in $fixtures; do
    v=$(describe "$1" "${ref%%:*}" "${ref#*:}") || { log "cannot describe $ref on $1"; return 1; }
    all=$(jq -c --arg r "$ref" --argjson v "$v" '.[$r] = $v' <<<"$all")
  done
  jq . <<<"$all" >"$dir/digests.json.new" && mv "$dir/digests.json.new" "$dir/digests.json"
}

up() {
  # A failed `up` stops what it started; its logs stay in $dir.
  trap 'rc=$?; if [ $rc -ne 0 ]; then log "up failed (exit $rc); stopping what was started"; down; fi' EXIT
  down
  rm -rf "$dir"; mkdir -p "$dir"
  local plain auth tls token tokenserver
  read -r plain auth tls token tokenserver < <(free_ports 5)

  # Private CA and a server certificate for 127.0.0.1 / localhost.
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=kiln test CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$dir/san.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 30 \
    -extfile "$dir/san.ext" -out "$dir/server.pem" 2>/dev/null

  htpasswd -Bbn kilnuser kilnpass >"$dir/htpasswd"

  # The token registry's signing key and certificate (self-signed: it is its
  # own root in the registry's rootcertbundle), and its token server.
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=kiln test token issuer" \
    -keyout "$dir/token.key" -out "$dir/token.pem" 2>/dev/null
  python3 "$(dirname "${BASH_SOURCE[0]}")/token-server.py" --port "$tokenserver" --key "$dir/token.key" \
    --cert "$dir/token.pem" --service kiln-test-token --issuer kiln-test-issuer \
    --credentials kilnuser:kilnpass >"$dir/token-server.log" 2>&1 &
  echo $! >>"$dir/pids"

  start_registry plain "$plain" "" ""
  start_registry auth "$auth" "" "auth:
  htpasswd:
    realm: kiln-test
    path: $dir/htpasswd"
  start_registry tls "$tls" "  tls:
    certificate: $dir/server.pem
    key: $dir/server.key" ""
  start_registry token "$token" "" "auth:
  token:
    realm: http://127.0.0.1:$tokenserver/token
    service: kiln-test-token
    issuer: kiln-test-issuer
    rootcertbundle: $dir/token.pem"
  wait_registry plain "http://127.0.0.1:$plain/v2/"
  wait_registry auth "http://127.0.0.1:$auth/v2/"
  wait_registry tls "https://127.0.0.1:$tls/v2/" --cacert "$dir/ca.pem"
  wait_registry token "http://127.0.0.1:$token/v2/"
  local code
  for _ in $(seq 1 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$tokenserver/token?service=kiln-test-token" || true)
    [ "$code" = 200 ] && break
    sleep 0.2
  done
  [ "$code" = 200 ] || { log "token server did not come up:"; cat "$dir/token-server.log" >&2; return 1; }
  log "registries up: plain $plain, auth $auth, tls $tls, token $token (token server $tokenserver)"

  build_fixtures
  local R=127.0.0.1:$plain L=$dir/layouts/images
  push "$L:busybox-1" "$R/busybox:1"
  push "$L:busybox-multi" "$R/busybox:multi"
  push "$L:busybox-zstd" "$R/busybox:zstd"
  push_raw "$L" busybox-plain "$R" busybox:plain
  push "$L:busybox-1" "$R/busybox:docker" --format v2s2
  push "$L:shared-1" "$R/shared:1"
  push "$L:big-1" "$R/big:1"
  push "$L:boot-1" "$R/boot:1"
  push "$L:symlinked-1" "$R/symlinked:1"
  push "$L:hostile-1" "$R/hostile:1"
  skopeo copy --quiet --all --dest-tls-verify=false "oci:$dir/layouts/multiarch:multiarch" "docker://$R/multiarch:1" >/dev/null
  push "$L:busybox-1" "127.0.0.1:$auth/busybox:1" --dest-creds kilnuser:kilnpass
  push "$L:busybox-1" "127.0.0.1:$token/busybox:1" --dest-creds kilnuser:kilnpass
  mkdir -p "$dir/certs.d"; cp "$dir/ca.pem" "$dir/certs.d/ca.crt"
  skopeo copy --quiet --dest-cert-dir "$dir/certs.d" "oci:$L:busybox-1" "docker://127.0.0.1:$tls/busybox:1" >/dev/null
  log "fixtures pushed"
  write_digests "$R"

  cat >"$dir/env" <<ENV
export KILN_TEST_ENV_DIR=$dir
export KILN_TEST_REGISTRY=127.0.0.1:$plain
export KILN_TEST_AUTH_REGISTRY=127.0.0.1:$auth
export KILN_TEST_AUTH_USER=kilnuser
export KILN_TEST_AUTH_PASSWORD=kilnpass
export KILN_TEST_TLS_REGISTRY=127.0.0.1:$tls
export KILN_TEST_TOKEN_REGISTRY=127.0.0.1:$token
export KILN_TEST_CA=$dir/ca.pem
export KILN_TEST_FIXTURES=$dir/layouts
ENV
}

case $cmd in
  up) up ;;
  down) down ;;
  digests) . "$dir/env"; write_digests "$KILN_TEST_REGISTRY" ;;  # rewrite digests.json of a running env
  *) echo "usage: $0 up|down|digests DIR" >&2; exit 2 ;;
esac
