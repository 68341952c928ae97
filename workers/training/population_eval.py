"""Evaluation of a population: every member's eval-mode outputs and metrics at once.

A mixin of :class:`~workers.training.population.PopulationTrainer`, apart from the
training loop: the formulas of ``metrics`` and ``Trainer.evaluate``, one tensor
operation per metric for all K members instead of K.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from workers.training.population_ops import (_classification_metrics, _regression_metrics,
                                             _rows, _weight_metrics, first_argmax)

#: Rows per first-layer product in evaluation. A (256, K·H) block of activations
#: stays in the core's cache through its ReLU and the grouped product after it;
#: the whole ~1400-row split at once writes and rereads ~24 MB at K = 64
#: (measured: 16 against 20 ms per evaluation of the digits train split, K = 64;
#: rows are independent, so the outputs are the same bit for bit).
EVAL_CHUNK = 256


class PopulationEvaluation:
    """``predict`` and ``evaluate``; the state they read is the trainer's."""

    _params: list[Tensor]
    _members: list[Any]
    _step: int
    _epoch: int
    data: Any
    setups: list[Any]
    _group_losses: Any
    _hyper_cache: dict[Any, Any]

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Every active member's outputs in eval mode: (K, N, n_outputs)."""
        return self._predict(x).transpose(1, 2)

    @torch.no_grad()
    def _predict(self, x: Tensor) -> Tensor:
        """Class-major eval-mode outputs (K, n_outputs, N).

        Same arithmetic as the training forward, but the first layer is computed
        row-major, xWᵀ of shape (N, K·H): for the ~1400-row evaluation that
        orientation of the product is markedly faster on the CPU, while for the
        small training batches (with a backward pass) the feature-major one is.
        """
        chunks = []
        n_layers = len(self._params) // 2
        w, b = self._params[0], self._params[1]
        k, width = w.shape[0], w.shape[1]
        for i in range(0, len(x), EVAL_CHUNK):
            h = torch.addmm(b.reshape(-1), x[i:i + EVAL_CHUNK], w.reshape(k * width, -1).t())
            if n_layers > 1:
                h = h.relu_()  # in place while contiguous: much faster than on the view
            h = h.reshape(-1, k, width).permute(1, 2, 0)  # (K, H, N), a strided view
            for layer in range(1, n_layers):
                w_l, b_l = self._params[2 * layer], self._params[2 * layer + 1]
                h = torch.baddbmm(b_l.unsqueeze(2), w_l, h)
                if layer < n_layers - 1:
                    h = h.relu_()
            chunks.append(h)
        return torch.cat(chunks, dim=2)

    @torch.no_grad()
    def evaluate(self) -> list[dict[str, float]]:
        """Each active member's metrics now, as ``Trainer.evaluate`` defines them.

        The formulas are those of metrics.py and ``Trainer.evaluate``, evaluated
        for all members at once (one tensor op per metric instead of K).
        """
        d = self.data
        out_train, out_val = self._predict(d.x_train), self._predict(d.x_val)
        factors = [m.schedule.factor(self._step - 1) if self._step > 0 else 0.0
                   for m in self._members]
        train_loss = self._eval_loss(out_train, d.y_train, factors)
        val_loss = self._eval_loss(out_val, d.y_val, factors)
        columns: dict[str, list[float]] = {"train_loss": train_loss, "val_loss": val_loss,
                                           "loss_gap": [v - t for t, v in zip(train_loss,
                                                                             val_loss)]}
        if d.kind == "classification":
            assert d.n_classes is not None
            columns["train_accuracy"] = _rows(
                (first_argmax(out_train) == d.y_train).double().mean(dim=1))
            columns.update(_classification_metrics(out_val, d.y_val, d.n_classes))
        else:
            columns.update(_regression_metrics(out_val.reshape(len(self._members), -1),
                                               d.y_val))
        columns.update(_weight_metrics(self._params[0::2],
                                       [m.initial_norms for m in self._members]))
        results = []
        for k, factor in enumerate(factors):
            result: dict[str, Any] = {"epoch": self._epoch, "step": self._step,
                                      "reg_active": int(factor > 0.0)}
            for name, values in columns.items():
                result[name] = values[k]
            results.append(result)
        return results

    def _eval_loss(self, out: Tensor, target: Tensor, factors: list[float]) -> list[float]:
        """Each member's ``PredictionLoss(out, target, factor)`` averaged in float64."""
        result = [0.0] * len(self._members)
        for positions, per_sample in self._group_losses(out, target, factors):
            for p, value in zip(positions, _rows(per_sample.double().mean(dim=1))):
                result[p] = value
        return result
