"""Notebooks are committed without outputs, with a papermill parameters cell of literals only."""

import ast
import json
from pathlib import Path

import pytest

from sdlib.figures.run import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[2]
PATHS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_every_notebook_is_run_by_run_all():
    assert sorted(p.stem for p in PATHS) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name}: clear the outputs"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_parameters_cell_holds_literals_only(path):
    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
    tree = ast.parse("".join(cells[0]["source"]))
    names = []
    for node in tree.body:
        assert isinstance(node, ast.Assign), f"{path.name}: only assignments in the parameters cell"
        ast.literal_eval(node.value)  # raises for anything but a literal
        names += [t.id for t in node.targets]
    assert "profile" in names or "model_name" in names
    assert nb["metadata"]["kernelspec"]["name"] == "sdlib"


def test_a_finished_notebooks_kernel_shuts_down_without_an_interrupt():
    """jupyter_client interrupts a kernel before shutting it down; an interrupt landing in a message handler is
    logged by ipykernel at ERROR ("KeyboardInterrupt caught in kernel") into the run's output. The figure notebooks'
    kernel manager shuts down with the request alone, and still interrupts when asked to."""
    import asyncio
    import signal

    from sdlib.figures.kernel import QuietShutdownKernelManager

    async def run() -> tuple[list[int], list[int], bool]:
        km = QuietShutdownKernelManager(kernel_name="python3")
        sent: list[int] = []
        send = km._async_signal_kernel

        async def spy(signum: int) -> None:
            sent.append(signum)
            await send(signum)

        km._async_signal_kernel = spy
        await km.start_kernel(extra_arguments=["--IPKernelApp.log_level=ERROR"])
        try:
            await km.interrupt_kernel()
            asked = list(sent)
            sent.clear()
        finally:
            await km.shutdown_kernel()
        return asked, sent, await km.is_alive()

    asked, at_shutdown, alive = asyncio.run(run())
    assert asked == [signal.SIGINT], "an interrupt asked for is still sent"
    assert signal.SIGINT not in at_shutdown and not alive, "shut down by the request, not by an interrupt"
