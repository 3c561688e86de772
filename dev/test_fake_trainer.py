#!/usr/bin/env python3
"""dev/test_fake_trainer.py, used by dev/test_scripts.sh: a stand-in for train_tlm that writes
plausible JSONL logs with seeded noise, fast. Final loss (nats): 2 + a shared per-seed offset
N(0, 0.02) (so pairing matters) + per-run noise N(0, 0.004) + an effect per schedule.
Its flags as train_tlm's: --arch --layers --dim --mlp-width --taper --taper-start --taper-end
--taper-multiple (widths rounded to multiples, summing to L*H) --persist N (N x dim x layers
more parameters) --mem-lr X --seed --data-seed --steps (0: no training) --eval-every
--eval-batches --final-eval-batches (0: the 584 batches of the split; logged in the val events
as "batches") --batch --seq-len --train --val --log --save --load --analyze.
Environment: FAKE_EFFECTS="cosine=0,reverse=0.04,persist4=-0.01,memlr0=0.03" sets the
schedules' effects and the memory flags' (--persist N: persistN, -0.01 for N > 0; --mem-lr 0:
memlr0, 0.03); FAKE_NUMERICS=x shifts every loss by 1e-7 x (another build's rounding);
FAKE_DIVERGE="arch:taper:seed;..." makes those runs stop with the trainer's error event (exit
1); FAKE_REFUSE=--flag refuses that flag as an unknown option; FAKE_SLEEP seconds before the
last record [0.05]."""
import json, math, os, random, sys, time, hashlib
t0 = time.time()

argv = sys.argv[1:]
flags, i = {}, 0
while i < len(argv):
    a = argv[i]
    if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
        flags[a] = argv[i + 1]; i += 2
    else:
        flags[a] = True; i += 1
if os.environ.get("FAKE_REFUSE") in flags:
    print(f"error: unknown option {os.environ['FAKE_REFUSE']} (see --help)", file=sys.stderr)
    sys.exit(1)
get = lambda k, d=None: flags.get(k, d)
L, H, C = int(get("--layers", 6)), int(get("--mlp-width", 384)), int(get("--dim", 128))
arch, taper = get("--arch", "transformer"), get("--taper", "cosine")
start, end = float(get("--taper-start", 1.5)), float(get("--taper-end", 0.5))
multiple = int(get("--taper-multiple", 32))
seed, steps = int(get("--seed", 1337)), int(get("--steps", 600))
persist, mem_lr = int(get("--persist", 0)), float(get("--mem-lr", 0.00625))
every = int(get("--eval-every", 100))
every = every or max(steps, 1)                   # 0: only the first and the last evaluation
data_seed = int(get("--data-seed", seed))
batches, final_batches = int(get("--eval-batches", 8)), get("--final-eval-batches")
final_batches = batches if final_batches is None else int(final_batches)
tok = int(get("--batch", 8)) * int(get("--seq-len", 256))
log = open(get("--log"), "a") if get("--log") else None
emit = lambda rec: (log.write(json.dumps(rec) + "\n"), log.flush()) if log else None
numerics = 1e-7 * float(os.environ.get("FAKE_NUMERICS", "0") or 0)


