"""Every default of the tool, in one place: typed dataclasses with a comment per field.

- :class:`RunConfig` (model, diffusion process, training) is what a run is trained with; a run's
  ``config.json`` is :meth:`RunConfig.to_dict`, and :meth:`RunConfig.from_dict` rebuilds it.
  Presets are named instances; :func:`build_config` applies the flags a user gave (config/run.py).
- :class:`SamplingConfig` (sampler, steps, spacing, guidance, ...) is how samples are drawn from
  a run, by every command that draws them; the editing commands' settings are beside it
  (config/sampling.py).
- Memory estimates check sizes before anything is allocated (config/memory.py).

The CLI maps its flags onto these fields. Nothing here reads files or touches torch.
"""

from .memory import (  # noqa: F401
    IMAGE_BYTES,
    MEMORY_FALLBACK,
    activation_bytes,
    check_image_count,
    check_memory,
    check_training_memory,
    image_bytes,
    memory_bytes,
    parameter_count,
)
from .run import (  # noqa: F401
    DEFAULT,
    DEFAULT_ARTIFACTS_DIR,
    DEFAULT_CLUSTERS,
    DEFAULT_DATA_DIR,
    EVAL_EVERY,
    EVAL_SAMPLES,
    INT_LIMIT,
    LARGE,
    MAX_EPOCHS,
    MAX_STEPS,
    MAX_TIMESTEPS,
    MNIST_TRAIN_IMAGES,
    PRESETS,
    SAMPLE_EVERY,
    SEED,
    Arch,
    DiffusionConfig,
    LossWeighting,
    LRSchedule,
    ModelConfig,
    NoiseLevels,
    Precision,
    Prediction,
    RunConfig,
    ScheduleName,
    TrainConfig,
    build_config,
    validate,
)
from .sampling import (  # noqa: F401
    DEFAULT_STEPS,
    EDIT_SPACING,
    INPAINT_DEFAULTS,
    INPAINT_JUMPS,
    INPAINT_MATCHED_RESAMPLE,
    INPAINT_MATCHED_STEPS,
    INPAINT_MAX_EVALUATIONS,
    INPAINT_RESAMPLE,
    INTERPOLATE_DEFAULTS,
    INTERPOLATE_FRAMES,
    INVERT_DEFAULTS,
    INVERT_STEPS,
    SAMPLE_DEFAULTS,
    SDEDIT_STRENGTH,
    SPACING_RANGE,
    Guidance,
    GuidanceKinds,
    SamplerName,
    SamplingConfig,
    SamplingDefaults,
    inpaint_resample,
)
