"""The core: the one model of the system (:mod:`.model`), the step (:mod:`.sim`), the
metrics accumulated over a run (:mod:`.metrics`) and the one rollout every runner uses
(:mod:`.rollout`)."""
