"""Lab 3, step 5: your batching policy (README.md, "Step 5").

The pod calls `decide` whenever a request arrives, a batch finishes, or the
time you return from `wake_after_s` has passed. Return how many queued items
to launch as one batch now (0 = keep waiting). See README.md."""

from nslab.serving.batching import BatchPolicy, QueueState

SLO_S = 0.100  # the lab's latency objective: p99 <= 100 ms


class SloAwarePolicy(BatchPolicy):
    def decide(self, s: QueueState) -> int:
        # s.queued_items      items waiting (one per request here)
        # s.oldest_wait_s     how long the oldest has waited
        # s.max_batch_size    from pod.yaml
        # s.estimate_s(b)     the device's service time for a batch of b
        # TODO: wait for a bigger batch while the oldest request can still
        # meet SLO_S; launch a full batch at once.
        return 1  # no batching: every request alone

    def wake_after_s(self, s: QueueState) -> float | None:
        # TODO: when should the pod ask again if no request arrives?
        return 0.001
