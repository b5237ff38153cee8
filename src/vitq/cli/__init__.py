"""The ``vitq`` command line, one module per command:

- :mod:`~vitq.cli.quantize` (``vitq quantize``; with no flags the embedded default, ``make demo``),
  :mod:`~vitq.cli.eval`, :mod:`~vitq.cli.export`, :mod:`~vitq.cli.bench`, :mod:`~vitq.cli.mp_search`,
  :mod:`~vitq.cli.report`;
- :mod:`~vitq.cli.common`: the default model and data, the model and quantization flags, the config from them;
- :mod:`~vitq.cli.options`: the MPTQ-ViT (extended recipe) flags;
- :mod:`~vitq.cli.argtypes`: the ``type=`` validators of the flags (positive counts, bit-widths, files);
- :mod:`~vitq.cli.app`: the parser and :func:`main` and :func:`run` (the ``vitq`` console script, ``python -m vitq``): ``vitq``
  alone prints the help; every failure is one line on stderr and an exit status (documented there).

Building the parser imports no torch: heavy imports are inside the commands' ``cmd_*`` functions.

The library never imports this package (``tests/test_import_layers.py``).
"""

from vitq.cli.app import build_parser, main, run

__all__ = ["build_parser", "main", "run"]
