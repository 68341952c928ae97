"""How a population's trainable hands its members' metrics to Tune and back."""

from __future__ import annotations

import math

from ray.tune.utils import flatten_dict

from workers.tune.population import MEMBERS, member_results, pack_members


def test_packed_members_are_one_leaf_for_tune_and_read_back_whole() -> None:
    last = {0: {"val_accuracy": 0.5, "epoch": 3}, 7: {"val_accuracy": math.nan, "epoch": 2}}
    result = {"val_accuracy": 0.5, MEMBERS: pack_members(last)}
    # Tune keeps running statistics of every numeric leaf of a flattened result and
    # serialises them into each experiment snapshot: K members must not be K·m leaves.
    assert sorted(flatten_dict(result)) == [MEMBERS, "val_accuracy"]
    back = member_results(result)
    assert sorted(back) == [0, 7]
    assert back[0] == {"val_accuracy": 0.5, "epoch": 3}
    assert math.isnan(back[7]["val_accuracy"]) and back[7]["epoch"] == 2


def test_nested_and_flattened_member_results_still_read() -> None:
    nested = {MEMBERS: {"1": {"val_loss": 0.25}}}
    flat = {f"{MEMBERS}/1/val_loss": 0.25, "val_loss": 0.25}
    assert member_results(nested) == member_results(flat) == {1: {"val_loss": 0.25}}
    assert member_results({"val_loss": 0.25}) == {}
