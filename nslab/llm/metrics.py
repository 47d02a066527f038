"""Prometheus metrics under vLLM's names, so dashboards and students' queries carry over.

Each engine has its own registry (tests run several engines in one process).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LAT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
_E2E = (0.1, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0)


class EngineMetrics:
    def __init__(self, engine):
        r = self.registry = CollectorRegistry()
        sched, blocks = engine.scheduler, engine.blocks
        lbl = ["model_name"]
        name = engine.name

        def gauge(metric, doc, fn):
            g = Gauge(metric, doc, lbl, registry=r)
            g.labels(name).set_function(fn)

        gauge(
            "vllm:num_requests_running",
            "Requests in the running batch.",
            lambda: len(sched.running),
        )
        gauge(
            "vllm:num_requests_waiting",
            "Requests waiting to be admitted.",
            lambda: len(sched.waiting),
        )
        gauge("vllm:kv_cache_usage_perc", "Fraction of KV blocks in use (1 = full).", blocks.usage)
        gauge(
            "nslab:prefix_cache_hit_rate",
            "Prefix-cache hits / queries, in tokens.",
            blocks.hit_rate,
        )
        gauge(
            "nslab:num_policy_errors",
            "Steps whose policy answer was invalid.",
            lambda: sched.policy_errors,
        )

        def counter(metric, doc):
            return Counter(metric, doc, lbl, registry=r).labels(name)

        self.prefix_queries = counter(
            "vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache."
        )
        self.prefix_hits = counter(
            "vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache."
        )
        self.preemptions = counter(
            "vllm:num_preemptions", "Sequences preempted (to be recomputed)."
        )
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prompt tokens of finished requests.")
        self.generation_tokens = counter("vllm:generation_tokens", "Generated tokens.")
        self.success = Counter(
            "vllm:request_success",
            "Finished requests.",
            ["model_name", "finished_reason"],
            registry=r,
        )

        def hist(metric, doc, buckets):
            return Histogram(metric, doc, lbl, buckets=buckets, registry=r).labels(name)

        self.ttft = hist("vllm:time_to_first_token_seconds", "Time to first token.", _LAT)
        self.itl = hist("vllm:inter_token_latency_seconds", "Time between output tokens.", _LAT)
        self.tpot = hist(
            "vllm:request_time_per_output_token_seconds",
            "Mean time per output token of a request, after the first.",
            _LAT,
        )
        self.e2e = hist("vllm:e2e_request_latency_seconds", "Arrival to last token.", _E2E)
        self.model_name = name
        self._seen = (0, 0, 0)
        self._blocks, self._sched = blocks, sched

    def on_step(self, plan, outs, now: float | None = None) -> None:
        now = now or time.monotonic()
        b, s = self._blocks, self._sched
        q, h, p = self._seen
        self.prefix_queries.inc(b.prefix_queries - q)
        self.prefix_hits.inc(b.prefix_hits - h)
        self.preemptions.inc(s.num_preemptions - p)
        self._seen = (b.prefix_queries, b.prefix_hits, s.num_preemptions)
        for out in outs:
            seq = out.seq
            if out.new_token is None:
                continue
            self.generation_tokens.inc()
            times = seq.token_times
            if len(times) == 1:
                self.ttft.observe(times[0] - seq.arrival)
            else:
                self.itl.observe(times[-1] - times[-2])
            if out.finished:
                self.prompt_tokens.inc(len(seq.prompt_ids))
                self.success.labels(self.model_name, seq.finish_reason).inc()
                self.e2e.observe(now - seq.arrival)
                if len(times) > 1:
                    self.tpot.observe((times[-1] - times[0]) / (len(times) - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
