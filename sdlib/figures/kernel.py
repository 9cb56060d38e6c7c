"""The kernel manager the figure notebooks run under: jupyter_client's, except that the kernel of a notebook that
has finished is asked to shut down without being interrupted first.

jupyter_client sends every kernel a SIGINT before its shutdown request; when the signal lands while ipykernel is
handling a message, ipykernel logs "KeyboardInterrupt caught in kernel" at ERROR, which ends up in the run's
output although nothing was interrupted. The shutdown request alone stops an idle kernel; a kernel that does
not stop is still terminated and then killed by jupyter_client as before."""

from __future__ import annotations

from jupyter_client import AsyncKernelManager


class QuietShutdownKernelManager(AsyncKernelManager):
    """``AsyncKernelManager`` without the interrupt at shutdown (an interrupt asked for otherwise is sent)."""

    async def _async_interrupt_kernel(self) -> None:
        if self.shutting_down:
            return
        await super()._async_interrupt_kernel()
