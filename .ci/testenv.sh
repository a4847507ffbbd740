#!/usr/bin/env bash
# The test environment: three docker-registry servers on 127.0.0.1 (plain
# HTTP; basic auth; TLS with a private CA) holding fixture images built
# offline from busybox-static.
#
#   bash .ci/testenv.sh up DIR     start everything, write DIR/env
#   bash .ci/testenv.sh down DIR   stop every process it started (by PID)
#
# Tests read DIR/env (export lines). Every process started is listed in
# DIR/pids and stopped by `down`.
set -euo pipefail

cmd=${1:-}
dir=${2:-/tmp/kiln-testenv}

log() { printf 'testenv: %s\n' "$*" >&2; }

down() {
  if [ -f "$dir/pids" ]; then
    while read -r pid; do
      [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done <"$dir/pids"
    sleep 0.5
    while read -r pid; do
      [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
    done <"$dir/pids"
    rm -f "$dir/pids"
  fi
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
}

wait_registry() { # url [curl args]
  local url=$1; shift
  for _ in $(seq 1 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$@" "$url" || true)
    if [ "$code" = 200 ] || [ "$code" = 401 ]; then return 0; fi
    sleep 0.2
  done
  log "registry $url did not come up"; cat "$dir"/*.log >&2; return 1
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

  # arch marker layers.
  for arch in amd64 arm64; do mkdir -p "$src/arch-$arch"; echo "$arch" >"$src/arch-$arch/arch"; done

  local L=$layouts/images
  build_image "$L" busybox-1 amd64 gzip "$base" >/dev/null
  build_image "$L" busybox-multi amd64 gzip "$base" "$extra" "$wh" >/dev/null
  build_image "$L" busybox-zstd amd64 zstd "$base" "$extra" "$wh" >/dev/null
  build_image "$L" busybox-plain amd64 none "$base" "$extra" "$wh" >/dev/null
  build_image "$L" shared-1 amd64 gzip "$base" "$src/shared" >/dev/null
  build_image "$L" big-1 amd64 gzip "$base" "$src/big1" "$src/big2" "$src/big3" >/dev/null

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

up() {
  down
  rm -rf "$dir"; mkdir -p "$dir"
  local plain auth tls
  read -r plain auth tls < <(free_ports 3)

  # Private CA and a server certificate for 127.0.0.1 / localhost.
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=kiln test CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$dir/san.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 30 \
    -extfile "$dir/san.ext" -out "$dir/server.pem" 2>/dev/null

  htpasswd -Bbn kilnuser kilnpass >"$dir/htpasswd"

  start_registry plain "$plain" "" ""
  start_registry auth "$auth" "" "auth:
  htpasswd:
    realm: kiln-test
    path: $dir/htpasswd"
  start_registry tls "$tls" "  tls:
    certificate: $dir/server.pem
    key: $dir/server.key" ""
  wait_registry "http://127.0.0.1:$plain/v2/"
  wait_registry "http://127.0.0.1:$auth/v2/"
  wait_registry "https://127.0.0.1:$tls/v2/" --cacert "$dir/ca.pem"
  log "registries up: plain $plain, auth $auth, tls $tls"

  build_fixtures
  local R=127.0.0.1:$plain L=$dir/layouts/images
  push "$L:busybox-1" "$R/busybox:1"
  push "$L:busybox-multi" "$R/busybox:multi"
  push "$L:busybox-zstd" "$R/busybox:zstd"
  push_raw "$L" busybox-plain "$R" busybox:plain
  push "$L:busybox-1" "$R/busybox:docker" --format v2s2
  push "$L:shared-1" "$R/shared:1"
  push "$L:big-1" "$R/big:1"
  skopeo copy --quiet --all --dest-tls-verify=false "oci:$dir/layouts/multiarch:multiarch" "docker://$R/multiarch:1" >/dev/null
  push "$L:busybox-1" "127.0.0.1:$auth/busybox:1" --dest-creds kilnuser:kilnpass
  mkdir -p "$dir/certs.d"; cp "$dir/ca.pem" "$dir/certs.d/ca.crt"
  skopeo copy --quiet --dest-cert-dir "$dir/certs.d" "oci:$L:busybox-1" "docker://127.0.0.1:$tls/busybox:1" >/dev/null
  log "fixtures pushed"

  cat >"$dir/env" <<ENV
export KILN_TEST_ENV_DIR=$dir
export KILN_TEST_REGISTRY=127.0.0.1:$plain
export KILN_TEST_AUTH_REGISTRY=127.0.0.1:$auth
export KILN_TEST_AUTH_USER=kilnuser
export KILN_TEST_AUTH_PASSWORD=kilnpass
export KILN_TEST_TLS_REGISTRY=127.0.0.1:$tls
export KILN_TEST_CA=$dir/ca.pem
export KILN_TEST_FIXTURES=$dir/layouts
ENV
}

case $cmd in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down DIR" >&2; exit 2 ;;
esac
