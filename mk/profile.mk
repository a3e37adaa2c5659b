# make profile: instructions (callgrind) and system calls (strace) per
# request of the benchmark's contenders; bench/results/profile.md
.PHONY: profile

profile: all
	@sh tools/deps.sh bench
	@sh bench/profile.sh
