#!/usr/bin/env bash
# valgrind.sh - the `make valgrind` driver (issue 6: "valgrind memcheck of
# the CLI over the demo with zero errors and zero definitely-lost bytes").
#
# 1. tools/demo.sh with S4KV_DEMO_WRAP set, so the demo program and every
#    s4kv command it runs (local and against S3) run under memcheck, on the
#    first VALGRIND_INPUT_LINES lines of `apt-cache dumpavail` (memcheck runs
#    code about 30x slower than native).
# 2. Every local CLI command under memcheck on a database of its own: import
#    (tsv), put, get, delete, keys, scan, export (all three formats), stats,
#    verify, compact, rebuild-index.
#
# memcheck exits with 97 on any error and on any definitely lost byte; any
# such exit fails the run. usage: tools/valgrind.sh BUILDDIR
set -Eeuo pipefail
trap 'echo "valgrind.sh: FAILED (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
[ $# -eq 1 ] || { echo "usage: $0 BUILDDIR" >&2; exit 2; }
builddir=$(cd "$1" && pwd)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
lines=${VALGRIND_INPUT_LINES:-20000}
vg=(valgrind -q --error-exitcode=97 --leak-check=full --errors-for-leak-kinds=definite
    --show-leak-kinds=definite --track-fds=no)
work=$(mktemp -d "${TMPDIR:-/tmp}/s4kv-valgrind.XXXXXX")
trap 'rm -rf -- "$work"' EXIT

apt-cache dumpavail | head -n "$lines" >"$work/input" || true
[ -s "$work/input" ] || { echo "valgrind.sh: apt-cache dumpavail gave no input" >&2; exit 1; }

echo "== the demo under memcheck ($lines lines of the package index)"
S4KV_DEMO_INPUT=$work/input S4KV_DEMO_WRAP="${vg[*]}" S4KV_BIN=$builddir/s4kv \
    "$here/demo.sh" "$builddir"

echo
echo "== every local CLI command under memcheck"
s4kv() { "${vg[@]}" "$builddir/s4kv" -d "$work/db" "$@"; }
n=0
for i in $(seq 1 2000); do printf 'key-%05d\tvalue %d %s\n' "$i" "$i" "$(printf '%*s' $((i % 300)) '' | tr ' ' x)"; done >"$work/in.tsv"
s4kv import --format tsv --batch 100 <"$work/in.tsv"; n=$((n + 1))
s4kv put extra 'one more value'; n=$((n + 1))
[ "$(s4kv get extra)" = "one more value" ]; n=$((n + 1))
s4kv delete key-00001 key-00002; n=$((n + 1))
[ "$(s4kv keys | wc -l)" = 1999 ]; n=$((n + 1))
s4kv scan --prefix key-001 >/dev/null; n=$((n + 1))
s4kv scan --json --prefix key-002 >/dev/null; n=$((n + 1))
for f in tsv jsonl nul; do s4kv export --format "$f" >"$work/out.$f"; n=$((n + 1)); done
s4kv stats >/dev/null; n=$((n + 1))
s4kv stats --json >/dev/null; n=$((n + 1))
s4kv verify >/dev/null; n=$((n + 1))
s4kv compact >/dev/null; n=$((n + 1))
s4kv rebuild-index >/dev/null; n=$((n + 1))
s4kv verify >/dev/null; n=$((n + 1))
[ "$(s4kv get key-00300)" = "value 300 " ]; n=$((n + 1))
echo "$n CLI commands under memcheck: 0 errors, 0 bytes definitely lost"
echo "valgrind.sh: passed"
