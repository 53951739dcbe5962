"""The UI without a browser: its pure helpers, and its event handlers against the real services.

The three servicers run on real gRPC servers on port 0 over one store, with a real Prefect
server for training runs; the handlers are called as Gradio would call them, through the
`Backend` (doppel's clients), and their outputs checked as a person would read them.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import gradio as gr
import pytest
import torch

from doppel.config import Settings
from doppel.rpc.server import Service
from doppel.store import open_store
from doppel.v1 import common_pb2, inference_pb2_grpc, ingest_pb2, ingest_pb2_grpc, trainer_pb2_grpc
from doppel.v1 import inference_pb2 as inf
from doppel.v1 import trainer_pb2 as tr
from services.inference.remote import EngineProcess
from services.inference.server import InferenceServicer
from services.ingest.server import IngestServicer
from services.trainer.server import TrainerServicer
from support.chats import chat
from support.grpcserver import BackgroundServer
from support.personas import publish_personas
from support.processes import free_port
from ui import app, forms, views
from ui.backend import Backend
from ui.chat_tab import ChatTab
from ui.conversations_tab import ConversationsTab, opening_turns
from ui.import_tab import ImportTab
from ui.models_tab import ModelsTab
from ui.train_tab import TrainTab

torch.set_num_threads(1)  # the servers share two cores with the test


def whatsapp_export(path: Path) -> Path:
    """An Android WhatsApp export of the learnable Alice-and-Bob chat, with three lines by Carol."""
    messages = sorted((m for c in chat(conversations=2, messages=80, extra={"Carol": 3}) for m in c.messages),
                      key=lambda m: m.timestamp)
    path.write_text("".join(f"{m.timestamp:%d/%m/%Y, %H:%M} - {m.sender}: {m.text}\n" for m in messages), "utf-8")
    return path


@pytest.fixture(scope="module")
def stack(prefect_api_url, tmp_path_factory):
    """(backend, persona model ids, tmp folder): ingest, trainer and inference on real servers over one store."""
    tmp = tmp_path_factory.mktemp("ui")
    store = open_store(f"file://{tmp}/store")
    personas = publish_personas(store, tmp)
    settings = Settings(home=tmp / "home", store_url=store.url, prefect_api_url=prefect_api_url, train_threads=1,
                        inference_threads=1)
    saved = dict(os.environ)
    ingest = IngestServicer(settings)
    trainer = TrainerServicer(settings, store)
    inference = InferenceServicer(EngineProcess(settings))
    servers = {
        "ingest": BackgroundServer([Service.of(ingest_pb2, ingest_pb2_grpc, "IngestService", ingest)]),
        "trainer": BackgroundServer([Service.of(tr, trainer_pb2_grpc, "TrainerService", trainer)]),
        "inference": BackgroundServer([Service.of(inf, inference_pb2_grpc, "InferenceService", inference)]),
    }
    backend = Backend(settings.model_copy(update={f"{name}_addr": s.addr for name, s in servers.items()}))
    try:
        yield backend, personas, tmp
    finally:
        backend.close()
        for server in servers.values():
            server.stop()
        trainer.close()
        inference.close()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def dataset(stack) -> str:
    """The WhatsApp chat imported through the Import tab; its id."""
    backend, _, tmp = stack
    outputs = upload(ImportTab(backend), whatsapp_export(tmp / "WhatsApp Chat with Bob.txt"))
    return outputs[0]["value"]


def upload(tab: ImportTab, path: Path | None, **options) -> tuple:
    """ImportTab.upload with the form's defaults, as the page sends them, and `options` over them."""
    form = dict(dataset_name="", target="", format="auto", redaction=next(iter(forms.REDACTIONS)), min_messages=2,
                exclude_conversations="", exclude_senders="", session_gap="", merge_window="", scripts=[],
                script_min_fraction=0.5, timezone="", keep_duplicates=False, keep_raw=False)
    return tab.upload(str(path) if path else None, **{**form, **options})


def last(generator):
    """Run a generator handler to the end; (every update, the last one)."""
    updates = list(generator)
    return updates, updates[-1]


