# Two commands for a fresh Debian machine: `make demo` and `make test` (see README.md).
SWIFT ?= swift
RELEASE := .build/release

.PHONY: all setup build demo test bench fixtures fuzz clean

all: build

setup:
	@scripts/setup.sh

build: setup
	$(SWIFT) build -c release --product llamaprobe

demo: build
	$(RELEASE)/llamaprobe demo --out demo-run

test: setup
	$(SWIFT) build --build-tests
	SWIFT=$(SWIFT) scripts/test.sh

# Throughput on LLaMA-2-13B-shaped layers (int8, against sgemm in the same run) and the GEMM kernels
# against OpenBLAS sgemm on the projection shapes (see docs/performance.md).
bench: build
	$(SWIFT) build -c release --product llamaprobe-kernel-bench
	$(RELEASE)/llamaprobe bench --synthetic llama-2-13b --layers 2 --tokens 128
	$(RELEASE)/llamaprobe-kernel-bench --preset llama-2-13b --tokens 128 --repeats 5

# Fuzz every file reader with libFuzzer + AddressSanitizer, FUZZ_SECONDS per target (docs/reliability.md);
# findings land in .fuzz/findings/TARGET. `make test` replays Fuzz/regressions.
FUZZ_SECONDS ?= 60
fuzz: setup
	scripts/fuzz.sh $(FUZZ_SECONDS)

# Regenerate the reference fixtures with Hugging Face transformers (needs torch; not part of `make test`).
fixtures:
	scripts/setup.sh --fixtures
	scripts/make_fixtures.sh

clean:
	rm -rf .build .build-fuzz .fuzz demo-run
