"""Run settings as frozen dataclasses: built by the CLI, stored in ``config.json`` and checkpoints.

Only :mod:`ssdcli.train.setup` reads a config; the objects it builds (model, loss, loaders,
optimizer) receive plain arguments. The tuples of allowed values below are the only list of each
choice: ``ssd train`` derives its option choices from them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ssdcli.errors import UserError

ARCH_NAMES = ("ssd300", "ssd512", "ssdlite320")
"""The keys of :data:`ssdcli.models.ARCHS` (a test keeps them equal), listed here so that the CLI
can offer them without importing torch."""
PRESET_NAMES = ("ssd300", "ssd300_coco", "ssd512", "ssdlite320")
"""The keys of :data:`ssdcli.priors.PRESETS` (a test keeps them equal), for the same reason."""
SCHEDULES = ("multistep", "cosine")
AUGMENTATIONS = ("paper", "light", "none")
DEVICES = ("auto", "cpu", "cuda")

BASE_BATCH_SIZE = 32
BASE_LR = 1e-3
"""The paper's learning rate at batch 32 (SSD sec. 3.1); scaled linearly with the batch size."""


@dataclass(frozen=True)
class Recipe:
    """An arch's default training settings: what a :class:`TrainConfig` field left at ``None`` becomes.

    Attributes:
        lr: the learning rate at batch ``lr_batch``; the run's rate is ``lr * batch_size / lr_batch``
            (linear scaling, Goyal et al. 2017), unless ``--lr`` is given.
        backbone_weights: ``None`` = torchvision's ImageNet weights (the arch's
            ``ssdcli.models.ARCHS[arch].backbone_weights``), ``"none"`` = from scratch.
        fit_priors: ``--priors auto``: a new run whose default boxes are not given (no
            ``--priors FILE``, ``--prior-scales`` or ``--init``) fits them to its training data
            when the preset leaves more than :data:`AUTO_FIT_UNCOVERED` of the boxes without a
            default box of IoU >= 0.5 (:func:`ssdcli.train.default_boxes.auto_prior_spec`).
    """

    batch_size: int
    lr: float
    lr_batch: int
    weight_decay: float
    warmup_iters: int
    schedule: str
    backbone_weights: str | None
    fit_priors: bool


_PAPER = Recipe(batch_size=BASE_BATCH_SIZE, lr=BASE_LR, lr_batch=BASE_BATCH_SIZE, weight_decay=5e-4,
                warmup_iters=500, schedule="multistep", backbone_weights=None, fit_priors=False)

RECIPES: dict[str, Recipe] = {
    # The paper's (SSD sec. 3.1, Caffe ssd_pascal.py): SGD 1e-3 at batch 32, decay 5e-4, x0.1 at
    # 2/3 and 5/6 of the run; the 500-iteration warm-up is torchvision's detection references'.
    "ssd300": _PAPER,
    "ssd512": _PAPER,
    # The CPU recipe measured on BCCD (README "Measured accuracy"): from scratch, 0.05 at batch 16,
    # 50 warm-up iterations, cosine, decay 5e-4 (torchvision's SSDLite recipe uses 4e-5, not
    # measured here), default boxes fitted to the data when the preset misses objects.
    "ssdlite320": Recipe(batch_size=16, lr=0.05, lr_batch=16, weight_decay=5e-4, warmup_iters=50,
                         schedule="cosine", backbone_weights="none", fit_priors=True),
}
"""Per arch the defaults of ``ssd train``: the one table of training recipes (``--help`` and
README's recipes table are written from it). A setting given explicitly always wins."""

PRIOR_FLAGS_CONFLICT = "--priors and --prior-scales both set the default boxes; give one of them"
AUTO_FIT_UNCOVERED = 0.02
"""``--priors auto`` fits the default boxes when the preset leaves more than this share of the
training boxes without a default box of IoU >= 0.5 (YOLOv5's AutoAnchor refits below a best
possible recall of 0.98)."""

RECIPE_FIELDS = ("batch_size", "lr", "weight_decay", "warmup_iters", "schedule", "backbone_weights", "fit_priors")
"""The :class:`TrainConfig` fields whose ``None`` means "the arch's recipe"."""


