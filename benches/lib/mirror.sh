#!/usr/bin/env bash
# The loopback package mirror of benches/build.sh's realapp and pip cases: Debian .debs and Python
# wheels, served on 127.0.0.1 while the timed builds run, so those builds install real packages and
# still reach nothing past loopback.
#
# Sourced by build.sh (after benches/lib/common.sh), or run as `benches/lib/mirror.sh [DIR]` to only
# prepare it. Functions:
#   prepare_mirror NAME   fills MIRROR_DIR once and reuses it on later runs. Its stamp file records what
#                         it holds (the base image's manifest digest, the package and wheel lists); a
#                         change in any refills it.
#   start_mirror WORKDIR NAME, stop_mirror: `python3 -m http.server` serving MIRROR_DIR on a free
#                         loopback port (its request log: WORKDIR/logs/mirror.log); sets MIRROR_URL
#                         (http://127.0.0.1:PORT) and MIRROR_PID.
#
# Filling it is the one step that talks past loopback: it fetches from the machine's configured
# package sources (apt's sources, pip's index), as installing packages in setup does. Nothing timed
# does. What it holds:
#   DIR/debs    the .deb files of gcc, libc6-dev, python3 and python3-pip with every dependency the base
#               image (FORGE_TEST_DEBIAN, a debootstrap minbase bookworm) lacks: `apt-get
#               --download-only --no-install-recommends` on the host (Debian bookworm, as the image)
#               against the image's own dpkg status file, private lists and cache, then a flat
#               repository (Packages, Packages.gz, an unsigned Release) for
#               `deb [trusted=yes] http://127.0.0.1:PORT/debs ./`.
#   DIR/wheels  binary wheels for bookworm's python3 (CPython 3.11, manylinux x86_64): django,
#               sqlalchemy, numpy, requests and their dependencies, pinned (MIRROR_WHEELS), for
#               `pip install --no-index --find-links http://127.0.0.1:PORT/wheels/`.
# About 90 MiB. Settings: FORGE_BENCH_MIRROR (the dir, default /var/cache/forge-bench/mirror),
# FORGE_TEST_DEBIAN (the base image, in a loopback registry). Needs apt-get, dpkg-scanpackages
# (dpkg-dev), curl, python3 and a pip (python3's, else Debian's /usr/bin/python3 -m pip).

MIRROR_DIR=${FORGE_BENCH_MIRROR:-/var/cache/forge-bench/mirror}
MIRROR_BASE=${FORGE_TEST_DEBIAN:-127.0.0.1:5000/forge-test/debian:bookworm}
MIRROR_DEBS=(gcc libc6-dev python3 python3-pip)
MIRROR_WHEELS=(django==5.2.19 asgiref==3.13.0 sqlparse==0.6.1
  sqlalchemy==2.0.58 greenlet==3.5.6 typing_extensions==4.16.0
  numpy==2.2.6
  requests==2.34.2 urllib3==2.8.0 idna==3.20 charset_normalizer==3.5.3 certifi==2026.10.19.post1)
MIRROR_URL=""
MIRROR_PID=""

