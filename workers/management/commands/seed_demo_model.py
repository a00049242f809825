"""The demo's model: acme-ai trains a small stroke classifier on generated images, publishes
it as a free public listing, and globex subscribes. Runs after ``seed_demo``.

Everything goes through the real services (the upload, the vault, validation in a sandboxed
model host, aliases, listings, subscriptions), so the demo shows what a publisher's upload
would. The version is validated here rather than by the worker so that ``production`` can point
at it before ``make run`` starts serving. It lives in ``workers`` because validating is the
worker's service (workers -> inference -> marketplace).

Idempotent: a run that finds the ready version, the listing and the subscription changes
nothing and does not import torch.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.test.utils import override_settings

from accounts.models import Membership, Role, Tenant
from accounts.services import Actor
from accounts.tenancy import Access
from marketplace import listings
from marketplace import services as registry
from marketplace.models import Alias, Entitlement, Format, Model, ModelVersion, Task

PUBLISHER, CONSUMER = "acme-ai", "globex"
NAME = "strokes"
CLASSES = ["blank", "horizontal", "vertical", "diagonal", "anti-diagonal", "cross"]
SIZE = 28
# Enough that every clean example is classified right whatever the machine's float kernels:
# with 100 images a class and 6 epochs, the seeded weights on one CPU read the clean cross as
# a horizontal bar (the weights differ by CPU); 8 epochs of 150 were right for ten seeds, with
# the true class at 0.99 or more, in about a second of training.
SAMPLES_PER_CLASS = 150
EPOCHS = 8
ARCHITECTURE = {"in_channels": 1, "image_size": SIZE, "classes": len(CLASSES)}
ARCHITECTURE.update(channels=[8, 16], hidden=32)

DESCRIPTION = "Classifies 28×28 grayscale strokes (0..1, light on dark): " + ", ".join(
    f"{i} {name}" for i, name in enumerate(CLASSES)
)
CARD = """\
# Strokes

A tiny convolutional classifier (the built-in `small_cnn`) for 28×28 grayscale images of
strokes, trained during the demo's seeding on {samples} generated images for {epochs} epochs
of SGD. It is here to try the playground and the predictions API, not to solve anything.

## Input

`x`: `FP32[-1, 1, 28, 28]`, values 0 (background) to 1 (stroke): light strokes on a dark
background. The playground turns an uploaded picture into this tensor.

## Classes

| Index | Class | What it looks like |
| --- | --- | --- |
| 0 | blank | nothing but noise |
| 1 | horizontal | a horizontal bar |
| 2 | vertical | a vertical bar |
| 3 | diagonal | a bar from top left to bottom right |
| 4 | anti-diagonal | a bar from bottom left to top right |
| 5 | cross | a horizontal and a vertical bar |

