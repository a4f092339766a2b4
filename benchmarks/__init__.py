"""parity's benchmarks: ``python -m benchmarks.run`` (see :mod:`benchmarks.run`)."""
