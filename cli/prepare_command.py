"""``pipewave prepare``: local text files -> a tokenized dataset folder for ``data: {kind: tokens}``.

A cluster-side command: it imports the service (numpy, tokenizers, pyarrow, transformers) only
when it runs, and ends with one line naming the server install where they are missing
(``needs_server``). Bad input ends with one readable line on stderr and exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipewave.cli.app import err_console, error_text, fail, interrupted
from pipewave.cli.server_commands import needs_server


def register(app: typer.Typer) -> None:
    """Add ``prepare`` to ``app``."""
    app.command()(prepare)


@needs_server
def prepare(
    inputs: Annotated[list[Path], typer.Argument(
        help=".txt (a document per file), .jsonl (a text field per line) or .parquet (a text column)",
        show_default=False)],
    tokenizer: Annotated[str, typer.Option(
        "--tokenizer", "-t", help="a tokenizer.json file, a transformers tokenizer folder, or 'bytes'",
        show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="the dataset folder to write",
                                         show_default=False)],
    val_fraction: Annotated[float, typer.Option(
        help="share of the documents held out for evaluation (val.bin)")] = 0.01,
    text_field: Annotated[str, typer.Option(help="the .jsonl field / .parquet column of the text")] = "text",
    eos_token: Annotated[str | None, typer.Option(
        help="the token that ends each document (default: the tokenizer's own)")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace the dataset in a non-empty folder")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Tokenize local text files into a dataset folder (train.bin, val.bin, meta.json) that a job
    reads with data: {kind: tokens, path: DIR}."""
    from pipewave.service.datasets import DatasetError
    from pipewave.service.datasets import prepare as run_prepare

    try:
        meta = run_prepare(inputs, tokenizer, output, val_fraction=val_fraction, text_field=text_field,
                           force=force, eos_token=eos_token, progress=not quiet)
    except KeyboardInterrupt:
        interrupted()
    except (DatasetError, OSError) as err:
        fail(error_text(err))
    c, t = meta.counts, meta.tokenizer
    source = f" {t.source}" if t.source else ""
    eos = f" ({t.eos_token})" if t.eos_token else ""
    print(f"prepared {meta.path}")
    print(f"  tokens     {c.train_tokens + c.val_tokens:,} (train {c.train_tokens:,}, val {c.val_tokens:,})")
    print(f"  documents  {c.documents:,} (train {c.train_documents:,}, val {c.val_documents:,}) "
          f"from {len(meta.sources)} file{'s' if len(meta.sources) != 1 else ''}")
    print(f"  tokenizer  {t.kind}{source}: vocab {t.vocab_size:,}, eos {t.eos_id}{eos}, {meta.dtype}")
    err_console.print(f"[dim]train on it with data: {{kind: tokens, path: {meta.path}}}[/dim]",
                      highlight=False)

