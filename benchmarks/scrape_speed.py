"""How fast `download_all` fetches a scrape's images: 1000 JPEGs from a local server with added latency.

    python benchmarks/scrape_speed.py [--images 1000] [--latency-ms 50] [--workers 16]
    python benchmarks/scrape_speed.py --whole-scrape   # search + list + download + records, via the local booru

The server runs in a child process (stdlib http.server, one thread per connection, HTTP/1.1
keep-alive) so its Python work does not share a GIL with the downloader being measured. It
serves distinct JPEGs of ~30-100 KB (noise over a gradient, made with PIL and kept in memory)
and sleeps `--latency-ms` before each answer, like a far-away image host. Prints wall time,
files/s and MB/s. The target from the scrape issue is under 60 s for 1000 images at 50 ms.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lora_gradio.engine.downloader import DownloadItem, download_all
from lora_gradio.engine.progress import Progress


def make_jpeg(seed: int) -> bytes:
    """A distinct JPEG of roughly 30-100 KB: a colour gradient with a seeded amount of noise."""
    from PIL import Image

    rng = random.Random(seed)
    width, height = rng.choice([(384, 512), (512, 384), (448, 448), (512, 512)])
    gradient = Image.linear_gradient("L").resize((width, height))
    base = Image.merge("RGB", (gradient, gradient.rotate(90), Image.new("L", (width, height), rng.randrange(256))))
    noise = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    image = Image.blend(base, noise, rng.uniform(0.08, 0.2))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=rng.randint(80, 92))
    return buf.getvalue()


def serve(count: int, latency_s: float, ready: mp.connection.Connection) -> None:
    """Child process: build the images, start the server, send the port and wait to be killed."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor() as pool:  # PIL encodes outside the GIL
        images = list(pool.map(make_jpeg, range(count)))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real image hosts do

        def do_GET(self):
            time.sleep(latency_s)
            try:
                body = images[int(self.path.strip("/").split(".")[0])]
            except (ValueError, IndexError):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer.request_queue_size = 256  # many workers connect at once
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ready.send((server.server_address[1], sum(map(len, images))))
    server.serve_forever()


def start_server(count: int, latency_s: float) -> tuple[mp.Process, str, int]:
    parent, child = mp.Pipe()
    process = mp.get_context("spawn").Process(target=serve, args=(count, latency_s, child), daemon=True)
    process.start()
    if not parent.poll(300):
        process.kill()
        raise SystemExit("the image server did not start")
    port, total_bytes = parent.recv()
    return process, f"http://127.0.0.1:{port}", total_bytes


class CountProgress(Progress):
    def __init__(self) -> None:
        self.last: dict = {}

    def update(self, done, total=None, message="", **data):
        self.last = {"done": done, "total": total, **data}


def whole_scrape(count: int, latency_s: float) -> int:
    """`scrape_project` end to end: Safebooru pages of 100, the URL list, 1000 downloads, the records."""
    from lora_gradio.engine.project import Projects
    from lora_gradio.engine.scrape_run import scrape_project
    from tests.booru_server import BooruServer

    with BooruServer(n_posts=int(count * 1.3), latency=latency_s) as booru, tempfile.TemporaryDirectory() as tmp:
        project = Projects(Path(tmp) / "Loras").create("bench")
        start = time.perf_counter()
        report = scrape_project(project, {"site": "safebooru", "tags": "fake_tag", "limit": count, "base_url": booru.safebooru_url})
        elapsed = time.perf_counter() - start
    print(f"whole scrape of {count} images, {latency_s * 1000:g} ms latency per request: {elapsed:.2f} s ({count / elapsed:.1f} images/s)")
    print(report.summary())
    return 0 if report.downloaded == count else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--whole-scrape", action="store_true", help="time the whole scrape step against tests/booru_server.py (small images)")
    args = parser.parse_args()
    if args.whole_scrape:
        return whole_scrape(args.images, args.latency_ms / 1000)

    print(f"making {args.images} JPEGs and starting the server ...", flush=True)
    server, url, total_bytes = start_server(args.images, args.latency_ms / 1000)
    try:
        items = [DownloadItem(f"{url}/{i}.jpg", f"{i:05d}.jpg", md5=f"{i:032x}") for i in range(args.images)]
        with tempfile.TemporaryDirectory() as tmp:
            progress = CountProgress()
            start = time.perf_counter()
            report = download_all(items, Path(tmp) / "dataset", workers=args.workers, progress=progress, record_path=Path(tmp) / "record.jsonl")
            elapsed = time.perf_counter() - start
            landed = sum(1 for _ in (Path(tmp) / "dataset").iterdir())
    finally:
        server.kill()
    mb = total_bytes / 1e6
    print(
        f"{args.images} images ({mb:.1f} MB, {total_bytes / args.images / 1024:.0f} KiB each), "
        f"{args.latency_ms:g} ms latency, {args.workers} workers, {os.cpu_count()} CPUs"
    )
    print(f"wall time {elapsed:.2f} s, {args.images / elapsed:.1f} files/s, {mb / elapsed:.1f} MB/s")
    print(report.summary())
    ok = landed == args.images and not report.failed
    target = "under" if elapsed < 60 * args.images / 1000 else "OVER"
    print(f"{target} the target of 60 s per 1000 images; {'all files landed' if ok else 'SOME FILES MISSING'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
