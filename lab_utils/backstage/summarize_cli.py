"""`python -m lab_utils summarize [--adapter DIR | --merged DIR] [--engine E] [FILE|-]`: summaries, on the command line.

Dialogues come from a text file (separated by a blank line), a CSV column, or standard input; they are summarized in
batches with the lab's prompt and generation settings by the original model, the original model with a LoRA adapter,
or a full model folder (a merged adapter, the instruct model), on PyTorch or on CTranslate2 (`engines.ENGINES`).
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import sys
from pathlib import Path

from ..config import Settings
from ..errors import LabError
from ..outputs import check_output_file, user_path

BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))  # fmt: skip
SEPARATORS = ",;\t|"  # what spreadsheets write: ',' and, where ',' is the decimal mark, ';'; tabs; pipes


def read_input_bytes(source: str) -> tuple[bytes, str]:
    """The raw bytes of a file, or of standard input ('-'), and how to name it in messages."""
    if source == "-":
        stream = sys.stdin
        if stream is None or stream.closed:
            raise LabError("standard input is closed", "give a file of dialogues, or pipe them in: ... | summarize -")
        if stream.isatty():
            print("Reading dialogues from the terminal: a blank line between them, Ctrl-D to end.", file=sys.stderr)
        try:
            data = stream.buffer.read() if hasattr(stream, "buffer") else stream.read().encode("utf-8")
        except (OSError, ValueError) as exc:  # a stream closed under us, or not readable
            raise LabError(f"standard input cannot be read ({exc})", "give a file of dialogues instead") from None
        return data, "standard input"
    path = user_path(source)
    if path.is_dir():
        raise LabError(f"{source} is a folder", "give a text or CSV file of dialogues, or - for standard input")
    if not path.is_file():
        raise LabError(f"{source} is not a file", "give a text or CSV file of dialogues, or - for standard input")
    try:
        return path.read_bytes(), source
    except OSError as exc:
        raise LabError(f"{source} cannot be read: {exc.strerror}", "make it readable for you") from None


def decode(data: bytes, name: str, encoding: str | None = None) -> str:
    """Text from bytes: `encoding` if given, else by its byte-order mark (UTF-8/16/32, as Windows tools write), else
    UTF-8. Line ends of every system (\\r\\n, \\r) become \\n. What cannot be text is refused with what was found."""
    if data.startswith(b"PK\x03\x04"):
        raise LabError(
            f"{name} is a zip archive (an Excel workbook?), not text", "save it as 'CSV UTF-8' and give that"
        )
    if encoding is None:
        encoding = next((enc for bom, enc in BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except LookupError:
        raise LabError(f"--encoding {encoding!r} is not an encoding Python knows", "use e.g. utf-8 or cp1252") from None
    except UnicodeDecodeError as exc:
        if b"\0" in data:
            raise LabError(f"{name} is not text (it holds NUL bytes)", "give a text or CSV file of dialogues") from None
        raise LabError(
            f"{name} is not {'UTF-8' if encoding == 'utf-8' else encoding} text ({exc.reason} at byte {exc.start}: "
            f"{data[exc.start : exc.start + 4]!r})",
            "save it as UTF-8, or name its encoding, e.g. --encoding cp1252 (Windows, Western European)",
        ) from None
    if "\0" in text:
        raise LabError(f"{name} is not text (it holds NUL bytes)", "give a text or CSV file of dialogues")
    return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def read_csv_column(text: str, name: str, column: str, separator: str | None = None) -> list[str]:
    """One column of a CSV as spreadsheets save it: the separator found in its header (',', ';', tab or '|') unless
    given, quoted fields over several lines, the column matched without regard to case or surrounding spaces."""
    header = text.split("\n", 1)[0]
    if separator is None:
        counts = {sep: header.count(sep) for sep in SEPARATORS}
        separator = max(counts, key=counts.get) if any(counts.values()) else ","
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=separator, strict=True))
    except csv.Error as exc:
        raise LabError(f"{name} cannot be read as CSV ({exc})", "save it again from a spreadsheet as CSV") from None
    if not rows:
        raise LabError(f"{name} is empty", "give a CSV with a header row and a dialogue column")
    names = [h.strip() for h in rows[0]]
    matches = [i for i, h in enumerate(names) if h == column] or [
        i for i, h in enumerate(names) if h.lower() == column.strip().lower()
    ]
    if len(matches) != 1:
        found = ", ".join(repr(h) for h in names)
        why = "has no column" if not matches else "has more than one column"
        raise LabError(
            f"{name} {why} {column!r} (its header, split at {separator!r}: {found})",
            "choose the dialogue column with --column",
        )
    at = matches[0]
    short = [n + 1 for n, row in enumerate(rows[1:], start=1) if row and len(row) <= at]
    if short:
        raise LabError(
            f"{name}: line {short[0]} has no {column!r} field ({len(short)} such row(s))",
            "give every row as many fields as the header",
        )
    return [row[at] for row in rows[1:] if row]


def read_dialogues(source: str, column: str = "dialogue", encoding: str | None = None) -> list[str]:
    """Dialogues from a CSV/TSV (its `column`), a text file (dialogues separated by a blank line), or '-' (stdin)."""
    data, name = read_input_bytes(source)
    text = decode(data, name, encoding)
    suffix = Path(source).suffix.lower()
    if suffix in (".csv", ".tsv"):
        dialogues = read_csv_column(text, name, column, "\t" if suffix == ".tsv" else None)
    else:
        dialogues = [block.strip() for block in re.split(r"\n[ \t]*\n", text)]
    empty = sum(not d.strip() for d in dialogues)
    dialogues = [d.strip() for d in dialogues if d.strip()]
    if not dialogues:
        raise LabError(f"{name} holds no dialogue", "give dialogues separated by a blank line (or a CSV column)")
    if empty and suffix in (".csv", ".tsv"):
        print(f"Note: {empty} row(s) of {name} have an empty {column!r}; they are skipped", file=sys.stderr)
    return dialogues


def is_summaries_csv(path: Path) -> bool:
    """True for a CSV this command wrote earlier (its header is `dialogue,summary`): one it may replace."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.readline().rstrip("\r\n") == "dialogue,summary"
    except (OSError, UnicodeDecodeError):
        return False


