"""The default boxes a run trains with: its arch's preset, ``--prior-scales``, ``--priors FILE``, or
(``--priors auto``) boxes fitted to its training data when the preset misses objects."""

from __future__ import annotations

from ssdcli.config import AUTO_FIT_UNCOVERED, TrainConfig
from ssdcli.data.records import DetectionDataset
from ssdcli.errors import UserError
from ssdcli.prior_file import spec_problem
from ssdcli.priors import PriorSpec, preset_spec


def run_prior_spec(config: TrainConfig) -> PriorSpec:
    """The :class:`PriorSpec` of ``config``: ``config.prior_spec`` (a spec file's, kept in the
    config) when set, else the arch's preset, re-spread by ``prior_scales`` when given. The heads
    are built from it, so its boxes per location decide their size.

    Raises:
        UserError: ``config.prior_spec`` is malformed or does not fit the arch's layers.
    """
    if config.prior_spec is None:
        return preset_spec(config.arch, config.prior_scales)
    try:
        spec = PriorSpec.from_dict(config.prior_spec)
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"prior_spec (the run's default boxes) is malformed: {exc}") from None
    # The config holds the spec, not its file's budget: any head size the spec asks for is allowed.
    problem = spec_problem(spec, config.arch, budget=max(2, *spec.boxes_per_location))
    if problem is not None:
        raise UserError(f"prior_spec (the run's default boxes) does not fit {config.arch}: {problem}")
    return spec


def auto_prior_spec(config: TrainConfig, dataset: DetectionDataset) -> tuple[dict | None, str]:
    """``--priors auto`` for a new run: ``(prior_spec, note)``. The preset is kept (``None``) when
    it leaves at most :data:`~ssdcli.config.AUTO_FIT_UNCOVERED` of ``dataset``'s boxes without a
    default box of IoU >= 0.5; otherwise the boxes are fitted to ``dataset`` within the arch's
    layout and budget (:func:`ssdcli.prior_fit.fit_priors`, seeded by the run's seed) and the fit
    is taken when it covers more. ``note`` says, in one line, which boxes the run trains with."""
    from ssdcli.coverage import network_ground_truth, prior_coverage
    from ssdcli.prior_fit import FitSettings, fit_priors

    preset = preset_spec(config.arch)
    truth = network_ground_truth(dataset)
    if truth.boxes_xyxy_norm.shape[0] == 0:
        return None, f"default boxes: the {config.arch} preset (the training data has no boxes to fit them to)"
    before = _covered(prior_coverage(dataset, preset))
    count = f"{truth.boxes_xyxy_norm.shape[0]} training boxes"
    if before >= 1 - AUTO_FIT_UNCOVERED:
        return None, f"default boxes: the {config.arch} preset (it covers {before:.1%} of the {count} at IoU >= 0.5)"
    fitted = fit_priors(truth.boxes_xyxy_norm, preset, FitSettings(seed=config.seed)).spec
    after = _covered(prior_coverage(dataset, fitted))
    if after <= before:
        return None, (f"default boxes: the {config.arch} preset (it covers {before:.1%} of the {count} at IoU >= 0.5; "
                      "a fit covered no more)")
    return fitted.to_dict(), (
        f"default boxes: fitted to the training data, covering {after:.1%} of the {count} at IoU >= 0.5 "
        f"(the {config.arch} preset: {before:.1%}); kept in config.json and the checkpoints; --priors preset keeps the preset"
    )


def _covered(report) -> float:
    """Share of the report's boxes whose best default box has IoU >= the matching threshold."""
    return 1.0 - float(report.overall.share_below)
