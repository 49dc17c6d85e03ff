"""The machine line every benchmark records: CPU, cores, memory, OS, the binary's --version (its
BLAS kernel, threads and wait policy) and the load average when the run started."""
import os
import platform
import subprocess


def machine(binary, threads=None):
    cpu, mem_kib = "unknown", 0
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
        with open("/proc/meminfo") as f:
            mem_kib = next((int(l.split()[1]) for l in f if l.startswith("MemTotal")), 0)
    except OSError:
        pass
    cmd = [binary] + (["--threads", str(threads)] if threads is not None else []) + ["--version"]
    version = subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem_kib / 2**20, 1), "os": platform.platform(),
            "kernel": platform.release(), "sortedllama": version, "load_avg_at_start": os.getloadavg()[0]}
