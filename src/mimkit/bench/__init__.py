"""Benchmarks: throughput and memory of training steps, side by side with reference implementations."""
