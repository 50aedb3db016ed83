"""Model registry, manifests and ONNX Runtime sessions.

Pure library: numpy, onnxruntime and ``schemas``; no Kafka, no global state.
"""

from inference.errors import ModelError, ModelNotReady
from inference.manifest import MANIFEST, MODEL_FILE, Manifest, sha256_file
from inference.model import OnnxModel, provider_list
from inference.registry import ModelRegistry, write_version

__all__ = [
    "MANIFEST",
    "MODEL_FILE",
    "Manifest",
    "ModelError",
    "ModelNotReady",
    "ModelRegistry",
    "OnnxModel",
    "provider_list",
    "sha256_file",
    "write_version",
]
