"""Command line: ``layerprobe snapshot | compare | show | demo | plot-trajectory | freeze-list``. Parses
arguments, calls the library.

Exit codes: 0 success; 2 bad input (one line on stderr, no traceback, no partial output).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from layerprobe._version import __version__
from layerprobe.errors import LayerProbeError, printable
from layerprobe.options import DEFAULT_MAX_LENGTH, ESTIMATORS, FORMATS, POOLINGS, CKAOptions, ProbeOptions

__all__ = ["COMMANDS", "build_parser", "cmd_compare", "cmd_demo", "cmd_freeze_list", "cmd_plot_trajectory",
           "cmd_show", "cmd_snapshot", "entry", "main", "printable"]

#: help of every ``--format``: what is printed on standard output
FORMAT_HELP = "what is printed on stdout: table (default), markdown, csv or json (the JSON contract)"


def _add_probe_args(p: argparse.ArgumentParser, probe_required: bool) -> None:
    p.add_argument("--probe", required=probe_required, metavar="FILE",
                   help="probe texts: CSV, TSV, JSONL, TXT (one per line) or a saved datasets directory")
    p.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    p.add_argument("--max-examples", type=int, default=None, metavar="N", help="use the first N probe examples")
    p.add_argument("--max-length", type=int, default=None, metavar="L", help=f"truncate to L tokens (default {DEFAULT_MAX_LENGTH})")
    p.add_argument("--pooling", choices=POOLINGS, default=None,
                   help="mean over real tokens (default), first token, last real token, or all tokens")
    p.add_argument("--max-tokens", type=int, default=None, metavar="K",
                   help="with --pooling tokens: keep at most K tokens per example")
    p.add_argument("--batch-size", type=int, default=ProbeOptions.batch_size, metavar="N",
                   help=f"probe examples per forward pass (default {ProbeOptions.batch_size}); lower it if memory runs out")
    p.add_argument("--device", default=None, metavar="DEV", help="run models on cpu (default), cuda, cuda:N or mps")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="load models in this precision (default: as saved); recorded in meta")
    p.add_argument("--blocks", default=None, metavar="PATTERN",
                   help="module-path glob/regex of the blocks, e.g. 'encoder.layer.*' (default: found); "
                        "names keep the model's own index (encoder.layer.3 is block.3)")
    p.add_argument("--embeddings", default=None, metavar="PATTERN",
                   help="module-path pattern of the embedding stage ('' for none; default: found)")


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error of every other bad input (not the usage block, then the error)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"layerprobe: error: {printable(message)} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="layerprobe",
        description="Which transformer blocks changed during fine-tuning, and which could have been frozen?",
    )
    parser.add_argument("--version", action="version", version=f"layerprobe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("snapshot", help="snapshot a model's weights and block representations on a probe set")
    p.add_argument("model", help="Hugging Face model directory")
    _add_probe_args(p, probe_required=True)
    p.add_argument("-o", "--output", required=True, help="snapshot file to write (.pt)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("compare", help="compare base and tuned: per-block CKA, drift, and freeze advice")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="base then tuned: snapshot .pt, HF model directory, LoRA adapter directory, .safetensors or "
                        "state-dict .pt. More than two (or a Trainer run directory with checkpoint-N folders): a "
                        "checkpoint series, written to --out DIR as trajectory.csv and trajectory.png")
    p.add_argument("--weights-a", default=None, metavar="PATH",
                   help="weight files for A when A is a representation-only snapshot (offloaded model)")
    p.add_argument("--weights-b", default=None, metavar="PATH", help="weight files for B, likewise")
    _add_probe_args(p, probe_required=False)
    p.add_argument("--format", choices=FORMATS, default="table", help=FORMAT_HELP)
    p.add_argument("--out", metavar="DIR", help="also write comparison.json, comparison.csv, groups.csv, blocks.png")
    p.add_argument("--min-cka", type=float, default=0.99,  # = Thresholds().min_cka (not imported here: start-up)
                   help="freeze only entries with CKA >= this (default 0.99, fit by the freeze study)")
    p.add_argument("--tolerance", type=float, default=None, metavar="LOSS",
                   help="accuracy loss you accept (e.g. 0.01 = keep 99%% of full fine-tuning): freeze the largest bottom "
                        "prefix predicted within it (docs/method.md); without it the shipped default rule decides "
                        "(predictor.json's default_rule: the CKA rule, or the prediction where its measurement is) "
                        "and the predictions are listed")
    p.add_argument("--revert", action=argparse.BooleanOptionalAction, default=None,
                   help="run the revert test (the tuned model with each bottom prefix reset to the base weights, on the "
                        "probe; needs a probe and a tuned model with its output head): the prediction's strongest input. "
                        "Default: run it where it can when the shipped predictor reads it; --no-revert skips it")
    p.add_argument("--calibrate", action="store_true",
                   help="measure what freezing each bottom prefix saves per training step on the tuned model (one "
                        "thread, a batch of the probe; about (blocks + 2) x 5 training steps) instead of estimating "
                        "it from parameter counts")
    p.add_argument("--max-drift", type=float, default=None,
                   help="also require relative weight drift <= this (the only criterion without CKA)")
    p.add_argument("--no-interval", action="store_true",
                   help="judge by the CKA point estimate even when an interval was computed")
    p.add_argument("--min-train-blocks", type=int, default=1, help="always train at least this many blocks")
    p.add_argument("--max-relative-change", type=float, default=None,
                   help="also require 1 - CKA <= this x the top block's 1 - CKA (relative rule; default off)")
    p.add_argument("--no-anatomy", action="store_true", help="skip the per-parameter-group anatomy (faster)")
    p.add_argument("--estimator", choices=ESTIMATORS, default=CKAOptions.estimator,
                   help="CKA estimator (default linear). The freeze thresholds (--min-cka) are calibrated for "
                        "linear CKA; debiased/rbf values are on a different scale")
    ci = p.add_mutually_exclusive_group()
    ci.add_argument("--ci", dest="ci", action="store_true", default=None,
                    help="bootstrap interval per entry over probe examples (default: on for linear CKA with "
                         "up to 2048 representation rows; the advice then uses the lower bound)")
    ci.add_argument("--no-ci", dest="ci", action="store_false", help="no bootstrap interval")
    p.add_argument("--n-boot", type=int, default=CKAOptions.n_boot, metavar="N",
                   help=f"bootstrap resamples (default {CKAOptions.n_boot})")
    p.add_argument("--ci-level", type=float, default=CKAOptions.ci_level,
                   help=f"interval coverage (default {CKAOptions.ci_level})")
    p.add_argument("--seed", type=int, default=CKAOptions.seed, help=f"bootstrap seed (default {CKAOptions.seed})")
    p.add_argument("--cross-layer", action="store_true",
                   help="also CKA between every entry of A and of B and within each (JSON 'cross_layer'; "
                        "with --out: cross_layer.csv and cross_layer.png)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("show", help="re-render a saved comparison.json as a table, Markdown, CSV or JSON, and re-plot it")
    p.add_argument("comparison", help="comparison.json written by compare --out (or --format json)")
    p.add_argument("--format", choices=FORMATS, default="table", help=FORMAT_HELP)
    p.add_argument("--plot", metavar="PNG", default=None,
                   help="also draw the per-entry figure (compare --out's blocks.png) into this file")
    p.add_argument("--plot-cross-layer", metavar="PNG", default=None,
                   help="also draw the cross-layer CKA map (compare --cross-layer's cross_layer.png) into this file")
    p.add_argument("--title", default=None, help="figure title (default: none)")

    p = sub.add_parser("demo", help="the main job: MiniLM-L6 fine-tuned on Rotten Tomatoes, end to end")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--train-size", type=int, default=4000, metavar="N",
                   help="Rotten Tomatoes snippets to fine-tune on (default %(default)s)")
    p.add_argument("--probe-size", type=int, default=512, metavar="N",
                   help="held-out snippets in the probe set (default %(default)s; at least 4)")
    p.add_argument("--test-size", type=int, default=1000, metavar="N",
                   help="held-out snippets for the accuracy before and after (default %(default)s)")
    p.add_argument("--epochs", type=float, default=1.0, help="training epochs, may be fractional (default %(default)s)")
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate of AdamW (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split, head and batch order (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("plot-trajectory", help="draw per-block CKA and drift over training steps from a run's CSV")
    p.add_argument("run_dir", help="folder holding layerprobe_trajectory.csv (or the CSV itself)")
    p.add_argument("-o", "--output", help="PNG to write (default RUN_DIR/layerprobe_trajectory.png)")
    p.add_argument("--title", default=None, help="figure title (default: none)")

    p = sub.add_parser("freeze-list", help="full parameter names of the entries a comparison advises to freeze")
    p.add_argument("comparison", help="comparison.json written by compare --out (or --format json)")
    p.add_argument("model", help="Hugging Face model directory whose parameter names to list")
    p.add_argument("-o", "--output", help="file to write, one name per line (default: stdout)")
    return parser


def _positive(args: argparse.Namespace, *names: str) -> None:
    import math

    for n in names:
        v = getattr(args, n, None)
        if v is not None and not (math.isfinite(v) and v > 0):
            raise LayerProbeError(f"--{n.replace('_', '-')} must be a positive finite number, got {v}")
    from layerprobe.options import MAX_N_BOOT

    for n, high in (("seed", 2**32 - 1), ("n_boot", MAX_N_BOOT), ("batch_size", 1 << 20)):
        v = getattr(args, n, None)
        if v is not None and n in names + ("seed",) and not 0 <= v <= high:
            raise LayerProbeError(f"--{n.replace('_', '-')} must be in [0, {high:,}], got {v}")


def _not_ignored(args: argparse.Namespace) -> None:
    """Refuse probe flags that would be silently ignored."""
    if args.probe is None:
        given = [f for f, v in (("--text-column", args.text_column != "text"), ("--max-examples", args.max_examples))
                 if v]
        if given:
            raise LayerProbeError(f"{given[0]} applies only with --probe (no probe texts are read)")
    if args.max_tokens is not None and args.pooling != "tokens":
        raise LayerProbeError("--max-tokens applies only with --pooling tokens")


def _probe_options(args: argparse.Namespace) -> ProbeOptions:
    return ProbeOptions(pooling=args.pooling, max_length=args.max_length, max_tokens=args.max_tokens,
                        batch_size=args.batch_size)


def cmd_snapshot(args: argparse.Namespace) -> int:
    from layerprobe.io.hf_model import load_hf_model
    from layerprobe.io.outputs import ensure_writable_dir
    from layerprobe.io.probe_files import read_probe_texts
    from layerprobe.snapshot.take import take_snapshot

    _positive(args, "max_examples", "max_length", "max_tokens", "batch_size")
    _not_ignored(args)
    if not os.path.isdir(args.model):
        raise LayerProbeError("expected a Hugging Face model directory", args.model)
    from layerprobe.io.outputs import check_not_an_input, check_output_file

    check_output_file(args.output)  # "", a directory, a device or FIFO: refused before any work
    check_not_an_input(args.output, [args.model, args.probe])
    ensure_writable_dir(os.path.dirname(os.path.abspath(args.output)))  # fail before any work
    texts = read_probe_texts(args.probe, text_column=args.text_column, max_examples=args.max_examples)
    model, tok = load_hf_model(args.model, device=args.device, dtype=args.dtype)
    if tok is None:
        raise LayerProbeError("no tokenizer in the model directory", args.model)
    opts = _probe_options(args).settle()
    blocks = None
    if args.blocks is not None or args.embeddings is not None:
        from layerprobe.model.blocks import find_blocks

        blocks = find_blocks(model, blocks=args.blocks, embeddings=args.embeddings)
    try:
        snap = take_snapshot(model, tok, texts, **opts.snapshot_kwargs(), blocks=blocks, progress=not args.quiet)
    except LayerProbeError as err:  # a problem of this model's run (overflowing activations): name the model
        if err.path is not None:
            raise
        raise LayerProbeError(err.message, args.model) from None
    snap.meta["source"] = {"path": args.model, "kind": "hf_dir"}
    snap.save(args.output)
    _out(f"wrote {args.output}: {len(snap.names)} entries, {snap.meta['n_examples']} examples, "
         f"pooling {snap.meta['pooling']}, probe {str(snap.fingerprint)[:12]}\n")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from layerprobe.comparison.compare import compare
    from layerprobe.freezing.rule import Thresholds
    from layerprobe.io.outputs import ensure_writable_dir
    from layerprobe.results.render import render

    _positive(args, "max_examples", "max_length", "max_tokens", "batch_size", "n_boot")
    _not_ignored(args)
    if not 0.0 <= args.min_cka <= 1.0:
        raise LayerProbeError(f"--min-cka must be in [0, 1], got {args.min_cka}")
    if not 0.0 < args.ci_level < 1.0:  # NaN fails too
        raise LayerProbeError(f"--ci-level must be in (0, 1), e.g. 0.95, got {args.ci_level}")
    if args.max_relative_change is not None and not 0.0 <= args.max_relative_change <= 1.0:
        raise LayerProbeError(f"--max-relative-change must be in [0, 1], got {args.max_relative_change}")
    if args.out == "":
        raise LayerProbeError("--out: the output directory name is empty")
    if args.out:
        from layerprobe.io.outputs import check_not_an_input
        from layerprobe.results.outputs import OUTPUT_FILES

        check_not_an_input([os.path.join(args.out, n) for n in OUTPUT_FILES],
                           [*args.inputs, args.probe, args.weights_a, args.weights_b])
        ensure_writable_dir(args.out)  # fail before any work
    from layerprobe.comparison.series import expand_inputs
    from layerprobe.io.hf_model import resolve_device

    resolve_device(args.device)  # an absent device fails before any work

    inputs = expand_inputs(args.inputs)
    if len(inputs) < 2:
        raise LayerProbeError(f"compare needs a base and a tuned input (or a run directory with checkpoints); "
                              f"got {len(inputs)}: {args.inputs}")
    if args.out:  # a folder, link or special file named like a result: refused before any work, never replaced
        from layerprobe.io.outputs import check_output_names
        from layerprobe.results.outputs import COMPARISON_FILES, SERIES_FILES

        names = SERIES_FILES if len(inputs) > 2 else \
            [n for n in COMPARISON_FILES if args.cross_layer or not n.startswith("cross_layer")]
        check_output_names(args.out, names)
    if len(inputs) > 2:
        if args.calibrate:  # refused, not ignored
            raise LayerProbeError("--calibrate applies to one comparison (two inputs), not a checkpoint series")
        return _compare_series(args, inputs)
    thresholds = Thresholds(min_cka=args.min_cka, max_drift=args.max_drift, use_interval=not args.no_interval,
                            min_train_blocks=args.min_train_blocks, max_relative_change=args.max_relative_change)
    cka = CKAOptions(estimator=args.estimator, ci=args.ci, n_boot=args.n_boot, ci_level=args.ci_level,
                     seed=args.seed, cross_layer=args.cross_layer)
    result = compare(inputs[0], inputs[1], probe=args.probe, text_column=args.text_column,
                     max_examples=args.max_examples, probe_options=_probe_options(args), cka_options=cka,
                     thresholds=thresholds, tolerance=args.tolerance, revert=args.revert, calibrate=args.calibrate,
                     anatomy=not args.no_anatomy,
                     progress=not args.quiet,
                     on_undefined="raise", device=args.device, dtype=args.dtype, blocks=args.blocks,
                     embeddings=args.embeddings, weights_a=args.weights_a, weights_b=args.weights_b)
    n_blocks = sum(1 for row in result.blocks if row.get("kind") == "block")
    if n_blocks and args.min_train_blocks > n_blocks:
        raise LayerProbeError(f"--min-train-blocks {args.min_train_blocks} is more than the {n_blocks} blocks compared")
    text = render(result, args.format)
    if args.out:
        from layerprobe.results.outputs import write_comparison

        write_comparison(result, args.out)  # the files appear together, or not at all
    _out(text)
    return 0


def _compare_series(args: argparse.Namespace, inputs: list[str]) -> int:
    from layerprobe.comparison.series import compare_series
    from layerprobe.results.render import render

    if not args.out and args.format != "json":
        raise LayerProbeError(f"a series of {len(inputs)} inputs writes trajectory.csv and trajectory.png: give "
                              f"--out DIR (or --format json to print the trajectory on stdout)")
    kw = {**_probe_options(args).settle().snapshot_kwargs(), "device": args.device, "dtype": args.dtype,
          "block_pattern": args.blocks, "embedding_pattern": args.embeddings}
    final, rows = compare_series(inputs, args.probe, out=args.out or None, text_column=args.text_column,
                                 max_examples=args.max_examples, snapshot_kwargs=kw, anatomy=not args.no_anatomy,
                                 progress=not args.quiet)
    steps = final.meta["series"]["steps"]
    what = f"{len(steps)} inputs (steps {steps}), {len(rows) // len(steps)} entries"
    # stdout holds what --format asks for and nothing else (as for two inputs); the summary goes to stderr
    _err(f"wrote {os.path.join(args.out, 'trajectory.csv')}: {what}; trajectory.png; comparison.json (last vs first)"
         if args.out else f"series of {what}: the trajectory is in meta.series.trajectory")
    _out(render(final, args.format))
    return 0


def _same_output(a: str, b: str) -> bool:
    """Whether two output paths end in one file (spelled differently, through a symlink, or hard-linked)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist yet: then only the same path is the same file
        return False


