"""Every hook a plugin can implement.

Registration hooks receive a ``register`` callback. Call it once per object you provide: an instance of the
contract of its kind (a subclass, for stores and trackers, which register the class) with a ``name``
(lowercase ``[a-z0-9_]``). The contracts are declared, with a docstring per operation, in
:mod:`adapterhub.method` (methods) and :mod:`adapterhub.interfaces` (the rest). The core refuses an object that
does not subclass its contract and a name that another plugin already registered, with an error naming the
plugins; it never renames silently. All hooks are called once per plugin manager, lazily, the first time the
registry of that kind is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

from .interfaces import BlobStore, Format, Method, Metric, Quantizer, Tracker

if TYPE_CHECKING:  # pragma: no cover - click is imported by the CLI, not by plugin loading
    import click

hookspec = pluggy.HookspecMarker("adapterhub")


@hookspec
def register_methods(register: Callable[[Method], None]) -> None:
    """Register PEFT methods.

    Called when a method is first looked up (``adapterhub methods``, ``train``, ``merge`` ...).

    :param register: call ``register(method)`` with an instance of :class:`adapterhub.method.Method`
        for each method this plugin provides; ``method.name`` is the name users type (``"lora"``).
    :returns: nothing; results are ignored.
    """


@hookspec
def register_quantizers(register: Callable[[Quantizer], None]) -> None:
    """Register base-model quantizers (``nf4``, ``fp4``, ``int8`` ...).

    Called when a quantizer is first looked up (``adapterhub quantize``, ``train --quantize``, merging an
    adapter trained on a quantized base).

    :param register: call ``register(quantizer)`` with an instance of :class:`adapterhub.interfaces.Quantizer`;
        ``quantizer.name`` is what users pass to ``--quantize``.
    :returns: nothing.
    """


@hookspec
def register_formats(register: Callable[[Format], None]) -> None:
    """Register adapter import/export formats (a PEFT directory, a merged transformers model ...).

    Called when ``push`` reads a directory that has no ``adapterhub.json`` (to detect what it is), and
    by ``export``.

    :param register: call ``register(fmt)`` with an instance of :class:`adapterhub.interfaces.Format`;
        ``fmt.name`` is what users pass to ``export --format``.
    :returns: nothing.
    """


@hookspec
def register_stores(register: Callable[[type[BlobStore]], None]) -> None:
    """Register blob stores by URL scheme.

    Called when a registry opens its blob store.

    :param register: call ``register(store_class)`` with a subclass of :class:`adapterhub.interfaces.BlobStore`
        (the class: ``store_class.from_url(url)`` makes a store); ``store_class.name`` is the URL scheme
        (``"file"``, ``"s3"``).
    :returns: nothing.
    """


@hookspec
def register_trackers(register: Callable[[type[Tracker]], None]) -> None:
    """Register experiment trackers (MLflow ...).

    Called when ``train --track NAME`` (or ``ADAPTERHUB_TRACKER``) asks for a tracker.

    :param register: call ``register(tracker_class)`` with a subclass of :class:`adapterhub.interfaces.Tracker`
        (the class: ``train`` makes one instance per run); ``tracker_class.name`` is what users pass to
        ``--track``.
    :returns: nothing.
    """


@hookspec
def register_metrics(register: Callable[[Metric], None]) -> None:
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
def register_commands(cli: click.Group) -> None:
    """Add CLI commands.

    Called once when the ``adapterhub`` CLI starts, before arguments are parsed. Keep the plugin module
    cheap to import (no torch at import time): ``adapterhub --help`` runs this hook.

    :param cli: the root :class:`click.Group`; call ``cli.add_command(...)`` or use ``@cli.command()``.
    :returns: nothing.
    """
