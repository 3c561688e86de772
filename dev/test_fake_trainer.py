#!/usr/bin/env python3
"""dev/test_fake_trainer.py, used by dev/test_scripts.sh: a stand-in for train_tlm: writes plausible JSONL logs with seeded noise, fast.
Effects (nats): a shared per-seed offset N(0, 0.02) (so pairing matters) + a small
per-run noise N(0, 0.004) + an effect per schedule. FAKE_DIVERGE="arch:taper:seed;..."
makes those runs stop with the trainer's error event (exit 1)."""
import json, math, os, random, sys, time, hashlib

argv = sys.argv[1:]
flags, i = {}, 0
while i < len(argv):
    a = argv[i]
    if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
        flags[a] = argv[i + 1]; i += 2
    else:
        flags[a] = True; i += 1
get = lambda k, d=None: flags.get(k, d)
L, H = int(get("--layers", 6)), int(get("--mlp-width", 384))
arch, taper = get("--arch", "transformer"), get("--taper", "cosine")
start, end = float(get("--taper-start", 1.5)), float(get("--taper-end", 0.5))
seed, steps, every = int(get("--seed", 1337)), int(get("--steps", 600)), int(get("--eval-every", 100))
log = open(get("--log"), "a") if get("--log") else None
emit = lambda rec: (log.write(json.dumps(rec) + "\n"), log.flush()) if log else None


def widths():
    if taper.startswith("groups:"):
        m = [float(x) for x in taper[7:].split(",")]
        g = [m[l * len(m) // L] for l in range(L)]
    elif taper == "uniform":
        g = [1.0] * L
    else:
        g = [start + (end - start) * l / max(1, L - 1) for l in range(L)]
        if taper == "reverse":
            g = g[::-1]
    s = sum(g)
    return [round(H * L * x / s) for x in g]


def effect():
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

final = 2.0 + {"transformer": 0, "gated": 0.01, "titans": -0.01, "hope": 0.005}[arch] \
        + rng("seed", seed).gauss(0, 0.02) + rng("run", arch, taper, start, end, seed).gauss(0, 0.004) + effect()
ws = widths()
params = 1_000_000 + 3 * 128 * sum(ws)
cfg = {"arch": arch, "layers": L, "mlp_width": H, "taper": taper, "taper_start": start, "taper_end": end,
       "mlp_widths": ws, "params": params, "steps": steps, "seed": seed}
emit({"event": "config", **cfg, "resumed_step": 0})
diverge = f"{arch}:{taper}:{seed}" in os.environ.get("FAKE_DIVERGE", "").split(";")
tok = 8 * 128
for s in range(0, steps + 1, every):
    loss = final + (5.5 - final) * math.exp(-6 * s / steps) + rng("val", arch, taper, seed, s).gauss(0, 0.003)
    if diverge and s >= steps // 2:
        emit({"event": "error", "step": s + 1, "message": "non-finite loss or gradient"})
        print(f"step {s + 1}: non-finite loss or gradient, stopping", file=sys.stderr)
        sys.exit(1)
    emit({"event": "val", "step": s, "loss": loss, "ppl": math.exp(loss), "tokens": s * tok})
time.sleep(float(os.environ.get("FAKE_SLEEP", "0.05")))
with open(get("--save"), "w") as f:
    json.dump({**cfg, "final": final}, f)
emit({"event": "done", "step": steps, "val_loss": final, "seconds": 0.05})
print(f"done, val loss {final:.4f}")