# --- pure helpers -----------------------------------------------------------------------------


def test_text_from_exports_and_models_is_shown_literally():
    shown = views.escape("<b>hi</b> *not bold* [link](x) $x$\nnext")
    assert "<b>" not in shown and "&lt;b&gt;" in shown
    assert "\\*not bold\\*" in shown and "\\[link\\]\\(x\\)" in shown and "\\$x\\$" in shown
    assert shown.endswith("  \nnext")  # a line break survives Markdown
    # a blank line in a turn stays inside the turn's paragraph: one paragraph a turn
    from markdown_it import MarkdownIt

    rendered = MarkdownIt().render(views.transcript([("Alice", "one\n\n \ntwo\n"), ("Bob", "three")]))
    assert rendered.count("<p>") == 2 and "two" in rendered.split("</p>")[0], rendered


def test_dataset_stats_become_typed_frames():
    stats = common_pb2.DatasetStats(
        participants=[common_pb2.ParticipantCount(name=f"p{k}", messages=100 - k) for k in range(25)],
        timeline=[common_pb2.MonthCount(month="2024-01", messages=3), common_pb2.MonthCount(month="2024-02", messages=5)],
    )
    people = views.participants_frame(stats)
    assert len(people) == views.PARTICIPANT_BARS and people.iloc[0].tolist() == ["p0", 100]
    assert views.timeline_frame(stats).values.tolist() == [["2024-01", 3], ["2024-02", 5]]
    empty = views.participants_frame(common_pb2.DatasetStats())
    assert empty.empty and str(empty["messages"].dtype) == "int64"  # a plot reads the types even when empty
    assert views.speaker_choices(stats)[0] == ("p0 (100)", "p0")


def event(step: int, **fields) -> tr.WatchRunResponse:
    e = tr.WatchRunResponse(state=tr.RUN_STATE_RUNNING, step=step, total_steps=10, **fields)
    e.eta.FromSeconds(90)
    return e


def test_a_run_view_folds_watch_events():
    view = views.RunView(run_id="r1", dashboard_url="http://127.0.0.1:4200/runs/flow-run/r1")
    assert view.add(tr.WatchRunResponse(state=tr.RUN_STATE_RUNNING, message="tokenising"))
    assert not view.add(event(1, loss=2.5, learning_rate=1e-3, tokens_per_second=1200, message="tokenising"))
    assert view.add(event(2, loss=2.0, held_out_loss=2.2, message="tokenising"))
    assert view.add(event(2, samples=[common_pb2.Sample(prompt="Bob: hi\nAlice:", text=" yo", step=2)],
                          message="tokenising"))
    assert view.loss_frame().values.tolist() == [[1, 2.5], [2, 2.0]]
    running = view.progress()
    assert "step 2 of 10" in running and "about 1 min 30 s left" in running and "held-out loss 2.200 at step 2" in running
    assert 'value="0.2000"' in running
    assert "step 2" in view.samples_markdown() and "yo" in view.samples_markdown()
    assert "[open in the Prefect dashboard](http://127.0.0.1:4200/runs/flow-run/r1)" in view.links()
    view.add(tr.WatchRunResponse(state=tr.RUN_STATE_COMPLETED, step=10, total_steps=10, message="done"))
    assert view.ended and 'value="1.0000"' in view.progress() and "left" not in view.progress()


def test_models_frame_shows_figures_and_blanks_for_missing_ones():
    evaluated = tr.PersonaModel(id="m1", name="Alice", speakers=["Alice"], base_model="tiny", size_bytes=3 << 20,
                                evaluation=tr.Evaluation(held_out_loss=1.23456, perplexity=3.437, base_perplexity=9.9,
                                                         held_out_tokens=50))
    bare = tr.PersonaModel(id="m2", name="Bob", speakers=["Bob"], base_model="tiny", method=tr.METHOD_FULL)
    frame = views.models_frame([evaluated, bare])
    assert frame.loc[0, "held-out loss"] == 1.235 and frame.loc[0, "size"] == "3.0 MiB"
    assert frame.loc[1, "method"] == "full" and frame.isna().loc[1, "held-out loss"]
    assert "loss **1.235**" in views.model_details(evaluated)
    assert "No held-out evaluation" in views.model_details(bare)
    assert frame.loc[1, "fidelity"] == "" and "Fidelity not measured: `doppel eval` measures it." in views.model_details(bare)


