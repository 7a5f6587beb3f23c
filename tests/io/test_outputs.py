"""The output boundary (``layerprobe/io/outputs.py``): nothing the user did not ask to replace is ever
deleted, anything in the way is refused before any change, and a failure or a signal at any step
leaves the output folder exactly as it was.

The step tests fail every file-system call of a run in turn (an ``OSError`` and a ``KeyboardInterrupt``
at call i, i = 0, 1, ...) and compare the whole folder, byte for byte, before and after.
"""

from __future__ import annotations

import errno
import os
import signal
import stat

import pytest

import layerprobe.io.outputs as atomic
from layerprobe.io.outputs import atomic_output_dir, atomic_write_text, check_output_names
from layerprobe.errors import LayerProbeError

#: the calls that change the file system, failed one at a time (tempfile and shutil use the same ``os``)
STEPS = ("mkdir", "rename", "replace", "rmdir", "unlink", "fsync", "chmod", "link", "symlink")


def tree(root, skip_tmp=False):
    """Every entry under ``root``, links not followed: files by content, links by target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if skip_tmp and any(part.startswith(atomic._TMP_PREFIX) for part in rel.split(os.sep)):
                continue
            st = os.lstat(p)
            out[rel] = ("link", os.readlink(p)) if stat.S_ISLNK(st.st_mode) else \
                ("dir",) if stat.S_ISDIR(st.st_mode) else ("file", open(p, "rb").read()) \
                if stat.S_ISREG(st.st_mode) else ("special", st.st_mode)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return out


def user_folder(out):
    """An output folder as users leave it: an old result, their own files, a folder (a mount point in
    the field), a link, a hard-linked file."""
    out.mkdir()
    (out / "comparison.json").write_text("old result")
    (out / "blocks.png").write_bytes(b"old png")
    (out / "notes.txt").write_text("mine")
    (out / "data").mkdir()
    (out / "data" / "big.bin").write_bytes(b"\x00" * 100)
    os.symlink("notes.txt", out / "link")
    os.link(out / "notes.txt", out / "hard.txt")


def write_results(tmp):
    atomic_write_text(os.path.join(tmp, "comparison.json"), "new result")
    atomic_write_text(os.path.join(tmp, "comparison.csv"), "a,b\n")
    atomic_write_text(os.path.join(tmp, "blocks.png"), "new png")


class Faults:
    """Count the mutating calls; make call ``fail_at`` raise ``exc`` instead of running."""

    def __init__(self, monkeypatch, fail_at=None, exc=None):
        self.n, self.fail_at, self.exc, self.failed = 0, fail_at, exc, None
        for name in STEPS:
            monkeypatch.setattr(os, name, self.wrap(name, getattr(os, name)))

    def wrap(self, name, real):
        def call(*a, **k):
            i = self.n
            self.n += 1
            if i == self.fail_at:
                self.failed = name
                raise self.exc()
            return real(*a, **k)
        return call


def attempt(out, monkeypatch, fail_at=None, exc=None):
    faults = Faults(monkeypatch, fail_at, exc)
    try:
        with atomic_output_dir(out, ["comparison.json", "comparison.csv", "blocks.png"]) as tmp:
            write_results(tmp)
        raised = None
    except (LayerProbeError, KeyboardInterrupt) as e:
        raised = e
    finally:
        monkeypatch.undo()
    return faults, raised


@pytest.mark.parametrize("exc", [lambda: OSError(errno.EBUSY, "Device or resource busy"), KeyboardInterrupt],
                         ids=["oserror", "signal"])
@pytest.mark.parametrize("existing", [True, False], ids=["existing_folder", "new_folder"])
def test_every_step_failing_leaves_the_folder_as_it_was(tmp_path, monkeypatch, exc, existing):
    out = tmp_path / "res"
    if existing:
        user_folder(out)
    before = tree(tmp_path)
    faults, raised = attempt(out, monkeypatch)  # a clean run: the steps, and the result
    assert raised is None and faults.n > 5
    after = tree(tmp_path)
    assert after[os.path.join("res", "comparison.json")] == ("file", b"new result")
    assert {k: v for k, v in before.items() if "comparison" not in k and "blocks" not in k}.items() <= after.items()
    for i in range(faults.n):
        if existing:
            import shutil

            shutil.rmtree(out)
            user_folder(out)
        elif out.exists():
            import shutil

            shutil.rmtree(out)
        f, raised = attempt(out, monkeypatch, i, exc)
        state = tree(tmp_path, skip_tmp=True)
        leftover = [n for n in (os.listdir(out) if out.exists() else []) if n.startswith(atomic._TMP_PREFIX)]
        if leftover and not existing and os.listdir(out) == leftover:  # the folder made for the run holds only
            state.pop("res")                                                # our temporary folder
        if raised is None:  # the failure hit the clean-up after the results were in: the run succeeded
            assert state == after, (i, f.failed)  # a failed clean-up, or a mkdir that makedirs tolerates
        elif state == after:  # a signal while our temporary folder was removed, after the results were in
            assert exc is KeyboardInterrupt and f.failed in ("unlink", "rmdir"), (i, f.failed)
        else:
            assert state == before, (i, f.failed, raised)
            assert isinstance(raised, KeyboardInterrupt if exc is KeyboardInterrupt else LayerProbeError)
            if isinstance(raised, LayerProbeError):
                assert "\n" not in str(raised) and ".lp-" not in str(raised) and str(out) in str(raised)
        # our own temporary folder stays only when removing it was the step that failed
        assert not leftover or f.failed in ("unlink", "rmdir"), (i, f.failed, leftover)


def test_a_real_signal_during_the_swap_puts_everything_back(tmp_path, monkeypatch):
    """SIGINT and SIGTERM are held while the results are moved in; one that arrives meanwhile undoes the
    swap, then acts (KeyboardInterrupt here)."""
    out = tmp_path / "res"
    user_folder(out)
    before = tree(tmp_path)
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # halfway through moving the results in
            os.kill(os.getpid(), signal.SIGINT)
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(out) as tmp:
            write_results(tmp)
    monkeypatch.undo()
    assert tree(tmp_path) == before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back


def test_only_the_results_are_ever_moved(tmp_path, monkeypatch):
    """was: every entry of --out moved into the temporary folder and back; a mount point inside it (EBUSY)
    lost the entries moved before it, and --out on a mount point always failed."""
    out = tmp_path / "res"
    user_folder(out)
    real_rename = os.rename
    touched = []

    def rename(src, dst):
        for p in (src, dst):
            touched.append(os.fspath(p))
            if os.fspath(p) in (str(out), str(out / "data"), str(out / "notes.txt"), str(out / "link")):
                raise OSError(errno.EBUSY, "Device or resource busy", p)  # a mount point
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with atomic_output_dir(out) as tmp:
        write_results(tmp)
    monkeypatch.undo()
    assert (out / "data" / "big.bin").read_bytes() == b"\x00" * 100 and (out / "notes.txt").read_text() == "mine"
    assert (out / "comparison.json").read_text() == "new result" and (out / "hard.txt").read_text() == "mine"
    assert os.readlink(out / "link") == "notes.txt"
    assert sorted(os.listdir(out)) == ["blocks.png", "comparison.csv", "comparison.json", "data", "hard.txt",
                                       "link", "notes.txt"]


def _fifo(p):
    os.mkfifo(p)


def _dir_with_files(p):
    p.mkdir()
    (p / "keep.txt").write_text("user data")


def _link_to_dir(p):
    (p.parent / "elsewhere").mkdir()
    os.symlink("elsewhere", p)


def _link_to_file(p):
    (p.parent / "target.txt").write_text("user data")
    os.symlink("target.txt", p)


def _empty_dir(p):
    p.mkdir()


IN_THE_WAY = {"dir_with_files": (_dir_with_files, "a directory"), "empty_dir": (_empty_dir, "a directory"),
              "fifo": (_fifo, "a FIFO"), "link_to_dir": (_link_to_dir, "a symbolic link"),
              "link_to_file": (_link_to_file, "a symbolic link")}


@pytest.mark.parametrize("kind", sorted(IN_THE_WAY))
@pytest.mark.parametrize("name", ["blocks.png", "comparison.csv"])
def test_anything_in_the_way_is_refused_before_any_change(tmp_path, kind, name):
    """was: ``res/blocks.png/`` holding the user's files was replaced silently, exit 0."""
    out = tmp_path / "res"
    out.mkdir()
    (out / "comparison.json").write_text("old result")
    make, what = IN_THE_WAY[kind]
    make(out / name)
    before = tree(tmp_path)
    with pytest.raises(LayerProbeError, match=f"{name}: cannot write output file: it exists and is {what}") as e:
        check_output_names(out, ["comparison.json", "comparison.csv", "blocks.png"])
    assert e.value.path == str(out / name)
    ran = []
    with pytest.raises(LayerProbeError, match=what):  # named up front: the block never runs
        with atomic_output_dir(out, ["comparison.json", "comparison.csv", "blocks.png"]) as tmp:
            ran.append(tmp)
    assert ran == [] and tree(tmp_path) == before
    with pytest.raises(LayerProbeError, match=what):  # not named: found after the block, before any change
        with atomic_output_dir(out) as tmp:
            write_results(tmp)
    assert tree(tmp_path) == before


