"""`prepare`: a hospital archive and its labels -> a PNG + CSV dataset (thesis Sections 4.1-4.2).

Parallel per study (Section 4.2.1), resumable (a study whose CSV exists is done; the CSV is
written last, atomically) and shardable (`--shard K/N` takes the studies whose stable hash falls
in shard K, so N machines can share an archive). Layout of the output:

- ``views/<StudyInstanceUID>/<SOPInstanceUID>_<part>.png``: 8-bit model-input views
- ``studies/<StudyInstanceUID>.csv``: one row per view of the study (thesis Figure 4.3)
- ``metadata.csv``: all views; ``rejected.csv``: every dropped instance or study and why; both
  carry ``cues``, a compact line of the cues behind each preprocessing decision
- no file paths: archive paths often hold patient IDs or names, so files are referred to by a
  keyed digest of their path (``source_ref``), which `preview` resolves against the archive
- ``stats.json`` and ``sizes.png``: normalisation statistics, counts, source size histogram
- ``preprocess.json``: the preprocessing parameters, which a model trained on it carries
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from pipeline.dicomio import CorruptImage, DicomImageError, read_radiograph
from pipeline.files import atomic_write_text
from pipeline.preprocess.evidence import for_view, summary
from pipeline.preprocess.params_io import params_to_dict
from pipeline.preprocess.study import PreprocessParams, preprocess_radiograph
from train.dataset.records import view_record, write_png
from train.dataset.split import (
    assign_splits,
    default_key_file,
    load_or_create_key,
    pseudonym,
    shard_of,
    source_ref,
)

METADATA_COLUMNS = (
    "study_instance_uid", "sop_instance_uid", "part", "n_parts", "path", "label", "split",
    "patient_pseudonym", "accession_number", "source_ref", "modality", "sop_class_uid",
    "body_part_examined", "view_position", "laterality", "image_laterality", "manufacturer",
    "photometric_interpretation", "rows", "columns", "pixel_spacing", "bits_stored",
    "transfer_syntax_uid", "wrist_rule", "inverted", "inversion_rule", "rotation_deg",
    "fingers_flipped", "bbox", "to_source", "pixel_mean", "pixel_sq_mean", "cues",
)  # fmt: skip
REJECTED_COLUMNS = ("study_instance_uid", "sop_instance_uid", "source_ref", "reason", "cues")


@dataclass(frozen=True)
class StudyJob:
    """Everything one worker needs to prepare one study."""

    study_instance_uid: str
    accession_number: str
    patient_pseudonym: str
    label: int
    split: str
    sources: tuple[str, ...]
    """Paths relative to the archive."""


@dataclass(frozen=True)
class PrepareSummary:
    """What a `prepare` run did."""

    studies_total: int
    studies_prepared: int
    studies_already_done: int
    views: int
    rejected: int
    shard: tuple[int, int]


@dataclass
class _Scan:
    key: bytes
    studies: dict[str, list[str]] = field(default_factory=dict)
    accession: dict[str, str] = field(default_factory=dict)
    patient: dict[str, str] = field(default_factory=dict)
    rejected: list[dict[str, str]] = field(default_factory=list)


def prepare(
    archive: Path,
    labels: Path,
    out: Path,
    *,
    workers: int = 2,
    shard: tuple[int, int] = (1, 1),
    key_file: Path | None = None,
    params: PreprocessParams | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> PrepareSummary:
    """Prepare the dataset (see the module docstring); safe to interrupt and run again."""
    k, n = shard
    if not 1 <= k <= n:
        raise ValueError(f"shard {k}/{n} is not of the form K/N with 1 <= K <= N")
    params = params or PreprocessParams()
    key = load_or_create_key(key_file or default_key_file())
    scan = _scan_archive(archive, key)
    jobs, rejected = _plan_jobs(scan, _read_labels(labels), key)
    mine = [j for j in jobs if shard_of(j.study_instance_uid, n) == k - 1]
    todo = [j for j in mine if not _study_csv(out, j.study_instance_uid).exists()]
    if on_total:
        on_total(len(todo))
    work = [(archive, out, job, params, key) for job in todo]
    if workers > 1 and len(work) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(_prepare_study, work, chunksize=1):
                if progress:
                    progress(1)
    else:
        for item in work:
            _prepare_study(item)
            if progress:
                progress(1)
    atomic_write_text(out / "preprocess.json", json.dumps(params_to_dict(params), indent=2) + "\n")
    views, study_rejections = _merge(out)
    all_rejected = rejected + study_rejections
    _write_csv(out / "rejected.csv", REJECTED_COLUMNS, all_rejected)
    _write_stats(out, views, all_rejected)
    return PrepareSummary(
        studies_total=len(jobs),
        studies_prepared=len(todo),
        studies_already_done=len(mine) - len(todo),
        views=len(views),
        rejected=len(all_rejected),
        shard=shard,
    )


def _scan_archive(archive: Path, key: bytes) -> _Scan:
    """Group the archive's files by study from their headers alone (no pixel data read)."""
    scan = _Scan(key=key)
    tags = ["StudyInstanceUID", "AccessionNumber", "PatientID"]
    for path in sorted(
        p for p in archive.rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", "")
    ):
        source = path.relative_to(archive).as_posix()
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
            study = str(ds.StudyInstanceUID)
        except Exception as exc:  # a broken header can raise almost anything
            reason = f"corrupt: header unreadable ({exc})"
            scan.rejected.append(_rejection("", "", source_ref(key, source), reason))
            continue
        scan.studies.setdefault(study, []).append(source)
        scan.accession.setdefault(study, str(ds.get("AccessionNumber", "") or ""))
        scan.patient.setdefault(study, str(ds.get("PatientID", "") or f"unknown-{study}"))
    return scan