def load_for_serving(settings: Settings, adapter: str | None = None, merged: str | None = None):
    """(model, tokenizer): a merged/full model folder, the original model with an adapter, or the original model."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from ..models import check_adapter_dir, check_model_dir

    if merged:
        folder = check_model_dir(merged, fix="give a folder saved with save_pretrained (a merged or full model)")
        model = AutoModelForSeq2SeqLM.from_pretrained(folder, dtype=torch.float32)
        return model, AutoTokenizer.from_pretrained(tokenizer_source(settings, folder))
    model = AutoModelForSeq2SeqLM.from_pretrained(settings.model_path_or_id, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(settings.model_path_or_id)
    if adapter:
        from peft import PeftModel

        check_adapter_dir(adapter, model, settings.model_id, fix="give the folder of a LoRA adapter for this model")
        model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
    return model, tokenizer


def tokenizer_source(settings: Settings, folder: str | Path) -> str | Path:
    """A model folder's own tokenizer when it saved one, else the original model's."""
    return folder if (Path(folder) / "tokenizer_config.json").is_file() else settings.model_path_or_id


def ctranslate2_cache(settings: Settings, source: str | Path, suffix: str) -> Path:
    """Where the CTranslate2 conversion of `source` is kept: next to it (`<source><suffix>`), or under the lab's
    work folder when that place is not the user's to write (the committed release, a Hub id, a read-only folder)."""
    import hashlib

    from ..engines import not_a_ct2_folder
    from ..outputs import check_output_dir, user_path

    if Path(source).is_dir():
        source = user_path(source).resolve()  # `.` and `..` have a name to put a suffix on
        sibling = source.with_name(source.name + suffix)
        try:
            return check_output_dir(sibling, not_a_ct2_folder, "the CTranslate2 cache")
        except LabError:
            pass
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(str(source)).name) or "model"
    where = hashlib.sha256(str(source).encode()).hexdigest()[:8]  # two sources of one name keep two caches
    return settings.path(settings.work_dir) / "ctranslate2" / f"{name[-60:]}-{where}{suffix}"


