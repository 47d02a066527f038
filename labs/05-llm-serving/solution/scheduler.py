"""Lab 5, step 3: a scheduling policy that batches requests sharing a prefix.

The engine asks `order(view)` once per step while requests wait; the answer
is the waiting request ids in the order to admit them (see
nslab/llm/policy.py for StepView and WaitingView).
"""


class PrefixBatching:
    """Requests sharing a prefix are admitted together, groups whose prefix the
    cache holds first (their prefill is nearly free and admitting them keeps
    those blocks referenced, so LRU cannot evict them), then the biggest
    groups, then the oldest."""

    def order(self, view):
        groups = {}
        for w in view.waiting:
            # block_hashes are chained: equal first hashes = equal first block
            key = w.block_hashes[0] if w.block_hashes else w.request_id
            groups.setdefault(key, []).append(w)

        def rank(members):
            cached = max(w.num_cached_blocks for w in members)
            return (-cached, -len(members), min(w.arrival for w in members))

        out = []
        for members in sorted(groups.values(), key=rank):
            out += [w.request_id for w in sorted(members, key=lambda w: w.arrival)]
        return out
