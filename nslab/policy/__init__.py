"""The policy protocol: how a component the grader owns (a pod's batcher, a
dispatcher, later an LLM engine's scheduler) consults a policy that runs in
another process (a student's, sandboxed), without ever running its code.

The component listens on a Unix socket; the policy process connects to it
(`python -m nslab.policy.runner --connect SOCK FILE.py:Class`) and the two
exchange newline-delimited JSON objects:

    component -> policy   {"type": "setup", "protocol": "nslab-policy/1", "kind": K, "params": {...}}
    policy -> component   {"type": "ready", "policy": "ClassName", "info": {...}}
    component -> policy   {"type": "ask", "id": 1, "state": {...}}
    policy -> component   {"type": "answer", "id": 1, "decision": {...}}
                          {"type": "answer", "id": 1, "error": "why"}

Each ask has a deadline. The component validates every answer (pydantic
models of the decision, then the kind's own rules) and, when an answer is
late, invalid, an error, or the policy is gone, uses a safe fallback
decision instead and counts it by outcome. Those counters are what graders
read: a fallback is charged to the policy, never to the component.

Kinds: `batching` (nslab.serving.batching), `dispatch` (nslab.serving.policies),
`llm-scheduling` (nslab.llm.remote: an LLM engine's admission order).
See docs/serving.md, "The policy protocol".
"""
