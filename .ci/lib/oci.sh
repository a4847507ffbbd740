# OCI image layouts built by hand (tar, gzip/zstd, sha256sum, jq), so every
# byte of a fixture is under our control, and a push that skopeo cannot do.
# Sourced by .ci/testenv.sh and bench/*.sh. Uses $dir as scratch space.

# add_blob LAYOUT FILE -> prints "sha256:<hex> <size>"
add_blob() {
  local layout=$1 file=$2 hex size
  hex=$(sha256sum "$file" | cut -d' ' -f1)
  size=$(stat -c %s "$file")
  mkdir -p "$layout/blobs/sha256"
  cp "$file" "$layout/blobs/sha256/$hex"
  echo "sha256:$hex $size"
}

# layer_tar SRC_DIR OUT_TAR: a reproducible tar of SRC_DIR's content
layer_tar() {
  tar --sort=name --mtime=@1700000000 --numeric-owner --format=posix --xattrs --xattrs-include='*' \
      --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
      -C "$1" -cf "$2" .
}

# compress TAR KIND -> prints path of the blob file
compress() {
  case $2 in
    gzip) gzip -n -1 -c "$1" >"$1.gz"; echo "$1.gz" ;;
    zstd) zstd -q -3 -f -o "$1.zst" "$1"; echo "$1.zst" ;;
    none) echo "$1" ;;
  esac
}

media_of() {
  case $1 in
    gzip) echo application/vnd.oci.image.layer.v1.tar+gzip ;;
    zstd) echo application/vnd.oci.image.layer.v1.tar+zstd ;;
    none) echo application/vnd.oci.image.layer.v1.tar ;;
  esac
}

# build_image LAYOUT TAG ARCH KIND LAYER... -> writes manifest, adds it to
# LAYOUT/index.json under TAG, prints "sha256:<hex> <size>" of the manifest.
# A LAYER is a directory (tarred by layer_tar) or a ready tar file.
build_image() {
  local layout=$1 tag=$2 arch=$3 kind=$4; shift 4
  local work; work=$(mktemp -d "${dir:-/tmp}/work.XXXX")
  local layers_json="[]" diff_ids="[]" i=0
  for layer_dir in "$@"; do
    if [ -f "$layer_dir" ]; then cp "$layer_dir" "$work/layer$i.tar"; else layer_tar "$layer_dir" "$work/layer$i.tar"; fi
    local diff_id; diff_id="sha256:$(sha256sum "$work/layer$i.tar" | cut -d' ' -f1)"
    local blob; blob=$(compress "$work/layer$i.tar" "$kind")
    read -r digest size < <(add_blob "$layout" "$blob")
    layers_json=$(jq -c --arg d "$digest" --argjson s "$size" --arg m "$(media_of "$kind")" '. + [{mediaType:$m, digest:$d, size:$s}]' <<<"$layers_json")
    diff_ids=$(jq -c --arg d "$diff_id" '. + [$d]' <<<"$diff_ids")
    i=$((i + 1))
  done
  jq -n --arg arch "$arch" --argjson diff "$diff_ids" '{
      created: "2024-01-01T00:00:00Z", architecture: $arch, os: "linux",
      config: {Env: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], Cmd: ["/bin/sh"], WorkingDir: "/",
               Labels: {"org.kiln.test": "busybox"}, StopSignal: "SIGTERM"},
      rootfs: {type: "layers", diff_ids: $diff}}' >"$work/config.json"
  read -r cdigest csize < <(add_blob "$layout" "$work/config.json")
  jq -n --arg cd "$cdigest" --argjson cs "$csize" --argjson layers "$layers_json" '{
      schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs},
      layers: $layers}' >"$work/manifest.json"
  read -r mdigest msize < <(add_blob "$layout" "$work/manifest.json")
  add_to_index "$layout" "$tag" application/vnd.oci.image.manifest.v1+json "$mdigest" "$msize" "$arch"
  rm -rf "$work"
  echo "$mdigest $msize"
}

add_to_index() { # layout tag mediatype digest size arch
  local layout=$1
  [ -f "$layout/oci-layout" ] || echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  [ -f "$layout/index.json" ] || echo '{"schemaVersion":2,"manifests":[]}' >"$layout/index.json"
  jq --arg t "$2" --arg m "$3" --arg d "$4" --argjson s "$5" --arg a "$6" \
    '.manifests += [{mediaType:$m, digest:$d, size:$s, platform:{os:"linux", architecture:$a},
                     annotations:{"org.opencontainers.image.ref.name":$t}}]' \
    "$layout/index.json" >"$layout/index.json.new"
  mv "$layout/index.json.new" "$layout/index.json"
}

push() { # layout:tag docker-ref [extra skopeo args]
  local from=$1 to=$2; shift 2
  skopeo copy --quiet --dest-tls-verify=false "$@" "oci:$from" "docker://$to" >/dev/null
}

# push_raw LAYOUT TAG REGISTRY REPO:TAG — the distribution API by hand (curl),
# for what skopeo would rewrite (it compresses uncompressed layers).
push_raw() {
  local layout=$1 tag=$2 registry=$3 target=$4
  local repo=${target%%:*} ref=${target##*:}
  local manifest; manifest=$(jq -r --arg t "$tag" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$layout/index.json")
  local mfile=$layout/blobs/sha256/${manifest#sha256:}
  for digest in $(jq -r '.config.digest, .layers[].digest' "$mfile"); do
    local location
    location=$(curl -fsS -X POST -D - -o /dev/null "http://$registry/v2/$repo/blobs/uploads/" | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
    case $location in http*) ;; *) location="http://$registry$location" ;; esac
    local sep='?'; case $location in *\?*) sep='&' ;; esac
    curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$layout/blobs/sha256/${digest#sha256:}" \
      "$location${sep}digest=$digest" -o /dev/null
  done
  curl -fsS -X PUT -H "Content-Type: $(jq -r .mediaType "$mfile")" --data-binary "@$mfile" \
    "http://$registry/v2/$repo/manifests/$ref" -o /dev/null
}

