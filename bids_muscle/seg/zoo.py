"""Model zoo: network weights with a JSON model card.

A model is two files side by side: ``<name>.pt`` (a torch ``state_dict``)
and ``<name>.json``, the card, which says what the network is (registry
name and constructor arguments), what it segments (region and the label
indices of the canonical right leg, in class order after background), what
it expects (contrast, voxel size, intensity normalisation), where its
training data came from and under which licences, how it validated, and the
sha256 of the weights file. Models are only read from the package data
(``bids_muscle/data/models``) or from a directory the user names; nothing
is downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bids_muscle.seg.labels import REGIONS, load_label_table
from bids_muscle.seg.nets import NETWORKS, SEGMENTATION_NETWORKS, build_network

CARD_VERSION = 1
#: Network run for each region when the user names none: the best on the
#: held-out and real-scan tests of docs/validation.md (thigh: U-Net 3D 0.898
#: against U-Net 2D 0.862 held-out Dice; calf: the U-Net 3D labels 27 % less
#: muscle than the U-Net 2D on real calves).
DEFAULT_NETWORKS = {"thigh": "unet3d", "calf": "unet2d"}


def region_networks(region: str, requested: Sequence[str] = ()) -> tuple[str, ...]:
    """Networks to run on ``region``: the requested ones, or its default."""
    return tuple(requested) or (DEFAULT_NETWORKS[region],)


_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class ModelCard:
    """Description of one trained model.

    Attributes
    ----------
    name : str
        Model name; also the stem of the card and weights files.
    architecture : str
        Registry name of :func:`bids_muscle.seg.nets.build_network`.
    arguments : dict
        Constructor arguments of the network.
    region : str
        ``thigh``, ``calf`` or, for the region classifier, ``any``.
    labels : list of int
        Label indices of the canonical right leg for classes 1..K (class 0
        is background). Empty for the region classifier.
    classes : list of str
        Region names of the classifier outputs (region classifier only).
    input_contrast : str
        ``any`` (contrast-agnostic) or the contrast the model needs, e.g.
        ``T1w`` or ``water``.
    voxel_size_mm : list
        Voxel size the image is resampled to, (x, y, z) in mm; ``None`` for z
        keeps the native slices (2D networks always keep them).
    patch_size : list of int or None
        Sliding-window patch (X, Y, Z) for 3D networks.
    normalisation : dict
        Intensity normalisation, e.g. ``{"method": "percentile", "low": 0.5,
        "high": 99.5}`` computed inside the body mask of each leg.
    training_data : list of dict
        Data sets used (name, origin, number of images) and their licences.
    licence : str
        Licence of the weights.
    validation : dict
        Validation figures (e.g. mean Dice on the held-out split).
    description : str
    weights_file : str
        File name of the weights, next to the card.
    sha256 : str
        SHA-256 of the weights file.
    """

    name: str
    architecture: str
    arguments: dict[str, Any]
    region: str
    labels: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    input_contrast: str = "any"
    voxel_size_mm: list[float | None] = field(default_factory=lambda: [1.0, 1.0, None])
    patch_size: list[int] | None = None
    normalisation: dict[str, Any] = field(default_factory=lambda: {"method": "percentile", "low": 0.5, "high": 99.5})
    training_data: list[dict[str, Any]] = field(default_factory=list)
    licence: str = ""
    validation: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    weights_file: str = ""
    sha256: str = ""
    card_version: int = CARD_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_PATTERN.match(self.name):
            raise ValueError(f"model name {self.name!r} must be letters, digits, '_', '-' or '.'")
        if self.architecture not in NETWORKS:
            raise ValueError(f"model card {self.name!r}: unknown architecture {self.architecture!r}")
        if self.architecture in SEGMENTATION_NETWORKS:
            if self.region not in REGIONS:
                raise ValueError(f"model card {self.name!r}: region must be one of {REGIONS}, got {self.region!r}")
            known = {lab.index: lab for lab in load_label_table(self.region)}
            bad = [i for i in self.labels if i not in known or known[i].side != "right"]
            if not self.labels or bad:
                raise ValueError(
                    f"model card {self.name!r}: labels must be right-side indices of the {self.region} table, got {bad or self.labels}"
                )
            if len(set(self.labels)) != len(self.labels):
                raise ValueError(f"model card {self.name!r}: repeated label indices")
        elif not self.classes:
            raise ValueError(f"model card {self.name!r}: a classifier needs its class names")
        voxel = list(self.voxel_size_mm)
        valid = len(voxel) == 3 and all(v is not None and float(v) > 0 for v in voxel[:2])
        if not valid or (voxel[2] is not None and not float(voxel[2]) > 0):
            raise ValueError(f"model card {self.name!r}: voxel_size_mm must be [x, y, z or null] in mm, got {voxel}")

    @property
    def n_classes(self) -> int:
        """Network outputs (background + labels, or the classifier classes)."""
        return len(self.labels) + 1 if self.architecture in SEGMENTATION_NETWORKS else len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dictionary."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelCard":
        """Card from a dictionary (unknown keys are refused)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown model card fields {unknown}")
        try:
            return cls(**data)
        except TypeError as error:
            raise ValueError(f"incomplete model card: {error}") from None


