"""Publishers' model pages in the dashboard, through Django's test client: the model list and
the "New model" form, the model page with its versions, aliases and upload widget, and who may
see them."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.template.defaultfilters import filesizeformat
from django.test import Client

from accounts import services as accounts
from accounts.models import AuditEvent, Role
from accounts.services import Actor
from accounts.tenancy import Access
from marketplace import services
from marketplace.models import Model, ModelVersion
from tests.conftest import key_client, make_user
from tests.marketplace.conftest import sha256

pytestmark = pytest.mark.django_db

CHUNK = 4096


@pytest.fixture(autouse=True)
def _vault(settings, isolated_store):
    settings.UPLOAD_CHUNK_SIZE = CHUNK


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alice_client(alice, tenant) -> Client:
    return signed_in(alice)


@pytest.fixture
def classifier(tenant, alice) -> Model:
    return services.model_create(
        tenant=tenant, name="classifier", task="tabular-classification", actor=Actor(user=alice)
    )


def upload_version(model: Model, data: bytes, user, **extra) -> ModelVersion:
    """A version uploaded in chunks through the registry's services, as the API does."""
    actor = Actor(user=user)
    session = services.upload_session_create(
        model=model,
        filename="model.pt2",
        format="pt2",
        size=len(data),
        sha256=sha256(data),
        actor=actor,
        **extra,
    )
    for index in range(session.chunk_count):
        start, end = session.chunk_range(index)
        services.upload_part_store(session=session, index=index, chunks=[data[start : end + 1]])
    return services.upload_complete(session=session, actor=actor)


def make_ready(version: ModelVersion) -> ModelVersion:
    return services.version_record_validation(
        version=version, ok=True, signature={"inputs": []}, parameter_count=67, latency_ms=0.2
    )


def owner_access(tenant, user) -> Access:
    membership = user.memberships.get(tenant=tenant)
    return Access(tenant=tenant, scopes=membership.scopes, user=user, membership=membership)