# mirror_base REF [STATUS_OUT]: prints the digest of REF's manifest (in a plain-http loopback
# registry); with STATUS_OUT, also writes the image's var/lib/dpkg/status there (from the topmost
# layer holding it; gzip or uncompressed layers).
mirror_base() {
  python3 - "$@" <<'PY'
import hashlib, io, json, sys, tarfile, urllib.request
ref = sys.argv[1]
host, _, rest = ref.partition("/")
repo, _, tag = rest.rpartition(":")
if "/" in tag or not repo:
    repo, tag = rest, "latest"
accept = ", ".join(["application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json",
                    "application/vnd.docker.distribution.manifest.v2+json"])
def get(path, accept=None):
    req = urllib.request.Request(f"http://{host}/v2/{repo}/{path}", headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()
raw = get(f"manifests/{tag}", accept)
print("sha256:" + hashlib.sha256(raw).hexdigest())
if len(sys.argv) < 3:
    sys.exit(0)
manifest = json.loads(raw)
if "manifests" in manifest:
    pick = [m for m in manifest["manifests"]
            if m.get("platform", {}).get("os") == "linux" and m.get("platform", {}).get("architecture") == "amd64"]
    manifest = json.loads(get(f"manifests/{pick[0]['digest']}", accept))
for layer in reversed(manifest["layers"]):
    with tarfile.open(fileobj=io.BytesIO(get(f"blobs/{layer['digest']}")), mode="r:*") as tar:
        for member in tar:
            if member.name.lstrip("./") == "var/lib/dpkg/status" and member.isfile():
                with open(sys.argv[2], "wb") as out:
                    out.write(tar.extractfile(member).read())
                sys.exit(0)
sys.exit(f"no var/lib/dpkg/status in {ref}")
PY
}

# The pip that downloads the wheels: python3's, else Debian's.
mirror_pip() {
  if python3 -m pip --version >/dev/null 2>&1; then
    python3 -m pip "$@"
  else
    /usr/bin/python3 -m pip "$@"
  fi
}

prepare_mirror() {
  local name=$1 dir=$MIRROR_DIR digest want tmp codename start=$SECONDS
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [ "$codename" = bookworm ] \
    || { echo "$name: the mirror's .debs come from the host's apt sources, so the host must be Debian bookworm (as $MIRROR_BASE), not ${codename:-?}" >&2; return 1; }
  digest=$(mirror_base "$MIRROR_BASE") || { echo "$name: cannot read $MIRROR_BASE from its registry" >&2; return 1; }
  want=$(printf 'base %s@%s\ndebs %s\nwheels %s\n' "$MIRROR_BASE" "$digest" "${MIRROR_DEBS[*]}" "${MIRROR_WHEELS[*]}")
  if [ -f "$dir/stamp" ] && [ "$(cat "$dir/stamp")" = "$want" ]; then
    echo "mirror:  $dir reused ($(du -sh "$dir" | cut -f1))"
    return 0
  fi
  echo "mirror:  filling $dir from the machine's package sources (once; later runs reuse it)"
  tmp=$dir/.prepare
  rm -rf "$dir/debs" "$dir/wheels" "$dir/stamp" "$tmp"
  mkdir -p "$tmp/lists/partial" "$tmp/cache" "$dir/debs/partial" "$dir/wheels"
  mirror_base "$MIRROR_BASE" "$tmp/status" >/dev/null || { echo "$name: no dpkg status from $MIRROR_BASE" >&2; return 1; }
  # The host's apt sources and configuration, but the image's installed packages, and lists, cache
  # and archives of our own (the host's are left alone; no lock of the host's dpkg is taken).
  local apt=(apt-get -q -o "Dir::State=$tmp" -o "Dir::State::status=$tmp/status" -o "Dir::Cache=$tmp/cache"
    -o "Dir::Cache::archives=$dir/debs" -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
  if ! { "${apt[@]}" update && "${apt[@]}" --download-only -y --no-install-recommends install "${MIRROR_DEBS[@]}"; } >"$tmp/apt.log" 2>&1; then
    echo "$name: apt-get could not download the mirror's .debs:" >&2
    tail -n 20 "$tmp/apt.log" >&2
    return 1
  fi
  rm -rf "$dir/debs/partial" "$dir/debs/lock"
  (
    cd "$dir/debs" || exit 1
    dpkg-scanpackages . /dev/null >Packages 2>"$tmp/scan.log" || { cat "$tmp/scan.log" >&2; exit 1; }
    gzip -9nk Packages
    printf 'Origin: forge-bench\nLabel: forge-bench loopback mirror\nDate: %s\nSHA256:\n' \
      "$(LC_ALL=C date -u '+%a, %d %b %Y %H:%M:%S UTC')" >Release
    for f in Packages Packages.gz; do
      printf ' %s %s %s\n' "$(sha256sum "$f" | cut -d' ' -f1)" "$(stat -c %s "$f")" "$f" >>Release
    done
  ) || return 1
  # pip's own configuration may add find-links (this host's: /opt/wheels); only the index is wanted.
  if ! PIP_FIND_LINKS="" mirror_pip download -q --disable-pip-version-check --no-cache-dir \
    --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$dir/wheels" "${MIRROR_WHEELS[@]}" >"$tmp/pip.log" 2>&1; then
    echo "$name: pip could not download the mirror's wheels:" >&2
    tail -n 20 "$tmp/pip.log" >&2
    return 1
  fi
  rm -rf "$tmp"
  printf '%s\n' "$want" >"$dir/stamp"
  echo "mirror:  $(find "$dir/debs" -name '*.deb' | wc -l) .debs, $(find "$dir/wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$dir" | cut -f1), filled in $((SECONDS - start)) s"
}

start_mirror() {
  local work=$1 name=$2 port
  mkdir -p "$work/logs"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  MIRROR_URL=http://127.0.0.1:$port
  python3 -m http.server --bind 127.0.0.1 --directory "$MIRROR_DIR" "$port" >"$work/logs/mirror.log" 2>&1 &
  MIRROR_PID=$!
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null --max-time 2 "$MIRROR_URL/debs/Release" 2>/dev/null && return 0
    kill -0 "$MIRROR_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "$name: the package mirror did not answer on $MIRROR_URL:" >&2
  tail -n 20 "$work/logs/mirror.log" >&2
  return 1
}

stop_mirror() { stop_background MIRROR_PID; }

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  umask 022
  [ $# = 0 ] || MIRROR_DIR=$1
  prepare_mirror mirror.sh
fi
