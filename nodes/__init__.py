"""ComfyUI nodes of the Embedding Sanitizer (V1 node API: plain classes with INPUT_TYPES).

Thin adapters over the engine (`embedding_sanitizer`): no tensor math here. Node ids are
frozen (saved workflows name them), so each class is named after its id and registered once.
"""

from .operator_mode import setup as setup_operator_mode
from .sanitizer_nodes import EmbeddingSanitizerApply, EmbeddingSanitizerCLIPTextEncode, EmbeddingSanitizerLoader
from .training_nodes import EmbeddingSanitizerTrain

# (node id, class, display name)
NODES = (
    ("EmbeddingSanitizerLoader", EmbeddingSanitizerLoader, "Load Embedding Sanitizer"),
    ("EmbeddingSanitizerApply", EmbeddingSanitizerApply, "Sanitize Conditioning"),
    ("EmbeddingSanitizerCLIPTextEncode", EmbeddingSanitizerCLIPTextEncode, "CLIP Text Encode (Sanitized)"),
    ("EmbeddingSanitizerTrain", EmbeddingSanitizerTrain, "Train Embedding Sanitizer"),
)

NODE_CLASS_MAPPINGS = {node_id: cls for node_id, cls, _ in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: name for node_id, _, name in NODES}

# The operator's enforcement switch, read once at load (see operator_mode.py).
OPERATOR_MODE = setup_operator_mode()
