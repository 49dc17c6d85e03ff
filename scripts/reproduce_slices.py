"""Slices of the real data for `scripts/reproduce_paper.sh --small` (stdlib only).

Writes into --out, in the source files' own formats (the pipeline then runs `data prepare` on them,
as it does on full-size files):
  alpaca.json              the first N Alpaca records of at most --max-chars characters
                           (instruction + input + output), so that they fit stories260K's context
                           with its 512-token vocabulary
  triviaqa-train.jsonl     the first N questions of the TriviaQA file (no TriviaQA training split
                           is stored on this machine: train and test are disjoint slices of one file)
  triviaqa-test.jsonl      the last N questions of the same file
  pandalm.json             the N PandaLM instructions with the shortest instruction + input (of
                           those whose instruction has 16 characters or more), in the file's order
                           (short prompts keep CPU judging affordable)
  slices.json              what was taken from where (sha256 of each source)
"""
import argparse
import hashlib
import json
import os


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", required=True, help="the shared data directory (../shared/data)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--alpaca", type=int, required=True)
    ap.add_argument("--max-chars", type=int, default=240)
    ap.add_argument("--triviaqa-train", type=int, required=True)
    ap.add_argument("--triviaqa-test", type=int, required=True)
    ap.add_argument("--pandalm", type=int, required=True)
    args = ap.parse_args()

    src = {
        "alpaca": os.path.join(args.shared, "alpaca", "alpaca_data_cleaned.json"),
        "triviaqa": os.path.join(args.shared, "triviaqa", "triviaqa_unfiltered_test_1000.jsonl"),
        "pandalm": os.path.join(args.shared, "pandalm", "testset-inference-v1.json"),
    }
    for name, path in src.items():
        if not os.path.isfile(path):
            raise SystemExit(f"error: {name} source file {path} does not exist")
    os.makedirs(args.out, exist_ok=True)

    alpaca = json.load(open(src["alpaca"]))
    short = [r for r in alpaca if len(r["instruction"]) + len(r.get("input") or "") + len(r["output"]) <= args.max_chars]
    if len(short) < args.alpaca:
        raise SystemExit(f"error: only {len(short)} Alpaca records have at most {args.max_chars} characters")
    write_atomic(os.path.join(args.out, "alpaca.json"), json.dumps(short[:args.alpaca], indent=1) + "\n")

    lines = [l for l in open(src["triviaqa"]) if l.strip()]
    if args.triviaqa_train + args.triviaqa_test > len(lines):
        raise SystemExit(f"error: {src['triviaqa']} has {len(lines)} questions, fewer than "
                         f"{args.triviaqa_train} + {args.triviaqa_test}")
    write_atomic(os.path.join(args.out, "triviaqa-train.jsonl"), "".join(lines[:args.triviaqa_train]))
    write_atomic(os.path.join(args.out, "triviaqa-test.jsonl"), "".join(lines[len(lines) - args.triviaqa_test:]))

    pandalm = json.load(open(src["pandalm"]))
    usable = [i for i, r in enumerate(pandalm) if len(r["instruction"].strip()) >= 16]
    order = sorted(usable,
                   key=lambda i: (len(pandalm[i]["instruction"]) + len(pandalm[i].get("input") or ""), i))
    keep = sorted(order[:args.pandalm])
    write_atomic(os.path.join(args.out, "pandalm.json"), json.dumps([pandalm[i] for i in keep], indent=1) + "\n")

    manifest = {
        "alpaca": {"source": src["alpaca"], "sha256": sha256(src["alpaca"]), "records": args.alpaca,
                   "rule": f"first {args.alpaca} records with instruction+input+output <= {args.max_chars} chars"},
        "triviaqa-train": {"source": src["triviaqa"], "sha256": sha256(src["triviaqa"]),
                           "records": args.triviaqa_train, "rule": f"first {args.triviaqa_train} questions"},
        "triviaqa-test": {"source": src["triviaqa"], "sha256": sha256(src["triviaqa"]),
                          "records": args.triviaqa_test, "rule": f"last {args.triviaqa_test} questions"},
        "pandalm": {"source": src["pandalm"], "sha256": sha256(src["pandalm"]), "records": args.pandalm,
                    "rule": f"the {args.pandalm} shortest instructions (instruction+input; instruction >= 16 chars)"},
    }
    write_atomic(os.path.join(args.out, "slices.json"), json.dumps(manifest, indent=1) + "\n")
    for name, m in manifest.items():
        print(f"{name}: {m['rule']} of {m['source']}")


if __name__ == "__main__":
    main()
