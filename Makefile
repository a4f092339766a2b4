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
NO_DEPS_CONVERTERS := onnx2tf==1.29.24 onnx2torch==1.5.15 torchvision==0.29.1

.PHONY: install test demo clean browser bench

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[all,dev,converters]"
	$(PY) -m pip install --quiet --no-deps $(NO_DEPS_CONVERTERS)
	touch $(STAMP)

install: $(STAMP)

# The HTML report is tested in a real headless Chromium (Debian's package).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) browser
	PARITY_REQUIRE_BROWSER=1 PARITY_REQUIRE_CONVERTERS=1 $(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/parity demo

# What parity costs on a Keras ResNet-50 and its PyTorch port, beside TorchLens and Polygraphy
# (installed into the venv for this target only).  Several minutes on 2 cores.
bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) reports/*.json reports/*.html
