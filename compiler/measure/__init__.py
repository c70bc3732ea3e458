"""Measurement: bench and its baselines and workloads, report, profile, remote (bench through RPC),
plain_latency, and the benchmark drivers behind make bench (fidelity_bench, quantize_cost_bench)."""
