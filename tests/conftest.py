"""Test-session settings: offline libraries, one shared cache of generated slides/patches, and
one intra-op thread for the tiny in-process tensors (fastest, and immune to a busy machine)."""

import os
import tempfile

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SASSL_CACHE", tempfile.mkdtemp(prefix="sassl-test-cache-"))

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
