#!/usr/bin/python3
"""Training recipes on one budget, in two parts (--parts):

  stories  SFT and every named recipe (plus --variant runs) fine-tune the real pretrained stories260K on
           the same short Alpaca records with the same seed and steps; each final model's response-only
           NLL per exit on held-out records comes from `sortedllama eval --task loss`.
  demo     the same runs train the demo's model from scratch on its synthetic set (configs/demo.json,
           data and tokenizer from `scripts/demo.sh --data-only`); each final model's exact match per
           exit on the demo's test questions comes from `sortedllama eval --task instruct`.

Writes OUT/recipes.json, OUT/recipes.md, OUT/recipes_loss.svg and OUT/recipes_demo_exact_match.svg
(per-exit curves of every run overlaid, drawn by `eval --plot --overlay`).

Driver of scripts/bench_recipes.sh; run that.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from bench_machine import machine

RECIPES = ["soft", "layerskip", "lite", "anchored"]
RECOMMENDED = "anchored"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, log, env=None):
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed (exit {p.returncode}); see {log}")


def short_records(alpaca, max_chars, n_train, n_held):
    """The first n_train + n_held records whose instruction, input and output total <= max_chars."""
    short = [r for r in json.load(open(alpaca))
             if len(r["instruction"]) + len(r["input"]) + len(r["output"]) <= max_chars]
    if len(short) < n_train + n_held:
        sys.exit(f"error: only {len(short)} records of at most {max_chars} characters")
    return short[:n_train], short[n_train:n_train + n_held]


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def runs_to_do(args):
    """(label, --set assignments) of every run: SFT, the recipes, then the variants."""
    todo = [("sft", ["method=sft"])] + [(r, ["method=soft", f"train.recipe={r}"]) for r in args.recipes]
    for v in args.variant:
        label, _, sets = v.partition("=")
        if not label or not sets:
            sys.exit(f"error: --variant {v}: expected LABEL=key=value,key=value")
        todo.append((label, ["method=soft"] + sets.split(",")))
    return todo


class Stories:
    """stories260K fine-tuned on short real Alpaca records; held-out response-only NLL per exit."""
    name, metric, plot_file = "stories", "loss", "recipes_loss.svg"

    def __init__(self, args):
        self.args, self.work = args, f"{args.work}/stories"
        os.makedirs(self.work, exist_ok=True)
        model = f"{self.work}/stories260K"
        if not os.path.exists(f"{model}/config.json"):
            src = f"{args.shared}/models/stories260K"
            run([args.bin, "convert", "--from", "llama2c", "--input", f"{src}/stories260K.bin", "--tokenizer",
                 f"{src}/tok512.model", "--out", model], f"{self.work}/convert.log")
        train, held_out = short_records(f"{args.shared}/data/alpaca/alpaca_data_cleaned.json", args.max_chars,
                                        args.train, args.held_out)
        write_jsonl(f"{self.work}/train.jsonl", train)
        self.held = f"{self.work}/held_out.jsonl"
        write_jsonl(self.held, held_out)
        self.config = f"{self.work}/config.json"
        json.dump({"model": model, "exits": "all",
                   "data": {"train": f"{self.work}/train.jsonl", "format": "alpaca", "max_seq_len": 512},
                   "train": {"batch_size": args.batch_size, "lr": args.lr, "max_steps": args.steps, "seed": args.seed},
                   "log": {"every": 50}}, open(self.config, "w"), indent=2)
        self.n_layers = json.load(open(f"{model}/config.json"))["num_hidden_layers"]
        self.train_sets = []
        self.seeds = [None]  # the config's seed
        self.eval_args = ["--task", "loss", "--data", self.held]
        self.settings = {"model": "stories260K (convert --from llama2c)", "n_layers": self.n_layers,
                         "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                         "schedule": "cosine, warmup 3%", "train_records": args.train,
                         "held_out_records": args.held_out, "max_chars": args.max_chars, "seed": args.seed,
                         "threads": args.threads}

    def targets(self, exits, sft):
        """Full model within 0.15 nats of SFT's; every exit <= L/2 at least 3 nats better."""
        L = self.n_layers
        full_gap = exits[str(L)] - sft[str(L)]
        shallow = {k: sft[k] - exits[k] for k in exits if int(k) <= L / 2}
        return {"full_gap_nats": full_gap, "shallow_gain_nats": shallow,
                "met": full_gap <= 0.15 and all(g >= 3 for g in shallow.values())}

    def target_cells(self, t):
        return [f"{t['full_gap_nats']:+.3f}", ", ".join(f"{k}: {v:+.2f}" for k, v in t["shallow_gain_nats"].items())]

    def describe(self):
        s = self.settings
        return ["## stories260K, real Alpaca: held-out loss", "",
                "Held-out response-only NLL (nats/token, `eval --task loss`) per exit after "
                f"{s['steps']} steps of {s['batch_size']} (lr {s['lr']}, cosine) on {s['train_records']} Alpaca "
                f"records of at most {s['max_chars']} characters; {s['held_out_records']} held-out records; seed "
                f"{s['seed']} for every run. Lower is better. Target: full model within 0.15 nats of SFT's, every "
                "exit ≤ L/2 at least 3 nats better than SFT's.", ""]

    target_headers = ["full − SFT", "exits ≤ L/2: SFT − run"]


