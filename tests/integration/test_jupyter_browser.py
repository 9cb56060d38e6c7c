"""The paths a person takes: JupyterLab's server with the project's kernel running the quickstart notebook, and the
committed interactive figures opened in a real headless browser, offline."""

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, hang_guard

JUPYTER = Path(sys.executable).parent / "jupyter"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port, token, method, path, body=None):
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


async def _execute(port, token, kernel_id, sources):
    """Run each source on the kernel through the server's websocket; -> the error messages (empty: none)."""
    from tornado.websocket import websocket_connect

    ws = await websocket_connect(f"ws://127.0.0.1:{port}/api/kernels/{kernel_id}/channels?token={token}")
    session, errors = uuid.uuid4().hex, []
    for source in sources:
        msg_id = uuid.uuid4().hex
        await ws.write_message(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": session,
                       "version": "5.3", "date": ""}, "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": source, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        while True:
            msg = json.loads(await asyncio.wait_for(ws.read_message(), timeout=hang_guard(1800)))
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "error":
                errors.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")
            if msg["channel"] == "shell" and msg["msg_type"] == "execute_reply":
                if msg["content"]["status"] != "ok":
                    errors.append(f"cell failed: {msg['content'].get('ename')}")
                break
        if errors:
            break
    ws.close()
    return errors


@pytest.mark.data
def test_quickstart_runs_in_jupyter_on_the_sdlib_kernel(tmp_path):
    if not JUPYTER.exists():
        pytest.skip("jupyter is not installed in this environment (./scripts/setup.sh installs jupyterlab)")
    port, token = _free_port(), uuid.uuid4().hex
    env = {**os.environ, "SDLIB_BUILD_DIR": str(tmp_path / "build"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    server = subprocess.Popen([str(JUPYTER), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
                               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={ROOT / 'notebooks'}",
                               "--ServerApp.open_browser=False"] + (["--allow-root"] if os.geteuid() == 0 else []),
                              cwd=ROOT / "notebooks", env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(120):
            try:
                specs = _request(port, token, "GET", "/api/kernelspecs")
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(0.5)
        assert "sdlib" in specs["kernelspecs"], f"the Python (sdlib) kernel is not listed: {list(specs['kernelspecs'])}"
        assert specs["kernelspecs"]["sdlib"]["spec"]["display_name"] == "Python (sdlib)"
        nb = _request(port, token, "GET", "/api/contents/00_quickstart.ipynb")["content"]
        assert nb["metadata"]["kernelspec"]["name"] == "sdlib"
        session = _request(port, token, "POST", "/api/sessions", {"path": "00_quickstart.ipynb", "type": "notebook",
                                                                   "kernel": {"name": "sdlib"}})
        cells = [c["source"] for c in nb["cells"] if c["cell_type"] == "code"]
        # as papermill injects parameters: measure a tiny model
        tiny = 'model_name = "tiny-llama"\ncompute = True\nwindows = 4\nwindow_len = 128\nprofile = "tiny"'
        errors = asyncio.run(_execute(port, token, session["kernel"]["id"], [cells[0], tiny, *cells[1:]]))
        assert errors == []
        # opened by hand, it writes under the build folder, never into the committed figures/
        assert (tmp_path / "build" / "figures" / "tiny" / "00_quickstart.png").exists()
        _request(port, token, "DELETE", f"/api/sessions/{session['id']}")
    finally:
        server.terminate()
        server.wait(timeout=30)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FIGURES = sorted((ROOT / "figures").rglob("*.html"))


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (./scripts/setup.sh installs Debian's chromium)")
@pytest.mark.parametrize("page", FIGURES, ids=lambda p: str(p.relative_to(ROOT / "figures")))
def test_committed_figure_draws_offline_in_a_browser(page, tmp_path):
    """Chromium, headless with no network, loads the page (and plotly.min.js beside it): plotly drew its SVG and
    the console holds no message from the page. Chromium's own notes about its software WebGL (the 3-D PCA figure
    on a machine without a GPU: "[.WebGL-...] GL Driver Message ... Performance", "Canvas2D: ... readback") are
    performance hints about the renderer, not errors of the page, and are the only messages let through."""
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
                           "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                           "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=hang_guard(600))
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'class="main-svg"' in done.stdout, f"plotly did not draw {page.name}"
    renderer_notes = ('] "[.WebGL-', '] "Canvas2D: Multiple readback operations')
    console = [line for line in done.stderr.splitlines()
               if ":CONSOLE" in line and not any(note in line for note in renderer_notes)]
    assert console == [], console
