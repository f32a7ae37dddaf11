"""Ways of running the core rollout: horizons in chunks and batches streamed
(:mod:`.chunked`), workloads drawn block by block in a sliding window (:mod:`.stream`), and the
batch sharded over devices (:mod:`.sharding`)."""
