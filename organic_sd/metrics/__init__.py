"""Quality measures shared by evaluation and benchmarks."""
