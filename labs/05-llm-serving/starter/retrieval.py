"""Lab 5, step 4: choose the context passage for each question.

Reads {"passages": [{"id", "text"}], "questions": [{"id", "text"}]} as JSON
on stdin; prints {"answers": {question id: passage id}} as JSON on stdout.
Try it: python retrieval.py < practice.json
"""

import json
import sys


def main():
    task = json.load(sys.stdin)
    # TODO: embed passages and questions with nslab.llm.embed.MiniLM and pick,
    # for each question, the passage of highest cosine similarity.
    first = task["passages"][0]["id"]
    answers = {q["id"]: first for q in task["questions"]}
    print(json.dumps({"answers": answers}))


if __name__ == "__main__":
    main()
