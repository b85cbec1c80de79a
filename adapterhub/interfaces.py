"""The contracts of everything a plugin registers, besides methods (:class:`adapterhub.method.Method`): quantizers,
formats, blob stores, experiment trackers (and generation metrics, :class:`adapterhub.metrics.Metric`).

Each is a small base class: a plugin subclasses it and overrides what it provides. Every operation the core
calls is declared here once, with its signature and docstring; an optional one has a default that says in
one line what the plugin cannot do (or does nothing, where doing nothing is right). The core calls these and
nothing else: it never looks for an attribute on a plugin object. :class:`~adapterhub.plugins.Plugins`
refuses, when a plugin registers it, an object that is not an instance (a class that is not a subclass, for
stores and trackers) of its contract.

This module is a leaf: it imports no torch, no SQLAlchemy and nothing of adapterhub but the errors and the
contracts declared elsewhere (re-exported here, so an infrastructure plugin needs one import).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, BinaryIO, Callable, ClassVar, Iterator, Mapping

from .errors import InvalidInput, PluginError
from .method import Method, overridden
from .metrics import Metric

if TYPE_CHECKING:  # pragma: no cover
    from .plugins import Plugins

__all__ = ["BaseTransform", "BlobStore", "Format", "Method", "Metric", "Progress", "Quantizer", "Tracker"]

Progress = Callable[[int], None]  # called with the number of bytes just moved


# -- quantizers (register_quantizers) ----------------------------------------------------------------------
class BaseTransform:
    """What :meth:`Quantizer.base_transform` returns: the exact quantize→dequantize round trip of the base
    weights a quantized base held, so a merge lands on the weights the adapter was trained against."""

    def applies(self, name: str) -> bool:
        """Whether base tensor ``name`` (its name in the checkpoint) was quantized, so goes through the round trip."""
        raise PluginError(f"{type(self).__name__} does not say which base tensors it transforms (applies)")

    def __call__(self, name: str, tensor: Any) -> Any:
        """Base tensor ``name`` (a CPU ``torch.Tensor``) as the quantized base held it: quantized then
        dequantized, a new tensor of the same shape."""
        raise PluginError(f"{type(self).__name__} does not transform base tensors (__call__)")


class Quantizer:
    """A base-model quantizer (``nf4``, ``fp4``, ``int8`` ...): ``adapterhub quantize``, ``train --quantize``
    and merging an adapter trained on a quantized base use it.

    The *record* is a JSON-able dict saying how a base was quantized (at least ``quantizer``: this
    quantizer's name, and ``quant_type``); ``train`` stores it in the adapter's manifest
    (``base.quantization``) and a quantized model directory in its ``config.json``."""

    #: the name users pass to ``--quantize`` / ``--to`` (lowercase ``[a-z0-9_]``, unique across plugins)
    name: str = ""

    def option_fields(self) -> list[dict[str, Any]]:
        """Each option :meth:`make_options` accepts: ``{"name", "default", "help"}``. The default: none."""
        return []

    def make_options(self, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Validated options (``--quant-opt key=value``: values may be strings) with every default filled in.
        The default refuses a key :meth:`option_fields` does not list (:class:`InvalidInput` naming the valid
        ones) and fills in the defaults; override it to check the values too (and call ``super()``)."""
        fields = {f["name"]: f["default"] for f in self.option_fields()}
        values = dict(values or {})
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise InvalidInput(
                f"unknown {self.name} option(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(fields)) or 'none'}"
            )
        return {**fields, **values}

    def options_from_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The options that reproduce ``record`` (to load a base exactly as training did). The default: the
        record's values of the :meth:`option_fields`, through :meth:`make_options`."""
        return self.make_options({f["name"]: record[f["name"]] for f in self.option_fields() if f["name"] in record})

    def quantize(
        self, model_dir: str, out_dir: str, *, force: bool = False, home: str | None = None, **options: Any
    ) -> dict[str, Any]:
        """Write the transformers model in ``model_dir`` quantized to ``out_dir`` (a directory that
        ``from_pretrained`` loads quantized; ``force``: replace an existing ``out_dir``; ``home``: the registry
        home, for its fingerprint cache). Returns ``{"out", "quantization": record, "files", "bytes",
        "source_bytes"}``."""
        raise InvalidInput(f"quantizer '{self.name}' cannot write a quantized model directory")

    def load_model(
        self, base_dir: str, task: str | None, labels: list[str] | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """The base model in ``base_dir`` for ``task`` (``"causal-lm"``, ``"seq-cls"`` with ``labels``; ``None``:
        the checkpoint's own class), quantized as it loads; returns ``(model, record)``."""
        raise InvalidInput(f"quantizer '{self.name}' cannot load a base model quantized (for training)")

    def base_transform(self, record: Mapping[str, Any]) -> BaseTransform:
        """The round trip of the weights ``record`` says were quantized (merging onto the dequantized base)."""
        raise InvalidInput(
            f"quantizer '{self.name}' cannot reproduce its quantization, so an adapter trained on "
            "its base merges only with --onto original"
        )

    def prepare_training(self, model: Any) -> None:
        """Called by ``train`` after the method attached its adapter to a base :meth:`load_model` loaded, before
        the first step (e.g. switch off kernels that have no backward). The default does nothing."""

    def prepare(self, model: Any) -> None:
        """Called on a model ``from_pretrained`` loaded from a directory :meth:`quantize` wrote, before it runs
        here (e.g. keep layers off a kernel this machine lacks). The default does nothing."""


# -- formats (register_formats) ----------------------------------------------------------------------------
class Format:
    """An adapter import/export format (a PEFT directory, a merged transformers model, another library's layout).

    Import: ``push`` asks each format whether it :meth:`detect`\\ s a directory that has no ``adapterhub.json``;
    the first that does either :meth:`convert`\\ s it (a foreign layout: other key names, pickles) into an
    adapter directory that is then stored, or, if it does not convert, :meth:`read`\\ s its manifest and the
    directory is stored as it is. Export: ``adapterhub export REF --format NAME`` calls :meth:`export`."""

    #: the name users pass to ``--format`` (lowercase ``[a-z0-9_]``, unique across plugins)
    name: str = ""

    def detect(self, path: str) -> bool:
        """Whether the directory ``path`` is in this format (cheap: look at file names and small JSON files).
        The default: never (an export-only format)."""
        return False

    def read(self, src: str, plugins: Plugins) -> dict[str, Any]:
        """The manifest of the directory ``src`` (which :meth:`detect` claimed): ``method`` (a method name of
        ``plugins``), ``config``, ``base`` (``{"fingerprint", "name"}``), ``task``, ``format``."""
        raise InvalidInput(f"{src}: format '{self.name}' cannot import adapters")

    def convert(self, src: str, files: dict[str, str], out: str, plugins: Plugins) -> None:
        """Write an adapter directory (``adapterhub.json`` + ``adapter_model.safetensors``) for the directory
        ``src`` (which :meth:`detect` claimed) into the empty directory ``out``; ``files`` maps each file of
        ``src`` (relative posix path) to where to read it (``.bin`` files already converted to
        ``.safetensors`` when ``push --import-bin`` was given). ``push`` then stores ``out``, not ``src``."""
        raise InvalidInput(f"{src}: format '{self.name}' cannot convert directories")

    def export(self, reg: Any, ref: str, out: str, *, plugins: Plugins, **options: Any) -> dict[str, Any]:
        """Write version ``ref`` of the registry ``reg`` in this format to ``out``, refusing the ``options``
        (``force``, ``base``, ``dtype`` ...: ``adapterhub export``'s flags) it has no use for. Returns a JSON-able
        summary with at least ``ref``, ``format`` and ``out``."""
        raise InvalidInput(f"format '{self.name}' cannot export (it only imports)")

    def capabilities(self) -> list[str]:
        """Which of ``read``, ``convert`` and ``export`` this format implements (overrides)."""
        return [cap for cap in ("convert", "export", "read") if overridden(self, Format, cap)]


# -- blob stores (register_stores) -------------------------------------------------------------------------
class BlobStore:
    """A content-addressed blob store: a blob is addressed by the lowercase hex sha256 of its bytes. A plugin
    registers the *class*; ``name`` is its URL scheme (``file``, ``s3``). Implementations must make ``put``
    atomic (a reader never sees a partial blob) and must never overwrite an existing blob with other bytes."""

    #: URL scheme (``file``, ``s3``)
    name: ClassVar[str] = ""
    #: the store's URL, as :meth:`from_url` was given it (credentials never included)
    url: str = ""

    @classmethod
    def from_url(cls, url: str) -> BlobStore:
        """The store ``url`` names (its scheme is :attr:`name`); refuses a malformed URL (:class:`InvalidInput`)."""
        raise PluginError(f"blob store '{cls.name}' ({cls.__name__}) does not implement from_url")

    def has(self, digest: str) -> bool:
        """Whether blob ``digest`` is stored."""
        raise PluginError(f"blob store '{self.name}' does not implement has")

    def put(self, digest: str, path: str, size: int, progress: Progress | None = None) -> bool:
        """Store the file at ``path`` under ``digest``; verify while copying that its bytes hash to
        ``digest`` (raise :class:`IntegrityError` otherwise). Returns False if the blob already
        existed and nothing was written."""
        raise PluginError(f"blob store '{self.name}' does not implement put")

    def open(self, digest: str, limit: int | None = None) -> BinaryIO:
        """A binary stream of the blob's stored bytes (unverified: use :func:`copy_verified`); with ``limit``,
        the store need not fetch more than that many bytes (a row declaring 10 bytes never pulls a 300 MB
        object over the network). Raise :class:`IntegrityError` if the blob is missing."""
        raise PluginError(f"blob store '{self.name}' does not implement open")

    def delete(self, digest: str) -> None:
        """Remove blob ``digest`` (``gc``); a missing blob is not an error."""
        raise PluginError(f"blob store '{self.name}' does not implement delete")

    def iter_blobs(self) -> Iterator[tuple[str, float]]:
        """Every stored blob as ``(digest, mtime as a unix time)``."""
        raise PluginError(f"blob store '{self.name}' does not implement iter_blobs")

    def cleanup_temp(self, older_than: float) -> int:
        """Remove temporary leftovers of interrupted writes older than ``older_than`` seconds;
        return how many were removed. The default: none to remove."""
        return 0

    def size(self, digest: str) -> int | None:
        """The stored blob's size in bytes (``None``: missing); what ``gc`` reports as freed. The default
        reads the size of :meth:`local_path`."""
        import os

        path = self.local_path(digest)
        try:
            return os.path.getsize(path) if path else None
        except OSError:
            return None

    def describe(self) -> str:
        """The store in one line for people (``adapterhub remote``); never credentials. The default: :attr:`url`."""
        return self.url

    def local_path(self, digest: str) -> str | None:
        """The path of the blob on this machine's disk, if the store keeps blobs as files (the registry
        server then streams it with HTTP Range support); ``None`` otherwise."""
        return None

    def local_root(self) -> str | None:
        """The directory on this machine that holds the store, if it keeps blobs as files (commands refuse to
        write an output there, even with ``--force``); ``None`` otherwise."""
        return None

    def presigned_url(self, digest: str, expires: int) -> str | None:
        """A URL that serves the blob's bytes for ``expires`` seconds without other credentials (the
        registry server hands it to clients, so bytes go straight from the store to them); ``None`` if
        the store cannot make one."""
        return None


# -- experiment trackers (register_trackers) ---------------------------------------------------------------
class Tracker:
    """An experiment tracker (MLflow ...). A plugin registers the *class*; ``train --track NAME`` makes one
    instance per run. Every operation is optional (the default does nothing): a tracker that only logs metrics
    overrides :meth:`log_metrics`. ``train`` guards every call: a failing tracker costs one warning, never the run."""

    #: what users pass to ``train --track``
    name: ClassVar[str] = ""

    def start(self, run_name: str, experiment: str | None, params: dict[str, Any], tags: dict[str, str]) -> None:
        """Begin a run and log its parameters (called once, before training)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log numeric metrics at an optimizer step (the Trainer's logs, then the evaluation)."""

    def log_report(self, name: str, report: dict[str, Any]) -> None:
        """Log a JSON document (e.g. ``data_check.json``, the data-quality report)."""

    def log_artifacts(self, directory: str, artifact_path: str) -> None:
        """Upload a directory (the adapter, never the base weights) under ``artifact_path``."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tag the run (e.g. with the registry ref and digest after a push)."""

    def end(self, status: str = "FINISHED") -> None:
        """Close the run (``"FINISHED"``)."""

    def run_info(self) -> dict[str, Any]:
        """``{"tracker", "run_id", "tracking_uri", "url"}`` for the manifest and ``show``."""
        return {"tracker": self.name}
