# make soak        1,000,000 requests of a mixed workload through one
#                  channel (one nginx worker, one echo sidecar), with RSS
#                  and descriptor checks; writes bench/results/soak.md
# make soak-asan   the same with the ASan+UBSan build (longer cap);
#                  writes bench/results/soak-asan.md
#
# Knobs (environment): SOAK_REQUESTS (1000000), SOAK_MAX_S (600; 1800 for
# soak-asan), SOAK_RSS_KB (1024), SOAK_CONNECTIONS (32), SOAK_OUT.
# Not part of "make test": it takes minutes.

.PHONY: soak soak-asan

soak: deps
	$(MAKE) all
	NGXSHM_BUILD=$(CURDIR)/build NGXSHM_ASAN= prove -v t/soak/soak.t

soak-asan: deps
	$(MAKE) B=build/asan SAN=1 all
	NGXSHM_BUILD=$(CURDIR)/build/asan NGXSHM_ASAN=1 \
	    SOAK_MAX_S=$${SOAK_MAX_S:-1800} prove -v t/soak/soak.t
