"""mcpmux benchmarks: `python -m bench [--quick] [SCENARIO...]` (not part of the test suite)."""
