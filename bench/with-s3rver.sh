#!/usr/bin/env bash
# with-s3rver.sh - runs a command with s3rver (the S3 emulator pinned in
# tests/package.json; `make test-deps` installs it) on a free loopback port,
# bucket s4kv-bench created, AWS_ENDPOINT_URL_S3 and credentials exported;
# stops it afterwards and exits with the command's status. For example:
#
#   bench/with-s3rver.sh make bench \
#       BENCH_ARGS='--only remoteget,curlget,upload,download --s3-url s3://s4kv-bench/run/'
#
# See tools/s3rver.sh (more buckets: --bucket NAME before the command).
exec "$(dirname "${BASH_SOURCE[0]}")/../tools/s3rver.sh" --bucket s4kv-bench "$@"
