def tenancy(request) -> dict:
    membership = getattr(request, "membership", None)
    user = getattr(request, "user", None)
    memberships = []
    if user is not None and user.is_authenticated and membership is not None:
        memberships = list(user.memberships.select_related("tenant").order_by("tenant__name"))
    return {
        "membership": membership,
        "current_tenant": getattr(request, "tenant", None),
        "memberships": memberships,
    }
