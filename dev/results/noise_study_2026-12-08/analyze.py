#!/usr/bin/env python3
"""The paired noise study's table from rows.csv (standard library only).

rows.csv: steps, arch, taper, seed, data_seed, val_all (the whole val split), val8, val32,
val128 (--eval-only on 8/32/128 batches spread over the split), params, seconds (training).
Per step count: the cosine - uniform difference d of each seed pair (same seed, same data
seed), its mean, sd and 95% t interval, the within-pair correlation r, the error that
evaluating on 8/32/128 spread batches adds to d (rms against the whole split), and the
interval one hour of two 1-thread runs at a time buys."""
import csv, math, statistics as st, sys

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131}


def main(path):
    rows = list(csv.DictReader(open(path)))
    by = {(int(r['steps']), r['taper'], int(r['seed'])): r for r in rows}
    print("| steps | pairs | uniform val loss | Δ cosine − uniform [95% CI] | sd of Δ | r "
          "| subsampling rms 8 / 32 / 128 batches | s per run | ±95% per 2-core hour |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in sorted({k[0] for k in by}):
        seeds = sorted(s for (m, t, s) in by if m == n and t == 'cosine' and (n, 'uniform', s) in by)
        if len(seeds) < 2:
            continue
        val = lambda t, s, c: float(by[(n, t, s)][c])
        d = [val('cosine', s, 'val_all') - val('uniform', s, 'val_all') for s in seeds]
        u = [val('uniform', s, 'val_all') for s in seeds]
        c = [val('cosine', s, 'val_all') for s in seeds]
        k = len(d); m, sd = st.mean(d), st.stdev(d)
        h = T975.get(k - 1, 1.96) * sd / math.sqrt(k)
        r = st.correlation(u, c) if k > 2 else float('nan')
        sub = []
        for col in ('val8', 'val32', 'val128'):
            e = [val('cosine', s, col) - val('uniform', s, col) - x for s, x in zip(seeds, d)]
            sub.append(f"{math.sqrt(sum(x * x for x in e) / k):.4f}")
        secs = st.mean(val(t, s, 'seconds') for s in seeds for t in ('uniform', 'cosine'))
        pairs_per_hour = 2 * 3600 / (2 * secs)          # two 1-thread runs side by side
        per_hour = 1.96 * sd / math.sqrt(pairs_per_hour)
        print(f"| {n} | {k} | {st.mean(u):.4f} | {m:+.4f} [{m - h:+.4f}, {m + h:+.4f}] "
              f"| {sd:.4f} | {r:+.2f} | {' / '.join(sub)} | {secs:.0f} | {per_hour:.4f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "rows.csv")
