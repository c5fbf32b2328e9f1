"""What the bench scripts share: HTTP/1.1 to a coordinator's admin socket,
and a one-replica sleep workload spec as the admin API takes it."""
import http.client, json, socket


def client(sock):
    class Unix(http.client.HTTPConnection):
        def __init__(self):
            super().__init__("x", timeout=120)

        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(sock)

    def req(method, url, body=None):
        c = Unix()
        c.request(method, url, body=None if body is None else json.dumps(body),
                  headers={"content-type": "application/json"})
        r = c.getresponse(); d = r.read(); c.close()
        if r.status != 200:
            raise SystemExit(f"{method} {url}: {r.status} {d[:200]}")
        return d

    return req


def spec(name, env=None, labels=()):
    return {"name": name, "runtime": {"process": {"command": "/bin/sleep"}}, "args": ["600"], "env": env or {},
            "ports": [], "replicas": 1, "restart": {"mode": "always", "backoff_ms": 1000, "max_backoff_ms": 60000},
            "cpu_milli": 0, "memory_mib": 0, "gpu": "none",
            "constraints": {"gpu_models": [], "min_gpu_memory_mib": 0, "labels": list(labels),
                            "spread_replicas": False},
            "policy": None, "health": None, "stop_grace_ms": 1000}
