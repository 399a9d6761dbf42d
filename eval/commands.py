"""Command-line wiring of the evaluation tools: ``genlab eval ...``, ``genlab report``, ``genlab sweep``.

Each command is a short function over importable code in ``eval/``; heavy imports (torch,
scikit-learn, bentoml) happen inside the command so ``genlab --help`` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any

from genlab.eval.fid_command import add_parser as add_fid_parser

from genlab.console import Parser, print_result
from genlab.devices import DEVICE_HELP
from genlab.errors import GenlabError
from genlab.families import FAMILY_NAMES


def _float_list(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _name_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _cmd_anomaly(args: argparse.Namespace) -> int:
    import sys

    from genlab.eval.anomaly import evaluate_anomaly, inspection_dataset, result_name, save_inspection, summary_line
    from genlab.eval.http_source import is_url
    from genlab.eval.inspection import evaluate_inspection
    from genlab.eval.model_source import open_model
    from genlab.eval.results import save_result

    if is_url(args.model) and args.save:
        raise GenlabError("--save keeps a result beside its run directory; a served model (a URL) has none")
    source = open_model(args.model, served_model=args.served_model) if is_url(args.model) else open_model(args.model)
    inspection = inspection_dataset(source, args.dataset, args.normal_class, args.ood)
    if inspection is not None:
        measured = evaluate_inspection(source, inspection, args.data_dir, args.percentile, args.split, args.batch_size)
        result, text = measured.to_json(), measured.table()
        if args.save:
            result.update(save_inspection(measured, _run_dir_of(args.model)))
            if result["worst_figure"]:
                text += f"\nhighest-scored images and their maps: {result['worst_figure']}"
    else:
        result = evaluate_anomaly(
            source,
            dataset=args.dataset,
            normal_class=args.normal_class,
            ood=args.ood,
            split=args.split,
            data_dir=args.data_dir,
            percentile=args.percentile,
            batch_size=args.batch_size,
        )
        text = summary_line(result)
        if args.save:
            result["saved_to"] = str(save_result(_run_dir_of(args.model), result_name(result), result))
    for warning in result["warnings"]:
        print(f"genlab eval anomaly: warning: {warning}", file=sys.stderr)
    print_result(result, args.json, lambda _: text)
    return 0


def _cmd_translation(args: argparse.Namespace) -> int:
    from genlab.eval.results import save_result
    from genlab.eval.translation import evaluate_translation, result_name, summary_line

    result = evaluate_translation(
        args.model,
        dataset=args.dataset,
        split=args.split,
        data_dir=args.data_dir,
        fractions=tuple(args.shifts),
        n=args.n,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    if args.save:
        result["saved_to"] = str(save_result(_run_dir_of(args.model), result_name(result), result))
    print_result(result, args.json, summary_line)
    return 0


def _cmd_class_fidelity(args: argparse.Namespace) -> int:
    from genlab.eval.class_fidelity import measure, result_name, summary_line
    from genlab.eval.results import save_result

    result = measure(
        args.model, n=args.n, seed=args.seed, data_dir=args.data_dir, batch_size=args.batch_size, device=args.device
    )
    if args.save:
        result["saved_to"] = str(save_result(_run_dir_of(args.model), result_name(result), result))
    print_result(result, args.json, summary_line)
    return 0


def _run_dir_of(model: str) -> str:
    """Results are kept beside the model: its run / export directory, or the checkpoint's folder."""
    from pathlib import Path

    path = Path(model)
    return str(path if path.is_dir() else path.parent)


