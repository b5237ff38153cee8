"""Exceptions raised by vitq. Every user-facing error derives from :class:`VitqError`."""

from __future__ import annotations


class VitqError(Exception):
    """Base class of every error vitq raises on bad input."""


class ConfigError(VitqError, ValueError):
    """A configuration value is out of range or inconsistent (the message names it and the valid values)."""


class ModelArgumentError(ConfigError):
    """The model's constructor rejected an architecture argument (``create_model(spec, **kwargs)``, the
    CLI's ``--model-arg KEY=VALUE``): unknown, or a value of the wrong type or range. ``key`` names the
    argument when it can be told (else ``None``)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class UnsupportedModelError(VitqError, TypeError):
    """The model's family has no adapter; the message names its class and the supported families."""


class CheckpointError(VitqError):
    """A checkpoint is missing, unreadable, or does not match the model architecture."""


class CalibrationDataError(VitqError):
    """Calibration or evaluation data is missing, empty or unreadable."""


class DataFormatError(VitqError):
    """A data file (IDX, image, ONNX) is malformed: bad magic number, truncated, wrong shape."""


class NonFiniteError(VitqError, FloatingPointError):
    """NaN or inf where a finite number is needed: a float model's weights or buffers (at
    :func:`vitq.quantize`), activations during calibration, a model's logits (at evaluation), or a value
    about to be written to a JSON file. The message names the tensor, op or key."""


class QuantizedModelFormatError(VitqError):
    """A saved quantized model is missing files or has an incompatible format version."""


class OutputPathError(VitqError):
    """An output path cannot be written: its parent is not a writable directory (the message names it)."""


class OutputExistsError(OutputPathError, FileExistsError):
    """An output path is taken: a file, a non-empty directory that is not a vitq output, or a vitq output
    and ``overwrite`` was not given. Nothing was written or removed."""


class ExportError(VitqError):
    """A quantized model cannot be expressed in the export format (the message names the layer and why)."""


class PartialQuantizationError(VitqError):
    """Under ``strict``: the model computes an op vitq cannot quantize (the message names each one)."""


class PartialQuantizationWarning(UserWarning):
    """The model computes ops vitq cannot quantize; they stay float (the message names each one)."""
