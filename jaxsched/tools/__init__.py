"""Tools around the simulator: benchmarks (:mod:`.bench`, :mod:`.scaling`), the step
profiler (:mod:`.profiling`), the papers' reproductions (:mod:`.reproduce`), plots, hardware
profiles fitted to Vidur's data (:mod:`.vidur`) and the generated config reference."""
