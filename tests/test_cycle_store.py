"""The cycle store's parts on their own: signing and verification, the planner's held-back trials, the savings."""

import json
import socket
from pathlib import Path

import pytest
import torch

from ap_core.checkpoint import CHECKPOINT_FILE
from ap_core.checks import checked_config
from ap_core.cycle_keys import cycle_key
from sweeps.engine.cycle_store import Savings, savings, sign_entry, stored_keys, verified
from sweeps.engine.tune_runner import PlanSearcher
from trainables.shared_cycles import RejectedEntry, fetch_entry, write_entry
from trainables.tune_config import REUSE

BY = {"sweep": "s", "trial": "t", "parent_run_id": ""}


@pytest.fixture(autouse=True)
def signing_key(monkeypatch):
    monkeypatch.setenv("AP_SWEEPS_STATE_KEY", "test secret")


def stored_entry(root: Path, key: str, tmp_path: Path, sign: bool = True) -> dict:
    source = tmp_path / f"src-{key}"
    source.mkdir()
    torch.save({"x": torch.arange(3)}, source / CHECKPOINT_FILE)
    digests = write_entry(root, key, source)
    assert digests is not None
    entry = {"key": key, "cycle": 0, "files": digests}
    if sign:
        sign_entry(root, entry, BY)
    return entry


def test_a_signed_entry_is_verified_and_fetched(tmp_path):
    root = tmp_path / "store"
    stored_entry(root, "k1", tmp_path)
    reuse = verified(root, "k1")
    assert reuse is not None and reuse.cycle == 0 and reuse.computed_by == BY
    fetch_entry(root, reuse, tmp_path / "copy")
    assert torch.equal(torch.load(tmp_path / "copy" / CHECKPOINT_FILE, weights_only=True)["x"], torch.arange(3))
    assert write_entry(root, "k1", tmp_path / "src-k1") is None  # written once: the second writer stands back
    assert stored_keys(root) == {"k1"}


@pytest.mark.parametrize("fault", ["unsigned", "other key", "changed file", "extra file"])
def test_an_entry_that_fails_verification_is_set_aside_with_one_line(tmp_path, monkeypatch, capsys, fault):
    root = tmp_path / "store"
    stored_entry(root, "k1", tmp_path, sign=fault != "unsigned")
    if fault == "other key":
        monkeypatch.setenv("AP_SWEEPS_STATE_KEY", "someone else")
    elif fault == "changed file":
        with (root / "k1" / CHECKPOINT_FILE).open("ab") as file:
            file.write(b"\0")
    elif fault == "extra file":
        (root / "k1" / "payload.pkl").write_bytes(b"not ours")
    assert verified(root, "k1") is None
    lines = capsys.readouterr().err.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("stored cycle k1 failed verification (") and "recomputing" in lines[0]
    )
    assert not (root / "k1").exists() and any(p.name.startswith(".rejected-k1-") for p in root.iterdir())
    assert verified(root, "k1") is None and capsys.readouterr().err == ""  # absent now: nothing more to say


def test_a_fetched_copy_that_differs_from_the_verified_digests_is_refused(tmp_path):
    root = tmp_path / "store"
    stored_entry(root, "k1", tmp_path)
    reuse = verified(root, "k1")
    (root / "k1" / CHECKPOINT_FILE).write_bytes(b"swapped after the check")
    with pytest.raises(RejectedEntry, match="changed since it was verified"):
        fetch_entry(root, reuse, tmp_path / "copy")


def test_trials_sharing_a_dense_cycle_wait_for_its_owner_without_a_slot(tmp_path):
    root = tmp_path / "store"
    points = [{"trial_name": f"t{i}"} for i in range(4)]
    searcher = PlanSearcher(points, root, ("A", "A", "B", "A"), ("l0", "l1", "l2", "l3"))
    assert searcher.suggest("id0") == points[0]  # owns A
    assert searcher.suggest("id1") == points[2]  # t1 waits for A; t2 owns B
    assert searcher.suggest("id2") is None  # t3 waits too: no trial, no slot held
    stored_entry(root, "A", tmp_path)
    searcher.on_trial_result("id0", {"cycle": 0})
    state = tmp_path / "searcher.json"
    searcher.save(str(state))
    resumed = PlanSearcher(points, root, ("A", "A", "B", "A"), ("l0", "l1", "l2", "l3"))
    resumed.restore(str(state))
    for s in (searcher, resumed):
        handed = [s.suggest("id3"), s.suggest("id4")]
        assert [p["trial_name"] for p in handed] == ["t1", "t3"]
        assert all(p[REUSE]["key"] == "A" and p[REUSE]["cycle"] == 0 for p in handed)
        assert s.suggest("id5") == "FINISHED"


