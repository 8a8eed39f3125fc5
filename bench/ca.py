"""Connect CA benchmark: leaf certificates end to end vs a bare ``cryptography`` loop, and intention
decisions.

    .venv/bin/python -m bench.ca [--seconds 10] [--connections 64] [--few-connections 16] [--no-docs]
    .venv/bin/python -m bench.ca --acl [--seconds 10] [--connections 64] [--no-docs]

Leaf certificates: a real ``proconsul agent -dev`` (CSR rate limit off) pinned to CPU 0 answers
``GET /v1/agent/connect/ca/leaf/<fresh service>`` driven by ``wrk`` pinned to CPU 1; every request is
a service never seen before, so every response is a new certificate: the agent makes an EC P-256 key
and a CSR, the signer parses and checks the CSR (signature, exactly one SPIFFE URI naming that
service) and signs a leaf, and the agent answers Consul's IssuedCert JSON with both PEMs.

The peer is a bare loop with ``cryptography`` alone doing the same cryptographic work per certificate,
pinned to the same CPU in the same run: generate a P-256 key, build and sign a CSR with one URI SAN,
PEM-encode it, parse it back, verify its signature, build and sign a leaf with the same extensions
(CA:false, key usage, client+server auth, SKID, AKID, the URI SAN), PEM-encode the certificate and the
key. No validation beyond the signature check, no HTTP, no cache. A second, smaller loop measures only
"verify a CSR + sign a leaf" (the figure the engineering guide quotes) for reference; the ratio is taken
against the full loop, which is like for like.

Throughput is reported two ways: certificates per wall-clock second, and certificates per CPU-second
of the process that did the work (agent process CPU from /proc; the bare loop's own process time).
On a shared 2-core machine the second is the fair "per core" figure; the ratio uses it.

``--acl``: the same leaf load against two agents in the same run, one with ACLs off and one with
``acl { enabled = true, default_policy = "deny" }`` where every request carries a token that may
``service:write`` the services it asks leaves for (not a management token: its rules are evaluated for
every request, and the signer checks the token again); the figure is the ratio of their certificates per
CPU-second (target: at least 0.9x).

Intentions: 10,000 intentions (exact pairs, ``src => *``, ``* => dst`` and ``* => *``), indexed once,
then ``decide`` on random (source, destination) pairs in-process, and ``decide_uri`` (what the
authorize endpoint does, SPIFFE parsing included).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from bench._util import (
    cpu_model,
    ensure_tool,
    free_port,
    taskset,
    wait_for_quiet_machine,
    write_section,
)
from ca import certs, provider
from registry.intentions import Intention, build_index, decide, decide_uri

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "Connect CA"
CLUSTER_ID = "7f42f496-fbc7-8692-05ed-334aa5340c1e"

WRK_SCRIPT = """
local counter = 0
local threads = 0
local prefix = "svc-"
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  prefix = "svc-" .. (args[1] or "run") .. "-" .. tid .. "-"
  if args[2] then
    wrk.headers["X-Consul-Token"] = args[2]
  end
end
function request()
  counter = counter + 1
  return wrk.format("GET", "/v1/agent/connect/ca/leaf/" .. prefix .. counter)
end
"""


# ---------------------------------------------------------------------- the machine


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > cpu:  # type: ignore[operator]
        os.sched_setaffinity(0, {cpu})


# ---------------------------------------------------------------------- bare cryptography


class Bare:
    """The peer: the same cryptographic work per certificate with ``cryptography`` alone."""

    def __init__(self) -> None:
        now = datetime.now(UTC)
        state = provider.initialize(CLUSTER_ID, provider.CAConfig(), now, os.urandom)
        self.trust_domain = state.trust_domain
        self.root_key = certs.private_key_from_pem(state.active_root.private_key_pem)
        self.root_cert = state.active_root.certificate()
        self.now = now

    def _leaf(self, csr: x509.CertificateSigningRequest, uri: str) -> x509.Certificate:
        pub = csr.public_key()
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.root_cert.subject)
            .public_key(pub)
            .serial_number(int.from_bytes(os.urandom(16), "big") >> 2 | 1 << 120)
            .not_valid_before(self.now - timedelta(minutes=1))
            .not_valid_after(self.now + timedelta(hours=72))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, True, False, False, False, False), critical=True
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )  # fmt: skip
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.root_key.public_key()), critical=False
            )  # fmt: skip
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
            .sign(self.root_key, hashes.SHA256())
        )

    def full(self, i: int) -> None:
        """keygen + CSR + PEM round trip + verify + sign + PEM of certificate and key."""
        key = ec.generate_private_key(ec.SECP256R1())
        uri = f"spiffe://{self.trust_domain}/ns/default/dc/dc1/svc/bare-{i}"
        csr_pem = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )
        csr = x509.load_pem_x509_csr(csr_pem)
        if not csr.is_signature_valid:
            raise AssertionError("bad CSR signature")
        self._leaf(csr, uri).public_bytes(serialization.Encoding.PEM)
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                          serialization.NoEncryption())  # fmt: skip

    def csrs(self, n: int) -> list[tuple[bytes, str]]:
        out = []
        for i in range(n):
            uri = f"spiffe://{self.trust_domain}/ns/default/dc/dc1/svc/pre-{i}"
            pem = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([]))
                .add_extension(
                    x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True
                )
                .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
                .public_bytes(serialization.Encoding.PEM)
            )
            out.append((pem, uri))
        return out

    def verify_sign(self, pem: bytes, uri: str) -> None:
        """Only what the guide's figure measures: parse + verify a CSR, sign a leaf."""
        csr = x509.load_pem_x509_csr(pem)
        if not csr.is_signature_valid:
            raise AssertionError("bad CSR signature")
        self._leaf(csr, uri).public_bytes(serialization.Encoding.PEM)


