# squeezeedge: `make demo` runs the main job on the embedded default, `make test` runs the tests.
# Both set up everything on a fresh machine: a local virtualenv with pinned dependencies.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SE     := $(VENV)/bin/squeezeedge
STAMP  := $(VENV)/.installed
# The TFLite baseline's converters (litert-torch, ai-edge-quantizer). Installed after the project:
# their xdsl pins typing-extensions<4.13 while TVM's ffi needs >=4.13; both run on 4.16 (the bench
# tests convert a model through them), so typing-extensions is put back to 4.16 right after.
TFLITE_CONVERTERS := litert-torch==0.10.0 ai-edge-quantizer==0.10.0 litert-converter==0.5.0

.PHONY: setup toolchain emulation demo test bench bench-fidelity bench-quantize-cost bench-latency bench-boards \
	pretune clean

setup: $(STAMP) toolchain emulation

# Cross toolchain and emulator for the Raspberry Pi / Jetson CPU targets (Debian packages; root).
# Debian's g++ rather than PyPI's ziglang: 60 MB instead of 440 MB, and its arm64 libc/libstdc++ are the
# sysroot qemu-user needs anyway to run the cross-built runner.
APT_PACKAGES := g++-aarch64-linux-gnu qemu-user libc6-arm64-cross libstdc++6-arm64-cross
toolchain:
	@if command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null \
	    && [ -d /usr/aarch64-linux-gnu/lib ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PACKAGES); \
	else echo "cross builds need: sudo apt-get install $(APT_PACKAGES)"; fi

# Counting a board's work with no board (bench --emulate): Debian's arm64 CPython, PyPI's aarch64
# onnxruntime / LiteRT wheels and the qemu counting plugin, in ~/.cache/squeezeedge/board-python (once).
emulation: $(STAMP) toolchain
	$(SE) -q setup-emulation

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet $(TFLITE_CONVERTERS) 2>&1 | grep -v "dependency resolver\|typing-extensions" || true
	$(PY) -m pip install --quiet typing-extensions==4.16.0 2>&1 | grep -v "dependency resolver\|typing-extensions" || true
	$(PY) -c "import tvm.relax, litert_torch, ai_edge_quantizer"
	touch $(STAMP)

# The reference x86 target for this machine: AVX-512 VNNI when the CPU has it, else AVX2. A shipped
# tuning database for it (results/databases/TARGET-{int8,fp32}) is used when there is one.
REF_TARGET ?= $(shell grep -qw avx512_vnni /proc/cpuinfo 2>/dev/null && echo x86-avx512 || echo x86-avx2)
db_opt = $(if $(wildcard results/databases/$(REF_TARGET)-$(1)/manifest.json),--database results/databases/$(REF_TARGET)-$(1))

# The embedded default: full-size SqueezeBERT (seeded init) exported for any length up to 128 tokens and
# validated, quantized to int8 on the shipped calibration corpus at the texts' own lengths (fidelity
# checked), compiled with TVM for the reference x86 target into ONE library (length buckets 16/32/48/64/96/128 on AVX-512, 16/24/32/40/... on AVX2)
# whose quantized layers compute in integers (checked against onnxruntime at 1, 16, 17 and 128 tokens),
# then timed next to PyTorch and onnxruntime on real text at its own length and at each length; ends
# with the report's path and its real-text table.
demo: $(STAMP)
	$(SE) export --model squeezebert-uncased --dynamic --out build/demo/export
	$(SE) quantize build/demo/export --target $(REF_TARGET) --out build/demo/int8
	$(SE) build build/demo/int8 --target $(REF_TARGET) $(call db_opt,int8) --out build/demo/int8-$(REF_TARGET)
	$(SE) -q bench build/demo/int8-$(REF_TARGET) --baselines torch,ort --min-seconds 5 --out build/demo/bench.json > /dev/null
	$(SE) report build/demo/bench.json --out build/demo/report

test: $(STAMP) toolchain emulation
	$(PY) -m pytest -q -m "not slow"

# Benchmarks write results/ (full-size models; minutes, not seconds).
bench: bench-fidelity bench-quantize-cost bench-latency bench-boards

# int8 recipes on trained MiniLM and on SqueezeBERT: fidelity of the ONNX and of the built library on
# held-out real text, integer kernels, size, and the library's speed next to onnxruntime int8/fp32
# (results/int8-fidelity.{md,json}; ~20 min)
bench-fidelity: $(STAMP)
	$(PY) -m squeezeedge.measure.fidelity_bench --workdir build/bench --results results

