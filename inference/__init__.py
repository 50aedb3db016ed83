"""Model registry, manifests, ONNX Runtime sessions, and signed versions.

Pure library: numpy, onnxruntime, cryptography (signatures) and ``schemas``; no Kafka, no global state.
"""

from driftline.inference.errors import ModelError, ModelNotReady
from driftline.inference.manifest import MANIFEST, MODEL_FILE, Manifest, sha256_file
from driftline.inference.model import OnnxModel, provider_list
from driftline.inference.registry import ModelRegistry, write_version

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
