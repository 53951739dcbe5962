"""What a client of a running Doppel stack does in the deploy tests, wherever the stack runs
(local processes in test_topology.py, containers in test_live_stack.py): an export to import,
and scripts run as separate processes that start a training run from the Prefect API as the
dashboard's form does, and chat through the inference API.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from support.chats import chat


def whatsapp_export(path: Path) -> Path:
    """An Android WhatsApp export of the learnable Alice-and-Bob chat (as the UI browser test makes it)."""
    messages = sorted((m for c in chat(conversations=2, messages=80, extra={"Carol": 3}) for m in c.messages),
                      key=lambda m: m.timestamp)
    path.write_text("\n".join(f"{m.timestamp:%d/%m/%Y, %H:%M} - {m.sender}: {m.text}" for m in messages) + "\n",
                    encoding="utf-8")
    return path


CREATE_AND_WATCH = textwrap.dedent("""
    import asyncio, json, sys, time
    from prefect.client.orchestration import PrefectClient

    async def main(api_url, request):
        async with PrefectClient(api_url) as c:
            deployment = await c.read_deployment_by_name("train-persona/train-persona")
            assert "request" in deployment.parameter_openapi_schema["properties"], "no parameter form"
            run = await c.create_flow_run_from_deployment(deployment.id, parameters={"request": request})
            deadline = time.monotonic() + 400
            while not run.state.is_final() and time.monotonic() < deadline:
                await asyncio.sleep(1)
                run = await c.read_flow_run(run.id)
            print(json.dumps({"id": str(run.id), "state": run.state.type.value, "message": run.state.message}))

    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
""")

CHAT = textwrap.dedent("""
    import json, sys
    from doppel.clients import InferenceClient
    from doppel.config import Settings
    from doppel.v1 import common_pb2, inference_pb2 as inf

    settings = Settings()
    with InferenceClient.from_settings(settings) as client:
        served = [m.model_id for m in client.list_served_models(inf.ListServedModelsRequest()).models]
        reply = client.chat(inf.ChatRequest(
            model_id=sys.argv[1], history=[inf.Turn(speaker="Bob", text="how was work")], user_speaker="Bob",
            sampling=common_pb2.SamplingParams(n=2, max_new_tokens=12, seed=1)), timeout=120)
        print(json.dumps({"served": served, "speaker": reply.speaker, "texts": [c.text for c in reply.candidates]}))
""")

# A chat through the OpenAI-compatible API with the official client: argv base URL, token, model id.
# Prints whether a wrong key is refused (its status), who replied, and whether they said anything.
OPENAI_CHAT = textwrap.dedent("""
    import json, sys
    import openai

    url, token, model = sys.argv[1:4]
    try:
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        refused = None
    except openai.AuthenticationError as e:
        refused = e.status_code
    client = openai.OpenAI(base_url=url, api_key=token, max_retries=2, timeout=120)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "name": "Bob", "content": "how was work"}],
                                           max_tokens=12, seed=1)
    print(json.dumps({"refused": refused, "name": reply.choices[0].message.name,
                      "replied": reply.choices[0].message.content is not None}))
""")
