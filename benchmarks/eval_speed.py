"""Images/s of ``genlab eval fid`` vs torch-fidelity's own command line, on the same images.

Ours: :func:`eval.fid.compute_fid` end to end (sample N images from the model, extract
features, statistics, metrics; reference statistics cached). Theirs: the same N generated images
written once as PNG files, then torch-fidelity on that folder against the same reference images
(also PNG, also cached): in process (``calculate_metrics``) and as its command line
(``python -m torch_fidelity.fidelity``, run through genlab's torchvision fix, in a subprocess,
so interpreter start-up and imports count, as they would for a user). Same N, same extractor,
same weights, medians of ``--repeats`` runs, all in one process run.

    python benchmarks/eval_speed.py                      # Inception, N=32, a tiny VAE trained on the fly
    python benchmarks/eval_speed.py --extractor lenet --n 500 --model runs/vae
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLI_WRAPPER = (
    "import sys; from genlab.torchvision_fix import import_torchvision; import_torchvision(); "
    "from torch_fidelity.fidelity import main; sys.argv[0] = 'fidelity'; main()"
)


def tiny_model(folder: Path) -> Path:
    from genlab.training.loop import train

    from genlab.config import TrainConfig

    train(
        "vae",
        {"width": 8, "hidden": 32, "latent_dim": 8},
        TrainConfig(dataset="mnist-5k", epochs=1, batch_size=64),
        folder,
    )
    return folder / "last.pt"


def write_pngs(images, folder: Path) -> Path:
    from genlab.files import atomic_write_bytes
    from genlab.imageio import encode_png

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        atomic_write_bytes(folder / f"{i:06d}.png", encode_png(image.transpose(1, 2, 0)))
    return folder


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint / run dir / export dir (default: train a tiny VAE on mnist-5k)")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--extractor", choices=("inception", "lenet"), default="inception")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from genlab.torchvision_fix import import_torchvision

    import_torchvision()
    import torch_fidelity
    from genlab.eval.extractors import resolve_extractor
    from genlab.eval.fid import compute_fid, parse_reference, reference_subset
    from genlab.eval.model_source import open_model

    from genlab.cache import cache_dir
    from genlab.data import load_split

    work = Path(tempfile.mkdtemp(prefix="genlab-eval-speed-"))
    model = args.model or str(tiny_model(work / "run"))
    source = open_model(model, "cpu")
    dataset, split = parse_reference(None, source.dataset)
    channels, height, _ = source.image_shape
    reference_data = load_split(dataset, split, image_size=height, channels=channels)
    reference = reference_data.images.numpy()[reference_subset(len(reference_data), args.n)]
    fx = resolve_extractor(args.extractor, dataset, source.image_shape)
    common = dict(
        n=args.n, metrics=("fid",), batch_size=args.batch_size, device="cpu", extractor=args.extractor, progress=False
    )

    def ours():
        return compute_fid(model, **common)

    first = ours()  # warms the reference cache (and the lenet weights)
    generated = write_pngs(source.sample(args.n, seed=0, batch_size=args.batch_size), work / "generated")
    ref_pngs = write_pngs(reference, work / "reference")
    tf_cache = str(cache_dir("benchmark-torch-fidelity"))
    ref_name = f"bench-{first['reference_cache']}"
    tf_kwargs = dict(
        input1=str(generated),
        input2=str(ref_pngs),
        input2_cache_name=ref_name,
        cache_root=tf_cache,
        cuda=False,
        fid=True,
        batch_size=args.batch_size,
        feature_extractor=fx.name,
        feature_extractor_weights_path=fx.weights_path,
        save_cpu_ram=True,
        verbose=False,
    )

    def theirs_in_process():
        return torch_fidelity.calculate_metrics(**tf_kwargs)

    cli = [
        sys.executable,
        "-c",
        CLI_WRAPPER,
        "--input1",
        str(generated),
        "--input2",
        str(ref_pngs),
        "--cpu",
        "--fid",
        "--json",
        "--silent",
        "--save-cpu-ram",
        "--batch-size",
        str(args.batch_size),
        "--feature-extractor",
        fx.name,
        "--feature-extractor-weights-path",
        fx.weights_path,
        "--input2-cache-name",
        ref_name,
        "--cache-root",
        tf_cache,
    ]

    def theirs_cli():
        done = subprocess.run(
            cli, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        if done.returncode != 0:
            raise SystemExit(f"torch-fidelity CLI failed: {done.stderr.strip().splitlines()[-1:]}")
        return json.loads(done.stdout[done.stdout.index("{") :])

    rows = []
    check_ours = ours()["values"]
    rows.append(("genlab compute_fid (sample + features + stats)", median_seconds(ours, args.repeats), check_ours))
    check_in = theirs_in_process()
    rows.append(
        (
            "torch-fidelity calculate_metrics(PNG folder)",
            median_seconds(theirs_in_process, args.repeats),
            {"fid": check_in["frechet_inception_distance"]},
        )
    )
    if fx.choice == "inception":  # the subprocess cannot see extractors registered in this process
        check_cli = theirs_cli()
        rows.append(
            (
                "torch-fidelity CLI (subprocess, PNG folder)",
                median_seconds(theirs_cli, args.repeats),
                {"fid": check_cli["frechet_inception_distance"]},
            )
        )

    base = rows[0][1]
    report = {
        "n": args.n,
        "extractor": fx.name,
        "weights": fx.weights_identity,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "model": model,
        "rows": [
            {
                "what": w,
                "median_s": round(s, 3),
                "images_per_s": round(args.n / s, 2),
                "ours_speedup": round(s / base, 2),
                "values": v,
            }
            for w, s, v in rows
        ],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"N={args.n} generated vs {len(reference)} reference images ({dataset}:{split}, cached), extractor {fx.name} "
        f"(weights {fx.weights_identity}), batch {args.batch_size}, median of {args.repeats}"
    )
    print(f"{'what':50s} {'median s':>9s} {'img/s':>8s} {'ours x':>7s}  value")
    for row in report["rows"]:
        value = ", ".join(f"{k} {v:.4g}" for k, v in row["values"].items())
        print(
            f"{row['what']:50s} {row['median_s']:9.3f} {row['images_per_s']:8.1f} {row['ours_speedup']:7.2f}  {value}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
