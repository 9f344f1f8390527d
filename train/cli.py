"""The `dicomnode-train` command: build synthetic archives (more subcommands come with training)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dicomnode-train` console script."""
    parser = argparse.ArgumentParser(prog="dicomnode-train", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    synth = commands.add_parser("synth", help="write a synthetic wrist-study archive")
    synth.add_argument("--out", type=Path, required=True, help="archive folder to create")
    synth.add_argument("--studies", type=int, default=200, help="number of studies (200)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (0)")
    synth.add_argument(
        "--size",
        choices=("small", "full"),
        default="small",
        help="small: long side ~512 px; full: real sizes 250-4000 px",
    )
    synth.add_argument("--workers", type=int, default=2, help="processes (2)")
    synth.add_argument(
        "--preview",
        type=Path,
        metavar="PNG",
        help="also write a contact sheet of one instance per situation",
    )
    synth.set_defaults(run=_synth)

    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


def _synth(args: argparse.Namespace) -> int:
    from train.phantoms.archive import generate_archive
    from train.phantoms.contact_sheet import write_contact_sheet

    if args.studies < 1:
        print("dicomnode-train synth: --studies must be at least 1", file=sys.stderr)
        return 2
    with tqdm(total=args.studies, unit="study", desc="synth") as bar:
        summary = generate_archive(
            args.out,
            studies=args.studies,
            seed=args.seed,
            size=args.size,
            workers=args.workers,
            progress=bar.update,
        )
    print(
        f"wrote {summary.instances} instances in {summary.studies} studies "
        f"({summary.fractured_studies} fractured, {summary.corrupt_instances} deliberately "
        f"corrupt) to {args.out}"
    )
    if args.preview:
        tiles = write_contact_sheet(args.out, args.preview)
        print(f"contact sheet of {tiles} situations: {args.preview}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
