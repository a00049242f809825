"""Scoped reads of the registry: which models a caller may see or run, and which version a
reference names."""

from __future__ import annotations

from django.db.models import Q, QuerySet
from guardian.core import ObjectPermissionChecker

from accounts.exceptions import Forbidden, Gone, NotFound, TakenDown
from accounts.models import Scope
from accounts.tenancy import Access
from marketplace.models import Alias, AliasMove, Listing, Model, ModelVersion

PUBLICLY_VISIBLE = (Listing.Visibility.PUBLIC, Listing.Visibility.UNLISTED)
# The versions another organisation may see of a model it may view: not those still
# validating or that failed (their state and failure reason are the publisher's).
PUBLISHED = (
    ModelVersion.Status.READY,
    ModelVersion.Status.DEPRECATED,
    ModelVersion.Status.YANKED,
)


def tenant_perms(access: Access | None, model: Model) -> set[str]:
    """The django-guardian object permissions granted to the caller's tenant group on
    ``model``, read in one query."""
    if access is None:
        return set()
    return set(ObjectPermissionChecker(access.tenant.group).get_perms(model))


def _listing_is_open(model: Model) -> bool:
    """Public or unlisted, taken down or not (a take-down answers 451, not 404)."""
    listing = getattr(model, "listing", None)
    return listing is not None and listing.visibility in PUBLICLY_VISIBLE


def refuse_if_taken_down(listing: Listing | None) -> None:
    """451 with the operator's reason once a listing is taken down."""
    if listing is not None and listing.taken_down_at is not None:
        model = listing.model
        raise TakenDown(
            f"{model.ref} was taken down: "
            f"{(listing.takedown_reason or 'no reason given').rstrip('.')}.",
            reason=listing.takedown_reason,
            taken_down_at=listing.taken_down_at.isoformat(),
        )


def model_get(*, owner: str, name: str) -> Model:
    model = (
        Model.objects.select_related("tenant", "listing")
        .filter(tenant__slug=owner, name=name)
        .first()
    )
    if model is None:
        raise NotFound(f"No model {owner}/{name}.")
    return model


def refuse_unless_key_allows(access: Access | None, model_ref: str) -> None:
    """403 for an API key whose model allowlist leaves ``model_ref`` out, before the model is
    looked up (so it tells nothing about whether the model exists)."""
    key = access.key if access is not None else None
    if key is not None and not key.allows_model(model_ref):
        raise Forbidden(
            f"This API key may not use {model_ref}; its allowed models are "
            f"{', '.join(key.allowed_models)}. Use a key that allows it, or add it to this "
            "key's allowed models."
        )


def model_for_access(access: Access | None, *, owner: str, name: str, perm: str = "view") -> Model:
    """The model ``owner/name`` if ``access`` may ``view``, ``run``, ``change``, ``publish``
    or ``download`` it.

    Missing and private-without-a-grant look the same (404). A public model the caller may see
    but not run answers 403 with the way to get access. Once an operator takes its listing
    down, everyone but the publisher gets 451 with the reason, subscribers included.
    """
    refuse_unless_key_allows(access, f"{owner}/{name}")
    model = model_get(owner=owner, name=name)
    if access is not None and model.tenant_id == access.tenant.pk:
        needed = {
            "view": Scope.MODELS_READ,
            "run": Scope.INFERENCE,
            "change": Scope.MODELS_WRITE,
            "publish": Scope.ADMIN,
            # The weights themselves: those who may add versions, not every reader (a viewer
            # or billing member sees the model, its versions and their checksums).
            "download": Scope.MODELS_WRITE,
        }[perm]
        if not access.has_scope(needed):
            raise Forbidden(f"This needs the '{needed}' scope, which you lack.")
        return model
    granted = tenant_perms(access, model)
    if not ("view_model" in granted or _listing_is_open(model)):
        raise NotFound(f"No model {owner}/{name}.")
    refuse_if_taken_down(getattr(model, "listing", None))
    if perm == "view" or (perm in ("run", "download") and f"{perm}_model" in granted):
        return model
    if perm == "run":
        raise Forbidden(
            f"Your organisation has no access to {model.ref}. Subscribe to it first.",
            subscribe_url=f"/api/v1/catalogue/{model.ref}/subscribe",
        )
    if perm == "download":
        raise Forbidden(
            f"Downloading the weights of {model.ref} needs its publisher's permission; ask them "
            "to allow downloads for your organisation."
        )
    raise Forbidden(f"Only the publisher of {model.ref} may do that.")


