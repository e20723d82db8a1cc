"""Benchmarks of flex (not tests: nothing here asserts a wall time). See bench/README.md."""
