"""A view-reader folder: weights.pt, model.json, curves.png and MODEL_CARD.md.

model.json is the record; the card is rendered from it again whenever figures are added
(held-out worlds, test sets, the leave-one-world-out runs), so the two never disagree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pipeline.models.view_net import THUMBNAIL_SIDE
from pipeline.timestamps import utc_timestamp
from train.fit import git_commit_of_code
from train.view_reader import sampling
from train.view_reader.data import DATA_VERSION, SIZE
from train.view_reader.fit import FitResult, FitSettings, settings_record


def write_run(
    out: Path, settings: FitSettings, result: FitResult, version: str = "1.1.0"
) -> dict[str, Any]:
    """Write a trained reader's folder; returns its model.json record."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result.model.state_dict(), out / "weights.pt")
    info: dict[str, Any] = {
        "name": "view-reader",
        "version": version,
        "arch": "ViewNet",
        "width": settings.width,
        "body_parts": list(result.model.body_parts),
        "input": {
            "source": "pipeline.models.view_net.thumbnail() of the display-space image",
            "shape": [1, THUMBNAIL_SIDE, THUMBNAIL_SIDE],
            "range": [0.0, 1.0],
            "normalisation": "none",
        },
        "threshold": 0.5,
        "training": {
            **settings_record(settings),
            "schedule": "cosine",
            "optimiser": "Adam",
            **result.counts,
            "best_epoch": result.best_epoch,
            "seconds": result.seconds,
            "data_version": DATA_VERSION,
            "image_size": SIZE,
            "mix": {
                "decoy_share": sampling.DECOY_SHARE,
                "full_turn_share_of_wrists": sampling.FULL_TURN_SHARE,
                "extra_two_part_share_of_wrists": sampling.EXTRA_TWO_PART_SHARE,
                "phantom_appearance_share": sampling.APPEARANCE_SHARE,
                "inverted_share": sampling.INVERTED_SHARE,
            },
        },
        "validation": result.validation,
        "history": [{k: round(v, 5) for k, v in row.items()} for row in result.history],
        "held_out_worlds": {},
        "tests": {},
        "leave_one_world_out": [],
        "git_commit": git_commit_of_code(),
        "created": utc_timestamp(),
    }
    save_record(out, info)
    plot_curves(out / "curves.png", result.history)
    return info


def load_record(run: Path) -> dict[str, Any]:
    """A folder's model.json."""
    record: dict[str, Any] = json.loads((run / "model.json").read_text(encoding="utf-8"))
    return record


