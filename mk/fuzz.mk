# libFuzzer targets for every decoder of peer data (docs/fuzzing.md)
#
#   make fuzz                   install clang if missing, build, run each
#                               target FUZZ_TIME seconds (default 60)
#   make fuzz FUZZ_TIME=600 FUZZ_TARGETS="ring lib_frames"
#   make fuzz-build             only build $(B)/fuzz/<target>
#   make fuzz-seeds             regenerate fuzz/corpus/ (fuzz/gen-seeds.c)
#   make fuzz-coverage          line coverage of the decoders by the seeds
#                               and what earlier runs found (llvm-cov)
#
# Not part of "make test".  New corpus entries go to $(B)/fuzz/corpus/,
# crashes to $(B)/fuzz/artifacts/; fuzz/corpus/ is only read.

FUZZ_CC      ?= clang
FUZZ_TIME    ?= 60
FUZZ_OPTS    ?=
FUZZ_B        = $(B)/fuzz
FUZZ_ALL      = $(patsubst fuzz/%.c,%,$(filter-out fuzz/gen-seeds.c, \
                  $(wildcard fuzz/*.c)))
FUZZ_TARGETS ?= $(FUZZ_ALL)

FUZZ_SAN      = -fsanitize=address,undefined -fno-sanitize-recover=undefined \
                -fno-omit-frame-pointer
FUZZ_CFLAGS   = -std=gnu11 -g -O1 $(WFLAGS) $(FUZZ_SAN) -D_GNU_SOURCE \
                -Iinclude -Isrc/lib -Isrc/module
FUZZ_LIBOBJS  = $(LIB_SRCS:src/lib/%.c=$(FUZZ_B)/obj/%.o)
FUZZ_HEADERS  = $(HEADERS) fuzz/fuzz.h src/module/ngx_http_shm_check.h

.PHONY: fuzz fuzz-deps fuzz-build fuzz-seeds fuzz-coverage

fuzz: fuzz-deps
	$(MAKE) fuzz-build
	@sh tools/fuzz.sh $(FUZZ_B) '$(FUZZ_TIME)' '$(FUZZ_OPTS)' $(FUZZ_TARGETS)

fuzz-deps:
	@sh tools/deps.sh fuzz

fuzz-build: $(FUZZ_ALL:%=$(FUZZ_B)/%)

.SECONDARY: $(FUZZ_LIBOBJS)

# the library, instrumented for coverage, linked statically into each
# target (so its internals, src/lib/ngxshm_internal.h, are reachable)
$(FUZZ_B)/obj/%.o: src/lib/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

$(FUZZ_B)/%: fuzz/%.c $(FUZZ_LIBOBJS) $(FUZZ_HEADERS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_LIBOBJS) \
	    $(LDLIBS)

$(FUZZ_B)/gen-seeds: fuzz/gen-seeds.c $(FUZZ_HEADERS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=gnu11 -g -O1 $(WFLAGS) -D_GNU_SOURCE -Iinclude \
	    -Isrc/lib -Isrc/module -o $@ $<

fuzz-seeds: fuzz-deps $(FUZZ_B)/gen-seeds
	$(FUZZ_B)/gen-seeds fuzz/corpus

# coverage: the same targets with source-based coverage, no sanitizers,
# replaying fuzz/corpus/<target> and $(FUZZ_B)/corpus/<target> once
FUZZ_COV      = -fprofile-instr-generate -fcoverage-mapping
FUZZ_COVOBJS  = $(LIB_SRCS:src/lib/%.c=$(FUZZ_B)/cov/obj/%.o)

.SECONDARY: $(FUZZ_COVOBJS)

$(FUZZ_B)/cov/obj/%.o: src/lib/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=gnu11 -g -O1 -D_GNU_SOURCE -Iinclude -Isrc/lib \
	    $(FUZZ_COV) -fsanitize=fuzzer-no-link -c -o $@ $<

$(FUZZ_B)/cov/%: fuzz/%.c $(FUZZ_COVOBJS) $(FUZZ_HEADERS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=gnu11 -g -O1 -D_GNU_SOURCE -Iinclude -Isrc/lib \
	    -Isrc/module $(FUZZ_COV) -fsanitize=fuzzer -o $@ $< \
	    $(FUZZ_COVOBJS) $(LDLIBS)

fuzz-coverage: fuzz-deps $(FUZZ_ALL:%=$(FUZZ_B)/cov/%)
	@for t in $(FUZZ_TARGETS); do \
	    mkdir -p $(FUZZ_B)/corpus/$$t; \
	    LLVM_PROFILE_FILE=$(FUZZ_B)/cov/$$t.profraw \
	        $(FUZZ_B)/cov/$$t -runs=0 -close_fd_mask=3 \
	        $(FUZZ_B)/corpus/$$t fuzz/corpus/$$t > /dev/null 2>&1; \
	    llvm-profdata merge -o $(FUZZ_B)/cov/$$t.profdata \
	        $(FUZZ_B)/cov/$$t.profraw || exit 1; \
	    echo "== $$t: functions reached (regions, lines, branches covered)"; \
	    llvm-cov report -show-functions $(FUZZ_B)/cov/$$t \
	        -instr-profile=$(FUZZ_B)/cov/$$t.profdata \
	        $(LIB_SRCS) include/ngxshm_ring.h \
	        src/module/ngx_http_shm_check.h \
	    | awk '$$4 ~ /%$$/ && $$4 != "0.00%" && $$1 != "TOTAL" \
	           { sub(/^[^:]*:/, "", $$1); \
	             printf "  %-32s %8s %8s %8s\n", $$1, $$4, $$7, $$10 }'; \
	done
