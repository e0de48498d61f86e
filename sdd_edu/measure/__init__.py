"""Measuring on the reader's own device: timing helpers and benchmarks."""
