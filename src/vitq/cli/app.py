"""The ``vitq`` parser and entry point: one sub-parser per command module of :mod:`vitq.cli`.

Building the parser imports no torch, timm or transformers (the command modules import them inside their
``cmd_*`` functions), so ``vitq --help`` and usage errors answer at once.

Errors: :func:`main` turns every failure into one line on stderr, ``vitq: error: MESSAGE`` (the form of
argparse's usage errors, ``vitq COMMAND: error: ...``; Ctrl-C: ``vitq: interrupted``), and an exit status;
``-v`` prints the traceback before that line. Exit statuses:

- 0: success (``vitq`` with no command prints the help and exits 0);
- 1: an unexpected error, i.e. a bug in vitq or in a library it calls ("run with -v for the traceback");
- 2: bad input: a usage error (an unknown flag, a value out of range), a :class:`~vitq.errors.VitqError`
  (missing or corrupt checkpoint, image folder, config, saved model or ONNX file; an inconsistent
  configuration ...), a file that cannot be read or written (``OSError``: no such file, permission denied,
  no space left, naming the path), a file that is not valid JSON or UTF-8 text, a corrupt safetensors file;
- 130: interrupted (Ctrl-C), without a traceback.

Data-parallel runs: under ``torchrun --nproc-per-node N -m vitq COMMAND ...`` (``WORLD_SIZE`` > 1) every rank
joins the process group (:func:`vitq.distributed.init_from_env`: gloo on ``--device cpu``, nccl on
``--device cuda``), works on its shard of the images and rank 0 writes. A rank that fails prints its error,
prefixed with its rank, and posts it for the others, which stop without a second message; a rank that
hangs is named, after ``--dist-timeout`` seconds, by the lowest rank still running.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import NoReturn

from vitq.cli import bench, export, mp_search, quantize, report
from vitq.cli import eval as evaluate
from vitq.cli.argtypes import positive_int
from vitq.cli.common import is_safetensors_error
from vitq.errors import VitqError

log = logging.getLogger("vitq")

#: exit statuses of :func:`main` (see the module docstring)
EXIT_OK, EXIT_UNEXPECTED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

EPILOG = """exit status:
  0    success
  1    unexpected error (a bug): one line; run with -v for the traceback
  2    bad input: usage error, invalid value, missing/unreadable/corrupt file, inconsistent configuration
  130  interrupted (Ctrl-C)

examples:
  vitq quantize                 quantize the shipped Fashion-MNIST ViT at W8A8 (the demo)
  vitq quantize --bits 4 --method mptq --out runs/mptq-w4a4
  vitq eval --quantized runs/mptq-w4a4
  vitq COMMAND --help           the flags of one command
"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vitq", description="Post-training quantization of vision transformers.",
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="debug logging, and the traceback of any error")
    ap.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda (under torchrun: one GPU per rank, "
                                                    "cuda:LOCAL_RANK, backend nccl; cpu uses gloo)")
    ap.add_argument("--dist-timeout", type=positive_int, default=None, metavar="SECONDS",
                    help="under torchrun: stop every rank when one does not reach a collective within this "
                         "many seconds, naming it (default 600, or $VITQ_DIST_TIMEOUT)")
    sub = ap.add_subparsers(dest="command", title="commands", help="one of (vitq COMMAND --help for its flags):")
    quantize.add_parser(sub)
    evaluate.add_parser(sub)
    export.add_parser(sub)
    bench.add_parser(sub)
    mp_search.add_parser(sub)
    report.add_parser(sub)  # vitq report RUN_DIR | --bench RESULTS_JSON
    return ap


def _commands() -> dict:
    return {"quantize": quantize.cmd_quantize, "eval": evaluate.cmd_eval, "bench": bench.cmd_bench,
            "mp-search": mp_search.cmd_mp_search, "export": export.cmd_export, "report": report.cmd_report}


def _os_error_message(e: OSError) -> str:
    """``PATH: reason`` (both paths of a rename or copy), else the error as Python words it."""
    reason = e.strerror or str(e) or type(e).__name__
    if e.filename is not None:
        where = str(e.filename) + (f" -> {e.filename2}" if e.filename2 is not None else "")
        return f"{where}: {reason}"
    return str(e) or reason


