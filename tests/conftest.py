"""Test-session settings: offline libraries and one shared cache of generated slides/patches."""

import os
import tempfile

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SASSL_CACHE", tempfile.mkdtemp(prefix="sassl-test-cache-"))
