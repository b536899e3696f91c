#!/usr/bin/env bash
# s3rver.sh - s3rver, the S3 emulator pinned in tests/package.json (installed
# into tests/node_modules by `make test-deps`), on a free loopback port with a
# temporary directory, the way the tests start it (tests/s3util.c).
#
# Two uses:
#   tools/s3rver.sh [--bucket NAME]... [--] CMD [ARG...]
#       starts s3rver with the buckets created, runs CMD with the environment
#       below, stops s3rver and exits with CMD's status.
#   . tools/s3rver.sh; s3rver_start [BUCKET...]; ...; s3rver_stop
#       the same from another script (demo.sh); s3rver_start sets
#       S3RVER_PID, S3RVER_PORT and S3RVER_DIR. Call s3rver_stop from the
#       caller's EXIT trap.
#
# Environment given to what runs against it: AWS_ENDPOINT_URL_S3 =
# http://127.0.0.1:PORT, AWS_ACCESS_KEY_ID = AWS_SECRET_ACCESS_KEY = S3RVER,
# AWS_REGION = us-east-1 (s3rver accepts any signature); AWS_SESSION_TOKEN
# and AWS_PROFILE are unset so nothing of the caller's AWS set-up leaks in.
# Node 20 needs NODE_OPTIONS=--openssl-legacy-provider (s3rver encrypts
# ListObjectsV2 continuation tokens with DES). S4KV_TESTS_DIR names the
# directory holding node_modules (default: tests/ next to this script).

s3rver_start() {
    local here tests script node log port= i
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    tests=${S4KV_TESTS_DIR:-$here/../tests}
    script=$tests/node_modules/s3rver/bin/s3rver.js
    node=$(command -v node) || { echo "s3rver.sh: node is not on PATH (run: make test-deps)" >&2; return 1; }
    [ -r "$script" ] || { echo "s3rver.sh: $script missing (run: make test-deps)" >&2; return 1; }
    S3RVER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/s4kv-s3rver.XXXXXX") || return 1
    log=$S3RVER_DIR.log
    # Created here, not by the background job's redirection: that runs in the
    # child, which may not have opened it yet when the loop below first reads.
    : >"$log" || return 1
    local args=(--address 127.0.0.1 --port 0 --directory "$S3RVER_DIR")
    for b in "$@"; do args+=(--configure-bucket "$b"); done
    NODE_OPTIONS=--openssl-legacy-provider "$node" "$script" "${args[@]}" --silent \
        </dev/null >"$log" 2>&1 &
    S3RVER_PID=$!
    # s3rver prints "S3rver listening on 127.0.0.1:PORT" (also with --silent).
    for ((i = 0; i < 400; i++)); do
        if ! kill -0 "$S3RVER_PID" 2>/dev/null; then
            echo "s3rver.sh: s3rver exited during start-up; its log:" >&2
            tail -n 20 "$log" >&2
            S3RVER_PID=
            return 1
        fi
        port=$(sed -n 's/.*S3rver listening on [0-9.]*:\([0-9][0-9]*\).*/\1/p' "$log" 2>/dev/null | head -n 1) || port=
        [ -n "$port" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        port=
        sleep 0.05
    done
    if [ -z "$port" ]; then
        echo "s3rver.sh: s3rver did not answer within 20 s; its log:" >&2
        tail -n 20 "$log" >&2
        return 1
    fi
    S3RVER_PORT=$port
    export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$port
    export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1
    unset AWS_SESSION_TOKEN AWS_PROFILE
}

# Stops the s3rver of s3rver_start (SIGTERM, SIGKILL after 5 s) and removes
# its directory and log. Safe to call twice or after a failed start.
s3rver_stop() {
    local i
    if [ -n "${S3RVER_PID:-}" ]; then
        kill -TERM "$S3RVER_PID" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$S3RVER_PID" 2>/dev/null || break
            sleep 0.05
        done
        kill -KILL "$S3RVER_PID" 2>/dev/null || true
        wait "$S3RVER_PID" 2>/dev/null || true
        S3RVER_PID=
    fi
    if [ -n "${S3RVER_DIR:-}" ]; then
        rm -rf -- "$S3RVER_DIR" "$S3RVER_DIR.log"
        S3RVER_DIR=
    fi
    return 0
}

# Run as a command: start, run CMD, stop.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -uo pipefail
    buckets=()
    while [ $# -gt 0 ]; do
        case $1 in
        --bucket) [ $# -ge 2 ] || { echo "s3rver.sh: --bucket needs a name" >&2; exit 2; }
                  buckets+=("$2"); shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) break ;;
        esac
    done
    if [ $# -eq 0 ]; then
        echo "usage: $0 [--bucket NAME]... [--] CMD [ARG...]" >&2
        exit 2
    fi
    trap s3rver_stop EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    s3rver_start "${buckets[@]}" || exit 1
    echo "s3rver.sh: s3rver on $AWS_ENDPOINT_URL_S3 (buckets: ${buckets[*]:-none})" >&2
    "$@"
    exit $?
fi