def test_models_show_fidelity_beside_the_base_model_alone():
    from doppel import fidelity
    from doppel.model import FidelityFigures, ReplyPair, StyleFigure

    figures = FidelityFigures(speaker="Alice", replies=9, style_distance=0.2, who_said_it_real=0.8, who_said_it_model=0.7,
                              style=[StyleFigure(name="words mean", person=6.0, model=3.0)],
                              pairs=[ReplyPair(said="Bob: hi", real="*yo*", generated="hey")])
    base = figures.model_copy(update={"style_distance": 0.6, "who_said_it_model": 0.1})
    m = tr.PersonaModel(id="m1", name="Alice", speakers=["Alice"], base_model="tiny", fidelity=[fidelity.to_proto(figures)],
                        base_fidelity=[fidelity.to_proto(base)])
    assert views.models_frame([m]).loc[0, "fidelity"] == "Alice: style 0.20, who said it 70%, real/generated –, copies 0%"
    shown = views.model_details(m)
    assert "#### Fidelity of Alice (9 held-out replies)" in shown
    assert "| style distance (0 = same) | 0.200 | 0.600 |" in shown
    assert "| words mean | ████████████ 6.00 | ██████░░░░░░ 3.00 | 50% |" in shown
    assert r"| Bob: hi | \*yo\* | hey |" in shown


def test_forms_leave_blanks_to_the_service_and_name_bad_fields():
    spec = forms.training_spec(dataset_id="d", speakers=["Alice"], base_model=" tiny ", preset="quick-cpu",
                               max_steps="12", learning_rate="5e-4", seed="", lora_rank="")
    assert spec.base_model == "tiny" and spec.hyperparameters.max_steps == 12
    assert spec.hyperparameters.learning_rate == 5e-4
    assert not spec.hyperparameters.HasField("seed") and not spec.lora.HasField("rank")
    with pytest.raises(ValueError, match="Steps: '1.5' is not a whole number"):
        forms.training_spec(dataset_id="d", speakers=["A"], base_model="tiny", max_steps="1.5")
    qlora = forms.training_spec(dataset_id="d", speakers=["A"], base_model="tiny", method="qlora", lora_rank="8")
    assert qlora.method == tr.METHOD_QLORA and qlora.lora.rank == 8 and views.method_name(qlora.method) == "qlora"
    full = forms.training_spec(dataset_id="d", speakers=["A"], base_model="tiny", method="full", lora_rank="8")
    assert full.method == tr.METHOD_FULL and not full.lora.HasField("rank")
    assert forms.training_spec(dataset_id="d", speakers=["A"], base_model="tiny", devices="2").devices == 2
    assert not full.HasField("devices")  # blank: every GPU the trainer was given
    options = forms.ingest_options(format="whatsapp", session_gap="6h", exclude_senders="Ann, Bo\nCy", min_messages=3)
    assert options.format == ingest_pb2.EXPORT_FORMAT_WHATSAPP and options.session_gap.seconds == 6 * 3600
    assert list(options.exclude_senders) == ["Ann", "Bo", "Cy"] and not options.HasField("merge_window")
    with pytest.raises(ValueError, match="merge window: 'soon' is not a duration"):
        forms.ingest_options(merge_window="soon")
    params = forms.sampling(temperature=0.0, n=2, seed="")
    assert params.HasField("temperature") and params.n == 2 and not params.HasField("seed")
    assert opening_turns("Ann: hi\n\nBo:  yo ") == [("Ann", "hi"), ("Bo", "yo")]
    with pytest.raises(ValueError, match="'just text' is not a turn"):
        opening_turns("just text")


