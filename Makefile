# Two commands for a fresh Debian machine: `make demo` and `make test` (see README.md).
SWIFT ?= swift
RELEASE := .build/release

.PHONY: all setup build demo test bench fixtures clean

all: build

setup:
	@scripts/setup.sh

build: setup
	$(SWIFT) build -c release --product llamaprobe

demo: build
	$(RELEASE)/llamaprobe demo --out demo-run

test: setup
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

# fp32 forward throughput on one LLaMA-2-13B-shaped layer (see docs/performance.md).
bench: setup
	$(SWIFT) build -c release --product llamaprobe-bench
	$(RELEASE)/llamaprobe-bench --preset llama-2-13b --layers 1 --tokens 128 --repeats 5

# Regenerate the reference fixtures with Hugging Face transformers (needs torch; not part of `make test`).
fixtures:
	scripts/setup.sh --fixtures
	python3 Tests/fixtures/make_fixtures.py

clean:
	rm -rf .build demo-run
