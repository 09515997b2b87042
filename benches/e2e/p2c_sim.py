#!/usr/bin/env python3
"""A model of p2c_ewma in slow.sh's scenario, before and after issue 17's fix.

A closed-loop simulation (standard library only, a few minutes):
CONNS clients, three instances (two at FAST ms, one at SLOW ms), each
infinitely parallel like bench_backend, plus the noise of a busy machine
in one of two forms: SPIKE, a share of responses delayed by a further
5-25 ms each on its own, or STALLS per second of 2-15 ms during which the
proxy runs nothing, so every response that arrives meanwhile is handled
(and timed) at the stall's end, one after the other, each handing its
connection's next request to the pick at once.
Balancing follows src/balance/random.rs (two distinct random instances,
cost = estimate x (in flight + 1)). Three estimators, on a millisecond
clock:

- "capped" (src/registry/latency.rs today): a per-response EWMA whose old
  value keeps (1 - ALPHA) x exp(-elapsed/decay) of its weight, a response
  counting as at most CAP times the old value, so one response moves it
  by ALPHA at most while the instance is busy, a stall's burst of slow
  responses by a few times ALPHA, and an instance heard from after a long
  pause is mostly its new response. When read, an estimate counts with
  trust exp(-since/decay): the two drawn are compared at the
  trust-weighted mean pulled towards each one's own estimate by its
  trust, so an instance not heard from drifts back to neutral (compared
  by load alone, like a new one).
- "ewma": the same without the cap.
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
CAP = 2.0


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
    def __init__(self, decay_ms, alpha=ALPHA, cap=CAP):
        self.decay = decay_ms
        self.alpha = alpha
        self.cap = cap
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
            if self.cap is not None:
                took = min(took, old * self.cap)
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


def run(est, conns, spike=0.0, stalls=0.0, secs=10.0, fast=1.1, slow=10.1, seed=1,
        slow_until=None):
    """slow_until: the slow instance turns fast at this time (s), to see
    how long the estimate takes to notice."""
    rnd = random.Random(seed)
    in_flight = [0] * 3
    pauses, t = [], 0.0
    while stalls and t < secs * 1000:
        t += rnd.expovariate(stalls / 1000.0)
        pauses.append((t, t + rnd.uniform(2, 15)))
    p = 0
    events = [(0.0, n, -1, 0.0) for n in range(conns)]
    seq = conns
    lat, to_slow, after, after_slow = [], 0, 0, 0
    end = secs * 1000.0
    while events:
        t, _, done, sent = heapq.heappop(events)
        while p < len(pauses) and pauses[p][1] < t:
            p += 1
        if p < len(pauses) and pauses[p][0] <= t < pauses[p][1]:
            seq += 1
            heapq.heappush(events, (pauses[p][1], seq, done, sent))
            continue
        if done >= 0:
            in_flight[done] -= 1
            est.observe(done, t - sent, int(t))
            lat.append(t - sent)
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
        heapq.heappush(events, (t + took, seq, i, t))
        to_slow += i == 2
        if slow_until is not None and t >= slow_until * 1000 + 5000:
            after += 1
            after_slow += i == 2
    lat.sort()
    share = 100.0 * to_slow / max(len(lat), 1)
    p99 = lat[int(len(lat) * 0.99)]
    if slow_until is not None:
        return share, p99, 100.0 * after_slow / max(after, 1)
    return share, p99


if __name__ == "__main__":
    quick = sys.argv[1:] == ["quick"]
    print("estimator                noise           conns  slow share    p99")
    noises = [(0.0, 0), (0.005, 0), (0.0, 10), (0.0, 50)]
    if quick:
        noises = [(0.005, 0), (0.0, 50)]
    for conns in (8, 64):
        for spike, stalls in noises:
            noise = f"spikes {spike * 100:.1f}%" if spike else f"stalls {stalls}/s" if stalls else "none"
            cases = [("peak, decay 10s", Peak(10_000)), ("capped, decay 10s", Ewma(10_000))]
            if not quick:
                cases.insert(1, ("ewma, decay 10s", Ewma(10_000, cap=None)))
                cases.append(("capped, decay 1s", Ewma(1_000)))
            for name, est in cases:
                share, p99 = run(est, conns, spike, stalls)
                print(f"{name:24s} {noise:15s} {conns:5d}  {share:9.2f}%  {p99:5.1f}ms", flush=True)
    # The slow instance recovers at 10 s: its share over the last 15 s
    # (from 15 s on) should be near a third again.
    for decay in (10_000, 1_000):
        share, _, after = run(Ewma(decay), 8, stalls=10, secs=30.0, slow_until=10)
        print(f"recovery, capped, decay {decay / 1000:.0f}s: share of the recovered instance "
              f"from 5 s after: {after:.1f}%")
