#!/usr/bin/env python3
"""Benchmarks of `cidev run` with the local provider, each against a baseline
measured in the same run (the machine is shared and noisy: compare ratios).

    python3 bench/cidev.py            # all three, release build
    python3 bench/cidev.py overhead   # one of: overhead, latency, throughput, vm

1. overhead:   200 `true` steps through cidev run, against `sh -c true` run
               200 times from one process; ms added per step.
2. latency:    from starting cidev run to the first output line of the first
               step.
3. throughput: a step writing 200 MB to stdout, masking on, through runner ->
               engine -> store, against `cat` of the same bytes to /dev/null.
4. vm:         a one-step job with `--provider qemu` (its own VM, booted
               from the guest image: images/linux-guest/build.sh) against the
               same job with the local provider; the QEMU provider's per-job
               overhead.
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


def timed(cmd, cwd=ROOT):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd, env=ENV)
    return time.perf_counter() - t


def empty_repo(tmp):
    """A git repository with no files: `cidev run` from there checks out
    nothing, so the overhead and throughput runs measure the engine, not
    the copying of this repository's files (`latency` measures that)."""
    path = os.path.join(tmp, "empty-repo")
    if not os.path.isdir(path):
        os.makedirs(path)
        subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    return path


def overhead(tmp, rounds=5):
    # The difference between 200 steps and 1 step removes the fixed cost
    # (engine start, runner start, checkout), which `latency` measures.
    def workflow(n):
        path = os.path.join(tmp, f"steps{n}.kdl")
        steps = "".join('        step run="true"\n' for _ in range(n))
        write(path, "workflow {\n    job id=\"steps\" {\n" + steps + "    }\n}\n")
        return path
    def loop(n):
        return ["sh", "-c", f"i=0; while [ $i -lt {n} ]; do sh -c true; i=$((i+1)); done"]
    one, many = workflow(1), workflow(200)
    empty = empty_repo(tmp)
    run1 = statistics.median(timed([CIDEV, "run", one], cwd=empty) for _ in range(rounds))
    run200 = statistics.median(timed([CIDEV, "run", many], cwd=empty) for _ in range(rounds))
    base1 = statistics.median(timed(loop(1)) for _ in range(rounds))
    base200 = statistics.median(timed(loop(200)) for _ in range(rounds))
    per = ((run200 - run1) - (base200 - base1)) / 199 * 1000
    print(f"overhead:   cidev run 1 step {run1*1000:.0f} ms, 200 steps {run200*1000:.0f} ms; "
          f"sh -c true x1 {base1*1000:.0f} ms, x200 {base200*1000:.0f} ms -> {per:.2f} ms added per step (target <= 2)")


def latency(tmp, rounds=9):
    # The checkout is a copy of the repository's files: measured with this
    # repository (1,100 files) and with an empty one, and with the job
    # workspaces on the default temporary directory and on tmpfs.
    wf = os.path.join(tmp, "first.kdl")
    write(wf, 'workflow {\n    job id="first" {\n        step run="echo first-line"\n    }\n}\n')
    empty = empty_repo(tmp)

    def sample(cwd, extra):
        samples = []
        for _ in range(rounds):
            t = time.perf_counter()
            p = subprocess.Popen([CIDEV, "run", wf] + extra, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 cwd=cwd, env=ENV, text=True)
            for line in p.stdout:
                if "first-line" in line and "echo" not in line:
                    samples.append(time.perf_counter() - t)
                    break
            p.wait()
        return statistics.median(samples) * 1000

    shm = ["--tmpdir", "/dev/shm"] if os.path.isdir("/dev/shm") else []
    results = [
        ("empty checkout", sample(empty, [])),
        ("this repository", sample(ROOT, [])),
        ("this repository, --tmpdir /dev/shm", sample(ROOT, shm)),
    ]
    text = ", ".join(f"{label} {ms:.0f} ms" for label, ms in results)
    print(f"latency:    start to first step output (median of {rounds}): {text} (target <= 100)")


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
    args = [CIDEV, "run", wf, "--secret", "TOKEN=not-in-the-output-0123456789", "--log-cap-mib", "512"]
    empty = empty_repo(tmp)
    quiet = statistics.median(timed(args + ["--quiet"], cwd=empty) for _ in range(rounds))
    shown = statistics.median(timed(args, cwd=empty) for _ in range(rounds))
    print(f"throughput: {size:.0f} MB, masking on: runner -> engine -> store {size/quiet:.0f} MB/s ({quiet:.2f} s); "
          f"also printed with prefixes {size/shown:.0f} MB/s ({shown:.2f} s); cat to /dev/null {size/base:.0f} MB/s "
          f"(ratios {base/quiet:.4f}, {base/shown:.4f}; target >= 100 MB/s)")


def vm(tmp, rounds=5):
    wf = os.path.join(tmp, "one.kdl")
    write(wf, 'workflow {\n    job id="one" {\n        step run="true"\n    }\n}\n')
    empty = empty_repo(tmp)
    local = statistics.median(timed([CIDEV, "run", wf], cwd=empty) for _ in range(rounds))
    qemu = statistics.median(timed([CIDEV, "run", "--provider", "qemu", wf], cwd=empty) for _ in range(rounds))
    print(f"vm:         one-step job, cidev run start to exit (median of {rounds}): local provider {local*1000:.0f} ms, "
          f"qemu provider {qemu*1000:.0f} ms -> {(qemu-local)*1000:.0f} ms per job for the VM (ratio {qemu/local:.1f})")


if __name__ == "__main__":
    which = sys.argv[1:] or ["overhead", "latency", "throughput", "vm"]
    build()
    with tempfile.TemporaryDirectory() as tmp:
        for name in which:
            {"overhead": overhead, "latency": latency, "throughput": throughput, "vm": vm}[name](tmp)
