"""A publisher uploads a real torch.export archive from the model page in headless Chromium:
the progress bar, a dropped connection that heals, a reload in the middle of an upload that
resumes with only the missing chunks, the refusal of a pickled file, and the Compress form
picking up a version once it is ready.

The live server shares the test's settings: chunks are 64 KiB, so the file travels in many,
three at once.
No Celery worker runs; completing an upload only enqueues the validation, so new versions stay
``validating``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from accounts import services as accounts
from accounts.services import Actor
from marketplace import services
from marketplace.models import ModelVersion, UploadSession
from tests.conftest import PASSWORD, signed_in_page
from tests.marketplace.conftest import sha256

pytestmark = pytest.mark.browser

CHUNK = 64 * 1024
UPLOAD_URL = re.compile(r"/api/v1/uploads/[\w-]+$")


@pytest.fixture(scope="session")
def exported_model() -> bytes:
    """A real torch.export archive of about 1 MB: 17 chunks of 64 KiB."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256)
    ).eval()
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(model, (torch.randn(1, 256),)), buffer)
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def _vault(settings, isolated_store):
    settings.UPLOAD_CHUNK_SIZE = CHUNK


@pytest.fixture
def publisher(transactional_db):
    """Erin owns the Acme organisation, which has one model, ``acme/classifier``."""
    erin = accounts.user_create(email="erin@acme.example", password=PASSWORD, name="Erin")
    acme = accounts.tenant_create(slug="acme", name="Acme", owner=erin)
    services.model_create(
        tenant=acme, name="classifier", task="tabular-classification", actor=Actor(user=erin)
    )
    return erin


@pytest.fixture
def page(browser: Browser, live_server, publisher) -> Iterator[Page]:
    """Erin, signed in through the login page."""
    page = signed_in_page(browser, live_server, "erin@acme.example")
    expect(page.get_by_role("heading", name="Acme")).to_be_visible()
    yield page
    page.context.close()


@pytest.fixture
def model_file(tmp_path, exported_model) -> Path:
    path = tmp_path / "classifier.pt2"
    path.write_bytes(exported_model)
    return path


def open_model_page(page: Page, screenshot: Path | None = None) -> None:
    page.get_by_role("navigation").get_by_role("link", name="Models").click()
    expect(page.get_by_role("heading", name="Models")).to_be_visible()
    if screenshot:
        page.screenshot(path=screenshot, full_page=True)
    page.get_by_role("link", name="classifier", exact=True).click()
    expect(page.get_by_role("heading", name="Upload a new version")).to_be_visible()
    wait_for_widget(page)


def wait_for_widget(page: Page) -> None:
    page.wait_for_function("document.querySelector('form[data-upload]')?.mmUploader")


def chunk_ranges(size: int, indexes) -> list[str]:
    return [f"bytes {i * CHUNK}-{min((i + 1) * CHUNK, size) - 1}/{size}" for i in indexes]


def sent_chunks(page: Page) -> list[str]:
    """The Content-Range of every chunk the server answered, in the order of their starts
    (the widget sends a few at once, so they finish in any order)."""
    sent: list[str] = []

    def finished(request) -> None:
        if request.method == "PUT" and UPLOAD_URL.search(request.url):
            sent.append(request.headers["content-range"])
            sent.sort(key=lambda r: int(r.removeprefix("bytes ").split("-")[0]))

    page.on("requestfinished", finished)
    return sent


def started_before_one_finished(page: Page) -> list[int]:
    """How many chunk uploads had started when the first one finished, as a one-item list
    kept current. One at a time gives 1, or 2 where the next starts before Playwright reports
    the first finished."""
    started = [0]
    finished = []

    def on_start(request) -> None:
        if request.method == "PUT" and UPLOAD_URL.search(request.url) and not finished:
            started[0] += 1

    def on_end(request) -> None:
        if request.method == "PUT" and UPLOAD_URL.search(request.url):
            finished.append(request)

    page.on("request", on_start)
    page.on("requestfinished", on_end)
    return started


def drop_chunks(page: Page, *, after: int, drops: int | None = None) -> None:
    """Let ``after`` chunk uploads through, then fail the next ``drops`` (all, if None) as a
    lost connection would."""
    passed = dropped = 0

    def handle(route: Route) -> None:
        nonlocal passed, dropped
        if route.request.method == "PUT":
            if passed >= after and (drops is None or dropped < drops):
                dropped += 1
                route.abort("internetdisconnected")
                return
            passed += 1
        route.continue_()

    page.route(UPLOAD_URL, handle)


