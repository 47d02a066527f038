"""Lab 3, step 5: an SLO-aware batching policy (reference solution)."""

from nslab.serving.batching import BatchPolicy, QueueState

SLO_S = 0.100  # the lab's latency objective: p99 <= 100 ms


class SloAwarePolicy(BatchPolicy):
    """Wait for a bigger batch only while the oldest request can still make its
    deadline. A request may also have to wait for the batch that is running
    when it arrives (up to a full batch time), and p99 is a tail, not a mean:
    so only 30 % of the SLO is spent on waiting plus the batch's own service."""

    budget_s = 0.3 * SLO_S

    def decide(self, s: QueueState) -> int:
        n = min(s.queued_items, s.max_batch_size)
        if n >= s.max_batch_size:
            return n  # a full batch: nothing to gain by waiting
        est = s.estimate_s(n + 1) or 0.0
        # Launch now if waiting one more tick (1 ms) for one more request
        # would push the oldest request past its budget.
        if s.oldest_wait_s + est + 0.001 >= self.budget_s:
            return n
        return 0

    def wake_after_s(self, s: QueueState) -> float:
        est = s.estimate_s(min(s.queued_items, s.max_batch_size) + 1) or 0.0
        return max(0.0005, self.budget_s - s.oldest_wait_s - est - 0.001)
