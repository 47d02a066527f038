"""Hostile lab 5 retrieval: read the hidden question set, forge answers."""

import glob
import json
import os
import sys

task = json.load(sys.stdin)
found = []
import nslab  # noqa: E402

roots = [os.path.dirname(os.path.dirname(nslab.__file__)), "/work", "/", os.getcwd(), "/tmp"]
for root in roots:
    found += glob.glob(os.path.join(root, "**", "questions*.json"), recursive=False)
    found += glob.glob(os.path.join(root, "labs", "05-llm-serving", "grader", "*.json"))
print("found:", found, file=sys.stderr)
# Forged answers: every question gets an id it cannot know (guessed shape).
answers = {q["id"]: "p0000000000" for q in task["questions"]}
for path in found:
    try:
        print("read:", open(path).read()[:100], file=sys.stderr)
    except OSError:
        pass
print(json.dumps({"answers": answers, "accuracy": 1.0}))
