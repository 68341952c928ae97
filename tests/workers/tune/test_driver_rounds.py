"""Rounds: a short round is topped up, an interrupted round is restored by name."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from service.store import open_store
from workers.tune import driver


@pytest.fixture
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    yield s
    s.close()


def job_of(store, num_trials: int):
    job, _ = store.create_job(name="r", owner="o", spec={"name": "r"}, num_trials=num_trials)
    return job


def fake_tuners(monkeypatch, store, per_round: list[int]) -> list[str]:
    """build_tuner that finishes per_round[i] trials in the i-th round; returns names used."""
    names: list[str] = []

    def build(spec, job, store_, settings, callbacks, name):
        names.append(name)
        count = per_round[len(names) - 1]

        def fit():
            start = len(store.list_trials(job.id))
            for i in range(count):
                store.upsert_trial(job.id, f"t{start + i}", status="completed", iteration=1)

        return SimpleNamespace(fit=fit)

    monkeypatch.setattr(driver, "build_tuner", build)
    return names


def test_a_short_round_is_followed_by_a_top_up_round(store, monkeypatch) -> None:
    job = job_of(store, 6)
    names = fake_tuners(monkeypatch, store, [3, 3])
    driver.run_rounds(None, job, store, None, [])
    assert len(store.list_trials(job.id)) == 6
    assert names == [f"{job.id}-r0", f"{job.id}-r1"]
    assert driver.open_round(store, job.id) is None


def test_an_interrupted_round_is_restored_by_name(store, monkeypatch) -> None:
    job = job_of(store, 4)
    store.add_event(job.id, "round_started", {"name": f"{job.id}-r0", "finished": 0})
    store.upsert_trial(job.id, "t0", status="completed", iteration=1)
    assert driver.open_round(store, job.id) == f"{job.id}-r0"
    names = fake_tuners(monkeypatch, store, [3])
    driver.run_rounds(None, job, store, None, [])
    assert names == [f"{job.id}-r0"] and len(store.list_trials(job.id)) == 4


def test_a_round_without_progress_ends_the_loop(store, monkeypatch) -> None:
    job = job_of(store, 3)
    names = fake_tuners(monkeypatch, store, [0, 0, 0])
    driver.run_rounds(None, job, store, None, [])
    assert len(names) == 1 and store.list_trials(job.id) == []


def test_an_unreadable_searcher_state_is_detected(tmp_path):
    """A driver killed while Tune wrote its searcher state leaves it truncated."""
    import pickle

    from workers.tune.driver import searcher_state_readable

    assert searcher_state_readable(str(tmp_path / "absent"))
    assert searcher_state_readable(str(tmp_path))  # no searcher state at all
    good = {"sampler": [1, 2, 3]}
    (tmp_path / "searcher-state-2026-11-24_22-15-20.pkl").write_bytes(pickle.dumps(good))
    assert searcher_state_readable(str(tmp_path))
    (tmp_path / "searcher-state-2026-11-24_22-15-28.pkl").write_bytes(pickle.dumps(good)[:7])
    assert not searcher_state_readable(str(tmp_path))  # the newest one is what Tune reads
    (tmp_path / "searcher-state-2026-11-24_22-15-28.pkl").write_bytes(b"")
    assert not searcher_state_readable(str(tmp_path))
    assert searcher_state_readable("s3://bucket/results/job-r0")


def test_lost_trials_are_failed_with_why_and_their_mlflow_runs_ended(store) -> None:
    """Trials the restored experiment never brought back: failed in the store (with an
    event saying why) and FAILED in MLflow, not RUNNING for ever, whether the store knew
    the run's id or the run was made after the trial's row (found by its tags)."""
    job = job_of(store, 3)
    store.upsert_trial(job.id, "done", status="completed", iteration=2, mlflow_run_id="r-done")
    store.upsert_trial(job.id, "lost", status="running", iteration=1, mlflow_run_id="r-lost")
    store.upsert_trial(job.id, "early", status="running", iteration=1)  # run id never stored
    ended: list[tuple[str, str]] = []
    searched: list[tuple[list[str], str]] = []

    def run(run_id: str, trial_id: str) -> SimpleNamespace:
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id),
                               data=SimpleNamespace(tags={"regtune.trial_id": trial_id}))

    class Client:
        broken = False

        def search_runs(self, experiments: list[str], filter_string: str) -> list:
            searched.append((experiments, filter_string))
            return [run("r-early", "early"), run("r-other-job", "elsewhere")]

        def set_terminated(self, run_id: str, status: str) -> None:
            if self.broken:
                raise RuntimeError("MLflow is down")
            ended.append((run_id, status))

    driver._close_orphans(store, job.id, Client(), "exp-1")
    statuses = {t.trial_id: t.status for t in store.list_trials(job.id)}
    assert statuses == {"done": "completed", "lost": "failed", "early": "failed"}
    assert sorted(ended) == [("r-early", "FAILED"), ("r-lost", "FAILED")]
    assert searched and searched[0][0] == ["exp-1"] and job.id in searched[0][1]
    failed = [e.payload for e in store.events_since(job.id) if e.kind == "trial_failed"]
    assert sorted(p["trial_id"] for p in failed) == ["early", "lost"]
    assert {p["error"] for p in failed} == {"lost when the driver restarted"}
    # An MLflow failure does not stop the trials from being closed in the store.
    store.upsert_trial(job.id, "other", status="running", iteration=1, mlflow_run_id="r-o")
    broken = Client()
    broken.broken = True
    driver._close_orphans(store, job.id, broken, "exp-1")
    assert {t.trial_id: t.status for t in store.list_trials(job.id)}["other"] == "failed"