def test_upload_fills_the_progress_bar_and_the_new_version_appears(page, model_file, tmp_path):
    data = model_file.read_bytes()
    chunks = -(-len(data) // CHUNK)
    open_model_page(page, screenshot=tmp_path / "models.png")
    sent, at_once = sent_chunks(page), started_before_one_finished(page)
    page.evaluate(
        """() => {
          window.progressSeen = [];
          document.querySelector("form[data-upload]").addEventListener(
            "upload:progress", (e) => window.progressSeen.push(e.detail.bytes));
        }"""
    )

    page.get_by_label("Model file").set_input_files(model_file)
    expect(page.get_by_label("Format")).to_have_value("pt2")  # guessed from the extension
    page.get_by_label("Label").fill("1.0.0")
    page.get_by_role("button", name="Upload").click()

    expect(page.get_by_role("status")).to_contain_text("Version 1 uploaded: validating")
    progress = page.get_by_role("progressbar", name="Upload progress")
    assert progress.evaluate("bar => [bar.value, bar.max]") == [len(data), len(data)]
    expect(page.locator("[data-role=progress-text]")).to_have_text("1.0 MB of 1.0 MB (100%)")
    seen = page.evaluate("window.progressSeen")
    assert len(set(seen)) > chunks // 2 and seen == sorted(seen) and seen[-1] == len(data)
    assert sent == chunk_ranges(len(data), range(chunks))  # each chunk once
    assert at_once[0] >= 3  # a few at once (config.parallelChunks)
    row = page.locator("#version-1")
    expect(row.locator(".status")).to_have_text("validating")
    expect(row).to_contain_text("1.0.0")
    version = ModelVersion.objects.select_related("artifact").get(model__name="classifier")
    assert version.artifact.sha256 == sha256(data) and version.label == "1.0.0"
    assert page.evaluate("localStorage.length") == 0
    page.screenshot(path=tmp_path / "model-page-uploaded.png", full_page=True)


def test_a_first_version_that_becomes_ready_can_be_compressed_without_a_reload(page, model_file):
    # The Compress form's Version select stayed empty until the page was reloaded.
    open_model_page(page)
    page.get_by_label("Model file").set_input_files(model_file)
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#version-1 .status")).to_have_text("validating")
    choices = page.locator("#compress").get_by_label("Version").locator("option")
    expect(choices).to_have_count(0)

    services.version_record_validation(  # what the worker records when it has validated it
        version=ModelVersion.objects.get(), ok=True, signature={"inputs": []}, latency_ms=0.2
    )

    expect(page.locator("#version-1 .status")).to_have_text("ready", timeout=15_000)
    expect(choices).to_have_text(["v1"])


def test_a_dropped_connection_is_retried_and_each_chunk_arrives_once(page, model_file):
    data = model_file.read_bytes()
    chunks = -(-len(data) // CHUNK)
    open_model_page(page)
    # Quick retries, and the incremental JavaScript SHA-256 instead of crypto.subtle.
    page.evaluate("Object.assign(window.mmUpload.config, {retryBaseMs: 50, subtleMaxBytes: 0})")
    sent = sent_chunks(page)
    failed: list[str] = []
    page.on("requestfailed", lambda r: r.method == "PUT" and failed.append(r.url))
    drop_chunks(page, after=3, drops=2)

    page.get_by_label("Model file").set_input_files(model_file)
    page.get_by_role("button", name="Upload").click()

    expect(page.get_by_role("status")).to_contain_text("Version 1 uploaded", timeout=30_000)
    assert len(failed) == 2  # the fourth chunk, twice
    assert sent == chunk_ranges(len(data), range(chunks))
    version = ModelVersion.objects.select_related("artifact").get(model__name="classifier")
    assert version.artifact.sha256 == sha256(data)  # the JavaScript hash was right


COMPLETE_URL = re.compile(r"/api/v1/uploads/[\w-]+/complete$")


def test_there_is_no_cancel_once_the_server_assembles_the_version(page, model_file):
    # Cancel stayed offered while the server completed the upload: the widget then said
    # "Upload cancelled." over a version that had been created.
    held: list[Route] = []
    page.route(COMPLETE_URL, lambda route: held.append(route))
    open_model_page(page)

    page.get_by_label("Model file").set_input_files(model_file)
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("status")).to_contain_text("Assembling and checking", timeout=30_000)

    expect(page.get_by_role("button", name="Cancel upload")).to_be_hidden()
    held[0].continue_()
    expect(page.get_by_role("status")).to_contain_text("Version 1 uploaded", timeout=30_000)


def test_keyboard_focus_stays_on_the_upload_buttons(page, model_file):
    # Upload hid itself while focused: focus fell to the page, and stayed there after.
    open_model_page(page)
    page.get_by_label("Model file").set_input_files(model_file)
    page.get_by_role("button", name="Upload").focus()
    page.keyboard.press("Enter")

    expect(page.get_by_role("status")).to_contain_text("Version 1 uploaded", timeout=30_000)
    assert page.evaluate("document.activeElement.dataset.role") == "start"


def test_a_completion_still_running_is_asked_again_not_abandoned(page, model_file):
    # A retried complete that met its own first one still running (409, "completing") gave
    # up and deleted the upload's chunks from under it.
    answered: list[int] = []

    def first_meets_another(route: Route) -> None:
        if not answered:
            answered.append(409)
            route.fulfill(
                status=409,
                json={"detail": "Another request is completing this upload.", "completing": True},
                headers={"Retry-After": "0"},
            )
        else:
            answered.append(0)
            route.continue_()

    page.route(COMPLETE_URL, first_meets_another)
    open_model_page(page)
    page.evaluate("Object.assign(window.mmUpload.config, {retryBaseMs: 50})")

    page.get_by_label("Model file").set_input_files(model_file)
    page.get_by_role("button", name="Upload").click()

    expect(page.get_by_role("status")).to_contain_text("Version 1 uploaded", timeout=30_000)
    assert answered == [409, 0]
    assert UploadSession.objects.get().status == "completed"


def test_reload_mid_upload_offers_to_resume_and_sends_only_the_missing_chunks(
    page, model_file, tmp_path
):
    data = model_file.read_bytes()
    chunks = -(-len(data) // CHUNK)
    open_model_page(page)
    page.evaluate("window.mmUpload.config.retryBaseMs = 20")
    drop_chunks(page, after=5)  # the connection goes down after five chunks and stays down
    page.get_by_label("Model file").set_input_files(model_file)
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("status")).to_contain_text("connection to the server is lost")
    expect(page.get_by_role("button", name="Retry now")).to_be_visible()
    page.screenshot(path=tmp_path / "model-page-connection-lost.png", full_page=True)

    # Reloaded before the connection comes back: the page's other chunks were still being
    # retried (three are sent at once), and one retried in between would be stored.
    page.reload()
    page.unroute(UPLOAD_URL)
    wait_for_widget(page)
    session = UploadSession.objects.get()
    missing = services.upload_missing_ranges(session)
    assert session.parts.count() == 5 and missing == [(5 * CHUNK, len(data) - 1)]
    banner = page.locator("[data-role=resume]")
    expect(banner).to_contain_text(
        "An upload of classifier.pt2 was interrupted at 320.0 KB of 1.0 MB"
    )
    expect(page.get_by_role("button", name="Resume upload")).to_be_visible()
    received = f"320.0 KB of 1.0 MB ({5 * CHUNK * 100 // len(data)}%)"
    expect(page.locator("[data-role=progress-text]")).to_have_text(received)
    page.screenshot(path=tmp_path / "model-page-resume.png", full_page=True)

    sent = sent_chunks(page)
    page.get_by_label("Model file").set_input_files(model_file)  # the same file, chosen again
    expect(page.get_by_role("status")).to_have_text("Ready to resume classifier.pt2.")
    page.get_by_role("button", name="Resume upload").click()

    expect(page.get_by_role("status")).to_contain_text("Version 1 uploaded: validating")
    assert sent == chunk_ranges(len(data), range(5, chunks))
    expect(page.locator("#version-1 .status")).to_have_text("validating")
    expect(banner).to_be_hidden()
    version = ModelVersion.objects.select_related("artifact").get(model__name="classifier")
    assert version.artifact.sha256 == sha256(data) and version.artifact.size == len(data)
    assert page.evaluate("localStorage.length") == 0


def test_a_pickled_model_is_refused_with_the_export_guidance(page, model_files, tmp_path):
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(model_files["pickle"])
    open_model_page(page)

    page.get_by_label("Model file").set_input_files(pickled)
    expect(page.get_by_label("Format")).to_have_value("torchscript")
    page.get_by_role("button", name="Upload").click()

    error = page.get_by_role("alert")
    expect(error).to_contain_text("This is a pickled file (torch.save)")
    expect(error).to_contain_text("torch.export and save it")
    expect(error.locator("code").first).to_have_text(
        "ep = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: "
        "torch.export.Dim('batch')},)); torch.export.save(ep, 'model.pt2')"
    )
    expect(page.locator("[data-role=progress-box]")).to_be_hidden()
    assert not ModelVersion.objects.exists()
    assert UploadSession.objects.get().status == "failed"  # abandoned: its chunks are deleted
    assert page.evaluate("localStorage.length") == 0
    expect(page.get_by_role("button", name="Upload")).to_be_enabled()
    page.screenshot(path=tmp_path / "model-page-refused.png", full_page=True)


def test_a_safetensors_upload_names_its_architecture(page, model_files, tmp_path):
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(model_files["safetensors"])
    open_model_page(page)
    expect(page.get_by_label("Architecture", exact=True)).to_be_hidden()

    page.get_by_label("Model file").set_input_files(weights)
    page.get_by_label("Architecture", exact=True).fill("mlp")
    page.get_by_label("Architecture config (JSON)").fill('{"in_features": 4, "hidden": [8]}')
    page.get_by_role("button", name="Upload").click()

    expect(page.get_by_role("status")).to_contain_text("Version 1 uploaded")
    expect(page.locator("#version-1")).to_contain_text("safetensors (mlp)")
    version = ModelVersion.objects.get(model__name="classifier")
    assert version.architecture_config == {"in_features": 4, "hidden": [8]}
