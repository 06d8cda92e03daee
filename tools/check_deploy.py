#!/usr/bin/env python3
"""Check deploy/ without a cluster: the Kubernetes Indexed Job manifest (YAML parse and the
fields the recipe relies on, checked against the batch/v1 Job API's rules that matter here)
and the Slurm array script (bash syntax, shellcheck when installed). Run from the repository
root; exits 1 naming every problem. Needs PyYAML."""

import os
import re
import shutil
import subprocess
import sys

import yaml

problems = []


def need(cond, what):
    if not cond:
        problems.append(what)


def check_job(path):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    need(len(docs) == 1, f"{path}: one document expected, found {len(docs)}")
    job = docs[0]
    need(job.get("apiVersion") == "batch/v1", f"{path}: apiVersion must be batch/v1")
    need(job.get("kind") == "Job", f"{path}: kind must be Job")
    name = job.get("metadata", {}).get("name", "")
    need(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name or "") is not None,
         f"{path}: metadata.name {name!r} is not a DNS label")
    spec = job.get("spec", {})
    need(spec.get("completionMode") == "Indexed", f"{path}: spec.completionMode must be Indexed")
    completions = spec.get("completions")
    need(isinstance(completions, int) and completions >= 1, f"{path}: spec.completions must be a positive integer")
    need(spec.get("parallelism", 1) <= (completions or 0), f"{path}: parallelism above completions")
    if "backoffLimitPerIndex" in spec:
        need(isinstance(spec["backoffLimitPerIndex"], int), f"{path}: backoffLimitPerIndex must be an integer")
    pod = spec.get("template", {}).get("spec", {})
    need(pod.get("restartPolicy") in ("Never", "OnFailure"),
         f"{path}: a Job's restartPolicy must be Never or OnFailure")
    containers = pod.get("containers", [])
    need(len(containers) == 1, f"{path}: one container expected")
    for c in containers:
        need(bool(c.get("image")), f"{path}: container without image")
        line = " ".join(c.get("command", []) + c.get("args", []))
        need("JOB_COMPLETION_INDEX" in line and "--shard" in line and "--resume" in line,
             f"{path}: the command must shard by JOB_COMPLETION_INDEX with --resume")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        need(env.get("TESSERA_SHARDS") == str(completions),
             f"{path}: TESSERA_SHARDS ({env.get('TESSERA_SHARDS')}) must equal completions ({completions})")
        mounts = {m["name"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"] for v in pod.get("volumes", [])}
        need(mounts <= volumes, f"{path}: volumeMounts {mounts - volumes} have no volume")


def check_script(path):
    need(os.access(path, os.X_OK), f"{path}: not executable")
    r = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
    need(r.returncode == 0, f"{path}: bash syntax: {r.stderr.strip()}")
    text = open(path).read()
    need("#SBATCH" in text and "SLURM_ARRAY_TASK_ID" in text and "--shard" in text,
         f"{path}: must shard by SLURM_ARRAY_TASK_ID")
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", path], capture_output=True, text=True)
        need(r.returncode == 0, f"{path}: shellcheck: {r.stdout.strip()}")
    else:
        print("shellcheck not installed: bash -n only")


check_job("deploy/k8s-indexed-job.yaml")
check_script("deploy/slurm-array.sh")
docker = open("deploy/Dockerfile").read()
need(docker.count("FROM ") >= 2 and "--release" in docker, "deploy/Dockerfile: multi-stage release build expected")
for p in problems:
    print(p, file=sys.stderr)
print("deploy: ok" if not problems else f"deploy: {len(problems)} problems")
sys.exit(1 if problems else 0)