def html(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def test_models_page_lists_the_organisations_models_only(
    alice_client, alice, tenant, classifier, outsider, charlie, model_files
):
    services.model_create(tenant=tenant, name="embedder", task="embedding", actor=Actor(user=alice))
    services.model_create(tenant=outsider, name="secret-model", actor=Actor(user=charlie))
    make_ready(upload_version(classifier, model_files["pt2"], alice))
    upload_version(classifier, model_files["pt2"], alice)
    services.alias_set(
        model=classifier,
        name="production",
        version=classifier.versions.get(number=1),
        access=owner_access(tenant, alice),
        actor=Actor(user=alice),
    )

    page = html(alice_client.get("/dashboard/models/"))

    assert 'href="/dashboard/models/classifier/"' in page
    assert "Tabular classification" in page
    assert 'v2 <span class="status validating">validating</span>' in page
    assert "production → v1" in page
    assert "embedder" in page and "none yet" in page
    assert "secret-model" not in page
    assert "New model" in page


def test_a_developer_creates_a_model_and_lands_on_its_page(bob, tenant):
    client = signed_in(bob)

    response = client.post(
        "/dashboard/models/",
        {"name": "sentiment", "task": "text-classification", "description": "Tweets"},
        follow=True,
    )

    page = html(response)
    assert response.redirect_chain[-1][0] == "/dashboard/models/sentiment/"
    assert "Model acme/sentiment created." in page
    assert "Upload a new version" in page and "No versions yet." in page
    model = Model.objects.get(tenant=tenant, name="sentiment")
    assert model.task == "text-classification" and model.created_by == bob
    assert AuditEvent.objects.filter(action="model.create", tenant=tenant).exists()


def test_bad_or_taken_model_names_are_explained_on_the_form(alice_client, classifier):
    bad = html(alice_client.post("/dashboard/models/", {"name": "Not Valid!", "task": "other"}))
    taken = html(alice_client.post("/dashboard/models/", {"name": "classifier", "task": "other"}))

    assert "lowercase letters, digits" in bad
    assert "acme/classifier already exists." in taken
    assert Model.objects.count() == 1


def test_model_page_shows_versions_aliases_and_alias_history(
    alice_client, alice, tenant, classifier, model_files
):
    data = model_files["pt2"]
    first = make_ready(upload_version(classifier, data, alice, label="1.0.0"))
    second = make_ready(upload_version(classifier, data, alice, label="1.1.0"))
    third = upload_version(classifier, data, alice)
    services.version_record_validation(
        version=third, ok=False, reason="Loading failed: the archive has no forward method."
    )
    access, actor = owner_access(tenant, alice), Actor(user=alice)
    for version in (first, second, first):  # a release, then a rollback
        services.alias_set(
            model=classifier, name="production", version=version, access=access, actor=actor
        )

    page = html(alice_client.get("/dashboard/models/classifier/"))

    assert "acme/classifier" in page
    for number in (1, 2, 3):
        assert f'id="version-{number}"' in page
    assert "1.0.0" in page and "1.1.0" in page
    assert '<span class="status ready">ready</span>' in page
    assert '<span class="status failed">failed</span>' in page
    assert "Loading failed: the archive has no forward method." in page
    assert f'data-sha256="{sha256(data)}"' in page
    assert filesizeformat(len(data)) in page  # "11.2 KB"
    assert "v2 → v1" in page and "v1 → v2" in page and "created at v1" in page
    # The upload widget, pointed at this model's upload API.
    assert 'data-create-url="/api/v1/models/acme/classifier/uploads"' in page
    assert "js/upload.js" in page


def test_versions_table_polls_only_while_a_version_is_validating(
    alice_client, alice, classifier, model_files
):
    version = upload_version(classifier, model_files["pt2"], alice)
    validating = html(alice_client.get("/dashboard/models/classifier/versions/"))
    make_ready(version)
    ready = html(alice_client.get("/dashboard/models/classifier/versions/"))

    assert 'hx-trigger="every 5s"' in validating and "validating" in validating
    assert 'hx-trigger="every 5s"' not in ready and "ready" in ready


def test_alias_form_gets_a_version_that_becomes_ready_with_the_last_table_refresh(
    alice_client, alice, classifier, model_files
):
    # The alias form kept the versions ready when the page loaded: a version that became
    # ready could not take production until the page was reloaded.
    version = upload_version(classifier, model_files["pt2"], alice)
    page = html(alice_client.get("/dashboard/models/classifier/"))
    polling = html(alice_client.get("/dashboard/models/classifier/versions/"))
    make_ready(version)
    last = html(alice_client.get("/dashboard/models/classifier/versions/"))

    assert "none is ready yet" in page and 'id="alias-versions"' in page
    assert "alias-versions" not in polling  # a choice being made is left alone meanwhile
    swapped = last[last.index('<div id="alias-versions"') :]
    assert swapped.startswith('<div id="alias-versions" class="contents" hx-swap-oob="true">')
    assert '<option value="1">v1</option>' in swapped and "Point it there" in swapped


def test_compress_form_gets_a_version_that_becomes_ready_with_the_table_refresh(
    alice_client, alice, tenant, classifier, model_files
):
    # After a first upload the Compress form's Version select stayed empty once the version
    # was ready: the table refreshed itself, the form did not, until the page was reloaded.
    first = upload_version(classifier, model_files["pt2"], alice)
    page = html(alice_client.get("/dashboard/models/classifier/"))
    make_ready(first)
    make_ready(upload_version(classifier, model_files["pt2"], alice))
    viewer = make_user("vera@acme.example")
    accounts.membership_add(tenant=tenant, user=viewer, role=Role.VIEWER, actor=accounts.SYSTEM)

    refreshed = html(alice_client.get("/dashboard/models/classifier/versions/?version=1"))
    for_a_viewer = html(signed_in(viewer).get("/dashboard/models/classifier/versions/"))

    before = page[page.index('<select id="compress-version"') :]
    assert "<option" not in before[: before.index("</select>")]  # none ready yet
    assert 'hx-include="#compress-version"' in page  # the poll sends the version chosen
    select = refreshed[refreshed.index('<select id="compress-version"') :]
    assert select.startswith('<select id="compress-version" name="version" hx-swap-oob="true">')
    assert '<option value="2">v2</option>' in select
    assert '<option value="1" selected>v1</option>' in select
    assert "compress-version" not in for_a_viewer  # no form to update


@pytest.mark.parametrize(
    "url",
    ["/dashboard/models/classifier/", "/dashboard/models/classifier/versions/"],
)
def test_outsider_sees_404_for_another_organisations_model(charlie, outsider, classifier, url):
    assert signed_in(charlie).get(url).status_code == 404


def test_missing_model_is_404(alice_client):
    assert alice_client.get("/dashboard/models/nothing-here/").status_code == 404


def test_signed_out_visitor_is_sent_to_sign_in(classifier):
    response = Client().get("/dashboard/models/classifier/")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/dashboard/models/classifier/"


def test_user_without_an_organisation_is_sent_to_create_one(db):
    response = signed_in(make_user("dana@initech.example")).get("/dashboard/models/")
    assert response.status_code == 302 and response["Location"] == "/dashboard/orgs/new/"


def test_viewer_sees_models_but_cannot_create_or_upload(tenant, classifier):
    viewer = make_user("vera@acme.example")
    accounts.membership_add(tenant=tenant, user=viewer, role=Role.VIEWER, actor=accounts.SYSTEM)
    client = signed_in(viewer)

    listing = html(client.get("/dashboard/models/"))
    refused = client.post("/dashboard/models/", {"name": "sneaky", "task": "other"})
    detail = html(client.get("/dashboard/models/classifier/"))

    assert "classifier" in listing and "New model" not in listing
    assert refused.status_code == 403
    assert not Model.objects.filter(name="sneaky").exists()
    assert "cannot upload versions" in detail and "data-upload" not in detail


def test_the_upload_api_accepts_the_dashboard_session_with_its_csrf_token(
    alice, tenant, classifier, model_files
):
    """What upload.js relies on: the session authenticates the API, with the CSRF header."""
    data = model_files["pt2"]
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    html(client.get("/dashboard/models/classifier/"))  # sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    body = {"filename": "m.pt2", "format": "pt2", "size": len(data), "sha256": sha256(data)}
    url = "/api/v1/models/acme/classifier/uploads"

    without_token = client.post(url, body, content_type="application/json")
    upload = client.post(url, body, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    chunk = client.generic(
        "PUT",
        upload.json()["upload_url"],
        data[:CHUNK],
        content_type="application/octet-stream",
        HTTP_CONTENT_RANGE=f"bytes 0-{CHUNK - 1}/{len(data)}",
        HTTP_X_CSRFTOKEN=token,
    )

    assert without_token.status_code == 403 and "CSRF" in without_token.json()["detail"]
    assert upload.status_code == 201
    assert chunk.status_code == 200 and chunk.json()["received_bytes"] == CHUNK


def test_model_page_links_to_its_listing_or_says_how_to_publish(alice_client, classifier):
    # The model page never mentioned the catalogue: a publisher could not tell from it whether
    # the model was listed, find its listing, or learn how to list it.
    from decimal import Decimal

    from marketplace import listings

    unlisted = alice_client.get("/dashboard/models/classifier/").text
    listings.listing_publish(
        model=classifier,
        actor=accounts.SYSTEM,
        visibility="public",
        title="Tabular classifier",
        price_per_call=Decimal("0.002"),
    )
    listed = alice_client.get("/dashboard/models/classifier/").text

    assert "Not in the catalogue." in unlisted
    assert "mm publish acme/classifier --visibility public" in unlisted
    assert '<a href="/catalogue/acme/classifier/">Tabular classifier</a>' in listed
    assert "Public: in the catalogue" in listed and "0.002 USD per call" in listed


def test_an_admin_moves_production_and_rolls_it_back_from_the_model_page(
    alice_client, alice, tenant, classifier, model_files
):
    data = model_files["pt2"]
    first = make_ready(upload_version(classifier, data, alice, label="1.0.0"))
    second = make_ready(upload_version(classifier, data, alice, label="1.1.0"))
    url = "/dashboard/models/classifier/aliases/"

    created = alice_client.post(url, {"alias": "production", "version": "1"}, follow=True)
    released = alice_client.post(url, {"alias": "production", "version": "2"}, follow=True)
    page = html(released)

    assert "production now points at v1." in html(created)
    assert "production now points at v2." in page
    assert "Roll back to v1" in page
    assert classifier.aliases.get(name="production").version == second
    # The page's "Roll back" button posts the version the alias came from.
    rolled = html(alice_client.post(url, {"alias": "production", "version": "1"}, follow=True))
    assert classifier.aliases.get(name="production").version == first
    assert "v2 → v1" in rolled and "v1 → v2" in rolled and "created at v1" in rolled
    assert "Roll back to v2" in rolled
    moves = AuditEvent.objects.filter(action="alias.move", tenant=tenant)
    assert moves.count() == 3 and {e.actor_label for e in moves} == {alice.email}


def test_an_alias_that_has_not_moved_lately_keeps_its_roll_back(
    alice_client, alice, tenant, classifier, model_files
):
    """The last moves were read from the model's 50 newest: after 50 moves of production,
    staging's own last move fell out of them and its button went."""
    for _ in range(2):
        make_ready(upload_version(classifier, model_files["pt2"], alice))
    access, actor = owner_access(tenant, alice), Actor(user=alice)
    one, two = classifier.versions.get(number=1), classifier.versions.get(number=2)
    for version in (one, two):
        services.alias_set(
            model=classifier, name="staging", version=version, access=access, actor=actor
        )
    for version in [one, two] * 26:
        services.alias_set(
            model=classifier, name="production", version=version, access=access, actor=actor
        )

    page = html(alice_client.get("/dashboard/models/classifier/"))

    assert page.count("Roll back to v1") == 2  # production's and staging's


def test_a_developer_moves_staging_but_not_production(bob, alice, tenant, classifier, model_files):
    for _ in range(2):
        make_ready(upload_version(classifier, model_files["pt2"], alice))
    access, actor = owner_access(tenant, alice), Actor(user=alice)
    for number in (2, 1):  # production released at v2, then rolled back to v1 by an admin
        version = classifier.versions.get(number=number)
        services.alias_set(
            model=classifier, name="production", version=version, access=access, actor=actor
        )
    client = signed_in(bob)
    url = "/dashboard/models/classifier/aliases/"
    page = html(client.get("/dashboard/models/classifier/"))
    assert "Roll back to v2" not in page  # production's: the admin role's, not offered

    refused = html(client.post(url, {"alias": "production", "version": "1"}, follow=True))
    staged = html(client.post(url, {"alias": "staging", "version": "1"}, follow=True))

    assert "Moving &#x27;production&#x27; needs the admin role" in refused
    assert classifier.aliases.get(name="production").version.number == 1
    assert "staging now points at v1." in staged
    assert classifier.aliases.get(name="staging").version.number == 1


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"alias": "staging", "version": "3"}, "Version 3 is failed; only a ready version"),
        ({"alias": "staging", "version": "9"}, "Choose a version of acme/classifier"),
        ({"alias": "staging", "version": "99999999999999"}, "Choose a version of acme/classifier"),
        ({"alias": "Not An Alias", "version": "1"}, "Alias names are 1-40 lowercase letters"),
        ({"alias": "12", "version": "1"}, "a number names a version"),
    ],
)
def test_alias_moves_the_registry_refuses_are_explained_and_change_nothing(
    alice_client, alice, classifier, model_files, form, message
):
    data = model_files["pt2"]
    make_ready(upload_version(classifier, data, alice))
    make_ready(upload_version(classifier, data, alice))
    services.version_record_validation(
        version=upload_version(classifier, data, alice), ok=False, reason="no forward"
    )

    response = alice_client.post("/dashboard/models/classifier/aliases/", form, follow=True)

    assert message in html(response)
    assert not classifier.aliases.exists()
    assert not AuditEvent.objects.filter(action="alias.move").exists()


