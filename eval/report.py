"""``genlab report``: runs and their saved evaluation results -> report.md and report.html.

A run's identity (family, dataset, learning rate, epochs, training time) comes from its
checkpoint; its numbers come from the results saved beside it (``RUN_DIR/eval/*.json``).
The cheap missing ones (reconstruction error and the translation experiment, anomaly AUROC
of one-class runs, a conditional run's class fidelity and its grid of samples with one row per
class) are computed and saved unless ``compute`` is off; FID is never computed here. Every
metric column is keyed by all the settings that change its number (extractor, reference, N,
seed, split, protocol...), and the header states them, so numbers computed under different
settings can never share a column.

An inspection set's results (``mvtec:PATH``, ``inspect:PATH``) get a table per protocol (dataset and split), one row
per run evaluated on it, read as :class:`genlab.eval.inspection.InspectionResult`: the primary score's image metrics,
the anomaly map's pixel metrics and the image AUROC per defect type; the figure of the highest-scored images and
their maps saved beside the result is shown with the run's images.
"""

from __future__ import annotations

import functools
import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genlab.errors import GenlabError
from genlab.families import FAMILIES
from genlab.measures import RECON_ERROR

if TYPE_CHECKING:
    from genlab.eval.inspection import InspectionResult

CLASS_GRID = "eval/samples_by_class.png"  # a conditional run's samples, one row per class (relative to the run)
GRID_PER_CLASS = 8
IMAGES = (
    ("samples.png", "samples"),
    ("reconstructions.png", "reconstructions"),
    ("loss_curves.png", "loss curves"),
    (CLASS_GRID, "samples, one row per class"),
)
GROUPS = ("FID / KID", "Reconstruction and translation", "Anomaly detection", "Class fidelity")
CONDITIONAL_GROUPS = (GROUPS[3],)  # shown only when some run is conditional
# besides GROUPS, one group per inspection protocol (inspection_group), shown after the anomaly detection group


@dataclass(frozen=True)
class ReportSettings:
    compute: bool = True  # compute the cheap missing results (never FID)
    data_dir: str = "data"
    n: int = 500  # held-out images for reconstruction / translation
    translation: bool = True  # the full shift experiment; False: reconstruction error (no shift) only
    fidelity_n: int = 1000  # samples for a conditional run's class fidelity


@dataclass
class RunEntry:
    label: str
    path: Path
    identity: dict[str, Any]
    cells: dict[tuple[str, str], str] = field(default_factory=dict)  # (group, column header) -> text
    notes: dict[str, str] = field(default_factory=dict)  # group -> why a group has no numbers
    figures: list[tuple[Path, str]] = field(default_factory=list)  # (file, caption) shown beside IMAGES


# -- saved results -> table cells ------------------------------------------------------------
def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _setting(value: Any) -> str:
    if isinstance(value, dict):
        return ":".join(str(v) for v in value.values() if v is not None)
    return str(value)


def fid_cells(result: dict[str, Any]) -> dict[str, str]:
    """One column per metric, headed by the line of every setting the number depends on
    (extractor and its weights, reference and its N, samples or reconstructions, N, seed, size)."""
    values = result.get("values") or {}
    cells = {}
    for name, value in values.items():
        if name.endswith("_std"):
            continue
        std = values.get(f"{name}_std")
        band = (result.get("intervals") or {}).get(name)
        spread = f" (95% bootstrap {band['low']:.4g}-{band['high']:.4g})" if band else ""
        cells[f"{name} [{result.get('settings', '')}]"] = (
            _fmt(value) + (f" ± {std:.2g}" if std is not None else "") + spread
        )
    if result.get("provenance"):
        cells[f"provenance [{result.get('settings', '')}]"] = provenance_text(result)
    return cells


def provenance_text(result: dict[str, Any]) -> str:
    """The provenance of a result in one cell: model and weights hashes, versions, device, wall time."""
    p = result.get("provenance")
    if not p:
        return "-"
    model = p["model"]
    digest = model.get("sha256") or model.get("source_sha256") or "?"
    parts = [f"model {model['kind']} {digest[:12]}"]
    if p.get("extractor"):
        parts.append(f"weights {p['extractor']['weights_sha256'][:12]}")
    if p.get("reference"):
        parts.append(f"reference {p['reference'].get('cache_key') or p['reference']['dataset']}")
    versions = p["versions"]
    parts.append(
        ", ".join(f"{k} {versions.get(k) or '-'}" for k in ("genlab", "torch", "onnxruntime", "torch_fidelity"))
    )
    parts.append(f"{p['device']} x{p.get('processes', 1)}, {p['wall_s']:.1f} s")
    return "; ".join(parts)


