"""``attnlab vlm influence|digits --out DIR``: the vision-language experiments of spec ``future_mask.md`` §7 that
are not timed (the cost experiment E3 is ``attnlab bench future``).

``influence`` (E2): per mask kind (``c``, ``f``, ``v2v``, ``v2t``, ``light``), the influence of every input position on
every output position at the first and the last layer of a small random LM on a two-image layout
(:mod:`attnlab.bench.influence`); writes ``influence-<kind>.png``, ``influence-gallery.png``, ``influence.md`` (with
the checks of what each mask should open) and ``influence.pt``. Exit status 1 when a check fails, 2 (``attnlab:
error: ...`` on stderr) for a bad option.

``digits`` (E4): two-image questions about scikit-learn's handwritten digits (``pip install attnlab[digits]``); a
model trained under each mask with every seed, each scored under every mask (:mod:`attnlab.study.digits`); writes
the comparison's files plus ``masks.md``, ``masks.csv`` and ``masks.png``. Resumable: the same command keeps finished
runs; ``--force`` moves an existing directory aside.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex

HELP = ("vision-language mask experiments: influence maps of the future-aware masks (spec future_mask.md E2) and the "
        "two-image digits task (E4)")

_INFLUENCE_ONLY = ("quick", "length", "d_model", "n_heads", "n_layers", "kinds", "light_mu", "eps", "seed")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", choices=["influence", "digits"], help="which experiment")
    p.add_argument("--out", default=None, help="output directory (default out/vlm-<experiment>)")
    p.add_argument("--preset", default=None, choices=["full", "quick"],
                   help="digits: full (3 seeds, about 2 min per run on one core; default) or quick (seconds)")
    p.add_argument("--seeds", default=None, help="digits: comma-separated seeds (default: 0,1,2 for full)")
    p.add_argument("--force", action="store_true", help="digits: move an existing output directory aside")
    p.add_argument("--quick", action="store_true", help="influence: tiny sizes (L=24, d_model 16, 2 layers): about a second")
    p.add_argument("--length", type=int, default=None, help="prompt positions L, 16 to 512 (default 96)")
    p.add_argument("--d-model", type=int, default=None, help="LM width (default 64)")
    p.add_argument("--n-heads", type=int, default=None, help="heads (default 4)")
    p.add_argument("--n-layers", type=int, default=None, help="layers, at least 2 (default 4)")
    p.add_argument("--kinds", default=None, help="comma-separated subset of c,f,v2v,v2t,light (default: all)")
    p.add_argument("--light-mu", default=None, help="future region of the light kind: f, v2v or v2t (default f)")
    p.add_argument("--eps", type=float, default=None, help="perturbation size per dimension (default 1.0)")
    p.add_argument("--seed", type=int, default=None, help="weights, inputs and perturbations (default 0)")


def run(args: argparse.Namespace) -> int:
    from attnlab.commands._config_args import fail

    if args.out is None:
        args.out = f"out/vlm-{args.experiment}"
    if args.experiment == "digits":
        return _digits(args)
    for k in ("preset", "seeds"):
        if getattr(args, k) is not None:
            return fail(f"--{k} is an option of 'attnlab vlm digits', not of influence")
    if args.force:
        return fail("--force is an option of 'attnlab vlm digits', not of influence")
    return _influence(args)


def _digits(args: argparse.Namespace) -> int:
    from attnlab.commands._config_args import fail
    from attnlab.study.digits import run_digits

    given = [k for k in _INFLUENCE_ONLY if getattr(args, k) not in (None, False)]
    if given:
        return fail(f"--{given[0].replace('_', '-')} is an option of 'attnlab vlm influence', not of digits")
    seeds = None
    if args.seeds is not None:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            return fail(f"--seeds must be comma-separated integers, got {args.seeds!r}")
        if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            return fail(f"--seeds must be distinct integers >= 0, got {args.seeds!r}")
    preset = args.preset or "full"
    try:
        paths = run_digits(preset, args.out, seeds=seeds, force=args.force)
    except (ImportError, ValueError) as exc:  # no scikit-learn; a directory holding another comparison
        return fail(str(exc))
    for p in paths:
        print(p)
    return 0


def _influence(args: argparse.Namespace) -> int:
    from attnlab.bench.influence import QUICK, InfluenceConfig, write_influence
    from attnlab.commands._config_args import fail

    changes = {k: getattr(args, k) for k in ("length", "d_model", "n_heads", "n_layers", "light_mu", "eps", "seed")
               if getattr(args, k) is not None}
    if args.kinds is not None:
        changes["kinds"] = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    try:
        cfg = dataclasses.replace(QUICK if args.quick else InfluenceConfig(), **changes)
    except ValueError as exc:  # name the flag, not the config field: "n_heads=3 must ..." -> "--n-heads=3 must ..."
        msg = str(exc)
        names = [f.name for f in dataclasses.fields(InfluenceConfig)]
        field = next((n for n in names if msg.startswith((f"{n} ", f"{n}="))), None)
        return fail(msg if field is None else f"--{field.replace('_', '-')}{msg[len(field):]}")
    parts = ["attnlab", "vlm", "influence", "--out", args.out] + (["--quick"] if args.quick else [])
    parts += [f"--{k.replace('_', '-')}={v if k != 'kinds' else ','.join(v)}" for k, v in changes.items()]
    checks, paths = write_influence(cfg, args.out, command=shlex.join(parts))
    for p in paths:
        print(p)
    failed = [c for c in checks if not c["ok"]]
    for c in failed:
        print(f"FAILED {c['kind']}: {c['check']}")
    print(f"\n{len(checks) - len(failed)} of {len(checks)} checks passed; gallery: {paths[len(cfg.kinds)]}")
    return 1 if failed else 0
