"""The label spaces of imported models: class names, COCO category ids, ignored output rows.

A label space is ``(class_names, category_ids, ignored_labels)`` as :class:`ImportedModel`
holds it: ``class_names[i - 1]`` names label ``i`` (0 is background), ``category_ids`` gives its
COCO category id (``None`` when the classes are not COCO's) and ``ignored_labels`` lists output
rows that are no class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ssdcli.data.voc import VOC_CLASSES
from ssdcli.errors import UserError

Labels = tuple[tuple[str, ...], tuple[int, ...] | None, tuple[int, ...]]


def coco91_labels() -> Labels:
    """torchvision's COCO models (91 outputs): output ``i`` (1..90) is COCO category id ``i``.

    The 10 ids COCO never used ("N/A" in torchvision's ``categories``: 12, 26, 29, 30, 45, 66,
    68, 69, 71, 83) keep their rows, named ``__unused_<id>__``, and are the ignored labels.
    """
    from torchvision.models.detection import SSD300_VGG16_Weights

    categories = SSD300_VGG16_Weights.COCO_V1.meta["categories"]  # 91: "__background__", ids 1..90
    names, ignored = [], []
    for category_id, name in enumerate(categories[1:], start=1):
        if name == "N/A":
            names.append(f"__unused_{category_id}__")
            ignored.append(category_id)
        else:
            names.append(name)
    return tuple(names), tuple(range(1, len(categories))), tuple(ignored)


def coco81_labels() -> Labels:
    """Contiguous COCO (81 outputs: ssd.pytorch, the Caffe COCO models): label ``k`` is the
    ``k``-th of the 80 categories in id order (ssd.pytorch ``coco_labels.txt``)."""
    names, ids, ignored = coco91_labels()
    kept = [(name, i) for name, i in zip(names, ids) if i not in ignored]
    return tuple(name for name, _ in kept), tuple(i for _, i in kept), ()


def voc21_labels() -> Labels:
    """PASCAL VOC (21 outputs): the 20 classes in their usual order."""
    return tuple(VOC_CLASSES), None, ()


def label_space(
    outputs: int, class_names: Sequence[str] | None, source: str, known: Mapping[int, Callable[[], Labels]]
) -> Labels:
    """The label space of a model with ``outputs`` class outputs (background included):
    ``class_names`` when given, else ``known[outputs]()``, else ``class_1`` ... ``class_K``.

    Raises:
        UserError: ``class_names`` has the wrong length or repeats a name.
    """
    if class_names is not None:
        if len(class_names) != outputs - 1:
            raise UserError(
                f"{source}: {len(class_names)} class names given for a model with {outputs - 1} "
                f"classes ({outputs} outputs including background)"
            )
        repeated = sorted({name for name in class_names if list(class_names).count(name) > 1})
        if repeated:
            raise UserError(f"{source}: class name(s) {', '.join(map(repr, repeated))} given more than once")
        return tuple(class_names), None, ()
    if outputs in known:
        return known[outputs]()
    return tuple(f"class_{i}" for i in range(1, outputs)), None, ()
