"""One model version served through ONNX Runtime.

Follows the load / predict / unload life cycle: constructing is cheap (it
reads only the small manifest); ``load()`` checks the hash, opens the session on the best
provider it can really use, checks the inputs against the manifest and warms
up. ``predict`` takes the whole batch in one call: its float32 matrix, or, for
a model with named inputs (``onnx.inputs``), its feature columns.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from driftline.inference.errors import ModelError, ModelNotReady
from driftline.inference.manifest import MODEL_FILE, ORT_TYPES, Manifest, sha256_file
from driftline.schemas.profile import CategoricalFeature, NumericFeature
from driftline.schemas.validation import ModelBatch

log = logging.getLogger(__name__)

ProviderChoice = Literal["auto", "cpu", "cuda"]
GraphOptimization = Literal["disable", "basic", "extended", "all"]
_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
           "all": "ORT_ENABLE_ALL"}
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def provider_list(choice: ProviderChoice, available: list[str]) -> list[str]:
    """Providers to ask ONNX Runtime for, best first."""
    if choice == "cpu":
        return [CPU]
    if choice == "cuda":
        if CUDA not in available:
            raise ModelError(
                "providers=cuda but this ONNX Runtime has no CUDA provider "
                f"(available: {', '.join(available)}); install driftline[gpu] or use providers=auto"
            )
        return [CUDA, CPU]
    return [CUDA, CPU] if CUDA in available else [CPU]


class OnnxModel:
    """A loaded-on-demand ONNX model version described by its manifest."""

    def __init__(
        self,
        directory: Path | str,
        *,
        providers: ProviderChoice = "auto",
        intra_op_threads: int = 1,
        graph_optimization: GraphOptimization = "all",
        io_binding: bool | None = None,
        verify_key: bytes | None = None,
    ) -> None:
        """``io_binding``: run through ONNX Runtime's IO binding (None: only when CUDA is active).

        ``verify_key``: an Ed25519 public key (PEM); the version must then be
        signed by its owner (:mod:`driftline.inference.signing`) to load.

        With IO binding the input is copied to the device once and only the
        output that is read comes back, instead of every output of the graph.
        """
        self.directory = Path(directory)
        self.providers = providers
        self.intra_op_threads = intra_op_threads
        self.graph_optimization = graph_optimization
        self.io_binding = io_binding
        self.verify_key = verify_key
        self._bound = False
        self._ranks: dict[str, int] = {}
        self.manifest: Manifest = Manifest.read(self.directory)
        self._session = None
        self._device = "cpu"
        self.active_provider: str | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def ready(self) -> bool:
        return self._session is not None

    def load(self) -> None:
        import onnxruntime as ort

        m = self.manifest
        path = self.directory / MODEL_FILE
        if not path.is_file():
            raise ModelError(f"{path} is missing")
        if self.verify_key is not None:
            from driftline.inference.signing import verify_version

            verify_version(self.directory, self.verify_key)
        digest = sha256_file(path)
        if digest != m.sha256:
            raise ModelError(
                f"{path}: sha256 {digest} does not match the manifest ({m.sha256}); "
                "the file changed after registration, register it again as a new version"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[self.graph_optimization])
        wanted = provider_list(self.providers, ort.get_available_providers())
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
        except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types
            raise ModelError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
        active = session.get_providers()[0]
        if self.providers == "cuda" and active != CUDA:
            raise ModelError(f"{m.name} v{m.version}: CUDA was required but ONNX Runtime fell back to {active}")
        inputs = {i.name: i for i in session.get_inputs()}
        if m.inputs:
            self._ranks = check_named_inputs(path, m, inputs)
        elif m.input_name not in inputs:
            raise ModelError(f"{path}: no input named {m.input_name!r} (has {sorted(inputs)})")
        else:
            width = inputs[m.input_name].shape[-1]
            if isinstance(width, int) and width != m.profile.width:
                raise ModelError(
                    f"{path}: input {m.input_name!r} has {width} columns but the manifest's features "
                    f"make {m.profile.width}; the manifest does not describe this model"
                )
        if m.output_name not in {o.name for o in session.get_outputs()}:
            raise ModelError(f"{path}: no output named {m.output_name!r}")
        self._session = session
        self.active_provider = active
        # named inputs take no IO binding: string tensors live on the CPU, and each column is small
        self._bound = not m.inputs and (self.io_binding if self.io_binding is not None else active == CUDA)
        self._device = "cuda" if active == CUDA else "cpu"
        self._warm_up()
        log.info("model %s v%s loaded on %s", m.name, m.version, active)

    def _warm_up(self) -> None:
        """Score one row of zeros: a graph that loads but cannot run is refused here, not on live traffic.

        Some failures show only at run time, and only on one provider (a
        kernel CUDA lacks, a shape the graph cannot take), so whatever the
        run raises becomes a ModelError naming the provider, and the version
        is left unloaded.
        """
        m = self.manifest
        try:
            scores = self.predict(np.zeros((1, m.profile.width), dtype=np.float32) if not m.inputs else one_row(m))
            if scores.shape != (1,):
                raise ValueError(f"one input row gave output of shape {scores.shape}, not one score")
        except Exception as exc:  # noqa: BLE001 - ORT and numpy raise several unrelated types
            provider = self.active_provider
            self.unload()
            raise ModelError(
                f"{m.name} v{m.version}: the warm-up run on {provider} failed ({type(exc).__name__}: "
                f"{str(exc)[:500]}); it cannot serve there: export a graph that runs on {provider}, or serve it "
                "with other providers (DRIFTLINE_PROVIDERS)"
            ) from exc

    def predict(self, batch: ModelBatch) -> np.ndarray:
        """Scores for a batch: positive-class probability, or the regression value.

        ``batch`` is the float32 feature matrix, or, for a model with named
        inputs, the feature columns (name → values) that feed them.
        """
        if self._session is None:
            raise ModelNotReady(f"model {self.name} v{self.version} is not loaded; call load() first")
        m = self.manifest
        if m.inputs or isinstance(batch, Mapping):
            (out,) = self._session.run([m.output_name], self._feeds(batch))
        elif self._bound:
            binding = self._session.io_binding()
            binding.bind_cpu_input(m.input_name, np.ascontiguousarray(batch, dtype=np.float32))
            binding.bind_output(m.output_name, self._device)
            self._session.run_with_iobinding(binding)
            (out,) = binding.copy_outputs_to_cpu()
        else:
            (out,) = self._session.run([m.output_name], {m.input_name: batch})
        out = np.asarray(out, dtype=np.float64)
        if out.ndim == 2:
            out = out[:, m.output_index if m.output_index is not None else 0]
        return out

    def predict_columns(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Scores for valid feature columns (numeric NaN: missing, imputed), encoded as this model reads them."""
        profile = self.manifest.profile
        return self.predict(profile.imputed(columns) if self.manifest.inputs else profile.encode(columns))

    def _feeds(self, batch: ModelBatch) -> dict[str, np.ndarray]:
        """Each named input's column, in its element type and shape (``[n, 1]``, or ``[n]`` for a rank-1 input)."""
        m = self.manifest
        if not m.inputs or not isinstance(batch, Mapping):
            raise ModelError(f"model {m.name} v{m.version} reads "
                             f"{'named inputs: give its feature columns' if m.inputs else 'one matrix'}, "
                             f"not a {type(batch).__name__}")
        feeds = {}
        for i in m.inputs:
            col = np.asarray(batch[i.field], dtype=object if i.type == "string" else _NUMPY[i.type])
            feeds[i.name] = col.reshape(-1, 1) if self._ranks.get(i.name, 2) == 2 else col.reshape(-1)
        return feeds

    def labels(self, scores: np.ndarray) -> list[str | None]:
        """Decision at the manifest threshold; None for regressors."""
        m = self.manifest
        if m.task == "regression":
            return [None] * len(scores)
        names = np.array(m.labels, dtype=object)
        return list(names[(scores >= m.threshold).astype(np.int64)])

    @property
    def uses_io_binding(self) -> bool:
        return self._bound

    def unload(self) -> None:
        self._session = None
        self.active_provider = None
        self._bound = False