def widths():
    """train_tlm's round_schedule, roughly: scale to L*H, round to multiples, fix the sum."""
    if taper.startswith("groups:"):
        m = [float(x) for x in taper[7:].split(",")]
        g = [m[l * len(m) // L] for l in range(L)]
    elif taper == "uniform":
        g = [1.0] * L
    else:
        x = [l / max(1, L - 1) for l in range(L)]
        cosine = lambda t: (1 - math.cos(math.pi * t)) / 2           # reverse: mirrored below
        shape = {"linear": lambda t: t, "sigmoid": lambda t: 1 / (1 + math.exp(-10 * (t - 0.5)))
                 }.get(taper, cosine)
        g = [start + (end - start) * shape(t) for t in x]
        if taper == "reverse":
            g = g[::-1]
    raw = [H * L * v / sum(g) / multiple for v in g]
    units = [max(1, round(r)) for r in raw]
    while sum(units) != H * L // multiple:
        k = sum(units) - H * L // multiple
        order = sorted(range(L), key=lambda l: units[l] - raw[l], reverse=k > 0)
        units[order[0]] += -1 if k > 0 else 1
    return [u * multiple for u in units]


def effect():
    given = dict(kv.split("=") for kv in os.environ.get("FAKE_EFFECTS", "").split(",") if kv)
    return taper_effect(given) + float(given.get(f"persist{persist}", -0.01 if persist else 0)) \
        + (float(given.get("memlr0", 0.03)) if mem_lr == 0 else 0)


def taper_effect(given):
    if taper in given: return float(given[taper])
    if taper == "uniform": return 0.0
    if taper == "cosine": return -0.012 + 0.03 * (start - 1.5) ** 2 * 8
    if taper == "reverse": return 0.04
    if taper == "linear": return -0.006 + 0.2 * (start - 1.5) ** 2
    if taper == "sigmoid": return -0.009 + 0.25 * (start - 1.5) ** 2
    return {"groups:1.5,1,0.5": -0.010, "groups:0.75,1.5,0.75": 0.004, "groups:0.5,1,1.5": 0.05}.get(taper, 0)


def rng(*key):
    return random.Random(int(hashlib.sha256(repr(key).encode()).hexdigest()[:12], 16))


if get("--analyze"):
    ck = json.load(open(get("--load")))
    emit({"event": "config", **ck, "resumed_step": ck["steps"]})
    r = rng("analysis", ck["arch"], ck["taper"], ck["taper_start"])
    for l, w in enumerate(ck["mlp_widths"]):
        x = l / max(1, len(ck["mlp_widths"]) - 1)
        rec = {"event": "analysis", "layer": l, "mlp_width": w, "rel_update_mixer": 0.2 + r.random() * 0.1,
               "rel_update_mlp": (50 if l == 0 else 0.15) * (1 + 0.2 * r.random()),
               "rel_update": 0.3, "cos_sim": 0.1 if l == 0 else 0.97,
               "dloss_skip_mlp": 2.4 if l == 0 else 0.01 * r.random(), "dloss_skip_layer": 2.5 if l == 0 else 0.03}
        if not os.environ.get("FAKE_NO_COS"):
            rec["cos_mlp_residual"] = -0.1 + 0.6 * x + 0.1 * math.log(w / H) + 0.03 * r.gauss(0, 1)
        emit(rec)
    emit({"event": "done", "step": ck["steps"], "val_loss": ck["final"], "seconds": 0})
    sys.exit(0)

ws = widths()
memory = () if (persist, mem_lr) == (0, 0.00625) else (persist, mem_lr)   # another run's noise
shape = (L, C, H, steps)
final = 2.0 + {"transformer": 0, "gated": 0.01, "titans": -0.01, "hope": 0.005}[arch] + numerics \
        + rng("seed", seed, data_seed, shape).gauss(0, 0.02) + effect() \
        + rng("run", arch, tuple(ws), *memory, seed, data_seed, shape).gauss(0, 0.004)
params = 1_000_000 + 3 * C * sum(ws) + persist * C * L
cfg = {"arch": arch, "layers": L, "dim": C, "mlp_width": H, "taper": taper, "taper_start": start,
       "taper_end": end, "taper_multiple": multiple, "mlp_widths": ws, "cms_widths": [0] * L,
       "params": params, "persist": persist, "mem_lr": mem_lr, "steps": steps, "seed": seed, "data_seed": data_seed,
       "eval_batches": batches, "final_eval_batches": final_batches,
       "train": get("--train", "data/brown_byte_train.bin")}
emit({"event": "config", **cfg, "resumed_step": 0})
diverge = f"{arch}:{taper}:{seed}" in os.environ.get("FAKE_DIVERGE", "").split(";")
curve = lambda s: final + (5.5 - final) * math.exp(-6 * s / max(steps, 1))
for s in range(0, steps + 1):
    if s and (s <= 5 or s % every == 0):
        noise = rng("train", arch, tuple(ws), seed, s).gauss(0, 0.01)
        emit({"event": "train", "step": s, "loss": round(curve(s) + numerics + noise, 8),
              "grad_norm": 1.5, "tokens": s * tok})
    if s % every and s != steps:
        continue
    if diverge and s >= steps // 2:
        emit({"event": "error", "step": s + 1, "message": "non-finite loss or gradient"})
        print(f"step {s + 1}: non-finite loss or gradient, stopping", file=sys.stderr)
        sys.exit(1)
    n = final_batches if s == steps else batches
    loss = final if s == steps else curve(s) + rng("val", arch, taper, seed, s).gauss(0, 0.003)
    emit({"event": "val", "step": s, "loss": loss, "ppl": math.exp(loss), "tokens": s * tok,
          "batches": n or 584})
time.sleep(float(os.environ.get("FAKE_SLEEP", "0.05")))
if get("--save"):
    with open(get("--save"), "w") as f:
        json.dump({**cfg, "final": final}, f)
emit({"event": "done", "step": steps, "val_loss": final, "seconds": round(time.time() - t0, 3)})
print(f"done, val loss {final:.4f}")
