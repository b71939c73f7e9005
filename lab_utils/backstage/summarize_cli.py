"""`python -m lab_utils summarize`: summaries on the command line."""

# Dialogues from a text file (a blank line between them), a CSV column or standard input, summarized by the original
# model, with an adapter (--adapter), or by a full model folder (--merged), on PyTorch or CTranslate2 (--engine).

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import re
import sys
from pathlib import Path

from ..config import Settings
from ..errors import LabError
from ..files import check_output, digest, digest_of, write_file

BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))  # fmt: skip
SEPARATORS = ",;\t|"  # what spreadsheets write: ',' and, where ',' is the decimal mark, ';'; tabs; pipes
csv.field_size_limit(2**31 - 1)  # a dialogue may be long: Python's default limit is 128 kB a field


def read_input_bytes(source: str) -> tuple[bytes, str]:
    """The raw bytes of a file, or of standard input ('-'), and how to name it in messages."""
    if source == "-":
        if sys.stdin is None or sys.stdin.closed:
            raise LabError("standard input is closed", "give a file of dialogues, or pipe them in: ... | summarize -")
        if sys.stdin.isatty():
            print("Reading dialogues from the terminal: a blank line between them, Ctrl-D to end.", file=sys.stderr)
        stream = getattr(sys.stdin, "buffer", None)
        return (stream.read() if stream else sys.stdin.read().encode("utf-8")), "standard input"
    path = Path(source).expanduser()
    if not path.is_file():
        what = "a folder" if path.is_dir() else "not a file"
        raise LabError(f"{source} is {what}", "give a text or CSV file of dialogues, or - for standard input")
    try:
        return path.read_bytes(), source
    except OSError as exc:
        raise LabError(f"{source} cannot be read: {exc.strerror}", "make it readable for you") from exc


def decode(data: bytes, name: str, encoding: str | None = None) -> str:
    """Text from bytes: `encoding` if given, else by its byte-order mark (UTF-8/16/32), else UTF-8; line ends as \\n."""
    if data.startswith(b"PK\x03\x04"):
        raise LabError(f"{name} is a zip archive (an Excel workbook?), not text",
                       "save it as 'CSV UTF-8' and give that")  # fmt: skip
    encoding = encoding or next((enc for bom, enc in BOMS if data.startswith(bom)), "utf-8")
    fix = "save it as UTF-8, or name its encoding with --encoding (e.g. cp1252; utf-16-le or utf-16-be without a BOM)"
    try:
        text = data.decode(encoding)
    except LookupError as exc:
        raise LabError(f"--encoding {encoding!r} is not an encoding Python knows", "use e.g. utf-8 or cp1252") from exc
    except UnicodeError as exc:  # a decoding error, or a codec that does not decode bytes (undefined, punycode)
        shown = "UTF-8" if encoding == "utf-8" else encoding
        raise LabError(f"{name} is not {shown} text ({exc})", fix) from exc
    if "\0" in text:
        raise LabError(f"{name} is not text (it holds NUL bytes)", fix)
    return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def read_csv_column(text: str, name: str, column: str, separator: str | None = None) -> list[str]:
    """One column of a CSV as spreadsheets save it."""
    # the separator found in its header (',', ';', tab or '|') unless given, quoted fields over several lines, the
    # column matched without regard to case or surrounding spaces
    header = text.split("\n", 1)[0]
    separator = separator or max(SEPARATORS, key=header.count)
    try:
        rows = [row for row in csv.reader(io.StringIO(text, newline=""), delimiter=separator, strict=True) if row]
    except csv.Error as exc:
        raise LabError(f"{name} cannot be read as CSV ({exc})", "check its quoting, or give a text file") from exc
    if not rows:
        raise LabError(f"{name} is empty", "give a CSV with a header row and a dialogue column")
    names = [h.strip().lower() for h in rows[0]]
    if names.count(column.strip().lower()) != 1:
        found = ", ".join(repr(h) for h in rows[0])
        raise LabError(f"{name} has no column {column!r}, or several (its header, split at {separator!r}: {found})",
                       "choose the dialogue column with --column")  # fmt: skip
    at = names.index(column.strip().lower())
    if bad := next((n for n, row in enumerate(rows[1:], start=2) if len(row) != len(names)), None):
        raise LabError(f"{name}: row {bad} has not the header's {len(names)} fields (unquoted separators?)",
                       "quote fields that hold the separator, as spreadsheets do, or give a text file")  # fmt: skip
    return [row[at] for row in rows[1:]]