def test_a_refused_alias_move_comes_back_filled_in(alice_client, alice, classifier, model_files):
    # The alias typed and the version chosen were gone under the reason.
    data = model_files["pt2"]
    for _ in range(2):
        make_ready(upload_version(classifier, data, alice))

    refused = html(
        alice_client.post(
            "/dashboard/models/classifier/aliases/",
            {"alias": "Canary_1", "version": "1"},
            follow=True,
        )
    )
    again = html(alice_client.get("/dashboard/models/classifier/"))

    assert "Alias names are 1-40 lowercase letters" in refused
    assert 'placeholder="production" value="Canary_1"' in refused
    assert '<option value="1" selected>v1</option>' in refused
    assert 'value="Canary_1"' not in again  # once, under the reason


def test_viewers_and_outsiders_cannot_move_aliases(
    tenant, charlie, outsider, alice, classifier, model_files
):
    make_ready(upload_version(classifier, model_files["pt2"], alice))
    viewer = make_user("vera@acme.example")
    accounts.membership_add(tenant=tenant, user=viewer, role=Role.VIEWER, actor=accounts.SYSTEM)
    url = "/dashboard/models/classifier/aliases/"

    as_viewer = signed_in(viewer).post(url, {"alias": "staging", "version": "1"})
    as_outsider = signed_in(charlie).post(url, {"alias": "staging", "version": "1"})
    page = html(signed_in(viewer).get("/dashboard/models/classifier/"))

    assert as_viewer.status_code == 403
    assert as_outsider.status_code == 404
    assert not classifier.aliases.exists()
    assert 'id="alias-form"' not in page


