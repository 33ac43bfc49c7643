"""Command line: `python -m ita_onnx export <checkpoint> <out> [--int8] [--overwrite]`, `... quantize <out>`."""

import argparse
import sys

try:
    from .quantize import TARGETS
except ImportError as error:
    sys.exit(
        f"python -m ita_onnx needs the ONNX extra (optimum, optimum-onnx, onnxruntime): {error}. "
        "Install it with `pip install 'ita-mner[onnx]'`."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ita_onnx", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser("export", help="export an ITA checkpoint's emissions graph with optimum")
    export.add_argument("checkpoint", help="a saved ITA checkpoint (folder or Hub id) with its tokenizer")
    export.add_argument(
        "output",
        help="folder for model.onnx, crf.safetensors, config, tokenizer, remote code and README.md; "
        "it must be new or empty unless --overwrite. Written under a hidden name beside it and "
        "renamed once complete, so it never holds a partial export",
    )
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty output folder as a whole (none of its files are kept)",
    )
    export.add_argument("--int8", action="store_true", help="also write model_quantized.onnx (dynamic int8)")
    export.add_argument(
        "--int8-target",
        choices=TARGETS,
        default="avx512_vnni",
        help="CPU family of the int8 scheme (default: %(default)s)",
    )
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default: optimum's)")
    export.add_argument(
        "--atol", type=float, default=None, help="tolerance of the export-time check against PyTorch (default: 1e-4)"
    )

    quantize = commands.add_parser("quantize", help="write model_quantized.onnx beside an existing export")
    quantize.add_argument("folder", help="an export made by `python -m ita_onnx export`")
    quantize.add_argument(
        "--target", choices=TARGETS, default="avx512_vnni", help="CPU family of the int8 scheme (default: %(default)s)"
    )
    quantize.add_argument("--per-channel", action="store_true", help="one scale per weight output channel")

    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            from .export import export_ita

            folder = export_ita(
                args.checkpoint,
                args.output,
                int8=args.int8,
                int8_target=args.int8_target,
                opset=args.opset,
                atol=args.atol,
                overwrite=args.overwrite,
            )
            print(f"Exported to {folder}: {', '.join(sorted(p.name for p in folder.iterdir()))}")
        else:
            from .quantize import quantize_int8

            print(f"Wrote {quantize_int8(args.folder, target=args.target, per_channel=args.per_channel)}")
    except (FileExistsError, FileNotFoundError, NotADirectoryError, ValueError) as error:
        # Errors about the checkpoint and folders given on the command line, whose messages say what to do.
        parser.exit(1, f"{parser.prog} {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
