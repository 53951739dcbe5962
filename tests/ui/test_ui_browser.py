"""The web UI end to end in headless Chromium, on the UI that `doppel up` starts over the real services.

One path, as a newcomer walks it: import a WhatsApp export and see its stats, train a quick
`tiny` persona and watch it finish, chat with it, have it write a conversation, find it in
Models. Screenshots of every tab go to the test's folder and, when DOPPEL_SCREENSHOTS is set,
there too, to be looked at: no error toast, no traceback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from support.chats import chat
from support.processes import free_port, read_until

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"needs Debian's chromium at {CHROMIUM}")


def whatsapp_export(path: Path) -> Path:
    """An Android WhatsApp export (24-hour clock, day first) of the learnable Alice-and-Bob chat."""
    messages = sorted((m for c in chat(conversations=2, messages=80, extra={"Carol": 3}) for m in c.messages),
                      key=lambda m: m.timestamp)
    lines = [f"{m.timestamp:%d/%m/%Y, %H:%M} - {m.sender}: {m.text}" for m in messages]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """`doppel up` with every address on a free port; the UI's URL and the environment that reaches
    the stack. Teardown stops it and its children."""
    ui_port = free_port()
    env = {
        **os.environ,
        "DOPPEL_HOME": str(tmp_path / "home"),
        "DOPPEL_INGEST_ADDR": f"127.0.0.1:{free_port()}",
        "DOPPEL_TRAINER_ADDR": f"127.0.0.1:{free_port()}",
        "DOPPEL_INFERENCE_ADDR": f"127.0.0.1:{free_port()}",
        "DOPPEL_PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",
        "DOPPEL_UI_PORT": str(ui_port),
        "DOPPEL_OPENAI_ADDR": f"127.0.0.1:{free_port()}",
        "DOPPEL_INFERENCE_THREADS": "1",
        "DOPPEL_TRAIN_THREADS": "1",
        "DOPPEL_GRACE_S": "2",
    }
    proc = subprocess.Popen([sys.executable, "-m", "doppel", "up"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        output = read_until(proc, "Press Ctrl-C", timeout=150)
        assert f"ui         http://127.0.0.1:{ui_port}" in output, output
        yield f"http://127.0.0.1:{ui_port}/", env
    finally:
        proc.terminate()  # doppel up stops its children, the UI first
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


class Shots:
    """Full-page screenshots into the test's folder, copied to DOPPEL_SCREENSHOTS when it is set."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.extra = Path(os.environ["DOPPEL_SCREENSHOTS"]) if os.environ.get("DOPPEL_SCREENSHOTS") else None

    def take(self, page: Page, name: str) -> None:
        path = self.folder / f"{name}.png"
        page.screenshot(path=path, full_page=True)
        if self.extra:
            self.extra.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, self.extra / path.name)


def no_errors(page: Page) -> None:
    """No error toast and no traceback anywhere on the page."""
    expect(page.locator(".toast-body.error")).to_have_count(0)
    assert "Traceback" not in page.content()


def open_tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def choose(page: Page, dropdown: str, option: str) -> None:
    """Pick the option whose label contains `option` in the Gradio dropdown with id `dropdown`."""
    page.locator(f"#{dropdown} input").click()
    page.get_by_role("option").filter(has_text=option).first.click()


