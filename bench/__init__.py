"""Benchmarks and end-to-end comparisons against PyTorch sentence-transformers."""
