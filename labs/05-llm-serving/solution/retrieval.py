"""Lab 5, step 4: choose the context passage for each question.

Reads {"passages": [{"id", "text"}], "questions": [{"id", "text"}]} as JSON
on stdin; prints {"answers": {question id: passage id}} as JSON on stdout.
"""

import json
import sys

from nslab.llm.embed import MiniLM


def main():
    task = json.load(sys.stdin)
    enc = MiniLM()
    passages = enc.encode([p["text"] for p in task["passages"]])
    questions = enc.encode([q["text"] for q in task["questions"]])
    # Embeddings have unit length: the dot product is the cosine similarity.
    best = (questions @ passages.T).argmax(dim=1).tolist()
    answers = {
        q["id"]: task["passages"][i]["id"] for q, i in zip(task["questions"], best, strict=True)
    }
    print(json.dumps({"answers": answers}))


if __name__ == "__main__":
    main()
