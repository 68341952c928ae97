"""Where a population's epoch goes: ``python -m bench.b2_step_profile [--k 64]``.

Not part of ``python -m bench`` (it judges no goal): it prints the figures
docs/training.md ("Throughput") quotes about B2's kernel, on B2's own trials
(``b2_population.make_setups``: digits MLP [64], batch 128, every hyperparameter
sampled), one thread:

* an epoch of a population of K split into its training steps and its evaluation;
* one training step split into the matrix products (the first layer's ``addmm``,
  the grouped ``baddbmm``/``bmm`` and the weight gradient's ``mm``, re-run alone on
  the step's own tensors) and the rest (losses, ReLU, bias, penalty, optimizer,
  autograd);
* the step's floating-point rate, from the products' shapes (2 flops per
  multiply-add), beside one unbatched ``Trainer`` step of the same trial.

Medians over interleaved repetitions; CPU time of this process.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable


def _cpu_ms(fn: Callable[[], Any], n: int) -> float:
    fn()
    start = time.process_time()
    for _ in range(n):
        fn()
    return 1e3 * (time.process_time() - start) / n


def _timed(fn: Callable[[], Any], n: int) -> float:
    """CPU ms per call of ``fn``, ``n`` calls, no warm-up call (each call advances state)."""
    start = time.process_time()
    for _ in range(n):
        fn()
    return 1e3 * (time.process_time() - start) / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=64, help="members per population")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from bench.b2_population import make_setups
    from workers.training import Trainer
    from workers.training.population import PopulationTrainer

    setups = make_setups(args.k, 10)
    pop = PopulationTrainer(setups, torch.device("cpu"))
    pop.train_epoch()
    x = pop.data.x_train[:128]
    k, hidden, features = pop._params[0].shape
    classes = pop._params[2].shape[1]
    # The step's products, alone, on tensors of its shapes (one hidden layer).
    w1, b1 = pop._params[0].detach().reshape(k * hidden, features), pop._params[1].detach()
    w2, b2 = pop._params[2].detach(), pop._params[3].detach()
    h = torch.relu(torch.addmm(b1.reshape(-1, 1), w1, x.t())).reshape(k, hidden, -1)
    g = torch.randn(k, classes, x.shape[0])

    def products() -> None:
        torch.addmm(b1.reshape(-1, 1), w1, x.t())             # first layer
        torch.baddbmm(b2.unsqueeze(2), w2, h)                  # second layer
        torch.bmm(g, h.transpose(1, 2))                        # ∂W2
        torch.bmm(w2.transpose(1, 2), g)                       # ∂h
        torch.mm(h.reshape(k * hidden, -1), x)                 # ∂W1

    rows: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        # Fresh trainers each round, epochs 2-4 of their 10: the steps see real batches
        # and the schedules as a run does (one batch stepped on hundreds of times does not).
        fresh = PopulationTrainer(setups, torch.device("cpu"))
        alone = Trainer(setups[0], torch.device("cpu"))
        fresh.train_epoch()
        alone.train_epoch()
        rows.setdefault("epoch", []).append(_timed(fresh.train_epoch, 3))
        rows.setdefault("evaluate", []).append(_timed(fresh.evaluate, 3))
        rows.setdefault("unbatched epoch", []).append(_timed(alone.train_epoch, 3))
        rows.setdefault("unbatched evaluate", []).append(_timed(alone.evaluate, 3))
        rows.setdefault("products", []).append(_cpu_ms(products, 30))
    med = {name: statistics.median(v) for name, v in rows.items()}
    med["step"] = (med["epoch"] - med["evaluate"]) / pop.steps_per_epoch
    med["unbatched step"] = ((med["unbatched epoch"] - med["unbatched evaluate"])
                             / pop.steps_per_epoch)
    steps = pop.steps_per_epoch
    per_row = 2 * k * (hidden * features + classes * hidden)            # forward
    per_row += 2 * k * (2 * classes * hidden + hidden * features)       # backward
    flops = per_row * pop.n_train / steps    # an average step (the last batch is partial)
    product_flops = per_row * x.shape[0]     # the products alone ran on a full batch
    epoch = med["epoch"]
    print(f"population of {k}, digits MLP [{hidden}], batch {x.shape[0]}, one thread")
    print(f"epoch {epoch:.1f} ms: {steps} steps × {med['step']:.2f} ms "
          f"({100 * steps * med['step'] / epoch:.0f} %) + evaluation {med['evaluate']:.1f} ms "
          f"({100 * med['evaluate'] / epoch:.0f} %)")
    print(f"step: products alone {med['products']:.2f} ms "
          f"({100 * med['products'] / med['step']:.0f} % of the step), the rest "
          f"{med['step'] - med['products']:.2f} ms")
    print(f"step (average): {flops / 1e6:.0f} MFLOP in {med['step']:.2f} ms = "
          f"{flops / med['step'] / 1e6:.1f} GFLOP/s; the products alone "
          f"{product_flops / med['products'] / 1e6:.1f} GFLOP/s")
    print(f"one unbatched Trainer step of the same trial: {med['unbatched step']:.3f} ms = "
          f"{flops / k / med['unbatched step'] / 1e6:.1f} GFLOP/s; per member, the "
          f"population's step costs {med['step'] / k:.3f} ms "
          f"({med['unbatched step'] * k / med['step']:.1f}× fewer ms per member)")
    print(f"per member-epoch: {epoch / k:.2f} ms")


if __name__ == "__main__":
    main()