@dataclass(frozen=True)
class _Label:
    study_instance_uid: str
    accession_number: str
    label: int


def _read_labels(path: Path) -> list[_Label]:
    labels = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        if "label" not in columns or not columns & {"study_instance_uid", "accession_number"}:
            raise ValueError(
                f"{path}: needs a 'label' column and 'study_instance_uid' or 'accession_number'"
            )
        for line, row in enumerate(reader, start=2):
            if row["label"] not in ("0", "1"):
                raise ValueError(f"{path}, line {line}: label {row['label']!r} is not 0 or 1")
            labels.append(
                _Label(
                    row.get("study_instance_uid") or "",
                    row.get("accession_number") or "",
                    int(row["label"]),
                )
            )
    return labels


def _plan_jobs(
    scan: _Scan, labels: list[_Label], key: bytes
) -> tuple[list[StudyJob], list[dict[str, str]]]:
    """Match labels to studies (Study Instance UID first, else Accession Number)."""
    rejected = list(scan.rejected)
    by_study = {lab.study_instance_uid: lab for lab in labels if lab.study_instance_uid}
    by_accession = {lab.accession_number: lab for lab in labels if lab.accession_number}
    labelled: dict[str, int] = {}
    used: set[int] = set()
    for study, sources in sorted(scan.studies.items()):
        found = by_study.get(study) or by_accession.get(scan.accession[study])
        if found is None:
            rejected += [
                _rejection(study, "", source_ref(key, s), "no label for this study")
                for s in sources
            ]
        else:
            labelled[study] = found.label
            used.add(id(found))
    for lab in labels:
        if id(lab) not in used:
            rejected.append(
                _rejection(
                    lab.study_instance_uid,
                    "",
                    "",
                    f"label without images (accession {lab.accession_number})",
                )
            )
    patients = {study: pseudonym(key, scan.patient[study]) for study in labelled}
    patient_labels: dict[str, int] = {}
    for study, label in labelled.items():
        patient_labels[patients[study]] = max(label, patient_labels.get(patients[study], 0))
    splits = assign_splits(patient_labels, key)
    jobs = [
        StudyJob(
            study_instance_uid=study,
            accession_number=scan.accession[study],
            patient_pseudonym=patients[study],
            label=label,
            split=splits[patients[study]],
            sources=tuple(scan.studies[study]),
        )
        for study, label in labelled.items()
    ]
    return jobs, rejected


