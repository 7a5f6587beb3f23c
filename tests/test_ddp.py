"""DDP under torchrun (2 CPU processes, gloo): main-process-only tracking, the same freezing on every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "ddp_train.py")
pytestmark = pytest.mark.slow


def _torchrun(out, find_unused: int, track: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(29500 + os.getpid() % 1000 + find_unused * 7 + track),
                           SCRIPT, str(out), str(find_unused), str(track)],
                          capture_output=True, text=True, env=env, timeout=600)


def test_ddp_tracks_on_rank0_and_freezes_the_same_everywhere(tmp_path):
    r = _torchrun(tmp_path, 1)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert ranks[0]["frozen"] and ranks[0]["frozen"] == ranks[1]["frozen"]
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-9)  # replicas stayed in sync
    assert ranks[1]["policy_frozen"] == ranks[0]["policy_frozen"]
    # issue 19 item 5: cb.advice() answers on every rank, the same (it raised on rank 1)
    assert ranks[0]["advice"] == ranks[1]["advice"] and ranks[0]["rows"] == ranks[1]["rows"] == 7 * 5
    df = pd.read_csv(tmp_path / "layerprobe_trajectory.csv")
    assert sorted(df["step"].unique()) == [0, 2, 4, 6, 8, 10, 12] and df["frozen"].any()


def test_ddp_revert_rows_reach_every_rank(tmp_path):
    """The revert test runs on rank 0 at each check; its rows are broadcast with the tracker's, so every rank's
    advice reads the same rows (before: only the broadcast of the plain rows was tested)."""
    r = _torchrun(tmp_path, 1, track=2)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    rows = ranks[0]["revert_rows"]
    assert sorted(int(s) for s in rows) == [2, 4, 6, 8, 10, 12]  # every check after the start
    # one row per bottom prefix k = 0..n_blocks of the 4-block tiny model, agreement a share, KL >= 0
    assert all([row["k"] for row in v] == list(range(5)) for v in rows.values())
    assert all(0.0 <= row["agreement"] <= 1.0 and row["kl"] >= 0.0 for v in rows.values() for row in v)
    assert ranks[1]["revert_rows"] == rows and ranks[1]["advice"] == ranks[0]["advice"]


def test_ddp_freezing_refused_without_find_unused_parameters(tmp_path):
    r = _torchrun(tmp_path, 0)
    assert r.returncode != 0
    err = json.loads((tmp_path / "rank0.json").read_text())["error"]
    assert "ddp_find_unused_parameters=True" in err


FSDP_SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "fsdp_train.py")


def test_fsdp2_every_rank_probes_and_rank0_records(tmp_path):
    """Issue 19 item 6: with fully_shard parameters the probe's forward pass needs every rank; the
    probe ran on rank 0 alone and the run hung until killed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", str(28500 + os.getpid() % 1000), FSDP_SCRIPT, str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert ranks[0]["advice"] == ranks[1]["advice"]
    df = pd.read_csv(tmp_path / "layerprobe_trajectory.csv")
    assert sorted(df["step"].unique()) == [0, 2, 4, 6]
    assert (df[df["step"] == 6]["weight_drift"] > 0).all()  # the whole (gathered) weights, not one shard
    single = json.loads((tmp_path / "rank0.json").read_text())["drift_reference"]
    assert df[df["step"] == 6]["weight_drift"].tolist() == pytest.approx(single, rel=1e-4)
    assert "freezing during an FSDP run is not supported" in ranks[0]["policy_error"]
