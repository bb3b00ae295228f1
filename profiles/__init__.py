"""Hardware profiles (data) and the profiler."""