def _cmd_report(args: argparse.Namespace) -> int:
    from genlab.eval.report import ReportSettings, write_report

    settings = ReportSettings(compute=not args.no_compute, data_dir=args.data_dir, n=args.n, fidelity_n=args.fidelity_n)
    result = write_report(args.runs, args.out, settings)
    print_result(result, args.json, lambda r: f"report of {len(r['runs'])} run(s): {r['markdown']} and {r['html']}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from genlab.eval.sweep import SweepSettings, run_sweep

    settings = SweepSettings(
        families=tuple(args.families),
        lrs=tuple(args.lrs),
        dataset=args.dataset,
        data_dir=args.data_dir,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        seed=args.seed,
        normal_class=args.normal_class,
        overrides=tuple(args.set or ()),
        device=args.device,
        translate_experiment=args.translate_experiment,
        n=args.n,
    )
    result = run_sweep(settings, args.out)
    print_result(
        result, args.json, lambda r: f"sweep of {len(r['runs'])} run(s) in {r['out']}; report {r['report']['markdown']}"
    )
    return 0


def _cmd_serve_jobs(args: argparse.Namespace) -> int:
    import os
    import sys

    from genlab.eval.jobs_service import MAX_QUEUED_ENV, STATE_ENV, JobsSettings
    from genlab.eval.jobs_supervisor import serve

    env = dict(os.environ)
    if args.models:
        env["GENLAB_EVAL_MODELS"] = args.models
    if args.state_dir:
        env[STATE_ENV] = args.state_dir
    if args.max_queued is not None:
        env[MAX_QUEUED_ENV] = str(args.max_queued)
    env[STATE_ENV] = str(JobsSettings.from_env(env).state_dir)
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "genlab.eval.jobs_service:EvalJobs",
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    return serve(command, env)


def register(sub: Any) -> None:
    """Add ``eval`` (anomaly, translation, fid, class-fidelity, serve-jobs), ``report`` and ``sweep``."""
    p = sub.add_parser(
        "eval",
        help="evaluate a model: FID/KID, class fidelity, anomaly AUROC, translation robustness; the jobs service",
    )
    eval_sub = p.add_subparsers(dest="eval_command", required=True, parser_class=Parser)
    _add_anomaly(eval_sub)
    _add_translation(eval_sub)
    add_fid_parser(eval_sub)
    _add_class_fidelity(eval_sub)
    _add_serve_jobs(eval_sub)
    _add_report(sub)
    _add_sweep(sub)


def _add_anomaly(eval_sub: Any) -> None:
    a = eval_sub.add_parser(
        "anomaly",
        help="AUROC / AUPRC and TPR / FPR at the calibrated threshold, per score",
        description="One-class protocol (normal = class K of the test split, anomalies = the other "
        "classes) or --ood DATASET (anomalies = that dataset's test split). An inspection set (--dataset "
        "mvtec:PATH or inspect:PATH) is judged on its test split, good images against defective ones: per image "
        "(AUROC, F1-max, AUROC per defect type, FPR / TPR at the calibrated threshold) and, where it has masks, "
        "per pixel of the anomaly map (AUROC, F1-max, AUPRO to FPR 0.3).",
    )
    a.add_argument(
        "model", help="checkpoint, run directory, ONNX export directory, or http://HOST:PORT of a genlab serve"
    )
    a.add_argument("--model", dest="served_model", metavar="NAME", help="MODEL is a URL: the served model's name")
    a.add_argument("--dataset", help="dataset of the normal images (default: the model's)")
    a.add_argument(
        "--normal-class",
        type=int,
        metavar="K",
        help="normal class (default: the class a one-class run was trained on; 0 for an inspection set)",
    )
    a.add_argument("--ood", metavar="DATASET", help="score this dataset's test split as the anomalies")
    a.add_argument("--split", default="test", choices=("train", "val", "test"))
    a.add_argument("--data-dir", default="data")
    a.add_argument(
        "--percentile", type=float, default=99.0, help="calibrated threshold, percentile of normal scores (99)"
    )
    a.add_argument("--batch-size", type=int, default=256)
    a.add_argument(
        "--save",
        action="store_true",
        help="keep the result beside the model (RUN_DIR/eval/) for genlab report; on an inspection set with anomaly "
        "maps, also a figure of the highest-scored defective and good images with their maps",
    )
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_cmd_anomaly)


def _add_translation(eval_sub: Any) -> None:
    t = eval_sub.add_parser(
        "translation", help="reconstruction error of held-out images shifted by 0..10%% (VAE, VAE-GAN)"
    )
    t.add_argument("model", help="checkpoint, run directory or ONNX export directory of an encoder model")
    t.add_argument("--dataset", help="default: the model's")
    t.add_argument("--split", default="test", choices=("train", "val", "test"))
    t.add_argument("--data-dir", default="data")
    t.add_argument(
        "--shifts", type=_float_list, default=[0.0, 0.025, 0.05, 0.075, 0.1], help="fractions of the image size"
    )
    t.add_argument("--n", type=int, default=500, help="held-out images (500)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--save", action="store_true")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_cmd_translation)


