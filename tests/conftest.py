"""Small shared fixtures."""

from __future__ import annotations

import functools
import http.server
import io
import json
import threading
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image
from webdataset import TarWriter

from zmdist.data.manifest import Manifest, ShardInfo, SplitInfo


def write_uneven_shards(root: Path, counts: list[int], split: str = "train", num_classes: int = 3,
                        labelled: bool = True) -> list[str]:
    """Real shards in the zmdist format with exactly ``counts`` samples each (``write_shards`` only makes
    equal shards but the last); returns every key. Sample ``j`` of shard ``i`` has key ``s{i}_{j}``,
    label ``(i + j) % num_classes`` (none with ``labelled=False``) and a 4x4 image whose red value is ``j``
    and green value ``i``."""
    root.mkdir(parents=True, exist_ok=True)
    shards, keys = [], []
    for i, count in enumerate(counts):
        name = f"{split}-{i:06d}.tar"
        with TarWriter(str(root / name), encoder=False, mtime=0) as tar:
            for j in range(count):
                key, label = f"s{i}_{j}", (i + j) % num_classes
                buf = io.BytesIO()
                Image.new("RGB", (4, 4), (j % 256, i % 256, 0)).save(buf, format="PNG")
                meta = {"key": key, "origin": f"test:{key}", "label": label if labelled else None}
                record = {"__key__": key, "png": buf.getvalue()}
                if labelled:
                    record["cls"] = str(label).encode()
                record["json"] = json.dumps(meta).encode()
                tar.write(record)
                keys.append(key)
        shards.append(ShardInfo(name, count))
    Manifest(source="test", classes=[f"c{k}" for k in range(num_classes)], image_format="png",
             splits={split: SplitInfo(shards, sum(counts), sum(counts) if labelled else 0)}).save(root)
    return keys


@pytest.fixture
def one_torch_thread():
    """Run the test on one torch thread (restored afterwards): tiny models' many small ops run faster on
    one thread than on two cores that other tests share."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_shards(tmp_path: Path) -> Callable[..., tuple[Path, list[str]]]:
    """``make_shards([10, 7, 3, 1])`` -> (shard folder, all keys)."""
    made = 0

    def make(counts: list[int], split: str = "train") -> tuple[Path, list[str]]:
        nonlocal made
        root = tmp_path / f"shards{made}"
        made += 1
        return root, write_uneven_shards(root, counts, split)

    return make


@pytest.fixture
def http_root():
    """Serve a folder over HTTP on 127.0.0.1 (a thread in this process); yields a function folder -> URL."""
    servers = []

    def serve(folder) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


# --- SLURM tests: on by default (they FAIL with a hint when the cluster is down); ZMDIST_SLURM_TESTS=0
# deselects them for developers without root, saying so.
def pytest_collection_modifyitems(config, items):
    import os

    if os.environ.get("ZMDIST_SLURM_TESTS", "1") != "0":
        return
    slurm = [item for item in items if item.get_closest_marker("slurm")]
    if not slurm:
        return
    items[:] = [item for item in items if not item.get_closest_marker("slurm")]
    config.hook.pytest_deselected(items=slurm)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    message = f"ZMDIST_SLURM_TESTS=0: deselected {len(slurm)} SLURM tests (they need `bash slurm/local-cluster.sh up`)"
    if reporter is not None:
        reporter.write_line(message)
    else:
        print(message)
