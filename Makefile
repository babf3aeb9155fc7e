# The two commands of the README:
#   make run    bootstrap, build, and serve with config/mmserve.yaml on localhost:8080
#   make test   bootstrap, build, and run every test
# Everything else is a step of those two.

BUILD_DIR ?= build
CMAKE_FLAGS ?=
JOBS ?= $(shell nproc)
CONFIG ?= config/mmserve.yaml
# Relative paths in ccache keys, so every clone shares the cache.
export CCACHE_BASEDIR := $(CURDIR)

.PHONY: run test bootstrap configure build bench-tools sanitize fuzz format tidy clean

run: build
	./$(BUILD_DIR)/mmserve serve --config $(CONFIG)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j$(JOBS)

bootstrap:
	bash scripts/bootstrap.sh

configure: bootstrap
	cmake -S . -B $(BUILD_DIR) -G Ninja $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD_DIR) -j$(JOBS)

# llama.cpp's and whisper.cpp's own servers and CLIs, the peers the benchmarks run against.
bench-tools: configure
	cmake --build $(BUILD_DIR) -j$(JOBS) --target llama-server llama-mtmd-cli whisper-cli whisper-server

# ASan+UBSan build of mmserve_input (image/audio decoding, multipart) with
# clang 14: its unit tests, then the libFuzzer targets for FUZZ_SECONDS each
# (both at once). CI runs both; `make fuzz FUZZ_SECONDS=3600` for a long run.
SANITIZE_DIR ?= build-sanitize
FUZZ_SECONDS ?= 60
sanitize: bootstrap
	cmake -S . -B $(SANITIZE_DIR) -G Ninja -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 -DMMSERVE_FUZZ=ON
	cmake --build $(SANITIZE_DIR) -j$(JOBS)
	cd $(SANITIZE_DIR) && ctest --output-on-failure -j$(JOBS) -LE fuzz

fuzz: sanitize
	cd $(SANITIZE_DIR) && FUZZ_SECONDS=$(FUZZ_SECONDS) ctest --output-on-failure -j2 -L fuzz

format:
	clang-format -i $$(git ls-files 'src/*.cpp' 'src/*.hpp' 'tests/*.cpp' 'tests/*.hpp')

tidy: configure
	clang-tidy -p $(BUILD_DIR) $$(git ls-files 'src/*.cpp')

clean:
	rm -rf $(BUILD_DIR)
