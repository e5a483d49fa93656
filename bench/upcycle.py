"""Dense -> MoE upcycling against training the MoE from scratch, on the pydoc corpus.

Three real runs through the CLI in one data home (skipped when a run of that name is
already completed there): a dense model (`profiles/pydoc_top2.toml` with kind = dense),
a top-2 MoE `--init-from` its last checkpoint (upcycled: experts as wide as the dense
FFN, `moe.expert_hidden = 384`), and the same MoE from a random init. Then a table of
validation losses at every evaluation and `upcycle-vs-scratch.png` (training and
validation curves; the upcycled curves are drawn after the dense run's steps).

    .venv/bin/moedesk data prepare --builtin pydoc --vocab-size 2048 --out data/pydoc
    .venv/bin/python bench/upcycle.py --home /tmp/upcycle [--steps 200] [--png docs/img/x.png]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from moedesk.plots.curves import Curves, loss_curves  # noqa: E402
from moedesk.store import Reader  # noqa: E402

PROFILE = "profiles/pydoc_top2.toml"


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "moedesk", *args], cwd=REPO, check=True)


def completed(home: Path, name: str):
    if not (home / "moedesk.db").exists():
        return None
    return next((r for r in Reader(home / "moedesk.db").runs()
                 if r.name == name and r.status == "completed"), None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args()
    common = ["--home", str(args.home), "--set", f"train.steps={args.steps}", "--set",
              "train.warmup_steps=20", "--set", "train.eval_every=25", "--set",
              "train.sample_every=0", "--set", f"checkpoint.every={args.steps}", "--set",
              "checkpoint.keep_best=''"]
    moe = ["--set", "moe.expert_hidden=384"]
    if not completed(args.home, "pydoc-dense-1"):
        cli("run", PROFILE, "--set", "kind=dense", "--set", "name=pydoc-dense", *common)
    dense = completed(args.home, "pydoc-dense-1")
    if not completed(args.home, "pydoc-upcycled"):
        cli("run", PROFILE, "--name", "pydoc-upcycled", "--init-from", str(dense.id), *moe,
            *common)
    if not completed(args.home, "pydoc-scratch"):
        cli("run", PROFILE, "--name", "pydoc-scratch", *moe, *common)
    reader = Reader(args.home / "moedesk.db")
    runs = {name: completed(args.home, name)
            for name in ("pydoc-dense-1", "pydoc-upcycled", "pydoc-scratch")}
    val = {name: dict(reader.series(r.id, "val/loss")) for name, r in runs.items()}
    print(f"| step | dense | MoE upcycled from dense@{args.steps} | MoE from scratch |")
    print("| --- | --- | --- | --- |")
    for step in sorted(val["pydoc-scratch"]):
        print(f"| {step} | {val['pydoc-dense-1'].get(step, float('nan')):.4f} | "
              f"{val['pydoc-upcycled'][step]:.4f} | {val['pydoc-scratch'][step]:.4f} |")
    if args.png:
        shift = {"pydoc-dense-1": 0, "pydoc-upcycled": args.steps, "pydoc-scratch": 0}
        curves = [Curves(name, 0, [(s + shift[name], v) for s, v in
                                   reader.series(r.id, "train/loss")],
                         [(s + shift[name], v) for s, v in reader.series(r.id, "val/loss")])
                  for name, r in runs.items()]
        print(loss_curves(curves, args.png, "pydoc: dense, then upcycled to top-2 MoE, "
                                            "vs the MoE from scratch"))


if __name__ == "__main__":
    main()
