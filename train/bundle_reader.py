"""A bundle carries the view reader its preprocessing uses.

A dataset prepared with `--view-reader DIR` records DIR as it was given on the command line,
relative to wherever `prepare` ran. A bundle made from it must not depend on that folder: the
node runs elsewhere, from another working directory. So `export` and `ensemble` copy the reader
into the bundle (`pipeline.preprocess.view_reader.BUNDLED_READER`) and name it there; the node
resolves it inside the bundle (`reader_in_bundle`) and refuses a bundle whose reader is missing.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.preprocess.params_io import params_from_dict, params_to_dict
from pipeline.preprocess.view_reader import BUNDLED_READER, reader_in_bundle

READER_FILES = ("weights.pt", "model.json", "MODEL_CARD.md")


def carry_view_reader(preprocess: dict[str, Any], source: Path, out: Path) -> dict[str, Any]:
    """The preprocessing `preprocess` (as model.json records it) with its view reader, if it
    names one, copied into the bundle folder `out` and named there. `source` is where a
    relative reader path was written from: a member bundle's folder, or a dataset's (whose
    paths were relative to the working directory, which is tried next)."""
    params = params_from_dict(preprocess)
    if not params.view_reader.path:
        return preprocess
    found = Path(reader_in_bundle(source, params.view_reader).path)
    target = out / BUNDLED_READER
    if found.resolve() != target.resolve():
        target.mkdir(parents=True, exist_ok=True)
        for name in READER_FILES:
            if (found / name).is_file():
                shutil.copyfile(found / name, target / name)
    carried = replace(params.view_reader, path=BUNDLED_READER)
    return params_to_dict(replace(params, view_reader=carried))
