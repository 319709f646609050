"""ComfyUI nodes of the Embedding Sanitizer (V1 node API: plain classes with INPUT_TYPES).

Thin adapters over the engine (`sanitizer`): no tensor math here. Node ids are
stable; renaming one breaks saved workflows.
"""

from .operator_mode import setup as setup_operator_mode
from .sanitizer_nodes import ClipTextEncodeSanitized, LoadEmbeddingSanitizer, SanitizeConditioning
from .training_nodes import TrainEmbeddingSanitizer

NODE_CLASS_MAPPINGS = {
    "EmbeddingSanitizerLoader": LoadEmbeddingSanitizer,
    "EmbeddingSanitizerApply": SanitizeConditioning,
    "EmbeddingSanitizerCLIPTextEncode": ClipTextEncodeSanitized,
    "EmbeddingSanitizerTrain": TrainEmbeddingSanitizer,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "EmbeddingSanitizerLoader": "Load Embedding Sanitizer",
    "EmbeddingSanitizerApply": "Sanitize Conditioning",
    "EmbeddingSanitizerCLIPTextEncode": "CLIP Text Encode (Sanitized)",
    "EmbeddingSanitizerTrain": "Train Embedding Sanitizer",
}

# The operator's enforcement switch, read once at load (see operator_mode.py).
OPERATOR_MODE = setup_operator_mode()
