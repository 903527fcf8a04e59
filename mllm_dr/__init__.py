"""MLlm-DR: explainable depression recognition with multimodal LLMs (the installable library).

The model itself is three self-contained files installed as top-level modules, because they travel
inside every checkpoint: ``configuration_mllm_dr`` (``MllmDrConfig``), ``modeling_mllm_dr``
(``MllmDrForConditionalGeneration``) and ``processing_mllm_dr`` (``MllmDrProcessor``). This package
holds everything around them, in layers (a layer imports only the ones below it):

* commands (``mllm_dr.commands``: the console scripts)
* ``mllm_dr.training`` (collator setup, trainer, exports, manifest, card) and ``mllm_dr.inference``
  (model loading, the generate-parse-score loop, the per-item sampler); neither imports the other
* ``mllm_dr.checkpoints`` (our export format, read and written; ``load_adapter_export`` is exported
  here), ``mllm_dr.cards`` (model cards), ``mllm_dr.hub`` (publishing), ``mllm_dr.metrics``
* ``mllm_dr.data`` (corpus registry and loaders, feature reading and cache, rationales, batches)
* ``mllm_dr.io`` (atomic writes), the model files
"""

from transformers import AutoConfig, AutoModel, AutoProcessor

from configuration_mllm_dr import LQFormerConfig, MllmDrConfig
from modeling_mllm_dr import MllmDrForConditionalGeneration
from processing_mllm_dr import MllmDrProcessor

from .checkpoints import load_adapter_export

__version__ = "0.1.0.dev0"

# The installed classes are known to the Auto classes, so that loading an MLlm-DR folder without
# trust_remote_code uses them instead of asking whether to run the folder's own copy.
AutoConfig.register(MllmDrConfig.model_type, MllmDrConfig, exist_ok=True)
AutoConfig.register(LQFormerConfig.model_type, LQFormerConfig, exist_ok=True)
AutoModel.register(MllmDrConfig, MllmDrForConditionalGeneration, exist_ok=True)
AutoProcessor.register(MllmDrConfig, MllmDrProcessor, exist_ok=True)

__all__ = [
    "LQFormerConfig", "MllmDrConfig", "MllmDrForConditionalGeneration", "MllmDrProcessor", "__version__",
    "load_adapter_export",
]
