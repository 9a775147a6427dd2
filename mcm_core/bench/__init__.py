"""Benchmarks: ``python -m mcm_core.bench`` (ranking quality, paper protocol on real images) and
``python -m mcm_core.bench --speed`` (fit/score throughput, in mcm_core.bench.speed)."""
