"""The reference twin: a plain-Python simulator (:mod:`.simulator`) and one plain-Python
twin per policy (:mod:`.policies`), against which the JAX simulator is tested step by step."""