def package_model_dir() -> Path:
    """Directory of the models shipped with the package."""
    return Path(str(resources.files("bids_muscle.data.models")))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_card(path: str | Path) -> ModelCard:
    """Read and validate one card file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"model card not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"model card {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"model card {path} must hold a JSON object")
    try:
        return ModelCard.from_dict(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def find_card(card_path_or_name: str | Path, model_dir: str | Path | None = None) -> Path:
    """Path of a card given its path or its model name.

    A name is looked up in ``model_dir`` first (when given), then in the
    package models.
    """
    candidate = Path(card_path_or_name)
    if candidate.suffix == ".json" or candidate.parent != Path("."):
        if not candidate.is_file():
            raise ValueError(f"model card not found: {candidate}")
        return candidate
    name = str(card_path_or_name)
    folders = ([Path(model_dir)] if model_dir is not None else []) + [package_model_dir()]
    for folder in folders:
        path = folder / f"{name}.json"
        if path.is_file():
            return path
    searched = ", ".join(str(f) for f in folders)
    raise ValueError(f"no model named {name!r} in {searched}")


def verify_model(card_path_or_name: str | Path, model_dir: str | Path | None = None) -> tuple[ModelCard, Path, Path]:
    """The card of a model, the card's path and the weights' path, once the
    card is found and valid, the weights exist and their sha256 is the card's
    (a truncated or altered file is refused). Cheap: nothing is built or
    loaded, so a run checks every model it will use before it starts.

    Raises
    ------
    ValueError
        Naming the missing or wrong file.
    """
    card_path = find_card(card_path_or_name, model_dir)
    card = read_card(card_path)
    weights = _weights_path(card, card_path)
    if not weights.is_file():
        raise ValueError(f"weights file of model {card.name!r} not found: {weights}")
    digest = sha256_file(weights)
    if digest != card.sha256:
        raise ValueError(f"sha256 of {weights} is {digest}, the card {card_path} expects {card.sha256 or 'none'}")
    return card, card_path, weights


def load_model(card_path_or_name: str | Path, model_dir: str | Path | None = None) -> tuple[nn.Module, ModelCard]:
    """Load a model (network in eval mode on the CPU) and its card.

    Parameters
    ----------
    card_path_or_name : str or Path
        Path of a ``.json`` card, or a model name looked up in ``model_dir``
        and then in the package models.
    model_dir : str or Path, optional
        User directory of models.

    Raises
    ------
    ValueError
        Missing card or weights, weights whose sha256 differs from the card,
        or weights that do not fit the architecture; the message names the
        file.
    """
    card, card_path, weights = verify_model(card_path_or_name, model_dir)
    try:
        network = build_network(card.architecture, **card.arguments)
    except ValueError as error:
        raise ValueError(f"{card_path}: {error}") from None
    try:
        state = torch.load(io.BytesIO(weights.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for corrupt files
        raise ValueError(f"cannot read weights {weights}: {error}") from None
    if not isinstance(state, dict):
        raise ValueError(f"weights {weights} do not hold a state_dict")
    try:
        network.load_state_dict(_dequantise(state), strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0:2]
        raise ValueError(
            f"weights {weights} do not match architecture {card.architecture!r} {card.arguments}: {' '.join(first)}"
        ) from None
    network.eval()
    return network, card


#: Weight storage of :func:`save_model`.
PRECISIONS = ("float32", "float16", "int8")
_SCALE = ".int8_scale"


def save_model(module: nn.Module, card: ModelCard, out_dir: str | Path, precision: str = "float32") -> Path:
    """Write ``<name>.pt`` and ``<name>.json`` into ``out_dir``.

    The card is completed with the weights file name and its sha256 (the
    ``card`` object is updated in place). Returns the card path.
    ``precision`` ``float16`` stores floating-point weights as float16 (half
    the file size); ``int8`` stores kernels and matrices as int8 with one
    float32 scale per output channel (symmetric, max-abs) and the rest as
    float16 (a quarter of the size). :func:`load_model` casts them back to
    the network's float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        build_network(card.architecture, **card.arguments).load_state_dict(module.state_dict(), strict=True)
    except RuntimeError as error:
        raise ValueError(f"module does not match the card architecture {card.architecture!r}: {error}") from None
    weights = out_dir / f"{card.name}.pt"
    state = {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}
    if precision != "float32":
        stored = {}
        for key, value in state.items():
            if precision == "int8" and value.is_floating_point() and value.ndim >= 2:
                peak = value.abs().amax(dim=tuple(range(1, value.ndim)), keepdim=True).clamp_min(1e-12)
                stored[key] = torch.round(value / peak * 127.0).to(torch.int8)
                stored[key + _SCALE] = (peak / 127.0).float()
            else:
                stored[key] = value.half() if value.is_floating_point() else value
        state = stored
    torch.save(state, weights)
    card.weights_file = weights.name
    card.sha256 = sha256_file(weights)
    card_path = out_dir / f"{card.name}.json"
    card_path.write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    return card_path


def _dequantise(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float weights of an int8 state of :func:`save_model` (other states unchanged)."""
    out = {}
    for key, value in state.items():
        if key.endswith(_SCALE):
            continue
        scale = state.get(key + _SCALE)
        out[key] = value if scale is None else value.float() * scale
    return out


def list_models(model_dir: str | Path | None = None, package: bool = True) -> list[ModelCard]:
    """Cards of the package models (unless ``package`` is False) and of
    ``model_dir`` (unreadable cards are skipped; :func:`load_model` reports
    their errors)."""
    folders = ([package_model_dir()] if package else []) + ([Path(model_dir)] if model_dir is not None else [])
    cards = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            try:
                cards.append(read_card(path))
            except ValueError:
                continue
    return cards


def _weights_path(card: ModelCard, card_path: Path) -> Path:
    name = card.weights_file or f"{card.name}.pt"
    if Path(name).name != name:
        raise ValueError(f"{card_path}: weights_file must be a file name next to the card, got {name!r}")
    return card_path.parent / name
