"""The Gradio app: a header with the services' health, then one tab per task, built from `Settings`.

The health line checks again every `HEALTH_EVERY_S`, so a service that `doppel up` is
restarting shows as not answering, and as answering again once it is back, with no reload.

`build` makes the Blocks (tests drive its tab classes directly); `launch` serves it on
`DOPPEL_UI_HOST:DOPPEL_UI_PORT` until the process is stopped. The app talks to the services
only through `ui.backend.Backend`, i.e. doppel's gRPC clients.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from doppel.config import Settings
from ui.backend import Backend, answers, service_name
from ui.chat_tab import ChatTab
from ui.conversations_tab import ConversationsTab
from ui.import_tab import ImportTab
from ui.login import LoginRequired, password_check
from ui.models_tab import ModelsTab
from ui.train_tab import TrainTab

CSS = """
.doppel-run progress { height: 14px; accent-color: var(--color-accent); }
.doppel-run div { margin-top: 4px; font-size: var(--text-md); }
"""
CONCURRENCY = 16  # handlers mostly wait on RPCs; inference batches concurrent requests itself
HEALTH_EVERY_S = 5.0  # how often the open page checks the services again


def health(backend: Backend) -> str:
    """One line with a green or red dot per service, then where the ones that do not answer should be."""
    dots, down = [], []
    with ThreadPoolExecutor(len(backend.clients)) as pool:  # a service that is down takes its whole timeout
        serving = list(pool.map(answers, backend.clients))
    for client, up in zip(backend.clients, serving, strict=True):
        dots.append(f'<span style="color:{"#16a34a" if up else "#dc2626"}">●</span> {service_name(client)}')
        if not up:
            down.append(f"{service_name(client)} at `{client.addr}`")
    line = "Services: " + " · ".join(dots)
    if down:
        line += (
            f"  \n**Not answering: {', '.join(down)}.** `doppel up` restarts a service that stopped, and this line "
            f"checks again every {HEALTH_EVERY_S:g} s; if the stack is not running, start it with `doppel up`."
        )
    return line


def build(settings: Settings, backend: Backend | None = None) -> gr.Blocks:
    """The whole app over `backend` (by default, clients built from `settings`)."""
    backend = backend or Backend(settings)
    dashboard = settings.dashboard_url()
    with gr.Blocks(title="Doppel", analytics_enabled=False) as app:
        gr.Markdown(f"# Doppel\nTurn a chat history into a model that talks like someone. "
                    f"Training runs also show in the [Prefect dashboard]({dashboard}).", elem_id="doppel-header")
        with gr.Row(equal_height=True):
            status = gr.Markdown(elem_id="doppel-status")
            check = gr.Button("Check services", size="sm", scale=0, min_width=140)
        with gr.Tabs():
            importer = ImportTab(backend)
            importer.render()
            TrainTab(backend).render()
            ChatTab(backend).render()
            ConversationsTab(backend).render()
            ModelsTab(backend).render()
        app.load(lambda: health(backend), None, status, api_visibility="private")
        app.load(importer.load, importer.load_io, importer.load_io, api_visibility="private")
        check.click(lambda: health(backend), None, status, api_visibility="private")
        gr.Timer(HEALTH_EVERY_S).tick(lambda: health(backend), None, status, api_visibility="private")
    app.queue(default_concurrency_limit=CONCURRENCY)
    return app


def launch_options(settings: Settings) -> dict[str, Any]:
    """`Blocks.launch` arguments: where to listen and, with DOPPEL_API_TOKEN set, the token as the
    login password and the login wall (`ui.login`) in front of every route but the login page."""
    token = settings.token()
    options: dict[str, Any] = dict(server_name=settings.ui_host, server_port=settings.ui_port, share=False,
                                   footer_links=["gradio", "settings"], css=CSS)
    if token:
        options.update(
            auth=password_check(token),
            auth_message="Log in with any user name and the API token (DOPPEL_API_TOKEN) as the password.",
            app_kwargs={"middleware": [Middleware(LoginRequired)], "openapi_url": None},
        )
    return options


def launch(settings: Settings) -> None:
    """Serve the app until the process is stopped; with DOPPEL_API_TOKEN set, the token is the login password."""
    build(settings).launch(**launch_options(settings))
