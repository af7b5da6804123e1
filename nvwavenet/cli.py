"""The ``nvwavenet`` command line (also ``python -m nvwavenet``).

A user's mistake (a missing file, a wrong sample rate, a checkpoint of another configuration,
CUDA asked for without a GPU) ends with one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys

import torch

from .engines import build_info

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError, RuntimeError)
EXIT_USER_ERROR = 2


def _device(name: str) -> torch.device:
    """``name`` as a device this machine has, or a ValueError a user can act on."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device: expected cpu or cuda, got {name!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible to PyTorch on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu or cuda, got {name!r}")
    return device


def cmd_info(args) -> int:
    info = build_info()
    print(f"nvwavenet {info['version']}")
    print(f"  compiled module: {'loaded' if info['extension'] else 'missing: ' + info.get('error', '')}")
    print(f"  CUDA kernels:    {'compiled for sm_' + ', sm_'.join(map(str, info['cuda_archs'])) if info['cuda'] else 'not compiled'}")
    if info["cuda"]:
        print(f"  sizes (R, S, A): {', '.join(str(s) for s in info['sizes'])}")
        print(f"  precisions:      {', '.join(info['precisions'])}")
    for key in sorted(set(info) - {"version", "extension", "cuda", "cuda_archs", "sizes", "precisions", "error"}):
        print(f"  {key + ':':<16} {info[key]}")
    print(f"torch {torch.__version__}, CUDA runtime {torch.version.cuda or 'none'}")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            print(f"  cuda:{index} {props.name}, sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB, "
                  f"{props.multi_processor_count} SMs")
    else:
        print("  no CUDA GPU visible: CPU engine only")
    return 0


def cmd_bench(args) -> int:
    from . import bench
    return bench.main(["--device", str(_device(args.device))] if args.device else [])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nvwavenet", description="Fast autoregressive WaveNet inference.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="what was built, which GPUs are visible",
                               description="Build facts (CUDA kernels, architectures, sizes, precisions, "
                                           "the CPU engine's instruction set) and the visible GPUs.")
    info.set_defaults(run=cmd_info)

    bench = commands.add_parser("bench", help="the quick benchmark (under a minute)",
                                description="Samples/s and real-time factor of every engine on this machine "
                                            "against the eager PyTorch loop, R64/S256/A256 L=20, batch 1 and 16. "
                                            "The full suite is benchmarks/throughput.py.")
    bench.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    bench.set_defaults(run=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as error:
        print(f"nvwavenet {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"nvwavenet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
