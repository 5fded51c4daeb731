"""The ``atfnn-fast`` command line: demo, datasets, train, evaluate, predict, plot-attention,
export."""

from __future__ import annotations

import argparse
import json
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import run, run_pipeline

    run(device=args.device, hop=args.hop, repeats=args.repeats)
    if not args.model_only:
        run_pipeline(args.out, epochs=args.epochs)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from collections import Counter

    from .data import FeatureCache, prepare

    path, items = prepare(args.dataset, args.root, args.out, merge_excited=args.merge_excited)
    labels = Counter(i.label for i in items)
    print(f"wrote {path}: {len(items)} utterances, {len({i.speaker for i in items})} speakers")
    print("  " + ", ".join(f"{k} {v}" for k, v in sorted(labels.items())))
    if args.features:
        FeatureCache(path.parent / ".atfnn-cache").warm(items)
    return 0


def _train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    tc = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        preset=args.preset, device=args.device, amp=args.amp, hop=args.hop,
    )  # fmt: skip
    best = train(args.manifest, args.out, fold=args.fold, protocol=args.protocol, tc=tc,
                 resume=args.resume)  # fmt: skip
    if best is not None:  # rank 0: the last line is the best checkpoint's directory
        print(best)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .train import evaluate

    metrics = evaluate(args.checkpoint, args.manifest, args.out, device=args.device)
    print(
        f"WAR {metrics['war']:.2%}  UAR {metrics['uar']:.2%}  ({metrics['utterances']} utterances)"
    )
    for label, recall in metrics["recall"].items():
        print(f"  {label:<14} recall {'-' if recall is None else f'{recall:.2%}'}")
    if args.out:
        print(f"wrote {args.out}/metrics.json and {args.out}/confusion.png")
    return 0


def _plot_attention(args: argparse.Namespace) -> int:
    from .plots import plot_attention

    print(plot_attention(args.checkpoint, args.file, args.output, device=args.device))
    return 0