def save_record(run: Path, info: dict[str, Any]) -> None:
    """Write model.json and render MODEL_CARD.md from it."""
    (run / "model.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    (run / "MODEL_CARD.md").write_text(render_card(info), encoding="utf-8")


def add_figures(run: Path, section: str, figures: dict[str, Any]) -> None:
    """Record one world's figures under `held_out_worlds` or `tests` (keyed by world)."""
    info = load_record(run)
    info.setdefault(section, {})[figures["world"]] = figures
    save_record(run, info)


def add_leave_one_world_out(run: Path, others: list[Path]) -> None:
    """Copy the figures of runs trained on fewer worlds into this run's record: on the world
    each held out, and beside them (for scale) on a fresh set of the world it was trained on."""
    info = load_record(run)
    rows = []
    for other in others:
        record = load_record(other)
        if not record.get("held_out_worlds"):
            raise ValueError(f"{other} has no held-out world figures (fit --holdout-world)")
        sections = (("held_out_worlds", True), ("tests", False))
        for section, held_out in sections:
            for world, figs in record.get(section, {}).items():
                rows.append(
                    {
                        "trained_on": record["training"]["worlds"],
                        "images_per_world": record["training"]["images"],
                        "epochs": record["training"]["epochs"],
                        "tested_on": world,
                        "held_out": held_out,
                        "run": str(other),
                        "figures": figs,
                    }
                )
    info["leave_one_world_out"] = rows
    save_record(run, info)


def plot_curves(path: Path, history: list[dict[str, float]]) -> None:
    """Training and validation loss per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(epochs, [row["train_loss"] for row in history], marker="o", label="training")
    ax.plot(epochs, [row["val_loss"] for row in history], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (wrist + inverted + direction + body part)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _figures_rows(label: str, figs: dict[str, Any]) -> str:
    d = figs["direction"]
    body = figs.get("body_part") or {}
    median = "-" if d["median_error_deg"] is None else f"{d['median_error_deg']:.1f}"
    return (
        f"| {label} | {figs['images']} | {_pct(figs['wrist_accuracy'])} | "
        f"{_pct(figs['wrist_sensitivity'])} | {_pct(figs['decoy_specificity'])} | "
        f"{_pct(body.get('accuracy'))} | {_pct(body.get('decoy_accuracy'))} | "
        f"{_pct(figs['inversion_accuracy'])} | {_pct(d['within_10_deg'])} | "
        f"{_pct(d['within_20_deg'])} | {median} | {_pct(d.get('confident_share'))} | "
        f"{_pct(d.get('confident_within_20_deg'))} |"
    )


_HEADER = (
    "| trained on -> tested on | images | wrist acc. | wrists kept | decoys refused "
    "| body part acc. | decoy named right | inversion acc. | direction <=10 deg | <=20 deg "
    "| median deg | confident | confident <=20 deg |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _body_parts(figs: dict[str, Any]) -> str:
    parts = figs["by_body_part"]
    return ", ".join(f"{name} {_pct(v['accuracy'])} (n={v['n']})" for name, v in parts.items())


def body_part_table(label: str, figs: dict[str, Any]) -> list[str]:
    """One table row per body part: what the head named it (a small confusion summary)."""
    body = figs.get("body_part")
    if not body:
        return []
    lines = [
        f"**{label}**: body part named right {_pct(body['accuracy'])} of the images whose part "
        f"the reader was trained on; {body['unknown_decoys']} decoy(s) of parts it never saw"
        + (
            f", {_pct(body['unknown_decoys_named_not_wrist'])} of them named as a part that is "
            "not a wrist"
            if body["unknown_decoys"]
            else ""
        )
        + ".",
        "",
        "| body part | n | said not wrist (wrist: kept) | named right | named not wrist "
        "| named as |",
        "|---|---|---|---|---|---|",
    ]
    for part, row in figs["by_body_part"].items():
        named = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in row["named_as"].items())
        right = _pct(row["named_right"]) if row["trained_on"] else "never trained on"
        lines.append(
            f"| {part.replace('_', ' ')} | {row['n']} | {_pct(row['accuracy'])} | {right} | "
            f"{_pct(row['named_not_wrist'])} | {named} |"
        )
    return [*lines, ""]


def render_card(info: dict[str, Any]) -> str:
    """MODEL_CARD.md from a model.json record."""
    t = info["training"]
    trained = "+".join(t["worlds"])
    lines = [
        "# View reader (ViewNet) - model card",
        "",
        "**Synthetic data only; not for clinical use.** A second opinion for the preprocessing: "
        "from a 128x128 thumbnail of the display-space image it answers *is this a wrist*, "
        "*is it inverted* (bone dark on bright), *where do the fingers point* and *which body "
        "part is this* (the part a refusal names). Input: "
        "`pipeline.models.view_net.thumbnail()` in [0, 1], no normalisation; decisions at "
        "probability 0.5.",
        "",
        "## Training",
        "",
        f"- Worlds: {', '.join(t['worlds'])}; {t['images']} images per world drawn with seed "
        f"{t['seed']} (size {t['image_size']}, data version {t['data_version']}): "
        f"{t['train_images']} for training, {t['validation_images']} for validation "
        f"(every {t['val_every']}th index).",
        f"- Mix: decoys {t['mix']['decoy_share']:.0%} (every decoy kind of the world), "
        f"{t['mix']['full_turn_share_of_wrists']:.0%} of wrists turned uniformly over 360 "
        f"degrees, {t['mix']['inverted_share']:.0%} inverted, phantom looks redrawn "
        f"{t['mix']['phantom_appearance_share']:.0%}.",
        f"- {t['epochs']} epochs, Adam lr {t['lr']}, batch {t['batch_size']}, cosine decay; "
        f"best epoch by validation loss: {t['best_epoch']}. Body-part classes: "
        f"{', '.join(info.get('body_parts', [])) or 'none (no body-part head)'}. "
        "Augmentation: the eight flips and "
        "quarter turns (direction label transformed with the image), gamma, contrast, "
        "brightness, noise, inversion (label flipped).",
        f"- Time on 2 CPU threads: drawing (or loading the cached) images "
        f"{t['seconds']['drawing']} s, training "
        f"{t['seconds']['training']} s. Git commit `{info['git_commit']}`; "
        f"created {info['created']}.",
        "",
        "![curves](curves.png)",
        "",
        "## Figures",
        "",
        "Direction: share of single-part wrists whose predicted finger direction is within 10 "
        "and 20 degrees, and the median error. A world a model was not trained on is the "
        "honest estimate for an archive none of these renderers is.",
        "",
        _HEADER,
    ]
    for world, figs in info["validation"].items():
        if world in ("all", "loss"):
            continue
        lines.append(_figures_rows(f"{trained} -> {world} (validation)", figs))
    for world, figs in info.get("tests", {}).items():
        lines.append(_figures_rows(f"{trained} -> {world} (test, seed {figs['seed']})", figs))
    for world, figs in info.get("held_out_worlds", {}).items():
        lines.append(_figures_rows(f"{trained} -> **{world}** (held-out world)", figs))
    loo = info.get("leave_one_world_out", [])
    if loo:
        recipe = ", ".join(
            sorted({f"{r['images_per_world']} images, {r['epochs']} epochs" for r in loo})
        )
        lines += [
            "",
            "### Leave one world out",
            "",
            f"Readers trained on one world alone ({recipe}), measured on the world they never "
            "saw (bold) and, for scale, on a fresh set of their own world.",
            "",
            _HEADER,
        ]
        for row in loo:
            seed = row["figures"]["seed"]
            if row["held_out"]:
                label = f"{'+'.join(row['trained_on'])} -> **{row['tested_on']}** (seed {seed})"
            else:
                label = (
                    f"{'+'.join(row['trained_on'])} -> {row['tested_on']} (own world, seed {seed})"
                )
            lines.append(_figures_rows(label, row["figures"]))
    lines += [
        "",
        "### Per body part: refused, and named as what",
        "",
        "*Said not wrist* is the wrist head's verdict (for wrists: kept). *Named right* is the "
        "body-part head's top class; a part the reader never saw in training (a reader trained "
        "on the phantom world alone has no class for a foot) cannot be named right, so it is "
        "marked *never trained on* and scored only by whether the head named a part that is "
        "not a wrist. *Named as* counts the head's top class: the confusions a refusal's "
        "wording would carry.",
        "",
    ]
    sections = [(f"{trained} -> {w} (test)", f) for w, f in info.get("tests", {}).items()]
    sections += [
        (f"{trained} -> {w} (held-out world)", f)
        for w, f in info.get("held_out_worlds", {}).items()
    ]
    for row in loo:
        kind = "held-out world" if row["held_out"] else "own world"
        label = f"{'+'.join(row['trained_on'])} -> {row['tested_on']} ({kind})"
        sections.append((label, row["figures"]))
    for label, figs in sections:
        named = body_part_table(label, figs)
        lines += named if named else [f"- {label}: {_body_parts(figs)}"]
    lines += [
        "",
        "## Limits",
        "",
        "- Every figure is measured on synthetic renderers; a hospital's archive is a world none "
        "of them is. Read the leave-one-world-out rows as the best to expect there.",
        "- Direction is scored on single-part wrists only; the length of the raw direction "
        "vector is the reader's confidence (trained to approach the expected cosine of its "
        "error), and `confident` rows are those of length >= 0.7.",
        '- The body-part head only words a refusal ("image looks like a chest, not a wrist"); '
        "the wrist head alone decides. It knows only its training worlds' parts: an image of "
        "any other part is named as the nearest of those. In the projection world it names "
        "most limbs poorly (see the table above), so a refusal names a part only when its "
        "probability reaches 0.7 (`pipeline.preprocess.wrist_filter.NAME_PART_FROM`).",
        "",
        "## Reproduce",
        "",
        "`make view-reader` (the leave-one-world-out runs, then this reader and its tests; the "
        "commands are in the Makefile).",
    ]
    return "\n".join(lines) + "\n"
