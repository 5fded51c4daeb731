"""The ``atfnn-fast`` command line: demo, datasets, train, evaluate, predict, plot-attention,
plot-timeline, export.

Errors are one line on stderr, ``atfnn-fast: error: <file or argument>: <what>``, never a
traceback (``--debug``, or ``ATFNN_DEBUG=1`` in the environment, shows the traceback
instead). Exit codes:

* 0: done;
* 1: the run failed: a bad manifest, checkpoint, ONNX or audio file, a failed validation, a
  run directory locked by another run, a diverged training, a model whose scores are not
  finite, or (``predict``) any file that could not be labelled;
* 2: bad usage: argparse's errors (an unknown option, ``--batch-size 0``...), a value the
  owning module refuses (:class:`atfnn_fast.errors.UsageError`: ``--device cuda`` without
  CUDA, an unknown fold, a fold directory holding a run without ``--resume`` or
  ``--overwrite``...), or a path that does not exist.

Warnings (duplicate manifest rows dropped, a stale run lock taken over) are one line each,
``atfnn-fast: warning: ...``. Defaults and choices come from the modules that own them
(:class:`atfnn_fast.app.train.TrainConfig`, :func:`atfnn_fast.app.train.train`,
:mod:`atfnn_fast.inference`, :mod:`atfnn_fast.app.datasets`, the demo, evaluation, plot and
export functions: each option's default is the owning function's parameter default).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings

from atfnn_fast.text import one_line, printable

from .streams import STDOUT

DEBUG_ENV = "ATFNN_DEBUG"
CACHE_HELP = (
    "folder of the log-Mel feature cache (default: .atfnn-cache next to the manifest, or "
    "~/.cache/atfnn-fast/features when that folder cannot be written)"
)


def _debug(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _demo(args: argparse.Namespace) -> int:
    from atfnn_fast.files import check_output

    from .demo import run, run_pipeline
    from .plotting import check_plotting

    if not args.model_only:  # before the model is timed: the pipeline's output folder, plots
        check_output(args.out, option="--out", directory=True)
        check_plotting()
    run(device=args.device, hop=args.hop, repeats=args.repeats)
    if not args.model_only:
        run_pipeline(args.out, epochs=args.epochs)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from collections import Counter

    from .datasets import FeatureCache, cache_folder, prepare

    path, items = prepare(args.dataset, args.root, args.out, merge_excited=args.merge_excited)
    labels = Counter(i.label for i in items)
    print(
        printable(
            f"wrote {path}: {len(items)} utterances, {len({i.speaker for i in items})} speakers"
        )
    )
    print("  " + ", ".join(f"{k} {v}" for k, v in sorted(labels.items())))
    if args.features:
        FeatureCache(cache_folder(path, args.cache)).warm(items)
    return 0


def _synth(args: argparse.Namespace) -> int:
    from .synth import CLASSES, make_corpus

    path = make_corpus(
        args.out,
        speakers=args.speakers,
        per_class=args.per_class,
        seed=args.seed,
        overwrite=args.force,
    )
    total = args.speakers * args.per_class * len(CLASSES)
    print(
        f"wrote {path}: {total} utterances, {args.speakers} speakers, synthetic prosody "
        f"classes (not emotions): {', '.join(CLASSES)}"
    )
    return 0


def _check_checkpoint(path: str) -> None:
    """A run or fold directory given as a checkpoint: say which ``best`` to give."""
    from .predict import checkpoint_hint

    hint = checkpoint_hint(path)
    if hint:
        raise ValueError(hint)


def _train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    tc = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        preset=args.preset,
        device=args.device,
        amp=args.amp,
        hop=args.hop,
    )
    best = train(
        args.manifest,
        args.out,
        fold=args.fold,
        protocol=args.protocol,
        tc=tc,
        resume=args.resume,
        overwrite=args.overwrite,
        cache=args.cache,
    )
    if best is not None:  # rank 0: the last line is the best checkpoint's directory
        print(printable(best))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    _check_checkpoint(args.checkpoint)
    metrics = evaluate(
        args.checkpoint,
        args.manifest,
        args.out,
        device=args.device,
        fold=args.fold,
        cache=args.cache,
        batch_size=args.batch_size,
    )
    classes = sum(1 for r in metrics["recall"].values() if r is not None) or 1
    scope = "the whole manifest" if metrics["fold"] == "all" else f"fold {metrics['fold']}"
    print(
        f"{scope}: WAR {metrics['war']:.1%}, UAR {metrics['uar']:.1%} (chance {1 / classes:.1%}), "
        f"{metrics['utterances']} utterances"
        + (
            f", {metrics['seen_utterances']} of them seen in training"
            if metrics["seen_utterances"]
            else ""
        )
    )
    for label, recall in metrics["recall"].items():
        print(f"  {label:<14} recall {'-' if recall is None else f'{recall:.1%}'}")
    if args.out:
        print(printable(f"wrote {args.out}/metrics.json and {args.out}/confusion.png"))
    return 0


def _plot_attention(args: argparse.Namespace) -> int:
    from pathlib import Path

    from atfnn_fast.files import check_output

    from .plots import attention_maps, image_format, save_attention_plot
    from .plotting import check_plotting

    _check_checkpoint(args.checkpoint)
    image_format(args.output)  # before any work
    check_plotting()  # before any work, as the output is
    output = check_output(args.output, inputs=(args.checkpoint, args.file))
    data = attention_maps(
        args.checkpoint, args.file, device=args.device, batch_size=args.batch_size
    )
    path = save_attention_plot(data, Path(args.file).name, output)
    top = sorted(data.scores.items(), key=lambda kv: -kv[1])
    print(
        printable(
            f"{args.file}: predicted {data.label} ({', '.join(f'{k} {v:.3f}' for k, v in top)})"
        )
    )
    print(printable(path))
    return 0


def _plot_timeline(args: argparse.Namespace) -> int:
    from pathlib import Path

    from atfnn_fast.errors import UsageError
    from atfnn_fast.files import check_output

    from .plots import TimelinePlotData, read_timeline, save_timeline_plot
    from .predict import load_predictor

    if args.rows is None and args.file is None:
        raise UsageError("an audio file is needed with --checkpoint or --onnx")
    if args.checkpoint is not None:
        _check_checkpoint(args.checkpoint)
    model = args.checkpoint or args.onnx or args.rows
    output = check_output(args.output, inputs=(model, *([args.file] if args.file else [])))
    if args.rows is not None:
        data = read_timeline(args.rows, args.file)
    else:
        predictor = load_predictor(
            checkpoint=args.checkpoint,
            onnx=args.onnx,
            device=args.device,
            batch_size=args.batch_size,
            provider=args.provider,
        )
        data = TimelinePlotData.from_rows(predictor.timeline(args.file), predictor.labels)
    path = save_timeline_plot(data, Path(data.file).name, output, smooth=args.smooth)
    mean = sorted(data.mean_scores().items(), key=lambda kv: -kv[1])
    print(
        f"{data.file}: {len(data.starts)} segments, {data.ends[-1]:.1f} s; mean of the "
        f"segments {mean[0][0]} ({', '.join(f'{k} {v:.3f}' for k, v in mean)})"
    )
    print(path)
    return 0


def _export(args: argparse.Namespace) -> int:
    """The output is checked first (:func:`atfnn_fast.files.check_output`: not inside the
    checkpoint, not a device, FIFO or socket, its folder writable). The graph is written
    under a private temporary name next to ``--output``, validated (``--validate``) and,
    for ``--target tensorrt``, checked for TensorRT, and only then renamed to ``--output``;
    a graph that fails validation is kept as ``<output>.failed`` for inspection and
    ``--output`` is left as it was. Two exports to one output each rename a complete graph of their own: the last one
    stays."""
    from atfnn_fast.checkpoint import load_checkpoint
    from atfnn_fast.errors import RunError, UsageError
    from atfnn_fast.export import check_tensorrt_ready, export_onnx, trtexec_command, validate_onnx
    from atfnn_fast.files import check_output, named, short_name, temp_path

    from .streams import Terminated, terminating

    if args.audio and not args.validate:
        raise UsageError("--audio is for --validate's real-feature check; add --validate")
    _check_checkpoint(args.checkpoint)
    output = check_output(args.output, inputs=(args.checkpoint,))
    ckpt = load_checkpoint(args.checkpoint)
    path = temp_path(output, "onnx")
    try:
        try:
            export_onnx(
                ckpt.model,
                path,
                opset=args.opset,
                dynamic_batch=not args.static_batch,
                dtype=args.dtype,
                labels=ckpt.labels,
                norm_stats=ckpt.norm_stats,
                features=ckpt.features,
                quantize=args.quantize,
                target=args.target,
                input=args.input,
            )
        except OSError as err:  # a full disk...: name --output, not our temporary name;
            # an error naming another file (TMPDIR's, for --quantize) keeps its own name
            if err.filename is None or os.fsdecode(err.filename) == os.fspath(path):
                raise named(err, output) from None
            raise
        if args.validate:
            failed = output.with_name(output.name + ".failed")
            if len(os.fsencode(failed.name)) > 255:
                failed = output.with_name(short_name(output.name) + ".failed")
            try:
                report = validate_onnx(path, ckpt.model, raise_on_failure=False, audio=args.audio)
            except Exception as err:
                if terminating():  # SIGTERM inside a C extension, seen as another error
                    raise Terminated() from err
                os.replace(path, failed)
                raise RunError(
                    f"{output}: validation could not run ({one_line(err)}); the graph is kept "
                    f"as {failed}, {output} was not written"
                ) from err
            report.path = str(output)
            print("\n".join(map(printable, str(report).splitlines())))  # each line escaped
            if not (report.passed or report.skipped):
                os.replace(path, failed)
                raise RunError(
                    f"{output}: validation failed ({report.failure}); the graph is kept as "
                    f"{failed}, {output} was not written"
                )
        waveform = args.input == "waveform"
        # TensorRT is checked only when asked for (--target tensorrt): CPU users hear nothing
        tensorrt = args.target == "tensorrt"
        problems = (
            check_tensorrt_ready(path) if tensorrt and not (args.quantize or waveform) else None
        )
        try:
            os.replace(path, output)
        except OSError as err:
            raise named(err, output) from None
    finally:
        path.unlink(missing_ok=True)
    kind = args.dtype + (", int8 weights" if args.quantize else "")
    kind += f", waveform in at {ckpt.features.sample_rate} Hz" if waveform else ""
    print(printable(f"wrote {output} ({ckpt.config.variant}, {kind})"))
    if tensorrt and waveform:
        print(
            "TensorRT readiness: not applicable (the waveform graph computes its features "
            "with ONNX's STFT, which TensorRT's parser lacks; export --input spectrogram for "
            "TensorRT)"
        )
    elif tensorrt and args.quantize:
        print(
            "TensorRT readiness: not applicable (the int8 graph uses ONNX Runtime's "
            "com.microsoft ops; export float32 or float16 for TensorRT)"
        )
    if problems is None:
        return 0
    if problems:
        print("TensorRT readiness: problems found:\n  " + "\n  ".join(problems))
    else:
        print("TensorRT readiness: no problem found; build an engine with:")
        print("  " + printable(trtexec_command(output, ckpt.config.n_mels, ckpt.config.frames)))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from atfnn_fast.errors import UsageError

    from .predict import describe, load_predictor, predict_files, timeline_files

    if args.smooth is not None and not args.timeline:
        raise UsageError("--smooth: smooths a timeline; add --timeline")

    files = list(args.files)
    if args.ray is not None and args.ray != "":
        from .scale import is_address

        if not is_address(args.ray):  # `--ray a.wav`: a file, not an address
            files.insert(0, args.ray)
            args.ray = ""
    if not files:
        raise UsageError("predict: the following arguments are required: PATH")
    if args.parquet is not None and args.ray is None:
        raise UsageError("--parquet: needs --ray (Parquet output is part of the scale extra)")
    if args.workers is not None and args.ray is None:
        raise UsageError("--workers: needs --ray (the workers are Ray actors)")
    if args.ray is not None and args.timeline:
        raise UsageError("--timeline: not with --ray yet; score the timeline on one machine")
    if args.ray is not None:
        from .scale import predict_ray, require_ray

        require_ray()  # before any work: one line naming the extra
        return predict_ray(
            files,
            address=args.ray or None,
            checkpoint=args.checkpoint,
            onnx=args.onnx,
            device=args.device,
            provider=args.provider,
            batch_size=args.batch_size,
            workers=args.workers,
            json_list=args.json,
            csv_rows=args.csv,
            parquet=args.parquet,
        )

    predictor = load_predictor(
        checkpoint=args.checkpoint,
        onnx=args.onnx,
        device=args.device,
        batch_size=args.batch_size,
        provider=args.provider,
    )
    import torch

    threads = torch.get_num_threads()
    if args.onnx is not None:
        # torch computes only the features here, in small blocks, on the cores where ONNX
        # Runtime's own threads run the graph: one torch thread (docs/design.md#onnx-export),
        # given back afterwards (main() also runs in-process, in tests and notebooks)
        torch.set_num_threads(1)
    try:
        print(printable(f"predict: {describe(predictor)}"), file=sys.stderr, flush=True)
        if args.timeline:
            return timeline_files(
                predictor,
                files,
                json_lines=args.json,
                csv_rows=args.csv,
                smooth=args.smooth or 1,
                debug=_debug(args),
            )
        return predict_files(
            predictor, files, json_list=args.json, csv_rows=args.csv, debug=_debug(args)
        )
    finally:
        torch.set_num_threads(threads)


def _serve(args: argparse.Namespace) -> int:
    from .scale import require_serve

    require_serve()  # before any work: one line naming the extra
    from .serve import build_app, serve_forever

    app = build_app(
        checkpoint=args.checkpoint,
        onnx=args.onnx,
        device=args.device,
        provider=args.provider,
        batch_size=args.batch_size,
        replicas=args.replicas,
        threads=args.threads,
        max_batch=args.max_batch,
        batch_wait_s=args.batch_wait_ms / 1000,
        max_bytes=int(args.max_mib * 2**20),
        max_seconds=args.max_seconds,
    )
    return serve_forever(
        app, address=args.ray, host=args.host, port=args.port, cpus=args.replicas * args.threads
    )


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is in ``--help``)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_in(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def _positive_float(high: float):
    """A number in ``(0, high]``."""

    def parse(text: str) -> float:
        import math

        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and 0 < value <= high):
            raise argparse.ArgumentTypeError(f"must be a number in (0, {high:g}], got {text}")
        return value

    return parse


def _odd_window(text: str) -> int:
    """``--smooth``: an odd number of segments (:func:`atfnn_fast.inference.check_smooth`)."""
    from atfnn_fast.inference import MAX_SMOOTH

    value = _int_in(1, MAX_SMOOTH)(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(
            f"must be odd (a window centred on each segment), got {value}"
        )
    return value


DEVICE_HELP = "auto: CUDA if available, else the CPU; cpu, cuda or cuda:N (default %(default)s)"


def _device(text: str) -> str:
    """``--device``, the same for every subcommand: auto, cpu, cuda or cuda:N (whether this
    machine has it is checked where the device is used, :func:`atfnn_fast.errors.resolve_device`)."""
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


def _add_device(parser: argparse.ArgumentParser, default: str, what: str = "") -> None:
    parser.add_argument(
        "--device",
        type=_device,
        default=default,
        metavar="{auto,cpu,cuda[:N]}",
        help=(what + "; " if what else "") + DEVICE_HELP,
    )


def _default(function, name: str):
    """The default of ``function``'s parameter ``name``: the owning module's value."""
    import inspect

    return inspect.signature(function).parameters[name].default


def build_parser() -> argparse.ArgumentParser:
    from atfnn_fast import __version__
    from atfnn_fast.export.onnx_export import (
        ATTENTION_OPSET,
        DEFAULT_OPSET,
        DTYPES,
        MAX_OPSET,
        TARGETS,
        export_onnx,
    )
    from atfnn_fast.export.waveform import INPUT_KINDS
    from atfnn_fast.inference import DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE

    from .datasets import DATASETS
    from .demo import run, run_pipeline
    from .evaluate import evaluate
    from .plots import IMAGE_FORMATS, TIMELINE_COLUMNS, plot_attention
    from .predict import PROVIDER_CHOICES, load_predictor
    from .train import (
        AMP_MODES,
        MAX_LR,
        PRESET_NOTES,
        PRESETS,
        PROTOCOLS,
        default,
        train,
    )

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help=f"show the full traceback of an error (or set {DEBUG_ENV}=1)",
    )
    parser = _Parser(
        prog="atfnn-fast",
        description="ATFNN speech emotion recognition: fused front-end, ONNX export.",
    )
    parser.add_argument("--version", action="version", version=f"atfnn-fast {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the full traceback of an error (or set {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    positive = _int_in(1)

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="run the default model on the bundled recording, then the whole pipeline",
        description="Run the default (paper-size, untrained) model on the bundled speech "
        "recording (shapes, parameters, time per batch, a checkpoint round trip), then the "
        "pipeline on a synthetic corpus: train one fold of the tiny preset, evaluate, plot "
        "the attention, export to ONNX (float32 and int8) and validate both. Files go to "
        "--out. A few minutes on a CPU.",
    )
    _add_device(demo, _default(run, "device"), "where the paper-size model's forward pass is timed")
    demo.add_argument(
        "--hop",
        type=positive,
        default=_default(run, "hop"),
        help="segment hop in frames (default %(default)s)",
    )
    demo.add_argument(
        "--repeats",
        type=positive,
        default=_default(run, "repeats"),
        help="timed forward passes (default %(default)s)",
    )
    demo.add_argument(
        "--out",
        default=_default(run_pipeline, "out_dir"),
        help="folder for the demo's files (default %(default)s)",
    )
    demo.add_argument(
        "--epochs",
        type=positive,
        default=_default(run_pipeline, "epochs"),
        help="training epochs (default %(default)s)",
    )
    demo.add_argument("--model-only", action="store_true", help="skip the training pipeline")
    demo.set_defaults(func=_demo)

    datasets = sub.add_parser(
        "datasets",
        parents=[common],
        help="corpus manifests",
        description="Build a manifest from a corpus (prepare) or synthesise a small corpus "
        "to try the pipeline (synth).",
    )
    dsub = datasets.add_subparsers(dest="action", required=True, metavar="ACTION")
    prep = dsub.add_parser(
        "prepare",
        parents=[common],
        help="build a manifest CSV from a corpus folder",
        description="Read a downloaded corpus in its published layout (--dataset) and "
        "write the manifest CSV that train and evaluate read: path,label,speaker[,session], "
        "one row per utterance. Prints the utterance, speaker and label counts. With "
        "--features, also computes and caches the log-Mel features.",
    )
    prep.add_argument(
        "--dataset", required=True, choices=DATASETS, help="the corpus's published layout"
    )
    prep.add_argument("--root", required=True, help="the corpus folder as downloaded")
    prep.add_argument(
        "--out", required=True, help="the manifest CSV to write (path,label,speaker[,session])"
    )
    prep.add_argument("--merge-excited", action="store_true", help="IEMOCAP: excited -> happy")
    prep.add_argument("--features", action="store_true", help="also cache the log-Mel features")
    prep.add_argument("--cache", default=None, help=CACHE_HELP)
    prep.set_defaults(func=_prepare)
    syn = dsub.add_parser(
        "synth",
        parents=[common],
        help="write a small synthetic corpus and its manifest (to try the pipeline)",
        description="Synthesise a corpus of synthetic prosody classes (NOT emotions) spoken by "
        "synthetic speakers told apart by timbre, 1.4 s per utterance, and write "
        "OUT/manifest.csv. No emotional speech corpus ships with atfnn-fast.",
    )
    syn.add_argument("--out", required=True, help="the folder to write")
    syn.add_argument(
        "--speakers", type=_int_in(3, 100), default=5, help="speakers, 3..100 (default %(default)s)"
    )
    syn.add_argument(
        "--per-class",
        type=_int_in(1, 1000),
        default=8,
        help="utterances per class and speaker (default %(default)s)",
    )
    syn.add_argument("--seed", type=_int_in(0), default=0, help="(default %(default)s)")
    syn.add_argument(
        "--force",
        action="store_true",
        help="replace the corpus of an --out that holds one already (its manifest.csv)",
    )
    syn.set_defaults(func=_synth)

    presets = "; ".join(f"{name}: {note}" for name, note in PRESET_NOTES.items())
    tr = sub.add_parser(
        "train",
        parents=[common],
        help="train with leave-one-speaker/session-out folds",
        description="Train one fold or all. Prints a header (device, preset, parameters, the "
        "train / validation / test speakers), one line per epoch and the held-out result; "
        "the last line of standard output is the best checkpoint's directory.",
    )
    tr.add_argument(
        "--manifest",
        required=True,
        help="manifest CSV path,label,speaker[,session] (`atfnn-fast datasets prepare` or "
        "`datasets synth` writes one)",
    )
    tr.add_argument(
        "--out",
        required=True,
        help="run directory: one folder per fold (best/, last/, log.jsonl, metrics.json, "
        "confusion.png)",
    )
    tr.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=_default(train, "protocol"),
        help="loso: leave one speaker out; session: leave one session out (default %(default)s)",
    )
    tr.add_argument(
        "--fold",
        default=_default(train, "fold"),
        help="the held-out speaker (loso) or session, or all of them in turn (default %(default)s)",
    )
    tr.add_argument(
        "--epochs",
        type=positive,
        default=default("epochs"),
        help="training epochs; the best by validation UAR is kept (default %(default)s)",
    )
    tr.add_argument(
        "--batch-size",
        type=positive,
        default=default("batch_size"),
        help="segments per step (default %(default)s, the paper's)",
    )
    tr.add_argument(
        "--lr",
        type=_positive_float(MAX_LR),
        default=default("lr"),
        help=f"Adam learning rate, at most {MAX_LR:g} (default %(default)s, the paper's)",
    )
    tr.add_argument(
        "--hop",
        type=positive,
        default=default("hop"),
        help="frames between the starts of training segments, at most the preset's segment "
        "length (default %(default)s)",
    )
    tr.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default=default("preset"),
        help=f"model size: {presets} (default %(default)s)",
    )
    _add_device(tr, default("device"))
    tr.add_argument(
        "--amp",
        choices=AMP_MODES,
        default=default("amp"),
        help="mixed precision on CUDA (bf16 also on a CPU, where the Bi-LSTM runs in float32 "
        "if the CPU lacks native bf16) (default %(default)s)",
    )
    tr.add_argument(
        "--seed",
        type=_int_in(0),
        default=default("seed"),
        help="seeds the weights, the data order and the validation speakers (default %(default)s)",
    )
    again = tr.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue after the last epoch")
    again.add_argument(
        "--overwrite", action="store_true", help="replace an earlier run in the fold directory"
    )
    tr.add_argument("--cache", default=None, help=CACHE_HELP)
    tr.set_defaults(func=_train)

    # predict, evaluate and plot-attention: a file's segments go through the model in
    # batches of this size, so memory does not grow with the recording
    batch_size_option = dict(
        type=_int_in(1, MAX_BATCH_SIZE),
        default=DEFAULT_BATCH_SIZE,
        help=f"segments per forward pass (default {DEFAULT_BATCH_SIZE}); memory does not "
        "grow with the files' length",
    )
    ev = sub.add_parser(
        "evaluate",
        parents=[common],
        help="WAR / UAR / confusion of a checkpoint on a manifest",
        description="Score a checkpoint. A checkpoint written by `train` is scored on its own "
        "held-out fold of the manifest unless --fold says otherwise; scoring utterances of "
        "speakers it trained on draws a warning.",
    )
    ev.add_argument(
        "--checkpoint", required=True, help="a checkpoint directory (a run's <fold>/best)"
    )
    ev.add_argument("--manifest", required=True, help="manifest CSV path,label,speaker[,session]")
    ev.add_argument(
        "--fold",
        default=None,
        help="the speaker (loso) or session to score, or all for the whole manifest (default: "
        "the checkpoint's held-out fold; the whole manifest for a checkpoint not written by "
        "train)",
    )
    ev.add_argument(
        "--out", default=None, help="folder for metrics.json and confusion.png (default: none)"
    )
    _add_device(ev, _default(evaluate, "device"))
    ev.add_argument("--cache", default=None, help=CACHE_HELP)
    ev.add_argument("--batch-size", **batch_size_option)
    ev.set_defaults(func=_evaluate)

    pa = sub.add_parser(
        "plot-attention",
        parents=[common],
        help="log-Mel, F- and T-Attention maps of a file",
        description="Plot a file's log-Mel spectrogram and the model's F- and T-Attention "
        "weights (y-axis in Hz, shared colour scale for the weights, segment boundaries "
        "dotted), titled with the prediction. Prints the prediction (the scores `predict` "
        "gives for the file), then the image's path.",
    )
    pa.add_argument("--checkpoint", required=True, help="a checkpoint directory")
    pa.add_argument(
        "--output",
        required=True,
        help=f"the image to write, its format by the extension: {', '.join(IMAGE_FORMATS)} "
        "(PNG without one)",
    )
    _add_device(pa, _default(plot_attention, "device"))
    pa.add_argument("--batch-size", **batch_size_option)
    pa.add_argument("file", help="an audio file")
    pa.set_defaults(func=_plot_attention)

    pt = sub.add_parser(
        "plot-timeline",
        parents=[common],
        help="class scores over time of a (long) recording",
        description="Plot a file's emotion timeline: each class's score per segment over "
        "time, stacked, above a strip of the top label; x in minutes past 2 minutes, and a "
        f"file of more than {TIMELINE_COLUMNS} segments drawn as {TIMELINE_COLUMNS} columns, "
        "each the mean of as many segments. From a model (--checkpoint or --onnx and an "
        "audio file) or from the rows `predict --timeline --csv` or `--json` wrote (--rows). "
        "Prints the file's mean scores (predict's, for unsmoothed rows), then the path.",
    )
    tsource = pt.add_mutually_exclusive_group(required=True)
    tsource.add_argument("--checkpoint", help="a checkpoint directory (PyTorch)")
    tsource.add_argument("--onnx", help="an exported .onnx file (ONNX Runtime)")
    tsource.add_argument(
        "--rows", help="a timeline written by `predict --timeline --csv` or `--json`"
    )
    pt.add_argument("--output", required=True, help="the .png (or .svg, .pdf) to write")
    pt.add_argument(
        "--smooth",
        type=_odd_window,
        default=1,
        metavar="N",
        help="draw each segment's scores averaged with its neighbours, N segments centred "
        "on it (odd; default %(default)s: off)",
    )
    _add_device(pt, _default(load_predictor, "device"), "with --checkpoint")
    pt.add_argument(
        "--provider",
        choices=PROVIDER_CHOICES,
        default=_default(load_predictor, "provider"),
        help="with --onnx: ONNX Runtime execution provider (default %(default)s)",
    )
    pt.add_argument(
        "--batch-size",
        type=_int_in(1, MAX_BATCH_SIZE),
        default=DEFAULT_BATCH_SIZE,
        help=f"segments per forward pass (default {DEFAULT_BATCH_SIZE})",
    )
    pt.add_argument(
        "file",
        nargs="?",
        help="the audio file; with --rows, the file whose rows to draw (default: the only one)",
    )
    pt.set_defaults(func=_plot_timeline)

    export = sub.add_parser(
        "export",
        parents=[common],
        help="export a checkpoint to ONNX",
        description="Write a checkpoint as a self-describing ONNX file (labels, features and "
        "normalisation in its metadata) for ONNX Runtime (default) or TensorRT (--target "
        "tensorrt, which also checks the graph for TensorRT's parser). --validate runs it "
        "in ONNX Runtime against PyTorch first and writes --output only if it passes.",
    )
    export.add_argument("--checkpoint", required=True, help="checkpoint directory")
    export.add_argument("--output", required=True, help="the .onnx file to write")
    export.add_argument(
        "--validate",
        action="store_true",
        help="check it in ONNX Runtime; a failing graph is kept as OUTPUT.failed",
    )
    export.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default=_default(export_onnx, "dtype"),
        help="the graph's float type; float16 runs on ONNX Runtime's CUDA provider only "
        "(default %(default)s)",
    )
    export.add_argument(
        "--opset",
        type=_int_in(DEFAULT_OPSET, MAX_OPSET),
        default=None,
        help=f"ONNX opset of the ops other than the attention, {DEFAULT_OPSET} to {MAX_OPSET} "
        f"(default {DEFAULT_OPSET}); the default target's graph declares opset "
        f"{ATTENTION_OPSET} (its Attention op), --target tensorrt's this one",
    )
    export.add_argument(
        "--target",
        choices=tuple(TARGETS),
        default=_default(export_onnx, "target"),
        help="onnxruntime: the attention as ONNX's Attention op (opset 23, fastest in ONNX "
        "Runtime); tensorrt: as Mul + Softmax + MatMul at --opset (TensorRT 8.6+) "
        "(default %(default)s)",
    )
    export.add_argument(
        "--input",
        choices=INPUT_KINDS,
        default=_default(export_onnx, "input"),
        help="spectrogram: the graph takes normalised log-Mel segments (features computed "
        "outside); waveform: 16 kHz mono float32 samples of any length, with log-Mel, "
        "segmentation and normalisation inside the graph, returning segment_scores and the "
        "file's scores (float32 or int8) (default %(default)s)",
    )
    export.add_argument(
        "--static-batch", action="store_true", help="batch fixed at 1 (default: dynamic)"
    )
    export.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="int8: dynamically quantised weights (ONNX Runtime on a CPU)",
    )
    export.add_argument(
        "--audio",
        nargs="+",
        metavar="PATH",
        help="with --validate: audio files, folders or manifest CSVs for the real-feature "
        "check (the bundled recording is always used; --input waveform: also recordings "
        "synthesised from it, shorter than a segment, a multiple of the hop and 10 minutes "
        "long)",
    )
    export.set_defaults(func=_export)

    predict = sub.add_parser(
        "predict",
        parents=[common],
        help="label audio files",
        description="Label audio files with a checkpoint or an exported ONNX file. What runs "
        "(the ONNX Runtime provider or the PyTorch device) is said on stderr; stdout has one "
        "result per file.",
    )
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", help="a checkpoint directory (PyTorch), e.g. a run's <fold>/best"
    )
    source.add_argument("--onnx", help="an exported .onnx file (ONNX Runtime)")
    output = predict.add_mutually_exclusive_group()
    output.add_argument(
        "--json", action="store_true", help="print a JSON list of {path, label, scores[, warning]}"
    )
    output.add_argument(
        "--csv",
        action="store_true",
        help="print CSV: path, label, one score column per label, error (default: one text "
        "line per file)",
    )
    _add_device(predict, _default(load_predictor, "device"), "with --checkpoint")
    predict.add_argument("--batch-size", **batch_size_option)
    predict.add_argument(
        "--provider",
        choices=PROVIDER_CHOICES,
        default=_default(load_predictor, "provider"),
        help="with --onnx: ONNX Runtime execution provider (default auto: CUDA if present, "
        "else the CPU)",
    )
    predict.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="score on Ray Data (the scale extra): a local Ray instance with the CPUs torch "
        "uses, or the cluster at ADDRESS (auto, host:port, ray://host:port; or RAY_ADDRESS)",
    )
    predict.add_argument(
        "--workers",
        type=positive,
        default=None,
        help="with --ray: scoring actors, one CPU each (default: one per CPU of the cluster)",
    )
    output.add_argument(
        "--parquet",
        metavar="FILE",
        default=None,
        help="with --ray: write the rows (as --csv's columns) to a Parquet file",
    )
    predict.add_argument(
        "--timeline",
        action="store_true",
        help="a row per segment instead of a line per file: path, segment, start and end "
        "(seconds), label, each class's score; with --json one JSON object per line, with "
        "--csv a CSV row; printed as the file is read, so any length streams (the file's "
        "scores are the mean of its unsmoothed rows)",
    )
    predict.add_argument(
        "--smooth",
        type=_odd_window,
        default=None,
        metavar="N",
        help="with --timeline: each row's scores and label averaged over N segments centred "
        "on it (odd; default: off)",
    )
    predict.add_argument(
        "files",
        nargs="*",
        metavar="PATH",
        help="audio files, folders of them (searched recursively) or manifest CSVs",
    )
    predict.set_defaults(func=_predict)

    # serve's defaults are the owning module's; it imports Ray, so they are restated here
    # and tests/app/test_scale.py checks they agree
    sv = sub.add_parser(
        "serve",
        parents=[common],
        help="label audio sent over HTTP (Ray Serve; the scale extra)",
        description="Serve a checkpoint or an ONNX file over HTTP on Ray Serve: POST the bytes "
        "of a WAV, FLAC, OGG or MP3 file to / and get JSON {label, scores}; GET /health and "
        "/metadata. Requests arriving together are batched.",
    )
    model = sv.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a checkpoint directory (PyTorch)")
    model.add_argument("--onnx", help="an exported .onnx file (ONNX Runtime)")
    sv.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s)"
    )
    sv.add_argument(
        "--port", type=_int_in(1, 65535), default=8000, help="port (default %(default)s)"
    )
    sv.add_argument(
        "--replicas", type=positive, default=1, help="copies of the model (default %(default)s)"
    )
    sv.add_argument(
        "--threads", type=positive, default=1, help="CPUs of each replica (default %(default)s)"
    )
    sv.add_argument(
        "--max-batch",
        type=_int_in(1, MAX_BATCH_SIZE),
        default=16,
        help="requests scored together at most; 1 turns batching off (default %(default)s)",
    )
    sv.add_argument(
        "--batch-wait-ms",
        type=_positive_float(10_000),
        default=10.0,
        help="how long a batch waits for more requests (default %(default)s ms)",
    )
    sv.add_argument(
        "--max-mib",
        type=_positive_float(4096),
        default=64.0,
        help="largest request body in MiB (default %(default)s)",
    )
    sv.add_argument(
        "--max-seconds",
        type=_positive_float(3 * 3600),
        default=600.0,
        help="longest audio of one request in seconds (default %(default)s)",
    )
    sv.add_argument(
        "--batch-size",
        type=_int_in(1, MAX_BATCH_SIZE),
        default=DEFAULT_BATCH_SIZE,
        help=f"segments per forward pass (default {DEFAULT_BATCH_SIZE})",
    )
    _add_device(sv, _default(load_predictor, "device"), "with --checkpoint")
    sv.add_argument(
        "--provider",
        choices=PROVIDER_CHOICES,
        default=_default(load_predictor, "provider"),
        help="with --onnx: ONNX Runtime execution provider (default %(default)s)",
    )
    sv.add_argument(
        "--ray",
        metavar="ADDRESS",
        default=None,
        help="run on the Ray cluster at ADDRESS (default: RAY_ADDRESS, else a local instance)",
    )
    sv.set_defaults(func=_serve)

    info = sub.add_parser(
        "info",
        parents=[common],
        help="versions, the CPU path (native core and its ISA, or ATen) and the devices",
        description="Print the package and torch versions, the CPU, which CPU path runs the "
        "fused front-end (the native core and the ISA it picked, or the ATen path and why), "
        "torch's threads, and the GPUs torch sees.",
    )
    info.set_defaults(func=_info)
    return parser


def _info(args) -> int:
    from atfnn_fast.app.sysinfo import describe_system

    for key, value in describe_system().items():
        print(f"{key}: {value}")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    line = printable(one_line(str(message)), backslash=False)
    print(f"atfnn-fast: warning: {line}", file=sys.stderr, flush=True)


def _say_error(message: str) -> None:
    """``atfnn-fast: error: <message>`` on stderr, one line without control characters
    (:func:`atfnn_fast.text.printable`, backslashes kept);
    written to file descriptor 2 directly when Python has no ``sys.stderr``."""
    line = f"atfnn-fast: error: {printable(message, backslash=False)}\n"
    if sys.stderr is not None:
        sys.stderr.write(line)
        sys.stderr.flush()
    else:
        try:
            os.write(2, line.encode("utf-8", "backslashreplace"))
        except OSError:
            pass


def environment_problem() -> str | None:
    """The first environment variable that no command can run with (``ATFNN_BACKEND``),
    or a closed standard output; checked before anything else, ``--help`` included."""
    from atfnn_fast.kernels.dispatch import env_problem

    from .streams import closed_stdout

    return env_problem() or closed_stdout()


def main(argv: list[str] | None = None) -> int:
    from atfnn_fast.errors import UsageError
    from atfnn_fast.files import describe

    from .streams import Terminated, command_streams, silence_stdout, terminating

    problem = environment_problem()
    if problem:
        _say_error(problem)
        return 2
    with command_streams():
        parser = build_parser()
        if not (sys.argv[1:] if argv is None else argv):  # `atfnn-fast` alone: what it can do
            parser.print_help(sys.stderr)
            return 2
        try:
            args = parser.parse_args(argv)
        except SystemExit as stop:  # --help, --version, or a usage error already printed
            return stop.code if isinstance(stop.code, int) else 2
        with warnings.catch_warnings():
            if not _debug(args):
                warnings.showwarning = _show_warning
            try:
                code = args.func(args)
                sys.stdout.flush()  # the last output's write error, named, while it can be
                return code
            except BrokenPipeError:  # `atfnn-fast predict ... | head`: the reader has all
                silence_stdout()  # no second error when Python flushes at exit
                return 0
            except KeyboardInterrupt:
                if _debug(args):
                    raise
                print("atfnn-fast: interrupted", file=sys.stderr)
                return 130
            except Terminated:
                if _debug(args):
                    raise
                print("atfnn-fast: terminated (SIGTERM)", file=sys.stderr)
                return 128 + 15
            except Exception as err:
                if _debug(args):
                    raise
                if terminating():  # SIGTERM inside a C extension, seen as another error
                    print("atfnn-fast: terminated (SIGTERM)", file=sys.stderr)
                    return 128 + 15
                if isinstance(err, OSError) and err.filename == STDOUT:
                    silence_stdout()  # its buffer would fail again at exit
                message = (
                    describe(err) if isinstance(err, OSError) and err.strerror else one_line(err)
                )
                if not isinstance(err, ValueError | OSError):  # not a foreseen error: say what
                    message = f"{type(err).__name__}: {message} (--debug shows the traceback)"
                _say_error(message)
                return 2 if isinstance(err, UsageError | FileNotFoundError) else 1


if __name__ == "__main__":
    sys.exit(main())
