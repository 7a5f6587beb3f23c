"""Probe files as inputs (``io/probe_files.py``): special files, huge lines and fields, odd JSON,
saved datasets.

Every case gives exit 0 with correct output, or exit 2 with one line on stderr naming the file and
the problem; no code from a file ever runs, nothing is half-written. Catalogue: docs/errors.md.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hostile import assert_one_line, run


@pytest.mark.parametrize("which", ["probe_fifo", "probe_device", "comparison_fifo", "checkpoint_device"])
def test_special_files_are_refused_not_read(f2, tmp_path, which):
    """In a subprocess with a timeout and a memory limit: a regression fails instead of hanging."""
    fifo = tmp_path / "p.txt"
    os.mkfifo(fifo)
    dev = tmp_path / "zero.txt"
    os.symlink("/dev/zero", dev)  # read-only use of the device, through a temporary link
    argv = {"probe_fifo": ["snapshot", f2["good"], "--probe", fifo, "-o", tmp_path / "x.pt"],
            "probe_device": ["compare", f2["good"], f2["good"], "--probe", dev],
            "comparison_fifo": ["freeze-list", fifo, f2["good"]],
            "checkpoint_device": ["compare", dev, f2["snap"]]}[which]
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
            "from layerprobe.cli import main; sys.exit(main(sys.argv[1:]))")
    p = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert_one_line(p.returncode, p.stderr, "expected a regular file")


def test_huge_single_line_probe_refused(f2, capsys, monkeypatch, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("good " * 2_000_000)
    rc, _, err = run(["snapshot", f2["good"], "--probe", big, "-o", tmp_path / "x.pt"], capsys, monkeypatch)
    assert_one_line(rc, err, "more than the 1,000,000 accepted")


@pytest.mark.parametrize("name, content, needle", [
    ("deep.jsonl", '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n", "nested too deeply"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("bigint.jsonl", '{"text": "good", "n": ' + "9" * 5000 + "}\n", "digits"),
    ("surrogate.jsonl", '{"text": "good \\ud800 movie"}\n', "lone surrogate"),
])
def test_odd_json_probes_refused(f2, capsys, monkeypatch, tmp_path, name, content, needle):
    (tmp_path / name).write_text(content)
    rc, _, err = run(["snapshot", f2["good"], "--probe", tmp_path / name, "-o", tmp_path / "x.pt"], capsys, monkeypatch)
    assert_one_line(rc, err, name, needle)


# ------------------------------------------------------------------ issue 20: lines, fields and rows bounded while reading

def _read(p):
    from layerprobe.io.probe_files import read_probe_texts

    return read_probe_texts(p)


FIELD_FILES = {  # (file name, content), refused before the file is read whole
    "one_field_csv": ("p.csv", "text\n" + "a" * 4_000_001 + "\n", "line 2 has more than 4,000,000 characters"),
    "quoted_multiline_csv": ("p.csv", 'text\n"' + ("a" * 99 + "\n") * 10_001 + '"\n',
                             "has more than 1,000,000 characters, more than the 1,000,000 accepted"),
    "quoted_field_csv": ("p.csv", 'text,label\n"' + "b" * 1_000_001 + '",1\n', "more than the 1,000,000 accepted"),
    "tsv_field": ("p.tsv", "text\tlabel\n" + "c" * 1_000_001 + "\t1\n", "more than the 1,000,000 accepted"),
    "many_columns": ("p.csv", ",".join(f"c{i}" for i in range(10_001)) + "\nx\n", "has 10,001 fields, more than the 10,000"),
    "jsonl_line": ("p.jsonl", '{"text": "' + "d" * 4_000_001 + '"}\n', "line 1 has more than 4,000,000 characters"),
    "txt_line": ("p.txt", "e" * 1_000_001 + "\n", "more than the 1,000,000 accepted for one probe text"),
}


@pytest.mark.parametrize("case", sorted(FIELD_FILES))
def test_fields_and_lines_are_bounded_while_reading(f3, capsys, tmp_path, case):
    """was: a 500 MB single-field CSV took 4.3 GB before it was refused. Each file here is a few MB."""
    name, content, needle = FIELD_FILES[case]
    p = tmp_path / name
    p.write_text(content)
    rc, _, err = run(["snapshot", f3["good"], "--probe", p, "-o", tmp_path / "x.pt", "--quiet"], capsys)
    assert_one_line(rc, err, name, needle)
    assert not (tmp_path / "x.pt").exists()


def test_fields_at_the_bounds_are_read(tmp_path):
    from layerprobe.io.probe_files import MAX_COLUMNS, MAX_TEXT_CHARS

    cases = {"at.csv": 'text,label\n"' + "a" * MAX_TEXT_CHARS + '",1\nshort,0\n',
             "multi.csv": 'text\n"' + ("a" * 99 + "\n") * 9_999 + '"\nshort\n',
             "wide.csv": "text," + ",".join(f"c{i}" for i in range(MAX_COLUMNS - 1)) + "\nshort" + "," * (MAX_COLUMNS - 1) + "\n",
             "at.txt": "b" * MAX_TEXT_CHARS + "\r\nshort\n",
             "at.tsv": "text\n" + "c" * MAX_TEXT_CHARS + "\n"}
    for name, content in cases.items():
        (tmp_path / name).write_text(content)
        texts = _read(tmp_path / name)
        assert texts[-1].strip() == "short" or len(texts[0]) == MAX_TEXT_CHARS, name
    assert len(_read(tmp_path / "at.csv")[0]) == MAX_TEXT_CHARS


def test_the_csv_field_limit_is_left_as_it_was(tmp_path):
    import csv

    before = csv.field_size_limit()
    (tmp_path / "p.csv").write_text("text\nhello\n")
    _read(tmp_path / "p.csv")
    assert csv.field_size_limit() == before


# ------------------------------------------------------------------ issue 20: saved datasets with odd formats

DATASET_STATES = {  # edits of state.json; each read without its format (exit 0) or one line
    "custom_type": {"_format_type": "custom", "_format_kwargs": {"transform": None}},
    "unknown_type": {"_format_type": "weird"},
    "numeric_type": {"_format_type": 5},
    "list_type": {"_format_type": ["x"]},
    "torch_type": {"_format_type": "torch", "_format_kwargs": {"dtype": "x"}},
    "pandas_kwargs": {"_format_type": "pandas", "_format_kwargs": {"foo": 1}},
    "kwargs_string": {"_format_type": "custom", "_format_kwargs": "x"},
    "columns_missing": {"_format_columns": ["nope"]},
    "columns_int": {"_format_columns": 5},
    "split_int": {"_split": 5},
    "data_files_string": {"_data_files": "x"},
}


@pytest.mark.parametrize("dict_", [False, True])
@pytest.mark.parametrize("case", sorted(DATASET_STATES))
def test_saved_dataset_with_an_odd_format(capsys, tmp_path, f3, case, dict_):
    """was: a traceback for a saved format type datasets cannot rebuild."""
    import json

    datasets = pytest.importorskip("datasets")
    texts = ["the movie was good", "a bad film", "boring plot and actor", "the best story ever", "not very funny"]
    ds = datasets.Dataset.from_dict({"text": texts})
    d = tmp_path / "ds"
    (datasets.DatasetDict(train=ds) if dict_ else ds).save_to_disk(str(d))
    state = d / "train" / "state.json" if dict_ else d / "state.json"
    st = json.loads(state.read_text())
    st.update(DATASET_STATES[case])
    state.write_text(json.dumps(st))
    capsys.readouterr()  # datasets' own progress bar while saving
    rc, _, err = run(["snapshot", f3["good"], "--probe", d, "-o", tmp_path / "x.pt", "--quiet"], capsys)
    if rc != 0:
        assert_one_line(rc, err, "ds")
    else:
        assert err.strip() == "" and (tmp_path / "x.pt").exists()
