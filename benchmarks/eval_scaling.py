"""``genlab eval fid`` on 1 and on K torchrun ranks, and through a running server vs from the export directory.

1. Ranks: ``genlab eval fid EXPORT --n N --extractor X`` run as one process and as
   ``torchrun --standalone --nproc_per_node K -m genlab -- eval fid ...``, one thread per rank
   (OMP_NUM_THREADS=1), reference features cached beforehand (a warm-up run), bootstrap off, so the
   time is generating, extracting and the metrics. Wall time of the whole command (interpreter
   and torch start-up included, as a user sees it), the ratio, and the two results' largest
   relative difference.
2. HTTP: the same export served by ``genlab serve`` on a free port; the images per second at
   which ``HttpSource`` draws N samples through ``/batch/decode`` vs ``OnnxSource`` from the
   export directory, in this process, and whether the images are identical.

    python benchmarks/eval_scaling.py --model EXPORT --extractor lenet --n 2000
    python benchmarks/eval_scaling.py --model EXPORT --extractor inception --n 2000 --skip-http
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fid_command(model: str, n: int, extractor: str, ranks: int) -> tuple[float, dict]:
    """(wall seconds, the JSON result) of one ``genlab eval fid`` on ``ranks`` processes."""
    args = ["eval", "fid", model, "--n", str(n), "--extractor", extractor, "--bootstrap", "0", "--no-save", "--json"]
    if ranks == 1:
        command = [sys.executable, "-m", "genlab", *args]
    else:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
        command = [*torchrun, "-m", "genlab", "--", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return seconds, json.loads(done.stdout)


def ranks_table(model: str, n: int, extractor: str, ranks: int) -> list[dict]:
    fid_command(model, n, extractor, 1)  # warm-up: reference features cached, extractor weights in place
    one_s, one = fid_command(model, n, extractor, 1)
    k_s, k = fid_command(model, n, extractor, ranks)
    diff = max(abs(one["values"][m] - k["values"][m]) / max(abs(one["values"][m]), 1e-12) for m in one["values"])
    return [
        {"ranks": 1, "wall_s": round(one_s, 1), "values": one["values"]},
        {"ranks": ranks, "wall_s": round(k_s, 1), "values": k["values"], "speed-up": round(one_s / k_s, 2)},
        {"largest relative difference": f"{diff:.1e}"},
    ]


@contextlib.contextmanager
def served(export: Path):
    import httpx

    from tests.service_fixtures import free_port

    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
    command = [sys.executable, "-m", "genlab", "serve", "--model", str(export), "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k != "GENLAB_API_KEY"}
    proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.25)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def http_table(export: Path, n: int) -> list[dict]:
    import numpy as np
    from genlab.eval.model_source import open_model

    local = open_model(str(export))
    rows, images = [], {}
    with served(export) as url:
        remote = open_model(url, prior_from=str(export))
        for name, source in (("export directory (ONNX Runtime here)", local), ("through genlab serve", remote)):
            source.sample(64, 1, batch_size=64)  # warm-up
            start = time.perf_counter()
            images[name] = source.sample(n, 0, batch_size=256)
            seconds = time.perf_counter() - start
            rows.append({"source": name, "images_per_s": round(n / seconds, 1), "seconds": round(seconds, 2)})
    first, second = images.values()
    rows.append({"identical images": bool(np.array_equal(first, second))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an export directory")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--extractor", default="lenet", choices=("lenet", "inception"))
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--skip-ranks", action="store_true")
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args()
    out = {"cpus": os.cpu_count(), "n": args.n, "extractor": args.extractor}
    if not args.skip_ranks:
        out["ranks"] = ranks_table(args.model, args.n, args.extractor, args.ranks)
    if not args.skip_http:
        out["http"] = http_table(Path(args.model), args.n)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
