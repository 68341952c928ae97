"""B1: what the service costs on top of the training it runs.

The same N trials of fixed, CPU-bound work run three ways on the same 2 CPUs:

(a) the service end to end: ``regtune serve`` in a subprocess (its own local Ray
    head with 2 CPUs, MLflow and the job store on SQLite), REST submit → poll →
    ``/best`` answered;
(b) bare Ray Tune: a script with ``tune.Tuner`` on the same trainable
    (``workers.tune.trainable.train_trial``), the same configs, 2 concurrent
    trials, a fresh local Ray with 2 CPUs; plus, in the same Ray, variants that
    test the changes that would close the gap: ``reuse_actors=True``, no
    per-epoch checkpoint, and ``workers.tune.driver.run()`` itself in-process (its
    tuner, callbacks and records, without the service and the driver's start-up)
    as it is, with Tune's experiment snapshots at Tune's default period, and with
    that plus MLflow logging off the trials' path (monkeypatched);
(c) the floor: a ``multiprocessing`` pool of 2 processes training the same configs.

The service runs as it is, except when another Ray on the machine holds Ray's
default dashboard-agent port: then its head's agent ports are moved (the fix
proposed for ``service/launcher/local_head.py``), and the notes say so.

The work: a grid over ``reg_lambda`` on the built-in ``digits`` task with an MLP
of 2×768 units, epochs calibrated at run time so a trial trains ≈2 s on one core.
Trial compute is measured inside the trial in every mode as the time spent in
``Trainer.train_epoch`` (see the compute hook in :mod:`bench.common`), and
η = Σ compute ÷ (2 slots × wall).

``python -m bench.b1_overhead bare ...`` is the bare-Tune subprocess and
``... serve-moved-agent-ports`` the service with moved agent ports (internal; see
``__main__.py``).

The package, by responsibility:

- ``workload``: the spec every mode trains, the variants, the calibration of epochs
  per trial and (c) the process-pool floor;
- ``bare_tune``: (b) bare Ray Tune, the subprocess with its own local Ray;
- ``tune_driver``: (b)'s in-process ``workers.tune.driver.run()`` variants and what
  they instrument or patch (callback timings, reuse_actors, MLflow off the loop);
- ``service_mode``: (a) the service end to end, and the waits for its Ray head;
- ``profiling``: py-spy on the service's driver, and the driver's import times;
- ``analysis``: η, gaps and the rest per mode, the service's phases, the timeline plot;
- ``report``: ``run``: the modes in order, then the tables, notes and goal.
"""

from __future__ import annotations

from bench.b1_overhead.report import run

__all__ = ["run"]