def recipe_default_text(field: str) -> str:
    """What ``--help`` says a recipe field defaults to, e.g. ``"16 for ssdlite320, 32 for
    ssd300/ssd512"``: archs that share a value are listed together, in :data:`ARCH_NAMES` order."""

    def describe(recipe: Recipe) -> str:
        if field == "lr":
            return f"{recipe.lr:g} x batch-size/{recipe.lr_batch}"
        if field == "backbone_weights":
            return "torchvision's ImageNet weights" if recipe.backbone_weights is None else recipe.backbone_weights
        if field == "fit_priors":
            return "auto" if recipe.fit_priors else "preset"
        return f"{getattr(recipe, field):g}" if isinstance(getattr(recipe, field), float) else str(getattr(recipe, field))

    groups: dict[str, list[str]] = {}
    for arch in ARCH_NAMES:
        groups.setdefault(describe(RECIPES[arch]), []).append(arch)
    if len(groups) == 1:
        return f"{next(iter(groups))} for every arch"
    return ", ".join(f"{text} for {'/'.join(archs)}" for text, archs in groups.items())


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; ``config.json`` holds exactly these fields.

    Attributes mirror ``ssd train`` flags. The :data:`RECIPE_FIELDS` left at ``None`` take the
    arch's :data:`RECIPES` entry when the config is made, so a config (and ``config.json``) always
    holds resolved values. ``amp=None`` means "on when the device is CUDA". ``prior_spec`` is a
    ``PriorSpec.to_dict()`` (``--priors FILE``'s spec, kept so the run repeats without the file).
    ``patience`` 0 = never stop early.
    ``fit_priors`` (``--priors auto``): a new run fits its default boxes to the training data
    when the preset misses objects (:data:`AUTO_FIT_UNCOVERED`); the fitted spec is then kept in
    ``prior_spec``, so a resumed run trains the same boxes and never refits.
    ``init`` is ``--init MODEL`` as given and ``init_model`` what the run takes from it
    (:meth:`ssdcli.train.init_model.InitSource.settings`: arch, options, normalisation, channel
    order, resize and post-processing rules, its classes), so that a resumed run needs no MODEL;
    ``arch`` and ``prior_spec`` are then MODEL's. ``freeze_backbone_epochs``: the ImageNet part
    of the backbone (:func:`ssdcli.models.backbone_modules`) is fixed for that many epochs.
    """

    data: str
    epochs: int
    val_data: str | None = None
    split: str | None = None
    val_split: str | None = None
    classes_file: str | None = None
    arch: str = "ssd300"
    batch_size: int | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    warmup_iters: int | None = None
    schedule: str | None = None
    milestones: tuple[float, float] = (2 / 3, 5 / 6)
    gamma: float = 0.1
    output: str | None = None
    device: str = "auto"
    workers: int = 2
    amp: bool | None = None
    seed: int = 0
    backbone_weights: str | None = None
    eval_every: int = 1
    patience: int = 0
    save_every: int = 0
    neg_pos_ratio: float = 3.0
    iou_threshold: float = 0.5
    use_difficult: bool = False
    augment: str = "paper"
    max_bad_steps: int = 5
    limit_batches: int = 0
    prior_spec: dict | None = None
    prior_scales: tuple[float, float] | None = None
    init: str | None = None
    init_model: dict | None = None
    freeze_backbone_epochs: int = 0
    fit_priors: bool | None = None

    def __post_init__(self) -> None:
        # Settings with an `ssd train` flag are named by the flag; the others (set through the
        # Python API or a run's config.json) by their field name.
        if self.arch not in ARCH_NAMES:
            raise UserError(f"--arch must be one of {', '.join(ARCH_NAMES)}, not {self.arch!r}")
        self._resolve_recipe()
        checks = [
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.lr is None or self.lr > 0, "--lr must be positive"),
            (0 <= self.momentum < 1, "--momentum must be in [0, 1)"),
            (self.weight_decay >= 0, "--weight-decay must be >= 0"),
            (self.warmup_iters >= 0, "--warmup-iters must be >= 0"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
            (self.augment in AUGMENTATIONS, f"--augment must be one of {', '.join(AUGMENTATIONS)}"),
            (self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}"),
            (self.workers >= 0, "--workers must be >= 0"),
            (self.eval_every >= 0, "--eval-every must be >= 0 (0 = never)"),
            (self.save_every >= 0, "--save-every must be >= 0 (0 = once per epoch)"),
            (self.limit_batches >= 0, "--limit-batches must be >= 0 (0 = all)"),
            (self.patience >= 0, "--patience must be >= 0 (0 = never stop early)"),
            (
                self.patience == 0 or (self.val_data is not None and self.eval_every > 0),
                "--patience counts validations: it needs --val-data and --eval-every above 0",
            ),
            (self.prior_spec is None or self.prior_scales is None, PRIOR_FLAGS_CONFLICT),
            (self.prior_spec is None or isinstance(self.prior_spec, dict), "prior_spec must be a PriorSpec dict"),
            (not (self.fit_priors and self.prior_scales is not None), "--priors auto fits the default boxes and --prior-scales spreads the preset's; give one of them"),
            (not (self.fit_priors and self.init is not None), "--init MODEL brings its default boxes; drop --priors auto"),
            (self.freeze_backbone_epochs >= 0, "--freeze-backbone-epochs must be >= 0"),
            (self.init is None or self.init_model is not None, "init_model (what --init MODEL brings) is missing"),
            (self.neg_pos_ratio > 0, "neg_pos_ratio (hard negatives per positive) must be positive"),
            (0 < self.iou_threshold < 1, "iou_threshold (prior matching) must be in (0, 1)"),
            (self.max_bad_steps >= 1, "max_bad_steps must be at least 1"),
            (all(0 < m <= 1 for m in self.milestones), "milestones must be fractions of the run in (0, 1]"),
            (
                self.prior_scales is None
                or (len(self.prior_scales) == 2 and 0 < self.prior_scales[0] < self.prior_scales[1] <= 1),
                "--prior-scales MIN MAX: need 0 < MIN < MAX <= 1 (fractions of the input size)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    def _resolve_recipe(self) -> None:
        """Fill the recipe fields left at ``None`` from :data:`RECIPES` (the batch size first: the
        default learning rate scales with it)."""
        recipe = RECIPES[self.arch]
        for name in RECIPE_FIELDS:
            if getattr(self, name) is None and name not in ("lr", "backbone_weights", "fit_priors"):
                object.__setattr__(self, name, getattr(recipe, name))
        if self.backbone_weights is None:
            object.__setattr__(self, "backbone_weights", recipe.backbone_weights)
        if self.fit_priors is None:
            # Default boxes given (a spec, --prior-scales, --init MODEL's) are never refitted.
            given = self.prior_spec is not None or self.prior_scales is not None or self.init is not None
            object.__setattr__(self, "fit_priors", recipe.fit_priors and not given)
        if self.lr is None and self.batch_size >= 1:
            object.__setattr__(self, "lr", recipe.lr * self.batch_size / recipe.lr_batch)

    @property
    def effective_lr(self) -> float:
        """The base learning rate (``lr``, resolved from the recipe when it was not given)."""
        return self.lr

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["milestones"] = list(self.milestones)
        data["prior_scales"] = None if self.prior_scales is None else list(self.prior_scales)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown training settings {unknown}; was this written by a newer ssdcli?")
        values = dict(data)
        if "lr" in values and values["lr"] is None:
            # config.json of a run made before the recipes: lr null meant the paper's rule
            values["lr"] = BASE_LR * values.get("batch_size", BASE_BATCH_SIZE) / BASE_BATCH_SIZE
        if "milestones" in values:
            values["milestones"] = tuple(values["milestones"])
        if values.get("prior_scales") is not None:
            values["prior_scales"] = tuple(values["prior_scales"])
        # Runs made before --priors auto never fitted their default boxes: a resume must not either.
        values.setdefault("fit_priors", False)
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes``; the other fields keep their (resolved) values, so changing
        ``arch`` does not bring that arch's recipe with it."""
        return dataclasses.replace(self, **changes)
