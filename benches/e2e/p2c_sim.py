#!/usr/bin/env python3
"""A model of p2c_ewma in slow.sh's scenario, before and after issue 17's fix.

A closed-loop simulation (standard library only, about a minute):
CONNS clients, three instances (two at FAST ms, one at SLOW ms), each
infinitely parallel like bench_backend, and a share SPIKE of responses
delayed by a further 5-25 ms, as a scheduler on a busy machine does.
Balancing follows src/balance/random.rs (two distinct random instances,
cost = estimate x (in flight + 1)). Two estimators, on a millisecond clock:

- "ewma" (src/registry/latency.rs today): a per-response EWMA whose old
  value keeps (1 - ALPHA) x exp(-elapsed/decay) of its weight, so one
  response moves it by ALPHA at most while the instance is busy, and an
  instance heard from after a long pause is mostly its new response. When
  read, an estimate counts with trust exp(-since/decay): the two drawn are
  compared at the trust-weighted mean pulled towards each one's own
  estimate by its trust, so an instance not heard from drifts back to
  neutral (compared by load alone, like a new one).
- "peak" (before issue 17's fix): peak-EWMA, a slower response replaces
  the estimate at once, a faster one is mixed in with weight
  1 - exp(-elapsed/decay), and the estimate fades towards zero by
  exp(-since/decay) when read; a missing estimate takes the partner's.

    python3 benches/e2e/p2c_sim.py          # the table below
    python3 benches/e2e/p2c_sim.py quick    # fewer cases

prints the slow instance's share of requests and the p99 for each case.
This is a model of the code at the time of writing, not a test of it: if
src/balance or src/registry/latency.rs change, change it too.
"""

import heapq
import math
import random
import sys

ALPHA = 0.1


class Peak:
    def __init__(self, decay_ms):
        self.decay = decay_ms
        self.est = [0.0] * 3
        self.at = [0] * 3

    def read(self, i, now):
        if self.est[i] == 0:
            return None
        return self.est[i] * math.exp(-(now - self.at[i]) / self.decay)

    def observe(self, i, took, now):
        old = self.est[i]
        if old == 0 or took > old:
            new = took
        else:
            w = math.exp(-(now - self.at[i]) / self.decay)
            new = old * w + took * (1 - w)
        self.est[i] = max(new, 1e-6)
        self.at[i] = now

    def pair(self, a, b, now):
        la, lb = self.read(a, now), self.read(b, now)
        if la is None and lb is None:
            return 1.0, 1.0
        return (la if la is not None else lb), (lb if lb is not None else la)


class Ewma:
    def __init__(self, decay_ms, alpha=ALPHA):
        self.decay = decay_ms
        self.alpha = alpha
        self.est = [0.0] * 3
        self.at = [0] * 3

    def read(self, i, now):
        if self.est[i] == 0:
            return None
        return self.est[i], math.exp(-(now - self.at[i]) / self.decay)

    def observe(self, i, took, now):
        old = self.est[i]
        if old == 0:
            new = took
        else:
            k = (1 - self.alpha) * math.exp(-(now - self.at[i]) / self.decay)
            new = old * k + took * (1 - k)
        self.est[i] = max(new, 1e-6)
        self.at[i] = now

    def pair(self, a, b, now):
        ea, eb = self.read(a, now), self.read(b, now)
        if ea is None and eb is None:
            return 1.0, 1.0
        if ea is None:
            return eb[0], eb[0]
        if eb is None:
            return ea[0], ea[0]
        (la, ta), (lb, tb) = ea, eb
        mid = (la * ta + lb * tb) / (ta + tb) if ta + tb > 1e-12 else (la + lb) / 2
        return mid + (la - mid) * ta, mid + (lb - mid) * tb


def run(est, spike, conns, secs=20.0, fast=1.1, slow=10.1, seed=1, slow_until=None):
    """slow_until: the slow instance turns fast at this time (s), to see
    how long the estimate takes to notice."""
    rnd = random.Random(seed)
    in_flight = [0] * 3
    events = [(0.0, n, -1, 0.0) for n in range(conns)]
    seq = conns
    lat, to_slow, after, after_slow = [], 0, 0, 0
    end = secs * 1000.0
    while events:
        t, _, done, took = heapq.heappop(events)
        if done >= 0:
            in_flight[done] -= 1
            est.observe(done, took, int(t))
        if t >= end:
            continue
        now = int(t)
        a = rnd.randrange(3)
        b = (a + 1 + rnd.randrange(2)) % 3
        la, lb = est.pair(a, b, now)
        i = b if lb * (in_flight[b] + 1) < la * (in_flight[a] + 1) else a
        in_flight[i] += 1
        slow_now = slow_until is None or t < slow_until * 1000
        took = slow if i == 2 and slow_now else fast
        if rnd.random() < spike:
            took += rnd.uniform(5, 25)
        seq += 1
        heapq.heappush(events, (t + took, seq, i, took))
        lat.append(took)
        to_slow += i == 2
        if slow_until is not None and t >= slow_until * 1000 + 5000:
            after += 1
            after_slow += i == 2
    lat.sort()
    share = 100.0 * to_slow / len(lat)
    if slow_until is not None:
        return share, lat[int(len(lat) * 0.99)], 100.0 * after_slow / max(after, 1)
    return share, lat[int(len(lat) * 0.99)]


if __name__ == "__main__":
    quick = sys.argv[1:] == ["quick"]
    print("estimator                   spikes  conns  slow share    p99")
    for conns in (8, 64):
        for spike in (0.0, 0.005) if quick else (0.0, 0.005, 0.02):
            cases = [("peak, decay 10s", Peak(10_000)), ("ewma 0.1, decay 10s", Ewma(10_000))]
            if not quick:
                cases += [("ewma 0.1, decay 1s", Ewma(1_000)), ("ewma 0.05, decay 10s", Ewma(10_000, 0.05)),
                          ("ewma 0.2, decay 10s", Ewma(10_000, 0.2))]
            for name, est in cases:
                share, p99 = run(est, spike, conns)
                print(f"{name:27s} {spike * 100:5.1f}%  {conns:5d}  {share:9.2f}%  {p99:5.1f}ms")
    # The slow instance recovers at 10 s: its share over the last 15 s
    # (from 15 s on) should be near a third again.
    for decay in (10_000, 1_000):
        share, _, after = run(Ewma(decay), 0.005, 8, secs=30.0, slow_until=10)
        print(f"recovery, ewma 0.1, decay {decay / 1000:.0f}s: share of the recovered instance "
              f"from 5 s after: {after:.1f}%")