def _add_class_fidelity(eval_sub: Any) -> None:
    c = eval_sub.add_parser(
        "class-fidelity",
        help="conditional models: share of samples classified as the class asked for",
        description="Samples for balanced, seeded labels, classified by the reference classifier (the "
        "LeNet genlab trains on the dataset's labels); printed beside that classifier's "
        "accuracy on the test split, the most the share can show.",
    )
    c.add_argument(
        "model", help="checkpoint, run directory, export directory or BentoML model tag of a conditional model"
    )
    c.add_argument("--n", type=int, default=1000, help="samples (1000)")
    c.add_argument("--seed", type=int, default=0, help="seed of the labels and latents")
    c.add_argument("--data-dir", default="data")
    c.add_argument("--batch-size", type=int, default=256)
    c.add_argument("--device", default="auto", help=DEVICE_HELP)
    c.add_argument(
        "--save", action="store_true", help="keep the result beside the model (RUN_DIR/eval/) for genlab report"
    )
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_cmd_class_fidelity)


def _add_serve_jobs(eval_sub: Any) -> None:
    s = eval_sub.add_parser(
        "serve-jobs",
        help="serve the evaluation-jobs HTTP service (durable jobs: progress, cancel, a bounded queue)",
        description="Jobs and their results are kept in STATE_DIR/jobs.sqlite3 and survive a restart; a job that "
        "was running when the service died starts over (once, by default) or is marked failed with the reason. "
        "With GENLAB_API_KEY set, every route but the health probes needs 'Authorization: Bearer <key>'.",
    )
    s.add_argument(
        "--state-dir", help="where the jobs are kept (default: $GENLAB_JOBS_STATE or ~/.local/state/genlab/jobs)"
    )
    s.add_argument("--max-queued", type=int, help="jobs that may wait before a submission gets 429 (default 16)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    s.add_argument("--port", type=int, default=3001)
    s.add_argument("--models", help="models root the service may evaluate (default: $GENLAB_EVAL_MODELS or ./runs)")
    s.set_defaults(func=_cmd_serve_jobs)


def _add_report(sub: Any) -> None:
    r = sub.add_parser(
        "report",
        help="write report.md and report.html comparing runs",
        description="Gathers saved evaluation results (RUN_DIR/eval/*.json) and computes the cheap missing "
        "ones (reconstruction error, translation, anomaly AUROC; a conditional run's class "
        "fidelity and its grid of samples, one row per class); FID is never computed here.",
    )
    r.add_argument("runs", nargs="+", metavar="RUN_DIR")
    r.add_argument("--out", required=True, metavar="DIR")
    r.add_argument("--no-compute", action="store_true", help="only show saved results")
    r.add_argument("--data-dir", default="data")
    r.add_argument("--n", type=int, default=500, help="held-out images for the translation experiment (500)")
    r.add_argument("--fidelity-n", type=int, default=1000, help="samples for a conditional run's class fidelity (1000)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_cmd_report)


def _add_sweep(sub: Any) -> None:
    w = sub.add_parser(
        "sweep",
        help="learning-rate sweep over model families, then the report",
        description="Trains each (family, lr) into OUT/<family>-lr<lr>/ (finished runs are kept, interrupted "
        "ones resumed), runs the cheap evaluations and writes OUT/report/.",
    )
    w.add_argument("--families", type=_name_list, default=list(FAMILY_NAMES), help=f"default {','.join(FAMILY_NAMES)}")
    w.add_argument("--lrs", type=_float_list, default=[1.5e-4, 3e-4, 6e-4])
    w.add_argument("--dataset", default="mnist-5k")
    w.add_argument("--data-dir", default="data")
    w.add_argument("--epochs", type=int, default=5)
    w.add_argument("--max-steps", type=int)
    w.add_argument("--batch-size", type=int)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument(
        "--normal-class", type=int, metavar="K", help="train one-class runs (adds anomaly AUROC to the report)"
    )
    w.add_argument("--device", default="auto", help=DEVICE_HELP)
    w.add_argument("--set", action="append", metavar="KEY=VALUE", help="passed to every run (see genlab train --help)")
    w.add_argument(
        "--translate-experiment",
        action="store_true",
        help="also measure reconstruction error on inputs shifted by 2.5..10%% (VAE, VAE-GAN)",
    )
    w.add_argument("--n", type=int, default=500, help="held-out images for reconstruction error (500)")
    w.add_argument("--out", required=True, metavar="DIR")
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=_cmd_sweep)