# --- handlers against the services ------------------------------------------------------------


def test_import_uploads_and_shows_the_dataset(stack, dataset):
    backend, _, tmp = stack
    tab = ImportTab(backend)
    summary, people, months, preview = tab.show(dataset)
    assert "WhatsApp Chat with Bob" in summary and "whatsapp" in summary and "163 messages" in summary
    assert people.values.tolist() == [["Alice", 80], ["Bob", 80], ["Carol", 3]]
    assert months["messages"].sum() == 163
    assert "**Bob**" in preview and "**Alice**" in preview
    assert "The exports it was made from were deleted once parsed" in summary
    datasets, targets = tab.refresh(None, dataset)
    assert dataset in [v for _, v in datasets["choices"]] and targets["value"] == dataset

    kept = upload(tab, whatsapp_export(tmp / "WhatsApp Chat with Bob.txt"), target=dataset, keep_raw=True)
    summary = kept[2]
    assert "1 of the 2 exports it was made from is kept in the store, unredacted: WhatsApp Chat with Bob\\.txt " in summary
    store = open_store(backend.settings.store_url)
    assert [k.key for k in store.list("raw/")] == [src.key for src in
                                                   backend.ingest.get_dataset(ingest_pb2.GetDatasetRequest(dataset_id=dataset)).dataset.sources
                                                   if src.kept]


def test_import_errors_are_the_services_words(stack, tmp_path):
    backend, _, _ = stack
    tab = ImportTab(backend)
    with pytest.raises(gr.Error, match="Choose an export first"):
        upload(tab, None)
    junk = tmp_path / "notes.txt"
    junk.write_text("nothing a messenger would write\n")
    with pytest.raises(gr.Error) as e:
        upload(tab, junk)
    assert e.value.message.startswith("INVALID_ARGUMENT: ") and "notes.txt" in e.value.message
    with pytest.raises(gr.Error, match="session gap: 'later' is not a duration"):
        upload(tab, junk, session_gap="later")
    with pytest.raises(gr.Error, match="Mars/Olympus"):
        upload(tab, junk, timezone="Mars/Olympus")


def test_train_starts_follows_and_publishes_a_tiny_model(stack, dataset):
    backend, _, _ = stack
    tab = TrainTab(backend)
    datasets, bases = tab.refresh(None, None)
    assert dataset in [v for _, v in datasets["choices"]]
    assert "tiny" in [v for _, v in bases["choices"]]
    assert tab.speakers(dataset)["value"] == ["Alice"]  # the most active, first of the ties
    assert tab.speakers(dataset, ["Bob", "Zed"])["value"] == ["Bob"]
    updates, (run_id, progress, losses, samples, links) = last(tab.start(
        dataset, ["Alice"], "tiny", "lora", "quick-cpu", "alice-ui", "8", "", "", "", "4", "64", "4", "1", ""))
    assert len(updates) >= 3 and updates[0][0] == run_id
    assert "completed" in progress and "step 8 of 8" in progress
    assert losses["step"].tolist() == list(range(1, 9))
    assert "step 4" in samples and "step 8" in samples
    run = backend.trainer.get_run(tr.GetRunRequest(run_id=run_id)).run
    assert run.model_id and f"`{run.model_id}`" in links and run.dashboard_url in links


def test_train_refuses_what_the_trainer_refuses(stack, dataset):
    backend, _, _ = stack
    tab = TrainTab(backend)
    form = [dataset, ["Carol"], "tiny", "lora", "quick-cpu", "", "8", "", "", "", "", "", "", "", ""]
    with pytest.raises(gr.Error) as e:
        list(tab.start(*form))
    assert e.value.message.startswith("FAILED_PRECONDITION: ") and "'Carol' has 3 messages" in e.value.message
    with pytest.raises(gr.Error, match="at least one speaker"):
        list(tab.start(dataset, [], *form[2:]))
    with pytest.raises(gr.Error, match="Batch size: 'eight' is not a number"):
        list(tab.start(*form[:10], "eight", *form[11:]))


