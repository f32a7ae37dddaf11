"""Reference twin of ``greedy``: FCFS admission while the request fits in what the residents
leave free after their growth, optional ``max_num_seqs``; evict in the chosen order."""

from __future__ import annotations

from jaxsched.reference.policies.base import RefPolicy, RefView, evict_in_order

__all__ = ["RefGreedy"]


class RefGreedy(RefPolicy):
    def __init__(self, params: dict, eviction: str = "newest"):
        self.max_num_seqs = params.get("max_num_seqs", 1e9)
        self.eviction = eviction

    def admit(self, view: RefView) -> list[bool]:
        used = sum(view.mem(r.prompt + r.generated + 1) for r in view.residents)
        free = view.capacity - used
        seats = self.max_num_seqs - len(view.residents)
        out = []
        blocked = False
        for w in view.queue:
            need = view.mem(w.prompt + w.kept + 1)
            if not blocked and need <= free and seats >= 1:
                out.append(True)
                free -= need
                seats -= 1
            else:
                blocked = True
                out.append(False)
        return out

    def evict(self, view: RefView, need: list[int]) -> list[bool]:
        return evict_in_order(self.eviction, view, need)