_NUMPY: dict[str, Any] = {"float": np.float32, "double": np.float64, "int64": np.int64, "int32": np.int32}


def check_named_inputs(path: Path, manifest: Manifest, inputs: Mapping[str, Any]) -> dict[str, int]:
    """Refuse a graph whose inputs are not the manifest's ``onnx.inputs`` (names, element types, shapes).

    Returns each input's rank (1 or 2). Every graph input must be fed, so
    the two sets of names must be equal; each input must take one column
    per row (``[N, 1]`` or ``[N]``) with a free batch dimension.
    """
    declared = {i.name: i for i in manifest.inputs}
    missing, extra = sorted(set(declared) - set(inputs)), sorted(set(inputs) - set(declared))
    if missing or extra:
        raise ModelError(f"{path}: the graph's inputs {sorted(inputs)} are not the manifest's onnx.inputs "
                         f"{sorted(declared)} (not in the graph: {missing}; not in the manifest: {extra})")
    ranks = {}
    for name, spec in declared.items():
        arg = inputs[name]
        got = ORT_TYPES.get(arg.type, arg.type)
        if got != spec.type:
            raise ModelError(f"{path}: input {name!r} is {arg.type} but the manifest declares it {spec.type}; "
                             f"set its type to {got!r} or export the input as {spec.type}")
        shape = list(arg.shape)
        one_column = len(shape) == 1 or not isinstance(shape[1], int) or shape[1] == 1
        if len(shape) not in (1, 2) or isinstance(shape[0], int) or not one_column:
            raise ModelError(f"{path}: input {name!r} has shape {shape}; driftline feeds each named input one "
                             "column per row: export it as [None, 1]")
        ranks[name] = len(shape)
    return ranks


def one_row(manifest: Manifest) -> dict[str, np.ndarray]:
    """One valid row of feature columns, for the warm-up: each numeric feature's impute value, a known category."""
    out: dict[str, np.ndarray] = {}
    for f in manifest.profile.features:
        if isinstance(f, NumericFeature):
            out[f.name] = np.array([f.impute], dtype=np.float64)
        elif isinstance(f, CategoricalFeature):
            out[f.name] = np.array([f.categories[0] if f.categories else ""], dtype=object)
    return out
