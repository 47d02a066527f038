"""Lab 4: your dispatch policies. See README.md.

Each policy gets the list of pods that are up (never empty) and returns one.
A pod offers: p.name, p.outstanding (requests this dispatcher sent it that are
not answered yet), p.queue_estimate (the pod's own queue from its /metrics,
corrected for requests sent and answered since), p.reported_queue, p.served."""

import random

from nslab.serving.policies import Policy


class PowerOfTwo(Policy):
    def __init__(self) -> None:
        self.rng = random.Random()

    def choose(self, request, pods):
        # TODO: sample two distinct pods, return the less loaded one.
        return self.rng.choice(pods)


class JoinShortestQueue(Policy):
    needs_metrics = True  # ask the dispatcher to scrape the pods' /metrics

    def choose(self, request, pods):
        # TODO: return the pod with the shortest queue.
        return self.rng_choice(pods)

    def rng_choice(self, pods):
        return random.choice(pods)
