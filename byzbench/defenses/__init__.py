"""Defenses, registered by name in :data:`byzbench.registry.DEFENSES`.

Every module of this package is imported on first use of the registry, so a new defense
module registers itself by decorating its class with ``@DEFENSES.register("name")``.
"""

from byzbench._autoimport import import_submodules
from byzbench.defenses.base import (
    Defense,
    DefenseParams,
    DefenseSetup,
    Privacy,
    RoundContext,
    Verdict,
    VerdictError,
)

import_submodules(__name__, __path__)

__all__ = ["Defense", "DefenseParams", "DefenseSetup", "Privacy", "RoundContext", "Verdict",
           "VerdictError"]
