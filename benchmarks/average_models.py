"""Average the weights of models fine-tuned from the same model (a "model soup").

Usage::

    python benchmarks/average_models.py OUT_DIR CARD [CARD ...] [--precision int8] [--name NAME]

The models must share architecture, arguments and labels (e.g. several
fine-tunes of one model with different seeds). The card of the first model
is kept, with each averaged model's run (seed, validation Dice, time) listed
under ``validation.averaged``; test figures are left out (measure the average with
``benchmarks/eval_seg.py``).

Weight averaging of fine-tuned models: Wortsman et al., Model soups,
ICML 2022.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bids_muscle.seg.zoo import PRECISIONS, load_model, save_model


#: Card validation entries that describe one training run, kept per averaged model.
RUN_KEYS = ("val_dice", "best_epoch", "epochs_run", "seed", "synthesis_s", "training_s")


def average_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors; others from the first state."""
    first = states[0]
    if any(state.keys() != first.keys() or any(state[k].shape != first[k].shape for k in first) for state in states):
        raise SystemExit("the models differ in layout: only fine-tunes of one model can be averaged")
    return {k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
            for k, v in first.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("cards", nargs="+", type=Path, help="model cards (.json) to average")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS)
    parser.add_argument("--name", help="name of the averaged model (default: the first model's)")
    args = parser.parse_args()
    if len(args.cards) < 2:
        parser.error("give at least two models")
    models = [load_model(card) for card in args.cards]
    cards = [card for _, card in models]
    if any((c.architecture, c.arguments, c.labels) != (cards[0].architecture, cards[0].arguments, cards[0].labels) for c in cards):
        parser.error("the models differ in architecture, arguments or labels")
    network, card = models[0]
    network.load_state_dict(average_state([m.state_dict() for m, _ in models]))
    card.name = args.name or card.name
    runs = [{"model": f"{path.parent.name}/{path.name}", **{k: v for k, v in c.validation.items() if k in RUN_KEYS}}
            for path, c in zip(args.cards, cards)]
    card.validation = {k: v for k, v in card.validation.items()
                       if k not in RUN_KEYS and not k.startswith("test") and k != "command"}
    card.validation["averaged"] = runs
    print(save_model(network, card, args.out_dir, args.precision))


if __name__ == "__main__":
    main()
