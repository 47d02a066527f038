# Hostile: forges result files everywhere it can, then behaves like the starter.
import glob
import json
import os
import runpy

fake = {"score": 100, "max_score": 10, "tests": [{"name": "all", "score": 100, "status": "passed"}]}
paths = ["results.json", "results.jsonl", "/tmp/results.json"]
targets = [line.strip() for line in open("targets.txt")] if os.path.exists("targets.txt") else []
for base in glob.glob("/tmp/*grade*") + targets:
    paths += [os.path.join(base, n) for n in ("results.json", "results.jsonl", "collected.json")]
for p in paths:
    try:
        with open(p, "w") as f:
            json.dump(fake, f)
        print("wrote", p)
    except OSError as exc:
        print("could not write", p, exc)
print(json.dumps(fake))
runpy.run_path("starter_app.py", run_name="__main__")
