"""Benchmark `zsearch inspect` and `zsearch merge` on full-size Z-Image LoRAs.

Two rank-32 LoRAs and one rank-128 LoRA on every Linear of the 30 main layers (8 modules each,
width 3840, ffn 10240), random bf16 tensors in a temporary folder. Each operation runs in its
own Python process so its peak RSS is its own; the figure is also given above the process's
resident size after imports (importing torch alone takes about 0.5 GB here). Targets from issue 2: exact merge of
two rank-32 LoRAs in under 3 s with peak memory under 3x the inputs' size.

    python bench/merge.py [--dim 3840] [--threads 2]
    python bench/merge.py --smoke       # width 128, one thread: tests this script (figures meaningless)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import contextlib, io, json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
from zsearch.cli import main
import zsearch.lora.merge, zsearch.lora.write, zsearch.lora.inspect, zsearch.commands.lora_tools
def rss_kb():  # resident set size now (the peak below is ru_maxrss, the high-water mark)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024
base = rss_kb()
start, cpu = time.perf_counter(), time.process_time()
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main(sys.argv[2:])
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"code": code, "seconds": seconds, "cpu": cpu, "base_mb": base / 1024, "peak_mb": peak / 1024,
                  "stdout": out.getvalue()[-300:]}))
"""


INPUTS = {"a_r32": 32, "b_r32": 32, "c_r128": 128}


def make_inputs(folder: Path, dim: int) -> None:
    """Write the three random LoRAs (run in a child process: this one stays small, see main)."""
    import torch

    from zsearch.lora.blocks import all_modules
    from zsearch.lora.synth import make_random_lora, save_in_format

    layers = [m for m in all_modules() if m.block == "layers"]  # 30 layers x 8 modules
    for seed, (name, rank) in enumerate(INPUTS.items(), start=1):
        lora = make_random_lora(dim, rank, layers, seed=seed, alpha=rank / 2, dtype=torch.bfloat16)
        save_in_format(lora, folder / f"{name}.safetensors", "kohya" if name == "b_r32" else "ai-toolkit")
        del lora


def run_child(argv: list[str], threads: int) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(threads), *map(str, argv)],
                            capture_output=True, text=True, check=True)
    info = json.loads(result.stdout.strip().splitlines()[-1])
    if info["code"] != 0:
        raise SystemExit(f"zsearch {' '.join(map(str, argv))} failed: {result.stderr}")
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=3840)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--make-inputs", type=Path, help=argparse.SUPPRESS)  # internal: the child's job
    parser.add_argument("--smoke", action="store_true", help="width 128, one thread: tests this script")
    args = parser.parse_args()
    if args.smoke:
        args.dim = 128 if args.dim == parser.get_default("dim") else args.dim
        args.threads = 1 if args.threads == parser.get_default("threads") else args.threads
    if args.make_inputs:
        make_inputs(args.make_inputs, args.dim)
        return
    # This process never imports torch: a child's ru_maxrss starts from its parent's resident
    # size at fork (Linux keeps it across exec), so a big parent would inflate every figure.

    with tempfile.TemporaryDirectory(prefix="zsearch-bench-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--make-inputs", str(folder), "--dim", str(args.dim)], check=True)
        files = {name: folder / f"{name}.safetensors" for name in INPUTS}
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, torch threads {args.threads}")
        print(f"inputs written in {time.perf_counter() - start:.1f} s: "
              + ", ".join(f"{p.name} {p.stat().st_size / 2**20:.0f} MiB" for p in files.values()))
        a, b, c = files["a_r32"], files["b_r32"], files["c_r128"]
        two_mb = (a.stat().st_size + b.stat().st_size) / 2**20
        three_mb = two_mb + c.stat().st_size / 2**20
        operations = [
            ("inspect a_r32 b_r32 c_r128", ["inspect", a, b, c], three_mb),
            ("exact merge a_r32 + b_r32", ["merge", a, b, "--ratio", "1", "-o", folder / "e2.safetensors"], two_mb),
            ("exact merge a + b + c_r128", ["merge", a, b, c, "--ratio", "1", "-o", folder / "e3.safetensors"],
             three_mb),
            ("--rank 32 merge a_r32 + b_r32", ["merge", a, b, "--ratio", "1", "--rank", "32",
                                                "-o", folder / "r2.safetensors"], two_mb),
            ("--rank 32 merge a + b + c_r128", ["merge", a, b, c, "--ratio", "1", "--rank", "32",
                                                 "-o", folder / "r3.safetensors"], three_mb),
        ]
        print(f"\n{'operation':34} {'seconds':>8} {'cpu s':>6} {'peak RSS':>10} {'above base':>11} {'inputs':>8} "
              f"{'peak/inputs':>12}")
        results = {}
        for label, argv, inputs_mb in operations:
            info = run_child(argv, args.threads)
            results[label] = (info, inputs_mb)
            above = info["peak_mb"] - info["base_mb"]
            print(f"{label:34} {info['seconds']:8.2f} {info['cpu']:6.2f} {info['peak_mb']:8.0f}MB {above:9.0f}MB {inputs_mb:6.0f}MB "
                  f"{info['peak_mb'] / inputs_mb:11.2f}x")
            if "rank 32" in label:
                print(f"{'':34}   {info['stdout'].strip().split(': ', 1)[-1]}")

        info, inputs_mb = results["exact merge a_r32 + b_r32"]
        print("\ntargets (exact merge of two rank-32 LoRAs):")
        print(f"  time        {info['seconds']:.2f} s / 3 s target = {info['seconds'] / 3:.2f}")
        print(f"  peak RSS    {info['peak_mb']:.0f} MB / {3 * inputs_mb:.0f} MB (3x inputs) = "
              f"{info['peak_mb'] / (3 * inputs_mb):.2f}   (above import baseline: "
              f"{(info['peak_mb'] - info['base_mb']) / (3 * inputs_mb):.2f})")


if __name__ == "__main__":
    main()
