"""The GPU check's tables (benchmarks/gpu_check.sh writes the raw results to OUT; this prints them).

    python benchmarks/gpu_report.py OUT
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

TARGETS = {"srresnet": 200.0, "rrdb": 25.0}  # it/s of a real bf16 job on an H200 (issue 25)
FULL_ITERATION_TARGET = 1.15


def _json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _lines(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def degradation(out: Path) -> None:
    print((out / "degrade.md").read_text() if (out / "degrade.md").exists() else "| degradation | not run |")


def ceiling(out: Path) -> None:
    rows = [r for r in _lines(out / "ceiling.jsonl") if "backbone" in r]
    print("\n### The ceiling (../shared/gpu/graph_ceiling.py, same machine, same run)\n")
    if not rows:
        print("not run (graph_ceiling.py not found at $CEILING, or on the CPU)")
        return
    print("| backbone | batch | precision | channels_last | one CUDA graph | it/s | images/s | TFLOPS |")
    print("|---|---:|---|---|---|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['backbone']} | {r['batch']} | {r['precision']} | - | {r['cuda_graph']} | - | - | {r['error']} |")
            continue
        print(f"| {r['backbone']} | {r['batch']} | {r['precision']} | {r['channels_last']} | {r['cuda_graph']} | "
              f"{r['it_s']:.1f} | {r['img_s']:.0f} | {r['tflops']:.1f} |")


def matrix(out: Path) -> list[dict]:
    rows = _json(out / "matrix.json", []) + _json(out / "matrix_tf.json", [])
    print("\n### The engine: model step and full iteration (benchmarks/bench_train.py --matrix)\n")
    print("| backbone | precision | channels_last | compile | cuda_graph | it/s | peak GB | note |")
    print("|---|---|---|---|---|---:|---:|---|")
    for r in rows:
        it_s = f"{r['it_s']:.2f}" if r.get("it_s") else "-"
        peak = f"{r['peak_gb']:.2f}" if r.get("peak_gb") else "-"
        print(f"| {r['backbone']} | {r['precision']} | {r['channels_last']} | {r['compile']} | "
              f"{r.get('cuda_graph', False)} | {it_s} | {peak} | {r['note']} |")
    return rows


def engine(out: Path) -> None:
    rows = _json(out / "engine.json", [])
    print("\n### Equivalence, the official outputs after capture, where an eager iteration goes "
          "(benchmarks/gpu_engine.py)\n")
    for r in rows:
        if "error" in r:
            print(f"- {r['check']}: **failed** {r['error']}")
        elif r["check"] == "equivalence":
            print(f"- equivalence, SRResNet + dropout, bf16 + channels_last, {r['steps']} steps on the same batches: "
                  f"loss graph vs eager max relative gap {r['max_rel_loss_gap']:.2e} (last {r['last_rel_loss_gap']:.2e}; "
                  f"within bf16's 2e-2: {r['loss_within_bf16_tolerance']}), final weights relative gap "
                  f"{r['weights_rel_gap']:.2e}; two graphed runs, one seed: weights equal {r['graph_runs_equal']} "
                  f"(max abs gap {r['graph_runs_max_abs_gap']:.2e}), losses equal {r['graph_runs_same_losses']}")
        elif r["check"] == "official":
            parts = [f"{b} {v['cases']} cases eager {v['eager']:.1e}"
                     + (f" graph {v['graph']:.1e}" if v["graph"] is not None else "")
                     for b, v in r["per_backbone"].items()]
            print(f"- official outputs on {r['device']} (fp32, TF32 off; max abs gap, CPU bound 5e-6): "
                  + "; ".join(parts))
        elif r["check"] == "profile":
            extra = ", ".join(f"{k} {v:.0f} µs" for k, v in r["loop_extra_self_cpu_us_per_it"])
            print(f"- profile, SRResNet fp32 eager: bare step {r['bare_ms_per_it']:.2f} ms/it, the loop "
                  f"{r['loop_ms_per_it']:.2f} ms/it; host time the loop adds per iteration: {extra or 'none'}")


def jobs(out: Path, matrix_rows: list[dict]) -> None:
    print("\n### Real jobs (python -m sweeper, train + evaluation)\n")
    print("| job | iterations | train it/s | last logged it/s | peak GPU GB | train s | eval s | wall s | note |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    speeds = {}
    for j in _lines(out / "jobs.jsonl"):
        name = j["job"]
        results = list((out / "jobs" / name).glob("sweeps/*/*/results.json")) + \
            list((out / "jobs" / name).glob("runs/*/results.json"))
        log = (out / f"{name}.log").read_text(errors="replace") if (out / f"{name}.log").exists() else ""
        logged = re.findall(r"iter (\d+)/(\d+) .* ([\d.]+) it/s", log)
        peak = re.findall(r"peak GPU memory ([\d.]+) GB", log)
        fell_back = "CUDA graph of the training step not used" in log
        if not results:
            print(f"| {name} | - | - | - | - | - | - | {j['wall_s']} | no results (rc {j['rc']}; see {name}.log) |")
            continue
        res = json.loads(results[0].read_text())
        n = res["config"]["train"]["iterations"]
        speeds[name] = n / res["train_seconds"]
        note = "fell back to eager (see log)" if fell_back else ""
        print(f"| {name} | {n} | {speeds[name]:.1f} | {logged[-1][2] if logged else '-'} | "
              f"{peak[-1] if peak else '-'} | {res['train_seconds']:.1f} | {res['eval_seconds']:.1f} | {j['wall_s']} | "
              f"{note} |")
    print()
    for backbone, target in TARGETS.items():
        graph, eager = speeds.get(f"{backbone}-graph"), speeds.get(f"{backbone}-eager")
        if graph:
            print(f"- {backbone}: {graph:.1f} it/s with the defaults (target >= {target:g} on an H200: "
                  f"{'met' if graph >= target else 'NOT met'})" + (f", {graph / eager:.2f}x the eager loop as before"
                                                                   if eager else ""))
    for r in matrix_rows:
        m = re.search(r"([\d.]+)x the model step", r.get("note", ""))
        if m and "the defaults" in r["note"]:
            ratio = float(m.group(1))
            print(f"- {r['backbone']} {r['precision']}: full iteration {ratio:.2f}x the model step "
                  f"(target <= {FULL_ITERATION_TARGET}: {'met' if ratio <= FULL_ITERATION_TARGET else 'NOT met'})")
    for backbone in ("swinir", "hat"):
        got = {(r["precision"], r["channels_last"], r.get("cuda_graph")): r["it_s"] for r in matrix_rows
               if r["backbone"] == backbone and r.get("it_s") and "full iteration" not in r["note"]}
        fp32, bf16 = got.get(("fp32", False, True)), got.get(("bf16", True, True))
        if fp32 and bf16:
            print(f"- {backbone}: bf16 + channels_last {bf16:.2f} it/s vs fp32 {fp32:.2f} (graphed): "
                  f"{'faster' if bf16 > fp32 else 'NOT faster'}")


def share(out: Path) -> None:
    shares = _lines(out / "share.jsonl")
    if not shares:
        return
    print("\n### jobs_per_gpu\n\n| k | total it/s | sweep wall s |\n|---:|---:|---:|")
    for s in shares:
        runs = [json.loads(p.read_text()) for p in (out / f"share{s['k']}").glob("sweeps/*/*/results.json")]
        total = sum(r["config"]["train"]["iterations"] / r["train_seconds"] for r in runs)
        print(f"| {s['k']} | {total:.2f} ({len(runs)}/{s['k']} jobs) | {s['wall_s']} |")


def fused(out: Path) -> None:
    modes = _lines(out / "fused.jsonl")
    if not modes:
        return
    print("\n### Fused groups: SRResNet seeds at the paper's batch (16 x 32^2 LR)\n")
    print("| mode | jobs done | training images/s in total | sweep wall s |\n|---|---:|---:|---:|")
    for m in modes:
        runs = [json.loads(p.read_text()) for p in (out / f"fused_{m['mode']}").glob("sweeps/*/*/results.json")]
        if not runs:
            print(f"| {m['mode']} | 0 | - | {m['wall_s']} |")
            continue
        images = [r["config"]["train"]["iterations"] * r["config"]["train"]["batch_size"] for r in runs]
        if m["mode"] == "fused":  # the group's jobs share one training time
            rate = sum(images) / max(r["train_seconds"] for r in runs)
        elif m["mode"] == "separate":  # one after the other
            rate = sum(images) / sum(r["train_seconds"] for r in runs)
        else:  # at once: the sum of their rates
            rate = sum(i / r["train_seconds"] for i, r in zip(images, runs))
        note = " (target >= 4,000 on an H200)" if m["mode"] == "fused" else ""
        print(f"| {m['mode']} | {len(runs)} | {rate:,.0f}{note} | {m['wall_s']} |")


def main() -> None:
    out = Path(sys.argv[1])
    degradation(out)
    ceiling(out)
    rows = matrix(out)
    engine(out)
    jobs(out, rows)
    share(out)
    fused(out)


if __name__ == "__main__":
    main()
