"""The ``atfnn-fast`` command line: demo, export, predict."""

from __future__ import annotations

import argparse
import json
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    run(device=args.device, hop=args.hop, repeats=args.repeats)
    return 0


def _export(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .export import check_tensorrt_ready, export_onnx, trtexec_command, validate_onnx

    ckpt = load_checkpoint(args.checkpoint)
    path = export_onnx(
        ckpt.model, args.output, opset=args.opset, dynamic_batch=not args.static_batch,
        dtype=args.dtype, labels=ckpt.labels, norm_stats=ckpt.norm_stats,
        features=ckpt.features,
    )  # fmt: skip
    print(f"wrote {path} ({ckpt.config.variant}, {args.dtype})")
    status = 0
    if args.validate:
        report = validate_onnx(path, ckpt.model, raise_on_failure=False)
        print(report)
        status = 0 if (report.passed or report.skipped) else 1
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

        predictor = OnnxPredictor(args.onnx)
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
    demo.set_defaults(func=_demo)

    export = sub.add_parser("export", help="export a checkpoint to ONNX")
    export.add_argument("--checkpoint", required=True, help="checkpoint directory")
    export.add_argument("--output", required=True, help="the .onnx file to write")
    export.add_argument("--validate", action="store_true", help="check it in ONNX Runtime")
    export.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (>= 18)")
    export.add_argument(
        "--static-batch", action="store_true", help="batch fixed at 1 (default: dynamic)"
    )
    export.set_defaults(func=_export)

    predict = sub.add_parser("predict", help="label audio files")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint directory (PyTorch)")
    source.add_argument("--onnx", help="an exported .onnx file (ONNX Runtime)")
    predict.add_argument("--json", action="store_true", help="print a JSON list")
    predict.add_argument("--device", default="cpu", help="with --checkpoint (default cpu)")
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
