"""Benchmark: attribution throughput and memory on EfficientNet-Lite0 224x224, saliency_jax vs Captum.

Run:
    pip install -e '.[bench]'                         # torch (CPU), efficientnet-lite-pytorch, captum
    python experiments/bench_attribution.py           # batches 1,8,32, best of 3: 20-35 min on 2 cores
    python experiments/bench_attribution.py --quick   # batches 1,2; 4 samples/steps; 1 repeat (~3 min)
    python experiments/bench_attribution.py --batches 32 --methods forward,ig --no-torch   # a subset

Images/s (best of --repeats, after one warm-up call) for forward only, vanilla,
guided backprop, SmoothGrad(25), Integrated Gradients(50) and Grad-CAM (layer
"head"), each also as a ratio to forward-only, plus JAX compile time (first
call minus a steady call). Side by side, in the same run, Captum on the
reference PyTorch model (`efficientnet-lite-pytorch`, same weights), in
subprocesses with glibc's default and tuned malloc (as in bench_model.py; JAX
runs with huge pages, as the saliency-jax command does):

    vanilla     captum.attr.Saliency(abs=False)
    guided      GuidedBackprop. Captum hooks only nn.ReLU modules and this model
                uses nn.ReLU6, so on the stock model GuidedBackprop silently
                returns the plain gradient. Every ReLU6 module is swapped for
                `ReLU6AsReLU`, an nn.ReLU subclass computing relu6, so the hooks
                fire (the torch model is swapped for every method; same outputs).
    SmoothGrad  NoiseTunnel(Saliency), nt_type="smoothgrad", nt_samples=25.
    IG          IntegratedGradients, n_steps=50, method="riemann_middle" (our midpoint rule).
    Grad-CAM    LayerGradCam on the *input* of `_avg_pooling` (attribute_to_layer_input),
                i.e. relu6(bn1(conv_head(.))), the same post-activation head features
                as our "head" (the model's `_swish` module is shared by stem and head,
                so it cannot be hooked), relu_attributions=True, then bilinear upsampling
                to 224x224 as ours does.

Memory: SmoothGrad and IG evaluate `chunk` noisy copies / path points at once,
the largest divisor of the sample count with batch*chunk <= --max-live (160:
about 5 GiB of activations, at ~32 MiB per EfficientNet-Lite0 input gradient),
for both frameworks (JAX chunk_size=chunk; Captum nt_samples_batch_size=chunk,
internal_batch_size=batch*chunk), rather than the library's default chunk_size
(ceil(32 / batch)), so both frameworks keep the same number of gradients live.
Peak RSS (ru_maxrss, each in a fresh subprocess, one call) is reported for IG at
the largest batch: JAX unchunked (chunk_size=50: at batch 32 XLA plans a 51 GiB
buffer), with the library's default chunk_size, and with chunk_size=10; Captum
with internal_batch_size=batch*10. Every subprocess runs under RLIMIT_AS
(--mem-limit-gb, default 80% of available memory) so a run that would not fit
fails cleanly ("out of memory") instead of waking the OOM killer.
Each (framework, method, batch) is a job; workers run lists of jobs; a memory
job always gets its own worker. Progress goes to stderr; a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import best_rate, json_subprocess, reference_torch_net  # noqa: E402

METHODS = ("forward", "vanilla", "guided", "smoothgrad", "ig", "gradcam")
TARGET = 285  # every image attributed to class 285 (Egyptian cat)
SIZE = 224


def _jax_maker():
    import jax
    import numpy as np

    import saliency_jax

    model = saliency_jax.load_model()
    key = jax.random.key(0)

    def make(method, x, n, chunk):  # chunk: int, None (all samples at once) or "default" (the library's)
        x, t = jax.numpy.asarray(x), np.full(len(x), TARGET, np.int32)
        if method == "forward":
            return lambda: jax.block_until_ready(model.logits(x))
        chunking = {} if chunk == "default" else {"chunk_size": n if chunk is None else chunk}
        opts = {"smoothgrad": {"num_samples": n, **chunking}, "ig": {"num_steps": n, **chunking},
                "gradcam": {"layer": "head"}}.get(method, {})
        return lambda: jax.block_until_ready(saliency_jax.attribute(model, x, t, method=method, key=key, **opts))

    return make


def _torch_maker(device: str = "cpu"):
    import torch
    import torch.nn.functional as F
    from captum.attr import (GuidedBackprop, IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel,
                             Saliency)

    warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")  # "hooks set", "requires_grad set"

    class ReLU6AsReLU(torch.nn.ReLU):  # an nn.ReLU, so Captum's GuidedBackprop hooks fire
        def forward(self, x):
            return F.relu6(x)

    net = reference_torch_net().to(device)
    for parent in list(net.modules()):
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.ReLU6):
                setattr(parent, name, ReLU6AsReLU())

    def make(method, x, n, chunk):
        x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device)
        sigma = 0.15 * float(x.max() - x.min())  # SmoothGrad noise as ours: 15% of the value range
        calls = {
            "forward": torch.no_grad()(lambda: net(x)),
            "vanilla": lambda: Saliency(net).attribute(x, target=TARGET, abs=False),
            "guided": lambda: GuidedBackprop(net).attribute(x, target=TARGET),
            "smoothgrad": lambda: NoiseTunnel(Saliency(net)).attribute(
                x, nt_type="smoothgrad", nt_samples=n, nt_samples_batch_size=chunk, stdevs=sigma,
                target=TARGET, abs=False),
            "ig": lambda: IntegratedGradients(net).attribute(
                x, target=TARGET, n_steps=n, method="riemann_middle",
                internal_batch_size=None if chunk is None else len(x) * chunk),
            "gradcam": lambda: LayerAttribution.interpolate(
                LayerGradCam(net, net._avg_pooling).attribute(
                    x, target=TARGET, attribute_to_layer_input=True, relu_attributions=True),
                (SIZE, SIZE), "bilinear"),
        }
        if device == "cpu":
            return calls[method]
        return lambda: (calls[method](), torch.cuda.synchronize())  # time the work, not its launch

    return make


def _error(e: BaseException) -> str:
    m = re.search(r"allocat\w* (\d+) bytes", str(e))
    return f"out of memory ({int(m.group(1)) / 2**30:.1f} GiB allocation)" if m else f"{type(e).__name__}: {e}"[:100]


def _maxrss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_jobs(framework: str, jobs: list[dict], torch_device: str = "cpu") -> list[dict]:
    """Runs each job {method, batch, n, chunk, repeats, memory} in this process."""
    import numpy as np

    make = _jax_maker() if framework == "jax" else _torch_maker(torch_device)
    out = []
    for job in jobs:
        b = job["batch"]
        x = np.random.default_rng(0).normal(size=(b, SIZE, SIZE, 3)).astype(np.float32)
        try:
            f = make(job["method"], x, job["n"], job["chunk"])
            before, t = _maxrss_gib(), time.perf_counter()
            f()
            first = time.perf_counter() - t
            if job["memory"]:
                res = {"rss_gib": _maxrss_gib(), "before_gib": before, "s": first}
            else:
                rate = best_rate(f, b, job["repeats"])
                res = {"rate": rate, "compile_s": first - b / rate}
        except Exception as e:  # report and go on with the next job
            res = {"error": _error(e)}
        shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in res.items()}
        print(f"  [{framework}] {job['method']} batch {b}: {shown}", file=sys.stderr, flush=True)
        out.append(res)
    return out


def _worker(framework: str, jobs: list[dict], mem_limit_gb: float, allocator: str,
            torch_device: str = "cpu") -> list[dict]:
    args = ["--worker", framework, "--mem-limit-gb", str(mem_limit_gb), "--torch-device", torch_device,
            json.dumps(jobs)]
    out = json_subprocess(__file__, args, allocator=allocator, stderr=None)  # stderr (progress) passes through
    return [out] * len(jobs) if isinstance(out, dict) else out


def _chunk(n: int, batch: int, max_live: int) -> int:
    """Largest divisor of n with batch * chunk <= max_live (at least 1): no padded samples."""
    return max([d for d in range(1, n + 1) if n % d == 0 and batch * d <= max_live], default=1)


def _available_gib() -> float:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable")) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--methods", default=",".join(METHODS), help="subset of " + ",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=25, help="SmoothGrad noisy copies")
    parser.add_argument("--steps", type=int, default=50, help="Integrated Gradients path points")
    parser.add_argument("--max-live", type=int, default=160, help="cap on batch*chunk for SmoothGrad/IG")
    parser.add_argument("--mem-chunk", type=int, default=10, help="chunk of the chunked IG memory runs")
    parser.add_argument("--mem-limit-gb", type=float, default=round(0.8 * _available_gib(), 1),
                        help="RLIMIT_AS of each worker; 0: none (needed on GPUs, whose drivers map huge ranges)")
    parser.add_argument("--torch-device", default="cpu", help="where Captum runs: cpu or cuda")
    parser.add_argument("--torch-allocators", default="default,tuned", choices=("default,tuned", "default", "tuned"),
                        help="glibc malloc settings Captum runs under (one subprocess each)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("jobs", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.mem_limit_gb > 0:
            limit = int(args.mem_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(json.dumps(run_jobs(args.worker, json.loads(args.jobs), args.torch_device)))
        return
    if args.quick:
        args.batches, args.repeats, args.samples, args.steps, args.mem_chunk = "1,2", 1, 4, 4, 2
    batches = [int(b) for b in args.batches.split(",")]
    methods = [m for m in METHODS if m in args.methods.split(",")]
    n_of = {"smoothgrad": args.samples, "ig": args.steps}

    def job(method, batch, chunk="auto", memory=False):
        n = n_of.get(method, 0)
        if chunk == "auto":
            chunk = _chunk(n, batch, args.max_live) if n else None
        return {"method": method, "batch": batch, "n": n, "chunk": chunk, "repeats": args.repeats, "memory": memory}

    load_start = os.getloadavg()[0]
    jobs = [job(m, b) for b in batches for m in methods]
    frameworks = {"JAX": ("jax", "huge pages")}
    if not args.no_torch:
        named = {"default": "Captum", "tuned": "Captum, tuned malloc"}
        frameworks.update({named[a]: ("torch", a) for a in args.torch_allocators.split(",")})
    rates = {}
    for name, (fw, allocator) in frameworks.items():
        print(f"{name}: {len(jobs)} jobs", file=sys.stderr, flush=True)
        rates[name] = dict(zip(((j["method"], j["batch"]) for j in jobs),
                               _worker(fw, jobs, args.mem_limit_gb, allocator, args.torch_device)))

    import jax

    versions = f"jax {jax.__version__} on {jax.devices()[0].device_kind}"
    if not args.no_torch:
        import captum
        import torch
        versions += (f", torch {torch.__version__} ({torch.get_num_threads()} threads) on {args.torch_device}, "
                     f"captum {captum.__version__}")
    print(f"\nEfficientNet-Lite0 {SIZE}x{SIZE}, {os.cpu_count()} cores; {versions}; best of {args.repeats}; "
          f"SmoothGrad/IG chunk = largest divisor of n with batch*chunk <= {args.max_live}; "
          f"1-min load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at the end "
          f"(above the core count, other processes share the cores and the timings are noisy)\n")
    names = {"forward": ("forward only", "net(x) under no_grad"), "vanilla": ("vanilla", "Saliency"),
             "guided": ("guided", "GuidedBackprop (ReLU6AsReLU)"),
             "smoothgrad": (f"SmoothGrad({args.samples})", "NoiseTunnel(Saliency)"),
             "ig": (f"IG({args.steps})", "IntegratedGradients"), "gradcam": ('Grad-CAM "head"', "LayerGradCam")}

    def cell(r, fwd):
        if "error" in r:
            return r["error"]
        return f"{r['rate']:.1f}" + (f" ({r['rate'] / fwd['rate']:.2f}x)" if "rate" in fwd else "")

    print("Images/s (ratio to forward-only of the same framework)\n")
    cols = [(b, name) for b in batches for name in rates]
    print("| method (JAX / Captum) | " + " | ".join(f"{n} b={b}" for b, n in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for m in methods:
        cells = [cell(rates[n][m, b], rates[n].get(("forward", b), {})) for b, n in cols]
        print(f"| {' / '.join(names[m]) if not args.no_torch else names[m][0]} | " + " | ".join(cells) + " |")

    print("\nJAX compile time, s (first call minus a steady call)"
          + ("" if args.no_torch else f"; JAX speed-up over {list(rates)[-1]}") + "\n")
    head = [f"compile b={b}" for b in batches] + ([] if args.no_torch else [f"JAX/Captum b={b}" for b in batches])
    print("| method | " + " | ".join(head) + " |")
    print("|---" * (len(head) + 1) + "|")
    for m in methods:
        cells = [r.get("error") or f"{r['compile_s']:.1f}" for r in (rates["JAX"][m, b] for b in batches)]
        if not args.no_torch:
            for b in batches:
                jx, tc = rates["JAX"][m, b], rates[list(rates)[-1]][m, b]
                cells.append(f"{jx['rate'] / tc['rate']:.2f}x" if "rate" in jx and "rate" in tc else "n/a")
        print(f"| {names[m][0]} | " + " | ".join(cells) + " |")

    if args.no_memory:
        return
    b, c = max(batches), args.mem_chunk
    runs = {f"JAX IG({args.steps}), unchunked (chunk_size={args.steps})": ("jax", job("ig", b, None, True)),
            f"JAX IG({args.steps}), default chunk_size": ("jax", job("ig", b, "default", True)),
            f"JAX IG({args.steps}), chunk_size={c}": ("jax", job("ig", b, c, True))}
    if not args.no_torch:
        runs[f"Captum IG({args.steps}), internal_batch_size={b * c}"] = ("torch", job("ig", b, c, True))
    print(f"\nPeak memory at batch {b}: ru_maxrss of a fresh process (one call, compile included), "
          f"RLIMIT_AS {args.mem_limit_gb} GiB\n")
    print("| run | peak RSS GiB | before the call GiB | call s |\n|---|---|---|---|")
    for label, (fw, j) in runs.items():
        print(f"{label}: memory", file=sys.stderr, flush=True)
        allocator = "huge pages" if fw == "jax" else "tuned"
        r = _worker(fw, [j], args.mem_limit_gb, allocator, args.torch_device)[0]
        print(f"| {label} | " + (f"{r['error']} | | |" if "error" in r else
                                   f"{r['rss_gib']:.2f} | {r['before_gib']:.2f} | {r['s']:.1f} |"), flush=True)


if __name__ == "__main__":
    main()
