"""`doppel ui`: the Gradio web UI in the foreground, talking to the services at their DOPPEL_*_ADDR."""

from __future__ import annotations

import os

from doppel.cli.context import fail, settings

# Nothing is downloaded at run time and nothing phones home; set before gradio is imported.
QUIET = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}


def ui() -> None:
    """Run the web UI on DOPPEL_UI_HOST:DOPPEL_UI_PORT (default http://127.0.0.1:7860) until Ctrl-C."""
    os.environ.update(QUIET)
    resolved = settings()
    from ui.app import launch

    try:
        launch(resolved)
    except OSError:  # Gradio's word for an address it cannot bind
        fail(f"cannot listen on {resolved.ui_host}:{resolved.ui_port}: is the port taken, or the host not one of this "
             "machine's? Set DOPPEL_UI_PORT (or DOPPEL_UI_HOST) to another.")
