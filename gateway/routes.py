"""The route table: each HTTP route names one RPC and where the fields of its
request come from (the JSON body, path parameters, the query string, the
Idempotency-Key header). The app and the OpenAPI document are both built from
it; nothing else knows the routes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor

from rewards.v1 import achievements_pb2, events_pb2, levels_pb2, xp_pb2

# The services the gateway routes to: it opens a channel to each (REWARDS_<NAME>_TARGET).
SERVICES: dict[str, ServiceDescriptor] = {
    "xp": xp_pb2.DESCRIPTOR.services_by_name["XpService"],
    "achievements": achievements_pb2.DESCRIPTOR.services_by_name["AchievementsService"],
    "levels": levels_pb2.DESCRIPTOR.services_by_name["LevelsService"],
}
# Services of the API with no route at all (each of their RPCs is in UNROUTED_RPCS): no channel either.
UNROUTED_SERVICES: dict[str, ServiceDescriptor] = {
    "events": events_pb2.DESCRIPTOR.services_by_name["EventsService"],
}
# Every service of the API: each of its RPCs is routed or in UNROUTED_RPCS.
ALL_SERVICES: dict[str, ServiceDescriptor] = {**SERVICES, **UNROUTED_SERVICES}

IDEMPOTENCY_HEADER = "Idempotency-Key"
WHOLE_REQUEST = "*"

_PATH_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Route:
    """One HTTP operation. `path` is an OpenAPI path template; `body` is
    WHOLE_REQUEST (the body is the request message), the name of a message
    field of the request (the body is that field), or None (no body).
    `path_fields` maps a path parameter to the request field it fills (a dotted
    path; by default the field of the same name); `query` lists the request
    fields a query parameter may set; `idempotency_field` is the string field
    the Idempotency-Key header fills; `notes`, what the OpenAPI operation's
    description says besides the RPC it makes."""

    http_method: str
    path: str
    service: str
    rpc_name: str
    summary: str
    body: str | None = None
    path_fields: Mapping[str, str] = field(default_factory=dict)
    query: tuple[str, ...] = ()
    idempotency_field: str | None = None
    notes: str = ""

    @property
    def rpc(self) -> MethodDescriptor:
        return SERVICES[self.service].methods_by_name[self.rpc_name]

    @property
    def grpc_method(self) -> str:
        return f"/{self.rpc.containing_service.full_name}/{self.rpc.name}"

    @property
    def request_type(self) -> Descriptor:
        return self.rpc.input_type

    @property
    def response_type(self) -> Descriptor:
        return self.rpc.output_type

    @property
    def path_params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)

    def field_path(self, param: str) -> str:
        return self.path_fields.get(param, param)

    @property
    def body_type(self) -> Descriptor | None:
        if self.body is None:
            return None
        if self.body == WHOLE_REQUEST:
            return self.request_type
        return self.request_type.fields_by_name[self.body].message_type

    @property
    def operation_id(self) -> str:
        return self.rpc_name


def resolve_field(message: Descriptor, dotted: str) -> FieldDescriptor:
    """The field a dotted path names, through singular message fields."""
    *parents, leaf = dotted.split(".")
    for name in parents:
        parent = message.fields_by_name[name]
        if parent.message_type is None or parent.is_repeated:
            raise ValueError(f"{dotted}: {name} is not a singular message field of {message.full_name}")
        message = parent.message_type
    return message.fields_by_name[leaf]


# RPCs no route makes, and why: a new RPC is either routed or listed here (tests/test_gateway.py).
_EVENTS_STREAMING = "gRPC only for now: a server-streaming call, which a JSON request and response cannot carry"
_EVENTS_ADMIN = "gRPC only for now: webhook administration is an operator's (admin role), through rewardsctl or gRPC"
UNROUTED_RPCS: dict[str, str] = {
    "AchievementsService/UnlockDueAchievements": "internal: the XP service and operators' backfills call it "
    "(service role), never a web client",
    "EventsService/WatchEvents": _EVENTS_STREAMING,
    "EventsService/PutWebhook": _EVENTS_ADMIN,
    "EventsService/ListWebhooks": _EVENTS_ADMIN,
    "EventsService/DeleteWebhook": _EVENTS_ADMIN,
    "EventsService/ListFailedDeliveries": _EVENTS_ADMIN,
    "EventsService/RedeliverEvents": _EVENTS_ADMIN,
}

ROUTES: tuple[Route, ...] = (
    # Play.
    Route(
        "POST",
        "/xp/award",
        "xp",
        "AwardXp",
        "Award the XP of an activity",
        body=WHOLE_REQUEST,
        idempotency_field="request_id",
    ),
    Route(
        "POST",
        "/xp/grant",
        "xp",
        "GrantXp",
        "Grant XP not tied to an activity (admin)",
        body=WHOLE_REQUEST,
        idempotency_field="request_id",
    ),
    Route(
        "POST",
        "/achievements/unlock",
        "achievements",
        "UnlockAchievement",
        "Unlock an achievement",
        body=WHOLE_REQUEST,
        idempotency_field="request_id",
    ),
    Route(
        "POST",
        "/levels/check-level-up",
        "levels",
        "CheckLevelUp",
        "Raise a user's level to what their XP gives",
        body=WHOLE_REQUEST,
        idempotency_field="request_id",
    ),
    Route("GET", "/users/{user_id}/progress", "xp", "GetProgress", "A user's XP, level, achievements and rewards"),
    Route(
        "GET",
        "/users/{user_id}/xp/history",
        "xp",
        "ListXpHistory",
        "Page through a user's XP ledger, newest first",
        query=("page_size", "page_token"),
        notes="Every award, grant, achievement reward, adjustment and revoke, each once; an entry's entry_id is "
        "what POST /xp/revoke takes for an entry without a request_id.",
    ),
    Route(
        "GET",
        "/users/{user_id}/levels",
        "levels",
        "ListLevelsReached",
        "Page through the levels a user passed, with the rewards granted for each",
        query=("page_size", "page_token"),
    ),
    Route(
        "GET",
        "/users/{user_id}/achievements",
        "achievements",
        "ListUserAchievements",
        "Page through a user's unlocked achievements, in id order",
        query=("page_size", "page_token"),
    ),
    Route(
        "GET",
        "/users/{user_id}/achievements/progress",
        "achievements",
        "GetAchievementProgress",
        "Page through the achievement catalog, in id order, with a user's progress towards each",
        query=("page_size", "page_token"),
        notes="A hidden achievement the user has not unlocked comes without its name and description, "
        "unless the token's role is admin.",
    ),
    # An operator's corrections.
    Route(
        "POST",
        "/xp/adjust",
        "xp",
        "AdjustXp",
        "Add or take away XP, with a reason (admin)",
        body=WHOLE_REQUEST,
        idempotency_field="request_id",
        notes="A negative delta larger than the user's total is 409 (FAILED_PRECONDITION): totals never go "
        "below zero. Levels reached, their rewards and unlocked achievements stay.",
    ),
    # No Idempotency-Key: request_id names the entry to revoke (the request_id it was recorded with), not
    # this call; a revoke is idempotent by its target instead (a second one is a duplicate).
    Route(
        "POST",
        "/xp/revoke",
        "xp",
        "RevokeAward",
        "Reverse the XP of one earlier ledger entry (admin)",
        body=WHOLE_REQUEST,
        notes="Names the entry by the request_id it was recorded with, or by its entry_id (from GET "
        "/users/{user_id}/xp/history): exactly one of the two. Takes no Idempotency-Key (the header is "
        "ignored): request_id names the entry to revoke, not this call, and a second revoke of the same entry "
        "is a duplicate (the same answer, nothing changed). 404 (NOT_FOUND) for an unknown entry; 409 "
        "(FAILED_PRECONDITION) for a revoke, an adjustment or an entry of no XP, or when the total would go "
        "below zero. Levels reached, their rewards and unlocked achievements stay: level stays, total_xp "
        "goes down.",
    ),
    # The activity catalog.
    Route(
        "GET",
        "/activities",
        "xp",
        "ListActivities",
        "Page through the activities",
        query=("category", "page_size", "page_token"),
    ),
    Route("GET", "/activities/{activity_id}", "xp", "GetActivity", "One activity"),
    Route(
        "PUT",
        "/activities/{activity_id}",
        "xp",
        "PutActivity",
        "Create or replace an activity (admin)",
        body="activity",
        path_fields={"activity_id": "activity.activity_id"},
    ),
    Route("DELETE", "/activities/{activity_id}", "xp", "DeleteActivity", "Delete an activity (admin)"),
    # The streak catalog.
    Route(
        "GET",
        "/streaks",
        "xp",
        "ListStreaks",
        "Page through the streaks",
        query=("page_size", "page_token"),
    ),
    Route("GET", "/streaks/{streak_id}", "xp", "GetStreak", "One streak"),
    Route(
        "PUT",
        "/streaks/{streak_id}",
        "xp",
        "PutStreak",
        "Create or replace a streak (admin)",
        body="streak",
        path_fields={"streak_id": "streak.streak_id"},
        notes="A streak's period is fixed once it is created, even after a delete: another period for its "
        "streak_id is 409 (FAILED_PRECONDITION); use a new streak_id. Players' runs show in "
        "GET /users/{user_id}/progress (streaks).",
    ),
    Route(
        "DELETE",
        "/streaks/{streak_id}",
        "xp",
        "DeleteStreak",
        "Delete a streak (admin)",
        notes="404 (NOT_FOUND) for a streak not in the catalog. Players' runs of it are no longer shown; "
        "putting it back (with the same period) shows them again.",
    ),
    # The achievement catalog.
    Route(
        "GET",
        "/achievements",
        "achievements",
        "ListAchievements",
        "Page through the achievements",
        query=("page_size", "page_token"),
    ),
    Route("GET", "/achievements/{achievement_id}", "achievements", "GetAchievement", "One achievement"),
    Route(
        "GET",
        "/achievements/{achievement_id}/stats",
        "achievements",
        "GetAchievementStats",
        "How many users unlocked an achievement, of all users with any XP",
        notes="404 (NOT_FOUND) for an achievement not in the catalog.",
    ),
    Route(
        "PUT",
        "/achievements/{achievement_id}",
        "achievements",
        "PutAchievement",
        "Create or replace an achievement (admin)",
        body="achievement",
        path_fields={"achievement_id": "achievement.achievement_id"},
    ),
    Route(
        "DELETE", "/achievements/{achievement_id}", "achievements", "DeleteAchievement", "Delete an achievement (admin)"
    ),
    # The level table.
    Route(
        "GET",
        "/levels",
        "levels",
        "ListLevels",
        "Page through the level table, in level order",
        query=("page_size", "page_token"),
    ),
    Route(
        "PUT",
        "/levels/{level}",
        "levels",
        "PutLevel",
        "Create or replace a level (admin)",
        body="level",
        path_fields={"level": "level.level"},
    ),
    Route("DELETE", "/levels/{level}", "levels", "DeleteLevel", "Delete a level (admin)"),
)


def check_routes(routes: tuple[Route, ...] = ROUTES) -> None:
    """Fails at import on a route that names what its RPC's request does not
    have (so a proto change that breaks a route breaks loudly)."""
    seen: set[tuple[str, str]] = set()
    for route in routes:
        where = f"{route.http_method} {route.path}"
        if (route.http_method, route.path) in seen:
            raise ValueError(f"{where}: defined twice")
        seen.add((route.http_method, route.path))
        request = route.request_type
        if route.body not in (None, WHOLE_REQUEST):
            body = request.fields_by_name.get(route.body or "")
            if body is None or body.message_type is None or body.is_repeated:
                raise ValueError(f"{where}: body {route.body!r} is not a singular message field of {request.full_name}")
        if route.http_method == "GET" and route.body is not None:
            raise ValueError(f"{where}: a GET has no body")
        bound = [*(route.field_path(p) for p in route.path_params), *route.query]
        if route.idempotency_field:
            bound.append(route.idempotency_field)
        for dotted in bound:
            target = resolve_field(request, dotted)
            if target.is_repeated or target.message_type is not None:
                raise ValueError(f"{where}: {dotted} is not a scalar field of {request.full_name}")
        if (
            route.idempotency_field
            and resolve_field(request, route.idempotency_field).type != FieldDescriptor.TYPE_STRING
        ):
            raise ValueError(f"{where}: {route.idempotency_field} is not a string field")
    routed = {f"{route.rpc.containing_service.name}/{route.rpc_name}" for route in routes}
    every_rpc = {f"{service.name}/{method.name}" for service in ALL_SERVICES.values() for method in service.methods}
    for name in UNROUTED_RPCS:
        if name not in every_rpc or name in routed:
            raise ValueError(f"{name}: listed as unrouted, but {'routed' if name in routed else 'no such RPC'}")


check_routes()
