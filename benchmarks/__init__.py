"""Speed and resolution trade-off benchmarks behind ``tools/benchmark.py`` (see docs/benchmarks.md)."""