def test_a_run_is_cancelled_from_the_page(stack, dataset):
    backend, _, _ = stack
    tab = TrainTab(backend)
    follow = tab.start(dataset, ["Alice"], "tiny", "lora", "quick-cpu", "", "100000", "", "", "", "", "", "", "", "")
    run_id = next(follow)[0]
    assert tab.cancel(run_id) == run_id
    *_, (_, progress, *_rest) = follow
    assert "cancel" in progress
    with pytest.raises(gr.Error, match="No run to cancel"):
        tab.cancel("")


def test_chat_streams_a_reply_and_offers_candidates(stack):
    backend, personas, _ = stack
    tab = ChatTab(backend)
    models = tab.refresh(None)
    assert {personas["a0"], personas["group"]} <= {v for _, v in models["choices"]}
    persona, user, turns, bubbles, picks, candidates = tab.pick_model(personas["a0"])
    assert persona["value"] == "Alice" and user["value"] == "Bob" and ("Alice (learned)", "Alice") in persona["choices"]
    sampling = dict(n=1, temperature=0.8, max_new_tokens=16, seed="3")
    updates, (chat_log, turns, box, picks, candidates) = last(tab.send(
        personas["a0"], "Alice", "Bob", "reply 3 ok", [], **sampling))
    assert len(updates) >= 2 and box == ""
    assert turns[0] == ("Bob", "reply 3 ok") and turns[1][0] == "Alice" and len(turns) == 2
    assert chat_log[0] == {"role": "user", "content": "reply 3 ok"}
    assert chat_log[1]["role"] == "assistant" and chat_log[1]["content"].startswith("**Alice**: ")
    assert picks["visible"] is False and candidates == [turns[1][1]]
    # n candidates: the first goes in the chat, and picking another puts it there instead
    *_, (chat_log, turns, _, picks, candidates) = tab.regenerate(
        personas["a0"], "Alice", "Bob", turns, **{**sampling, "n": 3, "temperature": 1.2})
    assert len(turns) == 2 and picks["visible"] and len(picks["choices"]) == 3 and len(candidates) == 3
    assert turns[1][1] == candidates[0]
    chat_log, chosen = tab.choose(2, candidates, turns, "Bob")
    assert chosen[-1] == ("Alice", candidates[2]) and chosen[0] == turns[0]


def test_chat_says_what_is_wrong(stack):
    backend, personas, _ = stack
    tab = ChatTab(backend)
    sampling = dict(n=1, temperature=0.8, max_new_tokens=8, seed="")
    with pytest.raises(gr.Error, match="both play Alice"):
        list(tab.send(personas["group"], "Alice", "Alice", "hi", [], **sampling))
    with pytest.raises(gr.Error, match="does not serve model 'model-nope'"):
        list(tab.send("model-nope", "Alice", "Bob", "hi", [], **sampling))
    with pytest.raises(gr.Error, match="Type a message"):
        list(tab.send(personas["a0"], "Alice", "Bob", "  ", [], **sampling))
    with pytest.raises(gr.Error, match="Seed: 'x' is not a number"):
        list(tab.send(personas["a0"], "Alice", "Bob", "hi", [], **{**sampling, "seed": "x"}))


def test_an_overloaded_inference_service_is_a_retry_later_in_the_chat(stack):
    import concurrent.futures

    backend, personas, tmp = stack
    small = InferenceServicer(EngineProcess(Settings(home=tmp / "home-small", store_url=backend.settings.store_url,
                                                     inference_threads=1, inference_queue=1, inference_max_batch=1)))
    server = BackgroundServer([Service.of(inf, inference_pb2_grpc, "InferenceService", small)])
    busy = Backend(backend.settings.model_copy(update={"inference_addr": server.addr, "rpc_timeout_s": 120}))
    try:
        tab = ChatTab(busy)
        sampling = dict(n=1, temperature=0.8, max_new_tokens=48, seed="")
        list(tab.send(personas["a0"], "Alice", "Bob", "hi", [], **sampling))  # loaded and warm

        def reply(k: int) -> str:
            try:
                list(tab.send(personas["a0"], "Alice", "Bob", f"hi {k}", [], **sampling))
                return "ok"
            except gr.Error as e:
                return e.message

        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            said = list(pool.map(reply, range(10)))  # ten times the queue
        refused = [s for s in said if s != "ok"]
        assert "ok" in said and refused, said
        assert all("RESOURCE_EXHAUSTED" in s and "queue is full" in s and "retry" in s for s in refused), refused
    finally:
        busy.close()
        server.stop()
        small.close()


