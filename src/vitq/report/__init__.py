"""Reports with numbers and plots: one quantization run (:func:`write_run_report`, with the per-op output
SQNR of :func:`layer_sqnr`) and a benchmark results file (:func:`write_bench_report`)."""

from vitq.report.bench_report import write_bench_report
from vitq.report.layer_sqnr import layer_sqnr
from vitq.report.run_report import write_run_report

__all__ = ["layer_sqnr", "write_bench_report", "write_run_report"]
