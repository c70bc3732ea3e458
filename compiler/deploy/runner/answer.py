"""On the board: answer text with this bundle's library, from Python.

    ./run.sh --text "a sentence" ["another" ...]

Prints, per text, the library's answer: the logits (a classifier) or the sentence embedding, tokenized
with the bundle's tokenizer.json. Needs the squeezeedge runtime on the board: numpy, TVM's runtime and
tokenizers (requirements-board.txt) and the squeezeedge wheel without its compile dependencies
(`pip install --no-deps`); README.md says how.
"""

import os
import sys


def main() -> int:
    texts = sys.argv[1:]
    if not texts:
        print('usage: ./run.sh --text "a sentence" ["another" ...]', file=sys.stderr)
        return 2
    try:
        from squeezeedge.errors import SqueezeEdgeError
        from squeezeedge.runtime import load
    except ImportError as exc:
        print(f"answer.py: {exc.name} is not installed: pip install -r requirements-board.txt, then "
              "pip install --no-deps squeezeedge-*.whl (README.md, 'From Python')", file=sys.stderr)
        return 3
    try:
        model = load(os.path.dirname(os.path.abspath(__file__)), truncate=os.environ.get("SE_TRUNCATE") == "1")
        for text in texts:
            print(text, "->", " ".join(f"{v:.6g}" for v in model(text)))
    except SqueezeEdgeError as exc:
        print(f"answer.py: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
