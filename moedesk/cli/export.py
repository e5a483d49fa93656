"""`moedesk export RUN[@STEP|@best] --out DIR`: a transformers folder (docs/export.md).

A few lines over `moedesk.export.hf.export_checkpoint` (torch and transformers are
imported inside the command). The checkpoint is found like every other reference
(`launch.checkpoint_of`: `split_ref`, `resolve_checkpoint`, verified). Prints the target
architecture, the measured logit difference, and anything the target could not express
with its measured effect; `--strict` refuses such an export. Errors: one line, exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moedesk.cli.app import HomeOpt, JsonOpt, app, console, fail, home_of, print_json, styled
from moedesk.profiles.schema import LM_KINDS
from moedesk.runner.launch import RunError, checkpoint_of
from moedesk.store import StoreError


@app.command()
def export(
    ref: Annotated[str, typer.Argument(help="RUN, RUN@STEP or RUN@best (run id or name).",
                                       show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Folder to write (new or empty).",
                                      show_default=False)] = ...,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse an export that cannot be "
                                         "exact (routing bias, capacity dropping).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Write a run's checkpoint as a transformers model (Llama or Mixtral) with its tokenizer."""
    try:
        info, ckpt = checkpoint_of(home_of(home), ref, LM_KINDS, "export (a language model)")
    except (RunError, StoreError) as exc:
        fail(str(exc))
    from moedesk.export.hf import ExportError, export_checkpoint

    try:
        report = export_checkpoint(ckpt.path, out, Path(info.row["run_dir"]), strict, force,
                                   source={"run": info.id, "name": info.name})
    except ExportError as exc:
        fail(str(exc))
    if as_json:
        print_json(report.to_dict())
        return
    console.print(styled(f"exported run {info.id} ({info.name}) step {ckpt.step} as ",
                         (report.architecture, "bold"), f" to {out}; logits match moedesk "
                         f"within {report.max_abs_logit_diff:.2g}"))
    for a in report.approximations:
        console.print(styled(
            "  ", ("not expressible:", "yellow"),
            f" {a['key']}: {a['what']}; measured on {a['tokens']} tokens: max |logit diff|"
            f" {a['max_abs_logit_diff']:.3g}, loss {a['loss_moedesk']:.4f} ->"
            f" {a['loss_exported']:.4f}, top-1 agreement {a['top1_agreement']:.1%}"))
    for note in report.notes:
        console.print(f"  note: {note}")


__all__ = ["export"]
