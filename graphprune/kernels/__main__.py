"""python -m graphprune.kernels build [--force] [-v] [--cuda] | path [--cuda] | info"""

from __future__ import annotations

import argparse
import sys

from . import (KernelsUnavailable, build, build_cuda, cache_root, cuda_library_path, isa,
               library_path, source_hash)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphprune.kernels",
                                 description="Build or locate libgraphprune_kernels.so")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the library (if needed) and print its path")
    b.add_argument("--force", action="store_true", help="rebuild even if it is cached")
    b.add_argument("-v", "--verbose", action="store_true", help="show the cmake output")
    b.add_argument("--cuda", action="store_true",
                   help="build libgraphprune_kernels_cuda.so instead (needs nvcc; no GPU needed)")
    pth = sub.add_parser("path", help="print the library path (building it if needed)")
    pth.add_argument("--cuda", action="store_true", help="the CUDA library's path")
    sub.add_parser("info", help="library path, source hash, cache and the ISA picked")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "build":
            make = build_cuda if args.cuda else build
            print(make(force=args.force, verbose=args.verbose))
        elif args.cmd == "path":
            print(cuda_library_path() if args.cuda else library_path())
        else:
            print(f"library: {library_path()}")
            print(f"sources: {source_hash()}")
            print(f"cache:   {cache_root()}")
            print(f"isa:     {isa()}")
    except KernelsUnavailable as exc:
        print(f"graphprune kernels unavailable: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
