"""Event mode: the best scene before an event date and the best scene after it.

A disaster-response user knows the event date. :func:`resolve_event_inputs` turns it into two date
windows and one :class:`~tasks.sources.local.SceneInputs` for each, from any source kind:

- **post-event**: ``[event, event + post_days]``. Local catalogs: the scene closest after the event
  (a scene dated entirely on or after the event first; a composite whose date range straddles the
  event only when no such scene exists, and the inputs' notes say so). Remote sources: their usual
  choice (fewest clouds, then a per-pixel mosaic) inside the window.
- **pre-event**: ``[event - pre_days, event - 1 day]``. Local catalogs: the scene closest before the
  event whose dates end before it (a composite that reaches the event date is never pre-event: it
  could hold post-event pixels). Remote sources: their usual choice inside the window.

Nothing here reads pixels. Errors name the role that has no scene and the window searched.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import shapely

from tasks.core import defaults
from tasks.core.errors import InputError, LandslideError
from tasks.sources.catalog import Catalog, LocalScene, LocalSource
from tasks.sources.local import SceneInputs, resolve_local_inputs
from tasks.sources.remote import fetch_remote_inputs

DEFAULT_PRE_DAYS = defaults.PRE_DAYS
DEFAULT_POST_DAYS = defaults.POST_DAYS
ROLES = ("pre", "post")


@dataclass(frozen=True)
class EventWindows:
    """The event date and the pre- and post-event date windows (inclusive)."""

    event_date: dt.date
    pre_days: int = DEFAULT_PRE_DAYS
    post_days: int = DEFAULT_POST_DAYS

    def __post_init__(self) -> None:
        if self.pre_days < 1:
            raise InputError(f"--pre-days must be >= 1, got {self.pre_days}")
        if self.post_days < 0:
            raise InputError(f"--post-days must be >= 0, got {self.post_days}")

    @property
    def pre(self) -> tuple[dt.date, dt.date]:
        return (self.event_date - dt.timedelta(days=self.pre_days),
                self.event_date - dt.timedelta(days=1))

    @property
    def post(self) -> tuple[dt.date, dt.date]:
        return self.event_date, self.event_date + dt.timedelta(days=self.post_days)

    def window(self, role: str) -> tuple[dt.date, dt.date]:
        return self.pre if role == "pre" else self.post

    def describe(self, role: str) -> str:
        a, b = self.window(role)
        return f"{role}-event window {a}..{b}"

    def to_dict(self) -> dict:
        return {"event_date": self.event_date.isoformat(), "pre_days": self.pre_days,
                "post_days": self.post_days,
                "pre_window": [d.isoformat() for d in self.pre],
                "post_window": [d.isoformat() for d in self.post]}


def choose_event_scene(scenes: tuple[LocalScene, ...] | list[LocalScene], windows: EventWindows,
                       role: str, source_name: str = "") -> tuple[LocalScene, list[str]]:
    """The local scene for ``role`` (``pre``/``post``) and notes on the choice (pure).

    Raises:
        InputError: no scene for that role in its window (the message lists the scenes' dates).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    event = windows.event_date
    start, end = windows.window(role)
    notes: list[str] = []
    in_window = [s for s in scenes if s.overlaps(start, end)]
    if role == "pre":
        hits = [s for s in in_window if s.date_span[1] < event]
        chosen = max(hits, key=lambda s: (s.date_span[1], s.date_span[0]), default=None)
    else:
        after = [s for s in in_window if s.date_span[0] >= event]
        straddling = [s for s in in_window if s.date_span[0] < event <= s.date_span[1]]
        chosen = min(after, key=lambda s: (s.date_span[0], s.date_span[1]), default=None)
        if chosen is None and straddling:
            chosen = min(straddling, key=lambda s: (s.date_span[1], s.date_span[0]))
            first, last = chosen.date_span
            notes.append(f"post-event scene {chosen.scene_id} is a composite of {first}..{last}, "
                         f"which straddles the event date {event}: some of its pixels may predate "
                         "the event")
    if chosen is None:
        have = "; ".join(f"{s.scene_id} ({s.date_text})" for s in scenes)
        rule = ("ending before the event" if role == "pre" else "reaching the event date or later")
        raise InputError(
            f"event date {event}: no {role}-event scene of source {source_name!r} in the "
            f"{windows.describe(role)} ({rule}); available: {have or 'none'}; widen "
            f"--{role}-days or choose another --event-date")
    return chosen, notes


@dataclass(frozen=True)
class EventInputs:
    """The two scenes of an event-mode scan."""

    windows: EventWindows
    post: SceneInputs
    pre: SceneInputs

    def to_dict(self) -> dict:
        return {"windows": self.windows.to_dict(), "post": self.post.to_dict(),
                "pre": self.pre.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "EventInputs":
        w = data["windows"]
        windows = EventWindows(dt.date.fromisoformat(w["event_date"]), w["pre_days"], w["post_days"])
        return cls(windows, SceneInputs.from_dict(data["post"]), SceneInputs.from_dict(data["pre"]))


def resolve_event_inputs(catalog: Catalog, source_name: str, windows: EventWindows,
                         post_bands: tuple[str, ...], pre_bands: tuple[str, ...],
                         roi_lonlat: shapely.Geometry | None = None,
                         cache_dir: Path | None = None) -> EventInputs:
    """The post-event and the pre-event scene of ``source_name`` (local, STAC or Sentinel Hub).

    The pre-event inputs carry no DEM (terrain comes from the post-event inputs, once).

    Raises:
        InputError / SourceError: no scene for a role in its window (the role and window are
            named), or what the source itself refuses.
    """
    source = catalog.source(source_name)
    chosen: dict[str, SceneInputs] = {}
    for role, bands in (("post", post_bands), ("pre", pre_bands)):
        if isinstance(source, LocalSource):
            scene, notes = choose_event_scene(source.scenes, windows, role, source_name)
            inputs = resolve_local_inputs(catalog, source_name, bands, scene_id=scene.scene_id)
        else:
            if roi_lonlat is None or cache_dir is None:
                raise ValueError("remote sources need roi_lonlat and cache_dir")
            start, end = windows.window(role)
            try:
                inputs = fetch_remote_inputs(source, source_name, bands, roi_lonlat, start, end,
                                             cache_dir)
            except LandslideError as exc:
                raise type(exc)(f"event date {windows.event_date}: no usable {role}-event scene in "
                                f"the {windows.describe(role)}: {exc}") from None
            notes = []
        notes = [f"{role}-event scene ({windows.describe(role)})", *notes]
        if role == "pre":
            inputs = dataclasses.replace(inputs, dem_path=None, dem_nodata=None)
        chosen[role] = dataclasses.replace(inputs, notes=[*notes, *inputs.notes])
    return EventInputs(windows, chosen["post"], chosen["pre"])