def _export(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .export import check_tensorrt_ready, export_onnx, trtexec_command, validate_onnx

    if args.audio and not args.validate:
        raise ValueError("--audio is for --validate's real-feature check; add --validate")
    ckpt = load_checkpoint(args.checkpoint)
    path = export_onnx(
        ckpt.model, args.output, opset=args.opset, dynamic_batch=not args.static_batch,
        dtype=args.dtype, labels=ckpt.labels, norm_stats=ckpt.norm_stats,
        features=ckpt.features, quantize=args.quantize,
    )  # fmt: skip
    kind = args.dtype + (", int8 weights" if args.quantize else "")
    print(f"wrote {path} ({ckpt.config.variant}, {kind})")
    status = 0
    if args.validate:
        report = validate_onnx(path, ckpt.model, raise_on_failure=False, audio=args.audio)
        print(report)
        status = 0 if (report.passed or report.skipped) else 1
    if args.quantize:
        print("TensorRT readiness: not applicable (the int8 graph uses ONNX Runtime's "
              "com.microsoft ops; export float32 or float16 for TensorRT)")  # fmt: skip
        return status
    problems = check_tensorrt_ready(path)
    if problems:
        print("TensorRT readiness: problems found:\n  " + "\n  ".join(problems))
    else:
        print("TensorRT readiness: no problem found; build an engine with:")
        print("  " + trtexec_command(path, ckpt.config.n_mels, ckpt.config.frames))
    return status


def _predict(args: argparse.Namespace) -> int:
    if args.onnx:
        from .export import OnnxPredictor

        predictor = OnnxPredictor(args.onnx, provider=args.provider)
    else:
        from .predict import CheckpointPredictor

        predictor = CheckpointPredictor(args.checkpoint, device=args.device)
    results, failed = [], 0
    for path in args.files:
        try:
            prediction = predictor.predict_file(path)
        except (OSError, ValueError) as err:  # AudioError is a ValueError
            print(f"atfnn-fast: error: {err}", file=sys.stderr)
            failed += 1
            continue
        results.append(prediction)
        if not args.json:
            print(prediction)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="atfnn-fast",
        description="ATFNN speech emotion recognition: fused front-end, ONNX export.",
    )
    parser.add_argument("--version", action="version", version=f"atfnn-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the default model on the bundled recording")
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    demo.add_argument("--hop", type=int, default=32, help="segment hop in frames (default 32)")
    demo.add_argument("--repeats", type=int, default=5, help="timed forward passes (default 5)")
    demo.add_argument("--out", default="demo-output", help="folder for the demo's files")
    demo.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    demo.add_argument("--model-only", action="store_true", help="skip the training pipeline")
    demo.set_defaults(func=_demo)

    datasets = sub.add_parser("datasets", help="corpus manifests")
    dsub = datasets.add_subparsers(dest="action", required=True, metavar="ACTION")
    prep = dsub.add_parser("prepare", help="build a manifest CSV from a corpus folder")
    prep.add_argument(
        "--dataset", required=True, choices=("iemocap", "casia", "emodb", "ravdess", "cremad")
    )
    prep.add_argument("--root", required=True, help="the corpus folder")
    prep.add_argument("--out", required=True, help="the manifest CSV to write")
    prep.add_argument("--merge-excited", action="store_true", help="IEMOCAP: excited -> happy")
    prep.add_argument("--features", action="store_true", help="also cache the log-Mel features")
    prep.set_defaults(func=_prepare)

    tr = sub.add_parser("train", help="train with leave-one-speaker/session-out folds")
    tr.add_argument("--manifest", required=True)
    tr.add_argument("--out", required=True)
    tr.add_argument("--protocol", choices=("loso", "session"), default="loso")
    tr.add_argument("--fold", default="all", help="a speaker (loso), a session, or all")
    tr.add_argument("--epochs", type=int, default=30)
    tr.add_argument("--batch-size", type=int, default=128)
    tr.add_argument("--lr", type=float, default=5e-4)
    tr.add_argument("--hop", type=int, default=64, help="training segment hop in frames")
    tr.add_argument("--preset", choices=("paper", "tiny"), default="paper")
    tr.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    tr.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--resume", action="store_true", help="continue after the last epoch")
    tr.set_defaults(func=_train)

    ev = sub.add_parser("evaluate", help="WAR / UAR / confusion of a checkpoint on a manifest")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--manifest", required=True)
    ev.add_argument("--out", default=None, help="folder for metrics.json and confusion.png")
    ev.add_argument("--device", default="cpu")
    ev.set_defaults(func=_evaluate)

    pa = sub.add_parser("plot-attention", help="log-Mel, F- and T-Attention maps of a file")
    pa.add_argument("--checkpoint", required=True)
    pa.add_argument("--output", required=True, help="the PNG to write")
    pa.add_argument("--device", default="cpu")
    pa.add_argument("file", help="an audio file")
    pa.set_defaults(func=_plot_attention)

    export = sub.add_parser("export", help="export a checkpoint to ONNX")
    export.add_argument("--checkpoint", required=True, help="checkpoint directory")
    export.add_argument("--output", required=True, help="the .onnx file to write")
    export.add_argument("--validate", action="store_true", help="check it in ONNX Runtime")
    export.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (>= 18)")
    export.add_argument(
        "--static-batch", action="store_true", help="batch fixed at 1 (default: dynamic)"
    )
    export.add_argument(
        "--quantize", choices=("int8",), default=None,
        help="int8: dynamically quantised weights (ONNX Runtime on a CPU)",
    )  # fmt: skip
    export.add_argument(
        "--audio", nargs="+", metavar="PATH",
        help="with --validate: audio files, folders or manifest CSVs for the real-feature "
        "check (the bundled recording is always used)",
    )  # fmt: skip
    export.set_defaults(func=_export)

    predict = sub.add_parser("predict", help="label audio files")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint directory (PyTorch)")
    source.add_argument("--onnx", help="an exported .onnx file (ONNX Runtime)")
    predict.add_argument("--json", action="store_true", help="print a JSON list")
    predict.add_argument("--device", default="cpu", help="with --checkpoint (default cpu)")
    predict.add_argument(
        "--provider", choices=("auto", "cpu", "cuda", "tensorrt"), default="auto",
        help="with --onnx: ONNX Runtime execution provider (default auto: CUDA if present)",
    )  # fmt: skip
    predict.add_argument("files", nargs="+", metavar="FILE", help="audio files")
    predict.set_defaults(func=_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, TypeError) as err:
        # bad checkpoints, ONNX files and arguments: one line, no traceback
        print(f"atfnn-fast: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
