# Per call: (the 50 000-call run - the 10 000-call run) / 40 000, per rank.
import os
d = os.path.dirname(os.path.abspath(__file__))
def load(m, it, r):
    out = {}
    for l in open(f'{d}/{m}-{it}.rank{r}.txt'):
        f = l.strip().split(',')
        if len(f) > 2 and not l.startswith('#'):
            try: out[f[2]] = float(f[0])
            except ValueError: pass
    return out
for m in ['mpi_i', 'ucx']:
    for r in range(3):
        a, b = load(m, 10000, r), load(m, 50000, r)
        print(m, 'rank', r, 'task-clock %.2f us' % ((b['task-clock'] - a['task-clock']) / 40000 * 1000),
              'context switches %.2f' % ((b['context-switches'] - a['context-switches']) / 40000))
