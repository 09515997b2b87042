#!/usr/bin/env python3
"""Why p2c_ewma does not beat least-connections in slow.sh on a noisy machine.

A closed-loop simulation (standard library only, about 20 s):
CONNS clients, three instances (two at FAST ms, one at SLOW ms), and a share
SPIKE of responses delayed by a further 5-25 ms, as a scheduler on a busy
machine does. Balancing follows wayfinder's p2c_ewma as written in
src/balance/random.rs (two distinct random instances, cost = estimate x
(in flight + 1), a missing estimate takes the partner's) and
src/registry/latency.rs (peak-EWMA on a millisecond clock: a slower sample
replaces the estimate, a faster one is mixed in with weight
1 - exp(-elapsed/decay), and the estimate fades by exp(-since/decay) between
samples). Variant "per-sample" replaces the peak rule with a plain EWMA
(estimate += ALPHA x (sample - estimate)).

    python3 benches/e2e/p2c_sim.py

prints the slow instance's share of requests and the p99 for each case.
This is a model of the code at the time of writing, not a test of it: if
src/balance or src/registry/latency.rs change, change it too.
"""

import heapq
import math
import random


def run(decay_ms, spike, conns, secs=20.0, fast=1.1, slow=10.1, alpha=None, seed=1):
    rnd = random.Random(seed)
    est = [0.0] * 3
    at = [0] * 3
    in_flight = [0] * 3

    def estimate(i, now):
        if est[i] == 0:
            return None
        since = now - at[i]
        return est[i] if since == 0 else est[i] * math.exp(-since / decay_ms)

    def observe(i, took, now):
        old = est[i]
        if old == 0:
            new = took
        elif alpha is not None:
            new = old + alpha * (took - old)
        elif took > old:
            new = took
        else:
            w = math.exp(-(now - at[i]) / decay_ms)
            new = old * w + took * (1 - w)
        est[i] = max(new, 1e-6)
        at[i] = now

    def cheaper(a, b, now):
        la, lb = estimate(a, now), estimate(b, now)
        if la is None and lb is None:
            la = lb = 1.0
        elif la is None:
            la = lb
        elif lb is None:
            lb = la
        return la * (in_flight[a] + 1) < lb * (in_flight[b] + 1)

    events = [(0.0, n, -1, 0.0) for n in range(conns)]
    seq = conns
    lat, to_slow = [], 0
    end = secs * 1000.0
    while events:
        t, _, done, took = heapq.heappop(events)
        if done >= 0:
            in_flight[done] -= 1
            observe(done, took, int(t))
        if t >= end:
            continue
        now = int(t)
        a = rnd.randrange(3)
        b = (a + 1 + rnd.randrange(2)) % 3
        i = b if cheaper(b, a, now) else a
        in_flight[i] += 1
        took = fast if i < 2 else slow
        if rnd.random() < spike:
            took += rnd.uniform(5, 25)
        seq += 1
        heapq.heappush(events, (t + took, seq, i, took))
        lat.append(took)
        to_slow += i == 2
    lat.sort()
    return 100.0 * to_slow / len(lat), lat[int(len(lat) * 0.99)]


if __name__ == "__main__":
    print("case                                 conns  slow share    p99")
    for conns in (8, 64):
        for spike in (0.0, 0.005):
            for decay in (10_000, 1_000, 100):
                share, p99 = run(decay, spike, conns)
                print(f"peak-EWMA decay {decay / 1000:5.1f}s spikes {spike * 100:3.1f}%  "
                      f"{conns:5d}  {share:9.2f}%  {p99:5.1f}ms")
        share, p99 = run(10_000, 0.005, conns, alpha=0.1)
        print(f"per-sample EWMA a=0.1 spikes 0.5%      {conns:5d}  {share:9.2f}%  {p99:5.1f}ms")