def serving_drift_cells(results: list[dict[str, Any]], tolerance: float = 1e-6) -> dict[str, str]:
    """For each FID result of a served model, the same settings' result of the file (export or checkpoint) beside
    it: one column per setting that says whether serving drifted (relative difference above ``tolerance``)."""
    served = [r for r in results if r.get("evaluation") == "fid" and r.get("kind") == "http"]
    files = {
        r.get("settings"): r
        for r in results
        if r.get("evaluation") == "fid" and r.get("kind") in ("onnx", "checkpoint")
    }
    cells = {}
    for result in served:
        local = files.get(result["settings"].split("; served by ")[0])
        if local is None:
            continue
        pairs = [(k, local["values"][k], v) for k, v in result["values"].items() if k in local["values"]]
        worst = max((abs(a - b) / max(abs(a), 1e-12) for _, a, b in pairs), default=0.0)
        text = ", ".join(f"{k} {a:.6g} ({local['kind']}) vs {b:.6g} (served)" for k, a, b in pairs)
        verdict = f"drifted (relative difference {worst:.2g})" if worst > tolerance else "no drift"
        cells[f"serving vs file [{result['settings']}]"] = f"{verdict}: {text}"
    return cells


def per_class_fid_cells(result: dict[str, Any]) -> dict[str, str]:
    """A conditional model's per-class numbers: one column per metric, each class named in the cell."""
    per_class = result.get("per_class") or {}
    keys = [k for k in (next(iter(per_class.values()))["values"] if per_class else {}) if not k.endswith("_std")]
    return {
        f"{key} per class [{result.get('settings', '')}]": ", ".join(
            f"{name}: {_fmt(row['values'][key])}" for name, row in per_class.items()
        )
        for key in keys
    }


def _shares(per_class: dict[str, Any]) -> str:
    return ", ".join(f"{name}: {'-' if share is None else f'{share:.2f}'}" for name, share in per_class.items())


def class_fidelity_cells(result: dict[str, Any]) -> dict[str, str]:
    """Class fidelity overall and per class, and the classifier's test accuracy beside them (the ceiling); from a
    class-fidelity result or from the FID result of a conditional model's samples."""
    classifier = result["classifier"]["identity"]
    where = f"samples n={result['n']} seed={result['seed']}, balanced labels; classifier {classifier}"
    test = f"{classifier} on {result['classifier_test_split']}, n={result['classifier_n_test']}"
    return {
        f"class fidelity ({where})": f"{result['class_fidelity']:.3f}",
        f"class fidelity per class ({where})": _shares(result["class_fidelity_per_class"]),
        f"classifier test accuracy ({test})": f"{result['classifier_test_accuracy']:.3f}",
        f"classifier test accuracy per class ({test})": _shares(result["classifier_test_accuracy_per_class"]),
    }


def translation_cells(result: dict[str, Any]) -> dict[str, str]:
    s = result["settings"]
    where = f"{s['dataset']}:{s['split']}, n={s['n']}, seed {s['seed']}"
    cells = {}
    for row in result["shifts"]:
        name = f"{RECON_ERROR}, no shift" if row["fraction"] == 0 else f"{RECON_ERROR}, shift {row['fraction']:.1%}"
        cells[f"{name} ({where})"] = _fmt(row[RECON_ERROR])
    if result.get("worst_over_unshifted") is not None and len(result["shifts"]) > 1:
        cells[f"{RECON_ERROR} ratio {result['shifts'][-1]['fraction']:.1%} / no shift ({where})"] = (
            f"{result['worst_over_unshifted']:.2f}"
        )
    return cells


def anomaly_cells(result: dict[str, Any]) -> dict[str, str]:
    protocol, p = result["protocol"], result["settings"]["percentile"]
    cells = {}
    for name, row in result["components"].items():
        cells[f"AUROC {name} ({protocol})"] = _fmt(row["auroc"])
    score = result["components"].get("score")
    if score and score.get("tpr") is not None:
        cells[f"TPR / FPR score at p{p:g} threshold ({protocol})"] = f"{score['tpr']:.3f} / {score['fpr']:.3f}"
    return cells