LISTING_FORM = {
    "title": "Tabular classifier",
    "summary": "Three classes from four numbers.",
    "visibility": "public",
    "price_per_call": "0.002",
    "price_per_second": "",
    "currency": "usd",
    "free_calls_per_month": "100",
    "license": "apache-2.0",
    "tags": "tabular, Iris",
    "card_markdown": "# Card\n<script>alert(1)</script>",
    "example_input": '{"x": [[1, 2, 3, 4]]}',
}


def test_an_admin_publishes_edits_and_unpublishes_from_the_dashboard(
    alice_client, alice, tenant, classifier
):
    from marketplace.models import Listing

    form_page = html(alice_client.get("/dashboard/models/classifier/listing/"))
    url = "/dashboard/models/classifier/listing/"
    published = alice_client.post(url, LISTING_FORM, follow=True)
    listing = Listing.objects.get(model=classifier)
    edit_page = html(alice_client.get("/dashboard/models/classifier/listing/"))
    catalogue = html(Client().get("/catalogue/acme/classifier/"))  # signed out
    changed = alice_client.post(
        "/dashboard/models/classifier/listing/",
        {**LISTING_FORM, "price_per_call": "0.0025", "gated": "on", "example_input": ""},
        follow=True,
    )
    unpublished = alice_client.post("/dashboard/models/classifier/listing/unpublish/", follow=True)

    assert "Publish acme/classifier" in form_page and 'value="classifier"' in form_page
    assert "Listing published: Public: in the catalogue." in html(published)
    assert (listing.title, listing.license, listing.tags) == (
        "Tabular classifier",
        "Apache-2.0",
        ["tabular", "iris"],
    )
    assert (listing.price_per_call, listing.price_per_second) == (Decimal("0.002"), 0)
    assert listing.free_calls_per_month == 100 and listing.example_input == {"x": [[1, 2, 3, 4]]}
    assert "<script>" not in listing.card_html
    # The form shows what is listed, to edit.
    assert 'value="Tabular classifier"' in edit_page and "tabular, iris" in edit_page
    assert "Tabular classifier" in catalogue
    assert "Listing updated" in html(changed)
    listing.refresh_from_db()
    assert listing.gated and listing.price_per_call == Decimal("0.0025")
    assert listing.example_input is None  # the form showed it; sent blank, it is removed
    assert "The listing is private now" in html(unpublished)
    listing.refresh_from_db()
    assert listing.visibility == "private"
    assert Client().get("/catalogue/acme/classifier/").status_code == 404
    actions = list(
        AuditEvent.objects.filter(tenant=tenant, action__startswith="listing.").values_list(
            "action", flat=True
        )
    )
    assert sorted(actions) == sorted(
        ["listing.publish", "listing.update", "listing.price_change", "listing.unpublish"]
    )