def cmd_show(args: argparse.Namespace) -> int:
    """Re-render (and re-plot) a saved comparison without the models; the file is read through the
    file guards and held to the JSON contract (``Comparison.load``): a bad file is one line, exit 2."""
    from layerprobe.results.comparison import Comparison
    from layerprobe.results.render import render

    figures = [f for f in (args.plot, args.plot_cross_layer) if f is not None]
    if len(figures) == 2 and _same_output(figures[0], figures[1]):  # also via a symlink or a hard link
        raise LayerProbeError("--plot and --plot-cross-layer name the same file; give each its own", figures[0])
    for png in figures:
        from layerprobe.io.outputs import check_not_an_input, check_output_file, ensure_writable_dir

        check_output_file(png)
        check_not_an_input(png, [args.comparison])
        ensure_writable_dir(os.path.dirname(os.path.abspath(png)))  # created (as snapshot -o), or refused now
    result = Comparison.load(args.comparison)
    if args.plot_cross_layer is not None and not result.cross_layer:  # before anything is drawn or written
        raise LayerProbeError("holds no cross-layer map for --plot-cross-layer (compare with --cross-layer)",
                              args.comparison)
    if args.plot_cross_layer is not None:
        from layerprobe.results.plots import MAX_CROSS_LAYER_NAMES, cross_layer_problem

        problem = cross_layer_problem(result.cross_layer, MAX_CROSS_LAYER_NAMES)
        if problem is not None:  # before: a traceback, a map drawn wrong, or memory exhausted
            raise LayerProbeError(f"{problem}: cannot draw --plot-cross-layer", args.comparison)
    text = render(result, args.format)
    if figures:
        from layerprobe.results.plots import plot_blocks, plot_cross_layer, save_figure

        doc = result.to_dict()
        if args.plot is not None:
            save_figure(plot_blocks(doc, title=args.title), args.plot, close=True)
            _err(f"wrote {args.plot}: {len(result.blocks)} entries")
        if args.plot_cross_layer is not None:
            save_figure(plot_cross_layer(doc, title=args.title), args.plot_cross_layer, close=True)
            _err(f"wrote {args.plot_cross_layer}: the cross-layer CKA map")
    _out(text)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from layerprobe.demo.run import DemoConfig, run_demo

    _positive(args, "train_size", "probe_size", "test_size", "epochs", "lr")
    if args.out == "":
        raise LayerProbeError("--out: the output directory name is empty")
    cfg = DemoConfig(train_size=args.train_size, probe_size=args.probe_size, test_size=args.test_size,
                     epochs=args.epochs, lr=args.lr, seed=args.seed)
    run_demo(args.out, cfg, progress=not args.quiet, log=lambda line: _out(line + "\n"))
    return 0


