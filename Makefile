# s4kv build. `make` builds the library, the CLI and the demo; `make test`
# runs the Criterion suite; `make test SAN=1` runs it under ASan+UBSan;
# `make demo` runs the main job on Debian's package index; `make bench` runs
# the benchmark; `make install PREFIX=/usr/local` installs.
#
# Dependencies are Debian packages found through pkg-config; `make deps`
# installs the missing ones when run as root (demo and test depend on it).

PREFIX ?= /usr/local
ifeq ($(origin CC),default)
CC := gcc
endif
SAN ?= 0

PKGS_LIB := snappy libxxhash libcurl expat libcrypto libuv
PKGS_CLI := jansson
DEB_PKGS := pkg-config libsnappy-dev libxxhash-dev libjansson-dev libssl-dev libcriterion-dev \
	libcurl4-openssl-dev libexpat1-dev libuv1-dev libhttp-parser-dev

ifeq ($(SAN),1)
B := build-san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT := -O1
else
B := build
SANFLAGS :=
OPT := -O2
endif

PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS_LIB) $(PKGS_CLI) 2>/dev/null)
LIB_LIBS = $(shell pkg-config --libs $(PKGS_LIB) 2>/dev/null) -lhttp_parser -lpthread
CLI_LIBS = $(shell pkg-config --libs $(PKGS_CLI) 2>/dev/null)
TEST_LIBS = $(shell pkg-config --libs criterion 2>/dev/null)

CFLAGS_BASE := -std=c11 -D_GNU_SOURCE $(OPT) -g -Wall -Wextra -Wshadow -Wno-unused-parameter \
	-Wstrict-prototypes -fPIC -Ikv -Iindex -Isync -Itools -Itests $(SANFLAGS)
ALL_CFLAGS = $(CFLAGS_BASE) $(PKG_CFLAGS) $(CFLAGS)
ALL_LDFLAGS = $(SANFLAGS) $(LDFLAGS)