def as_sent_back(form) -> dict:
    """The listing form's fields as a browser sends them when nothing is touched: a textarea's
    line breaks as CRLF, an unticked box left out."""
    data = {}
    for field in form:
        value = field.value()
        if field.widget_type == "checkbox":
            if value:
                data[field.name] = "on"
            continue
        text = field.field.widget.format_value(value) or ""
        data[field.name] = text.replace("\n", "\r\n") if field.widget_type == "textarea" else text
    return data


def test_saving_the_listing_form_untouched_changes_nothing(alice_client, classifier):
    from marketplace import listings

    card = "# Card\n\nThree classes.  \nFrom four numbers.\n"
    listing = listings.listing_publish(
        model=classifier,
        actor=accounts.SYSTEM,
        visibility="public",
        card_markdown=card,
        price_per_call=Decimal("0.000125"),
        license="LicenseRef-acme",
        tags=["tabular"],
        example_input={"x": [[1.5, 2, 3, 4]]},
    )
    url = "/dashboard/models/classifier/listing/"
    shown = alice_client.get(url)
    page, form = html(shown), shown.context["form"]

    saved = alice_client.post(url, as_sent_back(form))

    # Prices as the listing shows them, not as the column holds them (0.000000).
    assert 'name="price_per_second" value="0"' in page
    assert 'name="price_per_call" value="0.000125"' in page
    assert saved.status_code == 302
    listing.refresh_from_db()
    assert listing.card_markdown == card
    assert not AuditEvent.objects.filter(action="listing.update").exists()


def test_a_listing_with_a_large_example_input_can_be_edited(alice_client, classifier):
    """An example the API took (800 kB of JSON, under the 1 MiB limit) is shown on the form as
    compactly as it was measured, so the form takes it back with the publisher's change."""
    from marketplace import listings

    example = {"text": "héllo", "x": [1] * 400_000}
    listing = listings.listing_publish(
        model=classifier, actor=accounts.SYSTEM, visibility="public", example_input=example
    )
    url = "/dashboard/models/classifier/listing/"
    form = alice_client.get(url).context["form"]

    saved = alice_client.post(url, {**as_sent_back(form), "price_per_call": "0.01"})

    assert saved.status_code == 302
    listing.refresh_from_db()
    assert listing.price_per_call == Decimal("0.01") and listing.example_input == example
    shown = form["example_input"].value()
    assert '"text":"héllo"' in shown and '"x":[1,1,1,' in shown


