"""Real speed from pruned models: ``export`` (compacted, checked, saved), ``program`` (the file
format), ``latency`` (CPU timing, dense against compact) and ``semi_structured`` (2:4 kernels)."""