def test_a_failed_owner_passes_its_dense_cycle_to_a_waiting_trial(tmp_path):
    searcher = PlanSearcher([{"n": 0}, {"n": 1}, {"n": 2}], tmp_path / "store", ("A", "A", "A"), ("a", "b", "c"))
    assert searcher.suggest("id0") == {"n": 0}
    assert searcher.suggest("id1") is None
    searcher.on_trial_complete("id0", error=True)
    assert searcher.suggest("id2") == {"n": 1}  # trains A itself, for the last one
    assert searcher.suggest("id3") is None


def test_a_searcher_saved_before_the_store_resumes(tmp_path):
    state = tmp_path / "old.json"
    state.write_text(json.dumps({"next_index": 1}))
    searcher = PlanSearcher([{"n": 0}, {"n": 1}])
    searcher.restore(str(state))
    assert searcher.suggest("x") == {"n": 1} and searcher.suggest("y") == "FINISHED"


def test_savings_count_stored_and_shared_epochs():
    base = {"model": "mlp", "dataset": "digits", "epochs": 3, "cycles": 4}
    gp, lp = checked_config(base), checked_config({**base, "method": "layerwise_magnitude"})
    other_seed = checked_config({**base, "seed": 1})
    found, holding = savings([gp, lp, other_seed], set())
    assert found == Savings(planned=45, held=0, shared=3)
    assert {cycle_key(gp, 0), cycle_key(gp, 4), cycle_key(lp, 4)} <= holding
    again, _ = savings([gp, lp], holding)
    assert again == Savings(planned=30, held=30, shared=0) and again.to_train == 0


def test_two_sweeps_started_together_train_a_shared_dense_cycle_once(tmp_path):
    root = tmp_path / "store"
    first = PlanSearcher([{"n": 0}], root, ("A",), ("a",), "first")
    second = PlanSearcher([{"n": 1}], root, ("A",), ("b",), "second")
    assert first.suggest("x") == {"n": 0}  # claims A
    assert second.suggest("y") is None  # waits for the first sweep, holding no slot
    stored_entry(root, "A", tmp_path)  # the first sweep's trial stored cycle 0 and its driver signed it
    first.on_trial_result("x", {"cycle": 0})
    assert second.suggest("y") is None  # the claim stands until the first driver's next suggest
    assert first.suggest("z") == "FINISHED"
    handed = second.suggest("y")
    assert handed is not None and handed[REUSE]["key"] == "A"


def test_a_claim_whose_driver_is_gone_is_taken_over(tmp_path):
    root = tmp_path / "store"
    (root / ".claims").mkdir(parents=True)
    (root / ".claims" / "A").write_text(f"gone@{socket.gethostname()}:999999999")
    searcher = PlanSearcher([{"n": 0}], root, ("A",), ("a",), "mine")
    assert searcher.suggest("x") == {"n": 0}
    assert (root / ".claims" / "A").read_text().startswith("mine@")


def test_trials_tune_saved_but_this_state_had_not_handed_out_are_not_handed_out_again(tmp_path):
    """Tune uploads its trials and the searcher's state as two files; a driver killed between them must not
    make the resumed sweep run a trial twice."""
    points = [{"trial_name": f"t{i}"} for i in range(4)]
    state = tmp_path / "searcher-state.json"
    state.write_text(json.dumps({"next_index": 1, "held": {"A": [1]}}))
    trials = [[json.dumps({"config": {"trial_name": name}}), "{}"] for name in ("t0", "t1", "t2")]
    (tmp_path / "experiment_state-x.json").write_text(json.dumps({"trial_data": trials}))
    searcher = PlanSearcher(points)
    searcher.restore(str(state))
    assert searcher.suggest("x") == points[3] and searcher.suggest("y") == "FINISHED"
