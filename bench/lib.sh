# Shared benchmark helpers: a loopback registry, timing, medians, peak RSS,
# and writing a section of docs/benchmarks.md. Sourced by bench/*.sh.

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$repo_root/.ci/lib/oci.sh"

BENCH_DIR=${BENCH_DIR:-/var/tmp/kiln-bench}
KILN=${KILN:-$repo_root/target/release/kiln}
mkdir -p "$BENCH_DIR"
dir=$BENCH_DIR

bench_pids=()
bench_cleanup() {
  for pid in "${bench_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap bench_cleanup EXIT

need() { # command package
  command -v "$1" >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

# bench_setup: the tools every timing benchmark needs, and a release kiln.
bench_setup() {
  need bc bc
  need /usr/bin/time time
  ensure_kiln
}

ensure_kiln() {
  if [ ! -x "$KILN" ]; then
    (cd "$repo_root" && cargo build --release -p kiln-cli)
  fi
}

# serve_registry DIR -> a docker-registry with its storage and config in
# DIR; sets $served (127.0.0.1:PORT) and $served_pid
serve_registry() {
  local dir=$1 port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$dir/storage"
  cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YAML
  docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
  served_pid=$!
  bench_pids+=("$served_pid")
  served=127.0.0.1:$port
  for _ in $(seq 1 100); do
    curl -sf "http://$served/v2/" >/dev/null && return 0
    sleep 0.1
  done
  echo "registry in $dir did not start" >&2; cat "$dir/registry.log" >&2; return 1
}

# start_bench_registry -> sets REGISTRY=127.0.0.1:PORT (storage kept in $BENCH_DIR/registry)
start_bench_registry() {
  serve_registry "$BENCH_DIR/registry"
  REGISTRY=$served
}

# clean_slate PATH...: (untimed, before a timed run) removes what earlier
# runs left and syncs, so no run pays for deleting or writing back the
# output of the one before it.
clean_slate() {
  rm -rf "$@"
  sync
}

# seconds COMMAND... : wall time of one run, in seconds
seconds() {
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null 2>&1 || { echo "benchmark command failed: $*" >&2; return 1; }
  end=$(date +%s.%N)
  printf '%.3f\n' "$(echo "$end - $start" | bc -l)"
}

# durable_seconds COMMAND... : wall time of one run until its output is on
# disk (the command, then `sync`): kiln fsyncs what it commits, most peers
# leave their writes to the page cache, and this times both to the same point.
durable_seconds() {
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null 2>&1 || { echo "benchmark command failed: $*" >&2; return 1; }
  sync
  end=$(date +%s.%N)
  printf '%.3f\n' "$(echo "$end - $start" | bc -l)"
}

# millis RUNS COMMAND... : median wall time in milliseconds of RUNS runs,
# timed in-process (python) so shell overhead does not count
millis() {
  local runs=$1; shift
  python3 - "$runs" "$@" <<'PY'
import statistics, subprocess, sys, time
runs, command = int(sys.argv[1]), sys.argv[2:]
times = []
for _ in range(runs):
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    times.append((time.perf_counter() - start) * 1000)
print(f"{statistics.median(times):.1f}")
PY
}

median() { # numbers on stdin
  sort -g | awk '{a[NR]=$1} END {if (NR%2) m=a[(NR+1)/2]; else m=(a[NR/2]+a[NR/2+1])/2; printf "%.2f\n", m}'
}

# peak_rss_mb COMMAND... : peak resident set of one run, in MB
peak_rss_mb() {
  local file; file=$(mktemp)
  /usr/bin/time -f %M -o "$file" "$@" >/dev/null 2>&1 || { echo "benchmark command failed: $*" >&2; return 1; }
  echo "scale=1; $(cat "$file") / 1024" | bc -l
  rm -f "$file"
}

ratio() { echo "scale=2; $1 / $2" | bc -l | sed 's/^\./0./'; }

machine() { echo "$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r)"; }

# write_section HEADING FILE: replaces the section "## HEADING" in docs/benchmarks.md
write_section() {
  local heading=$1 body=$2 doc=$repo_root/docs/benchmarks.md
  mkdir -p "$repo_root/docs"
  [ -f "$doc" ] || printf '# Benchmarks\n\nEach section is written by the script it names, in one run, with the peers measured in the same run.\n' >"$doc"
  python3 - "$doc" "$heading" "$body" <<'PY'
import sys, re
path, heading, body_file = sys.argv[1], sys.argv[2], sys.argv[3]
doc = open(path).read()
body = open(body_file).read().rstrip() + "\n"
section = f"## {heading}\n\n{body}"
pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
doc = pattern.sub(lambda m: section + "\n", doc) if pattern.search(doc) else doc.rstrip() + "\n\n" + section
open(path, "w").write(doc)
PY
}

# bench_image: builds (once, cached in $BENCH_DIR) the benchmark image, an
# OCI layout of 8 gzip layers of ~60 MB; sets $layout and $compressed (bytes).
bench_image() {
  # The image: 8 layers, each adding 45 MB of random bytes and 20 MB of base64
  # text under its own directory (so the final tree holds all of it).
  layout=$BENCH_DIR/layout-v2
  if [ ! -f "$layout/index.json" ]; then
    echo "building the benchmark image (once)..." >&2
    rm -rf "$layout" "$BENCH_DIR/src"
    layers=()
    for n in 1 2 3 4 5 6 7 8; do
      d=$BENCH_DIR/src/layer$n; mkdir -p "$d/data/layer$n"
      head -c 47185920 /dev/urandom >"$d/data/layer$n/random.bin"
      head -c 15728640 /dev/urandom | base64 >"$d/data/layer$n/text.txt"
      layers+=("$d")
    done
    build_image "$layout" bench amd64 gzip "${layers[@]}" >/dev/null
    rm -rf "$BENCH_DIR/src"
  fi
  compressed=$(jq -r '.manifests[0].digest' "$layout/index.json" | sed 's/sha256://' | xargs -I{} jq '[.layers[].size] | add' "$layout/blobs/sha256/{}")
}

# files_image: builds (once, cached in $BENCH_DIR) the second image of the
# root filesystem benchmark, made of real files: 8 gzip layers copied from
# this machine's own /usr and /etc (shared libraries, programs, Python and
# Perl, headers, documentation, locales, ...), tens of thousands of files of
# every size, as a distribution's root filesystem has. Its size depends on
# what the machine has installed; sets $files_layout and $files_compressed.
files_image() {
  files_layout=$BENCH_DIR/layout-files-v1
  if [ ! -f "$files_layout/index.json" ]; then
    echo "building the files image (once)..." >&2
    local src=$BENCH_DIR/files-src n=0 path d group
    local -a layers=()
    rm -rf "$files_layout" "$src"
    for group in "usr/lib/x86_64-linux-gnu" "usr/bin usr/sbin" \
        "usr/lib/python3.11 usr/lib/python3 usr/share/perl usr/share/perl5" "usr/include" \
        "usr/share/doc usr/share/man" "usr/share/locale" \
        "usr/share/vim usr/lib/git-core usr/share/i18n usr/share/zoneinfo" "etc"; do
      n=$((n + 1)); d=$src/layer$n; mkdir -p "$d"
      for path in $group; do
        [ -e "/$path" ] || continue
        mkdir -p "$d/$(dirname "$path")"
        cp -a "/$path" "$d/$path"
      done
      layers+=("$d")
    done
    build_image "$files_layout" files amd64 gzip "${layers[@]}" >/dev/null
    rm -rf "$src"
  fi
  files_compressed=$(jq -r '.manifests[0].digest' "$files_layout/index.json" | sed 's/sha256://' | xargs -I{} jq '[.layers[].size] | add' "$files_layout/blobs/sha256/{}")
}

# push_bench_image: starts a loopback registry holding it; sets $REGISTRY and $ref.
push_bench_image() {
  start_bench_registry
  skopeo copy --quiet --dest-tls-verify=false "oci:$layout:bench" "docker://$REGISTRY/bench:1" >/dev/null
  ref=$REGISTRY/bench:1
}
