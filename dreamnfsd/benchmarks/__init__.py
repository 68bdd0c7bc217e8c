"""Performance benchmarks (render, training step, GPU step): the harnesses behind scripts/bench_*.py."""