def test_conversations_simulate_and_complete(stack):
    backend, personas, _ = stack
    tab = ConversationsTab(backend)
    participants, first, opens = tab.pick_model(personas["group"])
    assert participants["value"] == ["Alice", "Bob", "Carol"] and first["value"] == ""
    updates, written = last(tab.simulate(personas["group"], ["Alice", "Bob"], "Alice", "hello", "Bob: hi there", 4,
                                         0.9, 16, "2"))
    assert len(updates) == 5  # the opening, then one update per turn
    lines = written.split("\n\n")
    assert lines[0] == "**Bob**: hi there" and lines[1].startswith("**Alice**: hello") and len(lines) == 5
    assert all(line.startswith(("**Alice**: ", "**Bob**: ")) for line in lines)
    shown = tab.complete(personas["full"], "I love to eat", "", 3, 1.0, 10, "1")
    assert [f"**{k}.** I love to eat" in shown for k in (1, 2, 3)] == [True] * 3
    with pytest.raises(gr.Error, match="is not a participant"):
        list(tab.simulate(personas["group"], ["Zed"], "", "", "", 2, 0.9, 8, ""))
    participants, first, opens = tab.pick_model(personas["a0"])  # a persona model: it writes its persona alone
    assert participants["choices"] == participants["value"] == ["Alice"] and "train a group model" in participants["label"]
    assert [v for _, v in first["choices"]] == ["", "Alice"] and "Bob" in [v for _, v in opens["choices"]]
    with pytest.raises(gr.Error, match="did not learn to write as 'Bob'"):
        list(tab.simulate(personas["a0"], ["Alice", "Bob"], "", "", "", 2, 0.9, 8, ""))


def test_models_export_a_zip_to_download(stack):
    backend, personas, _ = stack
    tab = ModelsTab(backend)
    archive = tab.export(personas["a0"], "adapter", "f32", progress=lambda *a, **k: None)
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        about = json.loads(z.read(f"{personas['a0']}/doppel.json"))
    assert {f"{personas['a0']}/adapter_config.json", f"{personas['a0']}/adapter_model.safetensors"} <= names
    assert about["model_id"] == personas["a0"] and about["format"] == "adapter"
    with pytest.raises(gr.Error, match="INVALID_ARGUMENT.*full fine-tune"):
        tab.export(personas["full"], "adapter", "f32", progress=lambda *a, **k: None)
    with pytest.raises(gr.Error, match="Pick a model"):
        tab.export(None, "merged", "f32")


def test_models_list_show_and_delete(stack, tmp_path):
    backend, personas, _ = stack
    tab = ModelsTab(backend)
    frame, dropdown, details = tab.refresh(personas["a1"])
    assert {personas["a0"], personas["a1"], personas["full"]} <= set(frame["id"])
    assert dropdown["value"] == personas["a1"] and personas["a1"] in details
    with pytest.raises(gr.Error, match="Pick a model"):
        tab.ask(None)
    confirm, question = tab.ask(personas["a1"])
    assert confirm["visible"] and personas["a1"] in question and "cannot be undone" in question
    confirm, frame, dropdown, _ = tab.delete(personas["a1"])
    assert confirm["visible"] is False and personas["a1"] not in set(frame["id"])
    assert dropdown["value"] != personas["a1"]
    with pytest.raises(gr.Error, match="NOT_FOUND"):
        tab.show(personas["a1"])


# --- services that do not answer --------------------------------------------------------------


