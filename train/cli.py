"""The `dicomnode-train` command: synthetic archives, fetch, preprocess, prepare, preview."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from train.acceptance_cli import add_accept_command
from train.fetch import add_fetch_command
from train.ood_cli import add_ood_command
from train.training_cli import add_training_commands
from train.view_reader.cli import add_view_reader_command

if TYPE_CHECKING:
    from pipeline.preprocess.study import PreprocessParams


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
        "--renderer",
        choices=("phantom", "projection", "mixed"),
        default="phantom",
        help="phantom: the first world (default); projection: the second, independently"
        " designed renderer (3-D solids, detector chain); mixed: each study drawn by either",
    )
    synth.add_argument(
        "--randomise",
        action="store_true",
        help="redraw the look of every phantom image over wide ranges (mixed always does)",
    )
    synth.add_argument(
        "--syntaxes",
        default="",
        help="comma-separated transfer syntaxes to use (default: all, in hospital proportions);"
        " 'native' = explicit_le,implicit_le,deflated,rle (no external encoders needed)",
    )
    synth.add_argument(
        "--preview",
        type=Path,
        metavar="PNG",
        help="also write a contact sheet of one instance per situation",
    )
    synth.set_defaults(run=_synth)

    preprocess = commands.add_parser(
        "preprocess", help="run the preprocessing on DICOM files, write PNG views, print JSON lines"
    )
    preprocess.add_argument("files", nargs="+", type=Path, metavar="FILE")
    preprocess.add_argument("--out", type=Path, required=True, help="folder for the PNG views")
    preprocess.add_argument(
        "--view-reader",
        type=Path,
        metavar="DIR",
        help="a learned view reader (e.g. config/models/view-reader) as a second opinion",
    )
    preprocess.set_defaults(run=_preprocess)

    prepare = commands.add_parser("prepare", help="archive + labels -> PNG/CSV dataset")
    prepare.add_argument("archive", type=Path, help="folder of DICOM files (searched recursively)")
    prepare.add_argument("--labels", type=Path, required=True, help="study labels CSV")
    prepare.add_argument("--out", type=Path, required=True, help="dataset folder")
    prepare.add_argument("--workers", type=int, default=2, help="processes (2)")
    prepare.add_argument(
        "--shard",
        default="1/1",
        metavar="K/N",
        help="prepare only shard K of N (for several machines)",
    )
    prepare.add_argument(
        "--key-file",
        type=Path,
        help="pseudonym key (hex); default DATASET/pseudonym.key, created once",
    )
    prepare.add_argument(
        "--view-reader",
        type=Path,
        metavar="DIR",
        help="a learned view reader beside the heuristics; bundles exported from the dataset "
        "carry it",
    )
    prepare.set_defaults(run=_prepare)

    preview = commands.add_parser("preview", help="before/after contact sheet of a dataset")
    preview.add_argument("dataset", type=Path)
    preview.add_argument(
        "--archive",
        type=Path,
        help="the archive it was prepared from (default: recorded in the dataset)",
    )
    preview.add_argument("--out", type=Path, required=True, help="PNG to write")
    preview.add_argument("--key-file", type=Path, help="the pseudonym key used by prepare")
    preview.add_argument("--count", type=int, default=12)
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument(
        "--refused",
        type=int,
        default=0,
        help="also draw this many refused instances with their reason (0)",
    )
    preview.set_defaults(run=_preview)

    add_fetch_command(commands)
    add_accept_command(commands)
    add_training_commands(commands)
    add_ood_command(commands)
    add_view_reader_command(commands)

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
            syntaxes=_syntaxes(args.syntaxes),
            renderer=args.renderer,
            randomise=args.randomise,
        )
    print(
        f"wrote {summary.instances} instances in {summary.studies} studies "
        f"({summary.fractured_studies} fractured, {summary.corrupt_instances} deliberately "
        f"corrupt) to {args.out}"
    )
    if args.preview and args.renderer == "mixed":
        for renderer in ("phantom", "projection"):
            sheet = args.preview.with_name(f"{args.preview.stem}-{renderer}{args.preview.suffix}")
            tiles = write_contact_sheet(args.out, sheet, renderer=renderer)
            print(f"contact sheet of {tiles} situations drawn by {renderer}: {sheet}")
    elif args.preview:
        tiles = write_contact_sheet(args.out, args.preview)
        print(f"contact sheet of {tiles} situations: {args.preview}")
    return 0


def _syntaxes(text: str) -> tuple[str, ...]:
    if text == "native":
        return ("explicit_le", "implicit_le", "deflated", "rle")
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _with_view_reader(reader: Path | None) -> PreprocessParams:
    """Today's preprocessing, with the learned view reader in folder `reader` beside the
    heuristics when one is given."""
    from pipeline.preprocess.study import PreprocessParams
    from pipeline.preprocess.view_reader import ViewReaderParams

    params = PreprocessParams()
    if reader is None:
        return params
    if not (reader / "weights.pt").is_file():
        raise SystemExit(f"dicomnode-train: --view-reader {reader}: no weights.pt there")
    return replace(params, view_reader=ViewReaderParams(path=str(reader)))


def _preprocess(args: argparse.Namespace) -> int:
    from pipeline.dicomio import DicomImageError, read_radiograph
    from pipeline.preprocess.study import preprocess_radiograph
    from train.dataset.records import rejection_record, view_record, write_png

    params = _with_view_reader(args.view_reader)
    failures = 0
    for path in args.files:
        try:
            radiograph = read_radiograph(path)
        except (DicomImageError, OSError) as exc:
            print(json.dumps({"source": str(path), "error": str(exc)}), flush=True)
            failures += 1
            continue
        instance = preprocess_radiograph(radiograph, params)
        evidence = {"evidence": list(instance.evidence)} if instance.evidence else {}
        if not instance.wrist.is_wrist:
            record = {**rejection_record(str(path), instance), **evidence}
            print(json.dumps(record, ensure_ascii=False))
            continue
        if not instance.views:
            record = {
                **rejection_record(str(path), instance),
                "is_wrist": True,
                "error": "no anatomic part found in the image",
                **evidence,
            }
            print(json.dumps(record, ensure_ascii=False))
            continue
        for view in instance.views:
            out = args.out / f"{instance.sop_instance_uid}_{view.part}.png"
            write_png(view.pixels, out)
            record = {**view_record(str(path), instance, view, str(out)), **evidence}
            print(json.dumps(record, ensure_ascii=False), flush=True)
    return 1 if failures == len(args.files) else 0


def _prepare(args: argparse.Namespace) -> int:
    from train.dataset.prepare import prepare

    try:
        k, n = (int(x) for x in args.shard.split("/"))
    except ValueError:
        print(f"dicomnode-train prepare: --shard {args.shard!r} is not K/N", file=sys.stderr)
        return 2
    bar = tqdm(unit="study", desc="prepare")
    try:
        summary = prepare(
            args.archive,
            args.labels,
            args.out,
            workers=args.workers,
            shard=(k, n),
            key_file=args.key_file,
            params=_with_view_reader(args.view_reader),
            progress=bar.update,
            on_total=lambda total: setattr(bar, "total", total),
        )
    except ValueError as exc:
        print(f"dicomnode-train prepare: {exc}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    (args.out / "dataset.json").write_text(
        json.dumps({"archive": str(args.archive.resolve())}, indent=2) + "\n", encoding="utf-8"
    )
    print(
        f"prepared {summary.studies_prepared} studies ({summary.studies_already_done} already "
        f"done, shard {k}/{n}); dataset has {summary.views} views, {summary.rejected} rejected "
        f"instances or studies: {args.out}"
    )
    return 0


def _preview(args: argparse.Namespace) -> int:
    from train.dataset.preview import write_preview

    archive = args.archive
    if archive is None:
        recorded = args.dataset / "dataset.json"
        if not recorded.exists():
            print(
                "dicomnode-train preview: pass --archive (the dataset does not record it)",
                file=sys.stderr,
            )
            return 2
        archive = Path(json.loads(recorded.read_text(encoding="utf-8"))["archive"])
    from train.dataset.split import default_key_file, load_or_create_key

    key = load_or_create_key(args.key_file or default_key_file())
    drawn = write_preview(
        args.dataset, archive, args.out, key=key, count=args.count, seed=args.seed,
        refused=args.refused,
    )  # fmt: skip
    print(f"preview of {drawn} views: {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