LIB_SRC := $(wildcard index/*.c) $(wildcard kv/*.c) $(wildcard sync/*.c)
CLI_SRC := $(filter-out tools/demo.c,$(wildcard tools/*.c))
TEST_SRC := $(wildcard tests/*.c)
BENCH_SRC := $(wildcard bench/*.c)

FAULTPROXY := $(if $(wildcard tests/tools/faultproxy.c),$(B)/faultproxy)
LIB_OBJ := $(LIB_SRC:%.c=$(B)/obj/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(B)/obj/%.o)
# tools/format.c (import/export codecs) is unit-tested directly
CLI_LIBOBJ := $(filter-out $(B)/obj/tools/s4kv.o,$(CLI_OBJ))
TEST_OBJ := $(TEST_SRC:%.c=$(B)/obj/%.o)
BENCH_OBJ := $(BENCH_SRC:%.c=$(B)/obj/%.o)

.PHONY: valgrind all deps test-deps test soak demo bench bench-deps bench-s3 bench-daemon install clean

all: $(B)/libs4kv.a $(B)/libs4kv.so $(B)/s4kv $(B)/s4kv-demo $(B)/s4kv.pc $(FAULTPROXY)

$(B)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(BENCH_OBJ:.o=.d) $(B)/obj/tools/demo.d \
	$(B)/obj/tests/tools/faultproxy.d

# The loopback fault-injection proxy the S3 tests put in front of s3rver.
$(B)/faultproxy: $(B)/obj/tests/tools/faultproxy.o
	$(CC) $(ALL_LDFLAGS) -o $@ $^

$(B)/libs4kv.a: $(LIB_OBJ)
	@mkdir -p $(B)
	rm -f $@
	ar rcs $@ $^

$(B)/libs4kv.so: $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,libs4kv.so.0 $(ALL_LDFLAGS) -o $@ $^ $(LIB_LIBS)

$(B)/s4kv: $(CLI_OBJ) $(B)/libs4kv.a
	$(CC) $(ALL_LDFLAGS) -o $@ $(CLI_OBJ) $(B)/libs4kv.a $(CLI_LIBS) $(LIB_LIBS)

$(B)/s4kv-demo: $(B)/obj/tools/demo.o $(B)/libs4kv.a
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIB_LIBS)

$(B)/s4kv-test: $(TEST_OBJ) $(CLI_LIBOBJ) $(B)/libs4kv.a
	$(CC) $(ALL_LDFLAGS) -o $@ $(TEST_OBJ) $(CLI_LIBOBJ) $(B)/libs4kv.a $(TEST_LIBS) $(CLI_LIBS) $(LIB_LIBS)

# The benchmark links the peers it compares s4kv with (Debian's -dev
# packages, installed by bench-deps only: the library and its tests never
# need them).
BENCH_LIBS := -lrocksdb -lleveldb -llmdb

$(B)/s4kv-bench: $(BENCH_OBJ) $(B)/libs4kv.a
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIB_LIBS) $(BENCH_LIBS) -lm

# pkg-config file for prefix $(1), written to $(2).
write_pc = printf 'prefix=%s\nlibdir=$${prefix}/lib\nincludedir=$${prefix}/include\n\nName: s4kv\nDescription: log-structured key-value store\nVersion: 0.1.0\nRequires.private: %s\nLibs: -L$${libdir} -ls4kv\nLibs.private: -lhttp_parser -lpthread\nCflags: -I$${includedir}\n' '$(1)' '$(PKGS_LIB)' > $(2)

$(B)/s4kv.pc: Makefile
	@mkdir -p $(B)
	$(call write_pc,$(PREFIX),$@)

# Installs the Debian packages the build and tests need, when any is missing.
deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else echo "missing Debian packages:$$missing (run 'sudo make deps')" >&2; exit 1; fi; \
	fi

# The S3 emulator and the AWS SDK for JavaScript, pinned in tests/package.json
# and its lock file. Node.js comes from the machine (or Debian's nodejs).
test-deps: deps
	@command -v node >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq nodejs npm; }
	@if [ -f tests/package-lock.json ] && { [ ! -f tests/node_modules/.package-lock.json ] || [ tests/package-lock.json -nt tests/node_modules/.package-lock.json ]; }; then \
		cd tests && npm ci --no-audit --no-fund --loglevel=error; fi

# The README's test command. S4KV_BIN lets the CLI tests run the binary.
test: test-deps
	$(MAKE) --no-print-directory all $(B)/s4kv-test SAN=$(SAN)
	S4KV_BIN=$(CURDIR)/$(B)/s4kv ASAN_OPTIONS=detect_leaks=1 \
		LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp $(B)/s4kv-test --jobs 2

# Long reliability runs (minutes): the SIGKILL loop against its oracle with
# 1,000 kills (make test runs 40), the kill loop with upload to S3 with 200
# (make test: 15), the fault-proxy sweep with 240 runs (make test: 24) and the
# power-loss sweep over a 300-batch workload (make test: 60), and SIGKILL of
# the sync daemon with 200 kills (make test: 10).
SOAK_KILLS ?= 1000
SOAK_UPLOAD_KILLS ?= 200
SOAK_SWEEP_RUNS ?= 240
SOAK_POWER_STEPS ?= 300
SOAK_DAEMON_KILLS ?= 200
soak: test-deps
	$(MAKE) --no-print-directory all $(B)/s4kv-test SAN=$(SAN)
	S4KV_BIN=$(CURDIR)/$(B)/s4kv S4KV_KILLS=$(SOAK_KILLS) S4KV_UPLOAD_KILLS=$(SOAK_UPLOAD_KILLS) \
		LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp $(B)/s4kv-test --verbose --filter 'soak/*'
	S4KV_BIN=$(CURDIR)/$(B)/s4kv S4KV_SWEEP_RUNS=$(SOAK_SWEEP_RUNS) \
		LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp $(B)/s4kv-test --verbose --filter 'faultsweep/*'
	S4KV_BIN=$(CURDIR)/$(B)/s4kv S4KV_POWER_STEPS=$(SOAK_POWER_STEPS) \
		LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp $(B)/s4kv-test --verbose --filter 'faults/power*'
	S4KV_BIN=$(CURDIR)/$(B)/s4kv S4KV_DAEMON_KILLS=$(SOAK_DAEMON_KILLS) \
		LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp $(B)/s4kv-test --verbose --filter 'daemon_kill/*'

demo: test-deps
	$(MAKE) --no-print-directory all SAN=$(SAN)
	S4KV_BIN=$(CURDIR)/$(B)/s4kv ./tools/demo.sh $(CURDIR)/$(B)

# valgrind memcheck of the demo (every process it starts) and of every local
# CLI command, on a slice of the demo's input (tools/valgrind.sh): any error or
# definitely lost byte fails it. VALGRIND_INPUT_LINES sets the slice.
valgrind: test-deps
	@command -v valgrind >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq valgrind; }
	$(MAKE) --no-print-directory all SAN=0
	VALGRIND_INPUT_LINES=$(VALGRIND_INPUT_LINES) ./tools/valgrind.sh $(CURDIR)/build

VALGRIND_INPUT_LINES ?= 20000

# The peers of the benchmark (RocksDB, LevelDB, LMDB) and gnuplot for its
# chart, when any is missing (as root; bench/README.md).
BENCH_DEB_PKGS := librocksdb-dev libleveldb-dev liblmdb-dev gnuplot-nox

bench-deps: deps
	@missing=""; for p in $(BENCH_DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else echo "missing Debian packages:$$missing (run 'sudo make bench-deps')" >&2; exit 1; fi; \
	fi

# s4kv next to RocksDB, LevelDB and LMDB: 3 interleaved runs at 1M keys
# (about 10 minutes on 2 cores); results in bench/results/latest.{md,json,png}.
# BENCH_ARGS=--scale adds the 10M-key run.
bench: bench-deps
	$(MAKE) --no-print-directory $(B)/s4kv-bench SAN=$(SAN)
	$(B)/s4kv-bench $(BENCH_ARGS)

# The S3 rows (remote get next to a raw curl ranged GET, upload, download)
# against an s3rver started for the run (bench/README.md).
bench-s3: test-deps bench-deps
	$(MAKE) --no-print-directory $(B)/s4kv-bench SAN=$(SAN)
	bench/with-s3rver.sh $(B)/s4kv-bench --only remoteget,curlget,upload,download,s4db \
		--s3-url s3://s4kv-bench/run/ --out bench/results/s3 $(BENCH_ARGS)

# The sync daemon over HTTP (wrk, installed when missing) and its S3 traffic
# against s3rver, about 3 minutes: bench/results/daemon.{md,json}.
bench-daemon: test-deps
	$(MAKE) --no-print-directory all SAN=$(SAN)
	bench/daemon.sh $(CURDIR)/$(B)/s4kv

install: all
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/bin
	install -m 0644 kv/s4kv.h $(DESTDIR)$(PREFIX)/include/
	install -m 0644 $(B)/libs4kv.a $(DESTDIR)$(PREFIX)/lib/
	install -m 0755 $(B)/libs4kv.so $(DESTDIR)$(PREFIX)/lib/libs4kv.so.0
	ln -sf libs4kv.so.0 $(DESTDIR)$(PREFIX)/lib/libs4kv.so
	$(call write_pc,$(PREFIX),$(DESTDIR)$(PREFIX)/lib/pkgconfig/s4kv.pc)
	install -m 0755 $(B)/s4kv $(DESTDIR)$(PREFIX)/bin/

clean:
	rm -rf build build-san

# ---- Fuzzing (libFuzzer; the targets are fuzz/fuzz_*.c). `make fuzz` builds every target
# in fuzz/ with clang -fsanitize=fuzzer,address,undefined against the library
# sources and runs each for FUZZ_RUNS executions (10 million, issue 6) or
# FUZZ_SECONDS, whichever comes first, on its seed corpus (fuzz/corpus/T,
# copied to build-fuzz/corpus/T so the seeds in git stay small); crashes
# land in build-fuzz/crashes/T/. FUZZ_TARGETS picks some; `make fuzz-deps`
# installs clang's fuzzer runtime (as root).
FUZZ_CC ?= clang
FUZZ_RUNS ?= 10000000
FUZZ_SECONDS ?= 3600
# Worker processes a target (libFuzzer -jobs/-workers on one shared corpus),
# each running FUZZ_RUNS / FUZZ_JOBS executions; the executions are summed
# (the target's log, build-fuzz/T.log, ends with each worker's fuzz-N.log).
FUZZ_JOBS ?= 1
FUZZ_B := build-fuzz
FUZZ_SAN := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS = -std=c11 -D_GNU_SOURCE -O1 -g -Ikv -Iindex -Isync -Itools $(FUZZ_SAN) $(PKG_CFLAGS)
FUZZ_ALL := $(patsubst fuzz/%.c,%,$(wildcard fuzz/fuzz_*.c))
FUZZ_TARGETS ?= $(FUZZ_ALL)
# Longest input, bytes. 64 KiB by default (HTTP heads, segments, manifests
# and checkpoints need room); the import readers are line readers, and 8 KiB
# holds dozens of records and lines past stdio's 4 KiB buffer, while 64 KiB
# inputs slowed them to under 3,000 executions a second.
FUZZ_MAX_LEN ?= 65536
FUZZ_MAX_LEN_fuzz_import ?= 8192
# S3 XML: 16 KiB holds an error document or a ListObjectsV2 page of about 60
# keys (every element kind the parsers know); 40 KiB pages ran at 2,000/s.
FUZZ_MAX_LEN_fuzz_s3xml ?= 16384
# HTTP: the target's server takes bodies up to 4 KiB, so 16 KiB reaches 413,
# chunked bodies past the limit and pipelines of several requests (431 needs
# an 80 KiB head, past any limit here); 64 KiB inputs ran at 2,000/s.
FUZZ_MAX_LEN_fuzz_http ?= 16384
fuzz_max_len = $(or $(FUZZ_MAX_LEN_$(1)),$(FUZZ_MAX_LEN))
rparen := )
# shell: sets ml to the max_len of target $$t
fuzz_ml_case = case $$t in $(foreach x,$(FUZZ_ALL),$(x)$(rparen) ml=$(call fuzz_max_len,$(x));;) *$(rparen) ml=$(FUZZ_MAX_LEN);; esac
FUZZ_LIBOBJ := $(patsubst %.c,$(FUZZ_B)/obj/%.o,$(LIB_SRC) tools/format.c)
# keep the objects: make would delete them as intermediates and rebuild all
# of them for the next target (and two `make fuzz` at once would race)
.SECONDARY: $(FUZZ_LIBOBJ) $(patsubst %,$(FUZZ_B)/obj/fuzz/%.o,$(FUZZ_ALL))

.PHONY: fuzz fuzz-build fuzz-deps

fuzz-deps:
	@if ! echo 'int LLVMFuzzerTestOneInput(const char *d, long n){return 0;}' | \
		$(FUZZ_CC) -x c -fsanitize=fuzzer - -o /dev/null 2>/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang libclang-rt-14-dev; \
		else echo "clang with -fsanitize=fuzzer missing (run 'sudo make fuzz-deps')" >&2; exit 1; fi; \
	fi

$(FUZZ_B)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -MMD -MP -c $< -o $@


-include $(FUZZ_LIBOBJ:.o=.d) $(FUZZ_ALL:%=$(FUZZ_B)/obj/fuzz/%.d)

$(FUZZ_B)/fuzz_%: $(FUZZ_B)/obj/fuzz/fuzz_%.o $(FUZZ_LIBOBJ)
	$(FUZZ_CC) -fsanitize=fuzzer,address,undefined -o $@ $^ $(LIB_LIBS) $(CLI_LIBS)

fuzz-build: fuzz-deps deps
	$(MAKE) --no-print-directory $(FUZZ_TARGETS:%=$(FUZZ_B)/%)

fuzz: fuzz-build
	@fail=0; for t in $(FUZZ_TARGETS); do \
		mkdir -p $(FUZZ_B)/corpus/$$t $(FUZZ_B)/crashes/$$t; \
		[ -d fuzz/corpus/$$t ] && cp -n fuzz/corpus/$$t/* $(FUZZ_B)/corpus/$$t/ 2>/dev/null; \
		$(fuzz_ml_case); \
		echo "== $$t ($(FUZZ_RUNS) runs in $(FUZZ_JOBS) worker(s), at most $(FUZZ_SECONDS) s, inputs up to $$ml bytes)"; \
		if [ $(FUZZ_JOBS) -gt 1 ]; then \
			rm -rf $(FUZZ_B)/jobs/$$t && mkdir -p $(FUZZ_B)/jobs/$$t && \
			(cd $(FUZZ_B)/jobs/$$t && $(CURDIR)/$(FUZZ_B)/$$t -jobs=$(FUZZ_JOBS) -workers=$(FUZZ_JOBS) \
				-runs=$$((($(FUZZ_RUNS) + $(FUZZ_JOBS) - 1) / $(FUZZ_JOBS))) \
				-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -max_len=$$ml \
				-artifact_prefix=$(CURDIR)/$(FUZZ_B)/crashes/$$t/ $(CURDIR)/$(FUZZ_B)/corpus/$$t) \
				> $(FUZZ_B)/$$t.log 2>&1; rc=$$?; \
		else \
			$(FUZZ_B)/$$t -runs=$(FUZZ_RUNS) -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -max_len=$$ml \
				-artifact_prefix=$(FUZZ_B)/crashes/$$t/ $(FUZZ_B)/corpus/$$t \
				> $(FUZZ_B)/$$t.log 2>&1; rc=$$?; \
		fi; \
		grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' $(FUZZ_B)/$$t.log | \
			sed "s/^/  /"; \
		awk -F: '/^stat::number_of_executed_units/ { s += $$NF } END { printf "  executions in all: %d\n", s }' \
			$(FUZZ_B)/$$t.log; \
		if [ $$rc != 0 ]; then fail=1; echo "  FAILED (exit $$rc): see $(FUZZ_B)/$$t.log"; \
			grep -E 'ERROR: |SUMMARY: |Test unit written' $(FUZZ_B)/$$t.log | sed "s/^/  /"; fi; \
	done; exit $$fail