class Demo:
    """The demo's model trained from scratch on its synthetic set; exact match per exit on its test set."""
    name, metric, plot_file = "demo", "exact_match", "recipes_demo_exact_match.svg"

    def __init__(self, args):
        self.args, self.work = args, f"{args.work}/demo"
        os.makedirs(self.work, exist_ok=True)
        data = os.path.abspath(args.demo_data)
        if not (os.path.exists(f"{data}/tokenizer.model") and os.path.exists(f"{data}/data/test.jsonl")):
            run([f"{ROOT}/scripts/demo.sh", "--data-only", "--out", data], f"{self.work}/data.log",
                env=dict(os.environ, SORTEDLLAMA=args.bin))
        self.config = f"{ROOT}/configs/demo.json"
        cfg = json.load(open(self.config))
        self.n_layers = cfg["init"]["num_hidden_layers"]
        steps = args.demo_steps or cfg["train"]["max_steps"]
        self.train_sets = [f"tokenizer={data}/tokenizer.model", f"data.train={data}/data/train.jsonl",
                           f"data.valid={data}/data/valid.jsonl", f"train.max_steps={steps}"]
        test = f"{data}/data/test.jsonl"
        self.eval_args = ["--task", "instruct", "--data", test, "--max-new-tokens", "16", "--batch-size", "50"]
        self.seeds = args.demo_seeds or [cfg["train"]["seed"]]
        self.settings = {"model": f"configs/demo.json ({self.n_layers} layers, from scratch)", "n_layers": self.n_layers,
                         "steps": steps, "batch_size": cfg["train"]["batch_size"], "lr": cfg["train"]["lr"],
                         "seeds": self.seeds, "test_questions": sum(1 for _ in open(test)),
                         "threads": args.threads}

    def targets(self, exits, sft):
        """Last exit within 2 points of SFT's exact match; exit 1 at least 4x SFT's."""
        L = str(self.n_layers)
        last_gap = 100 * (exits[L] - sft[L])
        ratio = exits["1"] / sft["1"] if sft["1"] > 0 else None  # None: SFT's exit 1 answers nothing
        shallow_ok = exits["1"] > 0 if ratio is None else ratio >= 4
        return {"last_gap_points": last_gap, "exit1_ratio": ratio, "met": last_gap >= -2 and shallow_ok}

    def target_cells(self, t):
        ratio = "SFT 0" if t["exit1_ratio"] is None else f"{t['exit1_ratio']:.1f}x"
        return [f"{t['last_gap_points']:+.1f}", ratio]

    def describe(self):
        s = self.settings
        return ["## The demo's synthetic set: exact match", "",
                f"Exact match per exit (`eval --task instruct`, greedy, {s['test_questions']} test questions) of the "
                f"demo's {s['n_layers']}-layer model trained from scratch by each run for {s['steps']} steps of "
                f"{s['batch_size']} (lr {s['lr']}, configs/demo.json), "
                + (f"seed {s['seeds'][0]} for every run" if len(s["seeds"]) == 1 else
                   f"each run once per seed ({', '.join(map(str, s['seeds']))}); every cell is the mean over the seeds "
                   "(per-seed values in recipes.json), and the targets are judged on the means")
                + ". Higher is better. Target: last exit within 2 points of SFT's, exit 1 at least 4x SFT's.", ""]

    target_headers = ["last − SFT (points)", "exit 1: run / SFT"]