@pytest.mark.parametrize(
    ("change", "field_error"),
    [
        ({"price_per_call": "-1"}, "A price cannot be negative."),
        ({"price_per_call": "0.0000001"}, "6 decimal places"),
        ({"price_per_call": "1e999999"}, "price_per_call"),
        ({"price_per_call": "1e-999999999"}, "6 decimal places"),
        ({"price_per_call": "NaN"}, "Enter a number."),
        ({"currency": "zzz"}, "zzz"),
        ({"license": "not a licence"}, "SPDX"),
        ({"tags": "ok, not a tag!"}, "not a tag!"),
        ({"example_input": "{not json"}, "Not valid JSON."),
        ({"example_input": '{"x": "\\u0000"}'}, "A NUL character"),
        ({"example_input": "[" * 50 + "]" * 50}, "nests at most 40"),
        ({"example_input": '{"x": [NaN]}'}, "JSON has no NaN or Infinity"),
        ({"example_input": "[-Infinity]"}, "JSON has no NaN or Infinity"),
        ({"example_input": "[1e999]"}, "JSON has no NaN or Infinity"),
        ({"title": "   "}, "This field is required."),
        ({"visibility": "everyone"}, "Select a valid choice."),
    ],
)
def test_listing_values_the_registry_refuses_come_back_on_the_form(
    alice_client, classifier, change, field_error
):
    from marketplace.models import Listing

    url = "/dashboard/models/classifier/listing/"
    response = alice_client.post(url, {**LISTING_FORM, **change})

    page = html(response)  # the form again, 200, not a redirect
    assert field_error in page, page[page.find("error") - 200 : page.find("error") + 400]
    assert 'class="field has-error"' in page
    assert not Listing.objects.filter(model=classifier).exists()
    assert not AuditEvent.objects.filter(action__startswith="listing.").exists()


def test_only_admins_publish_from_the_dashboard(bob, tenant, charlie, outsider, classifier):
    from marketplace.models import Listing

    developer = signed_in(bob)
    model_page = html(developer.get("/dashboard/models/classifier/"))

    assert developer.get("/dashboard/models/classifier/listing/").status_code == 403
    assert developer.post("/dashboard/models/classifier/listing/", LISTING_FORM).status_code == 403
    assert "Publishing needs the admin role." in model_page
    assert "/dashboard/models/classifier/listing/" not in model_page
    outsider_client = signed_in(charlie)
    assert outsider_client.get("/dashboard/models/classifier/listing/").status_code == 404
    assert (
        outsider_client.post("/dashboard/models/classifier/listing/unpublish/").status_code == 404
    )
    assert not Listing.objects.exists()


def access_action(client: Client, **form):
    return client.post("/dashboard/models/classifier/access/", form, follow=True)


def test_an_admin_decides_who_may_run_the_model_from_the_access_page(
    alice_client, alice, tenant, classifier, model_files, charlie, outsider
):
    """A gated listing: Globex asks, the publisher approves (Globex runs the model), allows
    and withdraws downloads, revokes; then shares the model by name, and revokes the share."""
    from marketplace import listings
    from marketplace.models import AccessRequest, Entitlement

    services.version_record_validation(  # a signature the playground can build a form from
        version=upload_version(classifier, model_files["pt2"], alice),
        ok=True,
        signature={
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}],
        },
        parameter_count=67,
        latency_ms=0.2,
    )
    listing = listings.listing_publish(
        model=classifier, actor=accounts.SYSTEM, visibility="public", gated=True
    )
    asked = listings.access_request_create(
        listing=listing, tenant=outsider, actor=Actor(user=charlie), message="For our pilot."
    )
    globex = signed_in(charlie)

    model_page = html(alice_client.get("/dashboard/models/classifier/"))
    page = html(alice_client.get("/dashboard/models/classifier/access/"))
    approved = html(access_action(alice_client, action="approve", id=asked.public_id))
    status_after_approval = AccessRequest.objects.get(pk=asked.pk).status
    entitlement = Entitlement.objects.get(model=classifier, tenant=outsider, revoked_at=None)
    playground = globex.get("/dashboard/playground/acme/classifier/")
    allowed = html(access_action(alice_client, action="allow_download", id=entitlement.public_id))
    can_download = Entitlement.objects.get(pk=entitlement.pk).can_download
    withdrawn = html(
        access_action(alice_client, action="withdraw_download", id=entitlement.public_id)
    )
    revoked = html(access_action(alice_client, action="revoke", id=entitlement.public_id))
    after_revoke = globex.get("/dashboard/playground/acme/classifier/")

    assert "Who may run it (1 asking)" in model_page
    assert "Globex" in page and "For our pilot." in page
    assert "Approved Globex&#x27;s request." in approved
    assert status_after_approval == "approved"
    assert "Subscribe to it first." not in html(playground)
    assert "Globex may download it." in allowed and can_download
    assert "Globex may not download it." in withdrawn
    assert "Globex no longer has access." in revoked
    assert "Subscribe to it first." in html(after_revoke)  # the page says why it cannot run
    # The approval is withdrawn with the access: Globex must ask again.
    assert AccessRequest.objects.get(pk=asked.pk).status == "declined"

    shared = html(access_action(alice_client, action="share", tenant="globex"))
    share = Entitlement.objects.get(model=classifier, tenant=outsider, revoked_at=None)
    assert "Shared with globex" in shared and share.kind == "share"
    runs = html(globex.get("/dashboard/playground/acme/classifier/"))
    assert "Subscribe to it first." not in runs
    html(access_action(alice_client, action="revoke", id=share.public_id))
    assert not Entitlement.objects.filter(model=classifier, revoked_at=None).exists()
    actions = set(AuditEvent.objects.filter(tenant=tenant).values_list("action", flat=True)) & {
        "access_request.approve",
        "entitlement.download_grant",
        "entitlement.download_revoke",
        "entitlement.revoke",
        "model.share",
    }
    assert len(actions) == 5


