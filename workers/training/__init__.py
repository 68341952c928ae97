"""The training library: plain PyTorch, no Ray, MLflow, FastAPI or service imports.

The Tune driver (workers/tune) uses exactly this surface::

    setup = build_setup(spec, spec.resolve_params(sampled))
    trainer = Trainer(setup)              # device: select_device() unless given
    while not trainer.done:
        metrics = trainer.train_epoch()   # names from search_spaces.catalog.METRICS
        trainer.save(checkpoint_dir)      # restore(checkpoint_dir) resumes bit-identically

Keeping it free of Ray makes every piece testable in a plain pytest process.
"""

from workers.training.device import select_device
from workers.training.setup import TrialSetup, build_setup
from workers.training.trainer import Trainer

__all__ = ["Trainer", "TrialSetup", "build_setup", "select_device"]