The output `output` holds one logit per class; apply softmax for probabilities.
"""


def stroke(kind: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """A 28×28 image of one class. Without ``rng``, a clean centred example; with it, a
    random position, thickness, brightness, length and noise."""
    image = np.zeros((SIZE, SIZE), np.float32)
    clean = rng is None
    thick = 3 if clean else int(rng.integers(2, 5))
    value = 1.0 if clean else float(rng.uniform(0.6, 1.0))
    row = col = (SIZE - thick) // 2
    start, stop = 4, SIZE - 4
    offset = 0
    if not clean:
        row, col = (int(v) for v in rng.integers(4, SIZE - 4 - thick, 2))
        start, stop = int(rng.integers(0, 8)), SIZE - int(rng.integers(0, 8))
        offset = int(rng.integers(-6, 7))
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    if kind in ("horizontal", "cross"):
        image[row : row + thick, start:stop] = value
    if kind in ("vertical", "cross"):
        image[start:stop, col : col + thick] = value
    if kind == "diagonal":
        image[np.abs(ys - xs - offset) < thick / 2 + 0.5] = value
    if kind == "anti-diagonal":
        image[np.abs(ys + xs - (SIZE - 1) - offset) < thick / 2 + 0.5] = value
    if not clean:
        image += rng.normal(0, 0.08, image.shape).astype(np.float32)
    return np.clip(image, 0, 1)


def example_input() -> dict:
    """The example a newcomer sends: a clean horizontal bar, batch 1."""
    return {"x": stroke("horizontal")[None, None].astype(int).tolist()}


def train_and_export() -> bytes:
    """Train ``small_cnn`` on generated strokes and export it with a dynamic batch. Seeded:
    the same weights every run on the same machine."""
    import torch

    # Batches of 32 tiny images gain nothing from intra-op threads, and on a busy machine
    # the threads' contention makes training several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_and_export()
    finally:
        torch.set_num_threads(threads)


def _train_and_export() -> bytes:
    import torch

    from inference.runtime.architectures import SmallCNN

    rng = np.random.default_rng(0)
    images = np.stack([stroke(k, rng) for k in CLASSES for _ in range(SAMPLES_PER_CLASS)])
    x = torch.from_numpy(images[:, None])
    y = torch.arange(len(CLASSES)).repeat_interleave(SAMPLES_PER_CLASS)
    torch.manual_seed(0)
    model = SmallCNN(**ARCHITECTURE)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    order = torch.Generator().manual_seed(0)
    for _ in range(EPOCHS):
        for batch in torch.randperm(len(x), generator=order).split(32):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimiser.step()
    program = torch.export.export(
        model.eval(), (x[:2],), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
    )
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def request_file() -> Path:
    return Path(settings.VAR_DIR) / "demo" / "prediction.json"


class Command(BaseCommand):
    help = "Train, publish and subscribe the demo model acme-ai/strokes (after seed_demo)."

    def handle(self, *args, **options):
        publisher = Tenant.objects.filter(slug=PUBLISHER).first()
        consumer = Tenant.objects.filter(slug=CONSUMER).first()
        if publisher is None or consumer is None:
            raise CommandError("Run `manage.py seed_demo` first: it creates acme-ai and globex.")
        owner = Membership.objects.select_related("user", "tenant").get(
            tenant=publisher, role=Role.OWNER
        )
        actor = Actor(user=owner.user)
        done: list[str] = []

        model = Model.objects.filter(tenant=publisher, name=NAME).first()
        if model is None:
            model = registry.model_create(
                tenant=publisher,
                name=NAME,
                task=Task.IMAGE_CLASSIFICATION,
                description=DESCRIPTION,
                actor=actor,
            )
            done.append(f"created {model.ref}")
        version = self._version(model, actor, done)
        if not Alias.objects.filter(model=model, name="production").exists():
            access = Access(
                tenant=publisher, scopes=owner.scopes, user=owner.user, membership=owner
            )
            registry.alias_set(
                model=model, name="production", version=version, access=access, actor=actor
            )
            done.append(f"pointed production at v{version.number}")
        listing = getattr(model, "listing", None)
        if listing is None:
            listing = listings.listing_publish(
                model=model,
                actor=actor,
                visibility="public",
                title="Strokes: a tiny stroke classifier",
                summary="Tells horizontal, vertical, diagonal and crossed strokes apart in "
                "28×28 grayscale images. Free; made for trying the playground.",
                card_markdown=CARD.format(samples=len(CLASSES) * SAMPLES_PER_CLASS, epochs=EPOCHS),
                license="MIT",
                tags=["vision", "demo"],
                example_input=example_input(),
            )
            done.append("published a free public listing")
        # A consumer that unsubscribed on purpose stays unsubscribed.
        if not Entitlement.objects.filter(model=model, tenant=consumer).exists():
            bob = Membership.objects.get(tenant=consumer, role=Role.OWNER).user
            listings.listing_subscribe(listing=listing, tenant=consumer, actor=Actor(user=bob))
            done.append(f"subscribed {consumer.slug}")
        path = request_file()
        body = json.dumps({"model": model.ref, "input": example_input()}, separators=(",", ":"))
        if not path.exists() or path.read_text() != body:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)

        if done:
            self.stdout.write(f"Demo model {model.ref}: " + "; ".join(done) + ".")
        else:
            self.stdout.write(f"Demo model {model.ref}: already seeded.")
        self.stdout.write(
            'Run it with the globex key: curl -H "Authorization: Bearer $KEY" '
            '-H "Prefer: wait" -H "Content-Type: application/json" '
            f"-d @{path} {settings.SITE_URL}/api/v1/predictions"
        )

    def _version(self, model: Model, actor: Actor, done: list[str]) -> ModelVersion:
        """The ready version, trained and uploaded if there is none, and validated here."""
        runnable = (ModelVersion.Status.READY, ModelVersion.Status.DEPRECATED)
        version = model.versions.filter(status__in=runnable).order_by("-number").first()
        if version is not None:
            return version
        # An earlier run stopped between the upload and the validation: finish that one.
        version = model.versions.filter(status=ModelVersion.Status.VALIDATING).first()
        if version is None:
            started = time.perf_counter()
            data = train_and_export()
            trained = time.perf_counter() - started
            version = self._upload(model, data, actor)
            done.append(f"trained and uploaded v{version.number} ({trained:.1f} s)")
        started = time.perf_counter()
        version = self._validate(version)
        if version.status == ModelVersion.Status.VALIDATING:
            raise CommandError(
                f"Version {version.number} of {model.ref} is still validating after "
                f"{time.perf_counter() - started:.0f} s: a worker holds its validation and has "
                "not finished. Check the worker's log, then run this again."
            )
        if version.status != ModelVersion.Status.READY:
            raise CommandError(
                f"Version {version.number} of {model.ref} is {version.status}: "
                f"{version.failure_reason}"
            )
        done.append(f"validated v{version.number} ({time.perf_counter() - started:.1f} s)")
        return version

    def _upload(self, model: Model, data: bytes, actor: Actor) -> ModelVersion:
        session = registry.upload_session_create(
            model=model,
            filename="strokes.pt2",
            format=Format.EXPORT,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            actor=actor,
            label="demo",
            example_input=example_input(),
        )
        for index in range(session.chunk_count):
            start, end = session.chunk_range(index)
            registry.upload_part_store(session=session, index=index, chunks=[data[start : end + 1]])
        return registry.upload_complete(session=session, actor=actor)

    def _validate(self, version: ModelVersion) -> ModelVersion:
        from workers.pool import HOSTS
        from workers.services import validation_claim_seconds, version_validate

        # A one-shot process: no spare model host to pre-start, and none left running after.
        try:
            with override_settings(MODEL_HOST_PRESTART=0):
                version = version_validate(version_id=version.public_id)
        finally:
            HOSTS.close()
        # A worker took the validation the upload queued first: wait for its verdict.
        deadline = time.monotonic() + validation_claim_seconds()
        while version.status == ModelVersion.Status.VALIDATING and time.monotonic() < deadline:
            time.sleep(0.5)
            version.refresh_from_db()
        return version