def test_an_approval_not_subscribed_on_is_listed_and_can_be_withdrawn(
    alice_client, classifier, charlie, outsider, settings
):
    """On a paid gated listing an approval does not subscribe: it was on no page, and the
    consumer could subscribe on it at any time."""
    from marketplace import listings
    from marketplace.models import AccessRequest

    settings.PAYMENT_METHOD_REQUIRED = False
    listing = listings.listing_publish(
        model=classifier,
        actor=accounts.SYSTEM,
        visibility="public",
        gated=True,
        price_per_call="0.5",
    )
    asked = listings.access_request_create(
        listing=listing, tenant=outsider, actor=Actor(user=charlie)
    )
    listings.access_request_approve(request=asked, actor=accounts.SYSTEM)

    page = html(alice_client.get("/dashboard/models/classifier/access/"))
    withdrawn = html(access_action(alice_client, action="withdraw", id=asked.public_id))

    assert "Approved, not subscribed" in page and f"approved-{asked.public_id}" in page
    assert "Withdrew Globex&#x27;s approval" in withdrawn
    assert AccessRequest.objects.get(pk=asked.pk).status == "declined"
    assert f"approved-{asked.public_id}" not in withdrawn
    refused = key_client(outsider).post("/api/v1/catalogue/acme/classifier/subscribe")
    assert refused.status_code == 403


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"action": "share", "tenant": "nobody-here"}, "There is no organisation &#x27;nobody"),
        ({"action": "share", "tenant": "acme"}, "already belongs to &#x27;acme&#x27;"),
        ({"action": "shred"}, "Unknown action."),
    ],
)
def test_access_changes_the_registry_refuses_are_explained(alice_client, classifier, form, message):
    from marketplace.models import Entitlement

    assert message in html(access_action(alice_client, **form))
    assert not Entitlement.objects.exists()


def test_sharing_takes_the_organisations_slug_in_any_case(alice_client, classifier, outsider):
    from marketplace.models import Entitlement

    shared = html(access_action(alice_client, action="share", tenant=" Globex "))

    assert "Shared with globex" in shared
    assert Entitlement.objects.get(model=classifier, revoked_at=None).tenant == outsider


def test_a_decided_request_cannot_be_decided_again(alice_client, classifier, charlie, outsider):
    from marketplace import listings

    listing = listings.listing_publish(
        model=classifier, actor=accounts.SYSTEM, visibility="public", gated=True
    )
    asked = listings.access_request_create(
        listing=listing, tenant=outsider, actor=Actor(user=charlie)
    )
    access_action(alice_client, action="decline", id=asked.public_id)

    again = html(access_action(alice_client, action="approve", id=asked.public_id))

    assert "This request was already declined." in again


