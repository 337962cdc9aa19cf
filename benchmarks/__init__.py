"""Side-by-side benchmarks: `make bench` (python -m benchmarks.run_all) writes docs/benchmarks.md."""