def cmd_plot_trajectory(args: argparse.Namespace) -> int:
    from layerprobe.io.outputs import ensure_writable_dir
    from layerprobe.results.trajectory import plot_trajectory, read_trajectory

    if args.output is not None:
        from layerprobe.io.outputs import check_not_an_input, check_output_file

        check_output_file(args.output)
        check_not_an_input(args.output, [args.run_dir, os.path.join(args.run_dir, "layerprobe_trajectory.csv")])
        ensure_writable_dir(os.path.dirname(os.path.abspath(args.output)))  # created (as snapshot -o), or refused now
    df = read_trajectory(args.run_dir)
    out = args.output or os.path.join(args.run_dir if os.path.isdir(args.run_dir) else
                                      os.path.dirname(args.run_dir) or ".", "layerprobe_trajectory.png")
    plot_trajectory(df, out, title=args.title)
    _out(f"wrote {out}: {df['block'].nunique()} entries, {df['step'].nunique()} checks\n")
    return 0


def cmd_freeze_list(args: argparse.Namespace) -> int:
    """Parameter names of the entries a saved comparison advises to freeze. The comparison is held to the
    same checks as ``show`` (``Comparison.load``) and must have been made on this architecture: every
    entry's parameter count in the JSON equals the model's, else one line naming both, exit 2."""
    from layerprobe.freezing.apply import parameter_names
    from layerprobe.io.model_dir import build_meta_model, check_model_dir, model_class
    from layerprobe.io.outputs import atomic_write_text, check_not_an_input, check_output_file, ensure_writable_dir
    from layerprobe.results.comparison import Comparison

    if args.output is not None:
        check_output_file(args.output)
        check_not_an_input(args.output, [args.comparison, args.model])
        ensure_writable_dir(os.path.dirname(os.path.abspath(args.output)))  # created (as snapshot -o), or refused now
    result = Comparison.load(args.comparison)  # the one validation of a comparison, as show
    advice = result.recommendation.freeze
    cfg = check_model_dir(args.model, weights=False)  # the one guard: no custom code, a model class of transformers
    # names only: the saved architecture (with its head) on the meta device, no weights
    model = build_meta_model(args.model, model_class(cfg, os.path.join(args.model, "config.json")))
    mismatch = result.model_mismatch(model)
    if mismatch is not None:  # before: the names of another model's entries, exit 0
        raise LayerProbeError(f"made on another model than {args.model}: {mismatch}", args.comparison)
    try:
        names = parameter_names(model, advice)
    except LayerProbeError as err:  # the comparison was made on another model: name the comparison
        raise LayerProbeError(f"{err.message} (was the comparison made on another model?)",
                              err.path or args.comparison) from None
    text = "".join(n + "\n" for n in names)
    if args.output:
        atomic_write_text(args.output, text)
        _err(f"wrote {args.output}: {len(names)} parameters of {len(advice)} entries {advice}")
    else:
        _out(text)
    return 0


