"""Probe inputs: read the texts a probe set is made of, and fingerprint the tokenized batch.

Supported inputs (chosen by extension; a directory is a ``datasets`` ``save_to_disk`` folder):

========================  ==============================================================
``.csv`` / ``.tsv``       a header row; the ``text_column`` is read as strings, nothing
                          is turned into NaN ("NA", "null" stay text)
``.jsonl``                one JSON object per line; blank lines are skipped
``.json``                 a JSON list of objects
``.txt``                  one example per line; blank lines are skipped
directory                 ``datasets.load_from_disk``; for a ``DatasetDict`` the split
                          ``"train"`` is used if present, otherwise the first split
========================  ==============================================================

Empty and whitespace-only texts are dropped; every other text is returned exactly as stored
(nothing is stripped), in file order. Every problem with the input raises a one-line
:class:`~layerprobe.errors.LayerProbeError` that names the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from layerprobe.errors import LayerProbeError
from layerprobe.errors import one_line as _one_line

__all__ = ["MAX_COLUMNS", "MAX_LINE_CHARS", "MAX_PROBE_EXAMPLES", "MAX_PROBE_BYTES", "MAX_TEXT_CHARS", "PROBE_EXTENSIONS", "check_texts", "fingerprint",
           "read_probe_texts"]

PROBE_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".json", ".txt")
_EXPECTED = "expected .csv, .tsv, .jsonl, .json, .txt or a directory saved with datasets.save_to_disk"


def _names(names: Iterable[Any], limit: int = 10) -> str:
    names = [str(n) for n in names]
    shown = ", ".join(repr(n) for n in names[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names)} in all)"
    return shown or "none"


def read_probe_texts(
    path: str | os.PathLike,
    text_column: str = "text",
    max_examples: int | None = None,
) -> list[str]:
    """Read probe texts from a file or a saved ``datasets`` directory.

    Args:
        path: a ``.csv``, ``.tsv``, ``.jsonl``, ``.json`` or ``.txt`` file, or a directory written
            by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``. For a ``DatasetDict`` the
            ``"train"`` split is used when present, otherwise the first split in stored order.
        text_column: column (CSV/TSV/dataset) or key (JSON) holding the text. Ignored for ``.txt``.
        max_examples: keep only the first N usable texts (deterministic); ``None`` keeps all.

    Returns:
        The non-empty texts, in file order, unmodified.

    Raises:
        LayerProbeError: missing or empty file, bytes that are not UTF-8, malformed JSON, the text
            column absent, an unknown extension, or no usable (non-blank) text at all.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "probe.txt")
    >>> _ = open(p, "w").write("first line\\n\\n  \\nsecond line\\n")
    >>> read_probe_texts(p)
    ['first line', 'second line']
    """
    path = os.fspath(path)
    if max_examples is not None:
        if isinstance(max_examples, bool) or not isinstance(max_examples, (int, np.integer)) or \
                not 1 <= max_examples <= MAX_PROBE_EXAMPLES:
            raise LayerProbeError(
                f"max_examples must be an integer in [1, {MAX_PROBE_EXAMPLES:,}] or None, got {max_examples!r}"
            )
        max_examples = int(max_examples)
    from layerprobe.io.files import check_exists

    check_exists(path, "probe file")  # a symlink loop or a name too long is said so, not "not found"
    if os.path.isdir(path):
        texts = _read_saved_dataset(path, text_column, max_examples)
    else:
        ext = os.path.splitext(path)[1].lower()
        if ext not in PROBE_EXTENSIONS:
            raise LayerProbeError(
                f"unknown probe file type {ext or '(no extension)'!r} ({_EXPECTED})", path=path
            )
        _check_records(path, ext)  # streamed: a huge line, field or row is refused before the file is read whole
        content = _read_utf8(path)
        raw: Sequence[str | None]
        if ext in (".csv", ".tsv"):
            raw = _parse_table(path, content, "\t" if ext == ".tsv" else ",", text_column)
        elif ext == ".jsonl":
            raw = _parse_jsonl(path, content, text_column)
        elif ext == ".json":
            raw = _parse_json_list(path, content, text_column)
        else:
            raw = _parse_txt(content)
        texts = _usable(raw, max_examples, path)
    if not texts:
        where = "" if path.endswith(".txt") else f" in column {text_column!r}"
        raise LayerProbeError(
            f"no usable probe texts{where} (all empty or whitespace-only), expected at least one",
            path=path,
        )
    return texts


#: longest probe text accepted, in characters (a tokenizer sees the whole text before truncating)
MAX_TEXT_CHARS = 1_000_000
#: largest probe file read
MAX_PROBE_BYTES = 512 << 20
#: most probe texts used in one run (a file or a list): the byte cap alone lets a file hold millions of
#: one-word lines, each tokenized, run and kept; take a sample with max_examples (--max-examples)
MAX_PROBE_EXAMPLES = 100_000


#: longest line of a probe file (one text, JSON object or CSV row with its other fields), in characters
MAX_LINE_CHARS = 4 * MAX_TEXT_CHARS
#: most fields in one CSV/TSV row
MAX_COLUMNS = 10_000


def _bounded_lines(f: Any, path: str, limit: int) -> Iterator[str]:
    """The lines of an open text file, each read with a length limit: a line longer than ``limit``
    characters is refused after reading that many, not the whole line."""
    n = 0
    while True:
        line = f.readline(limit + 2)  # the text and its line end ("\r\n")
        if not line:
            return
        n += 1
        if len(line.rstrip("\r\n")) > limit:
            what = "for one probe text" if limit == MAX_TEXT_CHARS else \
                f"for one line (a probe text may have {MAX_TEXT_CHARS:,})"
            raise LayerProbeError(f"line {n:,} has more than {limit:,} characters, more than the {limit:,} accepted "
                                  f"{what}; split or shorten it", path=path)
        yield line


def _check_records(path: str, ext: str) -> None:
    """Bound every line, field and row of a text probe file in one streamed pass, before it is
    read whole (a 500 MB single-field CSV took 4.3 GB before it was refused).

    Lines are read with :func:`_bounded_lines` (a ``.txt`` line is one text: at most
    :data:`MAX_TEXT_CHARS`; other lines at most :data:`MAX_LINE_CHARS`); a CSV/TSV is parsed by the ``csv`` module with its
    field limit set to :data:`MAX_TEXT_CHARS` (a quoted field spanning many lines is bounded too)
    and at most :data:`MAX_COLUMNS` fields a row. Other problems (bad UTF-8, malformed quoting) are
    left to the full read, which names them.
    """
    import csv

    from layerprobe.io.files import regular_file

    if regular_file(path, "probe file") > MAX_PROBE_BYTES:
        return  # refused unread by _read_utf8
    if ext == ".json" or regular_file(path, "probe file") > MAX_PROBE_BYTES:
        return  # a JSON list may be one line (its texts are checked after parsing); too large: refused unread
    previous = csv.field_size_limit()
    line = 0
    try:
        with open(path, encoding="utf-8", newline="") as f:
            lines = _bounded_lines(f, path, MAX_TEXT_CHARS if ext == ".txt" else MAX_LINE_CHARS)
            if ext not in (".csv", ".tsv"):
                for _ in lines:
                    pass
                return
            csv.field_size_limit(MAX_TEXT_CHARS)
            reader = csv.reader(lines, delimiter="\t" if ext == ".tsv" else ",")
            for row in reader:
                line = reader.line_num
                if len(row) > MAX_COLUMNS:
                    raise LayerProbeError(f"the record ending on line {line:,} has {len(row):,} fields, more than "
                                          f"the {MAX_COLUMNS:,} accepted", path=path)
    except csv.Error as exc:
        if "field limit" in str(exc):
            raise LayerProbeError(f"a field after line {line:,} has more than {MAX_TEXT_CHARS:,} characters, more "
                                  f"than the {MAX_TEXT_CHARS:,} accepted for one probe text; split or shorten it",
                                  path=path) from None
    except (UnicodeDecodeError, OSError):
        return  # named by the full read
    finally:
        csv.field_size_limit(previous)


def _too_many(n: str, path: str | None = None) -> LayerProbeError:
    return LayerProbeError(f"the probe holds {n} texts, more than the {MAX_PROBE_EXAMPLES:,} accepted; use "
                           f"--max-examples (max_examples=) to take the first N", path=path)


def check_texts(texts: Any, what: str = "texts") -> list[str]:
    """Probe texts given as a Python list, checked once at each entry point of the API.

    Returns:
        The texts as a new list, unmodified (blank ones kept: they are the caller's examples).

    Raises:
        LayerProbeTypeError: a single string (it would be read as a list of characters), something
            not iterable, or an element that is not a string (``None``, token ids).
        LayerProbeError: every text blank, a text too long or holding a lone surrogate, or more
            than :data:`MAX_PROBE_EXAMPLES` texts.

    >>> check_texts(("a good film", "a bad one"))
    ['a good film', 'a bad one']
    >>> check_texts("a good film")
    Traceback (most recent call last):
    ...
    layerprobe.errors.LayerProbeTypeError: texts must be a list of strings, got one str (11 characters); wrap a single text in a list: [text]
    """
    from layerprobe.errors import LayerProbeTypeError

    if isinstance(texts, (str, bytes, bytearray)):
        raise LayerProbeTypeError(f"{what} must be a list of strings, got one {type(texts).__name__} "
                                  f"({len(texts):,} characters); wrap a single text in a list: [text]")
    if isinstance(texts, Mapping) or not isinstance(texts, Iterable):
        raise LayerProbeTypeError(f"{what} must be a list of strings, got {type(texts).__name__}")
    out: list[str] = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            hint = " (token ids are not accepted: pass the texts)" if isinstance(t, (int, list, tuple)) else ""
            raise LayerProbeTypeError(f"{what}[{i}] is {type(t).__name__}, expected str{hint}")
        if len(t) > MAX_TEXT_CHARS:
            raise LayerProbeError(f"{what}[{i}] has {len(t):,} characters, more than the {MAX_TEXT_CHARS:,} "
                                  f"accepted; split or shorten it")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise LayerProbeError(f"{what}[{i}] holds a lone surrogate (not valid Unicode)") from None
        out.append(t)
        if len(out) > MAX_PROBE_EXAMPLES:
            raise _too_many(f"more than {MAX_PROBE_EXAMPLES:,}")
    if not out:
        raise LayerProbeError(f"{what} is empty, expected probe texts")
    if not any(t.strip() for t in out):
        raise LayerProbeError(f"{what}: all {len(out)} texts are empty or whitespace-only, expected probe texts")
    return out


def _usable(raw: Iterable[str | None], max_examples: int | None, path: str = "") -> list[str]:
    out: list[str] = []
    for i, text in enumerate(raw):
        if text is None or not text.strip():
            continue
        if len(text) > MAX_TEXT_CHARS:
            raise LayerProbeError(f"probe text {i + 1} has {len(text):,} characters, more than the "
                                  f"{MAX_TEXT_CHARS:,} accepted (examples are truncated to a few hundred tokens "
                                  f"anyway); split or shorten it", path=path or None)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise LayerProbeError(f"probe text {i + 1} holds a lone surrogate (not valid Unicode)",
                                  path=path or None) from None
        out.append(text)
        if max_examples is not None and len(out) >= max_examples:
            break
        if len(out) > MAX_PROBE_EXAMPLES:
            raise _too_many(f"more than {MAX_PROBE_EXAMPLES:,}", path or None)
    return out


def _read_utf8(path: str) -> str:
    from layerprobe.io.files import read_bounded

    data = read_bounded(path, MAX_PROBE_BYTES, "probe file")  # regular files only: no FIFO, no /dev/zero
    if not data:
        raise LayerProbeError("probe file is empty (0 bytes), expected probe texts", path=path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise LayerProbeError(
            f"not UTF-8 text: invalid byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
            f"(line {line}); re-save the file as UTF-8",
            path=path,
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def _parse_txt(content: str) -> list[str]:
    # Split on "\n" only (str.splitlines would also split on form feeds, U+2028 and friends).
    lines = content.split("\n")
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _parse_table(path: str, content: str, sep: str, text_column: str) -> list[str]:
    import pandas as pd

    _check_field_counts(path, content, sep)  # before pandas, which guesses an index for longer rows
    try:
        df = pd.read_csv(
            io.StringIO(content), sep=sep, dtype=str, keep_default_na=False, na_filter=False
        )
    except pd.errors.EmptyDataError:
        raise LayerProbeError("probe file has no header row, expected a header naming the text column", path=path) from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise LayerProbeError(f"malformed {'TSV' if sep == chr(9) else 'CSV'}: {_one_line(exc)}", path=path) from None
    if text_column not in df.columns:
        raise LayerProbeError(
            f"text column {text_column!r} not found; columns found: {_names(df.columns)}", path=path
        )
    return [str(v) for v in df[text_column].tolist()]


def _check_field_counts(path: str, content: str, sep: str) -> None:
    """Every row of a CSV/TSV has as many fields as its header. pandas reads a row with more fields
    than the header by turning the first fields into an index (the text column then holds other
    values) and pads a shorter row with empty strings: both are refused, naming the first bad line."""
    import csv

    kind = "TSV" if sep == "\t" else "CSV"
    limit = csv.field_size_limit()
    try:
        csv.field_size_limit(max(limit, len(content) + 1))  # the file's size is bounded where it is read
        reader = csv.reader(io.StringIO(content, newline=""), delimiter=sep, quotechar='"', doublequote=True,
                            strict=False)
        header: list[str] | None = None
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip() and header is not None and len(header) > 1):
                continue  # a blank line (pandas skips it)
            if header is None:
                header = row
            elif len(row) != len(header):
                raise LayerProbeError(f"malformed {kind}: line {reader.line_num} has {len(row)} fields, the header "
                                      f"has {len(header)} (a {'separator' if len(row) > len(header) else 'field'} "
                                      f"{'too many' if len(row) > len(header) else 'missing'}? quote texts that "
                                      f"contain {'tabs' if kind == 'TSV' else 'commas'})", path=path)
    except csv.Error as exc:
        raise LayerProbeError(f"malformed {kind}: {_one_line(exc, 100)}", path=path) from None
    finally:
        csv.field_size_limit(limit)


def _text_value(path: str, value: Any, text_column: str, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise LayerProbeError(
        f"{where}: field {text_column!r} has type {type(value).__name__}, expected a string", path=path
    )


def _parse_jsonl(path: str, content: str, text_column: str) -> list[str | None]:
    out: list[str | None] = []
    keys_seen: dict[str, None] = {}
    for lineno, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LayerProbeError(
                f"malformed JSON on line {lineno} (column {exc.colno}): {exc.msg}; "
                "expected one JSON object per line",
                path=path,
            ) from None
        except RecursionError:
            raise LayerProbeError(f"malformed JSON on line {lineno}: nested too deeply", path=path) from None
        except ValueError as exc:  # a number past int()'s digit limit
            raise LayerProbeError(f"malformed JSON on line {lineno}: {_one_line(exc, 100)}", path=path) from None
        if not isinstance(obj, dict):
            raise LayerProbeError(
                f"line {lineno} holds a JSON {type(obj).__name__}, expected a JSON object", path=path
            )
        if text_column not in obj:
            keys_seen.update(dict.fromkeys(obj))
            if not out:  # absent from the first object: report the keys found
                raise LayerProbeError(
                    f"text field {text_column!r} not found on line {lineno}; keys found: {_names(obj)}",
                    path=path,
                )
            raise LayerProbeError(
                f"line {lineno} has no field {text_column!r}; keys found: {_names(obj)}", path=path
            )
        out.append(_text_value(path, obj[text_column], text_column, f"line {lineno}"))
    return out


def _parse_json_list(path: str, content: str, text_column: str) -> list[str | None]:
    try:
        data = json.loads(content)
    except json.JSONDecodeError as exc:
        raise LayerProbeError(
            f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", path=path
        ) from None
    except RecursionError:
        raise LayerProbeError("malformed JSON: nested too deeply", path=path) from None
    except ValueError as exc:  # a number past int()'s digit limit
        raise LayerProbeError(f"malformed JSON: {_one_line(exc, 100)}", path=path) from None
    if not isinstance(data, list):
        raise LayerProbeError(
            f"the JSON holds a {type(data).__name__}, expected a list of objects "
            "(use .jsonl for one object per line)",
            path=path,
        )
    out: list[str | None] = []
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise LayerProbeError(
                f"item {i} is a JSON {type(obj).__name__}, expected a JSON object", path=path
            )
        if text_column not in obj:
            raise LayerProbeError(
                f"text field {text_column!r} not found in item {i}; keys found: {_names(obj)}",
                path=path,
            )
        out.append(_text_value(path, obj[text_column], text_column, f"item {i}"))
    return out


def _read_saved_dataset(path: str, text_column: str, max_examples: int | None) -> list[str]:
    markers = ("dataset_dict.json", "state.json", "dataset_info.json")
    if not any(os.path.isfile(os.path.join(path, m)) for m in markers):
        raise LayerProbeError(
            "directory is not a saved dataset (no dataset_dict.json or state.json); "
            f"{_EXPECTED}",
            path=path,
        )
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise LayerProbeError("reading a saved dataset needs the 'datasets' package (pip install datasets)", path=path) from None
    try:
        ds = datasets.load_from_disk(path)
    except Exception as exc:  # datasets raises many types for broken folders
        raise LayerProbeError(
            f"cannot load saved dataset ({type(exc).__name__}: {_one_line(exc)})", path=path
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if not ds:
            raise LayerProbeError("saved DatasetDict has no splits, expected at least one", path=path)
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    if text_column not in ds.column_names:
        raise LayerProbeError(
            f"text column {text_column!r} not found; columns found: {_names(ds.column_names)}",
            path=path,
        )
    feature = ds.features[text_column]
    dtype = getattr(feature, "dtype", None)
    if dtype not in ("string", "large_string"):
        raise LayerProbeError(
            f"column {text_column!r} has type {_one_line(feature)}, expected strings", path=path
        )
    column = ds.select_columns([text_column])
    out: list[str] = []
    batch = 1024 if max_examples is None else max(1, min(1024, max_examples))
    try:
        column = column.with_format(None)  # plain Python rows: a saved format or transform is not applied
        for start in range(0, len(column), batch):
            values = column[start : start + batch][text_column]
            if not isinstance(values, list) or not all(v is None or isinstance(v, str) for v in values):
                raise LayerProbeError(f"column {text_column!r} does not read as strings", path=path)
            out.extend(_usable(values, None, path))
            if max_examples is None and len(out) > MAX_PROBE_EXAMPLES:
                raise _too_many(f"more than {MAX_PROBE_EXAMPLES:,}", path)
            if max_examples is not None and len(out) >= max_examples:
                return out[:max_examples]
    except LayerProbeError:
        raise
    except Exception as exc:  # a saved format type or transform datasets cannot rebuild
        raise LayerProbeError(f"cannot read saved dataset ({type(exc).__name__}: {_one_line(exc, 120)})",
                              path=path) from None
    return out


def _as_int64(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "biu":
        raise LayerProbeError(f"{what} must hold integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype="<i8")


def fingerprint(input_ids: Any, attention_mask: Any) -> str:
    """SHA-256 hex digest of a tokenized probe batch, stable across runs and platforms.

    The ids and the mask are hashed as little-endian int64 C-contiguous bytes, each preceded by
    its shape, so the same tokens give the same digest whether they come as a torch tensor, a
    numpy array or nested lists, and a reshaped batch gives a different one.

    Args:
        input_ids: integer token ids, shape ``(batch, seq)``.
        attention_mask: 0/1 mask, same shape as ``input_ids``.

    Returns:
        64 hex characters.

    Raises:
        LayerProbeError: non-integer input or shapes that differ.

    >>> fingerprint([[101, 7592, 102]], [[1, 1, 1]])[:16]
    '96c2bbdf7768662d'
    >>> fingerprint([[101, 7592, 102]], [[1, 1, 0]]) != fingerprint([[101, 7592, 102]], [[1, 1, 1]])
    True
    """
    ids = _as_int64(input_ids, "input_ids")
    mask = _as_int64(attention_mask, "attention_mask")
    if ids.shape != mask.shape:
        raise LayerProbeError(
            f"input_ids and attention_mask shapes differ: {tuple(ids.shape)} vs {tuple(mask.shape)}"
        )
    h = hashlib.sha256(b"layerprobe-fingerprint-v1\0")
    for name, arr in ((b"input_ids", ids), (b"attention_mask", mask)):
        h.update(name + b"\0")
        h.update(np.asarray([arr.ndim, *arr.shape], dtype="<i8").tobytes())
        h.update(arr.tobytes(order="C"))
    return h.hexdigest()
