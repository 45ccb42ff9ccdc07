"""The app's settings, from ``LANDSLIDE_APP_*`` environment variables (``landslide app`` sets them
from its options)."""

from __future__ import annotations

import getpass
import os
import sys
from dataclasses import dataclass
from pathlib import Path

# map sizes (px): the fit of a view needs the canvas size only roughly, and the tests need the same
MAP_HEIGHT_PX = 560
PICKER_HEIGHT_PX = 420
MAP_WIDTH_GUESS_PX = 640  # about the map column's width in a 1280-1600 px window


@dataclass(frozen=True)
class AppSettings:
    runs_dir: Path
    state_dir: Path
    catalog: str | None
    max_upload_mb: int
    basemap_style: str | None
    reviewer: str
    python: str

    @property
    def app_dir(self) -> Path:
        """The app's own files (scan jobs, uploads), hidden inside the runs folder."""
        return self.runs_dir / ".app"


def load_settings() -> AppSettings:
    env = os.environ
    try:
        reviewer = env.get("LANDSLIDE_APP_REVIEWER") or getpass.getuser()
    except (KeyError, OSError):  # no user name in a container without /etc/passwd entry
        reviewer = "reviewer"
    return AppSettings(
        runs_dir=Path(env.get("LANDSLIDE_APP_RUNS_DIR", "runs")).resolve(),
        state_dir=Path(env.get("LANDSLIDE_APP_STATE_DIR", "state")).resolve(),
        catalog=env.get("LANDSLIDE_APP_CATALOG") or None,
        max_upload_mb=int(env.get("LANDSLIDE_APP_MAX_UPLOAD_MB", "200")),
        basemap_style=env.get("LANDSLIDE_APP_BASEMAP_STYLE") or None,
        reviewer=reviewer,
        python=env.get("LANDSLIDE_APP_PYTHON", sys.executable))