def read_dialogues(source: str, column: str | None = None, encoding: str | None = None) -> list[str]:
    """Dialogues from a CSV (its `column`), a text file (dialogues separated by a blank line), or '-' (stdin)."""
    data, name = read_input_bytes(source)
    text = decode(data, name, encoding)
    suffix, header = Path(source).suffix.lower(), text.split("\n", 1)[0].lower()
    csv_on_stdin = source == "-" and "dialogue" in re.split(r"[,;\t|]", header)  # a CSV piped in, not a dialogue
    if suffix in (".csv", ".tsv") or column is not None or csv_on_stdin:
        dialogues = read_csv_column(text, name, column or "dialogue", "\t" if suffix == ".tsv" else None)
        if empty := [i + 2 for i, d in enumerate(dialogues) if not d.strip()]:
            raise LabError(f"{name}: row {empty[0]} has an empty dialogue ({len(empty)} such rows)",
                           "fill or remove those rows")  # fmt: skip
    else:
        dialogues = [block for block in re.split(r"\n[ \t]*\n", text) if block.strip()]
    if not dialogues:
        raise LabError(f"{name} holds no dialogue", "give dialogues separated by a blank line (or a CSV column)")
    return [d.strip() for d in dialogues]


def load_tokenizer(settings: Settings, merged: str | None):
    """A merged/full model folder's own tokenizer when it saved one, else the original model's."""
    from transformers import AutoTokenizer

    own = merged and (Path(merged) / "tokenizer_config.json").is_file()
    return AutoTokenizer.from_pretrained(merged if own else settings.model_path_or_id)


def load_for_serving(settings: Settings, adapter: str | None = None, merged: str | None = None):
    """(model, tokenizer): a merged/full model folder, the original model with an adapter, or the original model."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from ..models import check_adapter_dir, check_model_dir, shape_model

    tokenizer = load_tokenizer(settings, merged)
    if merged:
        folder = check_model_dir(merged, fix="give a folder saved with save_pretrained (a merged or full model)")
        return AutoModelForSeq2SeqLM.from_pretrained(folder, dtype=torch.float32), tokenizer
    if adapter:  # checked on the architecture alone: a wrong folder is said before the base model loads
        fix = "give the folder of a LoRA adapter for this model"
        check_adapter_dir(adapter, shape_model(settings.model_path_or_id), settings.model_id, fix=fix)
    model = AutoModelForSeq2SeqLM.from_pretrained(settings.model_path_or_id, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
    return model, tokenizer


def conversion_cache(settings: Settings, engine: str, adapter: str | None, folder: str | None) -> Path:
    """Where the CTranslate2 conversion of this model is kept: under `LAB_WORK_DIR/ctranslate2/`."""
    # named by the digest of its sources (the model, the adapter, the engine), so that a changed source converts again
    sources = [p for p in (folder, adapter, None if folder else settings.model_path_or_id) if p and Path(p).is_dir()]
    key = digest_of([engine, *map(digest, sources), settings.model_path_or_id])
    return settings.work_path / "ctranslate2" / f"{Path(str(folder or adapter or 'original')).name}-{key[:16]}"


def summarize_command(settings: Settings, args) -> None:
    """`python -m lab_utils summarize`: read dialogues, summarize them in batches, print or write a CSV."""
    from ..engines import CT2_QUANTIZATION, cached_ctranslate2
    from ..generation import summarize

    # the output first: a bad path costs nothing, and the input is never overwritten
    output = args.output and check_output(args.output, "the output (--output)", inputs=[args.input])
    dialogues = read_dialogues(args.input, args.column, args.encoding)
    if args.engine in CT2_QUANTIZATION:  # the PyTorch model is loaded only to be converted
        tokenizer = load_tokenizer(settings, args.merged)
        cache = conversion_cache(settings, args.engine, args.adapter, args.merged)
        model = cached_ctranslate2(cache, lambda: load_for_serving(settings, args.adapter, args.merged)[0], tokenizer,
                                   args.engine)  # fmt: skip
    else:
        model, tokenizer = load_for_serving(settings, args.adapter, args.merged)
    with contextlib.redirect_stdout(sys.stderr):  # standard output holds the summaries alone (notes go to stderr)
        summaries = summarize(model, tokenizer, dialogues, settings, progress=sys.stderr.isatty())
    if not output:
        print("\n".join(summaries))
        return
    with write_file(output) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("dialogue", "summary"), *zip(dialogues, summaries)])
    print(f"Wrote {len(summaries)} summaries to {output}")