def train_and_eval(args, part, label, sets):
    out = f"{part.work}/runs/{label}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    cmd = [args.bin, "--threads", str(args.threads), "finetune", "--config", part.config, "--set", f"out_dir={out}"]
    for s in part.train_sets + sets:
        cmd += ["--set", s]
    run(cmd, f"{part.work}/{label}.train.log")
    seconds = time.time() - t0
    ev = f"{part.work}/eval/{label}"
    run([args.bin, "eval", "--model", f"{out}/final", "--exits", "all", "--out", ev, "--label", label] + part.eval_args,
        f"{part.work}/{label}.eval.log")
    exits = json.load(open(f"{ev}/results.json"))["exits"]
    last = [json.loads(l) for l in open(f"{out}/metrics.jsonl") if '"train"' in l][-1]
    return {"label": label, "sets": sets, "train_seconds": seconds, "final_train_loss": last["loss"],
            f"exit_{part.metric}": {k: v[part.metric] for k, v in sorted(exits.items(), key=lambda kv: int(kv[0]))}}


def over_seeds(part, label, sets):
    """The run once per seed of the part: per-exit metric and train seconds averaged over the seeds."""
    runs = [train_and_eval(part.args, part, label if seed is None else f"{label}-seed{seed}",
                           sets + ([] if seed is None else [f"train.seed={seed}"])) for seed in part.seeds]
    key = f"exit_{part.metric}"
    mean = {k: sum(r[key][k] for r in runs) / len(runs) for k in runs[0][key]}
    out = {"label": label, "sets": sets, "train_seconds": sum(r["train_seconds"] for r in runs) / len(runs),
           "final_train_loss": sum(r["final_train_loss"] for r in runs) / len(runs), key: mean,
           "plotted_run": runs[0]["label"]}
    if len(runs) > 1:
        out["per_seed"] = [{"seed": seed, key: r[key]} for seed, r in zip(part.seeds, runs)]
    return out


def plot(args, part, results):
    """One chart of every run's per-exit metric (the first seed's): the recommended recipe's eval with the
    others overlaid."""
    main = next((r for r in results if r["label"] == RECOMMENDED), results[-1])["plotted_run"]
    overlay = []
    for r in results:
        if r["plotted_run"] != main:
            overlay += ["--overlay", f"{part.work}/eval/{r['plotted_run']}/results.json"]
    run([args.bin, "eval", "--model", f"{part.work}/runs/{main}/final", "--exits", "all", "--out", f"{part.work}/plot",
         "--label", main, "--plot"] + part.eval_args + overlay, f"{part.work}/plot.log")
    shutil.copy(f"{part.work}/plot/plot_{part.metric}.svg", f"{args.out}/{part.plot_file}")


def run_part(args, part):
    results = []
    for label, sets in runs_to_do(args):
        print(f"-- {part.name} {label}: {' '.join(sets)}", flush=True)
        results.append(over_seeds(part, label, sets))
        print("   " + " ".join(f"{k}:{v:.3f}" for k, v in results[-1][f"exit_{part.metric}"].items()), flush=True)
    plot(args, part, results)
    sft = next(r for r in results if r["label"] == "sft")[f"exit_{part.metric}"]
    targets = {r["label"]: part.targets(r[f"exit_{part.metric}"], sft) for r in results if r["label"] != "sft"}
    return {"settings": part.settings, "results": results, "targets": targets, "plot": part.plot_file}