def load_ctranslate2_for_serving(
    settings: Settings, engine: str, adapter: str | None = None, merged: str | None = None
):
    """(CTranslate2 model, tokenizer) for a merged/full model folder, the original model with an adapter (merged
    first), or the original model: converted once, cached next to the source, converted again when it changes."""
    from transformers import AutoTokenizer

    from ..engines import (
        CT2_QUANTIZATION,
        cached_ctranslate2,
        convert_model_to_ctranslate2,
        convert_to_ctranslate2,
        folder_digest,
    )
    from ..models import check_adapter_dir, check_model_dir

    quantization = CT2_QUANTIZATION[engine]
    base = settings.model_path_or_id
    if merged:
        source = check_model_dir(merged, fix="give a folder saved with save_pretrained (a merged or full model)")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(settings, source))
        digests = [source]
    else:
        if adapter:  # before any conversion: a wrong folder is said at once, before the base model loads
            from ..models import shape_model

            fix = "give the folder of a LoRA adapter for this model"
            check_adapter_dir(adapter, shape_model(base), settings.model_id, fix=fix)
        tokenizer = AutoTokenizer.from_pretrained(base)
        source = Path(adapter) if adapter else base
        digests = [Path(p) for p in (adapter, base) if p and Path(p).is_dir()]
    digest = folder_digest(*digests, extra=f"{engine} {base if not merged else ''}")
    suffix = (".merged" if adapter else "") + f".ctranslate2-{quantization}"

    def build(out: Path):
        if merged and (Path(source) / "tokenizer_config.json").is_file():
            convert_to_ctranslate2(source, out, quantization)  # the converter reads the folder as it is
            return
        model, _ = load_for_serving(settings, adapter, merged)
        if adapter:
            model = model.merge_and_unload()  # a model loaded for this conversion alone: merged in place
        convert_model_to_ctranslate2(model, tokenizer, out, quantization)

    cache = ctranslate2_cache(settings, source, suffix)
    return cached_ctranslate2(Path(source), digest, build, cache, tokenizer, quantization), tokenizer


def summarize_command(settings: Settings, args) -> None:
    """`python -m lab_utils summarize`: read dialogues, summarize them in batches, print or write a CSV."""
    from ..generation import summarize

    # the output first: a bad path costs nothing, and the input is never overwritten
    output = args.output and check_output_file(args.output, [args.input], is_summaries_csv, "the output (--output)")
    dialogues = read_dialogues(args.input, args.column, args.encoding)
    from ..engines import CT2_QUANTIZATION, prepare_for_inference

    engine = args.engine
    if engine in CT2_QUANTIZATION:
        model, tokenizer = load_ctranslate2_for_serving(settings, engine, args.adapter, args.merged)
    else:
        model, tokenizer = load_for_serving(settings, args.adapter, args.merged)
        model = prepare_for_inference(model, engine)
    summaries = summarize(model, tokenizer, dialogues, settings, progress=sys.stderr.isatty())
    if output:
        tmp = output.with_name(output.name + ".tmp")  # written whole, then renamed: a crash leaves no half file
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["dialogue", "summary"])
            writer.writerows(zip(dialogues, summaries))
        tmp.replace(output)
        print(f"Wrote {len(summaries)} summaries to {output}")
    else:
        for summary in summaries:
            print(summary)
