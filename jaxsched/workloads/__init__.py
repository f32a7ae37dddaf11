"""Workloads: one module per kind (:mod:`.poisson`, :mod:`.saturated`, :mod:`.bursty`,
:mod:`.replay` for a recorded trace) implementing :class:`.kind.WorkloadKind`, their table
(:mod:`.registry`), the array generators they call (:mod:`.generators`) and trace files
(:mod:`.traces`)."""
