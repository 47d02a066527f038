"""Lab 4: dispatch policies (reference solution)."""

import random

from nslab.serving.policies import Policy


class PowerOfTwo(Policy):
    """Sample two distinct pods at random; send to the one with fewer
    outstanding requests (ties: the first sampled)."""

    def __init__(self) -> None:
        self.rng = random.Random()

    def choose(self, request, pods):
        if len(pods) == 1:
            return pods[0]
        a, b = self.rng.sample(pods, 2)
        return a if a.outstanding <= b.outstanding else b


class JoinShortestQueue(Policy):
    """The pod with the shortest queue, as the pods report it in their metrics
    (refreshed every few ms) corrected for what was sent since; ties broken by
    this dispatcher's outstanding count."""

    needs_metrics = True

    def choose(self, request, pods):
        return min(pods, key=lambda p: (p.queue_estimate, p.outstanding))
