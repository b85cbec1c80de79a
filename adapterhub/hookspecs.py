"""Every hook a plugin can implement.

Registration hooks receive a ``register`` callback. Call it once per object you provide; the object must
have a ``name`` attribute (lowercase ``[a-z0-9_]``). The core validates names and refuses a name that
another plugin already registered, with an error naming both plugins; it never renames silently.
All hooks are called once per plugin manager, lazily, the first time the registry of that kind is used.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("adapterhub")

Register = Callable[[Any], None]


@hookspec
def register_methods(register: Register) -> None:
    """Register PEFT methods.

    Called when a method is first looked up (``adapterhub methods``, ``train``, ``merge`` ...).

    :param register: call ``register(method)`` with an instance of :class:`adapterhub.method.Method`
        for each method this plugin provides; ``method.name`` is the name users type (``"lora"``).
    :returns: nothing; results are ignored.
    """


@hookspec
def register_quantizers(register: Register) -> None:
    """Register base-model quantizers (``nf4``, ``fp4``, ``int8`` ...).

    Called when a quantizer is first looked up (``adapterhub quantize``, ``train --quantize``).

    :param register: call ``register(quantizer)``; a quantizer has ``name``,
        ``quantize(model_dir, out_dir, **options)`` (write a quantized transformers directory),
        ``make_options(values)`` (validated options), ``load_model(base_dir, task, labels, options)``
        (a base loaded quantized, for training), ``base_transform(record)`` (the exact quantize ->
        dequantize round trip of one tensor, for merging onto what the adapter was trained against),
        ``options_from_record(record)``, ``prepare_training(model)`` and ``prepare(model)``.
    :returns: nothing.
    """


@hookspec
def register_formats(register: Register) -> None:
    """Register adapter import/export formats (a PEFT directory, a merged transformers model ...).

    Called when ``push`` reads a directory that has no ``adapterhub.json`` (to detect what it is), and
    by ``export``.

    :param register: call ``register(fmt)``; a format has ``name``, ``detect(path) -> bool`` and
        ``read(path, plugins) -> dict`` (returns a manifest: ``method``, ``config``, ``base`` ...), and may
        have ``export(reg, ref, out, **options) -> dict`` and ``convert(path, files, out, plugins)``: for a
        foreign layout (other key names, pickles), write an adapter directory (``adapterhub.json`` +
        ``adapter_model.safetensors``) into the empty directory ``out``; ``files`` maps each file of ``path``
        (relative posix path) to where to read it (``.bin`` files already converted to ``.safetensors`` when
        ``push --import-bin`` was given). ``push`` then stores ``out``, not ``path``.
    :returns: nothing.
    """


@hookspec
def register_stores(register: Register) -> None:
    """Register blob stores by URL scheme.

    Called when a registry opens its blob store.

    :param register: call ``register(store_class)``; ``store_class.name`` is the URL scheme
        (``"file"``, ``"s3"``) and ``store_class.from_url(url)`` returns a
        :class:`adapterhub.registry.blobs.BlobStore`.
    :returns: nothing.
    """


@hookspec
def register_trackers(register: Register) -> None:
    """Register experiment trackers (MLflow ...).

    Called when ``train --track NAME`` (or ``ADAPTERHUB_TRACKER``) asks for a tracker.

    :param register: call ``register(tracker_class)``; ``tracker_class.name`` is what users pass to
        ``--track``.
    :returns: nothing.
    """


@hookspec
def register_metrics(register: Register) -> None:
    """Register generation metrics (exact match, ROUGE-L, chrF, an LLM-as-judge ...).

    Called when ``adapterhub eval --generate`` (or ``adapterhub plugins``) first looks up a metric.

    :param register: call ``register(metric)`` with an object that keeps :class:`adapterhub.metrics.Metric`:
        ``name`` (what users pass to ``--metric``), ``higher_is_better`` (a bool: the direction the promotion
        gate compares in) and ``compute(predictions, references) -> float`` (called once per model with
        equally long lists of strings; a finite number for the whole set). Import heavy libraries inside
        ``compute``, not at module import.
    :returns: nothing.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add CLI commands.

    Called once when the ``adapterhub`` CLI starts, before arguments are parsed. Keep the plugin module
    cheap to import (no torch at import time): ``adapterhub --help`` runs this hook.

    :param cli: the root :class:`click.Group`; call ``cli.add_command(...)`` or use ``@cli.command()``.
    :returns: nothing.
    """
