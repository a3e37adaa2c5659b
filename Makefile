# ngx_http_shm_module and libngxshm
#
#   make          build the module, the library and the examples in build/
#   make run      install what is missing, build, start nginx on
#                 127.0.0.1:8080 in front of the echo sidecar
#   make stop     stop what "make run" started
#   make test     install what is missing, build plain and with
#                 ASan+UBSan, run the unit and integration tests
#   make check-style

B       ?= build
SAN     ?=
CC      ?= cc

SANITIZE = -fsanitize=address,undefined -fno-omit-frame-pointer \
           -fno-sanitize-recover=undefined
SANFLAGS = $(if $(SAN),$(SANITIZE))

CFLAGS  ?= -O2 -g
WFLAGS   = -Wall -Wextra -Werror -Wshadow -Wpointer-arith -Wstrict-prototypes
ALL_CFLAGS = -std=gnu11 $(CFLAGS) $(WFLAGS) $(SANFLAGS) -fPIC -D_GNU_SOURCE \
             -Iinclude
LDLIBS   = -lpthread

LIB_SRCS = $(wildcard src/lib/*.c)
LIB_OBJS = $(LIB_SRCS:src/lib/%.c=$(B)/obj/lib/%.o)
HEADERS  = $(wildcard include/*.h) $(wildcard src/lib/*.h)
EXAMPLES = $(patsubst examples/%.c,$(B)/examples/ngxshm-%, \
             $(wildcard examples/*.c))
UNITS    = $(patsubst t/unit/%.c,$(B)/t/unit-%,$(wildcard t/unit/*.c))
TTOOLS   = $(patsubst t/tools/%.c,$(B)/t/tools/%,$(wildcard t/tools/*.c))

VERSION  = 0.1.0

.PHONY: all deps module lib examples units test test-plain test-asan \
        run stop check-style clean bench bench-quick

all: module lib examples units $(TTOOLS)

deps:
	@sh tools/deps.sh

module: $(B)/ngx_http_shm_module.so

$(B)/ngx_http_shm_module.so: src/module/ngx_http_shm_module.c \
        src/module/config include/ngxshm_abi.h include/ngxshm_ring.h \
        src/module/ngx_http_shm_check.h
	tools/build-module.sh $(B) "$(SANFLAGS)" "$(SANFLAGS)"

lib: $(B)/libngxshm.so $(B)/libngxshm.a $(B)/libngxshm.pc

$(B)/obj/lib/%.o: src/lib/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -fvisibility=hidden -c -o $@ $<

$(B)/libngxshm.so: $(LIB_OBJS) src/lib/libngxshm.map
	$(CC) $(SANFLAGS) -shared -Wl,-soname,libngxshm.so.0 \
	    -Wl,--version-script=src/lib/libngxshm.map -o $@ $(LIB_OBJS) $(LDLIBS)

$(B)/libngxshm.a: $(LIB_OBJS)
	rm -f $@
	ar rcs $@ $(LIB_OBJS)

$(B)/libngxshm.pc: src/lib/libngxshm.pc.in
	sed -e 's|@PREFIX@|/usr/local|' -e 's|@VERSION@|$(VERSION)|' $< > $@

examples: $(EXAMPLES)

$(B)/examples/ngxshm-%: examples/%.c $(B)/libngxshm.a $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(B)/libngxshm.a $(LDLIBS)

units: $(UNITS)

$(B)/t/unit-%: t/unit/%.c $(B)/libngxshm.a $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Isrc/lib -o $@ $< $(B)/libngxshm.a $(LDLIBS)

$(B)/t/tools/%: t/tools/%.c $(B)/libngxshm.a $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Isrc/lib -o $@ $< $(B)/libngxshm.a $(LDLIBS)

check-style:
	@perl tools/check-style.pl src/module/*.c src/lib/*.c src/lib/*.h \
	    include/*.h examples/*.c t/unit/*.c $(wildcard t/tools/*.c)

test: deps
	$(MAKE) all
	$(MAKE) B=build/asan SAN=1 all
	$(MAKE) check-style
	NGXSHM_BUILD=$(CURDIR)/build NGXSHM_ASAN= \
	    prove -j2 --timer $(B)/t/unit-* t/*.t
	NGXSHM_BUILD=$(CURDIR)/build/asan NGXSHM_ASAN=1 \
	    prove -j2 --timer build/asan/t/unit-* t/*.t

bench: all
	@sh tools/deps.sh bench
	@sh bench/run.sh

bench-quick: all
	@sh tools/deps.sh bench
	@QUICK=1 sh bench/run.sh

run: deps all
	@sh tools/run.sh start

stop:
	@sh tools/run.sh stop

clean:
	rm -rf build

# more targets (fuzz, soak, profile): one file each under mk/
-include $(wildcard mk/*.mk)
