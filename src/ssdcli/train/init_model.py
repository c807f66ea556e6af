"""``ssd train --init MODEL``: a run that starts from a trained detector instead of ImageNet weights.

MODEL is an ssdcli checkpoint, a state-dict file :func:`ssdcli.pretrained.import_weights` converts
(torchvision SSD300 / SSDLite320, ssd.pytorch), or a name (``torchvision:ssd300_vgg16``). The run
takes MODEL's arch, build options, default boxes, input size, normalisation, channel order, resize
rule and post-processing rule (:class:`InitSource`, kept in ``TrainConfig.init_model`` so that
``--resume`` needs neither MODEL nor its file again).

Weights (:func:`transfer_weights`): everything but the class heads' last convolutions is copied as
it is: backbone, extras, box-regression heads, and the class heads' depthwise parts (SSDLite). The
last class convolution of each head has ``A * (K + 1)`` output channels, channel ``a * (K + 1) +
k`` scoring class ``k`` for default box ``a`` of a location (``SSD._flatten_predictions``); it is
rebuilt for the new classes, and for every anchor ``a`` the channels of background and of each new
class that matches one of MODEL's (:func:`match_classes`) are copied from MODEL's channel of that
class, the others keep the fresh initialisation of the new network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ssdcli.downloads import ProgressCallback
from ssdcli.errors import UserError
from ssdcli.models import SSD, build_model

SYNONYMS: dict[str, str] = {
    "aeroplane": "airplane",
    "motorbike": "motorcycle",
    "sofa": "couch",
    "pottedplant": "potted plant",
    "diningtable": "dining table",
    "tvmonitor": "tv",
}
"""PASCAL VOC name -> COCO name of the same class (both directions match)."""


@dataclass(frozen=True)
class InitSource:
    """A loaded ``--init`` MODEL: the network and the conventions a run started from it keeps.

    Attributes:
        source: MODEL as given (file or name).
        model: the network, weights loaded.
        class_names: label ``i`` is ``class_names[i - 1]``.
        ignored_labels: labels that are no class (torchvision's "N/A" COCO rows): never carried.
        channel_order, resize: how images become its input (``ssdcli.preprocessing``).
        postprocess_rule: ``caffe`` or ``torchvision`` (``ssdcli.postprocess.RULES``).
        imported_from: ``{"source", "format"}`` when MODEL was an imported detector.
    """

    source: str
    model: SSD
    class_names: tuple[str, ...]
    ignored_labels: tuple[int, ...] = ()
    channel_order: str = "rgb"
    resize: str = "uint8"
    postprocess_rule: str = "caffe"
    imported_from: dict | None = None

    def settings(self) -> dict:
        """What ``TrainConfig.init_model`` holds: everything but the weights, as plain values."""
        return {
            "source": self.source,
            "arch": self.model.arch,
            "options": dict(self.model.options),
            "mean": list(self.model.mean),
            "std": list(self.model.std),
            "channel_order": self.channel_order,
            "resize": self.resize,
            "postprocess_rule": self.postprocess_rule,
            "class_names": list(self.class_names),
            "imported_from": self.imported_from,
        }


def load_init_source(spec: str, on_progress: ProgressCallback | None = None) -> InitSource:
    """The ``--init`` MODEL ``spec``: an ssdcli checkpoint, an importable state-dict file or a name.

    Raises:
        UserError / CheckpointError: no such file or name, or a file no format reads (one line).
    """
    from ssdcli.pretrained import detectors, import_weights, is_model_name

    if is_model_name(spec):
        return _from_imported(import_weights(spec, on_progress=on_progress), spec)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(
            f"--init {spec}: no such file; give an ssdcli checkpoint (.pt), a torchvision or ssd.pytorch "
            f"SSD state dict, or a name ({', '.join(detectors())})"
        )
    checkpoint = _ssdcli_checkpoint(path)
    if checkpoint is None:
        return _from_imported(import_weights(path), spec)
    from ssdcli.models import model_from_checkpoint

    model = model_from_checkpoint(checkpoint, path)
    return InitSource(
        source=spec, model=model, class_names=tuple(checkpoint["class_names"]),
        ignored_labels=tuple(int(i) for i in checkpoint.get("ignored_labels", ())),
        channel_order=str(checkpoint.get("channel_order", "rgb")), resize=str(checkpoint.get("resize", "uint8")),
        postprocess_rule=str((checkpoint.get("postprocess") or {}).get("rule", "caffe")),
        imported_from=checkpoint.get("imported_from"),
    )


def _ssdcli_checkpoint(path: Path) -> dict | None:
    """``path`` read as an ssdcli checkpoint, or ``None`` when it is another kind of torch file."""
    from ssdcli.checkpoint import FORMAT, load_checkpoint
    from ssdcli.safe_torch import safe_torch_load

    obj = safe_torch_load(path, "cpu", kind="a model file")
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return load_checkpoint(path)
    return None


def _from_imported(imported, spec: str) -> InitSource:
    fields = imported.checkpoint_fields()
    return InitSource(
        source=spec, model=imported.model, class_names=tuple(imported.class_names),
        ignored_labels=tuple(imported.ignored_labels), channel_order=fields["channel_order"],
        resize=fields["resize"], postprocess_rule=fields["postprocess"]["rule"],
        imported_from=fields["imported_from"],
    )


def _key(name: str) -> str:
    return name.strip().lower()


def match_classes(
    new_classes: Sequence[str], source_classes: Sequence[str], ignored_labels: Sequence[int] = ()
) -> list[int | None]:
    """Per new class (label ``i + 1`` at index ``i``) the source label it takes its head rows from,
    or ``None``: the same name ignoring case, else its VOC/COCO synonym (:data:`SYNONYMS`)."""
    by_name: dict[str, int] = {}
    for label, name in enumerate(source_classes, start=1):
        if label not in ignored_labels:
            by_name.setdefault(_key(name), label)
    synonyms = {**{_key(a): _key(b) for a, b in SYNONYMS.items()}, **{_key(b): _key(a) for a, b in SYNONYMS.items()}}
    matches: list[int | None] = []
    for name in new_classes:
        key = _key(name)
        label = by_name.get(key)
        if label is None and key in synonyms:
            label = by_name.get(synonyms[key])
        matches.append(label)
    return matches


def build_init_model(init_model: dict, num_classes: int, prior_spec) -> SSD:
    """A fresh network of MODEL's arch, options and normalisation for ``num_classes`` classes."""
    options = {str(k): float(v) for k, v in dict(init_model.get("options") or {}).items()}
    model = build_model(str(init_model["arch"]), num_classes, prior_spec=prior_spec, **options)
    model.mean = tuple(float(m) for m in init_model["mean"])
    model.std = tuple(float(s) for s in init_model["std"])
    return model


def class_convs(model: SSD) -> list[tuple[str, nn.Conv2d]]:
    """Per source layer the class head's last convolution (the one giving ``A * (K + 1)`` channels),
    with its module name in ``model``."""
    found = []
    for index, head in enumerate(model.conf_heads):
        convs = [(name, m) for name, m in head.named_modules() if isinstance(m, nn.Conv2d)]
        name, conv = convs[-1]
        found.append((f"conf_heads.{index}.{name}" if name else f"conf_heads.{index}", conv))
    return found


def transfer_weights(source: SSD, target: SSD, matches: Sequence[int | None]) -> None:
    """Copy ``source``'s weights into ``target`` (module docstring): all of them, except that the
    class convolutions' channels are copied only for background and the matched classes.

    Raises:
        ValueError: the two networks differ in more than their class count.
    """
    target_state, source_state = target.state_dict(), source.state_dict()
    heads = list(zip(class_convs(source), class_convs(target), source.prior_spec.boxes_per_location))
    head_keys = {f"{name}.{p}" for _, (name, _), _ in heads for p in ("weight", "bias")}
    if set(target_state) != set(source_state):
        raise ValueError("the source network's layers differ from the new one's")
    with torch.no_grad():
        for key, value in target_state.items():
            if key in head_keys:
                continue
            if value.shape != source_state[key].shape:
                raise ValueError(f"{key}: shape {tuple(source_state[key].shape)} in the source, {tuple(value.shape)} now")
            value.copy_(source_state[key])
        rows = [(0, 0)] + [(new, old) for new, old in enumerate(matches, start=1) if old is not None]
        k_source, k_target = source.num_classes + 1, target.num_classes + 1
        for (_, src_conv), (_, dst_conv), anchors in heads:
            for anchor in range(anchors):
                for new, old in rows:
                    dst_conv.weight[anchor * k_target + new].copy_(src_conv.weight[anchor * k_source + old])
                    if dst_conv.bias is not None:
                        dst_conv.bias[anchor * k_target + new].copy_(src_conv.bias[anchor * k_source + old])


def carried_over(new_classes: Sequence[str], source_classes: Sequence[str], matches: Sequence[int | None]) -> list[dict]:
    """Rows of the start table: ``{"class", "from"}`` per new class (``from`` None: initialised fresh)."""
    return [{"class": name, "from": None if label is None else source_classes[label - 1]}
            for name, label in zip(new_classes, matches)]


def init_conflicts(source: InitSource, arch: str | None, prior_flags: Sequence[str], backbone_weights: bool) -> str | None:
    """What makes flags given with ``--init`` contradict MODEL, as one message, or ``None``."""
    if arch is not None and arch != source.model.arch:
        return (f"--init {source.source} is an {source.model.arch} network; --arch {arch} contradicts it "
                "(drop --arch: the arch comes from the model)")
    if prior_flags:
        return (f"--init {source.source} brings its own default boxes (its box heads are trained for them); "
                f"drop {', '.join(prior_flags)}")
    if backbone_weights:
        return f"--init {source.source} brings its backbone; drop --backbone-weights"
    return None
