"""Warm start, extension and the 1-SE answer through the real driver."""

from __future__ import annotations

from tests.workers.tune.conftest import tiny


def _sampled(trial) -> tuple[float, float]:
    return (round(trial.config["reg_lambda"], 12), round(trial.config["l1_ratio"], 12))


def test_warm_start_evaluates_the_named_configurations_first(harness) -> None:
    first = harness.run(harness.submit(tiny("warm-a", algorithm="random", num_trials=4)))
    earlier = harness.trials(first.id)
    second_best = sorted((t.objective for t in earlier), reverse=True)[1]
    # The top two, where a tie at second place admits any of the tied trials.
    eligible = {_sampled(t) for t in earlier if t.objective >= second_best}
    spec = tiny("warm-b", algorithm="tpe", num_trials=3, seed=7,
                warm_start={"job": first.id, "top_k": 2})
    second = harness.run(harness.submit(spec))
    # Started first, in the order Tune started them (a trial's record is made at its
    # first result, so record order is report order, not start order).
    started = [e.payload["config"] for e in harness.store.events_since(second.id)
               if e.kind == "trial_started"]
    order = [(round(c["reg_lambda"], 12), round(c["l1_ratio"], 12)) for c in started]
    tried_first = set(order[:2])
    assert len(order) == 3 and len(tried_first) == 2 and tried_first <= eligible
    best = max(earlier, key=lambda t: (t.objective, -t.index))
    assert _sampled(best) in tried_first
    assert order[2] not in tried_first


def test_extension_runs_only_the_new_trials(harness) -> None:
    job = harness.run(harness.submit(tiny("extend", algorithm="tpe", num_trials=3)))
    before = {t.trial_id: (t.iteration, t.updated_at) for t in harness.trials(job.id)}
    spec = dict(job.spec)
    spec["search"] = {**spec["search"], "num_trials": 5}
    harness.store.update_job(job.id, spec=spec, num_trials=5)
    job = harness.run(job.id)
    trials = harness.trials(job.id)
    assert len(trials) == 5 and len({t.trial_id for t in trials}) == 5
    for trial in trials:  # the first three were told to the sampler, not re-run
        if trial.trial_id in before:
            assert (trial.iteration, trial.updated_at) == before[trial.trial_id]
    children = harness.mlflow.search_runs(
        [job.mlflow_experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{job.mlflow_parent_run_id}'")
    assert len(children) == 5


def test_one_standard_error_picks_a_more_regularized_trial(harness) -> None:
    spec = tiny("one-se", algorithm="random", num_trials=4)
    spec["objective"]["select"] = "one_standard_error"
    spec["search"]["scheduler"] = "none"
    job = harness.run(harness.submit(spec))
    trials = harness.trials(job.id)
    answer = job.best
    best = max(trials, key=lambda t: (t.objective, -t.index))
    assert answer["policy"] == "one_standard_error"
    assert answer["best_trial_id"] == best.trial_id
    se = answer["standard_error"]
    assert se == best.metrics["objective_se"] and se >= 0
    chosen = next(t for t in trials if t.trial_id == answer["trial_id"])
    assert chosen.objective >= best.objective - se
    assert chosen.config["reg_lambda"] >= best.config["reg_lambda"]
