"""The default boxes a run trains with: its arch's preset, ``--prior-scales`` or ``--priors FILE``."""

from __future__ import annotations

from ssdcli.config import TrainConfig
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
