#!/usr/bin/env bash
# Builds Redis 8 from Debian's source package (suite `experimental`; Debian 12 ships 7.0) and
# prints the path of the built `redis-server` on stdout. The build is cached: a second run with
# the binary in place prints its path at once.
#
#   scripts/build-redis8.sh            # build (about 2 minutes on 2 cores) or reuse
#   RIVULET_REDIS_SERVER=$(scripts/build-redis8.sh) cargo test ...
#
# The package mirror is the one this machine's apt sources name for Debian (no host is hard-coded);
# REDIS8_MIRROR overrides it, REDIS8_SUITE the suite (default experimental), REDIS8_DIR the cache
# directory (default target/redis8). Needs curl, xz, make, a C compiler and libssl-dev (for TLS).
# Every download is checked against the SHA-256 the suite's signed index lists.
set -euo pipefail
cd "$(dirname "$0")/.."

suite="${REDIS8_SUITE:-experimental}"
cache="${REDIS8_DIR:-$PWD/target/redis8}"
log() { echo "build-redis8: $*" >&2; }
die() { log "$*"; exit 1; }

mirror="${REDIS8_MIRROR:-}"
if [ -z "$mirror" ]; then
  # deb822 sources (URIs: ...) first, then one-line sources (deb URL suite ...); the first URL
  # whose path ends in /debian (not debian-security) is the Debian mirror.
  mirror=$(
    { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | sed 's/^URIs:[[:space:]]*//' | tr ' ' '\n'
      grep -hsE '^deb(-src)?[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        | sed -E 's/^deb(-src)?[[:space:]]+(\[[^]]*\][[:space:]]+)?//' | awk '{print $1}'
    } | grep -E '/debian/?$' | head -n1
  ) || true
  [ -n "$mirror" ] || die "no Debian mirror in /etc/apt/sources*; set REDIS8_MIRROR=http://.../debian"
fi
mirror="${mirror%/}"

mkdir -p "$cache"
index="$cache/Sources-$suite"
if [ ! -s "$index" ] || [ -n "$(find "$index" -mmin +1440 2>/dev/null)" ]; then
  log "reading $mirror/dists/$suite/main/source/Sources.xz"
  curl -fsS --retry 3 "$mirror/dists/$suite/main/source/Sources.xz" | xz -dc >"$index.tmp" \
    || die "could not fetch the $suite source index from $mirror"
  mv "$index.tmp" "$index"
fi

# The `redis` paragraph: its version, directory and the orig tarball's SHA-256.
read -r version dir orig sha < <(awk '
  /^Package: /      { pkg = $2 }
  /^$/              { if (pkg == "redis" && v != "" && o != "") { print v, d, o, s; exit } pkg = ""; v = ""; o = "" }
  pkg == "redis" && /^Version: /   { v = $2 }
  pkg == "redis" && /^Directory: / { d = $2 }
  pkg == "redis" && /^Checksums-Sha256:/ { insha = 1; next }
  pkg == "redis" && insha && /^ / { if ($3 ~ /\.orig\.tar\./) { s = $1; o = $3 } next }
  { insha = 0 }
' "$index") || die "no redis source package in $suite"
upstream="${version#*:}"; upstream="${upstream%-*}"
case "$upstream" in 8.*) ;; *) die "$suite has redis $upstream, not 8.x" ;; esac

out="$cache/redis-$upstream"
if [ -x "$out/src/redis-server" ]; then
  echo "$out/src/redis-server"
  exit 0
fi

tarball="$cache/$orig"
if [ ! -s "$tarball" ]; then
  log "downloading $dir/$orig"
  curl -fsS --retry 3 -o "$tarball.tmp" "$mirror/$dir/$orig" || die "could not download $orig"
  mv "$tarball.tmp" "$tarball"
fi
echo "$sha  $tarball" | sha256sum -c --quiet - || { rm -f "$tarball"; die "$orig: SHA-256 mismatch"; }

rm -rf "$out.build"
mkdir -p "$out.build"
tar -xf "$tarball" -C "$out.build" --strip-components=1
log "building redis $upstream (make -j$(nproc) BUILD_TLS=yes)"
# The modules (RedisJSON, search, ...) need Rust and network access; the server alone is what
# Rivulet's tests and benchmarks use.
GIT_DIR=/dev/null make -C "$out.build" -j"$(nproc)" BUILD_TLS=yes USE_SYSTEMD=no >"$cache/build-$upstream.log" 2>&1 \
  || { tail -n 40 "$cache/build-$upstream.log" >&2; die "make failed (log: $cache/build-$upstream.log)"; }
rm -rf "$out"
mv "$out.build" "$out"
"$out/src/redis-server" --version >&2
echo "$out/src/redis-server"
