"""A small LLM serving engine: paged KV cache, prefix caching, continuous batching.

Read in this order: sequence.py, block_manager.py, policy.py, scheduler.py,
model.py, engine.py; then server.py (the OpenAI-compatible API) and bench.py
(`nslab bench serve`). docs/llm.md tells the design.
"""
