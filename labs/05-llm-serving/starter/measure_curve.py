"""Step 2 of lab 5: median TTFT against prompt length -> curve.csv.

Runs `nslab bench serve` once per prompt length against the lab's engine
(`sudo nslab lab start 05-llm-serving`, port 8050), one request at a time,
and writes input_len,ttft_ms,tpot_ms (medians) to curve.csv.

    python3 measure_curve.py [--port 8050] [--lengths 32,96,192,384,768]
"""

import argparse
import csv
import json
import subprocess
import tempfile
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--port", default="8050")
p.add_argument("--lengths", default="32,96,192,384,768")
p.add_argument("--out", default="curve.csv")
args = p.parse_args()

rows = []
with tempfile.TemporaryDirectory() as d:
    for n in args.lengths.split(","):
        cmd = ["nslab", "bench", "serve", "--port", args.port, "--random-input-len", n]
        cmd += ["--random-output-len", "8", "--num-prompts", "8", "--max-concurrency", "1"]
        cmd += ["--ignore-eos", "--save-result", "--result-dir", d]
        cmd += ["--result-filename", f"{n}.json"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        res = json.loads((Path(d) / f"{n}.json").read_text())
        rows.append((int(n), round(res["median_ttft_ms"], 1), round(res["median_tpot_ms"], 2)))
        print(f"{n:>5} tokens: TTFT {rows[-1][1]} ms, TPOT {rows[-1][2]} ms")
with open(args.out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["input_len", "ttft_ms", "tpot_ms"])
    w.writerows(rows)
print(f"wrote {args.out}")
