"""`moedesk data prepare|show`: tokenized datasets (docs/data.md), over moedesk/data/.

`prepare` trains a byte-level BPE locally (Hugging Face `tokenizers`, imported inside
the command so `moedesk --help` stays fast) and writes a prepared folder that a profile
names with `[data] source = "tokens"`, `path = DIR`; a Rich progress bar follows the
encoding. `show` prints a folder's manifest. Bad input is a one-line error, exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from moedesk.cli.app import JsonOpt, app, console, err_console, fail, print_json, styled
from moedesk.data.builtin import BUILTINS
from moedesk.data.manifest import ManifestError, read_manifest

data_app = typer.Typer(help="Prepare and inspect tokenized datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("prepare")
def prepare(
    texts: Annotated[list[Path] | None, typer.Argument(
        help="UTF-8 text files to train on (or --builtin).", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder to write (must be new or empty).",
                                      show_default=False)] = ...,
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="Tokens in the vocabulary "
                                            "(the 256 bytes, <|endoftext|>, merges).")] = 8192,
    val: Annotated[list[Path] | None, typer.Option(
        "--val", help="Held-out text files (repeatable); default: the tail --val-fraction "
                      "of the text.", show_default=False)] = None,
    val_fraction: Annotated[float, typer.Option(help="Share held out without --val.")] = 0.1,
    builtin: Annotated[str | None, typer.Option(
        help=f"A corpus every Python has: {', '.join(BUILTINS)} (pydoc_data.topics).",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a byte-level BPE tokenizer locally and write train.bin, val.bin, manifest."""
    from moedesk.data.prepare import PrepareError
    from moedesk.data.prepare import prepare as run_prepare

    columns = (TextColumn("{task.description:<20}"), BarColumn(), TaskProgressColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True,
                  disable=as_json or not err_console.is_terminal) as progress:
        tasks: dict[str, int] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=max(total, 1))
            progress.update(tasks[stage], completed=done, total=max(total, 1))

        try:
            manifest = run_prepare(texts or [], out, vocab_size, val, val_fraction, builtin,
                                   force, report)
        except PrepareError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            fail("interrupted; nothing was written", code=130)
    if as_json:
        print_json(manifest.data)
        return
    _print_manifest(manifest)
    console.print(styled("use it with ", ('[data] source = "tokens"', "bold"),
                         f', path = "{out}" and model.vocab_size = {manifest.vocab_size}'))


@data_app.command("show")
def show(folder: Annotated[Path, typer.Argument(help="A prepared folder.")],
         as_json: JsonOpt = False) -> None:
    """A prepared folder's vocabulary, token counts and sources."""
    try:
        manifest = read_manifest(folder)
    except ManifestError as exc:
        fail(str(exc))
    if as_json:
        print_json(manifest.data)
        return
    _print_manifest(manifest)


def _print_manifest(manifest) -> None:
    d = manifest.data
    console.print(styled((str(manifest.folder), "bold"),
                         f": vocabulary {manifest.vocab_size} ({d['tokenizer']}, {manifest.dtype}),"
                         f" train {d['train']['tokens']:,} tokens in {d['train']['documents']}"
                         f" documents, val {d['val']['tokens']:,} tokens ({d['val']['split']})"))
    for source in d["sources"]:
        console.print(f"  {source['path']}: {source['bytes']:,} bytes, sha256 "
                      f"{source['sha256'][:12]}... ({source['split']})")


__all__ = ["prepare", "show"]
