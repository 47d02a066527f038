"""Lab 5, step 3: a scheduling policy that batches requests sharing a prefix.

The engine asks `order(view)` once per step while requests wait; the answer
is the waiting request ids in the order to admit them (see
nslab/llm/policy.py for StepView and WaitingView).
"""


class PrefixBatching:
    def order(self, view):
        # TODO: group the waiting requests by prefix (WaitingView.block_hashes)
        # and admit each group together, cached prefixes first
        # (WaitingView.num_cached_blocks). For now: arrival order (FCFS).
        return [w.request_id for w in view.waiting]
