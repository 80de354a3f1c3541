"""Model families as Flax NNX modules (LLaDA, Dream, MDLM, BD3-LM), their registry, and
``models.load(path)`` for checkpoints converted by ``srsmc convert``. See ``models/README.md``.

``FAMILIES`` maps each family name to its :class:`FamilySpec` (config and module classes,
Hugging Face key table, cache kinds, chat template, ...); ``family_spec(name)`` looks one up.
"""


if __name__ != "srsmc_jax.models":  # the models/ folder is srsmc_jax.models only
    raise ImportError(f"import srsmc_jax.models, not {__name__} (the models/ folder installs as srsmc_jax.models)")

from srsmc_jax.models.family import FAMILIES, FamilySpec, detect_family, family_spec, register_family

# The built-in families register themselves on import (one spec per folder).
from srsmc_jax.models import llada, dream, dit, llada2  # noqa: E402,F401  isort: skip

from srsmc_jax.models.checkpoint import META_FILE as CHECKPOINT_META  # noqa: E402
from srsmc_jax.models.load import (  # noqa: E402
    LoadedModel,
    abstract_model,
    config_from_dict,
    load,
    param_count,
    param_shardings,
    partition_rules,
    random_model,
)

__all__ = ["load", "LoadedModel", "abstract_model", "config_from_dict", "detect_family", "random_model",
           "param_count", "param_shardings", "partition_rules", "FAMILIES", "FamilySpec", "family_spec",
           "register_family", "CHECKPOINT_META"]
