"""The snapshot schema (``snapshot/check.py``): tampered snapshot files are refused in one line.

Every case gives exit 0 with correct output, or exit 2 with one line on stderr naming the file and
the problem; no code from a file ever runs, nothing is half-written. Catalogue: docs/errors.md.
"""

from __future__ import annotations

import copy

import pytest
import torch

from hostile import assert_one_line, run


SNAPSHOT_TAMPERS = {
    "missing_representation": lambda d: d["representations"].pop("block.1"),
    "zero_width_representation": lambda d: d["representations"].__setitem__("block.1", torch.zeros(20, 0)),
    "bool_representation": lambda d: d["representations"].__setitem__("block.1", torch.ones(20, 32, dtype=torch.bool)),
    "entry_is_string": lambda d: d["meta"]["entries"].__setitem__(0, "embeddings"),
    "entry_without_kind": lambda d: d["meta"]["entries"][0].pop("kind"),
    "token_examples_string": lambda d: d.__setitem__("token_examples", "abc"),
    "n_examples_negative": lambda d: d["meta"].__setitem__("n_examples", -3),
    "n_examples_string": lambda d: d["meta"].__setitem__("n_examples", "many"),
    "max_length_string": lambda d: d["meta"].__setitem__("max_length", "x"),
    "format_version_negative": lambda d: d.__setitem__("format_version", -1),
    "duplicate_entry": lambda d: d["meta"]["entries"].append(dict(d["meta"]["entries"][0])),
    "fingerprint_int": lambda d: d["meta"].__setitem__("fingerprint", 5),
}


@pytest.mark.parametrize("case", sorted(SNAPSHOT_TAMPERS))
def test_tampered_snapshot_refused(f2, capsys, monkeypatch, tmp_path, case):
    d = copy.deepcopy(torch.load(f2["snap"], weights_only=True))
    SNAPSHOT_TAMPERS[case](d)
    torch.save(d, tmp_path / "t.pt")
    rc, _, err = run(["compare", tmp_path / "t.pt", f2["snap_b"], "--quiet"], capsys, monkeypatch)
    assert_one_line(rc, err, "t.pt")