@pytest.fixture
def nowhere(tmp_path) -> Backend:
    """A backend whose services are all down: addresses where nothing listens."""
    ports = {f"{name}_addr": f"127.0.0.1:{free_port()}" for name in ("ingest", "trainer", "inference")}
    backend = Backend(Settings(home=tmp_path, **ports, rpc_timeout_s=5))
    yield backend
    backend.close()


def test_a_service_that_is_down_is_named_not_a_traceback(nowhere):
    status = app.health(nowhere)
    assert status.count("#dc2626") == 3 and f"ingest at `{nowhere.ingest.addr}`" in status
    assert "doppel up" in status
    with pytest.warns(UserWarning, match=f"ingest service is not answering at {nowhere.ingest.addr}"):
        assert ImportTab(nowhere).refresh(None, None) == (gr.skip(), gr.skip())
    assert ImportTab(nowhere).load(None, None) == (gr.skip(), gr.skip())  # quiet: the header says it
    with pytest.raises(gr.Error, match=f"inference service is not answering at {nowhere.inference.addr}"):
        list(ChatTab(nowhere).send("m", "Alice", "Bob", "hi", [], 1, 0.8, 8, ""))


def test_the_app_builds_and_reports_healthy_services(stack):
    backend, _, _ = stack
    assert app.health(backend).count("#16a34a") == 3
    blocks = app.build(backend.settings, backend)
    labels = {getattr(block, "label", None) for block in blocks.blocks.values()}
    assert {"Import", "Train", "Chat", "Conversations", "Models"} <= labels


def test_the_train_tab_pulls_a_base_from_the_hub_and_says_what_it_needs(stack, tmp_path, monkeypatch):
    from support.hubserver import HubServer, point_hub_at, tiny_repo_files

    backend, _, _ = stack
    tab = TrainTab(backend)
    with pytest.raises(gr.Error, match="Name a model to pull"):
        list(tab.pull(" ", ""))
    with HubServer() as hub:
        point_hub_at(monkeypatch, hub, tmp_path / "hf-home")  # the trainer servicer runs in this process
        hub.add_repo("HuggingFaceTB/SmolLM2-360M-Instruct", tiny_repo_files(tmp_path / "repo"))
        steps = list(tab.pull("smollm2-360m-instruct", ""))
        with pytest.raises(gr.Error, match="no model 'nobody/nothing'"):
            list(tab.pull("nobody/nothing", ""))
    shown, bases = steps[-1]
    assert "stored as smollm2-360m-instruct" in shown and 'value="1.0000"' in shown
    assert bases["value"] == "smollm2-360m-instruct"
    shown_as = [label for label, value in bases["choices"] if value == "smollm2-360m-instruct"]
    assert shown_as == ["smollm2-360m-instruct (0.5M parameters)"]  # as stored, not as curated
    assert ("qwen2.5-7b-instruct (7615.6M parameters, pulled from the Hub first)", "qwen2.5-7b-instruct") in bases["choices"]
    assert "reading HuggingFaceTB/SmolLM2-360M-Instruct on the hub" in steps[0][0]
    details = tab.describe_base("qwen2.5-7b-instruct")
    assert "7,615.6M parameters · chat template · on the Hub: pulled when a run starts" in details
    assert "Memory of a training step (8 × 512 tokens, bf16; with gradient checkpointing): lora " in details
    assert "in the store" in tab.describe_base("smollm2-360m-instruct")
    # what fits this box depends on its free memory now: the verdicts are checked on a fixed device below
    assert re.search(r"On the trainer's CPU \([\d.]+ GiB free of [\d.]+ GiB\): lora (does not fit|fits)", details)
    device = tr.TrainerDevice(name="Small GPU", free_bytes=20 * 2**30, total_bytes=24 * 2**30)
    listed = {b.name: b for b in backend.trainer.list_base_models(tr.ListBaseModelsRequest()).base_models}
    shown = views.base_details(listed["qwen2.5-7b-instruct"], device)
    assert "On the trainer's Small GPU (20.0 GiB free of 24.0 GiB): lora fits with checkpointing, qlora fits with checkpointing, " \
           "full does not fit" in shown