def inspection_group(result: InspectionResult) -> str:
    """The table of an inspection protocol: every setting but the threshold's percentile and the AUPRO limit, which
    name their own columns."""
    return f"Inspection set: {result.settings.protocol} (primary score)"


def inspection_cells(result: InspectionResult) -> dict[str, str]:
    """The primary score's image metrics, the anomaly map's pixel metrics and the score's image AUROC per defect
    type; the rates at the calibrated threshold are keyed by its percentile, AUPRO by its FPR limit."""
    from genlab.eval.inspection import PRIMARY

    s, image, maps = result.settings, result.component(PRIMARY).image, result.maps
    pixel = maps.pixel
    at = f"at p{s.percentile:g} threshold"
    cells = {
        "image AUROC": _fmt(image.auroc),
        "image F1-max": _fmt(image.f1_max),
        "pixel AUROC": "-" if pixel is None else _fmt(pixel.auroc),
        f"AUPRO@{s.fpr_limit:g}": "-" if pixel is None else _fmt(pixel.aupro),
        "pixel F1-max": "-" if pixel is None else _fmt(pixel.f1_max),
        f"FPR on good images {at}": _fmt(image.fpr_at_threshold),
        f"TPR on defective images {at}": _fmt(image.tpr_at_threshold),
    }
    cells.update({f"image AUROC {d.defect_type} ({d.images})": _fmt(d.auroc) for d in image.defects})
    cells["anomaly map (mean over channels)"] = _maps_text(result)
    return cells


def _maps_text(result: InspectionResult) -> str:
    """The map's size and the mask's it was scored at, or why there are no pixel metrics."""
    maps = result.maps
    if maps.pixel is None or maps.map_size is None or maps.mask_size is None:
        return f"none: {maps.missing}"
    (h, w), (mh, mw) = maps.map_size, maps.mask_size
    text = f"{mh}x{mw}" + (f", resized from {h}x{w}" if maps.resized else "") + f", {maps.pixel.regions} regions"
    if maps.pixel.subsampled:
        text += f"; pixel AUROC / F1-max on {maps.pixel.pixels_scored} of {maps.pixel.pixels} pixels"
    return text


def inspection_figures(path: Path, results: list[dict[str, Any]]) -> list[tuple[Path, str]]:
    """The figures of the highest-scored images saved beside the run's inspection results that had maps."""
    from genlab.eval.inspection import InspectionResult, is_inspection_result
    from genlab.eval.worst_maps import figure_path

    from genlab.data import published_name

    figures: list[tuple[Path, str]] = []
    for result in filter(is_inspection_result, results):
        inspection = InspectionResult.from_json(result)
        dataset = inspection.settings.dataset
        figure = figure_path(path, dataset)
        if inspection.maps.pixel is not None and figure.is_file() and figure not in (f for f, _ in figures):
            figures.append((figure, f"highest-scored images of {published_name(dataset)} and their anomaly maps"))
    return figures


