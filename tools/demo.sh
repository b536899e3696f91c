#!/usr/bin/env bash
# demo.sh - the `make demo` driver: runs s4kv-demo (Debian's package index
# into s4kv, read back byte for byte, delete, compact, verify), then shows the
# s4kv command line on the database it left. Any failing step fails the demo.
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

dir=$(mktemp -d "${TMPDIR:-/tmp}/s4kv-demo.XXXXXX")
trap 'rm -rf -- "$dir"' EXIT

step() { printf '\n== %s\n' "$*"; }
# Echoes a command line, so the output reads as a session.
show() { printf '$ s4kv -d %s %s\n' "$dir" "$*"; }
cli() { show "$@"; "$s4kv" -d "$dir" "$@"; }

step "s4kv-demo: load, read back, delete, compact, verify"
"$demo_bin" --dir "$dir" --keep

step "the same database through the s4kv command line"
cli stats
cli verify

# The demo deletes every 10th key in sorted order, so pick a package that
# survived: bash if it did, else the first key listed. Outputs are captured
# whole before trimming, so `head` can never cut a writer off (SIGPIPE would
# fail the pipeline under pipefail).
keys=$("$s4kv" -d "$dir" keys)
pkg=bash
grep -qx bash <<<"$keys" || pkg=$(head -n 1 <<<"$keys")
[ -n "$pkg" ] || { echo "demo.sh: the database lists no keys" >&2; exit 1; }

show get "$pkg" "| head -n 5"
value=$("$s4kv" -d "$dir" get "$pkg")
head -n 5 <<<"$value"

show keys --prefix libc6 "| head"
listing=$("$s4kv" -d "$dir" keys --prefix libc6)
head -n 10 <<<"$listing"
printf '(%d keys start with libc6)\n' "$(grep -c . <<<"$listing")"

step "demo passed; removing $dir"
