"""The web dashboard: tasks, a task's loop, calls, datasets, runs, comparisons, serving (`loraforge ui`)."""

from loraforge.ui.app import create_ui_app
from loraforge.ui.settings import UISettings

__all__ = ["UISettings", "create_ui_app"]
