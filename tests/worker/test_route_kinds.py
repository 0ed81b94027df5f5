"""Routing by task kind (worker/routing.py, worker/account_views.py), pure: an account is offered a
job only when it serves the job's provider and kind; a job whose kind no account serves gets a
failure naming the kind; `waiting_for` looks at the same accounts as `route`."""

from __future__ import annotations

from kling.kinds import KIND_NAMES
from models.accounts import Account
from worker.account_views import ACTIVE, DISABLED, PAUSED, AccountView, waiting_for
from worker.routing import KIND_NOT_SERVED, PROVIDER_NOT_CONFIGURED, Queued, fill, route, unserved


def account(name: str, *kinds: str, provider: str = "kling") -> Account:
    """An account serving `kinds`, or the default (every kind) when none are given."""
    chosen = kinds or KIND_NAMES
    return Account(name=name, provider=provider, api_base="https://x", concurrency=5, kinds=chosen)


IMAGES = account("images", "image", "omni_image", "try_on")
VIDEOS = account("videos", "text_to_video", "image_to_video")
EVERYTHING = account("everything")
GATEWAY = account("gw", "image", provider="appypie")
POOL = (IMAGES, VIDEOS, EVERYTHING, GATEWAY)


def offered(kind: str, provider: str = "kling", *, disabled: tuple[str, ...] = ()) -> tuple[str, ...]:
    return route(POOL, provider, kind=kind, pinned=None, disabled=disabled, legacy=False).accounts


def test_an_account_without_kinds_serves_every_kind() -> None:
    bare = Account(name="bare", provider="kling", api_base="https://x", concurrency=5)
    assert bare.kinds == KIND_NAMES
    assert all(bare.serves_kind(kind) for kind in KIND_NAMES)


def test_only_accounts_serving_the_kind_are_offered_in_file_order() -> None:
    assert offered("image") == ("images", "everything")
    assert offered("try_on") == ("images", "everything")
    assert offered("text_to_video") == ("videos", "everything")
    assert offered("omni_video") == ("everything",)
    assert offered("image", "appypie") == ("gw",)
    assert offered("text_to_video", "appypie") == ()


def test_serving_counts_disabled_accounts_of_the_kind_only() -> None:
    plan = route(POOL, "kling", kind="text_to_video", pinned=None, disabled={"everything"}, legacy=False)
    assert (plan.accounts, plan.serving, plan.pinned) == (("videos",), 2, False)
    plan = route(POOL, "kling", kind="omni_video", pinned=None, disabled={"everything"}, legacy=False)
    # Served, but by a disabled account only: the job waits (submit), it does not fail.
    assert (plan.accounts, plan.serving) == ((), 1)


def test_a_pinned_job_stays_on_its_account_whatever_its_kinds() -> None:
    # Its earlier create may have made a task there: only a lookup there can tell.
    plan = route(POOL, "kling", kind="text_to_video", pinned="images", disabled=(), legacy=False)
    assert (plan.accounts, plan.pinned) == (("images",), True)


def test_legacy_single_account_serves_every_provider_and_kind() -> None:
    default = Account(name="default", provider="kling", api_base="https://x", concurrency=5)
    for kind in KIND_NAMES:
        plan = route((default,), "appypie", kind=kind, pinned=None, disabled=(), legacy=True)
        assert plan.accounts == ("default",)


def test_a_kind_no_account_serves_fails_with_a_code_naming_the_kind() -> None:
    pool = (IMAGES, VIDEOS)
    assert route(pool, "kling", kind="omni_video", pinned=None, disabled=(), legacy=False).serving == 0
    code, message = unserved(pool, "kling", "omni_video", legacy=False)
    assert code == KIND_NOT_SERVED
    assert "omni_video" in message and "kinds" in message
    # No account of the provider at all: the provider is what is missing, as before kinds.
    assert unserved(pool, "appypie", "image", legacy=False) == (
        PROVIDER_NOT_CONFIGURED,
        "no account serves provider appypie",
    )


