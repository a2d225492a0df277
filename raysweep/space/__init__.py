"""Search spaces: one YAML (or mapping) says what a sweep searches; checked before Ray starts.

``read`` (files, names, ``--set``) -> ``parse`` (sections) + ``checks`` (across sections,
against the model) -> ``schema.SearchSpace``; ``tune`` feeds it to Ray Tune and turns a
trial's config back into a ``RunConfig``; ``sensitivity`` measures the table the
``sensitivity`` allocation family reads.
"""
from raysweep.space.read import list_spaces, load_space, override_path
from raysweep.space.schema import (
    DENSE_TRAIN,
    LATENCY_OBJECTIVES,
    SPACE_KEYS,
    Asha,
    Dist,
    Point,
    Resources,
    SearchSpace,
    SpaceError,
    to_mapping,
)
from raysweep.space.tune import (
    flatten_config,
    point_config,
    to_tune,
    trial_allocation,
    trial_run_config,
    trial_targets,
)

__all__ = [
    "DENSE_TRAIN", "LATENCY_OBJECTIVES", "SPACE_KEYS", "Asha", "Dist", "Point", "Resources", "SearchSpace",
    "SpaceError", "flatten_config", "list_spaces", "load_space", "override_path", "point_config", "to_mapping",
    "to_tune", "trial_allocation", "trial_run_config", "trial_targets",
]  # fmt: skip