def models_visible_to(access: Access) -> QuerySet[Model]:
    """The caller's own models and those shared with or subscribed to by its tenant, less
    those an operator took down (of all these, only the ones its API key's allowlist
    names)."""
    from marketplace.models import ModelGroupObjectPermission

    granted = ModelGroupObjectPermission.objects.filter(
        group=access.tenant.group, permission__codename="view_model"
    ).values("content_object_id")
    visible = Model.objects.filter(tenant=access.tenant) | Model.objects.filter(
        pk__in=granted
    ).exclude(listing__taken_down_at__isnull=False)
    return visible.filter(access.key.models_q("")) if access.key is not None else visible


def is_number(ref: str) -> bool:
    """Whether ``ref`` is a version number: ASCII digits (``"²".isdigit()`` is true, and
    ``int`` refuses it) that fit the database's integer."""
    return ref.isascii() and ref.isdigit() and len(ref) <= 10 and int(ref) < 2**31


def alias_instead(model: Model) -> str | None:
    """The alias to suggest in place of a version that no longer runs: the first by name on
    one that does."""
    return (
        Alias.objects.filter(
            model=model, version__in=model.versions.filter(ModelVersion.runnable())
        )
        .order_by("name")
        .values_list("name", flat=True)
        .first()
    )


def is_publisher(access: Access | None, model: Model) -> bool:
    return access is not None and model.tenant_id == access.tenant.pk


def version_hidden(version: ModelVersion, model: Model, access: Access | None) -> bool:
    """Whether ``access`` must not see ``version`` of ``model``: to another organisation than
    the publisher, an unpublished version does not exist. ``access`` None: the system's own
    view (operators, tasks), which sees every version."""
    return (
        access is not None and version.status not in PUBLISHED and not is_publisher(access, model)
    )


def aliases_visible(model: Model, access: Access | None) -> QuerySet[Alias]:
    """The model's aliases ``access`` may see: to another organisation than the publisher,
    those on published versions (an alias on an unpublished one would name it)."""
    aliases = Alias.objects.filter(model=model).select_related("version")
    if not is_publisher(access, model):
        aliases = aliases.filter(version__status__in=PUBLISHED)
    return aliases


def alias_moves_visible(model: Model, alias: Alias, access: Access | None) -> QuerySet[AliasMove]:
    """``alias``'s history as ``access`` may see it, newest first: to another organisation
    than the publisher, the moves between published versions (one from or to an unpublished
    version would name it)."""
    moves = alias.history.select_related("from_version", "to_version")
    if not is_publisher(access, model):
        moves = moves.filter(to_version__status__in=PUBLISHED).filter(
            Q(from_version__isnull=True) | Q(from_version__status__in=PUBLISHED)
        )
    return moves


def version_resolve(model: Model, ref: str | int, *, access: Access | None) -> ModelVersion:
    """The version a number or an alias names, as ``access`` may see it: to another
    organisation than the publisher, an unpublished version is missing (404), like one that
    does not exist. ``access`` None: the system's own view (operators, tasks). A yanked
    version is 410 with the alias to use instead."""
    ref = str(ref)
    if is_number(ref):
        version = model.versions.filter(number=int(ref)).first()
    else:
        alias = Alias.objects.select_related("version").filter(model=model, name=ref).first()
        version = alias.version if alias else None
    if version is None or version_hidden(version, model, access):
        raise NotFound(f"{model.ref} has no version or alias '{ref}'.")
    if version.status == ModelVersion.Status.YANKED:
        alternative = alias_instead(model)
        hint = f" Use the alias '{alternative}' instead." if alternative else ""
        raise Gone(
            f"Version {version.number} of {model.ref} was withdrawn: "
            f"{version.status_reason or 'no reason given'}.{hint}",
            use_alias=alternative,
        )
    return version
