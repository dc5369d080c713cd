"""Where the tests find shared data: ``../shared`` next to the checkout (the layout CI's fresh clone has too).

A plain module, so test files can import it at module level (``conftest`` is not importable by name when
several conftest.py files exist); ``tests/conftest.py`` takes its ``COCO128`` from here.
"""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
COCO128 = SHARED / "data" / "coco128"
