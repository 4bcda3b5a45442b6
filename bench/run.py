"""Run the benchmarks, print one table, write ``bench/results/<timestamp>.json``.

    python -m bench            # the full run (about 4-5 minutes on 2 cores)
    python -m bench --quick    # smaller sizes, for a smoke run (under a minute)
    python -m bench --only ack single

Each scenario builds its own temporary directory (bare remotes, state, logs), starts its own server
process, and measures its plain-git baseline in the same run. A scenario that fails is reported as
an ERROR row; the others still run. Exit status: 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import ack, burst, comment, scale, single, sleep
from bench.harness import Env, Figure, JournalKind, error_figure, load_average, machine, table

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True, kw_only=True)
class Plan:
    ack: ack.AckParams
    single: single.SingleParams
    burst: burst.BurstParams
    comment: comment.CommentParams
    scale: scale.ScaleParams
    sleep: sleep.SleepParams


FULL = Plan(
    ack=ack.AckParams(),
    single=single.SingleParams(),
    burst=burst.BurstParams(),
    comment=comment.CommentParams(),
    scale=scale.ScaleParams(),
    sleep=sleep.SleepParams(),
)
QUICK = Plan(
    ack=ack.AckParams(duration=4.0, baseline_duration=2.0, warmup=50),
    single=single.SingleParams(iterations=6),
    burst=burst.BurstParams(prs=25, events_per_pr=4),
    comment=comment.CommentParams(iterations=3, paced_iterations=1, burst_prs=3, pushes=3),
    scale=scale.ScaleParams(previews=1_000, pushes=3, api_calls=5, repeats=1),
    sleep=sleep.SleepParams(iterations=3, previews=1_000),
)


INTAKE_BURST_TARGET = 20.0  # issue 19: through devstack intake, on either journal


def scenarios(plan: Plan) -> dict[str, Callable[[Env], list[Figure]]]:
    def intake_burst(journal: JournalKind) -> burst.BurstParams:
        return dataclasses.replace(plan.burst, intake=True, journal=journal, speedup_target=INTAKE_BURST_TARGET)

    return {
        "ack": lambda env: ack.run(env, plan.ack),
        "intake": lambda env: ack.run(env, dataclasses.replace(plan.ack, intake=True)),
        "intake-pg": lambda env: ack.run(env, dataclasses.replace(plan.ack, intake=True, journal="postgresql")),
        "single": lambda env: single.run(env, plan.single),
        "burst": lambda env: burst.run(env, plan.burst),
        "burst-intake": lambda env: burst.run(env, intake_burst("sqlite")),
        "burst-intake-pg": lambda env: burst.run(env, intake_burst("postgresql")),
        "comment": lambda env: comment.run(env, plan.comment),
        "scale": lambda env: scale.run(env, plan.scale),
        "sleep": lambda env: sleep.run(env, plan.sleep),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run under a minute")
    parser.add_argument("--only", nargs="+", choices=list(scenarios(FULL)), help="run only these scenarios")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, repos)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"where to write the JSON (default {RESULTS})")
    args = parser.parse_args(argv)

    plan = QUICK if args.quick else FULL
    chosen = {name: fn for name, fn in scenarios(plan).items() if not args.only or name in args.only}
    started = datetime.now(UTC)
    root = Path(tempfile.mkdtemp(prefix="devstack-bench-"))
    figures: list[Figure] = []
    timings: dict[str, float] = {}
    loads: dict[str, list[float]] = {}
    print(f"devstack bench ({'quick' if args.quick else 'full'}): {', '.join(chosen)}; scratch {root}",
          file=sys.stderr, flush=True)
    try:
        for name, fn in chosen.items():
            print(f"[{name}]", file=sys.stderr, flush=True)
            begun = time.monotonic()
            loads[name] = [load_average()]
            env = Env.create(root / name)
            try:
                figures.extend(fn(env))
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others
                figures.append(error_figure(name, exc))
                print(f"  [{name}] failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                traceback.print_exc(file=sys.stderr)
            timings[name] = round(time.monotonic() - begun, 1)
            loads[name].append(load_average())
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)

    print()
    print(table(figures))
    print()
    print("scenario wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print("1-min load average before/after (2 cores: above 2 means other processes competed): "
          + ", ".join(f"{k} {a:.1f}/{b:.1f}" for k, (a, b) in loads.items()))
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "params": {k: asdict(v) for k, v in asdict_shallow(plan).items() if k in chosen},
        "seconds": timings,
        "load_average": loads,
        "figures": [f.to_json() for f in figures],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{started.strftime('%Y%m%dT%H%M%SZ')}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    failed = [f for f in figures if f.passed is False or f.name == "error"]
    return 1 if failed else 0


def asdict_shallow(plan: Plan) -> dict[str, Any]:
    return {name: getattr(plan, name) for name in ("ack", "single", "burst", "comment", "scale")}
