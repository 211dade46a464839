#!/usr/bin/env bash
# Find or fetch ONNX Runtime's C/C++ API headers for building libgraphprune_kernels.
#
# Prints the include directory (the one holding onnxruntime_c_api.h) on stdout; diagnostics go to
# stderr. Exit status: 0 found, 2 GRAPHPRUNE_ORT_INCLUDE set but unusable, 3 fetch failed.
#
# Order:
#   1. $GRAPHPRUNE_ORT_INCLUDE: headers the user already has (used as is; an error if unusable,
#      so a wrong setting never silently falls back to something else).
#   2. /usr/include/onnxruntime (the system's libonnxruntime-dev).
#   3. The cache, $GRAPHPRUNE_ORT_HEADERS_DIR (default ~/.cache/graphprune/ort-headers).
#   4. Fetch Debian trixie's libonnxruntime-dev (ORT_API_VERSION 21) with `apt-get download`
#      through a private apt configuration whose single source line is derived from this
#      machine's own Debian source entry (suite replaced by trixie, component main), then
#      `dpkg -x` it into the cache. Nothing is installed into the system; no host name is
#      written here: the mirror comes from /etc/apt/sources.list.d/debian.sources or
#      /etc/apt/sources.list at run time.
set -euo pipefail

log() { printf 'fetch_headers: %s\n' "$*" >&2; }

has_headers() { [ -f "$1/onnxruntime_c_api.h" ]; }

if [ -n "${GRAPHPRUNE_ORT_INCLUDE:-}" ]; then
    if has_headers "$GRAPHPRUNE_ORT_INCLUDE"; then
        printf '%s\n' "$GRAPHPRUNE_ORT_INCLUDE"
        exit 0
    fi
    log "GRAPHPRUNE_ORT_INCLUDE=$GRAPHPRUNE_ORT_INCLUDE has no onnxruntime_c_api.h"
    exit 2
fi

if has_headers /usr/include/onnxruntime; then
    printf '%s\n' /usr/include/onnxruntime
    exit 0
fi

cache="${GRAPHPRUNE_ORT_HEADERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/graphprune/ort-headers}"
inc="$cache/root/usr/include/onnxruntime"
if has_headers "$inc"; then
    printf '%s\n' "$inc"
    exit 0
fi

for tool in apt-get dpkg; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "no ONNX Runtime headers found and '$tool' is not available to fetch them;" \
            "set GRAPHPRUNE_ORT_INCLUDE to a directory holding onnxruntime_c_api.h"
        exit 3
    fi
done

# The mirror URI of this machine's main Debian entry (not the security archive).
mirror=""
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    # deb822 stanzas: take the URIs of the first stanza whose suites are not *-security.
    mirror=$(awk '
        BEGIN { RS=""; FS="\n" }
        {
            uris=""; suites=""
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^URIs:/)   { sub(/^URIs:[ \t]*/, "", $i); uris=$i }
                if ($i ~ /^Suites:/) { sub(/^Suites:[ \t]*/, "", $i); suites=$i }
            }
            if (uris != "" && suites !~ /-security/) { split(uris, u, /[ \t]+/); print u[1]; exit }
        }' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
    mirror=$(awk '$1 == "deb" {
            i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
            if ($(i+1) !~ /-security/) { print $i; exit } }' /etc/apt/sources.list)
fi
if [ -z "$mirror" ]; then
    log "no Debian source entry found in /etc/apt/sources.list.d/debian.sources or" \
        "/etc/apt/sources.list; set GRAPHPRUNE_ORT_INCLUDE to a directory holding onnxruntime_c_api.h"
    exit 3
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/graphprune-ort-headers.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/deb"

keyring=""
for k in /usr/share/keyrings/debian-archive-keyring.gpg /usr/share/keyrings/debian-archive-trixie-stable.gpg; do
    if [ -f "$k" ]; then keyring="$k"; break; fi
done
if [ -n "$keyring" ]; then
    echo "deb [signed-by=$keyring] $mirror trixie main" >"$work/sources.list"
else
    echo "deb $mirror trixie main" >"$work/sources.list"
fi

apt_opts=(
    -o "Dir::Etc::sourcelist=$work/sources.list"
    -o "Dir::Etc::sourceparts=/nonexistent"
    -o "Dir::State::Lists=$work/lists"
    -o "Dir::State::status=/dev/null"
    -o "Dir::Cache=$work/cache"
    -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=root"
)
# apt's sandbox user (_apt) may not be able to write into a private temp dir: download as the
# invoking user, which is fine for a read-only fetch into our own directory.

log "fetching libonnxruntime-dev (trixie) into $cache"
if ! apt-get "${apt_opts[@]}" -qq update >"$work/update.log" 2>&1; then
    log "apt-get update (private trixie list) failed:"; sed 's/^/  /' "$work/update.log" >&2
    exit 3
fi
if ! (cd "$work/deb" && apt-get "${apt_opts[@]}" -qq download libonnxruntime-dev) >"$work/download.log" 2>&1; then
    log "apt-get download libonnxruntime-dev failed:"; sed 's/^/  /' "$work/download.log" >&2
    exit 3
fi
deb=$(ls "$work"/deb/libonnxruntime-dev_*.deb 2>/dev/null | head -n 1)
if [ -z "$deb" ]; then
    log "apt-get download produced no libonnxruntime-dev .deb"
    exit 3
fi

staging="$cache.tmp.$$"
rm -rf "$staging"
mkdir -p "$staging/root"
dpkg -x "$deb" "$staging/root"
if ! has_headers "$staging/root/usr/include/onnxruntime"; then
    rm -rf "$staging"
    log "$(basename "$deb") has no usr/include/onnxruntime/onnxruntime_c_api.h"
    exit 3
fi
basename "$deb" >"$staging/SOURCE"
mkdir -p "$(dirname "$cache")"
rm -rf "$cache"
mv "$staging" "$cache"
printf '%s\n' "$inc"