# fp32 and int8 libraries for the reference target, each built with the shipped tuning database and
# without one, timed in one interleaved run next to PyTorch, onnxruntime and TFLite; then each library
# alone in a plain process (squeezeedge.runtime.load with its defaults, what a user gets) against the
# bench's figure; then the report over every results/bench-*.json (all devices, all runs).
# 30 s of rounds: medians of 10 rounds moved by +-1 ms between runs here.
LIBS = build/bench/int8-$(REF_TARGET)-lib build/bench/int8-$(REF_TARGET)-nodb build/bench/fp32-$(REF_TARGET) \
	build/bench/fp32-$(REF_TARGET)-nodb
bench-latency: $(STAMP)
	$(SE) export --model squeezebert-uncased --dynamic --out build/bench/export
	$(SE) quantize build/bench/export --target $(REF_TARGET) --out build/bench/int8-$(REF_TARGET)
	$(SE) build build/bench/export --target $(REF_TARGET) $(call db_opt,fp32) --out build/bench/fp32-$(REF_TARGET)
	$(SE) build build/bench/export --target $(REF_TARGET) --out build/bench/fp32-$(REF_TARGET)-nodb
	$(SE) build build/bench/int8-$(REF_TARGET) --target $(REF_TARGET) $(call db_opt,int8) \
		--out build/bench/int8-$(REF_TARGET)-lib
	$(SE) build build/bench/int8-$(REF_TARGET) --target $(REF_TARGET) --out build/bench/int8-$(REF_TARGET)-nodb
	$(SE) --workdir build/bench bench $(LIBS) --min-seconds 30 --out results/bench-$(REF_TARGET).json
	$(PY) -m squeezeedge.measure.plain_latency $(LIBS) --bench results/bench-$(REF_TARGET).json \
		--out results/plain-process-$(REF_TARGET)
	$(SE) report results/bench-*.json $(wildcard results/boards-emulated.json) --out results/report

# The boards' work, exactly, with no board: full-size Pi 4 and Pi 5 int8 and fp32 libraries (untuned
# defaults, deploy bundles), instructions per inference on each Pi's own core under qemu-user at 16/32/64/128
# tokens and per real text, beside onnxruntime (fp32, int8 its own recipe) and LiteRT on the same core, with
# the floor (results/boards-emulated.json); then the libraries' counts checked against the bundles' own
# runner, (3 runs - 1 run) / 2, within 1% (results/boards-count-check.md); then the report. ~70 min here.
BOARD_LIBS = build/boards/rpi4-int8 build/boards/rpi5-int8 build/boards/rpi4-fp32 build/boards/rpi5-fp32
bench-boards: $(STAMP) toolchain emulation
	$(SE) export --model squeezebert-uncased --dynamic --out build/boards/export
	$(SE) quantize build/boards/export --target rpi4 --out build/boards/int8-rpi4
	$(SE) quantize build/boards/export --target rpi5 --out build/boards/int8-rpi5
	$(SE) build build/boards/int8-rpi4 --target rpi4 --bundle --out build/boards/rpi4-int8
	$(SE) build build/boards/int8-rpi5 --target rpi5 --bundle --out build/boards/rpi5-int8
	$(SE) build build/boards/export --target rpi4 --bundle --out build/boards/rpi4-fp32
	$(SE) build build/boards/export --target rpi5 --bundle --out build/boards/rpi5-fp32
	$(SE) --workdir build/boards bench $(BOARD_LIBS) --emulate --out results/boards-emulated.json
	$(PY) -m squeezeedge.measure.count_check results/boards-emulated.json $(addsuffix .tar.gz,$(BOARD_LIBS)) \
		--out results/boards-count-check
	$(SE) report results/bench-*.json results/boards-emulated.json --out results/report

bench-quantize-cost: $(STAMP)
	$(PY) -m squeezeedge.measure.quantize_cost_bench --workdir build/bench --results results

# Pre-tuned databases for the reference x86 target of this machine (REF_TARGET), shipped in
# results/databases/ so that users get tuned builds without tuning. Rerunning with a larger TRIALS
# extends them; REF_TARGET=x86-avx512 on an AVX-512 VNNI machine for that one.
TRIALS ?= 128
pretune: $(STAMP)
	$(SE) export --model squeezebert-uncased --dynamic --out build/ref/export
	$(SE) quantize build/ref/export --target $(REF_TARGET) --out build/ref/int8-$(REF_TARGET)
	$(SE) tune build/ref/int8-$(REF_TARGET) --target $(REF_TARGET) --trials $(TRIALS) \
		--out results/databases/$(REF_TARGET)-int8
	$(SE) tune build/ref/export --target $(REF_TARGET) --trials $(TRIALS) --out results/databases/$(REF_TARGET)-fp32

clean:
	rm -rf build .pytest_cache
