# A CUDA workload for checking Gantry's GPU isolation on real hardware
# (run by verify-nvml.sh): prints the environment it was given, the SMs and
# memory CUDA shows it, tries allocations of PROBE_GIB (comma-separated),
# holds HOLD_GIB, then runs bf16 8192^3 matmuls for LOAD_S seconds and
# reports TFLOP/s, where an MPS share's active-thread limit shows.
import os, time, torch
for k in sorted(os.environ):
    if k.startswith(("CUDA_", "NVIDIA_", "GANTRY_")):
        print(f"env {k}={os.environ[k]}", flush=True)
print("device", torch.cuda.get_device_name(0), "count", torch.cuda.device_count(), flush=True)
print("sms", torch.cuda.get_device_properties(0).multi_processor_count, flush=True)
free, total = torch.cuda.mem_get_info()
print(f"mem_get_info free={free >> 20}MiB total={total >> 20}MiB", flush=True)
for gib in [float(x) for x in os.environ.get("PROBE_GIB", "").split(",") if x]:
    try:
        t = torch.empty(int(gib * 2**30), dtype=torch.uint8, device="cuda")
        t.fill_(1)
        torch.cuda.synchronize()
        print(f"alloc {gib} GiB ok", flush=True)
        del t
        torch.cuda.empty_cache()
    except Exception as e:
        print(f"alloc {gib} GiB failed: {str(e).splitlines()[0][:160]}", flush=True)
hold = torch.empty(int(float(os.environ.get("HOLD_GIB", "2")) * 2**30), dtype=torch.uint8, device="cuda")
hold.fill_(1)
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
end = time.time() + float(os.environ.get("LOAD_S", "30"))
n, t0 = 0, time.time()
while time.time() < end:
    for _ in range(20):
        b = a @ a
    torch.cuda.synchronize()
    n += 20
    if time.time() - t0 > 4:
        print(f"tflops {2 * 8192**3 * n / (time.time() - t0) / 1e12:.0f}", flush=True)
        n, t0 = 0, time.time()
print("done", flush=True)
time.sleep(600)
