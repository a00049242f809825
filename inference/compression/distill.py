"""Knowledge distillation: train a student to match a teacher's softened outputs.

The loss is Hinton et al.'s: KL(student_T || teacher_T) * T**2, where ``_T`` means softmax at
temperature T (the T**2 keeps gradient magnitudes comparable across temperatures), optionally
mixed with cross-entropy on hard labels. Teacher outputs are computed once, up front. A held-out
split drives early stopping on top-1 agreement with the teacher (ties broken by loss), and the
best student seen is the one returned.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from inference.compression.evaluate import one_output

# progress(phase, percent, loss); loss is None outside training.
Progress = Callable[[str, float, float | None], None]
GENERATORS = ("normal", "uniform")


@dataclass
class Distilled:
    student: nn.Module
    epochs_run: int
    best_epoch: int
    holdout_agreement: float
    holdout_loss: float
    history: list[dict[str, float]] = field(default_factory=list)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    labels: torch.Tensor | None = None,
    hard_weight: float = 0.0,
) -> torch.Tensor:
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(student_logits / temperature, dim=1),
        nn.functional.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (temperature**2)
    if labels is None or hard_weight == 0.0:
        return soft
    hard = nn.functional.cross_entropy(student_logits, labels)
    return (1.0 - hard_weight) * soft + hard_weight * hard


def distill(
    teacher: nn.Module,
    student: nn.Module,
    *,
    inputs: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    input_shape: tuple[int, ...] | None = None,
    generator: str = "normal",
    samples: int = 4096,
    temperature: float = 4.0,
    hard_weight: float = 0.0,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 64,
    patience: int = 3,
    holdout: float = 0.1,
    seed: int = 0,
    progress: Progress | None = None,
) -> Distilled:
    """Train a copy of ``student`` on ``inputs`` (with optional hard ``labels``), or on
    ``samples`` inputs of ``input_shape`` (no batch dimension) drawn from ``generator``.

    The teacher must output class logits of shape (batch, classes). Deterministic for a given
    seed; the global RNG state is restored afterwards.
    """
    _validate(
        inputs,
        labels,
        input_shape,
        generator,
        samples,
        temperature,
        hard_weight,
        epochs,
        lr,
        batch_size,
        patience,
        holdout,
    )
    notify = progress or (lambda phase, percent, loss: None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if inputs is None:
            shape = (samples, *(input_shape or ()))
            inputs = torch.randn(shape) if generator == "normal" else torch.rand(shape) * 2 - 1
        notify("teacher", 0.0, None)
        teacher_logits = _predict(teacher, inputs, batch_size=max(batch_size, 256))
        if teacher_logits.ndim != 2:
            raise ValueError("Distillation needs a teacher that outputs (batch, classes) logits.")
        order = torch.randperm(len(inputs))
        cut = max(1, int(len(inputs) * holdout))
        held, train = order[:cut], order[cut:]
        model = copy.deepcopy(student)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        best = (-1.0, float("inf"))
        best_state, best_epoch, stale = copy.deepcopy(model.state_dict()), 0, 0
        history: list[dict[str, float]] = []
        for epoch in range(1, epochs + 1):
            model.train()
            total, seen = 0.0, 0
            for batch in train[torch.randperm(len(train))].split(batch_size):
                loss = distillation_loss(
                    model(inputs[batch]),
                    teacher_logits[batch],
                    temperature,
                    labels[batch] if labels is not None else None,
                    hard_weight,
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
                seen += len(batch)
            agreement, held_loss = _score(model, inputs[held], teacher_logits[held], temperature)
            history.append(
                {
                    "epoch": epoch,
                    "loss": total / seen,
                    "holdout_agreement": agreement,
                    "holdout_loss": held_loss,
                }
            )
            notify("distill", 100.0 * epoch / epochs, total / seen)
            if (agreement, -held_loss) > (best[0], -best[1]):
                best, best_epoch, stale = (agreement, held_loss), epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= patience:
                    break
        model.load_state_dict(best_state)
        notify("done", 100.0, best[1])
    return Distilled(model.eval(), len(history), best_epoch, best[0], best[1], history)


@torch.no_grad()
def _predict(module: nn.Module, inputs: torch.Tensor, *, batch_size: int) -> torch.Tensor:
    was_training: bool | None = module.training
    try:
        module.eval()
    except NotImplementedError:  # a torch.export graph runs as exported and has no modes
        was_training = None
    try:
        return torch.cat([one_output(module(chunk)).float() for chunk in inputs.split(batch_size)])
    finally:
        if was_training is not None:
            module.train(was_training)


def _score(
    model: nn.Module, inputs: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> tuple[float, float]:
    logits = _predict(model, inputs, batch_size=1024)
    agreement = float((logits.argmax(1) == teacher_logits.argmax(1)).float().mean())
    return agreement, float(distillation_loss(logits, teacher_logits, temperature))


def _validate(
    inputs: torch.Tensor | None,
    labels: torch.Tensor | None,
    input_shape: tuple[int, ...] | None,
    generator: str,
    samples: int,
    temperature: float,
    hard_weight: float,
    epochs: int,
    lr: float,
    batch_size: int,
    patience: int,
    holdout: float,
) -> None:
    if (inputs is None) == (input_shape is None):
        raise ValueError("Give either inputs or an input_shape to generate them from, not both.")
    if inputs is None and (generator not in GENERATORS or samples < 2):
        raise ValueError(f"generator must be one of {GENERATORS} and samples at least 2.")
    if inputs is not None and len(inputs) < 2:
        raise ValueError("Distillation needs at least 2 inputs (some are held out).")
    if labels is not None and (inputs is None or len(labels) != len(inputs)):
        raise ValueError("labels need inputs of the same length.")
    if not 0.0 <= hard_weight <= 1.0:
        raise ValueError(f"hard_weight must be between 0 and 1, got {hard_weight}.")
    if hard_weight > 0.0 and labels is None:
        raise ValueError("hard_weight > 0 needs hard labels.")
    checks = {
        "temperature": temperature > 0,
        "epochs": epochs >= 1,
        "lr": lr > 0,
        "batch_size": batch_size >= 1,
        "patience": patience >= 1,
        "holdout": 0.0 < holdout < 1.0,
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        values = {
            "temperature": temperature,
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "patience": patience,
            "holdout": holdout,
        }
        raise ValueError(
            "Bad distillation parameters: "
            + ", ".join(f"{n}={values[n]}" for n in bad)
            + " (temperature, lr > 0; epochs, batch_size, patience >= 1; 0 < holdout < 1)."
        )