def test_a_result_that_is_not_a_file_is_refused(tmp_path):
    out = tmp_path / "res"
    with pytest.raises(LayerProbeError, match="not a plain file"):
        with atomic_output_dir(out) as tmp:
            os.mkdir(os.path.join(tmp, "sub"))
    assert not out.exists()


@pytest.mark.parametrize("length", [250, 252, 255])
def test_long_legal_names_work(tmp_path, length):
    """was: 'File name too long' on the temporary name for 250-252-byte names."""
    name = "r" * (length - 5) + ".json"
    p = atomic_write_text(tmp_path / name, "x")
    assert open(p).read() == "x" and os.listdir(tmp_path) == [name]
    d = tmp_path / ("d" * length)
    with atomic_output_dir(d) as tmp:
        atomic_write_text(os.path.join(tmp, name), "y")
    assert os.listdir(d) == [name] and (d / name).read_text() == "y"
    with pytest.raises(LayerProbeError, match="File name too long"):  # one past the limit: one line, as before
        atomic_write_text(tmp_path / ("r" * 256), "x")


def test_no_inodes_names_the_users_path(tmp_path, monkeypatch):
    """was: the message named the temporary folder."""
    def no_inodes(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", no_inodes)
    monkeypatch.setattr(atomic.tempfile, "mkstemp", no_inodes)
    out = tmp_path / "res"
    with pytest.raises(LayerProbeError) as e:
        with atomic_output_dir(out):
            pass
    assert e.value.path == str(out) and "No space left" in str(e.value) and not out.exists()
    with pytest.raises(LayerProbeError) as e:
        atomic_write_text(tmp_path / "s.json", "x")
    assert e.value.path == str(tmp_path / "s.json") and "nothing was written" in str(e.value)
    assert os.listdir(tmp_path) == []


def test_a_failed_restore_keeps_the_users_files_and_says_where(tmp_path, monkeypatch):
    """Two faults: the swap fails, and so does putting an old file back. The old file is kept in the
    temporary folder and the message says so; it is never deleted."""
    out = tmp_path / "res"
    user_folder(out)
    real_rename = os.rename
    n = []

    def rename(src, dst):
        n.append(src)
        if len(n) == 4 or (len(n) > 4 and os.sep + "o" + os.sep in os.fspath(src)):
            raise OSError(errno.EIO, "Input/output error")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(LayerProbeError, match="cannot put back 1 earlier file") as e:
        with atomic_output_dir(out) as tmp:
            write_results(tmp)
    monkeypatch.undo()
    kept = e.value.path
    assert kept.startswith(str(out)) and os.listdir(kept) == ["blocks.png"]
    assert (open(os.path.join(kept, "blocks.png"), "rb").read()) == b"old png"


# ------------------------------------------------------------------ the CLI: refused before any work, one line

@pytest.fixture(scope="module")
def snaps(tmp_path_factory, tokenizer, texts):
    from conftest import tiny_bert

    from layerprobe import take_snapshot

    root = tmp_path_factory.mktemp("atomic_cli")
    paths = []
    for seed in (0, 1):
        p = root / f"s{seed}.pt"
        take_snapshot(tiny_bert(seed), tokenizer, texts[:12], max_length=16, progress=False).save(p)
        paths.append(p)
    return paths


@pytest.mark.parametrize("kind", ["dir_with_files", "fifo", "link_to_file"])
@pytest.mark.parametrize("argv_extra,name", [([], "blocks.png"), ([], "groups.csv"),
                                             (["--cross-layer"], "cross_layer.png"), (["series"], "trajectory.csv")])
def test_cli_refuses_what_is_in_the_way_before_any_work(tmp_path, capsys, kind, argv_extra, name):
    """The inputs are not checkpoints: had any work begun, the message would be about them."""
    from layerprobe.cli import main

    out = tmp_path / "res"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    IN_THE_WAY[kind][0](out / name)
    inputs = []
    for i in range(3 if argv_extra == ["series"] else 2):
        inputs.append(tmp_path / f"in{i}.pt")
        inputs[-1].write_text("not a checkpoint")
    before = tree(tmp_path)
    extra = [] if argv_extra == ["series"] else argv_extra
    rc = main(["compare", *map(str, inputs), "--out", str(out), "--quiet", "--no-ci", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"{out / name}: cannot write output file: it exists and is {IN_THE_WAY[kind][1]}" in err
    assert tree(tmp_path) == before


def test_cli_writes_next_to_a_folder_it_does_not_replace(snaps, tmp_path, capsys):
    """A folder that no result is named like stays, and the run succeeds (a mount point, say)."""
    from layerprobe.cli import main

    out = tmp_path / "res"
    out.mkdir()
    _dir_with_files(out / "cross_layer.png")  # not written without --cross-layer: not in the way
    assert main(["compare", str(snaps[0]), str(snaps[1]), "--out", str(out), "--quiet", "--no-ci"]) == 0
    assert (out / "cross_layer.png" / "keep.txt").read_text() == "user data"
    assert {"comparison.json", "blocks.png", "groups.csv", "comparison.csv"} <= set(os.listdir(out))
    assert not [n for n in os.listdir(out) if n.startswith(".")]


def test_demo_refuses_what_is_in_the_way_before_any_work(tmp_path, capsys):
    from layerprobe.cli import main

    out = tmp_path / "d"
    out.mkdir()
    _dir_with_files(out / "base.pt")
    assert main(["demo", "--out", str(out), "--quiet"]) == 2  # before the data is read or a model loaded
    err = capsys.readouterr().err
    assert f"{out / 'base.pt'}: cannot write output file: it exists and is a directory" in err
    assert len(err.splitlines()) == 1 and (out / "base.pt" / "keep.txt").read_text() == "user data"
