"""Reference twin of ``greedy``: FCFS admission while the request fits in what the residents
leave free after their growth, optional ``max_num_seqs``; evict in the chosen order."""

from __future__ import annotations

from jaxsched.reference.policies.base import RefPolicy, RefView, admit_prefix

__all__ = ["RefGreedy"]


class RefGreedy(RefPolicy):
    def __init__(self, params: dict, eviction: str = "newest"):
        self.max_num_seqs = params.get("max_num_seqs", 1e9)
        self.eviction = eviction

    def admit(self, view: RefView) -> list[bool]:
        used = sum(view.mem(r.prompt + r.generated + 1) for r in view.residents)
        free = view.capacity - used
        seats = self.max_num_seqs - len(view.residents)

        def admits(w) -> bool:
            nonlocal free, seats
            need = view.mem(w.prompt + w.kept + 1)
            if need > free or seats < 1:
                return False
            free, seats = free - need, seats - 1
            return True

        return admit_prefix(view.queue, admits)
