"""Tests for layerprobe.io.probe_files: every supported format, every bad-input error, the fingerprint."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from layerprobe.errors import LayerProbeError
from layerprobe.io.probe_files import fingerprint, read_probe_texts

TEXTS = ["first example", "  second, with a comma and \"quotes\"  ", "NA", "null", "third\tone"]


def _err(path, match, **kw) -> LayerProbeError:
    with pytest.raises(LayerProbeError) as info:
        read_probe_texts(path, **kw)
    err = info.value
    msg = str(err)
    assert "\n" not in msg, msg
    assert os.path.basename(os.fspath(path)) in msg, msg
    assert match in msg, msg
    return err


def test_csv_roundtrip_keeps_text_exact(tmp_path):
    import pandas as pd

    p = tmp_path / "probe.csv"
    pd.DataFrame({"id": range(6), "text": TEXTS + ["   "]}).to_csv(p, index=False)
    # "NA"/"null" stay text; only the whitespace-only row is dropped; nothing is stripped.
    assert read_probe_texts(p) == TEXTS


def test_tsv_and_custom_column(tmp_path):
    p = tmp_path / "probe.tsv"
    p.write_text("label\tsentence\n1\thello world\n0\t\n0\tbye\n", encoding="utf-8")
    assert read_probe_texts(p, text_column="sentence") == ["hello world", "bye"]


def test_jsonl_blank_lines_and_order(tmp_path):
    p = tmp_path / "probe.jsonl"
    lines = [json.dumps({"text": t, "label": i}) for i, t in enumerate(TEXTS)]
    p.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n", encoding="utf-8")
    assert read_probe_texts(p) == TEXTS
    assert read_probe_texts(p, max_examples=2) == TEXTS[:2]


def test_json_list(tmp_path):
    p = tmp_path / "probe.json"
    p.write_text(json.dumps([{"text": t} for t in TEXTS] + [{"text": None}, {"text": ""}]))
    assert read_probe_texts(p) == TEXTS


def test_txt_lines_crlf_and_unicode(tmp_path):
    p = tmp_path / "probe.txt"
    p.write_bytes("caf\u00e9 \u2014 ok\r\n\r\n  \nline\u2028same line\n".encode("utf-8"))
    assert read_probe_texts(p) == ["caf\u00e9 \u2014 ok", "line\u2028same line"]


def test_utf8_bom_is_ignored(tmp_path):
    p = tmp_path / "probe.csv"
    p.write_bytes(b"\xef\xbb\xbftext\nhello\n")
    assert read_probe_texts(p) == ["hello"]


def test_max_examples_is_first_n_after_dropping_blanks(tmp_path):
    p = tmp_path / "probe.txt"
    p.write_text("\n\na\n\nb\nc\n")
    assert read_probe_texts(p, max_examples=2) == ["a", "b"]
    assert read_probe_texts(p, max_examples=100) == ["a", "b", "c"]
    with pytest.raises(LayerProbeError, match="max_examples"):
        read_probe_texts(p, max_examples=0)


def test_saved_dataset_and_datasetdict(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["a", " ", "b", "c"], "label": [0, 1, 0, 1]})
    ds.save_to_disk(str(tmp_path / "single"))
    assert read_probe_texts(tmp_path / "single") == ["a", "b", "c"]
    assert read_probe_texts(tmp_path / "single", max_examples=2) == ["a", "b"]

    dd = datasets.DatasetDict(
        {"validation": datasets.Dataset.from_dict({"text": ["v"]}), "train": ds}
    )
    dd.save_to_disk(str(tmp_path / "dict"))
    assert read_probe_texts(tmp_path / "dict") == ["a", "b", "c"]  # "train" wins
    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": ["t1", "t2"]})}).save_to_disk(
        str(tmp_path / "notrain")
    )
    assert read_probe_texts(tmp_path / "notrain") == ["t1", "t2"]  # first split
    _err(tmp_path / "single", "columns found: 'text', 'label'", text_column="sentence")
    _err(tmp_path / "single", "expected strings", text_column="label")


def test_error_missing_empty_unknown(tmp_path):
    _err(tmp_path / "nope.csv", "not found")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    _err(tmp_path / "empty.jsonl", "empty (0 bytes)")
    (tmp_path / "probe.parquet").write_bytes(b"PAR1")
    _err(tmp_path / "probe.parquet", "unknown probe file type '.parquet'")
    (tmp_path / "plain_dir").mkdir()
    _err(tmp_path / "plain_dir", "not a saved dataset")


def test_error_not_utf8_gives_offset(tmp_path):
    p = tmp_path / "latin.txt"
    p.write_bytes(b"ok line\nprice \xa3 5\n")
    _err(p, "byte 0xa3 at byte offset 14 (line 2)")


def test_error_column_absent_lists_columns(tmp_path):
    p = tmp_path / "probe.csv"
    p.write_text("sentence,label\nhi,1\n")
    _err(p, "text column 'text' not found; columns found: 'sentence', 'label'")
    q = tmp_path / "probe.jsonl"
    q.write_text('{"sentence": "hi"}\n')
    _err(q, "'text' not found on line 1; keys found: 'sentence'")


def test_error_malformed_json_line_number(tmp_path):
    p = tmp_path / "probe.jsonl"
    p.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c",,}\n')
    _err(p, "malformed JSON on line 3")
    q = tmp_path / "probe.jsonl"
    q.write_text('{"text": "a"}\n["not", "an", "object"]\n')
    _err(q, "line 2 holds a JSON list, expected a JSON object")
    r = tmp_path / "probe.json"
    r.write_text('{"text": "a"}')
    _err(r, "expected a list of objects")
    s = tmp_path / "num.jsonl"
    s.write_text('{"text": 5}\n')
    _err(s, "line 1: field 'text' has type int, expected a string")


def test_error_zero_usable(tmp_path):
    p = tmp_path / "blank.txt"
    p.write_text("\n   \n\t\n")
    _err(p, "no usable probe texts")
    q = tmp_path / "header_only.csv"
    q.write_text("text,label\n")
    _err(q, "no usable probe texts in column 'text'")


def test_error_malformed_csv_is_one_line(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text('text,label\n"unterminated,1\n')
    _err(p, "malformed CSV")


def test_fingerprint_stable_and_sensitive():
    ids = [[101, 2023, 102, 0], [101, 7, 8, 102]]
    mask = [[1, 1, 1, 0], [1, 1, 1, 1]]
    ref = fingerprint(ids, mask)
    assert len(ref) == 64
    # Independent reference: the documented recipe, written out by hand.
    import hashlib

    h = hashlib.sha256(b"layerprobe-fingerprint-v1\0")
    for name, a in ((b"input_ids", ids), (b"attention_mask", mask)):
        arr = np.asarray(a, dtype="<i8")
        h.update(name + b"\0" + np.asarray([2, 2, 4], dtype="<i8").tobytes() + arr.tobytes())
    assert ref == h.hexdigest()
    # Same values in other containers and integer widths → same digest.
    assert fingerprint(torch.tensor(ids), torch.tensor(mask, dtype=torch.int32)) == ref
    assert fingerprint(np.asarray(ids, dtype=np.int32)[:, :].T.copy().T, np.asarray(mask)) == ref
    # Any change of ids, mask or shape → different digest.
    assert fingerprint([[101, 2023, 102, 1], [101, 7, 8, 102]], mask) != ref
    assert fingerprint(ids, [[1, 1, 1, 1], [1, 1, 1, 1]]) != ref
    flat_ids = np.asarray(ids).reshape(1, 8)
    assert fingerprint(flat_ids, np.asarray(mask).reshape(1, 8)) != ref
    with pytest.raises(LayerProbeError, match=r"shapes differ: \(2, 4\) vs \(2, 3\)"):
        fingerprint(ids, [[1, 1, 1], [1, 1, 1]])
    with pytest.raises(LayerProbeError, match="integers"):
        fingerprint(np.zeros((2, 4)), mask)


# ------------------------------------------------------------------ bounds: probe texts (docs/safety.md)

def test_probe_example_count_is_bounded_at_and_over(tmp_path):
    """was: a 30 MB probe of 3 million lines was tokenized and run (minutes, > 6 GB): the byte cap did not
    bound the example count."""
    from layerprobe.io.probe_files import MAX_PROBE_EXAMPLES, read_probe_texts

    assert MAX_PROBE_EXAMPLES == 100_000
    at = tmp_path / "at.txt"
    at.write_text("w\n" * MAX_PROBE_EXAMPLES)
    assert len(read_probe_texts(at)) == MAX_PROBE_EXAMPLES
    over = tmp_path / "over.txt"
    over.write_text("w\n" * (MAX_PROBE_EXAMPLES + 1))
    with pytest.raises(LayerProbeError, match="more than the 100,000 accepted; use --max-examples") as e:
        read_probe_texts(over)
    assert e.value.path == str(over)
    assert len(read_probe_texts(over, max_examples=10)) == 10  # a sample is fine
    for bad in (0, MAX_PROBE_EXAMPLES + 1):
        with pytest.raises(LayerProbeError, match=r"max_examples must be an integer in \[1, 100,000\]"):
            read_probe_texts(at, max_examples=bad)


@pytest.mark.parametrize("ext,body", [(".csv", "text\n" + "w\n" * 100_001), (".jsonl", '{"text": "w"}\n' * 100_001)])
def test_probe_example_bound_holds_for_every_format(tmp_path, ext, body):
    from layerprobe.io.probe_files import read_probe_texts

    p = tmp_path / f"p{ext}"
    p.write_text(body)
    with pytest.raises(LayerProbeError, match="more than the 100,000 accepted"):
        read_probe_texts(p)


def test_check_texts_bound_at_and_over():
    from layerprobe.io.probe_files import MAX_PROBE_EXAMPLES, check_texts

    assert len(check_texts(["w"] * MAX_PROBE_EXAMPLES)) == MAX_PROBE_EXAMPLES
    with pytest.raises(LayerProbeError, match="more than the 100,000 accepted"):
        check_texts(["w"] * (MAX_PROBE_EXAMPLES + 1))
    with pytest.raises(LayerProbeError, match="more than the 100,000 accepted"):
        check_texts("w" for _ in range(10**9))  # a generator is never read past the bound


@pytest.mark.parametrize("sep, ext", [(",", "csv"), ("\t", "tsv")])
@pytest.mark.parametrize("rows, line, found", [
    (["a b 0{s}pos{s}0{s}x", "c d 1{s}pos{s}7{s}x"], 2, 4),  # pandas made the first fields an index: texts '0', '7'
    (["a b 0{s}pos", "c d 1{s}pos{s}extra"], 3, 3),
    (["a b 0{s}pos", "", "c d 1"], 4, 1),  # a field missing (a blank line is skipped, as pandas does)
])
def test_ragged_table_refused_naming_the_line(tmp_path, sep, ext, rows, line, found):
    p = tmp_path / f"ragged.{ext}"
    p.write_text("\n".join([f"text{sep}label", *(r.format(s=sep) for r in rows)]) + "\n")
    _err(p, f"malformed {ext.upper()}: line {line} has {found} fields, the header has 2")


def test_quoted_separators_and_newlines_are_not_ragged(tmp_path):
    p = tmp_path / "quoted.csv"
    p.write_text('text,label\n"a, b",pos\n"two\nlines",neg\n\n"c ""q""",pos\n')
    assert read_probe_texts(p) == ["a, b", "two\nlines", 'c "q"']