@pytest.mark.timeout(600)
def test_import_train_chat_and_simulate_in_a_browser(stack: tuple[str, dict[str, str]], tmp_path: Path):
    url, env = stack
    export = whatsapp_export(tmp_path / "WhatsApp Chat with Bob.txt")
    shots = Shots(tmp_path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url, wait_until="load")
        expect(page.locator("#doppel-status")).to_contain_text("inference", timeout=30_000)
        expect(page.locator("#doppel-status")).not_to_contain_text("Not answering")

        # Import: upload, then the stats, charts and a preview of the conversations.
        page.locator("#import-file input[type=file]").set_input_files(export)
        page.locator("#import-button").click()
        summary = page.locator("#import-summary")
        expect(summary).to_contain_text("WhatsApp Chat with Bob", timeout=60_000)
        expect(summary).to_contain_text("whatsapp")
        expect(summary).to_contain_text("163 messages")
        expect(page.locator("#import-participants canvas, #import-participants svg").first).to_be_visible()
        expect(page.locator("#import-preview")).to_contain_text("Bob")
        page.wait_for_timeout(1000)  # let the charts draw
        no_errors(page)
        shots.take(page, "1-import")

        # Train: the new dataset, Alice alone, `tiny` on the quick-cpu preset cut to a few steps.
        open_tab(page, "Train")
        choose(page, "train-dataset", "WhatsApp Chat with Bob")
        speakers = page.locator("#train-speakers")
        expect(speakers).to_contain_text("Alice (80)")
        speakers.get_by_label("Alice (80)").check()
        for other in ("Bob (80)", "Carol (3)"):
            speakers.get_by_label(other).uncheck()
        choose(page, "train-base", "tiny")
        page.get_by_text("Hyperparameters (empty: the preset's value)").click()
        page.locator("#train-steps textarea").fill("12")
        page.locator("#train-sample-every textarea").fill("6")
        page.locator("#train-start").click()
        progress = page.locator("#train-progress")
        expect(progress).to_contain_text("completed", timeout=180_000)
        expect(progress).to_contain_text("step 12 of 12")
        expect(page.locator("#train-samples")).to_contain_text("step 6")
        expect(page.locator("#train-links")).to_contain_text("Prefect dashboard")
        expect(page.locator("#train-links")).to_contain_text("published model")
        model_id = page.locator("#train-links code").nth(1).inner_text()
        assert model_id.startswith("model-"), model_id
        page.wait_for_timeout(500)
        no_errors(page)
        shots.take(page, "2-train")

        # Chat: the new model is listed, and chosen, without a reload; a streamed reply arrives.
        open_tab(page, "Chat")
        expect(page.locator("#chat-model input")).to_have_value(re.compile(re.escape(model_id)), timeout=30_000)
        expect(page.locator("#chat-persona input")).to_have_value("Alice (learned)", timeout=30_000)
        expect(page.locator("#chat-user input")).to_have_value("Bob")
        page.locator("#chat-message textarea").fill("what are you doing tonight")
        page.locator("#chat-send").click()
        bot = page.locator("#chat-log .bot")
        expect(bot.last).to_contain_text("Alice", timeout=60_000)
        expect(page.locator("#chat-log .user").last).to_contain_text("what are you doing tonight")
        no_errors(page)
        shots.take(page, "3-chat")

        # Conversations: a whole conversation between Alice and Bob, streamed turn by turn.
        open_tab(page, "Conversations")
        expect(page.locator("#sim-participants")).to_contain_text("Alice", timeout=30_000)
        page.locator("#sim-start").click()
        output = page.locator("#sim-output")
        expect(output).to_contain_text("Alice:", timeout=60_000)
        expect(output.locator("strong")).to_have_count(8, timeout=60_000)  # a speaker's name a turn
        no_errors(page)
        shots.take(page, "4-conversations")

        # Models: the model with its evaluation figures and its fidelity, measured again from the tab
        # (EvaluateModel): the same figures `doppel eval` gives.
        open_tab(page, "Models")
        expect(page.locator("#models-table")).to_contain_text("Alice", timeout=30_000)
        details = page.locator("#models-details")
        expect(details).to_contain_text("held-out tokens")
        expect(details).to_contain_text("Fidelity of Alice")
        evaluated = subprocess.run([sys.executable, "-m", "doppel", "eval", model_id, "--json"], env=env,
                                   capture_output=True, text=True, timeout=300)
        assert evaluated.returncode == 0, evaluated.stderr
        [figures] = json.loads(evaluated.stdout)["fidelity"]
        page.locator("#models-measure").click()
        expect(page.get_by_text(f"Measured the fidelity of {model_id}.")).to_be_visible(timeout=180_000)
        rows = {"style distance": f"{figures['style_distance']:.3f}",
                "who said it": f"{100 * figures['who_said_it_real']:.0f}% / {100 * figures['who_said_it_model']:.0f}%",
                "exact copies": f"{100 * figures['exact_copies']:.0f}%",
                "speaking for another": str(figures["speaking_for_others"]),
                "leaking personal data": str(figures["leaks"])}
        for label, value in rows.items():
            expect(details.locator("tr", has_text=label)).to_contain_text(value)
        expect(details.locator("tr", has_text="characters mean")).to_contain_text("█")
        expect(details.locator("th", has_text="answering")).to_be_visible()
        no_errors(page)
        shots.take(page, "5-models")

        # Export: the model merged, as a zip to download; as GGUF, the converter's reason why not (the
        # tiny base's tokenizer, trained on the spot, is none llama.cpp knows).
        page.locator("#models-export").click()
        expect(page.get_by_text(f"Exported {model_id} as merged")).to_be_visible(timeout=120_000)
        with page.expect_download() as download:
            page.locator("#models-download a").first.click()
        with zipfile.ZipFile(download.value.path()) as archive:  # the export's folder, named for the model
            names = set(archive.namelist())
            assert {f"{model_id}/{f}" for f in ("doppel.json", "NOTICE.txt", "model.safetensors")} <= names, names
            assert json.loads(archive.read(f"{model_id}/doppel.json"))["model_id"] == model_id
        choose(page, "models-export-format", "gguf")
        page.locator("#models-export").click()
        expect(page.locator(".toast-body.error")).to_contain_text("pre-tokenizer", timeout=120_000)
        browser.close()
