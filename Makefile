# Everything a fresh machine needs, then the job.  torch==2.13.0 is installed
# first: it is the CPU build on this machine, and once it is there the
# project's `torch>=2.1` requirement pulls nothing more (an unpinned torch in
# a fresh venv would download a multi-GB CUDA build).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.parity-installed
export TF_CPP_MIN_LOG_LEVEL ?= 3

# Converters whose own pins would pull TF 2.19 / numpy 1.26 / a CUDA torch: they run on
# this stack regardless (see README, "Converters tested"), so they come without deps.
NO_DEPS_CONVERTERS := onnx2tf==1.29.24 onnx2torch==1.5.15 torchvision==0.29.1 timm==1.0.31

.PHONY: install keras2 litert test check lint demo demo-chain clean browser bench corpus corpus-readme

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[all,dev,converters,ray]"
	$(PY) -m pip install --quiet --no-deps $(NO_DEPS_CONVERTERS)
	touch $(STAMP)

install: $(STAMP)

# nobuco (PyTorch → Keras 2) runs only on TensorFlow 2.15 and its bundled Keras 2.15, which
# cannot share the main venv (TF 2.21 / Keras 3): tests/integration/test_nobuco.py runs
# tests/integration/nobuco_pair.py — and parity itself — with this venv's python.
# torch==2.13.0 first (the CPU build); nobuco and torchvision without deps (nobuco imports
# torchvision; torchvision's pins want a CUDA torch). nobuco's own deps: sty tqdm rich numpy.
# TF 2.15 pins numpy<2.
KERAS2_VENV ?= .venv-keras2
KERAS2_PY := $(KERAS2_VENV)/bin/python
KERAS2_STAMP := $(KERAS2_VENV)/.parity-installed

$(KERAS2_STAMP): pyproject.toml
	python3 -m venv $(KERAS2_VENV)
	$(KERAS2_PY) -m pip install --quiet --upgrade pip
	$(KERAS2_PY) -m pip install --quiet torch==2.13.0
	$(KERAS2_PY) -m pip install --quiet tensorflow-cpu==2.15.1 "numpy<2"
	$(KERAS2_PY) -m pip install --quiet --no-deps nobuco==0.17.0 torchvision==0.29.1
	$(KERAS2_PY) -m pip install --quiet "numpy<2" sty tqdm rich jinja2 matplotlib pyyaml
	$(KERAS2_PY) -m pip install --quiet --no-deps -e .
	touch $(KERAS2_STAMP)

keras2: $(KERAS2_STAMP)

# litert-torch (PyTorch → .tflite) cannot share the main venv: its ai-edge-litert[model-utils]
# pins downgrade typing_extensions and it pulls transformers 5.x.  tests/corpus/timm_litert.py
# runs tests/corpus/litert_convert.py with this venv's python and reads the .tflite in the main
# venv.  torch==2.13.0 first (the CPU build; litert-torch accepts torch <2.15), timm and
# torchvision without deps (torchvision's pins want a CUDA torch).
LITERT_VENV ?= .venv-litert
LITERT_PY := $(LITERT_VENV)/bin/python
LITERT_STAMP := $(LITERT_VENV)/.parity-installed

$(LITERT_STAMP):
	python3 -m venv $(LITERT_VENV)
	$(LITERT_PY) -m pip install --quiet --upgrade pip
	$(LITERT_PY) -m pip install --quiet torch==2.13.0
	$(LITERT_PY) -m pip install --quiet litert-torch==0.10.0
	$(LITERT_PY) -m pip install --quiet --no-deps timm==1.0.31 torchvision==0.29.1
	$(LITERT_PY) -c "import torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__"
	touch $(LITERT_STAMP)

litert: $(LITERT_STAMP)

# The HTML report is tested in a real headless Chromium (Debian's package).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# TensorFlow turns oneDNN on by default only on CPUs with AVX-512-VNNI or AMX, and its kernels
# round differently from the plain ones: the suite runs with oneDNN off (what most CPUs get),
# then the TensorFlow comparisons again with it on (what the others get), so a test that holds on
# one kind of CPU only fails here rather than on a user's machine.
ONEDNN_TESTS := tests/test_mobilenet_pb.py tests/test_tf_keras.py tests/test_diff_pairs.py

test: $(STAMP) $(KERAS2_STAMP) browser
	TF_ENABLE_ONEDNN_OPTS=0 PARITY_REQUIRE_BROWSER=1 PARITY_REQUIRE_CONVERTERS=1 $(PY) -m pytest -q
	TF_ENABLE_ONEDNN_OPTS=1 $(PY) -m pytest -q $(ONEDNN_TESTS)

# The inner loop: lint, types, and the tests that need neither TensorFlow, a converter nor a
# browser (markers in pyproject.toml).  `make test` is the whole suite, and what CI runs.
FAST := not slow and not converters and not browser and not ray

lint: $(STAMP)
	$(VENV)/bin/ruff check parity tests benchmarks conftest.py
	$(VENV)/bin/mypy

check: lint
	$(PY) -m pytest -q -m "$(FAST)"

demo: $(STAMP)
	$(VENV)/bin/parity demo

# torch → ONNX → onnx2tf SavedModel → fp32/fp16 TFLite, one stage with an injected bug
demo-chain: $(STAMP)
	$(VENV)/bin/parity demo --chain

# What parity costs on a Keras ResNet-50 and its PyTorch port, beside TorchLens and Polygraphy
# (installed into the venv for this target only), then parity.evaluate over a dataset (throughput
# against plain forwards, peak RSS at 1x and 8x the samples, Ray beside local).  Several minutes on 2 cores.
bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.evaluate

# Real architectures through real converters, each pair in its own subprocess: reports/corpus.{md,html,json}.
# Conversions are cached (~/.cache/parity/test-artifacts); the first run takes hours on 2 cores.
# CORPUS_ARGS="--source timm --merge" adds one source to the last run; "--in-process" judges every
# pair in one interpreter (~3x faster, once the conversions are cached); "--combine DIR DIR" writes
# one report from runs made side by side.  `make corpus-readme` then writes README.md's
# "Converters tested" table from reports/corpus.json.
corpus: $(STAMP)
	$(PY) -m tests.corpus.run $(CORPUS_ARGS)

corpus-readme:
	$(PY) -m tests.corpus.readme reports/corpus.json --readme README.md

clean:
	rm -rf $(VENV) $(KERAS2_VENV) $(LITERT_VENV) reports/*.json reports/*.html reports/chain-artifacts
