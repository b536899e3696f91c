#!/usr/bin/env bash
# demo.sh - the `make demo` driver: runs s4kv-demo (Debian's package index
# into s4kv, read back byte for byte, delete, compact, verify; uploaded to S3,
# read remote-only by a fresh process, uploaded again after the compaction,
# downloaded into a fresh directory and verified), then shows the s4kv command
# line on the database it left, locally and in S3. Any failing step fails the
# demo.
#
# S3: with AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID or
# AWS_PROFILE set, the demo runs against that S3 (credentials, region and
# endpoint as the AWS CLI reads them); otherwise it starts s3rver, the
# emulator pinned in tests/package.json (`make test-deps`), on a free
# loopback port with a temporary directory (tools/s3rver.sh) and stops it at
# the end. The database goes to $S4KV_DEMO_S3, default
# s3://s4kv-demo/debian-<UTC timestamp>/ (the bucket must exist on a real
# endpoint; the demo leaves its objects there).
#
# S4KV_DEMO_INPUT=FILE uses FILE instead of `apt-cache dumpavail` (a quick
# run on a slice of it, e.g. under the sanitizers). S4KV_DEMO_WRAP="CMD ARGS"
# runs the demo program and every s4kv command under CMD (`make valgrind`:
# valgrind's memcheck).
#
# usage: S4KV_BIN=path/to/s4kv tools/demo.sh BUILDDIR
set -Eeuo pipefail
# Name the failing command once (not again from inside a $(...) subshell).
on_err() { local rc=$?; [ "$BASH_SUBSHELL" -ne 0 ] || echo "demo.sh: FAILED (exit $rc) at line $1: $2" >&2; }
trap 'on_err "$LINENO" "$BASH_COMMAND"' ERR

if [ $# -ne 1 ]; then
    echo "usage: S4KV_BIN=path/to/s4kv $0 BUILDDIR" >&2
    exit 2
fi
builddir=$1
demo_bin=$builddir/s4kv-demo
s4kv=${S4KV_BIN:-$builddir/s4kv}
for b in "$demo_bin" "$s4kv"; do
    [ -x "$b" ] || { echo "demo.sh: $b is missing; run make first" >&2; exit 1; }
done

read -r -a wrap <<<"${S4KV_DEMO_WRAP:-}"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tools/s3rver.sh
. "$here/s3rver.sh"

# work/db: the database; work/download: where it is downloaded to;
# work/empty: the working directory of the CLI on S3 (no local database).
work=$(mktemp -d "${TMPDIR:-/tmp}/s4kv-demo.XXXXXX")
dir=$work/db
mkdir "$work/empty"
cleanup() { rm -rf -- "$work"; s3rver_stop; }
trap cleanup EXIT

url=${S4KV_DEMO_S3:-s3://s4kv-demo/debian-$(date -u +%Y%m%dT%H%M%SZ)-$$/}
if [ -n "${AWS_ENDPOINT_URL_S3:-}${AWS_ENDPOINT_URL:-}${AWS_ACCESS_KEY_ID:-}${AWS_PROFILE:-}" ]; then
    echo "S3: the configured endpoint (${AWS_ENDPOINT_URL_S3:-${AWS_ENDPOINT_URL:-AWS}}), $url"
else
    bucket=${url#s3://}
    bucket=${bucket%%/*}
    t0=$(date +%s%N)
    s3rver_start "$bucket"
    printf 'S3: no endpoint configured; s3rver (tests/node_modules) on %s, bucket %s, started in %d ms\n' \
        "$AWS_ENDPOINT_URL_S3" "$bucket" $((($(date +%s%N) - t0) / 1000000))
fi

step() { printf '\n== %s\n' "$*"; }
# Echoes a command line, so the output reads as a session.
show() { printf '$ s4kv -d %s %s\n' "$dir" "$*"; }
cli() { show "$@"; "${wrap[@]}" "$s4kv" -d "$dir" "$@"; }

step "s4kv-demo: load, read back, upload, remote reads, delete, compact, upload, download, verify"
input_args=()
[ -z "${S4KV_DEMO_INPUT:-}" ] || input_args=(--input "$S4KV_DEMO_INPUT")
"${wrap[@]}" "$demo_bin" --dir "$dir" --keep --s3 "$url" --download-dir "$work/download" "${input_args[@]}"

step "the same database through the s4kv command line"
cli stats
cli verify

# The demo deletes every 10th key in sorted order, so pick a package that
# survived: bash if it did, else the first key listed. Outputs are captured
# whole before trimming, so `head` can never cut a writer off (SIGPIPE would
# fail the pipeline under pipefail).
keys=$("${wrap[@]}" "$s4kv" -d "$dir" keys)
pkg=bash
grep -qx bash <<<"$keys" || pkg=$(head -n 1 <<<"$keys")
[ -n "$pkg" ] || { echo "demo.sh: the database lists no keys" >&2; exit 1; }

show get "$pkg" "| head -n 5"
value=$("${wrap[@]}" "$s4kv" -d "$dir" get "$pkg")
head -n 5 <<<"$value"

show keys --prefix libc6 "| head"
listing=$("${wrap[@]}" "$s4kv" -d "$dir" keys --prefix libc6)
head -n 10 <<<"$listing"
printf '(%d keys start with libc6)\n' "$(grep -c . <<<"$listing")"

step "the database in S3 through the s4kv command line, from an empty directory"
# No -d and no S4KV_DIR in an empty working directory: ./s4kv-data does not
# exist, so everything comes from S3 (manifest, checkpoint, one ranged GET).
s3cli() { printf '$ s4kv --s3 %s %s\n' "$url" "$*"; (cd "$work/empty" && unset S4KV_DIR S4KV_S3 && "${wrap[@]}" "$s4kv" --s3 "$url" "$@"); }
s3cli stats
printf '$ s4kv --s3 %s get %s | head -n 5\n' "$url" "$pkg"
value_s3=$(cd "$work/empty" && unset S4KV_DIR S4KV_S3 && "${wrap[@]}" "$s4kv" --s3 "$url" get "$pkg")
head -n 5 <<<"$value_s3"
[ "$value_s3" = "$value" ] || { echo "demo.sh: get $pkg from S3 differs from the local value" >&2; exit 1; }
echo "(byte for byte the value the local get printed)"

step "demo passed; removing $work"