def error_message(e: BaseException, verbose: bool = False) -> tuple[str, int]:
    """``(one-line message, exit status)`` for an exception that reached :func:`main`."""
    if isinstance(e, VitqError):
        msg, code = str(e), EXIT_BAD_INPUT
    elif isinstance(e, OSError):
        msg, code = _os_error_message(e), EXIT_BAD_INPUT
    elif isinstance(e, json.JSONDecodeError):
        msg, code = f"not valid JSON: {e}", EXIT_BAD_INPUT
    elif isinstance(e, UnicodeDecodeError):
        msg, code = f"a file is not UTF-8 text ({e.reason} at byte {e.start})", EXIT_BAD_INPUT
    elif is_safetensors_error(e):
        msg, code = f"corrupt or unreadable safetensors file: {e}", EXIT_BAD_INPUT
    else:
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        msg = f"unexpected {type(e).__name__}" + (f": {text}" if text else "")
        msg += " (the traceback is above)" if verbose else " (run with -v for the traceback)"
        code = EXIT_UNEXPECTED
    return " ".join(msg.split("\n")).strip() or type(e).__name__, code


def _close_progress_bars() -> None:
    """Close the tqdm bars an exception left open, so that the error line does not land inside a bar."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ()) or ()):
        try:
            bar.close()
        except Exception:  # a bar half torn down: the line below matters more
            pass


def _fail(line: str, verbose: bool) -> None:
    """Inside an ``except`` block: the traceback (with ``-v``), then ``line`` on stderr."""
    _close_progress_bars()
    if verbose:
        import traceback

        traceback.print_exc()
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run one ``vitq`` command and return its exit status (see the module docstring): 0, 1 on an
    unexpected error, 2 on bad input, 130 when interrupted. No command prints the help (exit 0)."""
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    if args.command is None:
        ap.print_help()
        return EXIT_OK
    parallel = _env_rank() is not None  # one log stream: rank 0's (the others warn), and its progress bars
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO if not parallel or _env_rank() == 0
                        else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    try:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        if parallel:
            from vitq import distributed

            distributed.init_from_env(args.device, args.dist_timeout)
        rc = _commands()[args.command](args)
    except KeyboardInterrupt:
        _fail("vitq: interrupted", args.verbose)
        return EXIT_INTERRUPTED
    except Exception as e:
        message, code = error_message(e, args.verbose)
        if parallel:
            return _fail_parallel(e, message, code, args.verbose)
        _fail(f"vitq: error: {message}", args.verbose)
        return code
    finally:
        if parallel:
            from vitq import distributed

            distributed.shutdown()
    log.info("done in %.1fs", time.perf_counter() - t0)
    return rc


def run() -> NoReturn:
    """The ``vitq`` console script and ``python -m vitq``: :func:`main` on ``sys.argv``, then exit with its
    status. A rank under ``torchrun`` ends through :func:`vitq.distributed.exit_process` (no interpreter
    finalization, where the distributed backend's threads can abort a finished process)."""
    code = main()
    if _env_rank() is not None:
        from vitq import distributed

        distributed.exit_process(code)
    sys.exit(code)


def _env_rank() -> int | None:
    """``RANK`` under a launcher with ``WORLD_SIZE`` > 1 (``torchrun``), else None."""
    try:
        return int(os.environ["RANK"]) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    except (KeyError, ValueError):
        return None


def _fail_parallel(e: Exception, message: str, code: int, verbose: bool) -> int:
    """One error line for the whole run: the failing rank's (posted for the others, which stay silent), or,
    for ranks that never reached a collective, the lowest rank that did."""
    from vitq import distributed

    distributed.report_failure(e)
    if isinstance(e, distributed.DistributedError):
        if e.from_peer:
            return code
        if e.missing_ranks and distributed.rank() != min(set(range(distributed.world_size())) - set(e.missing_ranks)):
            return code
    _fail(f"vitq: error (rank {distributed.rank()} of {distributed.world_size()}): {message}", verbose)
    return code
