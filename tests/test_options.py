"""options: defaults in one place, validation on construction, the old keywords still work."""

from __future__ import annotations

import pytest

from conftest import tiny_bert
from layerprobe import CKAOptions, ProbeOptions, compare, take_snapshot
from layerprobe.errors import LayerProbeError


def test_defaults_and_validation():
    assert ProbeOptions().settle() == ProbeOptions("mean", 128, None, 32)
    assert ProbeOptions(max_length=64).settle({"pooling": "first", "max_length": 64}).pooling == "first"
    with pytest.raises(LayerProbeError, match="unknown pooling 'avg'"):
        ProbeOptions(pooling="avg")
    with pytest.raises(LayerProbeError, match="batch_size must be a positive integer, got 0"):
        ProbeOptions(batch_size=0)
    with pytest.raises(LayerProbeError, match="unknown estimator 'cosine'"):
        CKAOptions(estimator="cosine")
    with pytest.raises(LayerProbeError, match="0 < ci_level < 1"):
        CKAOptions(ci_level=1.5)
    with pytest.raises(Exception):  # frozen
        CKAOptions().seed = 3  # type: ignore[misc]


def test_compare_takes_the_option_objects_only(bert, tokenizer, texts):
    """The older spelling (the options' fields as keywords of compare) is gone (issue 18): one way to say it."""
    other = tiny_bert(1)
    kw = dict(probe_options=ProbeOptions(pooling="tokens", max_tokens=4, max_length=16),
              cka_options=CKAOptions(n_boot=50, seed=3, ci=True))
    old = compare(bert, other, texts, tokenizer, **kw)
    new = compare(bert, other, texts, tokenizer, **kw)
    assert old.to_json() == new.to_json()
    assert old.meta["pooling"] == "tokens" and old.meta["ci"]["n_boot"] == 50 and old.meta["ci"]["seed"] == 3
    for name, value in (("seed", 4), ("max_length", 16), ("pooling", "mean"), ("ci", False)):
        with pytest.raises(TypeError, match=name):
            compare(bert, other, texts, tokenizer, **{name: value})


def test_pooling_given_against_a_snapshot_is_refused_not_replaced(bert, tokenizer, texts):
    snap = take_snapshot(bert, tokenizer, texts, pooling="mean")
    # not set: follows the snapshot, as before
    c = compare(snap, tiny_bert(1), texts, tokenizer)
    assert c.meta["pooling"] == "mean"
    # set and contradicting side A's snapshot: an error before any model runs (was silently replaced)
    with pytest.raises(LayerProbeError, match="pooling='first' was asked for but snapshot A was taken with "
                                              "pooling='mean'"):
        compare(snap, tiny_bert(1), texts, tokenizer, probe_options=ProbeOptions(pooling="first"))


def test_n_boot_is_bounded_at_and_over():
    """was: --n-boot 1000000 accepted (minutes of resampling)."""
    from layerprobe.options import MAX_N_BOOT

    assert CKAOptions(n_boot=MAX_N_BOOT).n_boot == MAX_N_BOOT == 10_000
    for bad in (MAX_N_BOOT + 1, 1_000_000, 0, 2.5, True):
        with pytest.raises(LayerProbeError, match=r"n_boot must be an integer in \[1, 10,000\]"):
            CKAOptions(n_boot=bad)


def test_cli_n_boot_bound(capsys):
    from layerprobe.cli import main

    assert main(["compare", "a.pt", "b.pt", "--n-boot", "10001"]) == 2  # refused before the inputs are read
    err = capsys.readouterr().err
    assert "--n-boot must be in [0, 10,000], got 10001" in err and len(err.splitlines()) == 1


def _max_length_defaults() -> dict[str, object]:
    """Every probe ``max_length`` default a user meets, by where they meet it."""
    import inspect

    from layerprobe.cli import build_parser
    from layerprobe.integrations.hf import LayerProbeCallback
    from layerprobe.tracking.tracker import Tracker

    cli = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    found: dict[str, object] = {
        "take_snapshot": inspect.signature(take_snapshot).parameters["max_length"].default,
        "ProbeOptions (compare, CLI)": ProbeOptions().settle().max_length,
        "Tracker": inspect.signature(Tracker.__init__).parameters["max_length"].default,
        "LayerProbeCallback": inspect.signature(LayerProbeCallback.__init__).parameters["max_length"].default,
    }
    for command in ("snapshot", "compare"):
        helps = [a.help for a in cli[command]._actions if "--max-length" in a.option_strings]
        found[f"{command} --max-length help"] = int(helps[0].rsplit("default ", 1)[1].rstrip(")"))
    return found


def _rebound_defaults() -> list[str]:
    """Modules of layerprobe/ that define their own ``DEFAULT_MAX_LENGTH`` or give a ``max_length``
    parameter a default other than the name ``DEFAULT_MAX_LENGTH`` (the demo's training length aside)."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent / "layerprobe"
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == "options.py" or rel.startswith("demo/"):  # demo: TRAINING_MAX_LENGTH is its training length
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == "DEFAULT_MAX_LENGTH" for t in targets):
                    bad.append(f"{rel}:{node.lineno} assigns DEFAULT_MAX_LENGTH")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                positional = args.posonlyargs + args.args
                pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
                pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
                for a, d in pairs:
                    if a.arg == "max_length" and not (isinstance(d, ast.Name) and d.id == "DEFAULT_MAX_LENGTH"):
                        bad.append(f"{rel}:{node.lineno} {node.name}(max_length={ast.unparse(d)})")
    return bad


def test_one_probe_max_length_default_everywhere():
    """Issue 19 item 10: take_snapshot's default max_length (128) differed from the callback's (64)."""
    from layerprobe.options import DEFAULT_MAX_LENGTH

    assert _rebound_defaults() == []
    assert _max_length_defaults() == dict.fromkeys(_max_length_defaults(), DEFAULT_MAX_LENGTH)