def test_only_the_publishers_admins_reach_the_access_page(
    bob, charlie, outsider, tenant, classifier
):
    from marketplace import listings

    listing = listings.listing_publish(
        model=classifier, actor=accounts.SYSTEM, visibility="public", gated=True
    )
    asked = listings.access_request_create(
        listing=listing, tenant=outsider, actor=Actor(user=charlie)
    )
    developer, stranger = signed_in(bob), signed_in(charlie)

    assert developer.get("/dashboard/models/classifier/access/").status_code == 403
    assert (
        developer.post(
            "/dashboard/models/classifier/access/", {"action": "approve", "id": asked.public_id}
        ).status_code
        == 403
    )
    # Globex asked, but the page is Acme's: to Globex the model is not there.
    assert (
        stranger.post(
            "/dashboard/models/classifier/access/", {"action": "approve", "id": asked.public_id}
        ).status_code
        == 404
    )
    asked.refresh_from_db()
    assert asked.status == "pending"


def test_a_form_sent_after_switching_organisation_in_another_tab_changes_nothing(
    alice, tenant, classifier, charlie, outsider, model_files
):
    """Alice is an admin of Acme and of Globex, which both have a model named classifier. She
    opens Acme's, then switches to Globex in another tab: the session's organisation is
    Globex now, and Acme's forms, sent from the first tab, must not change Globex's model."""
    from marketplace import listings
    from marketplace.models import Entitlement

    accounts.membership_add(tenant=outsider, user=alice, role=Role.ADMIN, actor=accounts.SYSTEM)
    theirs = services.model_create(
        tenant=outsider, name="classifier", task="other", actor=Actor(user=charlie)
    )
    for model, user in ((classifier, alice), (theirs, charlie)):
        make_ready(upload_version(model, model_files["pt2"], user))
    listings.listing_publish(model=theirs, actor=accounts.SYSTEM, visibility="public", title="G")
    client = signed_in(alice)  # in Acme, her first organisation
    acme_pages = [
        html(client.get(f"/dashboard/models/classifier/{page}"))
        for page in ("", "listing/", "access/")
    ]
    client.post("/dashboard/switch/", {"tenant": "globex"})
    events = AuditEvent.objects.count()
    url = "/dashboard/models/classifier/"
    sent = {
        f"{url}aliases/": {"alias": "staging", "version": "1"},
        f"{url}listing/": {**LISTING_FORM, "visibility": "private"},
        f"{url}listing/unpublish/": {},
        f"{url}access/": {"action": "share", "tenant": "acme"},
    }

    answers = [
        html(client.post(path, {**form, "org": "acme"}, follow=True)) for path, form in sent.items()
    ]

    assert AuditEvent.objects.count() == events
    assert not theirs.aliases.exists() and not Entitlement.objects.exists()
    theirs.listing.refresh_from_db()
    assert (theirs.listing.visibility, theirs.listing.title) == ("public", "G")
    assert all(
        "That form was sent from a page of acme, but you have switched to globex" in a
        for a in answers
    )
    # Each form of Acme's pages says whose it is.
    assert all('<input type="hidden" name="org" value="acme">' in page for page in acme_pages)


def test_the_model_page_shows_the_newest_versions_and_those_with_aliases(
    alice_client, alice, tenant, classifier, model_files, monkeypatch
):
    """It rendered every version (593 KB for 1,000), and reloaded them all every 5 s while
    one validated."""
    from marketplace import dashboard

    monkeypatch.setattr(dashboard, "VERSIONS_SHOWN", 3)
    for _ in range(6):
        make_ready(upload_version(classifier, model_files["pt2"], alice))
    access, actor = owner_access(tenant, alice), Actor(user=alice)
    services.alias_set(
        model=classifier,
        name="production",
        version=classifier.versions.get(number=1),
        access=access,
        actor=actor,
    )

    page = html(alice_client.get("/dashboard/models/classifier/"))
    everything = html(alice_client.get("/dashboard/models/classifier/?versions=all"))

    shown = set(re.findall(r'id="version-(\d+)"', page))
    assert shown == {"6", "5", "4", "1"}  # the newest three, and production's
    assert "2 older versions not shown." in page and "Show all 6" in page
    assert set(re.findall(r'id="version-(\d+)"', everything)) == {str(n) for n in range(1, 7)}


def test_the_models_page_lists_an_organisations_models_a_page_at_a_time(
    alice_client, tenant, monkeypatch
):
    from marketplace import dashboard

    monkeypatch.setattr(dashboard, "MODELS_PER_PAGE", 2)
    for name in ("alpha", "beta", "gamma"):
        services.model_create(tenant=tenant, name=name, actor=accounts.SYSTEM)

    first = html(alice_client.get("/dashboard/models/"))
    second = html(alice_client.get("/dashboard/models/?page=2"))

    assert "acme/alpha" in first and "acme/beta" in first and "acme/gamma" not in first
    assert "Page 1 of 2" in first and 'href="?page=2">Next' in first
    assert "acme/gamma" in second and "acme/alpha" not in second
