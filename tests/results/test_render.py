"""The advice as text: the rule line says what decided (the CKA rule, or the prediction at a tolerance)."""

from __future__ import annotations

from types import SimpleNamespace

from layerprobe.freezing.predict import Predictor
from layerprobe.freezing.rule import Thresholds, recommend
from layerprobe.results.render import advice_text

ENTRIES = [{"name": "embeddings", "kind": "embeddings", "cka": 1.0, "weight_drift": 0.002, "n_params": 1000}] + [
    {"name": f"block.{i}", "kind": "block", "cka": c, "weight_drift": 0.01, "n_params": 100}
    for i, c in enumerate([0.999, 0.99, 0.9, 0.5])]
UPPER = Predictor("cka_rel", (0.0, 1.0), (0.0, 0.1), (-0.005, 0.004), ("a", "b"), decide="upper")


def _text(rec) -> list[str]:
    """The advice's lines, its notes left out."""
    lines = advice_text(SimpleNamespace(recommendation=rec, other=None)).splitlines()
    return [ln for ln in lines if not ln.startswith("note: ")]


def test_the_rule_line_names_the_cka_rule_when_it_decided():
    lines = _text(recommend(ENTRIES, Thresholds(min_cka=0.95)))
    assert lines[0] == "advice: freeze embeddings, block.0, block.1; train block.2, block.3"
    rule = next(ln for ln in lines if ln.startswith("  rule:"))
    assert rule == ("  rule: freeze the longest bottom prefix with CKA >= 0.95 (lower bound of the interval when "
                    "computed); at least 1 block(s) train")


def test_the_rule_line_names_the_prediction_when_it_decided():
    """Before: "rule: freeze the longest bottom prefix with CKA >= 0.99" under an advice the prediction made."""
    rec = recommend(ENTRIES, tolerance=0.02, predictor=UPPER)
    lines = _text(rec)
    # cka_rel 0, 0.002, 0.02, 0.2: decision loss (+0.4%) 0.4%, 0.42%, 0.6%, 2.4% -> emb+2 at 2%
    assert lines[0] == "advice: freeze embeddings, block.0, block.1; train block.2, block.3"
    rule = next(ln for ln in lines if ln.startswith("  rule:"))
    assert rule == ("  rule: freeze the largest bottom prefix predicted (cka_rel, its interval's lower end) to keep "
                    ">= 98.0% of full fine-tuning, with every smaller prefix; at least 1 block(s) train")
    point = Predictor("cka_rel", (0.0, 1.0), (0.0, 0.1), (-0.005, 0.004), ("a",))
    rule = next(ln for ln in _text(recommend(ENTRIES, tolerance=0.02, predictor=point)) if ln.startswith("  rule:"))
    assert "predicted (cka_rel) to keep >= 98.0%" in rule and "CKA >=" not in rule


def test_the_candidates_header_names_the_rule_that_decided():
    """A weights-only comparison without a tolerance: the drift rule (or nothing) decided, not the CKA rule."""
    weights_only = [{k: v for k, v in e.items() if k != "cka"} for e in ENTRIES]
    drift = recommend(weights_only, Thresholds(max_drift=0.05))
    assert drift.basis == "drift" and drift.tolerance is None and drift.candidates
    head = next(ln for ln in _text(drift) if ln.startswith("  predicted cost"))
    assert head.endswith("; the drift rule (max_drift 0.05) decided):") and "CKA rule" not in head
    head = next(ln for ln in _text(recommend(weights_only)) if ln.startswith("  predicted cost"))
    assert head.endswith("; nothing is advised (no CKA, no max_drift)):")
    head = next(ln for ln in _text(recommend(ENTRIES)) if ln.startswith("  predicted cost"))
    assert head.endswith("; the CKA rule decided):")


def test_the_rule_line_for_weights_only_names_the_drift_rule_or_none():
    weights_only = [{k: v for k, v in e.items() if k != "cka"} for e in ENTRIES]
    rule = next(ln for ln in _text(recommend(weights_only, Thresholds(max_drift=0.05))) if ln.startswith("  rule:"))
    assert rule == ("  rule: freeze the longest bottom prefix with weight drift <= 0.05 (no CKA); "
                    "at least 1 block(s) train")
    rule = next(ln for ln in _text(recommend(weights_only)) if ln.startswith("  rule:"))
    assert rule == "  rule: none applies (no CKA and no max_drift); at least 1 block(s) train"


def test_control_characters_in_a_hand_edited_comparison_are_shown_escaped():
    """Escape codes in names, reasons and notes never reach the terminal raw; a newline keeps the layout."""
    import json
    import os

    from layerprobe.results.comparison import Comparison
    from layerprobe.results.render import to_markdown, to_table

    with open(os.path.join(os.path.dirname(__file__), "..", "golden", "comparison.json"), encoding="utf-8") as f:
        doc = json.load(f)
    doc["blocks"][1]["name"] = "block.0\x1b[2J\x1b[31mPWN"
    doc["recommendation"]["train"][1] = doc["blocks"][1]["name"]
    doc["recommendation"]["reasons"] = {"block.1": "train\x1b]0;TITLE\x07 multi\nline"}
    doc["recommendation"]["notes"] = ["\x1b[2Jcleared"]
    c = Comparison.from_dict(doc)
    for text in (to_table(c), to_markdown(c)):
        assert "\x1b" not in text and "\x07" not in text
        assert "block.0\\x1b[2J\\x1b[31mPWN" in text and "train\\x1b]0;TITLE\\x07 multi\\nline" in text
        assert "note: \\x1b[2Jcleared" in text
        assert not any(line.startswith("line") for line in text.splitlines())  # the newline kept its line
    assert c.recommendation.reasons["block.1"].endswith("multi\nline")  # the data itself is unchanged


def test_the_saving_label_says_whether_the_measured_prefix_was_cached():
    from layerprobe.freezing.step_cost import PrefixSavings
    from layerprobe.results.comparison import Comparison

    e = [dict(name=n, kind="embeddings" if n == "embeddings" else "block", n_params=10, weight_drift=0.01,
              cka=0.999 if n in ("embeddings", "block.0") else 0.5) for n in ["embeddings", "block.0", "block.1"]]
    served = {"embeddings": 0.9, "block.0": 0.6, "block.1": 0.3}
    for uncached, label in (({}, "(measured, prefix cached)"), ({"block.0": "position bias"},
                                                                 "(measured, prefix not cached)")):
        cal = PrefixSavings(full=1.0, served=served, fill=served, batch_shape=(8, 16), steps=1, threads=1,
                            uncached=uncached)
        r = recommend(e, prefix_savings=cal)
        text = advice_text(Comparison([], r, {}))
        assert "training compute saved: 40% " + label in text