def _prepare_study(item: tuple[Path, Path, StudyJob, PreprocessParams, bytes]) -> None:
    archive, out, job, params, key = item
    rows: list[dict[str, Any]] = []
    rejected: list[dict[str, str]] = []
    for source in job.sources:
        ref = source_ref(key, source)
        try:
            # From a dataset, not a path: error messages must not carry the path, which may
            # name the patient.
            radiograph = read_radiograph(_read_dataset(archive / source))
        except DicomImageError as exc:
            rejected.append(_rejection(job.study_instance_uid, "", ref, f"corrupt: {exc}"))
            continue
        instance = preprocess_radiograph(radiograph, params)
        uid = radiograph.sop_instance_uid
        cues = {"cues": summary(instance.cues)}
        if not instance.wrist.is_wrist:
            reason = f"not a wrist: {instance.wrist.reason}"
            rejected.append({**_rejection(job.study_instance_uid, uid, ref, reason), **cues})
            continue
        if not instance.views:
            reason = "no anatomic part found in the image"
            rejected.append({**_rejection(job.study_instance_uid, uid, ref, reason), **cues})
            continue
        for view in instance.views:
            relative = f"views/{job.study_instance_uid}/{uid}_{view.part}.png"
            write_png(view.pixels, out / relative)
            record = view_record(ref, instance, view, relative)
            rows.append({
                **{c: record.get(c, "") for c in METADATA_COLUMNS},
                "study_instance_uid": job.study_instance_uid,
                "path": relative,
                "source_ref": ref,
                "label": job.label,
                "split": job.split,
                "patient_pseudonym": job.patient_pseudonym,
                "accession_number": job.accession_number,
                "modality": radiograph.modality,
                "sop_class_uid": radiograph.sop_class_uid,
                "body_part_examined": radiograph.body_part_examined,
                "view_position": radiograph.view_position,
                "laterality": radiograph.laterality,
                "image_laterality": radiograph.image_laterality,
                "manufacturer": radiograph.manufacturer,
                "photometric_interpretation": radiograph.photometric_interpretation,
                "rows": radiograph.rows,
                "columns": radiograph.columns,
                "pixel_spacing": json.dumps(radiograph.pixel_spacing),
                "bits_stored": radiograph.bits_stored,
                "transfer_syntax_uid": radiograph.transfer_syntax_uid,
                "bbox": json.dumps(record["bbox"]),
                "to_source": json.dumps(record["to_source"]),
                "pixel_mean": f"{float(view.pixels.mean()):.6f}",
                "pixel_sq_mean": f"{float(np.square(view.pixels, dtype=np.float64).mean()):.6f}",
                "cues": summary(for_view(instance.cues, view.part)),
            })  # fmt: skip
    if not rows:
        rejected.append(_rejection(job.study_instance_uid, "", "", "no usable view in the study"))
    _write_csv(
        _study_csv(out, job.study_instance_uid).with_suffix(".rejected.csv"),
        REJECTED_COLUMNS,
        rejected,
    )
    _write_csv(_study_csv(out, job.study_instance_uid), METADATA_COLUMNS, rows)  # last: "done"


def _read_dataset(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path)
    except Exception as exc:  # a broken header can raise almost anything
        raise CorruptImage(f"the DICOM header cannot be parsed ({type(exc).__name__})") from exc


def _merge(out: Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    views: list[dict[str, str]] = []
    rejected: list[dict[str, str]] = []
    studies = out / "studies"
    for path in sorted(studies.glob("*.csv")) if studies.exists() else []:
        with path.open(newline="", encoding="utf-8") as handle:
            target = rejected if path.name.endswith(".rejected.csv") else views
            target.extend(csv.DictReader(handle))
    _write_csv(out / "metadata.csv", METADATA_COLUMNS, views)
    return views, rejected


def _write_stats(out: Path, views: list[dict[str, str]], rejected: list[dict[str, str]]) -> None:
    train = [v for v in views if v["split"] == "train"] or views
    mean = float(np.mean([float(v["pixel_mean"]) for v in train])) if train else 0.0
    sq = float(np.mean([float(v["pixel_sq_mean"]) for v in train])) if train else 0.0
    counts: dict[str, dict[str, int]] = {}
    for split in ("train", "val", "test"):
        chosen = [v for v in views if v["split"] == split]
        studies = {v["study_instance_uid"]: v["label"] for v in chosen}
        counts[split] = {
            "views": len(chosen),
            "studies": len(studies),
            "fractured_studies": sum(1 for label in studies.values() if label == "1"),
            "patients": len({v["patient_pseudonym"] for v in chosen}),
        }
    long_sides = [max(int(v["rows"]), int(v["columns"])) for v in views]
    edges = [0, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 10000]
    histogram, _ = np.histogram(long_sides, bins=edges)
    stats = {
        "normalisation": {"mean": mean, "std": float(np.sqrt(max(sq - mean * mean, 0.0))),
                          "computed_on": "train" if any(v["split"] == "train" for v in views)
                          else "all"},
        "splits": counts,
        "rejected": len(rejected),
        "source_long_side_histogram": {"edges": edges, "counts": histogram.tolist()},
    }  # fmt: skip
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2) + "\n")
    _plot_sizes(out / "sizes.png", views)


def _plot_sizes(path: Path, views: list[dict[str, str]]) -> None:
    """Source sizes scattered as in thesis Figure 3.3 (width against height)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter([int(v["columns"]) for v in views], [int(v["rows"]) for v in views], s=6, alpha=0.5)
    ax.set_xlabel("source width (px)")
    ax.set_ylabel("source height (px)")
    ax.set_title(f"{len(views)} views: source image sizes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _rejection(study: str, sop: str, ref: str, reason: str) -> dict[str, str]:
    return {"study_instance_uid": study, "sop_instance_uid": sop, "source_ref": ref,
            "reason": reason}  # fmt: skip


def _study_csv(out: Path, study_uid: str) -> Path:
    return out / "studies" / f"{study_uid}.csv"


def _write_csv(path: Path, columns: Iterable[str], rows: list[dict[str, Any]]) -> None:
    stream = io.StringIO(newline="")
    writer = csv.DictWriter(stream, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, stream.getvalue())
