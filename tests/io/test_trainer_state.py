"""A Trainer checkpoint's ``trainer_state.json`` (``io/trainer_state.py``).

Every case gives exit 0 with correct output, or exit 2 with one line on stderr naming the file and
the problem; no code from a file ever runs, nothing is half-written. Catalogue: docs/errors.md.
"""

from __future__ import annotations

import shutil


from hostile import run


def test_unreadable_trainer_state_is_ignored(f3, capsys, tmp_path):
    """trainer_state.json is optional information. was: a deeply nested one crashed a series (RecursionError)."""
    run_dir = tmp_path / "run"
    for step in (1, 2):
        shutil.copytree(f3["good"], run_dir / f"checkpoint-{step}")
    (run_dir / "checkpoint-2" / "trainer_state.json").write_text("[" * 100_000 + "]" * 100_000)
    (run_dir / "checkpoint-1" / "trainer_state.json").write_text('{"global_step": true, "max_steps": -1}')
    rc, out, err = run(["compare", f3["good"], run_dir, "--out", tmp_path / "o", "--quiet"], capsys)
    assert rc == 0, err
    assert "steps [0, 1, 2]" in err  # the summary goes to stderr, stdout holds the table (issue 19 item 10)
