"""Workloads: generated arrivals and lengths (:mod:`.generators`) and recorded traces
(:mod:`.traces`)."""