def run_bare(n: int) -> dict[str, float]:
    bare = Bare()
    for i in range(50):
        bare.full(i)  # warm caches and OpenSSL's lazy setup
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        bare.full(i)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    pre = bare.csrs(n // 2)
    c1 = time.process_time()
    for pem, uri in pre:
        bare.verify_sign(pem, uri)
    vs_cpu = time.process_time() - c1
    return {
        "full_per_cpu_s": n / cpu,
        "full_per_wall_s": n / wall,
        "verify_sign_per_cpu_s": len(pre) / vs_cpu,
    }


# ---------------------------------------------------------------------- end to end


def http_json(url: str, token: str = "", method: str = "GET", body: object = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"X-Consul-Token": token} if token else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


MGMT = "0b5e7c1d-2f3a-4b6c-8d9e-a1b2c3d4e5f6"  # the --acl agent's initial management token
LEAF_RULES = 'service_prefix "" { policy = "write" }'


class AgentProcess:
    def __init__(self, workdir: Path, cpu: int, acl: bool = False) -> None:
        self.port = free_port()
        self.token = ""
        config = workdir / ("ca-bench-acl.json" if acl else "ca-bench.json")
        # The CSR rate limit (Consul's default 50/s) is what a cluster wants and exactly what a
        # throughput measurement must not have.
        doc: dict = {"connect": {"ca_config": {"csr_max_per_second": 0}}}
        if acl:
            doc["acl"] = {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": MGMT}}
        config.write_text(json.dumps(doc))
        cmd = [str(BIN / "proconsul"), "agent", "-dev", "-serf-lan-port", "0", "-node", "ca-bench", "-http-port", str(self.port),
               "-dns-port", "-1", "-log-level", "warn", "-config-file", str(config)]  # fmt: skip
        cmd = [*taskset(cpu), *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"agent exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}"
                )
            try:
                if http_json(self.url + "/v1/connect/ca/roots", MGMT if acl else "")["Roots"]:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("agent did not start")
            time.sleep(0.05)
        if acl:
            # A token that may write every service, made the way an operator makes one.
            policy = http_json(self.url + "/v1/acl/policy", MGMT, "PUT", {"Name": "leaf-bench", "Rules": LEAF_RULES})
            token = http_json(self.url + "/v1/acl/token", MGMT, "PUT", {"Policies": [{"ID": policy["ID"]}]})
            self.token = token["SecretID"]

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def check_one_leaf(agent: AgentProcess, workdir: Path) -> None:
    """The responses are real certificates: one of them must pass openssl verify against the roots."""
    leaf = http_json(agent.url + "/v1/agent/connect/ca/leaf/bench-check", agent.token)
    roots = http_json(agent.url + "/v1/connect/ca/roots", agent.token)
    (workdir / "leaf.pem").write_text(leaf["CertPEM"])
    (workdir / "roots.pem").write_text("".join(r["RootCert"] for r in roots["Roots"]))
    if shutil.which("openssl"):
        out = subprocess.run(["openssl", "verify", "-CAfile", str(workdir / "roots.pem"), str(workdir / "leaf.pem")],
                             capture_output=True, text=True)  # fmt: skip
        if out.returncode != 0:
            raise SystemExit(f"issued certificate does not verify: {out.stdout}{out.stderr}")


def run_wrk(wrk: str, agent: AgentProcess, script: Path, seconds: float, connections: int, cpu: int,
            run_id: str) -> dict[str, float]:  # fmt: skip
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script), agent.url, "--", run_id]
    if agent.token:
        cmd.append(agent.token)
    cmd = [*taskset(cpu), *cmd]
    c0 = agent.cpu_seconds()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    cpu_used = agent.cpu_seconds() - c0
    text = out.stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", text)
    if out.returncode != 0 or m is None:
        raise SystemExit(f"wrk failed: {text}{out.stderr}")
    requests = int(m.group(1))
    duration = float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)
    p50 = re.search(r"Latency\s+([\d.]+\w+)", text)
    return {
        "requests": requests,
        "per_wall_s": requests / duration,
        "per_cpu_s": requests / cpu_used if cpu_used > 0 else 0.0,
        "agent_core_share": cpu_used / duration,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
        "latency_avg": p50.group(1) if p50 else "",
    }