def result_groups(result: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """A saved result -> [(table group, its cells)]: none for results the report does not show, two for the FID
    result of a conditional model's samples (which carries their class fidelity)."""
    from genlab.eval.inspection import InspectionResult, is_inspection_result

    evaluation = result.get("evaluation")
    if is_inspection_result(result):
        inspection = InspectionResult.from_json(result)
        return [(inspection_group(inspection), inspection_cells(inspection))]
    if evaluation == "anomaly":
        return [(GROUPS[2], anomaly_cells(result))]
    if evaluation == "translation":
        return [(GROUPS[1], translation_cells(result))]
    if evaluation == "class_fidelity":
        return [(GROUPS[3], class_fidelity_cells(result))]
    if evaluation == "fid":
        groups = [(GROUPS[0], {**fid_cells(result), **per_class_fid_cells(result)})]
        if result.get("class_fidelity") is not None:
            groups.append((GROUPS[3], class_fidelity_cells(result)))
        return groups
    return []


# -- one run ---------------------------------------------------------------------------------
def run_identity(path: Path) -> dict[str, Any]:
    from genlab.checkpoint import class_info, load_checkpoint

    ckpt = load_checkpoint(path)
    tc, data, classes = ckpt["train_config"], ckpt["data"], class_info(ckpt)
    return {
        "family": ckpt["family"],
        "dataset": data.get("dataset"),
        "normal_class": data.get("normal_class"),
        "lr": tc.get("lr"),
        "epochs": ckpt.get("epoch"),
        "steps": ckpt.get("step"),
        "complete": bool(ckpt.get("complete")),
        "train_seconds": (ckpt.get("metrics") or {}).get("train_seconds"),
        "has_encoder": FAMILIES[ckpt["family"]].has_encoder,
        "conditional": classes["conditional"],
        "class_names": classes["names"] if classes["conditional"] else None,
        "condition_on": classes["condition_on"],
        # the calibrated threshold's leave-one-out false-positive rate on unseen normal images (genlab.thresholds)
        "threshold_check": (ckpt.get("calibration") or {}).get("check"),
    }


def _has_translation(
    results: list[dict[str, Any]], identity: dict[str, Any], settings: ReportSettings, fractions
) -> bool:
    return any(
        r.get("evaluation") == "translation"
        and r["settings"]["dataset"] == identity["dataset"]
        and r["settings"]["split"] == "test"
        and set(fractions) <= set(r["settings"]["fractions"])
        and r["settings"]["n"] <= settings.n
        for r in results
    )


def _has_anomaly(results: list[dict[str, Any]], identity: dict[str, Any]) -> bool:
    return any(
        r.get("evaluation") == "anomaly"
        and r["settings"]["dataset"] == identity["dataset"]
        and r["settings"]["ood"] is None
        and r["settings"]["normal_class"] == identity["normal_class"]
        and r["settings"]["split"] == "test"
        for r in results
    )


def _has_inspection(results: list[dict[str, Any]], dataset: str) -> bool:
    from genlab.eval.inspection import InspectionResult, is_inspection_result

    return any(InspectionResult.from_json(r).settings.dataset == dataset for r in filter(is_inspection_result, results))


def _has_class_fidelity(results: list[dict[str, Any]]) -> bool:
    return any(r.get("class_fidelity") is not None for r in results)


def write_class_grid(source: Any, path: Path, per_class: int = GRID_PER_CLASS, seed: int = 0) -> Path:
    """A conditional model's samples as a grid with one row of ``per_class`` images per class (seeded)."""
    from genlab.imageio import save_grid
    from genlab.latents import class_rows

    labels = class_rows(source.num_classes, per_class)
    save_grid(source.sample(len(labels), seed, labels=labels), path, nrow=per_class)
    return path


def _grid_is_current(path: Path) -> bool:
    """The run's class grid exists and is newer than its checkpoint (a resumed run gets a new one)."""
    from genlab.run_dir import checkpoint_file

    grid = path / CLASS_GRID
    return grid.is_file() and grid.stat().st_mtime >= checkpoint_file(path).stat().st_mtime


def compute_missing(path: Path, identity: dict[str, Any], settings: ReportSettings) -> dict[str, str]:
    """Compute and save the cheap results a run lacks; returns {group: note} for what could not be."""
    from genlab.eval import anomaly, class_fidelity, translation
    from genlab.eval.inspection import evaluate_inspection
    from genlab.eval.model_source import ensure_source
    from genlab.eval.results import load_results, save_result

    from genlab.data import is_anomaly_layout

    results = load_results(path)
    notes: dict[str, str] = {}
    fractions = translation.SHIFTS if settings.translation else (0.0,)
    source = functools.cache(lambda: ensure_source(path))  # opened once, and only if something is missing
    try:
        if identity["has_encoder"] and not _has_translation(results, identity, settings, fractions):
            r = translation.evaluate_translation(
                source(), data_dir=settings.data_dir, fractions=fractions, n=settings.n
            )
            save_result(path, translation.result_name(r), r)
    except GenlabError as err:
        notes[GROUPS[1]] = f"not computed: {err}"
    try:
        if is_anomaly_layout(identity["dataset"]):
            if not _has_inspection(results, identity["dataset"]):
                anomaly.save_inspection(evaluate_inspection(source(), data_dir=settings.data_dir), path)
        elif identity["normal_class"] is not None and not _has_anomaly(results, identity):
            r = anomaly.evaluate_anomaly(source(), data_dir=settings.data_dir)
            save_result(path, anomaly.result_name(r), r)
    except GenlabError as err:
        notes[GROUPS[2]] = f"not computed: {err}"
    try:
        if identity["conditional"] and not _has_class_fidelity(results):
            r = class_fidelity.measure(source(), n=settings.fidelity_n, seed=0, data_dir=settings.data_dir)
            save_result(path, class_fidelity.result_name(r), r)
        if identity["conditional"] and not _grid_is_current(path):
            write_class_grid(source(), path / CLASS_GRID)
    except GenlabError as err:
        notes[GROUPS[3]] = f"not computed: {err}"
    return notes


def gather_run(path: Path, label: str, settings: ReportSettings) -> RunEntry:
    from genlab.eval.results import load_results

    from genlab.data import is_anomaly_layout

    identity = run_identity(path)
    entry = RunEntry(label, path, identity)
    if settings.compute:
        entry.notes.update(compute_missing(path, identity, settings))
    results = load_results(path)
    for result in results:
        for group, cells in result_groups(result):
            entry.cells.update({(group, header): text for header, text in cells.items()})
    entry.cells.update({(GROUPS[0], header): text for header, text in serving_drift_cells(results).items()})
    entry.figures = inspection_figures(path, results)
    groups_present = {g for g, _ in entry.cells}
    entry.notes.setdefault(GROUPS[0], f"not computed: run `{fid_hint(path, identity)}`")
    if not identity["conditional"]:
        entry.notes.setdefault(GROUPS[3], "n/a: not a conditional model")
    entry.notes.setdefault(
        GROUPS[3], f"not computed (report --no-compute): run `genlab eval class-fidelity {path} --save`"
    )
    if not identity["has_encoder"]:
        entry.notes.setdefault(GROUPS[1], "n/a: the model has no encoder")
    if groups_present - set(GROUPS):
        entry.notes.setdefault(GROUPS[2], "inspection set: see its table")
    if identity["normal_class"] is None and not is_anomaly_layout(identity["dataset"]):
        entry.notes.setdefault(
            GROUPS[2], f"trained on all classes: run `genlab eval anomaly {path} --normal-class K` or `--ood DATASET`"
        )
    entry.notes.setdefault(GROUPS[1], "not computed (report --no-compute): run `genlab eval translation`")
    entry.notes.setdefault(GROUPS[2], "not computed (report --no-compute): run `genlab eval anomaly`")
    entry.notes = {g: note for g, note in entry.notes.items() if g not in groups_present}
    return entry


def fid_hint(path: Path, identity: dict[str, Any]) -> str:
    """The FID command to suggest, sized for this machine: Inception at n=1000 on a GPU; on a CPU (where Inception
    runs at ~10 images/s, n=1000 being over 15 minutes) the LeNet extractor, seconds for n=1000."""
    import torch

    per_class = " --per-class" if identity["conditional"] else ""
    if torch.cuda.is_available():
        return f"genlab eval fid {path} --ref {identity['dataset']} --n 1000 --device cuda{per_class}"
    return f"genlab eval fid {path} --ref {identity['dataset']} --extractor lenet --n 1000{per_class}"


# -- tables ----------------------------------------------------------------------------------
IDENTITY_COLUMNS = (
    "run",
    "family",
    "dataset",
    "lr",
    "epochs",
    "steps",
    "training time (s)",
    "threshold on unseen normal images",
)


def identity_row(entry: RunEntry) -> list[str]:
    i = entry.identity
    dataset = i["dataset"] + ("" if i["normal_class"] is None else f" (class {i['normal_class']})")
    if i["conditional"]:
        dataset += f" (labels: {i['condition_on']})" if i["condition_on"] else f" ({len(i['class_names'])} classes)"
    family = i["family"] + (" (conditional)" if i["conditional"] else "")
    seconds = i["train_seconds"]
    return [
        entry.label,
        family,
        dataset,
        _fmt(i["lr"], 3),
        _fmt(i["epochs"]) + ("" if i["complete"] else " (incomplete)"),
        _fmt(i["steps"]),
        "-" if seconds is None else f"{seconds:.1f}",
        _threshold_text(i.get("threshold_check")),
    ]


def _threshold_text(check: dict[str, Any] | None) -> str:
    """The calibration's check: the default threshold's false-positive rate on unseen normal images, and how many
    images it rests on where they are too few."""
    if not check or check.get("unseen_fpr") is None:
        return "-"
    text = f"p{check['percentile']:g} flags {check['unseen_fpr']:.1%} (leave-one-out)"
    return text + (" - few images: see genlab info" if check.get("warning") else "")


def groups_shown(entries: list[RunEntry]) -> list[str]:
    """Every group, less the conditional models' own when no run is conditional, with the inspection protocols'
    groups after the anomaly detection group."""
    conditional = any(e.identity["conditional"] for e in entries)
    inspection = sorted({g for e in entries for g, _ in e.cells if g not in GROUPS})
    shown = []
    for group in GROUPS:
        if conditional or group not in CONDITIONAL_GROUPS:
            shown.append(group)
        if group == GROUPS[2]:
            shown += inspection
    return shown


def group_table(entries: list[RunEntry], group: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) for one group: a column per distinct setting, a note where a run has none; a run with neither
    numbers nor a note in the group (one not evaluated on an inspection protocol) has no row."""
    headers: list[str] = []
    for entry in entries:
        headers += [h for g, h in entry.cells if g == group and h not in headers]
    rows = []
    for entry in entries:
        cells = [entry.cells.get((group, h)) for h in headers]
        if group not in entry.notes and all(c is None for c in cells):
            continue
        rows.append([entry.label, *(c or "-" for c in cells), entry.notes.get(group, "")])
    return ["run", *headers, "note"], rows


def _copy_images(entries: list[RunEntry], out: Path) -> dict[str, list[tuple[str, str]]]:
    from genlab.files import atomic_write_bytes

    links: dict[str, list[tuple[str, str]]] = {}
    for entry in entries:
        for src, caption in [*((entry.path / file, caption) for file, caption in IMAGES), *entry.figures]:
            if src.is_file():
                rel = f"images/{entry.label}-{src.name}"
                atomic_write_bytes(out / rel, src.read_bytes())
                links.setdefault(entry.label, []).append((caption, rel))
    return links


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(entries: list[RunEntry], links: dict[str, list[tuple[str, str]]]) -> tuple[str, str]:
    """-> (markdown, html) of the same tables and images."""
    tables = [("Runs", list(IDENTITY_COLUMNS), [identity_row(e) for e in entries])]
    tables += [(group, *group_table(entries, group)) for group in groups_shown(entries)]
    intro = (
        "Each metric column states the settings it was computed under; numbers under different settings "
        "(extractor, reference, N, seed, protocol) are in different columns."
    )
    md = ["# genlab report", "", intro, ""]
    page = [
        "<!doctype html><html><head><meta charset='utf-8'><title>genlab report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
        "td,th{border:1px solid #bbb;padding:4px 8px;font-size:90%}img{max-width:32%;margin-right:1%}"
        "</style></head><body>",
        "<h1>genlab report</h1>",
        f"<p>{html.escape(intro)}</p>",
    ]
    for title, header, rows in tables:
        md += [f"## {title}", "", _md_table(header, rows), ""]
        page += [f"<h2>{html.escape(title)}</h2>", _html_table(header, rows)]
    md.append("## Images")
    page.append("<h2>Images</h2>")
    for entry in entries:
        md += ["", f"### {entry.label}", ""]
        page.append(f"<h3>{html.escape(entry.label)}</h3><p>")
        for caption, rel in links.get(entry.label, []):
            md.append(f"![{entry.label} {caption}]({rel})")
            alt, title = html.escape(f"{entry.label} {caption}"), html.escape(caption)
            page.append(f"<img src='{html.escape(rel)}' alt='{alt}' title='{title}'>")
        page.append("</p>")
    page.append("</body></html>")
    return "\n".join(md) + "\n", "\n".join(page) + "\n"


def _labels(paths: list[Path]) -> list[str]:
    labels = []
    for path in paths:
        label = path.name if path.is_dir() else f"{path.parent.name}-{path.stem}"
        base, i = label, 2
        while label in labels:
            label, i = f"{base}-{i}", i + 1
        labels.append(label)
    return labels


def write_report(
    run_dirs: list[str | os.PathLike], out: str | os.PathLike, settings: ReportSettings = ReportSettings()
) -> dict[str, Any]:
    """Gather (and, if asked, compute the cheap missing) results of runs; write OUT/report.md and OUT/report.html."""
    from genlab.files import atomic_write_bytes

    if not run_dirs:
        raise GenlabError("report: give at least one run directory")
    paths = [Path(p).expanduser() for p in run_dirs]
    out = Path(out)
    entries = [gather_run(p, label, settings) for p, label in zip(paths, _labels(paths))]
    markdown, page = render(entries, _copy_images(entries, out))
    atomic_write_bytes(out / "report.md", markdown.encode())
    atomic_write_bytes(out / "report.html", page.encode())
    return {
        "markdown": str(out / "report.md"),
        "html": str(out / "report.html"),
        "runs": [{"label": e.label, "path": str(e.path), **e.identity} for e in entries],
        "tables": {
            group: dict(zip(("header", "rows"), group_table(entries, group))) for group in groups_shown(entries)
        },
    }
