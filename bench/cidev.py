#!/usr/bin/env python3
"""Benchmarks of `cidev run` with the local provider, each against a baseline
measured in the same run (the machine is shared and noisy: compare ratios).

    python3 bench/cidev.py            # all three, release build
    python3 bench/cidev.py overhead   # one of: overhead, latency, throughput

1. overhead:   200 `true` steps through cidev run, against `sh -c true` run
               200 times from one process; ms added per step.
2. latency:    from starting cidev run to the first output line of the first
               step.
3. throughput: a step writing 200 MB to stdout, masking on, through runner ->
               engine -> store, against `cat` of the same bytes to /dev/null.
"""
import os, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIDEV = os.path.join(ROOT, "target", "release", "cidev")
ENV = dict(os.environ, NO_COLOR="1")


def build():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "cidev"], cwd=ROOT, check=True)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def timed(cmd, **kw):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=ENV, **kw)
    return time.perf_counter() - t


def overhead(tmp, rounds=5):
    steps = "".join('        step run="true"\n' for _ in range(200))
    wf = os.path.join(tmp, "steps.kdl")
    write(wf, "workflow {\n    job id=\"steps\" {\n" + steps + "    }\n}\n")
    base = statistics.median(timed(["sh", "-c", "i=0; while [ $i -lt 200 ]; do sh -c true; i=$((i+1)); done"]) for _ in range(rounds))
    run = statistics.median(timed([CIDEV, "run", wf]) for _ in range(rounds))
    per = (run - base) / 200 * 1000
    print(f"overhead:   200 steps {run*1000:.0f} ms, 200 x sh -c true {base*1000:.0f} ms -> {per:.2f} ms added per step (target <= 2)")


def latency(tmp, rounds=9):
    wf = os.path.join(tmp, "first.kdl")
    write(wf, 'workflow {\n    job id="first" {\n        step run="echo first-line"\n    }\n}\n')
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        p = subprocess.Popen([CIDEV, "run", wf], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, env=ENV, text=True)
        for line in p.stdout:
            if "first-line" in line and "echo" not in line:
                samples.append(time.perf_counter() - t)
                break
        p.wait()
    med = statistics.median(samples) * 1000
    print(f"latency:    start to first step output: median {med:.0f} ms of {rounds} (min {min(samples)*1000:.0f}, max {max(samples)*1000:.0f}; target <= 100)")


def throughput(tmp, rounds=3):
    data = os.path.join(tmp, "200mb.txt")
    line = ("x" * 99 + "\n").encode()
    with open(data, "wb") as f:
        for _ in range(2_000_000):
            f.write(line)
    size = os.path.getsize(data) / 1e6
    wf = os.path.join(tmp, "big.kdl")
    write(wf, 'workflow {\n    secret "TOKEN"\n    job id="big" {\n        step run="cat %s"\n    }\n}\n' % data)
    base = statistics.median(timed(["sh", "-c", f"cat {data} > /dev/null"]) for _ in range(rounds))
    run = statistics.median(
        timed([CIDEV, "run", wf, "--secret", "TOKEN=not-in-the-output-0123456789", "--log-cap-mib", "512"])
        for _ in range(rounds)
    )
    print(f"throughput: {size:.0f} MB through runner -> engine -> store in {run:.2f} s = {size/run:.0f} MB/s; "
          f"cat to /dev/null {size/base:.0f} MB/s; ratio {base/run:.3f} (target >= 100 MB/s)")


if __name__ == "__main__":
    which = sys.argv[1:] or ["overhead", "latency", "throughput"]
    build()
    with tempfile.TemporaryDirectory() as tmp:
        for name in which:
            {"overhead": overhead, "latency": latency, "throughput": throughput}[name](tmp)