COMMANDS = {"snapshot": cmd_snapshot, "compare": cmd_compare, "show": cmd_show, "demo": cmd_demo,
            "plot-trajectory": cmd_plot_trajectory, "freeze-list": cmd_freeze_list}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a bad option (2, one line): a code, as documented
        return exc.code if isinstance(exc.code, int) else 2
    previous = _raise_on_sigterm()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.showwarning = _show_warning  # layerprobe's own warnings: one line each
            return COMMANDS[args.command](args)
    except LayerProbeError as err:
        _err(f"layerprobe: error: {printable(str(err).strip()) if str(err).strip() else type(err).__name__}")
        return 2
    except _BrokenPipe:  # the reader went away (``| head``): stop quietly, like a tool killed by SIGPIPE
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        _err("layerprobe: interrupted")
        return 130
    except _Terminated:
        _err("layerprobe: terminated")
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


#: characters that would break the one-line message or act on the terminal (newlines, escape codes)
class _BrokenPipe(Exception):
    """Standard output was closed by its reader."""


def _out(text: str) -> None:
    """Write a result to standard output; a closed, full or broken stdout is one line, not a traceback."""
    stream = sys.stdout
    if stream is None:
        raise LayerProbeError("cannot write to standard output: it is closed")
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        try:  # nothing more can reach the reader: no second error when Python flushes at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        raise _BrokenPipe() from None
    except OSError as exc:
        raise LayerProbeError(f"cannot write to standard output ({exc.strerror or exc})") from None


def _err(line: str) -> None:
    """One line on standard error (dropped when stderr is closed)."""
    stream = sys.stderr
    if stream is None:
        return
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


_default_showwarning = warnings.showwarning


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    from layerprobe.errors import LayerProbeWarning, one_line

    if issubclass(category, LayerProbeWarning):
        _err(f"layerprobe: warning: {printable(one_line(message))}")
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


class _Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that temporary files are cleaned up the same way."""


def _raise_on_sigterm() -> Any:
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    return signal.signal(signal.SIGTERM, handler)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