def part_table(part, doc):
    L = doc["settings"]["n_layers"]
    lines = part.describe()
    lines += ["| run | " + " | ".join(f"exit {k}" + (" (full)" if k == L else "") for k in range(1, L + 1)) + " | " +
              " | ".join(part.target_headers) + " | target met | train s |",
              "|---|" + "---:|" * (L + 4)]
    for r in doc["results"]:
        t = doc["targets"].get(r["label"])
        cells = [f"{r[f'exit_{part.metric}'][str(k)]:.3f}" for k in range(1, L + 1)]
        cells += part.target_cells(t) + ["yes" if t["met"] else "no"] if t else ["—"] * 3
        name = r["label"] + (" (recommended)" if r["label"] == RECOMMENDED else "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['train_seconds']:.0f} |")
    lines += ["", "Settings per run (`--set`): " + "; ".join(f"{r['label']}: `{' '.join(r['sets'])}`"
                                                            for r in doc["results"]),
              "", f"Plot: {doc['plot']} (per-exit {part.metric} of every run).", ""]
    return lines


def write_markdown(path, doc, parts):
    lines = ["# Training recipes on one budget", "",
             f"Machine: {doc['machine']['cpu']} ({doc['machine']['cores']} cores), {doc['machine']['sortedllama']}", "",
             f"Command: `{doc['command']}`", ""]
    for part in parts:
        lines += part_table(part, doc["parts"][part.name])
    open(path, "w").write("\n".join(lines))


PARTS = {"stories": Stories, "demo": Demo}


def seed_list(text):
    """--demo-seeds: comma-separated non-negative integers."""
    try:
        seeds = [int(x) for x in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or any(x < 0 for x in seeds):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers, got {text!r}")
    return seeds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--shared", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--parts", type=lambda s: s.split(","), default=list(PARTS))
    ap.add_argument("--steps", type=int, default=200, help="stories: optimizer steps")
    ap.add_argument("--batch-size", type=int, default=16, help="stories: sequences per step")
    ap.add_argument("--lr", type=float, default=1e-3, help="stories: peak learning rate")
    ap.add_argument("--train", type=int, default=4000, help="stories: training records")
    ap.add_argument("--held-out", type=int, default=200, help="stories: held-out records")
    ap.add_argument("--max-chars", type=int, default=160, help="stories: longest record kept")
    ap.add_argument("--seed", type=int, default=42, help="stories: seed of every run")
    ap.add_argument("--demo-data", default=f"{ROOT}/runs/demo", help="demo: data/ and tokenizer.model (made if absent)")
    ap.add_argument("--demo-steps", type=int, default=0, help="demo: optimizer steps (0: configs/demo.json's)")
    ap.add_argument("--demo-seeds", type=seed_list, default=None,
                    help="demo: train every run once per seed (comma-separated) and average; default: the config's")
    ap.add_argument("--threads", type=int, default=0, help="finetune's intra-op threads (0: one per core)")
    ap.add_argument("--recipes", type=lambda s: s.split(","), default=RECIPES)
    ap.add_argument("--variant", action="append", default=[], help="LABEL=key=value,key=value: one more soft run")
    ap.add_argument("--command", default="scripts/bench_recipes.sh")
    args = ap.parse_args()
    for p in args.parts:
        if p not in PARTS:
            sys.exit(f"error: --parts {p}: expected a comma-separated list of {', '.join(PARTS)}")
    os.makedirs(args.out, exist_ok=True)
    parts = [PARTS[p](args) for p in args.parts]
    doc = {"machine": machine(args.bin), "command": args.command,
           "parts": {part.name: run_part(args, part) for part in parts}}
    json.dump(doc, open(f"{args.out}/recipes.json", "w"), indent=2)
    write_markdown(f"{args.out}/recipes.md", doc, parts)
    print(open(f"{args.out}/recipes.md").read())


if __name__ == "__main__":
    main()
