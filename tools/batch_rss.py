#!/usr/bin/env python3
"""RSS and wall time across a batch: writes N small specs of one model into a temporary
folder, renders the folder with `tessera render FOLDER --json`, and prints each spec's
resident memory after it (`rss_bytes`), the models it loaded, and the batch's wall time.

    python3 tools/batch_rss.py [--bin target/release/tessera] [--model DIR] [-n 10]
                               [--size 128] [--steps 4]
"""

import argparse
import json
import pathlib
import subprocess
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", default=str(ROOT / "target/release/tessera"))
    p.add_argument("--model", default=str(ROOT / "models/tiny-poster"))
    p.add_argument("-n", type=int, default=10)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=4)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.n):
            spec = (
                f'model = "{pathlib.Path(a.model).resolve()}"\n'
                f"[canvas]\nwidth = {a.size}\nheight = {a.size}\nsteps = {a.steps}\n"
                f'seed = {i}\nscheduler = "dpm++2m"\n'
                f'[prompt]\ntext = "a lighthouse on a cliff at dusk, poster {i}"\n'
            )
            pathlib.Path(tmp, f"spec{i:02}.toml").write_text(spec)
        start = time.monotonic()
        out = subprocess.run(
            [a.bin, "render", tmp, "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        wall = time.monotonic() - start
    rss = []
    for line in out.splitlines():
        v = json.loads(line)
        loads = v["report"]["model_loads"]
        rss.append(v["rss_bytes"])
        name = pathlib.Path(v["spec"]).name
        print(f"{name}  rss {v['rss_bytes'] / 2**20:7.1f} MiB  loads {loads}")
    print(
        f"{a.n} specs: wall {wall:.2f} s; RSS after spec 1 {rss[0] / 2**20:.1f} MiB, "
        f"max after specs 2..{a.n} {max(rss[1:]) / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    main()