# ---------------------------------------------------------------------- intentions


def run_intentions(n_intentions: int = 10_000, n_decisions: int = 200_000) -> dict[str, float]:
    rng = random.Random(1)
    services = [f"svc-{i}" for i in range(4000)]
    ixns: list[Intention] = []
    seen: set[tuple[str, str]] = set()
    while len(ixns) < n_intentions - 1:
        kind = rng.random()
        src = rng.choice(services) if kind > 0.05 else "*"
        dst = rng.choice(services) if kind < 0.95 or src == "*" else "*"
        if (src, dst) in seen:
            continue
        seen.add((src, dst))
        ixns.append(Intention(source_name=src, destination_name=dst, action=rng.choice(("allow", "deny"))))
    ixns.append(Intention(source_name="*", destination_name="*", action="deny"))
    t0 = time.process_time()
    index = build_index(ixns)
    build_s = time.process_time() - t0
    pairs = [(rng.choice(services), rng.choice(services)) for _ in range(n_decisions)]
    td = f"{CLUSTER_ID}.consul"
    uris = [(f"spiffe://{td}/ns/default/dc/dc1/svc/{s}", d) for s, d in pairs[: n_decisions // 4]]
    t0 = time.process_time()
    allowed = 0
    for s, d in pairs:
        allowed += decide(index, s, d, True).allowed
    decide_s = time.process_time() - t0
    t0 = time.process_time()
    for uri, d in uris:
        decide_uri(index, uri, d, True)
    uri_s = time.process_time() - t0
    return {"intentions": len(index), "build_s": build_s, "decide_per_s": n_decisions / decide_s,
            "decide_uri_per_s": len(uris) / uri_s, "allowed_fraction": allowed / n_decisions}  # fmt: skip


# ---------------------------------------------------------------------- report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    # 64 connections, the load shape of bench/http_discovery; 16 is measured beside it for reference.
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--few-connections", type=int, default=16)
    ap.add_argument("--bare-n", type=int, default=3000)
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--acl", action="store_true", help="leaf signing with ACLs on and a token vs ACLs off")
    args = ap.parse_args()
    if args.acl:
        return main_acl(args)

    wrk = ensure_tool("wrk", "wrk")
    busy = wait_for_quiet_machine(0.25, 60)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(
        f"# machine: {os.cpu_count()} CPUs, {cpu_model()}, load {load}, busy {busy:.0%} before the run",
        flush=True,
    )
    agent_cpu, load_cpu = 0, 1 if (os.cpu_count() or 1) > 1 else 0

    pin(agent_cpu)
    bare_runs = [run_bare(args.bare_n)]
    print(f"bare loop: {bare_runs[0]['full_per_cpu_s']:.0f}/CPU-s", flush=True)

    e2e_runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        script = work / "leaf.lua"
        script.write_text(WRK_SCRIPT)
        agent = AgentProcess(work, agent_cpu)
        try:
            check_one_leaf(agent, work)
            run_wrk(wrk, agent, script, 2, args.connections, load_cpu, "warmup")
            for rep in range(2):
                e2e_runs.append(
                    run_wrk(wrk, agent, script, args.seconds, args.connections, load_cpu, f"r{rep}")
                )
                print(f"end to end: {e2e_runs[-1]['per_wall_s']:.0f}/s wall, {e2e_runs[-1]['per_cpu_s']:.0f}/CPU-s",
                      flush=True)  # fmt: skip
            few = run_wrk(wrk, agent, script, args.seconds, args.few_connections, load_cpu, "few")
            print(f"end to end, {args.few_connections} connections: {few['per_cpu_s']:.0f}/CPU-s", flush=True)
        finally:
            agent.stop()
    bare_runs.append(run_bare(args.bare_n))
    print(f"bare loop: {bare_runs[1]['full_per_cpu_s']:.0f}/CPU-s", flush=True)
    # The agent ran with wrk busy on the other CPU; show what a busy neighbour does to the bare loop
    # too (shared caches and memory bandwidth), without counting it in the ratio.
    spinner = subprocess.Popen(
        [sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<60: pass"]
    )
    if shutil.which("taskset"):
        subprocess.run(["taskset", "-p", "-c", str(load_cpu), str(spinner.pid)], capture_output=True)
    try:
        neighbour = run_bare(args.bare_n)
    finally:
        spinner.kill()
        spinner.wait()
    print(f"bare loop beside a busy CPU: {neighbour['full_per_cpu_s']:.0f}/CPU-s", flush=True)
    ixn = run_intentions()

    bare_cpu = sum(r["full_per_cpu_s"] for r in bare_runs) / len(bare_runs)
    bare_wall = sum(r["full_per_wall_s"] for r in bare_runs) / len(bare_runs)
    vs_cpu = sum(r["verify_sign_per_cpu_s"] for r in bare_runs) / len(bare_runs)
    e2e_cpu = sum(r["per_cpu_s"] for r in e2e_runs) / len(e2e_runs)
    ratio = e2e_cpu / bare_cpu
    bad = sum(r["non_2xx"] for r in e2e_runs)
    date = time.strftime("%Y-%m-%d")
    runs = "; ".join(f"{r['per_cpu_s']:,.0f}/CPU-s, {r['per_wall_s']:,.0f}/s wall at {r['agent_core_share']:.0%} "
                     "of a core" for r in e2e_runs)  # fmt: skip
    rows = [
        ("Leaf certificates, end to end (`GET /v1/agent/connect/ca/leaf/<new service>`, wrk, "
         f"{args.connections} connections, {args.seconds:g} s x {len(e2e_runs)})",
         f"**{e2e_cpu:,.0f}/CPU-s** ({runs}); {bad} non-2xx"),
        ("Bare `cryptography` loop, same work per certificate (keygen + CSR + PEM round trip + verify + sign + "
         "PEMs), before and after", f"{bare_cpu:,.0f}/CPU-s ({bare_wall:,.0f}/s wall)"),
        ("**Ratio end to end / bare**", f"**{ratio:.2f}x**"),
        (f"End to end with {args.few_connections} connections (fewer concurrent requests to batch; not in the target)",
         f"{few['per_cpu_s']:,.0f}/CPU-s, {few['per_cpu_s'] / bare_cpu:.2f}x the bare loop"),
        ("Bare loop with the other CPU busy (as it is during the end-to-end run; not in the ratio)",
         f"{neighbour['full_per_cpu_s']:,.0f}/CPU-s"),
        ("Bare verify CSR + sign leaf only (no keygen, no CSR creation; reference)", f"{vs_cpu:,.0f}/CPU-s"),
        (f"Intention decisions, {ixn['intentions']:,} intentions, `decide` in-process", f"{ixn['decide_per_s']:,.0f}/s"),
        ("Intention decisions from a certificate URI (`decide_uri`, SPIFFE parse included)",
         f"{ixn['decide_uri_per_s']:,.0f}/s"),
        (f"Index build for {ixn['intentions']:,} intentions", f"{ixn['build_s'] * 1000:.0f} ms"),
    ]  # fmt: skip
    table = "\n".join(f"| {a} | {b} |" for a, b in rows)
    body = (
        f"Measured {date} by `python -m bench.ca` on {os.cpu_count()} CPUs ({cpu_model()}), load {load} before "
        "the run (the machine is shared: per-CPU-second figures are the fair per-core numbers). The agent "
        "(`proconsul agent -dev`, CSR rate limit off) is pinned to CPU 0 and wrk to CPU 1; the bare loop runs "
        "on CPU 0 before and after. Every request names a new service, so every response is a new "
        "certificate: the agent generates the P-256 key and CSR, the signer verifies the CSR and its one "
        "SPIFFE URI and signs, the agent answers Consul's IssuedCert JSON. The bare loop does the same "
        "cryptography with nothing around it (see the module docstring for exactly what). The agent issues "
        "the certificates of concurrent requests back to back, which keeps the cryptography hot in the CPU's "
        "caches; with fewer requests in flight each batch is smaller and each certificate costs more (the "
        f"{args.few_connections}-connection row).\n\n"
        "| What | Result |\n|---|---|\n" + table + "\n\n"
        "Targets: at least 1,500 certificates/s on one core and at least 0.6x the bare loop; at least "
        "50,000 intention decisions/s with 10,000 intentions. This run: "
        f"{'met' if e2e_cpu >= 1500 else 'NOT met'} (certificates per core), "
        f"{'met' if ratio >= 0.6 else 'NOT met'} (ratio), "
        f"{'met' if ixn['decide_per_s'] >= 50_000 else 'NOT met'} (intentions).\n"
    )
    print()
    print(f"## {SECTION}\n\n{body}")
    if not args.no_docs:
        write_section(SECTION, body)
        print(f"# wrote the '{SECTION}' section of {DOCS.relative_to(ROOT)}")
    return 0


ACL_SECTION = "Connect CA with ACLs"


def main_acl(args: argparse.Namespace) -> int:
    """Leaf signing with ACLs on (default deny, a service-write token on every request) against ACLs off,
    the two agents measured alternately in the same run so that machine noise falls on both."""
    wrk = ensure_tool("wrk", "wrk")
    busy = wait_for_quiet_machine(0.25, 60)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"# machine: {os.cpu_count()} CPUs, {cpu_model()}, load {load}, busy {busy:.0%} before the run", flush=True)
    agent_cpu, load_cpu = 0, 1 if (os.cpu_count() or 1) > 1 else 0
    runs: dict[str, list[dict[str, float]]] = {"acl-off": [], "acl-on": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        script = work / "leaf.lua"
        script.write_text(WRK_SCRIPT)
        agents = {"acl-off": AgentProcess(work, agent_cpu), "acl-on": AgentProcess(work, agent_cpu, acl=True)}
        try:
            for name, agent in agents.items():
                check_one_leaf(agent, work)
                run_wrk(wrk, agent, script, 2, args.connections, load_cpu, f"warmup-{name}")
            for rep in range(3):
                for name, agent in agents.items():
                    r = run_wrk(wrk, agent, script, args.seconds, args.connections, load_cpu, f"{name}-r{rep}")
                    runs[name].append(r)
                    print(f"{name}: {r['per_cpu_s']:.0f}/CPU-s, {r['per_wall_s']:.0f}/s wall, "
                          f"{r['non_2xx']} non-2xx", flush=True)  # fmt: skip
        finally:
            for agent in agents.values():
                agent.stop()

    def med(name: str, key: str) -> float:
        return sorted(r[key] for r in runs[name])[len(runs[name]) // 2]

    ratio = med("acl-on", "per_cpu_s") / med("acl-off", "per_cpu_s")
    wall_ratio = med("acl-on", "per_wall_s") / med("acl-off", "per_wall_s")
    bad = sum(r["non_2xx"] for rs in runs.values() for r in rs)
    date = time.strftime("%Y-%m-%d")
    rows = [
        (f"Leaf certificates with ACLs off (median of {len(runs['acl-off'])})",
         f"{med('acl-off', 'per_cpu_s'):,.0f}/CPU-s, {med('acl-off', 'per_wall_s'):,.0f}/s wall"),
        ("Leaf certificates with ACLs on, default deny, a `service_prefix \"\" write` token "
         f"(median of {len(runs['acl-on'])})",
         f"{med('acl-on', 'per_cpu_s'):,.0f}/CPU-s, {med('acl-on', 'per_wall_s'):,.0f}/s wall"),
        ("**Ratio ACLs on / off** (per CPU-second; wall clock beside it)", f"**{ratio:.2f}x** ({wall_ratio:.2f}x)"),
        ("Non-2xx responses in all runs", str(bad)),
    ]  # fmt: skip
    table = "\n".join(f"| {a} | {b} |" for a, b in rows)
    body = (
        f"Measured {date} by `python -m bench.ca --acl` on {os.cpu_count()} CPUs ({cpu_model()}), load {load} "
        f"before the run. Two `proconsul agent -dev` agents (CSR rate limit off), one with ACLs off and one "
        f"with `acl {{ enabled = true, default_policy = \"deny\" }}`, each pinned to CPU 0 in turn with wrk "
        f"on CPU 1, {args.connections} connections, {args.seconds:g} s per run, alternating; every request "
        "names a new service, and on the ACL agent carries a token whose rules are evaluated for the route "
        "and again by the signer.\n\n"
        "| What | Result |\n|---|---|\n" + table + "\n\n"
        f"Target: at least 0.9x. This run: {'met' if ratio >= 0.9 else 'NOT met'}.\n"
    )
    print()
    print(f"## {ACL_SECTION}\n\n{body}")
    if not args.no_docs:
        write_section(ACL_SECTION, body)
        print(f"# wrote the '{ACL_SECTION}' section of {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