def view(a: Account, state: str = ACTIVE, slots_in_use: int = 0) -> AccountView:
    return AccountView(
        name=a.name,
        provider=a.provider,
        state=state,
        concurrency=a.concurrency,
        code=1102 if state == PAUSED else None,
        slots_in_use=slots_in_use,
        kinds=a.kinds,
    )


def test_waiting_for_names_only_the_accounts_serving_the_kind() -> None:
    views = [view(IMAGES), view(VIDEOS, PAUSED), view(EVERYTHING, DISABLED)]
    # The image accounts are free, yet a video job waits: both accounts serving videos are out.
    assert waiting_for(views, "kling", "image", legacy=False) is None
    assert waiting_for(views, "kling", "text_to_video", legacy=False) == {
        "reason": "no_active_account",
        "accounts": {"videos": "paused: 1102", "everything": "disabled"},
    }
    assert waiting_for(views[:2], "kling", "omni_video", legacy=False) == {
        "reason": "no_account",
        "accounts": {},
    }


def test_waiting_for_slots_counts_the_kinds_accounts_only() -> None:
    views = [view(IMAGES, slots_in_use=5), view(VIDEOS, slots_in_use=0)]
    assert waiting_for(views, "kling", "image", legacy=False) == "slots"
    assert waiting_for(views, "kling", "text_to_video", legacy=False) is None
    # The default kind is image: callers that do not know kinds yet read as before.
    assert waiting_for(views, "kling", legacy=False) == "slots"


def test_the_account_document_lists_its_kinds() -> None:
    assert view(VIDEOS).document()["kinds"] == ["text_to_video", "image_to_video"]


def place(
    order: list[str], queued: dict[str, Queued], free: dict[str, int], held: tuple[str, ...] = ()
) -> list[str]:
    return fill(order, queued, free, POOL, set(held), legacy=False)


def test_the_pump_places_each_job_in_the_free_slots_of_an_account_serving_its_kind() -> None:
    videos = {f"v{i}": Queued(1, "kling", "omni_video") for i in range(3)}
    images = {f"i{i}": Queued(1, "kling", "image") for i in range(2)}
    queued = {**videos, **images}
    # Only "images" has room: the videos ahead in the queue do not take the image jobs' turn.
    assert place([*videos, *images], queued, {"images": 2, "videos": 0, "everything": 0}) == ["i0", "i1"]
    # "everything" serves both: the first in file order with room takes each job, slots used up.
    assert place([*videos, *images], queued, {"images": 1, "everything": 2}) == ["v0", "v1", "i0"]


def test_the_pump_places_a_job_only_where_all_its_slots_fit() -> None:
    queued = {"big": Queued(3, "kling", "image"), "small": Queued(1, "kling", "image")}
    # 2 + 2 free slots, but no one account has the 3 the big job needs; the small one fits.
    assert place(["big", "small"], queued, {"images": 2, "everything": 2}) == ["small"]


def test_the_pump_sends_pinned_and_leased_jobs_to_their_own_account_only() -> None:
    queued = {
        "pinned": Queued(1, "kling", "image", pinned="videos"),
        "legacy-pin": Queued(1, "kling", "image", pinned=""),  # the first account
        "leased": Queued(2, "kling", "omni_video"),
    }
    free = {"images": 5, "videos": 0, "everything": 0}
    # A leased job re-uses its lease (its submit run died) whatever the free slots say.
    assert place(list(queued), queued, free, held=("leased",)) == ["legacy-pin", "leased"]
    assert place(["pinned"], queued, {**free, "videos": 1}) == ["pinned"]


def test_the_pump_dispatches_a_job_no_account_serves_so_that_submit_fails_it() -> None:
    queued = {"gateway-video": Queued(1, "appypie", "text_to_video")}
    assert place(["gateway-video"], queued, {"images": 0}) == ["gateway-video"]
