"""An :class:`~ssdcli.pretrained.info.ImportedModel` as an ordinary ssdcli checkpoint, and the
cache of names imported on first use (``--weights torchvision:NAME``).

The checkpoint (format 2, :mod:`ssdcli.checkpoint`) holds the weights and everything the source
model needs (class names and COCO ids, ignored labels, default boxes, preprocessing,
post-processing rule, ``imported_from``), so ``ssd detect`` / ``eval`` / ``export`` use it like a
trained one. It has no training state and empty ``config`` / ``metrics``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ssdcli.checkpoint import checkpoint_payload, save_checkpoint
from ssdcli.downloads import ProgressCallback
from ssdcli.errors import CheckpointError
from ssdcli.pretrained.info import ImportedModel

IMPORTS_FOLDER = "imports"
"""Where names are imported on first use: a sibling of the export cache's folders
(:func:`ssdcli.export.cache.cache_root`)."""


def imported_payload(imported: ImportedModel) -> dict:
    """The checkpoint dict of ``imported`` (:func:`ssdcli.checkpoint.checkpoint_payload`)."""
    from ssdcli.models import model_settings

    fields = imported.checkpoint_fields()
    model = imported.model
    return checkpoint_payload(
        model.state_dict(),
        model_settings(model),
        fields["class_names"],
        postprocess=fields["postprocess"],
        config={},
        metrics={},
        channel_order=fields["channel_order"],
        resize=fields["resize"],
        category_ids=fields["category_ids"],
        ignored_labels=fields["ignored_labels"],
        imported_from=fields["imported_from"],
    )


def save_imported(imported: ImportedModel, output: str | os.PathLike[str]) -> None:
    """Write ``imported`` at ``output`` atomically (:func:`ssdcli.checkpoint.save_checkpoint`)."""
    save_checkpoint(output, imported_payload(imported))


def cached_import_path(name: str, root: Path | None = None) -> Path:
    """Where ``--weights NAME`` is imported: ``<cache>/imports/torchvision-ssd300_vgg16.pt``."""
    from ssdcli.export.cache import cache_root

    safe = name.replace(":", "-").replace("/", "-")
    return (root or cache_root()) / IMPORTS_FOLDER / f"{safe}.pt"


def resolve_weights(
    weights: str | os.PathLike[str],
    notes: Callable[[str], None] = lambda message: None,
    on_progress: ProgressCallback | None = None,
    root: Path | None = None,
) -> Path:
    """The checkpoint behind a ``--weights`` value: a path as it is, or for a name
    (``torchvision:ssd300_vgg16``) its import in the cache, made on first use (saying where).

    A cached import that no longer loads (an older ssdcli's, a damaged file) is made again.

    Raises:
        UserError: an unknown name, offline without the file (the URL and the path to put it at).
    """
    from ssdcli.checkpoint import load_checkpoint
    from ssdcli.pretrained import import_weights, is_model_name

    text = os.fspath(weights)
    if not is_model_name(text):
        return Path(weights)
    target = cached_import_path(text, root)
    if target.is_file():
        try:
            load_checkpoint(target)
            return target
        except CheckpointError:
            notes(f"{target}: the cached import of {text} does not load; importing it again")
    imported = import_weights(text, on_progress=on_progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_imported(imported, target)
    notes(f"imported {text} into {target} (first use; later runs reuse it)")
    return target
